"""The CNN example's training code, end to end on tiny files in the real formats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from cifar10 import data, model, train  # noqa: E402
from helpers import xla_flags  # noqa: E402
from test_cifar10_data import write_cifar10_folder, write_fashion_mnist  # noqa: E402

import adamx  # noqa: E402

# Two steps an epoch and a network a few hundred params wide: compiling dominates.
TINY = "--epochs 2 --batch-size 16 --widths 4,8 --hidden 16 --learning-rate 0.01"
TINY += " --schedule-epochs 2 --dataset"


def args_for(data_dir: Path, workdir: Path, extra: str = "", dataset="fashion_mnist"):
    """The command line of a tiny run."""
    paths = ["--data-dir", str(data_dir), "--workdir", str(workdir)]
    return train.parse_args([*f"{TINY} {dataset} {extra}".split(), *paths])


def final_state(args) -> dict:
    """The last checkpoint of the run ``args`` describe, restored as a resume does."""
    ds = data.load(args.dataset, args.data_dir)
    net = model.CNN(ds.image_shape, ds.num_classes, args.widths, args.hidden,
                    rngs=nnx.Rngs(0))  # fmt: skip
    _, params, batch_stats = model.split(net)
    tx, _ = train.make_optimizer(args, data.steps_per_epoch(ds, args.batch_size))
    target = {"params": params, "opt_state": tx.init(params)}
    target |= {"batch_stats": batch_stats, "epoch": 0, "seed": 0}
    last = train.checkpoints(Path(args.workdir) / "checkpoints")[-1]
    return adamx.checkpoint.restore(last, target)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=32, n_test=24)


@pytest.fixture(scope="module")
def two_epochs(fmnist, tmp_path_factory):
    """An uninterrupted two-epoch run on every (here eight) device."""
    args = args_for(fmnist, tmp_path_factory.mktemp("two_epochs"), "--epochs 2")
    return args, train.train(args)


def test_training_end_to_end(two_epochs):
    args, history = two_epochs
    workdir = Path(args.workdir)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == history
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"train_loss", "test_accuracy", "images_per_s"} <= h.keys()
        assert np.isfinite(h["train_loss"]) and h["images_per_s"] > 0
        assert 0.0 <= h["test_accuracy"] <= 1.0
    assert (workdir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    names = [p.name for p in train.checkpoints(workdir / "checkpoints")]
    assert names == ["epoch_1", "epoch_2"]
    state = final_state(args)
    assert (state["epoch"], state["seed"]) == (2, 0)
    # Two epochs of two steps went through the optimizer.
    assert int(state["opt_state"][0].count) == 4


def test_a_fresh_run_refuses_a_workdir_with_checkpoints(two_epochs):
    args, _ = two_epochs
    with pytest.raises(FileExistsError, match="--resume"):
        train.train(args)


def test_resume_is_exact(two_epochs, tmp_path, capsys):
    args, uninterrupted = two_epochs
    paths = ["--data-dir", args.data_dir, "--workdir", str(tmp_path)]
    assert train.main([*f"{TINY} fashion_mnist --epochs 1".split(), *paths]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    # The time it took, and how fast.
    assert re.fullmatch(
        r"test accuracy after 1 epochs: [\d.]+%, in \d+ s of training "
        r"\([\d,]+ images/s\)",
        last,
    ), last
    resumed = train.train(args_for(args.data_dir, tmp_path, "--epochs 2 --resume"))
    timings = ("images_per_s", "epoch_time_s", "loading_time_s")
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert {k: v for k, v in a.items() if k not in timings} == {
            k: v for k, v in b.items() if k not in timings
        }
    a = final_state(args)
    b = final_state(args_for(args.data_dir, tmp_path))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_killed_while_checkpointing_resumes_from_the_previous(
    two_epochs, tmp_path, monkeypatch
):
    args, uninterrupted = two_epochs
    rename = os.rename

    def killed_at_epoch_2(src, dst):
        if Path(dst).name == "epoch_2":
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.train(args_for(args.data_dir, tmp_path, "--epochs 2"))
    monkeypatch.setattr(os, "rename", rename)
    names = [p.name for p in train.checkpoints(tmp_path / "checkpoints")]
    assert names == ["epoch_1"]
    # The metrics line written just before is dropped, and the epoch done again.
    resumed = train.train(args_for(args.data_dir, tmp_path, "--epochs 2 --resume"))
    assert resumed[1]["train_loss"] == uninterrupted[1]["train_loss"]
    assert resumed[1]["test_accuracy"] == uninterrupted[1]["test_accuracy"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices")
def test_eight_devices_match_one(two_epochs, tmp_path):
    args, eight = two_epochs
    one_device = args_for(args.data_dir, tmp_path, "--epochs 2")
    one = train.train(one_device, devices=jax.devices()[:1])
    for a, b in zip(eight, one, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    a, b = final_state(args), final_state(one_device)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_cifar10_end_to_end_with_optax(tmp_path):
    optax = pytest.importorskip("optax")
    folder = write_cifar10_folder(tmp_path / "data", per_batch=8)
    args = args_for(folder, tmp_path / "run", "--epochs 1 --optimizer sgd", "cifar10")
    history = train.train(args, lib=optax)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


def test_the_optimizer_follows_the_schedule():
    args = train.parse_args(["--optimizer", "nadam", "--schedule", "onecycle"])
    tx, schedule = train.make_optimizer(args, steps_per_epoch=10)
    params = {"w": jax.numpy.ones((2, 2))}
    _, state = tx.update(params, tx.init(params), params)
    assert float(adamx.get_learning_rate(state)) == pytest.approx(float(schedule(0)))


def test_missing_cifar10_ends_with_a_message_not_a_traceback(tmp_path):
    script = ROOT / "examples" / "cifar10" / "train.py"
    result = subprocess.run(
        [sys.executable, str(script), "--no-download", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: CIFAR-10 not found")
    assert str(tmp_path / "cifar-10-python.tar.gz") in result.stderr


# ------------------------------------------------------------ the command line

BAD_VALUES = [
    ("--epochs", "-3", "an integer >= 1"),
    ("--epochs", "0", "an integer >= 1"),
    ("--schedule-epochs", "0", "an integer >= 1"),
    ("--batch-size", "0", "an integer >= 1"),
    ("--batch-size", "-64", "an integer >= 1"),
    ("--learning-rate", "-0.001", "a number > 0.0"),
    ("--learning-rate", "nan", "a number > 0.0"),
    ("--weight-decay", "-1", "a number >= 0.0"),
    ("--label-smoothing", "1.5", r"a number in \[0.0, 1.0\)"),
    ("--hidden", "0", "an integer >= 1"),
    ("--widths", "4,0", "an integer >= 1"),
    ("--crop-padding", "-2", "an integer >= 0"),
    ("--seed", "x", "an integer >= 0"),
]


@pytest.mark.parametrize("option, value, allowed", BAD_VALUES)
def test_bad_values_are_refused_in_one_line_before_anything_runs(
    option, value, allowed, capsys
):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args([option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.search(rf"argument {option}: (each width )?must be {allowed}, got ", err)


def test_the_command_line_refuses_in_one_line_with_no_traceback(tmp_path):
    script = ROOT / "examples" / "cifar10" / "train.py"
    result = subprocess.run(
        [sys.executable, str(script), "--epochs", "-3", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "train.py: error: argument --epochs: must be an integer >= 1, got -3 "
        "(see --help)"
    ]
    assert not list(tmp_path.iterdir()), "nothing was written or loaded"


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--epochs EPOCHS stop after", "(default: 10)", "(default: 0.006)",
                  "(default: warmup_cosine)", "(default: 32,64)", "(default: 0.1)",
                  "(default: the dataset's own)"):  # fmt: skip
        assert shown in text, shown
    assert "(default: None)" not in text


def test_training_past_the_schedule_is_refused_unless_asked_for(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--epochs", "11"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs: 11 runs past the schedule's 10 epochs" in err
    assert "--past-schedule" in err
    assert train.parse_args(["--epochs", "11", "--past-schedule"]).epochs == 11
    # A constant rate has no end to run past.
    assert train.parse_args(["--epochs", "11", "--schedule", "constant"]).epochs == 11


def test_a_batch_that_does_not_divide_among_the_devices_is_refused(
    fmnist, tmp_path, capsys
):
    argv = f"{TINY} fashion_mnist --batch-size 12".split()
    argv += ["--data-dir", str(fmnist), "--workdir", str(tmp_path)]
    assert train.main(argv) == 2
    assert "argument --batch-size: must divide by the 8 devices, got 12" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "checkpoints").exists()


def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(fmnist, tmp_path):
    script = ROOT / "examples" / "cifar10" / "train.py"
    argv = f"{TINY} fashion_mnist --epochs 500 --schedule-epochs 500".split()
    argv += ["--data-dir", str(fmnist), "--workdir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XLA_FLAGS": xla_flags(1)},
    )
    try:
        deadline = time.monotonic() + 120
        while not train.checkpoints(tmp_path / "checkpoints"):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: the last checkpoint, ") and last.endswith(
        "run the same command with --resume to go on"
    ), last
    # The checkpoint named is whole: a resume restores it.
    args = train.parse_args([*argv, "--resume"])
    state = final_state(args)
    assert state["epoch"] == int(last.split("epoch_")[1].split(",")[0])


def test_schedule_free_trains_evaluates_at_x_and_resumes(fmnist, tmp_path):
    extra = "--epochs 1 --optimizer schedule_free_adamw"
    args = args_for(fmnist, tmp_path / "run", extra)
    history = train.train(args)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    state = final_state(args)
    params, opt_state = state["params"], state["opt_state"]
    # Two steps went through the optimizer, and x is not y.
    assert int(opt_state.count) == 2
    x = adamx.schedule_free_eval_params(opt_state, params)
    assert not np.allclose(jax.tree.leaves(x)[0], jax.tree.leaves(params)[0])

    # The test loss, computed here at x and at y, one batch of the whole set.
    ds = data.load(args.dataset, args.data_dir)
    net = model.CNN(ds.image_shape, ds.num_classes, args.widths, args.hidden,
                    rngs=nnx.Rngs(0))  # fmt: skip
    graphdef, _, _ = model.split(net)

    def test_loss(at):
        batch = next(iter(data.test_batches(ds, len(ds.test_labels))))
        logits, _ = model.apply(
            graphdef, at, state["batch_stats"], batch["image"], train=False
        )
        labels = batch["label"]
        return float(train.cross_entropy(logits, labels).sum()) / len(ds.test_labels)

    at_x, at_y = test_loss(x), test_loss(params)
    assert at_x == pytest.approx(history[0]["test_loss"], rel=1e-5)
    assert abs(at_x - at_y) > 1e-4 * abs(at_y)

    # A second epoch resumed from the checkpoint is the run without a stop.
    resumed = train.train(
        args_for(fmnist, tmp_path / "run", f"{extra.replace('1', '2')} --resume")
    )
    straight = train.train(
        args_for(fmnist, tmp_path / "straight", extra.replace("1", "2"))
    )
    for a, b in zip(resumed, straight, strict=True):
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert a[key] == b[key], key
