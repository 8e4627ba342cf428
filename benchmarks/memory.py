"""Optimizer-state memory and step time of low-precision AdamW states.

Part 1 prints the bytes per param of each configuration on a tree of large
matrices, counted with ``adamx.lowbit.state_nbytes`` on ``jax.eval_shape`` (no
memory is allocated): state, params, and both together.

Part 2 times one optimizer step (``tx.update`` then ``apply_updates``, the
gradient given) of AdamW with float32, bfloat16, 8-bit and 4-bit state, and of
Optax's AdamW, on a tree of 16M float32 params: jitted, params and state
donated, the configurations interleaved repetition by repetition in a random
(seeded) order, medians reported with their ratio to adamx float32. A copy of
the same tree (read params and gradient, write params) is timed alongside as
the bandwidth floor.

Run: python benchmarks/memory.py [--size 2048] [--matrices 4] [--reps 15]
     [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step import shuffled_rounds  # noqa: E402

import adamx  # noqa: E402
from adamx.lowbit import state_nbytes  # noqa: E402
from adamx.precision import kahan_summation, stochastic_rounding  # noqa: E402

# name: (optimizer factory, params dtype)
TABLE = {
    "fp32 (adamx.adamw)": (lambda: adamx.adamw(1e-3), jnp.float32),
    "bf16 moments (state_bits=16)": (
        lambda: adamx.adamw(1e-3, state_bits=16),
        jnp.float32,
    ),
    "8-bit (state_bits=8)": (lambda: adamx.adamw(1e-3, state_bits=8), jnp.float32),
    "4-bit (state_bits=4)": (lambda: adamx.adamw(1e-3, state_bits=4), jnp.float32),
    "bf16 params, bf16 moments": (lambda: adamx.adamw(1e-3), jnp.bfloat16),
    "bf16 params + Kahan, fp32 moments": (
        lambda: kahan_summation(
            adamx.adamw(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
        ),
        jnp.bfloat16,
    ),
    "bf16 params + Kahan, bf16 moments": (
        lambda: kahan_summation(adamx.adamw(1e-3)),
        jnp.bfloat16,
    ),
    "bf16 params + Kahan, 8-bit": (
        lambda: kahan_summation(adamx.adamw(1e-3, state_bits=8)),
        jnp.bfloat16,
    ),
    "bf16 params + Kahan, 4-bit": (
        lambda: kahan_summation(adamx.adamw(1e-3, state_bits=4)),
        jnp.bfloat16,
    ),
    "bf16 params + stochastic rounding, 8-bit": (
        lambda: stochastic_rounding(adamx.adamw(1e-3, state_bits=8)),
        jnp.bfloat16,
    ),
}

TIMED = {
    "adamx fp32": lambda: adamx.adamw(1e-3),
    "adamx bf16 state": lambda: adamx.adamw(1e-3, state_bits=16),
    "adamx 8-bit": lambda: adamx.adamw(1e-3, state_bits=8),
    "adamx 4-bit": lambda: adamx.adamw(1e-3, state_bits=4),
    "optax fp32": lambda: optax.adamw(1e-3),
}


def tree_of_matrices(size: int, count: int, dtype: Any) -> dict[str, Any]:
    return {
        f"layer{i}": jax.ShapeDtypeStruct((size, size), dtype) for i in range(count)
    }


def bytes_table(size: int, count: int) -> list[dict[str, Any]]:
    rows = []
    for name, (make, dtype) in TABLE.items():
        params = tree_of_matrices(size, count, dtype)
        n = sum(p.size for p in params.values())
        state = state_nbytes(jax.eval_shape(make().init, params)) / n
        param_bytes = jnp.dtype(dtype).itemsize
        rows.append(
            {
                "config": name,
                "state_bytes_per_param": state,
                "params_bytes_per_param": param_bytes,
                "total_bytes_per_param": state + param_bytes,
            }
        )
    return rows


def time_steps(size: int, count: int, reps: int) -> dict[str, Any]:
    keys = jax.random.split(jax.random.key(0), count)
    params = {
        f"layer{i}": jax.random.normal(k, (size, size)) * 0.02
        for i, k in enumerate(keys)
    }
    grads = jax.tree.map(lambda p: jnp.sin(p * 50) * 1e-3, params)

    def make_step(tx, apply_updates):
        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

        return step

    @functools.partial(jax.jit, donate_argnums=(0,))
    def copy(params, grads):
        return jax.tree.map(lambda p, g: p + 0 * g, params, grads), None

    runs: dict[str, Any] = {}
    for name, make in TIMED.items():
        tx = make()
        apply = optax.apply_updates if name.startswith("optax") else adamx.apply_updates
        p = jax.tree.map(jnp.copy, params)
        runs[name] = [make_step(tx, apply), (p, tx.init(p)), []]
    floor_p = jax.tree.map(jnp.copy, params)
    runs["copy (bandwidth floor)"] = [
        lambda p, s, g: copy(p, g),
        (floor_p, None),
        [],
    ]
    for entry in runs.values():  # compile, and warm up the allocator
        for _ in range(2):
            entry[1] = entry[0](*entry[1], grads)
        jax.block_until_ready(entry[1])
    for order in shuffled_rounds(runs, reps):
        for entry in (runs[name] for name in order):
            start = time.perf_counter()
            entry[1] = entry[0](*entry[1], grads)
            jax.block_until_ready(entry[1])
            entry[2].append(time.perf_counter() - start)
    base = statistics.median(runs["adamx fp32"][2])
    return {
        name: {
            "median_ms": 1e3 * statistics.median(entry[2]),
            "ratio_to_adamx_fp32": statistics.median(entry[2]) / base,
            "times_ms": [1e3 * t for t in entry[2]],
        }
        for name, entry in runs.items()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="matrix side")
    p.add_argument("--matrices", type=int, default=4)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    n = args.size * args.size * args.matrices
    print(f"{args.matrices} matrices of {args.size}x{args.size} = {n:,} params\n")
    table = bytes_table(args.size, args.matrices)
    print(f"{'configuration':42s} {'state':>7s} {'params':>7s} {'total':>7s}  B/param")
    for row in table:
        print(
            f"{row['config']:42s} {row['state_bytes_per_param']:7.3f} "
            f"{row['params_bytes_per_param']:7.3f} {row['total_bytes_per_param']:7.3f}"
        )
    results: dict[str, Any] = {
        "params": n,
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "bytes_per_param": table,
    }
    if not args.skip_timing:
        load_before = os.getloadavg()
        timing = time_steps(args.size, args.matrices, args.reps)
        load_after = os.getloadavg()
        print(
            f"\nstep time, {args.reps} interleaved repetitions, median "
            f"(load average {load_before[0]:.2f} before, {load_after[0]:.2f} after)"
        )
        for name, t in timing.items():
            print(
                f"{name:24s} {t['median_ms']:8.1f} ms  "
                f"{t['ratio_to_adamx_fp32']:5.2f} x adamx fp32"
            )
        results.update(
            step_time=timing,
            load_average_before=load_before,
            load_average_after=load_after,
            reps=args.reps,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
