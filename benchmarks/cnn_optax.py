"""The CNN example with Optax's optimizer in place of adamx's: accuracy and step time.

    python benchmarks/cnn_optax.py --dataset fashion_mnist [--json out.json]

Imports examples/cifar10's model and training loop and runs them twice with the
same data, seed and flags, once building the optimizer and schedule from adamx and
once from Optax, then times the two jitted train steps against each other on one
batch, alternating, so that a change in the machine's load affects both alike.
Any flag of the example's train.py may be given; --steps-only skips the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from cifar10 import data, model, train  # noqa: E402

import adamx  # noqa: E402

LIBRARIES = {"adamx": adamx, "optax": optax}


def step_times(args: argparse.Namespace, rounds: int, steps: int) -> dict[str, list]:
    """Seconds per train step for each library, ``rounds`` alternating runs each."""
    ds = data.load(args.dataset, args.data_dir, download=not args.no_download)
    plan = data.EpochPlan.draw(0, 0, len(ds.train_labels), ds.crop_padding, ds.flip)
    batch = jax.device_put(next(data.train_batches(ds, args.batch_size, plan)))
    net = model.CNN(ds.image_shape, ds.num_classes, args.widths, args.hidden,
                    rngs=nnx.Rngs(args.seed))  # fmt: skip
    graphdef, params, batch_stats = model.split(net)
    runs = {}
    for name, lib in LIBRARIES.items():
        tx, _ = train.make_optimizer(
            args, data.steps_per_epoch(ds, args.batch_size), lib
        )
        step, _ = train.make_steps(graphdef, tx, args.label_smoothing)
        state = jax.tree.map(jax.numpy.copy, (params, tx.init(params), batch_stats))
        state = step(*state, batch)[:3]  # compiles
        runs[name] = [step, state]
    times = {name: [] for name in LIBRARIES}
    for r in range(rounds):
        # Alternate which goes first, so that neither always follows the other.
        for name, run in list(runs.items())[:: 1 if r % 2 else -1]:
            step, state = run
            jax.block_until_ready(state)
            start = time.perf_counter()
            for _ in range(steps):
                *state, log = step(*state, batch)
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / steps)
            run[1] = state
    return times


def main() -> None:
    """Run both trainings and the step timing; print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-only", action="store_true", help="skip the runs")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds")
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--json", help="write the results to this file")
    own, rest = parser.parse_known_args()
    args = train.parse_args(rest)
    results = {"config": {k: v for k, v in vars(args).items() if k != "workdir"}}

    if not own.steps_only:
        for name, lib in LIBRARIES.items():
            args.workdir = tempfile.mkdtemp(prefix=f"cnn_{name}_")
            start = time.perf_counter()
            history = train.train(args, lib=lib)
            results[name] = {
                "test_accuracy": history[-1]["test_accuracy"],
                "train_loss": history[-1]["train_loss"],
                "train_time_s": sum(h["epoch_time_s"] for h in history),
                "wall_time_s": time.perf_counter() - start,
            }
    times = step_times(args, own.rounds, own.steps)
    for name in LIBRARIES:
        results.setdefault(name, {})["step_time_ms"] = 1e3 * statistics.median(
            times[name]
        )
    ratio = statistics.median(
        a / o for a, o in zip(times["adamx"], times["optax"], strict=True)
    )
    results["step_time_ratio_adamx_over_optax"] = ratio

    print(f"\n{'':8}{'test acc':>10}{'train time':>12}{'step time':>12}")
    for name in LIBRARIES:
        r = results[name]
        acc = f"{100 * r['test_accuracy']:.2f}%" if "test_accuracy" in r else "-"
        secs = f"{r['train_time_s']:.1f} s" if "train_time_s" in r else "-"
        print(f"{name:8}{acc:>10}{secs:>12}{r['step_time_ms']:>9.1f} ms")
    print(f"step time adamx / optax: {ratio:.3f} (median of {own.rounds} rounds)")
    if "test_accuracy" in results["adamx"]:
        gap = results["adamx"]["test_accuracy"] - results["optax"]["test_accuracy"]
        print(f"accuracy adamx - optax: {100 * gap:+.2f} points")
    if own.json:
        Path(own.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
