"""Adam, AdamW, NAdam, RAdam and SGD with momentum, trained alike on Fashion-MNIST.

    python examples/compare_optimizers.py [--epochs 2] [--out compare_optimizers.png]

Does Adam converge faster than SGD? Each optimizer trains the CNN example's model
(examples/cifar10) from the same initial weights, on the same batches in the same
order, for the same number of steps with the same warmup-cosine schedule; only the
optimizer and its peak learning rate change (each its usual one, or --lr NAME=RATE).
The script draws the training loss of every step, smoothed, to one PNG, and prints
the loss at a few points of the budget, the test accuracy and the time taken.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

# Run as a script, this file's folder is on the path, and the example with it.
from cifar10 import data, model, train
from flax import nnx

# Peak learning rates: the example's for the Adam family, the classic 0.1 for SGD
# with Nesterov momentum 0.9.
RATES = {"adam": 6e-3, "adamw": 6e-3, "nadam": 6e-3, "radam": 6e-3, "sgd": 0.1}


def run(args: argparse.Namespace, ds: data.Dataset) -> dict:
    """Train once as ``args`` say; per-step losses, test accuracy and seconds."""
    net = model.CNN(ds.image_shape, ds.num_classes, args.widths, args.hidden,
                    rngs=nnx.Rngs(args.seed))  # fmt: skip
    graphdef, params, batch_stats = model.split(net)
    tx, _ = train.make_optimizer(args, data.steps_per_epoch(ds, args.batch_size))
    train_step, eval_step = train.make_steps(graphdef, tx, args.label_smoothing)
    opt_state, losses = tx.init(params), []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        plan = data.EpochPlan.draw(
            args.seed, epoch, len(ds.train_labels), ds.crop_padding, ds.flip
        )
        for batch in data.train_batches(ds, args.batch_size, plan):
            params, opt_state, batch_stats, log = train_step(
                params, opt_state, batch_stats, batch
            )
            losses.append(log["loss"])
    losses = np.asarray(jax.device_get(losses))
    seconds = time.perf_counter() - start
    test = data.test_batches(ds, 1024)
    correct = sum(int(eval_step(params, batch_stats, b)["correct"]) for b in test)
    return {
        "losses": losses,
        "test_accuracy": correct / len(ds.test_labels),
        "seconds": seconds,
    }


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Moving average over ``window`` steps (shorter at the start)."""
    sums = np.cumsum(np.insert(x, 0, 0.0))
    lo = np.maximum(np.arange(1, len(x) + 1) - window, 0)
    return (sums[1:] - sums[lo]) / (np.arange(1, len(x) + 1) - lo)


def main() -> None:
    """Train each optimizer, draw the curves, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="compare_optimizers.png")
    parser.add_argument(
        "--lr", action="append", default=[], help="NAME=RATE, e.g. sgd=0.05"
    )
    own, rest = parser.parse_known_args()
    rates = RATES | {k: float(v) for k, v in (s.split("=") for s in own.lr)}
    defaults = ["--dataset", "fashion_mnist", "--epochs", "2", "--schedule-epochs"]
    args = train.parse_args([*defaults, "2", *rest])
    if args.schedule_epochs < args.epochs:
        args.schedule_epochs = args.epochs
    ds = data.load(args.dataset, args.data_dir, download=not args.no_download)

    results = {}
    for name, rate in rates.items():
        args.optimizer, args.learning_rate = name, rate
        results[name] = run(args, ds)
        print(f"{name}: {100 * results[name]['test_accuracy']:.2f}%", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = data.steps_per_epoch(ds, args.batch_size)
    fig, (ax, late) = plt.subplots(
        1, 2, figsize=(10, 4.5), layout="constrained", width_ratios=(3, 2)
    )
    # Curves this close hide each other: each its own dash and marker, and the
    # last third of training drawn apart, where they differ.
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    markers = ["o", "s", "^", "v", "D"]
    third = 2 * len(next(iter(results.values()))["losses"]) // 3
    for i, (name, r) in enumerate(results.items()):
        curve = smooth(r["losses"], 25)
        style = dict(ls=styles[i % len(styles)], marker=markers[i % len(markers)],
                     markevery=len(curve) // 8, lw=1.3, ms=4)  # fmt: skip
        ax.plot(curve, label=f"{name} (lr {rates[name]:g})", **style)
        late.plot(np.arange(third, len(curve)), curve[third:], **style)
    ax.set(xlabel="step", ylabel="train loss (25-step average)", yscale="log")
    late.set(xlabel="step", title="the last third")
    fig.suptitle(f"{ds.name}, {args.epochs} epochs of {steps} steps, batch "
                 f"{args.batch_size}")  # fmt: skip
    ax.legend()
    fig.savefig(own.out, dpi=110)
    with open(own.out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump({name: {"losses": r["losses"].tolist(),
                          "test_accuracy": r["test_accuracy"],
                          "seconds": r["seconds"], "learning_rate": rates[name]}
                   for name, r in results.items()}, f)  # fmt: skip
    print(f"\nwrote {own.out}\n")

    marks = [len(r["losses"]) // 10, len(r["losses"]) // 2, len(r["losses"])]
    head = "".join(f"{f'loss @{m}':>12}" for m in marks)
    print(f"{'optimizer':10}{'lr':>8}{head}{'test acc':>10}{'time':>8}")
    for name, r in results.items():
        curve = smooth(r["losses"], 25)
        cells = "".join(f"{curve[m - 1]:12.3f}" for m in marks)
        print(f"{name:10}{rates[name]:8g}{cells}"
              f"{100 * r['test_accuracy']:9.2f}%{r['seconds']:7.0f}s")  # fmt: skip


if __name__ == "__main__":
    main()
