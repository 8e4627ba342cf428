"""Training on 2 processes joined by jax.distributed equals training on 2 local devices.

The processes run on localhost, one CPU device each, with gloo collectives
(several local CPU devices per process can deadlock under gloo): a small MLP
(tests/multiprocess_worker.py) and the CNN example on tiny Fashion-MNIST files.
Each is compared with the same training on 2 CPU devices of one process, fed the
same batches: this process for the MLP, one of its own for the example.
"""

import json
import os
import socket
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
from multiprocess_worker import results_of_runs  # noqa: E402
from test_cifar10_data import write_fashion_mnist  # noqa: E402

import adamx  # noqa: E402

WORKER = Path(__file__).with_name("multiprocess_worker.py")
EXAMPLE = ROOT / "examples" / "cifar10" / "train.py"
TIMEOUT_S = 120
NO_GLOO = 77  # the worker's exit status when jaxlib has no gloo collectives


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(devices: int, *command: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = xla_flags(devices)
    return subprocess.Popen(
        [sys.executable, *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(procs: dict[str, subprocess.Popen]) -> dict[str, tuple[int, str]]:
    """Wait for every process, up to TIMEOUT_S in all; kill what is left."""
    deadline = time.monotonic() + TIMEOUT_S
    results = {}
    try:
        for name, proc in procs.items():
            left = max(deadline - time.monotonic(), 1.0)
            try:
                output, _ = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                output += f"\n[killed after {TIMEOUT_S} s]"
                results[name] = (-9, output)
                continue
            results[name] = (proc.returncode, output)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def distributed(process_id: int, port: str = "") -> tuple[str, ...]:
    return ("--num-processes", "2", "--process-id", str(process_id), "--port", port)


def check_all_ran(results: dict[str, tuple[int, str]]) -> None:
    if any(code == NO_GLOO for code, _ in results.values()):
        pytest.skip("this jaxlib has no gloo CPU collectives")
    log = "\n".join(
        f"--- {name} (exit {code}):\n{out[-3000:]}"
        for name, (code, out) in results.items()
    )
    assert all(code == 0 for code, _ in results.values()), log


def test_two_processes_end_with_the_params_of_one_process_on_two_devices(tmp_path):
    port = str(free_port())
    worker = (str(WORKER), "--out")
    procs = {
        "process 0": start(
            1, *worker, str(tmp_path / "multi.npz"), *distributed(0, port)
        ),
        "process 1": start(
            1, *worker, str(tmp_path / "unused.npz"), *distributed(1, port)
        ),
    }
    try:
        single = results_of_runs(jax.devices()[:2])
    finally:
        results = finish(procs)
    check_all_ran(results)

    multi = np.load(tmp_path / "multi.npz")
    assert sorted(multi.files) == sorted(single)
    for key in single:
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-6, err_msg=key)
    # Plain and ZeRO-1 runs agree too (the model's matmuls split differently).
    for run, zero in (("plain", "sharded"), ("muon", "sharded_muon")):
        for key in [k for k in single if k.startswith(f"{run}/")]:
            other = single[zero + key[len(run) :]]
            np.testing.assert_allclose(single[key], other, rtol=1e-5, atol=1e-7)
    # The runs trained: params moved from their start, and Muon differently.
    assert not np.allclose(single["plain/b1"], 0.0)
    assert not np.allclose(single["muon/w1"], single["plain/w1"])


def example_args(data_dir: Path, workdir: Path) -> list[str]:
    return [
        *("--dataset", "fashion_mnist", "--data-dir", str(data_dir), "--no-download"),
        *("--epochs", "1", "--schedule-epochs", "1", "--batch-size", "16"),
        *("--widths", "4,8", "--hidden", "16", "--workdir", str(workdir)),
    ]


def final_state(args: list[str]) -> dict:
    """The run's last checkpoint, restored as a resume of the example does."""
    args = train.parse_args(args)
    ds = data.load(args.dataset, args.data_dir, download=False)
    net = model.CNN(ds.image_shape, ds.num_classes, args.widths, args.hidden,
                    rngs=nnx.Rngs(args.seed))  # fmt: skip
    _, params, batch_stats = model.split(net)
    tx, _ = train.make_optimizer(args, data.steps_per_epoch(ds, args.batch_size))
    target = {"params": params, "opt_state": tx.init(params)}
    target |= {"batch_stats": batch_stats, "epoch": 0, "seed": 0}
    last = train.checkpoints(Path(args.workdir) / "checkpoints")[-1]
    return adamx.checkpoint.restore(last, target)


def test_the_cnn_example_on_two_processes_matches_one_process(tmp_path):
    folder = write_fashion_mnist(tmp_path / "data", n_train=32, n_test=24)
    multi = example_args(folder, tmp_path / "multi")
    single = example_args(folder, tmp_path / "single")
    coordinator = ("--coordinator-address", f"127.0.0.1:{free_port()}")
    procs = {
        f"process {i}": start(
            1, str(EXAMPLE), *multi, *coordinator, *distributed(i)[:4]
        )
        for i in range(2)
    }
    # In a process of its own: in this one, with 8 devices, XLA's CPU
    # convolutions split their work differently and round differently.
    procs["reference"] = start(2, str(EXAMPLE), *single)
    check_all_ran(finish(procs))

    lines = [
        json.loads((tmp_path / run / "metrics.jsonl").read_text())
        for run in ("multi", "single")
    ]
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert lines[0][key] == pytest.approx(lines[1][key], rel=1e-6), key
    a, b = final_state(multi), final_state(single)
    assert a["epoch"] == b["epoch"] == 1
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
