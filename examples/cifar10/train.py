"""Train a CNN with adamx on CIFAR-10 or Fashion-MNIST, data-parallel on all devices.

    python examples/cifar10/train.py --dataset fashion_mnist --workdir runs/fmnist

After each epoch the test set is evaluated, a line is appended to
WORKDIR/metrics.jsonl, WORKDIR/metrics.png is redrawn and a checkpoint is written
to WORKDIR/checkpoints/; ``--resume`` continues from the last complete one. For
several processes, give each --coordinator-address, --num-processes and
--process-id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import adamx

if __package__:
    from . import data, model
else:  # run as a script: the modules sit beside this file
    import data
    import model

OPTIMIZERS = ("adamw", "adam", "nadam", "nadamw", "radam", "amsgrad", "adabelief")
OPTIMIZERS += ("lamb", "lion", "sgd", "schedule_free_adamw")
# Trained at y, evaluated at x (adamx.schedule_free_eval_params); no schedule.
SCHEDULE_FREE = ("schedule_free_adamw",)
DECOUPLED_DECAY = ("adamw", "nadamw", "lamb", "lion")
SCHEDULES = ("warmup_cosine", "onecycle", "cosine", "constant")
CHECKPOINTS_KEPT = 2


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in --help, but for options whose help says what None is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad value reported in one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(
    kind: type, low: float, *, low_open: bool = False, high: float | None = None
):
    """An argparse type: a ``kind`` in [low, high) (or (low, ...) if ``low_open``)."""
    if high is not None:
        allowed = f"in [{low}, {high})"
    else:
        allowed = f"> {low}" if low_open else f">= {low}"
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {what} {allowed}, got {text!r}"
            ) from None
        bad = value <= low if low_open else value < low
        bad = bad or (high is not None and value >= high) or value != value
        if bad or (kind is float and abs(value) == float("inf")):
            raise argparse.ArgumentTypeError(f"must be {what} {allowed}, got {text}")
        return value

    return parse


def _widths(text: str) -> tuple[int, ...]:
    positive = _number(int, 1)
    try:
        return tuple(positive(w) for w in text.split(","))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"each width {e}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are the recipe measured in the README.

    Bad values are refused here, before anything is loaded: exit status 2 and
    one line naming the option and what it takes.
    """
    env = os.environ.get
    p = _Parser(
        description=__doc__.splitlines()[0],
        formatter_class=_Help,
    )
    p.add_argument(
        "--dataset",
        choices=data.DATASETS,
        default="cifar10",
        help="the dataset to train on",
    )
    p.add_argument("--data-dir", default="data", help="where to look for datasets")
    p.add_argument("--no-download", action="store_true", help="never fetch data")
    p.add_argument(
        "--workdir", default="workdir", help="metrics, plot and checkpoints go here"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --workdir",
    )
    p.add_argument(
        "--epochs",
        type=_number(int, 1),
        default=10,
        help="stop after this many epochs (counting resumed ones)",
    )
    # Not tied to --epochs, so that a run stopped and resumed follows the same path.
    p.add_argument(
        "--schedule-epochs",
        type=_number(int, 1),
        default=10,
        help="the length of the learning-rate schedule, in epochs",
    )
    p.add_argument(
        "--past-schedule",
        action="store_true",
        help="allow --epochs beyond --schedule-epochs (the rate stays "
        "at the schedule's end value, 0 for the cosine ones)",
    )
    p.add_argument(
        "--batch-size",
        type=_number(int, 1),
        default=64,
        help="the global batch, divided among the devices",
    )
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, default="adamw", help="the adamx optimizer"
    )
    p.add_argument(
        "--learning-rate",
        type=_number(float, 0.0, low_open=True),
        default=6e-3,
        help="the schedule's peak rate (schedule_free_adamw: the rate after "
        "its warm-up)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="warmup_cosine",
        help="the learning-rate schedule (schedule_free_adamw has none: a "
        "linear warm-up over the first fifth of --schedule-epochs)",
    )
    p.add_argument(
        "--weight-decay",
        type=_number(float, 0.0),
        default=5e-2,
        help="decoupled weight decay (adamw, nadamw, lamb, lion, schedule_free_adamw)",
    )
    p.add_argument(
        "--label-smoothing",
        type=_number(float, 0.0, high=1.0),
        default=0.1,
        help="weight of the uniform target",
    )
    p.add_argument(
        "--crop-padding",
        type=_number(int, 0),
        help="pixels of random shift (default: the dataset's own)",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="random horizontal flips (default: the dataset's)",
    )
    p.add_argument(
        "--widths",
        type=_widths,
        default="32,64",
        help="channels of the conv blocks, e.g. 32,64,64",
    )
    p.add_argument(
        "--hidden", type=_number(int, 1), default=256, help="units of the dense layer"
    )
    p.add_argument(
        "--seed",
        type=_number(int, 0),
        default=0,
        help="for the init, the data order and augmentation",
    )
    p.add_argument(
        "--coordinator-address",
        default=env("JAX_COORDINATOR_ADDRESS"),
        help="host:port of process 0, for several processes",
    )
    p.add_argument(
        "--num-processes",
        type=_number(int, 1),
        default=env("JAX_NUM_PROCESSES"),
        help="processes in all",
    )
    p.add_argument(
        "--process-id",
        type=_number(int, 0),
        default=env("JAX_PROCESS_ID"),
        help="this process's index",
    )
    args = p.parse_args(argv)
    if args.epochs > args.schedule_epochs and args.schedule != "constant":
        if not args.past_schedule:
            p.error(
                f"argument --epochs: {args.epochs} runs past the schedule's "
                f"{args.schedule_epochs} epochs (--schedule-epochs), after which "
                "the learning rate stays at its end value; raise "
                "--schedule-epochs, or pass --past-schedule"
            )
    return args


