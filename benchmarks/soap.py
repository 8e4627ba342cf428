"""SOAP's step time against the ``pytorch-optimizer`` port of the authors' code.

The tree is a transformer's (``--layers`` layers of width ``--width``: q, k, v,
o, an MLP of d x 4d and 4d x d, two norms, an embedding), every leaf trained by
SOAP with the authors' defaults (a basis refresh every 10 steps). One timed
unit is ``--frequency`` consecutive steps, so that each includes one refresh
(a QR decomposition per rotated dimension); the median of ``--reps`` units,
the two implementations interleaved in a shuffled order each round, warm-up
excluded. adamx's step is jitted with params and state donated; torch runs
on as many threads as JAX's CPU client uses (``OMP_WAIT_POLICY=PASSIVE``).
Both in float32.

Run: python benchmarks/soap.py [--json out.json]
     python benchmarks/soap.py --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from muon import transformer_shapes  # noqa: E402
from step import time_interleaved  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--frequency", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.width, args.vocab, args.reps, args.frequency = 1, 16, 32, 2, 2

    import jax
    import jax.numpy as jnp
    import torch
    from pytorch_optimizer import SOAP

    import adamx

    torch.set_num_threads(os.cpu_count() or 1)
    shapes = transformer_shapes(args.layers, args.width, args.vocab)
    shapes.pop("head")
    rng = np.random.default_rng(0)
    host = {
        k: (rng.normal(size=s) * 0.02).astype(np.float32) for k, s in shapes.items()
    }
    grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}

    tx = adamx.soap(3e-3, precondition_frequency=args.frequency)
    params = {k: jnp.asarray(v) for k, v in host.items()}
    jgrads = {k: jnp.asarray(v) for k, v in grads.items()}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    holder = [params, tx.init(params)]

    def run_adamx():
        for _ in range(args.frequency):
            holder[0], holder[1] = step(holder[0], holder[1], jgrads)
        jax.block_until_ready(holder[0])

    weights = [torch.nn.Parameter(torch.tensor(v)) for v in host.values()]
    tgrads = [torch.tensor(v) for v in grads.values()]
    opt = SOAP(weights, lr=3e-3, precondition_frequency=args.frequency)

    def run_torch():
        for _ in range(args.frequency):
            for w, g in zip(weights, tgrads, strict=True):
                w.grad = g
            opt.step()

    medians = time_interleaved(
        {"adamx.soap": run_adamx, "pytorch-optimizer SOAP": run_torch}, args.reps
    )
    per_step = {k: v / args.frequency for k, v in medians.items()}
    results = {
        "tree": f"{args.layers} layers of d={args.width}, vocab {args.vocab}",
        "params": int(sum(np.prod(s) for s in shapes.values())),
        "precondition_frequency": args.frequency,
        "load_average": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "ms_per_step": per_step,
        "adamx_vs_torch": per_step["adamx.soap"] / per_step["pytorch-optimizer SOAP"],
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
