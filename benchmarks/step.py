"""Time one optimizer step: adamx (tree and flat layout) against Optax, PyTorch and
the memory-bandwidth limit measured in the same run.

An Adam step reads params, grads, m and v and writes params, m and v: 28 bytes per
float32 parameter (14 in bfloat16), so its floor is set by memory bandwidth. Each
case reports the median step time, the effective bandwidth at those bytes, the ratio
to ``optax.adam`` and the ratio to the bandwidth limit. The limit divides the bytes
by the streaming bandwidth that two probes (a scale and a triad over 128 MB)
measure in the same rounds as that case's steps. Every step is jitted with the
params and state donated; repetitions are interleaved across implementations, in a
random order each time (seeded), and warm-up calls are excluded. PyTorch runs
with ``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise, so that its idle OpenMP
threads do not spin on the cores the next implementation's step needs.

``adamx.step (flat)`` and ``adamx.step 8-bit`` take the params and write them
with the moments in one native loop per buffer or leaf (``adamx.native``),
outside Optax's updates-then-apply protocol.

The 8-bit and 4-bit rows time the same step with block-wise quantized moments
(``state_bits``); their bandwidth columns still count 28 bytes per param, so read
them as time relative to float32 Adam.

Run: python benchmarks/step.py [--reps 31] [--json out.json] [--plot out.png]
     python benchmarks/step.py --quick   # small sizes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of ResNet-50 (torchvision layout): 161 leaves, 25.6M params."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, in_ch, 1, 1), (4 * width,), (4 * width,)]
            in_ch = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def cases(scale: int) -> dict[str, tuple[list[tuple[int, ...]], jnp.dtype]]:
    """The benchmark's trees; ``scale`` > 1 divides sizes and leaf counts."""
    resnet = resnet50_shapes()
    return {
        "1 x 16M": ([(16_000_000 // scale,)], jnp.float32),
        "200 x 80K": ([(80_000 // scale,)] * 200, jnp.float32),
        "ResNet-50": (
            resnet if scale == 1 else resnet[: max(3, 161 // scale)],
            jnp.float32,
        ),
        "2000 x 500": ([(500,)] * max(2, 2000 // scale), jnp.float32),
        "200 x 80K bf16": ([(80_000 // scale,)] * 200, jnp.bfloat16),
    }


def make_tree(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return {
        f"p{i:04d}": jnp.asarray(rng.standard_normal(s, dtype=np.float32), dtype)
        for i, s in enumerate(shapes)
    }


class JaxStep:
    """One implementation's donated step with its own buffers."""

    def __init__(self, tx, apply_updates, params, grads, *, in_place=False):
        # Own copies: the step donates its params, which must not be shared.
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
        self.state = tx.init(params)
        self.params, self.grads = params, grads

        def step(p, s, g):
            if in_place:
                return adamx.step(tx, g, s, p)
            u, s = tx.update(g, s, p)
            return apply_updates(p, u), s

        self.step = jax.jit(step, donate_argnums=(0, 1))

    def __call__(self) -> None:
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))


class TorchStep:
    """torch.optim.Adam on CPU tensors holding the same numbers."""

    def __init__(self, shapes, dtype, mode: str):
        # OpenMP threads that spin after a step take cores from whichever step
        # runs next; told to sleep, they leave the interleaved runs independent
        # (torch's own step time unchanged). Read when torch loads OpenMP.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        torch.set_num_threads(_cpu_threads())
        tdtype = torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32
        gen = torch.Generator().manual_seed(0)
        self.params = [torch.randn(s, generator=gen).to(tdtype) for s in shapes]
        for p in self.params:
            p.requires_grad_(True)
            p.grad = torch.randn(p.shape, generator=gen).to(tdtype)
        kwargs = {"fused": True} if mode == "fused" else {"foreach": True}
        self.opt = torch.optim.Adam(self.params, lr=1e-3, **kwargs)

    def __call__(self) -> None:
        self.opt.step()


def _cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


class StreamProbe:
    """A donated streaming loop whose time gives the machine's bandwidth.

    ``scale`` reads and writes x (8 bytes per float); ``triad`` also reads y
    (12 bytes). The probes run in the same shuffled rounds as the steps, so the
    limit comes from the same minutes as the step times it divides.
    """

    BYTES = {"scale": 8, "triad": 12}

    def __init__(self, kind: str, n: int):
        self.nbytes = self.BYTES[kind] * n
        self.x = jnp.ones(n, jnp.float32)
        self.y = jnp.ones(n, jnp.float32)
        if kind == "scale":
            self.fn = jax.jit(lambda x, y: x * 1.0001, donate_argnums=0)
        else:
            self.fn = jax.jit(lambda x, y: x * 1.0001 + y, donate_argnums=0)

    def __call__(self) -> None:
        self.x = jax.block_until_ready(self.fn(self.x, self.y))


def stream_probes(n: int) -> dict[str, StreamProbe]:
    """Both probes over n floats, by the names they are timed under."""
    return {f"stream {kind}": StreamProbe(kind, n) for kind in StreamProbe.BYTES}


def bandwidth_GBps(medians: dict[str, float], probes: dict[str, StreamProbe]) -> float:
    """The best of the probes' bandwidths, from their median ms."""
    return max(p.nbytes / (medians[name] * 1e-3) / 1e9 for name, p in probes.items())


def shuffled_rounds(
    names: Iterable[str], rounds: int, seed: int = 0
) -> Iterator[list[str]]:
    """The names in a fresh random (seeded) order for each of ``rounds`` rounds.

    Timed in a fixed order, each step would be charged for what the one before it
    left behind: measured here, the step run right after the 8-bit one took 10%
    longer.
    """
    order = list(names)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        yield order


def time_interleaved(
    impls: dict[str, Callable[[], None]], reps: int, seed: int = 0
) -> dict[str, float]:
    """Median ms of each implementation, timed in :func:`shuffled_rounds`."""
    for fn in impls.values():  # warm-up: compile and first touch, not timed
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for order in shuffled_rounds(impls, reps, seed):
        for name in order:
            start = time.perf_counter()
            impls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def implementations(shapes, dtype, with_torch: bool) -> dict[str, Callable[[], None]]:
    params, grads = make_tree(shapes, dtype, 0), make_tree(shapes, dtype, 1)
    flat_p, flat_g = adamx.ravel(params), adamx.ravel(grads)
    impls: dict[str, Callable[[], None]] = {
        "optax.adam": JaxStep(optax.adam(1e-3), optax.apply_updates, params, grads),
        "adamx.adam": JaxStep(adamx.adam(1e-3), adamx.apply_updates, params, grads),
        "adamx flat": JaxStep(adamx.adam(1e-3), adamx.apply_updates, flat_p, flat_g),
        # adamx.step writes the params and moments in one native loop on a
        # float32 buffer (bfloat16 buffers run the chain, as the row above).
        "adamx.step (flat)": JaxStep(
            adamx.adam(1e-3), None, flat_p, flat_g, in_place=True
        ),
        # Quantized moments (docs/memory.md): the same step, with the moments
        # decoded and encoded again inside it.
        "adamx 8-bit state": JaxStep(
            adamx.adam(1e-3, state_bits=8), adamx.apply_updates, params, grads
        ),
        "adamx 4-bit state": JaxStep(
            adamx.adam(1e-3, state_bits=4), adamx.apply_updates, params, grads
        ),
        # The 8-bit step by adamx.step: one native pass per leaf.
        "adamx.step 8-bit": JaxStep(
            adamx.adam(1e-3, state_bits=8), None, params, grads, in_place=True
        ),
    }
    try:
        import torch  # noqa: F401
    except ImportError:
        with_torch = False
    if not with_torch:
        return impls
    impls["torch Adam fused"] = TorchStep(shapes, dtype, "fused")
    impls["torch Adam foreach"] = TorchStep(shapes, dtype, "foreach")
    return impls


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--quick", action="store_true", help="sizes divided by 16")
    parser.add_argument("--scale", type=int, default=1, help="divide sizes by this")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--plot", help="write a bar chart (PNG) to this file")
    parser.add_argument(
        "--case", action="append", help="run only this case (repeatable)"
    )
    args = parser.parse_args(argv)

    scale = 16 if args.quick else args.scale
    device = jax.devices()[0].device_kind
    # The probes alone, before any step has run: for comparison with what
    # they measure among the steps, which sets the limits.
    probes = stream_probes(32_000_000 // scale)
    alone = bandwidth_GBps(time_interleaved(probes, args.reps), probes)
    del probes
    print(f"device: {device}, streaming bandwidth alone {alone:.1f} GB/s")
    results: dict = {"device": device, "bandwidth_alone_GBps": alone, "cases": {}}
    cols = ("ms", "GB/s", "/optax", "/limit")
    print(f"{'case':16s} {'implementation':20s} " + " ".join(f"{c:>7s}" for c in cols))
    selected = cases(scale)
    unknown = sorted(set(args.case or ()) - set(selected))
    if unknown:
        parser.error(f"--case {unknown[0]!r}: the cases are {list(selected)}")
    for case, (shapes, dtype) in selected.items():
        if args.case and case not in args.case:
            continue
        n = sum(int(np.prod(s)) for s in shapes)
        nbytes = 7 * jnp.dtype(dtype).itemsize * n  # 4 reads + 3 writes per param
        impls = implementations(shapes, dtype, with_torch=not args.no_torch)
        probes = stream_probes(32_000_000 // scale)
        medians = time_interleaved({**impls, **probes}, args.reps)
        bandwidth = bandwidth_GBps(medians, probes)
        limit_ms = nbytes / (bandwidth * 1e9) * 1e3
        print(f"{case:16s} {'(streaming)':20s} {'':8s} {bandwidth:7.1f}")
        rows = {}
        for name in impls:
            ms = medians[name]
            rows[name] = {
                "ms": ms,
                "GBps": nbytes / (ms * 1e-3) / 1e9,
                "ratio_to_optax": ms / medians["optax.adam"],
                "ratio_to_limit": ms / limit_ms,
            }
            r = rows[name]
            print(
                f"{case:16s} {name:20s} {ms:8.2f} {r['GBps']:7.1f} "
                f"{r['ratio_to_optax']:7.2f} {r['ratio_to_limit']:7.2f}"
            )
        results["cases"][case] = {
            "params": n,
            "leaves": len(shapes),
            "bytes": nbytes,
            "bandwidth_GBps": bandwidth,
            "limit_ms": limit_ms,
            "results": rows,
        }
    # The run's bandwidth: the median of the cases' (each measured among them).
    results["bandwidth_GBps"] = statistics.median(
        c["bandwidth_GBps"] for c in results["cases"].values()
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        plot(results, args.plot)
    return results


def plot(results: dict, path: str) -> None:
    """Grouped bars of each implementation's step time relative to optax.adam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case_names = list(results["cases"])
    impl_names = list(next(iter(results["cases"].values()))["results"])
    width = 0.8 / len(impl_names)
    fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
    for i, impl in enumerate(impl_names):
        values = [
            results["cases"][c]["results"][impl]["ratio_to_optax"] for c in case_names
        ]
        ax.bar(np.arange(len(case_names)) + i * width, values, width, label=impl)
    limits = [
        results["cases"][c]["limit_ms"]
        / results["cases"][c]["results"]["optax.adam"]["ms"]
        for c in case_names
    ]
    ax.scatter(
        np.arange(len(case_names)) + 0.4 - width / 2, limits, marker="_", s=900,
        color="black", label="bandwidth limit", zorder=3,
    )  # fmt: skip
    ax.set_xticks(np.arange(len(case_names)) + 0.4 - width / 2, case_names)
    ax.set_ylabel("step time / optax.adam (lower is better)")
    ax.set_yscale("log")
    # Below the bars, where no group hides under it.
    fig.legend(fontsize=8, ncol=5, loc="outside lower center")
    ax.set_title(f"Adam step, {results['device']}")
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
