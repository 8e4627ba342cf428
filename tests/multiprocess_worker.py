"""One process of a data-parallel training run, for tests/test_multiprocess.py.

    python tests/multiprocess_worker.py --out params.npz \\
        --num-processes 2 --process-id 0 --port 12345      # and --process-id 1

Trains a small MLP for a few steps with adamx, with plain ``adamw`` and ``muon``
and with each under ``sharded`` (ZeRO-1), on a 2-device mesh: one device in each
of 2 processes joined by ``jax.distributed`` or, without those arguments, both
devices of this process (``XLA_FLAGS=--xla_force_host_platform_device_count=2``).
Each process feeds its own rows of every global batch. Process 0 writes the final
params to ``--out``. ``results_of_runs`` runs the same training in the caller's
process.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx.sharding import sharded

GLOBAL_BATCH = 16
STEPS = 5
# Exit status that tells the test that gloo collectives are missing from jaxlib.
NO_GLOO = 77


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(8, 32)) / np.sqrt(8)).astype(np.float32),
        "b1": np.zeros(32, np.float32),
        "w2": (rng.normal(size=(32, 4)) / np.sqrt(32)).astype(np.float32),
        "b2": np.zeros(4, np.float32),
    }


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole global batch of ``step``; each process takes its rows of it."""
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(GLOBAL_BATCH, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=GLOBAL_BATCH).astype(np.int32)
    return x, y


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=-1))


def train(tx, mesh) -> dict[str, np.ndarray]:
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))
    params = jax.device_put(init_params(), replicated)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    n, i = jax.process_count(), jax.process_index()
    share = GLOBAL_BATCH // n
    for t in range(STEPS):
        x, y = batch(t)
        local = slice(i * share, (i + 1) * share)
        x = jax.make_array_from_process_local_data(rows, x[local], x.shape)
        y = jax.make_array_from_process_local_data(rows, y[local], y.shape)
        params, state = step(params, state, x, y)
    # Replicated: this process's shard holds every value.
    return {k: np.asarray(v.addressable_data(0)) for k, v in params.items()}


def results_of_runs(devices: list) -> dict[str, np.ndarray]:
    """Final params of plain and ZeRO-1 runs of AdamW and of Muon (which splits
    its Newton-Schulz work by matrices) on a mesh over ``devices``."""
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
    tx = adamx.adamw(1e-2, weight_decay=0.1)
    muon = adamx.muon(1e-2, weight_decay=0.1)
    runs = {
        "plain": train(tx, mesh),
        "sharded": train(sharded(tx, mesh), mesh),
        "muon": train(muon, mesh),
        "sharded_muon": train(sharded(muon, mesh), mesh),
    }
    return {f"{run}/{k}": v for run, ps in runs.items() for k, v in ps.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)

    try:
        if args.num_processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                coordinator_address=f"127.0.0.1:{args.port}",
                num_processes=args.num_processes,
                process_id=args.process_id,
                initialization_timeout=60,
            )
        devices = jax.devices()
    except Exception as e:
        if "gloo" in str(e).lower():
            print(f"no gloo collectives: {e}", file=sys.stderr)
            return NO_GLOO
        raise
    if len(devices) != 2:
        print(f"expected 2 devices in all, got {devices}", file=sys.stderr)
        return 2
    results = results_of_runs(devices)
    if jax.process_index() == 0:
        np.savez(args.out, **results)
    print(f"process {jax.process_index()} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