def make_optimizer(args: argparse.Namespace, steps_per_epoch: int, lib: Any = adamx):
    """``lib``'s optimizer and schedule, and the schedule alone for logging."""
    total, peak = args.schedule_epochs * steps_per_epoch, args.learning_rate
    if args.optimizer in SCHEDULE_FREE:
        # No decay: a warm-up, then the average of the iterates does its work.
        factory = getattr(lib, args.optimizer, None) or getattr(
            lib.contrib, args.optimizer
        )
        warmup = max(total // 5, 1)
        tx = factory(peak, warmup_steps=warmup, weight_decay=args.weight_decay)
        return tx, lambda step: peak * min(1.0, float(step) / warmup)
    schedule = {
        "warmup_cosine": lambda: lib.warmup_cosine_decay_schedule(
            0.0, peak, total // 5, total
        ),
        "onecycle": lambda: lib.cosine_onecycle_schedule(total, peak),
        "cosine": lambda: lib.cosine_decay_schedule(peak, total),
        "constant": lambda: lib.constant_schedule(peak),
    }[args.schedule]()
    factory = getattr(lib, args.optimizer)
    if args.optimizer == "sgd":
        return factory(schedule, momentum=0.9, nesterov=True), schedule
    if args.optimizer in DECOUPLED_DECAY:
        # Decay the weights of convolutions and dense layers, not norms or biases.
        def kernels(params):
            return jax.tree.map(lambda x: x.ndim > 1, params)

        tx = factory(schedule, weight_decay=args.weight_decay, mask=kernels)
        return tx, schedule
    return factory(schedule), schedule


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0):
    """Per-example cross-entropy against one-hot labels smoothed by ``smoothing``."""
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return (1.0 - smoothing) * nll - smoothing * log_p.mean(-1)


