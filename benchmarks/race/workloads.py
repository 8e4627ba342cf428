"""The race's workloads: a model, its data and a fixed budget, as pure functions.

A :class:`Workload` is everything the runner needs and nothing about the
optimizer: ``init(seed)`` builds the parameters (plain nested dicts of arrays) and
the model's other state (batch-norm statistics, else ``{}``); ``loss`` is the
mean training loss of a batch, pure and jittable; ``train_batch(seed, step)``
gives the same host arrays for the same pair, so that a resumed run replays an
interrupted one; ``val_loss`` is the mean loss over a fixed validation set.
``hidden(params)`` marks the matrices inside the network, which Muon and SOAP
take; embeddings, the output head, norms and biases go to their AdamW side.

* ``shakespeare``: a character-level GPT (4 pre-norm blocks of causal
  self-attention and a GELU MLP, width 64, 4 heads, learned positions, context
  64, batch 32) on Shakespeare's plays, validated on 256 windows spread over
  three held-out plays.
* ``fashion_mnist``: the CNN of ``examples/cifar10`` (conv, batch norm, ReLU,
  a dense hidden layer of 256; batch 128, shifts of one pixel) on
  Fashion-MNIST, validated on its 10000 test images.
* ``mnist1d``: a 1-D CNN (three strided convolutions, a dense hidden layer of
  128; batch 128) on MNIST-1D, validated on its 1000 test signals.

Budgets. The default race runs the 15 contenders of
:mod:`benchmarks.race.contenders`, each 6 times on the short budget (the
learning-rate sweep; SGD 4) and 3 times on the full one (the seeds): per optimizer
``6 * sweep_steps + 3 * steps`` steps, and a validation every ``eval_every``.
Times measured with ``adamx.adamw``, jitted, the host batch included, on the
2-core CPU this runs on, idle (load average 1.8); ``python -m
benchmarks.race.workloads`` measures them again:

==============  ======  =======  ======  ==============  =============
workload        params  ms/step  s/eval  s/optimizer     15 optimizers
==============  ======  =======  ======  ==============  =============
shakespeare     0.21 M  64       0.15    6 * 19.7 + 3 *  1.5 h
                                         78.6 = 354
fashion_mnist   0.83 M  22       0.25    6 * 12 + 3 *    0.9 h
                                         48 = 216
mnist1d         0.06 M  1.7      0.004   6 * 0.5 + 3 *   2 min, plus
                                         1.8 = 8.5       compiling
==============  ======  =======  ======  ==============  =============

A shakespeare run is 1200 steps * 64 ms + 12 evaluations * 0.15 s = 79 s, a
sweep run 300 * 64 ms + 3 * 0.15 s = 20 s. SOAP's step is about 1.4 times
AdamW's here, Muon's about the same. The GPT is kept small so that all 15
contenders fit in 2 hours: at width 128 (0.82 M params) a step takes 141 ms and
the race 3.1 hours; at width 96 (0.47 M) 98 ms and 2.1 hours. Run fewer
contenders (``--optimizers``) to afford a larger model.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.race import data
from examples.cifar10 import data as cnn_data
from examples.cifar10 import model as cnn_model

NAMES = ("shakespeare", "fashion_mnist", "mnist1d")
# (steps, sweep_steps, eval_every) of the full budgets; see the module's docstring.
SHAKESPEARE_BUDGET = (1200, 300, 100)
FASHION_MNIST_BUDGET = (2000, 500, 100)
MNIST1D_BUDGET = (1000, 250, 25)


class Workload(NamedTuple):
    """A model, its data and its budget; see the module's docstring."""

    name: str
    # seed -> (params, model_state); model_state may be {}
    init: Callable[[int], tuple[Any, Any]]
    # (params, model_state, batch) -> (mean train loss, new model_state)
    loss: Callable[[Any, Any, Any], tuple[jax.Array, Any]]
    # (seed, step) -> batch of host arrays, deterministic in (seed, step)
    train_batch: Callable[[int, int], Any]
    # (params, model_state) -> mean loss over a fixed validation set
    val_loss: Callable[[Any, Any], float]
    steps: int  # the full budget, in optimizer steps
    sweep_steps: int  # the short budget of the learning-rate sweep
    eval_every: int  # validation loss measured every this many steps
    # params -> tree of bools: True for the hidden matrices
    hidden: Callable[[Any], Any]


