"""The README's example and examples/quickstart.py run and actually train."""

import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_fits_the_noisy_sine(capsys):
    spec = importlib.util.spec_from_file_location(
        "quickstart", ROOT / "examples" / "quickstart.py"
    )
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    final = quickstart.main(epochs=10, steps_per_epoch=20)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10
    first = float(lines[0].split()[-1])
    # The noise has variance 0.01: the fit gets near that floor, from well above it.
    assert first > 0.03
    assert 0.005 < final < 0.02


def test_readme_example_runs_and_converges(capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # A noiseless linear problem: the loss goes to (almost) zero.
    assert float(namespace["loss"]) < 1e-4
    assert "final loss" in capsys.readouterr().out