def make_steps(graphdef: nnx.GraphDef, tx: Any, label_smoothing: float):
    """The jitted train and eval steps, pure functions of their arguments."""

    def loss_fn(params, batch_stats, batch):
        logits, batch_stats = model.apply(
            graphdef, params, batch_stats, batch["image"], train=True
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        accuracy = (logits.argmax(-1) == batch["label"]).mean()
        return loss, (batch_stats, accuracy)

    # Donated inputs lend their buffers to the outputs: no copy of the state.
    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(params, opt_state, batch_stats, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (batch_stats, accuracy)), grads = grad_fn(params, batch_stats, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = adamx.apply_updates(params, updates)
        return params, opt_state, batch_stats, {"loss": loss, "accuracy": accuracy}

    @jax.jit
    def eval_step(params, batch_stats, batch):
        images, labels, mask = batch["image"], batch["label"], batch["mask"]
        logits, _ = model.apply(graphdef, params, batch_stats, images, train=False)
        return {
            "loss": (cross_entropy(logits, labels) * mask).sum(),
            "correct": ((logits.argmax(-1) == labels) * mask).sum(),
        }

    return train_step, eval_step


def eval_params(args: argparse.Namespace, opt_state: Any, params: Any) -> Any:
    """The params to evaluate: a schedule-free optimizer's x, else the params."""
    if args.optimizer in SCHEDULE_FREE:
        return adamx.schedule_free_eval_params(opt_state, params)
    return params


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a save cut short never got its name."""
    found = [p for p in folder.glob("epoch_*") if p.name[6:].isdigit()]
    found = [p for p in found if (p / "adamx_checkpoint.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[6:]))


def timed(batches: Iterable, seconds: list[float]) -> Iterator:
    """The items of ``batches``, adding the time taken to make them to ``seconds``."""
    batches = iter(batches)
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        seconds[0] += time.perf_counter() - start
        if batch is None:
            return
        yield batch


def report(workdir: Path, history: list[dict], title: str) -> None:
    """Append the last epoch's metrics to metrics.jsonl, redraw the PNG, print."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = history[-1]
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(last) + "\n")
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    left.plot(epochs, [h["train_loss"] for h in history], "o-")
    left.set(xlabel="epoch", ylabel="train loss")
    right.plot(epochs, [100 * h["test_accuracy"] for h in history], "o-")
    right.set(xlabel="epoch", ylabel="test accuracy (%)")
    fig.suptitle(title)
    fig.savefig(workdir / "metrics.tmp.png", dpi=100)
    plt.close(fig)
    os.replace(workdir / "metrics.tmp.png", workdir / "metrics.png")
    print(
        f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, test accuracy "
        f"{100 * last['test_accuracy']:.2f}%, {last['images_per_s']:.0f} images/s"
    )


def train(args: argparse.Namespace, *, lib: Any = adamx, devices=None) -> list[dict]:
    """Train as ``args`` say; returns every epoch's metrics, earlier runs' included.

    ``lib`` builds the optimizer and schedule (``optax`` can stand in for adamx);
    ``devices`` defaults to every device of every process.
    """
    ds = data.load(args.dataset, args.data_dir, download=not args.no_download)
    ds = dataclasses.replace(
        ds,
        crop_padding=ds.crop_padding
        if args.crop_padding is None
        else args.crop_padding,
        flip=ds.flip if args.flip is None else args.flip,
    )
    devices = jax.devices() if devices is None else devices
    if args.batch_size % len(devices):
        raise ValueError(f"--batch-size must divide by the {len(devices)} devices")
    # Auto axes: the compiler inserts the all-reduces a data-parallel step needs.
    mesh = jax.make_mesh((len(devices),), ("data",), (AxisType.Auto,), devices=devices)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    shard = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    workdir, chief = Path(args.workdir), jax.process_index() == 0

    def to_global(batch: data.Batch) -> dict[str, jax.Array]:
        # Each process hands in its own share of the global batch.
        put = functools.partial(jax.make_array_from_process_local_data, sharded)
        return jax.tree.map(put, batch)

    rngs = nnx.Rngs(args.seed)
    net = model.CNN(ds.image_shape, ds.num_classes, args.widths, args.hidden, rngs=rngs)
    graphdef, params, batch_stats = model.split(net)
    steps = data.steps_per_epoch(ds, args.batch_size)
    tx, schedule = make_optimizer(args, steps, lib)
    train_step, eval_step = make_steps(graphdef, tx, args.label_smoothing)
    params, opt_state, batch_stats = jax.device_put(
        (params, tx.init(params), batch_stats), replicated
    )
    # Epoch e's order and augmentation are drawn from (seed, e), so with the epoch
    # count the seed is all the state the data pipeline has.
    done, seed, history = 0, args.seed, []
    found = checkpoints(workdir / "checkpoints")
    if found and not args.resume:
        raise FileExistsError(
            f"{workdir} holds checkpoints: pass --resume, or another --workdir"
        )
    if found:
        state = {"params": params, "opt_state": opt_state, "batch_stats": batch_stats}
        state = adamx.checkpoint.restore(found[-1], {**state, "epoch": 0, "seed": 0})
        params, opt_state = state["params"], state["opt_state"]
        batch_stats, done, seed = state["batch_stats"], state["epoch"], state["seed"]
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        # Lines past the checkpoint are of an epoch that will be done again.
        history = [h for h in map(json.loads, lines) if h["epoch"] <= done]
    if chief:
        workdir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(h) + "\n" for h in history)
        (workdir / "metrics.jsonl").write_text(lines)
        resuming = f", resuming from {found[-1]}" if found else ""
        print(
            f"{ds.name}: {len(ds.train_labels)} training images, "
            f"{model.count_params(params):,} params, {len(devices)} devices{resuming}"
        )

    for epoch in range(done, args.epochs):
        n = len(ds.train_labels)
        plan = data.EpochPlan.draw(seed, epoch, n, ds.crop_padding, ds.flip)
        loading = [0.0]  # seconds spent assembling batches: not the bottleneck
        batches = timed(data.train_batches(ds, args.batch_size, plan, **shard), loading)
        desc = f"epoch {epoch + 1}/{args.epochs}"
        bar = tqdm(batches, desc, steps, leave=False, disable=not chief)
        start, logs = time.perf_counter(), []
        for i, batch in enumerate(bar):
            params, opt_state, batch_stats, log = train_step(
                params, opt_state, batch_stats, to_global(batch)
            )
            logs.append(log)
            if i % 20 == 19:  # reading a value waits for its step: not every time
                speed = (i + 1) * args.batch_size / (time.perf_counter() - start)
                loss, accuracy = float(log["loss"]), float(log["accuracy"])
                bar.set_postfix_str(
                    f"loss {loss:.3f}, acc {accuracy:.3f}, {speed:.0f} img/s"
                )
        logs = jax.device_get(logs)
        seconds = time.perf_counter() - start
        test = data.test_batches(ds, 4 * args.batch_size, **shard)
        at = eval_params(args, opt_state, params)
        sums = [eval_step(at, batch_stats, to_global(b)) for b in test]
        n_test = len(ds.test_labels)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean([log["loss"] for log in logs])),
                "train_accuracy": float(np.mean([log["accuracy"] for log in logs])),
                "test_loss": sum(float(s["loss"]) for s in sums) / n_test,
                "test_accuracy": sum(float(s["correct"]) for s in sums) / n_test,
                "images_per_s": steps * args.batch_size / seconds,
                "epoch_time_s": seconds,
                "loading_time_s": loading[0],
                "learning_rate": float(schedule((epoch + 1) * steps)),
            }
        )
        if chief:
            report(workdir, history, f"{ds.name}, {args.optimizer}")
        # After the metrics: should this save be cut short, the epoch is redone.
        state = {"params": params, "opt_state": opt_state, "batch_stats": batch_stats}
        state |= {"epoch": epoch + 1, "seed": seed}
        adamx.checkpoint.save(workdir / "checkpoints" / f"epoch_{epoch + 1}", state)
        if chief:
            for old in checkpoints(workdir / "checkpoints")[:-CHECKPOINTS_KEPT]:
                shutil.rmtree(old)
    return history