def get(
    name: str, *, quick: bool = False, cache_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """The workload called ``name`` (one of :data:`NAMES`), tiny if ``quick``.

    Its data is read from ``cache_dir`` (see :func:`benchmarks.race.data.cache_path`).
    """
    if name == "shakespeare":
        return shakespeare(quick=quick, cache_dir=cache_dir)
    if name == "fashion_mnist":
        return fashion_mnist(quick=quick, cache_dir=cache_dir)
    if name == "mnist1d":
        return mnist1d(quick=quick, cache_dir=cache_dir)
    raise ValueError(f"workload must be one of {NAMES}, got {name!r}")


# ------------------------------------------------------------------ shared pieces


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy of integer ``labels`` under ``logits``."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def hidden_matrices(exclude: tuple[str, ...]) -> Callable[[Any], Any]:
    """``params -> tree of bools``: True for leaves of 2 or more dimensions (dense
    and convolution kernels) outside the top-level modules named in ``exclude``."""

    def hidden(params: Any) -> Any:
        def mark(path: tuple[Any, ...], leaf: Any) -> bool:
            return leaf.ndim >= 2 and path[0].key not in exclude

        return jax.tree_util.tree_map_with_path(mark, params)

    return hidden


def batched_val_loss(
    per_example: Callable[[Any, Any, Any], jax.Array], batches: list[Any]
) -> Callable[[Any, Any], float]:
    """``(params, model_state) -> float``: the mean of ``per_example`` losses over
    the fixed ``batches``; a batch's ``mask``, if any, marks its real examples."""

    @jax.jit
    def summed(params: Any, model_state: Any, batch: Any) -> tuple[jax.Array, ...]:
        losses = per_example(params, model_state, batch)
        mask = batch.get("mask", jnp.ones(losses.shape[0], bool))
        mask = jnp.broadcast_to(
            mask.reshape(-1, *[1] * (losses.ndim - 1)), losses.shape
        )
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(mask)

    def val_loss(params: Any, model_state: Any) -> float:
        total, count = 0.0, 0
        for batch in batches:
            loss_sum, n = summed(params, model_state, batch)
            total, count = total + float(loss_sum), count + int(n)
        return total / count

    return val_loss


def _split_batches(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, Any]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]


# ------------------------------------------------------------------ shakespeare


class GPTConfig(NamedTuple):
    vocab_size: int
    context: int = 64
    dim: int = 64
    depth: int = 4
    heads: int = 4
    tie_embeddings: bool = False


# GPT-2's initialisation: every weight from N(0, 0.02^2), biases zero.
_init = nnx.initializers.normal(0.02)


class CausalSelfAttention(nnx.Module):
    """Multi-head attention of each position to itself and the ones before it."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.query = nnx.Linear(dim, dim, kernel_init=_init, rngs=rngs)
        self.key = nnx.Linear(dim, dim, kernel_init=_init, rngs=rngs)
        self.value = nnx.Linear(dim, dim, kernel_init=_init, rngs=rngs)
        self.out = nnx.Linear(dim, dim, kernel_init=_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, dim = x.shape
        shape = (batch, length, self.heads, dim // self.heads)
        q, k, v = (f(x).reshape(shape) for f in (self.query, self.key, self.value))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.reshape(batch, length, dim))


class Block(nnx.Module):
    """A pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = CausalSelfAttention(dim, heads, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 4 * dim, kernel_init=_init, rngs=rngs)
        self.down = nnx.Linear(4 * dim, dim, kernel_init=_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x))
        return x + self.down(jax.nn.gelu(self.up(self.mlp_norm(x))))


