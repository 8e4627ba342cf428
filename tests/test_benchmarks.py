"""The benchmark programs run end to end on tiny sizes and report consistent numbers."""

import importlib.util
import json
import pathlib

import pytest

pytestmark = pytest.mark.internals

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
    assert results["bandwidth_alone_GBps"] > 0
    assert set(results["cases"]) == {
        "1 x 16M", "200 x 80K", "ResNet-50", "2000 x 500", "200 x 80K bf16"
    }  # fmt: skip
    for case in results["cases"].values():
        rows = case["results"]
        assert case["bandwidth_GBps"] > 0
        assert abs(case["limit_ms"] * case["bandwidth_GBps"] * 1e6 - case["bytes"]) < 1
        assert not any(name.startswith("stream") for name in rows)
        assert rows["optax.adam"]["ratio_to_optax"] == 1.0
        for row in rows.values():
            assert row["ms"] > 0
            assert abs(row["ratio_to_limit"] * case["limit_ms"] - row["ms"]) < 1e-9


def test_step_benchmark_runs_the_cases_asked_for(tmp_path):
    step = load("step")
    out = tmp_path / "step.json"
    argv = ["--scale", "2000", "--reps", "1", "--no-torch", "--json", str(out)]
    step.main([*argv, "--case", "2000 x 500"])
    assert set(json.loads(out.read_text())["cases"]) == {"2000 x 500"}
    with pytest.raises(SystemExit):
        step.main([*argv, "--case", "3 x 7"])


def test_resnet50_shapes_have_the_published_parameter_count():
    shapes = load("step").resnet50_shapes()
    n = sum(int(__import__("numpy").prod(s)) for s in shapes)
    assert len(shapes) == 161
    assert n == 25_557_032  # torchvision's ResNet-50, batch-norm statistics excluded


@pytest.mark.parametrize(
    "tree, in_process",
    [
        ("same", False),
        ("same", True),
        ("ten", False),
        ("distinct", False),
        ("resnet50", True),
    ],
)
def test_compile_benchmark_runs(tmp_path, tree, in_process):
    out = tmp_path / "compile.json"
    argv = ["--tree", tree, "--leaves", "5", "--reps", "1", "--json", str(out)]
    load("compile").main(argv + ["--in-process"] * in_process)
    report = json.loads(out.read_text())
    assert report["tree"] == tree
    assert report["isolated"] == (not in_process)
    rows = report["results"]["5"]
    assert set(rows) == {"optax.adam", "adamx.adam", "adamx.adam flat", "adamx.step"}
    assert rows["optax.adam"]["ratio_to_optax"] == 1.0
    for row in rows.values():
        phases = [row["trace_s"], row["lower_s"], row["xla_s"]]
        assert all(t > 0 for t in phases)
        # One repetition: the medians are that run's, so the phases add up.
        assert sum(phases) == pytest.approx(row["s"], rel=1e-9)


def test_compile_benchmark_reports_a_failed_compilation():
    with pytest.raises(RuntimeError, match="no-such-step on 5 leaves failed"):
        load("compile").isolated_seconds("same", 5, "no-such-step")


def test_compile_benchmark_trees():
    compile_ = load("compile")
    make_params = compile_.make_params
    assert [p.shape for p in make_params(3, "same").values()] == [(16,)] * 3
    sizes = [p.size for p in make_params(12, "ten").values()]
    assert sizes == [16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 16, 17]
    shapes = compile_.leaf_shapes(161, "resnet50")
    assert shapes[:2] == [(64, 3, 7, 7), (64,)] and shapes[-1] == (1000,)
    assert len(set(shapes)) == 28
    assert [p.shape for p in make_params(3, "distinct").values()] == [
        (16,), (17,), (18,)
    ]  # fmt: skip


def test_step_benchmark_shuffles_the_order_of_each_repetition():
    calls = []
    impls = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    medians = load("step").time_interleaved(impls, reps=6)
    assert set(medians) == set("abcd")
    timed = calls[2 * len(impls) :]  # after two warm-up calls each
    rounds = [tuple(timed[i : i + 4]) for i in range(0, len(timed), 4)]
    assert len(rounds) == 6 and all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1


def test_sharding_benchmark_splits_the_state_over_the_devices(tmp_path):
    out = tmp_path / "sharding.json"
    load("sharding").main(
        ["--devices", "1", "2", "--width", "64", "--layers", "2", "--reps", "2"]
        + ["--json", str(out)]
    )
    runs = json.loads(out.read_text())["runs"]
    assert [r["devices"] for r in runs] == [1, 2]
    for run in runs:
        moments = 2 * 4 * run["params"]  # two float32 moments
        rows = run["results"]
        assert rows["optax.adamw"]["ratio_to_optax"] == 1.0
        assert rows["adamx.adamw"]["state_bytes_per_device"] >= moments
        sharded = rows["adamx.sharded(adamw)"]["state_bytes_per_device"]
        # Each device keeps its share of the moments, plus a few scalars.
        assert moments / run["devices"] <= sharded < moments / run["devices"] + 64


def test_muon_benchmark_reports_time_roofline_and_the_sharded_step(tmp_path):
    muon = load("muon")
    out = tmp_path / "muon.json"
    muon.main(["--quick", "--devices", "4", "--json", str(out)])
    results = json.loads(out.read_text())
    single = results["single_device"]
    assert set(single["steps"]) == {
        "optax.contrib.muon", "adamx.muon", "adamx.muon bf16 NS", "optax.adamw"
    }  # fmt: skip
    assert single["steps"]["optax.contrib.muon"]["vs_optax_muon"] == 1.0
    assert all(row["ms"] > 0 for row in single["steps"].values())
    assert len(single["roofline"]) == 2
    sharded = results["sharded"]
    assert sharded["devices"] == 4
    for row in sharded["steps"].values():
        assert row["collectives"] > 0 and 0 < row["state_bytes_per_device_vs_whole"] < 1


def test_muon_benchmark_counts_newton_schulz_flops_and_collective_bytes():
    muon = load("muon")
    # Five steps of (64 x 64)(64 x 128) twice and (64 x 64)^2 once.
    assert muon.ns_flops({"w": (128, 64)}) == 5 * (2 * 2 * 64 * 64 * 128 + 2 * 64**3)
    assert muon.ns_flops({"embed": (10, 4), "b": (4,)}) == 0
    hlo = (
        "  %ag = f32[8,16]{1,0} all-gather(%p), dimensions={0}\n"
        "  %a2a = (f32[1,4]{1,0}, f32[1,4]{1,0}) all-to-all(%x, %y)\n"
        "  %add = f32[8,16]{1,0} add(%ag, %ag)\n"
    )
    assert muon.collectives(hlo) == (2, 4 * 8 * 16 + 2 * 4 * 4)


def test_soap_benchmark_times_both_implementations(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("pytorch_optimizer")
    out = tmp_path / "soap.json"
    load("soap").main(["--quick", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results["ms_per_step"]) == {"adamx.soap", "pytorch-optimizer SOAP"}
    assert all(ms > 0 for ms in results["ms_per_step"].values())
    assert results["adamx_vs_torch"] > 0
