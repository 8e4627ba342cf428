"""The benchmark programs run end to end on tiny sizes and report consistent numbers."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_benchmark_reports_ratios_against_optax_and_the_limit(tmp_path):
    out = tmp_path / "step.json"
    load("step").main(
        ["--scale", "2000", "--reps", "2", "--no-torch", "--json", str(out)]
    )
    results = json.loads(out.read_text())
    assert results["bandwidth_GBps"] > 0
    assert set(results["cases"]) == {
        "1 x 16M", "200 x 80K", "ResNet-50", "2000 x 500", "200 x 80K bf16"
    }  # fmt: skip
    for case in results["cases"].values():
        rows = case["results"]
        assert rows["optax.adam"]["ratio_to_optax"] == 1.0
        for row in rows.values():
            assert row["ms"] > 0
            assert abs(row["ratio_to_limit"] * case["limit_ms"] - row["ms"]) < 1e-9


def test_resnet50_shapes_have_the_published_parameter_count():
    shapes = load("step").resnet50_shapes()
    n = sum(int(__import__("numpy").prod(s)) for s in shapes)
    assert len(shapes) == 161
    assert n == 25_557_032  # torchvision's ResNet-50, batch-norm statistics excluded


def test_compile_benchmark_runs(tmp_path):
    out = tmp_path / "compile.json"
    load("compile").main(["--leaves", "5", "--reps", "1", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results["5"]) == {"optax.adam", "adamx.adam", "adamx.adam flat"}
