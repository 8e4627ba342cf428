"""Muon's step and compile time against ``optax.contrib.muon``, and its sharded step.

The tree is a transformer's: ``--layers`` layers of width ``--width`` (q, k, v, o
of d x d, an MLP of d x 4d and 4d x d, two norms), an embedding and a head.
Both libraries route the same leaves to Muon (the hidden matrices) and to AdamW
(the rest), through ``muon_weight_dimension_numbers``.

Single device (this process):

* step time, median of ``--reps`` jitted steps with params and state donated,
  the implementations interleaved in a shuffled order each round, warm-up
  excluded: ``optax.contrib.muon``, ``adamx.muon`` with float32 and with
  bfloat16 Newton-Schulz matmuls, and ``optax.adamw`` for scale;
* the achieved GFLOP/s of the Newton-Schulz work (its flops counted from the
  shapes) against a matmul roofline measured in the same rounds: a batch of the
  tree's most common matrix product, in float32 and in bfloat16 with float32
  accumulation;
* compile time of the step, median of 3 fresh compilations each.

On ``--devices`` host devices (a subprocess): the step of each under
``adamx.sharded`` (ZeRO-1), its collectives (count, and bytes received per
device: the results' sizes in the compiled module, per step) against the
params' bytes, its flops per device against the unsharded step's (XLA's cost
analysis), and its step time.

Run: python benchmarks/muon.py [--json out.json]
     python benchmarks/muon.py --quick      # a small tree, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from step import time_interleaved  # noqa: E402


def transformer_shapes(layers: int, width: int, vocab: int) -> dict[str, tuple]:
    d = width
    shapes: dict[str, tuple] = {"embed": (vocab, d), "head": (d, vocab)}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            shapes[f"l{i:02d}/{name}"] = (d, d)
        shapes[f"l{i:02d}/up"] = (d, 4 * d)
        shapes[f"l{i:02d}/down"] = (4 * d, d)
        shapes[f"l{i:02d}/norm1"] = (d,)
        shapes[f"l{i:02d}/norm2"] = (d,)
    return shapes


def is_hidden(name: str, shape: tuple) -> bool:
    return len(shape) == 2 and name not in ("embed", "head")


def ns_flops(shapes: dict[str, tuple], steps: int = 5) -> float:
    """Newton-Schulz flops of a step: three matmuls per matrix per iteration."""
    total = 0.0
    for name, shape in shapes.items():
        if is_hidden(name, shape):
            m, n = sorted(shape)
            total += steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)
    return total


def make_trees(shapes: dict[str, tuple]):
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    params = {
        k: jnp.asarray(rng.normal(size=s) * 0.02, jnp.float32)
        for k, s in shapes.items()
    }
    grads = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    return params, grads


def optimizers(shapes: dict[str, tuple]) -> dict[str, Callable[[], object]]:
    """Factories of the compared optimizers (fresh objects: fresh compilations)."""
    import jax.numpy as jnp
    import optax
    import optax.contrib

    import adamx

    def dims(cls):
        return {k: cls() if is_hidden(k, s) else None for k, s in shapes.items()}

    return {
        "optax.contrib.muon": lambda: optax.contrib.muon(
            0.02, muon_weight_dimension_numbers=dims(optax.contrib.MuonDimensionNumbers)
        ),
        "adamx.muon": lambda: adamx.muon(
            0.02, muon_weight_dimension_numbers=dims(adamx.MuonDimensionNumbers)
        ),
        "adamx.muon bf16 NS": lambda: adamx.muon(
            0.02,
            muon_weight_dimension_numbers=dims(adamx.MuonDimensionNumbers),
            ns_dtype=jnp.bfloat16,
        ),
        "optax.adamw": lambda: optax.adamw(0.02),
    }


def step_fn(tx):
    import jax
    import optax

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def roofline_probes(
    shapes: dict[str, tuple],
) -> dict[str, tuple[Callable[[], None], float]]:
    """The Newton-Schulz product of the group with the most flops, ``(m, m) @
    (m, n)`` batched over its matrices, in float32 and in bfloat16 with float32
    accumulation: ``(run, flops)``."""
    import jax
    import jax.numpy as jnp

    hidden = [tuple(sorted(s)) for k, s in shapes.items() if is_hidden(k, s)]
    (m, n) = max(set(hidden), key=lambda s: hidden.count(s) * s[0] * s[0] * s[1])
    batch = hidden.count((m, n))
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(batch, m, m)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(batch, m, n)), jnp.float32)
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    f32 = jax.jit(jnp.matmul)
    bf16 = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    flops = 2.0 * batch * m * m * n
    name = f"{batch}x({m}x{m} @ {m}x{n})"
    return {
        f"matmul f32 {name}": (lambda: f32(a, b).block_until_ready(), flops),
        f"matmul bf16 {name}": (lambda: bf16(a16, b16).block_until_ready(), flops),
    }


def single_device(shapes: dict[str, tuple], reps: int, compiles: int) -> dict:
    import jax

    made = optimizers(shapes)
    params, grads = make_trees(shapes)
    runs: dict[str, Callable[[], None]] = {}
    holders: dict[str, list] = {}
    for name, factory in made.items():
        tx = factory()
        fn = step_fn(tx)
        holders[name] = [jax.tree.map(lambda x: x.copy(), params), tx.init(params)]

        def run(name=name, fn=fn):
            p, s = fn(holders[name][0], holders[name][1], grads)
            jax.block_until_ready(p)
            holders[name] = [p, s]

        runs[name] = run
    probes = roofline_probes(shapes)
    for name, (fn, _) in probes.items():
        runs[name] = fn
    medians = time_interleaved(runs, reps)
    flops = ns_flops(shapes)
    base = medians["optax.contrib.muon"]
    results: dict = {"params": int(sum(np.prod(s) for s in shapes.values()))}
    results["ns_gflop_per_step"] = flops / 1e9
    rows = {}
    for name in made:
        ms = medians[name]
        row = {"ms": ms, "vs_optax_muon": ms / base}
        if "muon" in name:
            row["ns_gflops"] = flops / (ms * 1e-3) / 1e9
        rows[name] = row
    results["steps"] = rows
    results["roofline"] = {
        name: {"ms": medians[name], "gflops": f / (medians[name] * 1e-3) / 1e9}
        for name, (_, f) in probes.items()
    }
    compile_s = {}
    for name, factory in made.items():
        times = []
        for _ in range(compiles):
            tx = factory()
            state = tx.init(params)
            start = time.perf_counter()
            step_fn(tx).lower(params, state, grads).compile()
            times.append(time.perf_counter() - start)
        compile_s[name] = float(np.median(times))
    results["compile_s"] = {
        name: {"s": s, "vs_optax_muon": s / compile_s["optax.contrib.muon"]}
        for name, s in compile_s.items()
    }
    return results


DTYPE_BYTES = {
    "f32": 4,
    "f64": 8,
    "bf16": 2,
    "f16": 2,
    "s32": 4,
    "u32": 4,
    "u8": 1,
    "s8": 1,
}
COLLECTIVE = re.compile(
    r"\s(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\("
)


def collectives(hlo: str) -> tuple[int, int]:
    """(count, bytes received per device) of a compiled module's collectives."""
    count, total = 0, 0
    for line in hlo.splitlines():
        m = COLLECTIVE.search(line)
        if not m or " = " not in line:
            continue
        count += 1
        result = line[line.index(" = ") + 3 : m.start()]
        for dtype, dims in re.findall(
            r"(f32|f64|bf16|f16|s32|u32|u8|s8)\[([\d,]*)\]", result
        ):
            total += DTYPE_BYTES[dtype] * int(
                np.prod([int(d) for d in dims.split(",") if d])
            )
    return count, total