def main(argv: list[str] | None = None) -> int:
    """The command line; bad values, missing data and Ctrl-C end with a message,
    not a traceback."""
    args = parse_args(argv)
    if args.coordinator_address or (args.num_processes or 1) > 1:
        jax.distributed.initialize(
            args.coordinator_address, args.num_processes, args.process_id
        )
    if args.batch_size % jax.device_count():
        print(
            f"{Path(sys.argv[0]).name}: error: argument --batch-size: must divide "
            f"by the {jax.device_count()} devices, got {args.batch_size} (see --help)",
            file=sys.stderr,
        )
        return 2
    try:
        history = train(args)
    except (data.DatasetError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The epoch under way is dropped; a checkpoint is written whole or not
        # at all, so the last one on disk is complete.
        found = checkpoints(Path(args.workdir) / "checkpoints")
        kept = (
            f"the last checkpoint, {found[-1]}, is kept"
            if found
            else "no epoch was done"
        )
        print(
            f"\ninterrupted: {kept}; run the same command with --resume to go on",
            file=sys.stderr,
        )
        return 130
    if history and jax.process_index() == 0:
        accuracy = 100 * history[-1]["test_accuracy"]
        seconds = sum(h["epoch_time_s"] for h in history)
        images = sum(h["images_per_s"] * h["epoch_time_s"] for h in history)
        print(
            f"test accuracy after {history[-1]['epoch']} epochs: {accuracy:.2f}%, "
            f"in {seconds:.0f} s of training ({images / seconds:,.0f} images/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