class GPT(nnx.Module):
    """A character-level GPT: token and learned position embeddings, ``depth``
    pre-norm blocks, a final norm and a linear head (or the embedding, if tied)."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        dim = config.dim
        self.embed = nnx.Embed(config.vocab_size, dim, embedding_init=_init, rngs=rngs)
        self.position = nnx.Param(_init(rngs.params(), (config.context, dim)))
        self.blocks = nnx.List(
            [Block(dim, config.heads, rngs=rngs) for _ in range(config.depth)]
        )
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = (
            None
            if config.tie_embeddings
            else nnx.Linear(
                dim, config.vocab_size, use_bias=False, kernel_init=_init, rngs=rngs
            )
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.embed.attend(x) if self.head is None else self.head(x)


def shakespeare(
    *, quick: bool = False, cache_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """The character-level GPT on Shakespeare's plays; see the module's docstring."""
    text = data.load_shakespeare(cache_dir)
    train, validation = text.train, text.validation
    if quick:
        config = GPTConfig(len(text.vocab), context=32, dim=32, depth=1, heads=2)
        batch_size, val_windows = 8, 32
        train, validation = train[:50_000], validation[:10_000]
        steps, sweep_steps, eval_every = 40, 20, 10
    else:
        config = GPTConfig(len(text.vocab))
        batch_size, val_windows = 32, 256
        steps, sweep_steps, eval_every = SHAKESPEARE_BUDGET
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))

    def init(seed: int) -> tuple[Any, Any]:
        params = nnx.state(GPT(config, rngs=nnx.Rngs(seed)), nnx.Param)
        return nnx.to_pure_dict(params), {}

    def per_token(params: Any, model_state: Any, batch: Any) -> jax.Array:
        del model_state
        logits = nnx.merge(graphdef, params)(batch["input"])
        return cross_entropy(logits, batch["target"])

    def loss(params: Any, model_state: Any, batch: Any) -> tuple[jax.Array, Any]:
        return per_token(params, model_state, batch).mean(), model_state

    def train_batch(seed: int, step: int) -> dict[str, np.ndarray]:
        return data.text_batch(train, batch_size, config.context, seed, step)

    windows = data.text_windows(validation, val_windows, config.context)
    return Workload(
        "shakespeare",
        init,
        loss,
        train_batch,
        batched_val_loss(per_token, _split_batches(windows, 4 * batch_size)),
        steps,
        sweep_steps,
        eval_every,
        hidden_matrices(exclude=("embed", "position", "head")),
    )


# ------------------------------------------------------------------ fashion_mnist


def fashion_mnist(
    *, quick: bool = False, cache_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """The CNN of ``examples/cifar10`` on Fashion-MNIST; see the module's docstring."""
    ds = data.load_fashion_mnist(cache_dir)
    if quick:
        ds = cnn_data.Dataset(
            ds.name,
            ds.train_images[:512],
            ds.train_labels[:512],
            ds.test_images[:256],
            ds.test_labels[:256],
            ds.classes,
            ds.crop_padding,
            ds.flip,
        )
        widths, width, batch_size = (4, 8), 16, 32
        steps, sweep_steps, eval_every = 40, 20, 10
    else:
        widths, width, batch_size = (32, 64), 256, 128
        steps, sweep_steps, eval_every = FASHION_MNIST_BUDGET

    def build(seed: int) -> cnn_model.CNN:
        return cnn_model.CNN(
            ds.image_shape, ds.num_classes, widths, width, rngs=nnx.Rngs(seed)
        )

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(0)))

    def init(seed: int) -> tuple[Any, Any]:
        _, params, batch_stats = cnn_model.split(build(seed))
        return nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)

    def loss(params: Any, batch_stats: Any, batch: Any) -> tuple[jax.Array, Any]:
        logits, batch_stats = cnn_model.apply(
            graphdef, params, batch_stats, batch["image"], train=True
        )
        return cross_entropy(logits, batch["label"]).mean(), nnx.to_pure_dict(
            batch_stats
        )

    def per_example(params: Any, batch_stats: Any, batch: Any) -> jax.Array:
        logits, _ = cnn_model.apply(
            graphdef, params, batch_stats, batch["image"], train=False
        )
        return cross_entropy(logits, batch["label"])

    per_epoch = cnn_data.steps_per_epoch(ds, batch_size)

    @functools.lru_cache(maxsize=2)
    def plan(seed: int, epoch: int) -> cnn_data.EpochPlan:
        n = len(ds.train_labels)
        return cnn_data.EpochPlan.draw(seed, epoch, n, ds.crop_padding, ds.flip)

    def train_batch(seed: int, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, per_epoch)
        return next(cnn_data.train_batches(ds, batch_size, plan(seed, epoch), start=i))

    return Workload(
        "fashion_mnist",
        init,
        loss,
        train_batch,
        batched_val_loss(per_example, list(cnn_data.test_batches(ds, 1000))),
        steps,
        sweep_steps,
        eval_every,
        hidden_matrices(exclude=("out",)),
    )


# ------------------------------------------------------------------ mnist1d


class CNN1D(nnx.Module):
    """Three strided 1-D convolutions with ReLUs, a dense hidden layer, the logits.

    On a signal of 40: 20x32, 10x64, 5x64 after the convolutions, flattened to
    320, a hidden layer of ``hidden`` and 10 logits.
    """

    def __init__(self, channels: int = 32, hidden: int = 128, *, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [
                nnx.Conv(1, channels, (5,), strides=(2,), rngs=rngs),
                nnx.Conv(channels, 2 * channels, (3,), strides=(2,), rngs=rngs),
                nnx.Conv(2 * channels, 2 * channels, (3,), strides=(2,), rngs=rngs),
            ]
        )
        self.hidden = nnx.Linear(5 * 2 * channels, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, signals: jax.Array) -> jax.Array:
        x = signals[..., None]  # (N, 40) -> (N, 40, 1): one channel
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.head(x)


