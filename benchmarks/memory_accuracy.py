"""Test accuracy of the CNN example with low-precision optimizer state and params.

Trains the Fashion-MNIST CNN of ``examples/cifar10`` with its own model, data
pipeline, jitted steps and default recipe (10 epochs, AdamW at 6e-3 with warmup
and cosine decay, weight decay 5e-2 on kernels, batch 64, shifts of one pixel,
label smoothing 0.1), once per configuration and seed:

* ``fp32``: float32 params and AdamW state, the example as it is;
* ``8bit`` / ``4bit`` / ``bf16-state``: AdamW with ``state_bits`` 8, 4, 16;
* ``bf16-kahan``: bfloat16 params, updates added with :func:`kahan_summation`;
* ``bf16-sr``: bfloat16 params, :func:`stochastic_rounding`;
* ``bf16-plain``: bfloat16 params, updates rounded to nearest;
* ``bf16-kahan-8bit``: bfloat16 params with Kahan summation and 8-bit state.

The bfloat16-param runs keep the moments in float32, so that they differ from
``fp32`` in the params' precision alone (``bf16-kahan-8bit`` excepted); the
forward and backward passes compute in float32 on the bfloat16 values.

Run: python benchmarks/memory_accuracy.py [--configs fp32 8bit ...] [--seeds 0 1]
     [--epochs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import adamx  # noqa: E402
from adamx.lowbit import state_nbytes  # noqa: E402
from adamx.precision import kahan_summation, stochastic_rounding  # noqa: E402

CONFIGS = {
    # name: (optimizer keyword arguments, params dtype, wrapper)
    "fp32": ({}, jnp.float32, None),
    "bf16-state": ({"state_bits": 16}, jnp.float32, None),
    "8bit": ({"state_bits": 8}, jnp.float32, None),
    "4bit": ({"state_bits": 4}, jnp.float32, None),
    "bf16-plain": (
        {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
        jnp.bfloat16,
        None,
    ),
    "bf16-kahan": (
        {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
        jnp.bfloat16,
        kahan_summation,
    ),
    "bf16-sr": (
        {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
        jnp.bfloat16,
        functools.partial(stochastic_rounding, seed=0),
    ),
    "bf16-kahan-8bit": ({"state_bits": 8}, jnp.bfloat16, kahan_summation),
}


class _Library:
    """adamx, with extra keyword arguments for the example's optimizer."""

    def __init__(self, optimizer: str, kwargs: dict[str, Any]) -> None:
        self._optimizer, self._kwargs = optimizer, kwargs

    def __getattr__(self, name: str) -> Any:
        value = getattr(adamx, name)
        if name == self._optimizer:
            return functools.partial(value, **self._kwargs)
        return value


def run(config: str, seed: int, epochs: int, data_dir: str) -> dict[str, Any]:
    """Train one configuration; the example's metrics and the state's size."""
    from flax import nnx

    from examples.cifar10 import data, model, train

    kwargs, params_dtype, wrap = CONFIGS[config]
    args = train.parse_args(
        ["--dataset", "fashion_mnist", "--data-dir", data_dir, "--no-download",
         "--epochs", str(epochs), "--schedule-epochs", str(epochs),
         "--seed", str(seed)]
    )  # fmt: skip
    ds = data.load(args.dataset, args.data_dir, download=False)
    net = model.CNN(
        ds.image_shape, ds.num_classes, args.widths, args.hidden, rngs=nnx.Rngs(seed)
    )
    graphdef, params, batch_stats = model.split(net)
    steps = data.steps_per_epoch(ds, args.batch_size)
    tx, _ = train.make_optimizer(args, steps, _Library(args.optimizer, kwargs))
    if wrap is not None:
        tx = wrap(tx)
    params = jax.tree.map(lambda p: p.astype(params_dtype), params)
    opt_state = tx.init(params)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    record = {
        "config": config,
        "seed": seed,
        "epochs": epochs,
        "params": n_params,
        "state_bytes_per_param": state_nbytes(opt_state) / n_params,
        "params_bytes_per_param": sum(p.nbytes for p in jax.tree.leaves(params))
        / n_params,
    }
    train_step, eval_step = train.make_steps(graphdef, tx, args.label_smoothing)
    start = time.perf_counter()
    for epoch in range(epochs):
        plan = data.EpochPlan.draw(
            seed, epoch, len(ds.train_labels), ds.crop_padding, ds.flip
        )
        losses = []
        for batch in data.train_batches(ds, args.batch_size, plan):
            params, opt_state, batch_stats, log = train_step(
                params, opt_state, batch_stats, batch
            )
            losses.append(log["loss"])
        record["train_loss"] = float(np.mean(jax.device_get(losses)))
    record["train_seconds"] = time.perf_counter() - start
    correct = sum(
        float(eval_step(params, batch_stats, b)["correct"])
        for b in data.test_batches(ds, 4 * args.batch_size)
    )
    record["test_accuracy"] = correct / len(ds.test_labels)
    assert all(p.dtype == params_dtype for p in jax.tree.leaves(params))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "data"))
    p.add_argument("--json", help="append one JSON line per run to this file")
    args = p.parse_args(argv)
    results = []
    for seed in args.seeds:
        for config in args.configs:
            record = run(config, seed, args.epochs, args.data_dir)
            results.append(record)
            accuracy, state = record["test_accuracy"], record["state_bytes_per_param"]
            print(
                f"{config:16s} seed {seed}: test accuracy {100 * accuracy:.2f}%, "
                f"train loss {record['train_loss']:.4f}, state {state:.3f} B/param, "
                f"{record['train_seconds']:.0f} s",
                flush=True,
            )
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(record) + "\n")
    by_config: dict[str, list[float]] = {}
    for r in results:
        by_config.setdefault(r["config"], []).append(r["test_accuracy"])
    print("\nconfig            mean test accuracy over seeds")
    for config, accs in by_config.items():
        print(f"{config:16s}  {100 * np.mean(accs):.2f}%  ({len(accs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