def sharded_worker(shapes: dict[str, tuple], reps: int) -> dict:
    """In a process with several host devices: the ZeRO-1 step of each Muon."""
    import jax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import adamx

    devices = jax.device_count()
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Auto,))
    params, grads = make_trees(shapes)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    grads = jax.device_put(grads, NamedSharding(mesh, P()))
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    made = {
        k: v for k, v in optimizers(shapes).items() if "muon" in k and "bf16" not in k
    }
    out: dict = {"devices": devices, "param_bytes": param_bytes}
    runs, holders, rows = {}, {}, {}
    for name, factory in made.items():
        plain = factory()
        one = step_fn(plain).lower(params, plain.init(params), grads).compile()
        tx = adamx.sharded(factory(), mesh)
        state = tx.init(params)
        compiled = step_fn(tx).lower(params, state, grads).compile()
        count, nbytes = collectives(compiled.as_text())
        rows[name] = {
            "collectives": count,
            "collective_bytes_vs_params": nbytes / param_bytes,
            "flops_per_device_vs_unsharded": compiled.cost_analysis()["flops"]
            / one.cost_analysis()["flops"],
            "state_bytes_per_device_vs_whole": adamx.bytes_per_device(state)
            / sum(x.nbytes for x in jax.tree.leaves(state)),
        }
        fn = step_fn(tx)
        holders[name] = [jax.tree.map(lambda x: x.copy(), params), state]

        def run(name=name, fn=fn):
            p, s = fn(holders[name][0], holders[name][1], grads)
            jax.block_until_ready(p)
            holders[name] = [p, s]

        runs[name] = run
    for name, ms in time_interleaved(runs, reps).items():
        rows[name]["ms"] = ms
    out["steps"] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--compiles", type=int, default=3)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="a small tree, few reps")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--sharded-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.width, args.vocab, args.reps, args.compiles = 2, 32, 64, 3, 1
    shapes = transformer_shapes(args.layers, args.width, args.vocab)
    if args.sharded_worker:
        print(json.dumps(sharded_worker(shapes, args.reps)))
        return {}
    results = {
        "tree": f"{args.layers} layers of d={args.width}, vocab {args.vocab}",
        "load_average": os.getloadavg(),
        "single_device": single_device(shapes, args.reps, args.compiles),
    }
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, __file__, "--sharded-worker"]
    command += ["--layers", str(args.layers), "--width", str(args.width)]
    command += ["--vocab", str(args.vocab), "--reps", str(args.reps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    results["sharded"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