def mnist1d(
    *, quick: bool = False, cache_dir: str | os.PathLike[str] | None = None
) -> Workload:
    """The 1-D CNN on MNIST-1D; see the module's docstring."""
    if quick:
        arrays = data.load_mnist1d(cache_dir, num_samples=500)
        channels, width, batch_size = 8, 16, 32
        steps, sweep_steps, eval_every = 40, 20, 10
    else:
        arrays = data.load_mnist1d(cache_dir)
        channels, width, batch_size = 32, 128, 128
        steps, sweep_steps, eval_every = MNIST1D_BUDGET
    x, y = arrays["x"], arrays["y"]

    def build(seed: int) -> CNN1D:
        return CNN1D(channels, width, rngs=nnx.Rngs(seed))

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build(0)))

    def init(seed: int) -> tuple[Any, Any]:
        return nnx.to_pure_dict(nnx.state(build(seed), nnx.Param)), {}

    def per_example(params: Any, model_state: Any, batch: Any) -> jax.Array:
        del model_state
        logits = nnx.merge(graphdef, params)(batch["signal"])
        return cross_entropy(logits, batch["label"])

    def loss(params: Any, model_state: Any, batch: Any) -> tuple[jax.Array, Any]:
        return per_example(params, model_state, batch).mean(), model_state

    def train_batch(seed: int, step: int) -> dict[str, np.ndarray]:
        rows = data.batch_indices(len(y), batch_size, seed, step)
        return {"signal": x[rows], "label": y[rows]}

    test = {"signal": arrays["x_test"], "label": arrays["y_test"]}
    return Workload(
        "mnist1d",
        init,
        loss,
        train_batch,
        batched_val_loss(per_example, _split_batches(test, 1000)),
        steps,
        sweep_steps,
        eval_every,
        hidden_matrices(exclude=("head",)),
    )


# ------------------------------------------------------------------ step times


def measure(
    name: str, reps: int = 50, optimizers: int = 7, tx: Any = None
) -> dict[str, float]:
    """Step and validation times of workload ``name`` with ``tx`` (``adamx.adamw``
    if None), and the hours a race of ``optimizers`` optimizers (4 sweep runs and
    3 seeds each) would take at that pace."""
    import time

    import adamx

    w = get(name)
    params, model_state = w.init(0)
    tx = adamx.adamw(1e-3) if tx is None else tx
    opt_state = tx.init(params)

    @jax.jit
    def step(params: Any, model_state: Any, opt_state: Any, batch: Any) -> Any:
        grad_fn = jax.grad(w.loss, has_aux=True)
        grads, model_state = grad_fn(params, model_state, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return adamx.apply_updates(params, updates), model_state, opt_state

    def run(begin: int, end: int) -> float:
        nonlocal params, model_state, opt_state
        start = time.perf_counter()
        for i in range(begin, end):
            batch = w.train_batch(0, i)
            params, model_state, opt_state = step(params, model_state, opt_state, batch)
        jax.block_until_ready(params)
        return (time.perf_counter() - start) / (end - begin)

    run(0, 3)  # compile
    step_s = run(3, 3 + reps)
    w.val_loss(params, model_state)  # compile
    start = time.perf_counter()
    w.val_loss(params, model_state)
    eval_s = time.perf_counter() - start
    run_s = step_s * w.steps + eval_s * (w.steps // w.eval_every)
    sweep_s = step_s * w.sweep_steps + eval_s * (w.sweep_steps // w.eval_every)
    race_s = optimizers * (4 * sweep_s + 3 * run_s)
    n = sum(np.size(x) for x in jax.tree.leaves(params))
    return {"params": n, "step_ms": 1e3 * step_s, "eval_ms": 1e3 * eval_s,
            "run_min": run_s / 60, "race_h": race_s / 3600}  # fmt: skip


if __name__ == "__main__":
    import sys

    print(f"load average {os.getloadavg()}")
    for name in sys.argv[1:] or NAMES:
        result = measure(name)
        print(name, ", ".join(f"{k} {v:.4g}" for k, v in result.items()), flush=True)
