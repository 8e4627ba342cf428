"""Compile time of a training step with many leaves: adamx against Optax.

For each tree size the step ``grad -> tx.update -> apply_updates`` (or
``grad -> adamx.step``, whose native kernels XLA does not compile) is traced,
lowered and compiled with ``jax.jit(...).trace(...).lower().compile()``;
repetitions are interleaved between the libraries and the median is reported,
in all and for each phase: JAX tracing the step to a jaxpr, lowering it to
StableHLO, and XLA compiling that to machine code.

Each compilation runs in a process of its own, after a warm-up compilation of
the same step on a tree of 4 leaves: a process that has compiled a large
program compiles the next ones slower (``adamx.step`` at 1000 leaves: XLA's
part 1.8 s after Optax's step, 2.4 s after the flat layout's, which leaves
the process at 1.3 GB), and the first compilation in a process pays for
XLA's start-up. ``--in-process`` compiles everything in this process instead.

Four kinds of tree: ``same``, every leaf 16 floats; ``ten``, leaf i
16 + i % 10 floats, ten shapes repeated as the layers of a deep network repeat
theirs; ``distinct``, leaf i 16 + i floats; and ``resnet50``, the first N of
ResNet-50's 161 parameter shapes (28 of them distinct). XLA compiles a kernel
once for all the identical kernels of a program, so the fewer distinct shapes,
the less code a per-leaf optimizer generates.

Run: python benchmarks/compile.py [--tree same|ten|distinct|resnet50]
[--leaves 100 1000 5000] [--reps 3] [--in-process] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step import resnet50_shapes  # noqa: E402

import adamx  # noqa: E402

# Leaf i's number of floats, per kind of tree of 1-D leaves.
SIZES = {
    "same": lambda i: 16,
    "ten": lambda i: 16 + i % 10,
    "distinct": lambda i: 16 + i,
}
TREES = (*SIZES, "resnet50")


def leaf_shapes(n_leaves: int, tree: str = "same") -> list[tuple[int, ...]]:
    if tree == "resnet50":
        resnet = resnet50_shapes()
        if n_leaves > len(resnet):
            raise ValueError(
                f"n_leaves={n_leaves}: the resnet50 tree has {len(resnet)} leaves"
            )
        return resnet[:n_leaves]
    if tree not in SIZES:
        raise ValueError(f"tree={tree!r}: the trees are {TREES}")
    return [(SIZES[tree](i),) for i in range(n_leaves)]


def make_params(n_leaves: int, tree: str = "same") -> dict:
    return {
        f"layer{i:05d}": jnp.full(shape, 0.01 * (i % 7 + 1))
        for i, shape in enumerate(leaf_shapes(n_leaves, tree))
    }


def loss_fn(params: dict) -> jax.Array:
    # Summed pairwise, so the loss adds a graph of depth log2(leaves), not a
    # chain of additions as long as the tree.
    terms = [jnp.sum(jnp.sin(p) ** 2) for p in params.values()]
    while len(terms) > 1:
        pairs = zip(terms[0::2], terms[1::2], strict=False)
        terms = [a + b for a, b in pairs] + terms[len(terms) // 2 * 2 :]
    return terms[0]


def variants(params: dict) -> dict:
    flat = adamx.ravel(params)

    def tree_step(tx, apply_updates, in_place=False):
        def step(p, s):
            g = jax.grad(loss_fn)(p)
            if in_place:
                return adamx.step(tx, g, s, p)
            u, s = tx.update(g, s, p)
            return apply_updates(p, u), s

        return step, (params, tx.init(params))

    def flat_step(tx):
        def step(f, s):
            g = jax.grad(lambda f: loss_fn(f.unravel()))(f)
            u, s = tx.update(g, s, f)
            return adamx.apply_updates(f, u), s

        return step, (flat, tx.init(flat))

    return {
        "optax.adam": tree_step(optax.adam(1e-3), optax.apply_updates),
        "adamx.adam": tree_step(adamx.adam(1e-3), adamx.apply_updates),
        "adamx.adam flat": flat_step(adamx.adam(1e-3)),
        # The native kernels update the leaves (on CPU; elsewhere the chain).
        "adamx.step": tree_step(adamx.adam(1e-3), None, in_place=True),
    }


PHASES = ("trace", "lower", "xla")


def compile_seconds(step, args) -> dict[str, float]:
    """Seconds spent tracing to a jaxpr, lowering it, and in XLA's compiler."""
    jax.clear_caches()
    start = time.perf_counter()
    traced = jax.jit(step, donate_argnums=(0, 1)).trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return {
        "trace": traced_at - start,
        "lower": lowered_at - traced_at,
        "xla": done - lowered_at,
    }


WARM_UP_LEAVES = 4


def isolated_seconds(tree: str, n_leaves: int, name: str) -> dict[str, float]:
    """``compile_seconds`` of one step, in a fresh process after a warm-up."""
    command = [sys.executable, __file__, "--one", tree, str(n_leaves), name]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} on {n_leaves} leaves failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def one(tree: str, n_leaves: int, name: str) -> None:
    """Print the phases of one compilation, as JSON, after a warm-up."""
    warm_up = min(WARM_UP_LEAVES, n_leaves)
    compile_seconds(*variants(make_params(warm_up, tree))[name])
    print(json.dumps(compile_seconds(*variants(make_params(n_leaves, tree))[name])))


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--one"]:
        one(argv[1], int(argv[2]), argv[3])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", choices=TREES, default="same")
    parser.add_argument("--leaves", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="compile every step in this process, without warm-ups",
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    try:
        leaf_shapes(max(args.leaves), args.tree)
    except ValueError as error:
        parser.error(str(error))
    results = {}
    for n in args.leaves:
        cases = variants(make_params(n, args.tree))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(args.reps):
            for name, (step, step_args) in cases.items():
                if args.in_process:
                    runs[name].append(compile_seconds(step, step_args))
                else:
                    runs[name].append(isolated_seconds(args.tree, n, name))
        # The total's median is taken over whole runs; each phase's median
        # separately, so the phases need not add up to it exactly.
        medians = {
            name: {
                "s": statistics.median(sum(r.values()) for r in rs),
                **{f"{p}_s": statistics.median(r[p] for r in rs) for p in PHASES},
            }
            for name, rs in runs.items()
        }
        base = medians["optax.adam"]["s"]
        results[n] = {
            name: {**m, "ratio_to_optax": m["s"] / base} for name, m in medians.items()
        }
        for name, m in medians.items():
            print(
                f"{args.tree:8s} {n:6d} leaves  {name:18s} {m['s']:8.3f} s  "
                f"{m['s'] / base:5.2f}x optax  (trace {m['trace_s']:.2f}, "
                f"lower {m['lower_s']:.2f}, XLA {m['xla_s']:.2f})"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": str(jax.devices()[0]),
                    "tree": args.tree,
                    "isolated": not args.in_process,
                    "results": results,
                },
                f,
                indent=2,
            )
    return results


if __name__ == "__main__":
    main()
