"""Optimizer-state bytes per device and step time on 1, 2, 4 and 8 devices.

For each device count, a fresh process (XLA reads the device count once, at
start) builds a mesh of that many host CPU devices over one "data" axis, places
an MLP's params replicated on it, and times the optimizer step
``update -> apply_updates`` with gradients as they are after the data-parallel
mean (replicated) for:

- ``optax.adamw``: Optax's state, which follows the (replicated) params;
- ``adamx.adamw``: the same layout;
- ``adamx.sharded(adamw)``: ZeRO-1, the state split over the data axis.

Each row gives the largest number of optimizer-state bytes on one device (and its
share of the two moments' bytes), the median and the best step time, the ratio of
the median to Optax's, and the floor: the median time of one fused pass with an
Adam step's memory traffic (read params, gradients and two moments; write params
and moments) on the replicated layout, measured in the same run. The variants and
the floor run in a fresh random (seeded) order each round. Fake CPU devices
share the host's cores, so step times say more about overheads than about scaling.

Run: python benchmarks/sharding.py [--devices 1 2 4 8] [--width 512] [--layers 8]
                                   [--reps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

NAMES = ("optax.adamw", "adamx.adamw", "adamx.sharded(adamw)")


def worker(width: int, layers: int, reps: int) -> dict:
    """Measure every variant on this process's devices; returns a JSON-able dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import adamx
    from adamx.sharding import bytes_per_device, sharded

    # Imported here, as jax is: the parent process must not start XLA before it
    # sets the device count for the worker.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step import shuffled_rounds

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = NamedSharding(mesh, P())
    rng = np.random.default_rng(0)
    host = {
        f"layer{i}": {
            "w": (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32),
            "b": np.zeros(width, np.float32),
        }
        for i in range(layers)
    }
    params = jax.device_put(host, replicated)
    grads = jax.device_put(
        jax.tree.map(lambda x: (0.01 * rng.normal(size=x.shape)).astype(x.dtype), host),
        replicated,
    )
    n_params = sum(x.size for x in jax.tree.leaves(host))
    txs = {
        "optax.adamw": (optax.adamw(1e-3), optax.apply_updates),
        "adamx.adamw": (adamx.adamw(1e-3), adamx.apply_updates),
        "adamx.sharded(adamw)": (
            sharded(adamx.adamw(1e-3), mesh, "data"),
            adamx.apply_updates,
        ),
    }

    def make_step(tx, apply_updates):
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

        return jax.jit(step, donate_argnums=(0, 1))

    cases = {}
    for name, (tx, apply_updates) in txs.items():
        state = tx.init(params)
        cases[name] = {
            "step": make_step(tx, apply_updates),
            "params": jax.tree.map(jnp.copy, params),
            "state": state,
            "bytes": bytes_per_device(state),
        }

    # The floor: one fused pass with an Adam step's memory traffic on the
    # replicated layout, its buffers donated as the steps' are.
    @functools.partial(jax.jit, donate_argnums=(0, 2, 3))
    def floor(p, g, m, v):
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        p = jax.tree.map(lambda p, m, v: p - 1e-3 * m / (jnp.sqrt(v) + 1e-8), p, m, v)
        return p, m, v

    floor_state = jax.tree.map(jnp.copy, (params, params, params))

    def run(name: str) -> None:
        nonlocal floor_state
        if name == "floor":
            p, m, v = floor_state
            floor_state = jax.block_until_ready(floor(p, grads, m, v))
            return
        case = cases[name]
        case["params"], case["state"] = case["step"](
            case["params"], case["state"], grads
        )
        jax.block_until_ready(case["params"])

    times: dict[str, list[float]] = {name: [] for name in [*cases, "floor"]}
    # Two warm-up rounds, not timed.
    for rep, order in enumerate(shuffled_rounds(times, reps + 2)):
        for name in order:
            start = time.perf_counter()
            run(name)
            if rep >= 2:
                times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    return {
        "devices": jax.device_count(),
        "params": int(n_params),
        "state_bytes_total": int(2 * 4 * n_params),
        "floor_ms": 1e3 * medians["floor"],
        "floor_best_ms": 1e3 * best["floor"],
        "results": {
            name: {
                "state_bytes_per_device": int(case["bytes"]),
                "step_ms": 1e3 * medians[name],
                "step_best_ms": 1e3 * best[name],
                "ratio_to_optax": medians[name] / medians["optax.adamw"],
            }
            for name, case in cases.items()
        },
    }


def run_in_subprocess(devices: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    command = [sys.executable, __file__, "--worker", "--width", str(args.width)]
    command += ["--layers", str(args.layers), "--reps", str(args.reps)]
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=900
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {devices}-device run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.width, args.layers, args.reps)))
        return []

    rows = []
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cores")
    print(
        f"{'devices':>7s}  {'optimizer':22s} {'state MiB/device':>16s} "
        f"{'share':>6s} {'step ms':>8s} {'best ms':>8s} {'x optax':>7s} "
        f"{'floor ms':>8s}"
    )
    for n in args.devices:
        row = run_in_subprocess(n, args)
        rows.append(row)
        total = row["state_bytes_total"]
        for name in NAMES:
            r = row["results"][name]
            print(
                f"{n:7d}  {name:22s} {r['state_bytes_per_device'] / 2**20:16.2f} "
                f"{r['state_bytes_per_device'] / total:6.3f} {r['step_ms']:8.2f} "
                f"{r['step_best_ms']:8.2f} {r['ratio_to_optax']:7.2f} "
                f"{row['floor_ms']:8.2f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"load_average": load, "cpu_count": os.cpu_count(), "runs": rows},
                f,
                indent=2,
            )
    return rows


if __name__ == "__main__":
    main()
