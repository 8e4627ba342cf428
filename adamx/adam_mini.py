r"""Adam-mini: Adam with one second moment per block of parameters.

Adam keeps a second moment :math:`v` per parameter. Adam-mini (Zhang et al.,
2024) splits each leaf into blocks that share one learning rate, and keeps one
:math:`v` per block: the mean of :math:`g^2` over it. Its blocks follow the
Hessian's near block-diagonal structure in Transformers: one per head of the
query and key projections, one per output neuron of the other matrices, one
per token of the embedding and output layers, one per normalization layer.
The first moment stays per parameter, so the state is about half of Adam's.

A *partition* says where the blocks are: a function ``partition(name, shape)``
of a leaf's dotted path (``"layers.0.attn.q_proj.weight"``) and its shape,
returning the number of blocks along each axis (a tuple that divides the
shape; ``None`` for one block per element, Adam). :func:`adam_mini_partition`
builds the authors' partition from the names their reference code matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.adaptive import MU
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import Hyper, abs_sq, as_float
from adamx.storage import Storage, check_moment_tree, load, real_dtype, store
from adamx.traits import Stage, Traits
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "ScaleByAdamMiniState",
    "adam_mini",
    "adam_mini_decay_mask",
    "adam_mini_partition",
    "scale_by_adam_mini",
]

#: A partition: ``(dotted name, shape) -> blocks per axis``, or ``None`` for
#: one block per element.
Partition = Callable[[str, tuple[int, ...]], "tuple[int, ...] | None"]

# The names version 1.1.1 of the reference code matches, lowercased, by substring.
_EMBEDDING = ("embed", "embd", "wte")
_OUTPUT = ("lm_head", "output", "final_layer")
_QUERY_KEY = ("k_proj", "q_proj", "wq", "wk", "query", "key")
_VALUE = ("v_proj", "wv", "value")
_ATTN_PROJ = ("o_proj", "wo", "attn.proj")
_MLP = ("feed_forward", "linear", "mlp")
_NO_DECAY = ("norm", "ln", "bias")
_LAYOUTS = ("jax", "torch")


class ScaleByAdamMiniState(NamedTuple):
    """State of :func:`scale_by_adam_mini`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    mu: Any  # like params (or codes): first moment, per element
    # Per leaf, shape=the partition's blocks per axis (the leaf's shape for one
    # block per element), float32 (the params' real dtype if wider):
    vmean: Any  # second moment, the mean of |g|^2 over each block


def dotted_name(path: tuple) -> str:
    """A key path as a dotted name, as ``torch.nn.Module.named_parameters`` writes it.

    Example:
        >>> import jax
        >>> from adamx.adam_mini import dotted_name
        >>> paths = jax.tree_util.tree_flatten_with_path({"a": [{"w": 0}]})[0]
        >>> dotted_name(paths[0][0])
        'a.0.w'
    """
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def adam_mini_partition(
    n_heads: int | None = None, *, layout: str = "jax"
) -> Partition:
    r"""The authors' partition, from the names their reference code matches.

    On the lowercased dotted name of a leaf, in this order (version 1.1.1 of
    the reference code, ``zyushun/Adam-mini``):

    * ``bias``: one block per element (Adam);
    * a query or key projection (``q_proj``, ``k_proj``, ``wq``, ``wk``,
      ``query``, ``key``), a matrix: one block per head, :math:`d_{in} /
      n_{heads}` output neurons each (so a grouped key projection has one
      per key head); without ``n_heads``, one per output neuron;
    * an embedding (``embed``, ``embd``, ``wte``): one block per token (row);
    * the output layer (``lm_head``, ``output``, ``final_layer``), values
      (``v_proj``, ``wv``, ``value``), the attention output (``o_proj``,
      ``wo``, ``attn.proj``) and MLPs (``feed_forward``, ``linear``, ``mlp``):
      one block per output neuron (a vector so named: one per element);
    * anything else: one block for the whole leaf (normalization scales),
      except a matrix, which gets one block per output neuron.

    The last rule departs from the reference, which gives a matrix it does not
    recognise one block (and warns that this can make training unstable); one
    per output neuron is the paper's rule for linear layers.

    Args:
        n_heads: the number of attention (query) heads; ``None``: no head blocks.
        layout: where a matrix keeps its output neurons: ``"jax"``, the last
            axis (``x @ W``, Flax's ``kernel``); ``"torch"``, the first
            (``x @ W.T``, ``torch.nn.Linear``'s ``(out, in)`` weight).
            Embeddings have one token per row in both.

    Returns:
        ``partition(name, shape) -> blocks per axis`` (or ``None``).

    Example:
        >>> import adamx
        >>> part = adamx.adam_mini_partition(n_heads=4)
        >>> part("layers.0.attn.q_proj.kernel", (64, 64))
        (1, 4)
        >>> part("layers.0.mlp.up.kernel", (64, 256)), part("norm.scale", (64,))
        ((1, 256), (1,))

    References:
        Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More",
        https://arxiv.org/abs/2406.16793; code https://github.com/zyushun/Adam-mini
    """
    if n_heads is not None:
        checks.check_positive_int("n_heads", n_heads)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    out_axis = 0 if layout == "torch" else -1

    def per_axis(shape: tuple[int, ...], axis: int, count: int) -> tuple[int, ...]:
        blocks = [1] * len(shape)
        blocks[axis] = count
        return tuple(blocks)

    def partition(name: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        name = name.lower()
        shape = tuple(shape)
        matrix = len(shape) >= 2
        if "bias" in name:
            return None
        if matrix and any(s in name for s in _QUERY_KEY):
            if n_heads is None:
                return per_axis(shape, out_axis, shape[out_axis])
            d_in = shape[1 if layout == "torch" else 0]
            heads, rest = divmod(shape[out_axis] * n_heads, d_in)
            # A head count that does not divide is refused, naming the leaf.
            return per_axis(shape, out_axis, heads if rest == 0 else 0)
        if any(s in name for s in _EMBEDDING):
            return per_axis(shape, 0, shape[0]) if matrix else None
        if any(s in name for s in (*_OUTPUT, *_VALUE, *_ATTN_PROJ, *_MLP)):
            return per_axis(shape, out_axis, shape[out_axis]) if matrix else None
        if matrix:
            return per_axis(shape, out_axis, shape[out_axis])
        return (1,) * len(shape)

    return partition


def adam_mini_decay_mask(params: Any) -> Any:
    """The authors' weight-decay mask: every leaf but norms and biases.

    A leaf whose lowercased dotted name holds ``norm``, ``ln`` or ``bias`` is
    not decayed, as in the reference code.

    Args:
        params: the params tree.

    Returns:
        A tree of bools like ``params``.

    Example:
        >>> import adamx
        >>> adamx.adam_mini_decay_mask({"ln_f": {"scale": 1.0}, "w": 1.0})
        {'ln_f': {'scale': False}, 'w': True}
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(s in dotted_name(path).lower() for s in _NO_DECAY),
        params,
    )


def _blocks(partition: Partition, path: tuple, shape: tuple[int, ...]) -> tuple:
    """The blocks per axis of one leaf, checked against its shape."""
    name = dotted_name(path)
    spec = partition(name, shape)
    if spec is None:
        return shape
    ok = (
        isinstance(spec, tuple)
        and len(spec) == len(shape)
        and all(isinstance(b, int) and not isinstance(b, bool) for b in spec)
        and all(b >= 1 and d % b == 0 for b, d in zip(spec, shape, strict=True))
    )
    if not ok:
        raise ValueError(
            f"the partition gives {spec!r} blocks for params"
            f"{jax.tree_util.keystr(path)} ({name!r}) of shape {shape}: it must "
            "give, per axis, a number of blocks >= 1 that divides the axis "
            "(or None for one block per element)"
        )
    return tuple(spec)


def _split(shape: tuple[int, ...], blocks: tuple[int, ...]) -> tuple[int, ...]:
    """``(b_0, d_0 / b_0, b_1, d_1 / b_1, ...)``: each axis as blocks x block."""
    return tuple(n for b, d in zip(blocks, shape, strict=True) for n in (b, d // b))


def block_mean(x: jax.Array, blocks: tuple[int, ...]) -> jax.Array:
    """The mean of ``x`` over each block, an array of shape ``blocks``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.adam_mini import block_mean
        >>> block_mean(jnp.arange(8.0).reshape(2, 4), (1, 2))
        Array([[2.5, 4.5]], dtype=float32)
    """
    if tuple(blocks) == tuple(x.shape):
        return x
    split = x.reshape(_split(tuple(x.shape), blocks))
    size = max(x.size // max(math.prod(blocks), 1), 1)  # an empty leaf's mean: 0
    return jnp.sum(split, axis=tuple(range(1, split.ndim, 2))) / size


def _spread(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Each block's value over its elements: ``v`` broadcast to ``shape``."""
    if tuple(v.shape) == tuple(shape):
        return v
    blocks = tuple(v.shape)
    grid = v.reshape(tuple(n for b in blocks for n in (b, 1)))
    return jnp.broadcast_to(grid, _split(shape, blocks)).reshape(shape)


def _zeros_near(p: Any, blocks: tuple[int, ...], dtype: Any) -> jax.Array:
    """Zeros of shape ``blocks`` on the devices of a concrete param: sharded as
    it is where there is one block per element, else replicated."""
    if blocks == tuple(p.shape):
        return jnp.zeros_like(p, dtype=dtype)
    zeros = jnp.zeros(blocks, dtype)
    sharding = getattr(p, "sharding", None)
    if (
        isinstance(p, jax.core.Tracer)
        or not isinstance(p, jax.Array)
        or sharding is None
        or len(sharding.device_set) == 1
    ):
        return zeros
    mesh = getattr(sharding, "mesh", None)
    if mesh is None:
        devices = sorted(sharding.device_set, key=lambda d: d.id)
        mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.device_put(zeros, replicated)


def scale_by_adam_mini(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    partition: Partition | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adam-mini's direction: Adam with one second moment per block.

    For a leaf split into blocks :math:`B` by ``partition``:

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        v_{t,B} &= \beta_2 v_{t-1,B} + (1 - \beta_2)\, \frac{1}{|B|}
            \sum_{i \in B} |g_{t,i}|^2 \\
        u_{t,i} &= \frac{m_{t,i} / (1 - \beta_1^t)}
            {\sqrt{v_{t,B(i)} / (1 - \beta_2^t)} + \epsilon}
        \end{aligned}

    A block of one element is Adam's :math:`v`. The partition is checked
    against the params when the state is built: one that does not divide a
    leaf is refused, naming it. The mean over a block is per leaf, so a
    :class:`~adamx.FlatParams` is refused.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the first moment.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the block second moments.
        eps: :math:`\epsilon \ge 0`, added to :math:`\sqrt{\hat v}`.
        partition: ``partition(name, shape) -> blocks per axis`` (or ``None``
            for one block per element), from a leaf's dotted path name
            (``"layers.0.attn.q_proj.weight"``) and shape; ``None`` uses
            :func:`adam_mini_partition` ``()``.
        state_bits: how :math:`m` is stored: 32 (the params' dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).
            :math:`v` stays float32 (the params' real dtype if wider) at every
            width: it holds one number per block, a small share of the state.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamMiniState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adam_mini()  # one v per column of a matrix
        >>> g = {"w": jnp.array([[3.0, 1.0], [-4.0, 1.0]])}
        >>> state = tx.init(g)
        >>> state.vmean["w"].shape
        (1, 2)
        >>> print(tx.update(g, state)[0]["w"].round(4))  # g / rms of its column
        [[ 0.8485  1.    ]
         [-1.1314  1.    ]]

    References:
        Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More",
        https://arxiv.org/abs/2406.16793; reference code (version 1.1.1)
        https://github.com/zyushun/Adam-mini
    """
    checks.check_adam_args(b1, b2, eps, 0.0)
    if partition is not None and not callable(partition):
        raise TypeError(
            "partition must be a callable (name, shape) -> blocks per axis, "
            f"got {partition!r}"
        )
    part = adam_mini_partition() if partition is None else partition
    storage = Storage.parse(state_bits)

    def init_fn(params):
        def nu(path, p):
            blocks = _blocks(part, path, tuple(p.shape))
            dtype = real_dtype(wider_dtype(p.dtype, jnp.float32))
            return _zeros_near(p, blocks, dtype)

        nus = jax.tree_util.tree_map_with_path(nu, params)
        return ScaleByAdamMiniState(
            count=jnp.zeros([], jnp.int32), mu=storage.init(MU, params), vmean=nus
        )

    def update_fn(updates, state, params=None):
        del params
        check_moment_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)
        hyper = Hyper(b1=b1, b2=b2, eps=eps)
        g_leaves, treedef = jax.tree.flatten(updates)
        mus = treedef.flatten_up_to(state.mu)
        nus = treedef.flatten_up_to(state.vmean)
        out = [
            _leaf(g, m, v, count, hyper)
            for g, m, v in zip(g_leaves, mus, nus, strict=True)
        ]
        new = [treedef.unflatten([o[i] for o in out]) for i in range(3)]
        return new[0], ScaleByAdamMiniState(count, new[1], new[2])

    def _leaf(g, m_stored, v_old, count, hyper):
        ct = wider_dtype(g.dtype, jnp.float32)
        h = hyper(real_dtype(ct))
        t = as_float(count).astype(h.b1.dtype)
        gc = g.astype(ct)
        m = (1 - h.b1) * gc + h.b1 * load(m_stored, ct)
        mean_sq = block_mean(abs_sq(gc), tuple(v_old.shape))
        v = (1 - h.b2) * mean_sq + h.b2 * v_old.astype(h.b2.dtype)
        v_hat = _spread(v / (1 - h.b2**t), tuple(g.shape))
        u = (m / (1 - h.b1**t)) / (jnp.sqrt(v_hat) + h.eps)
        return u.astype(g.dtype), store(m, m_stored), v.astype(v_old.dtype)

    stage = Stage(
        "scale_by_adam_mini",
        {"b1": b1, "b2": b2, "eps": eps, "partition": part, "storage": storage},
    )
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def adam_mini(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Any], Any] | None = adam_mini_decay_mask,
    *,
    partition: Partition | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adam-mini: Adam with one learning rate per block (Zhang et al., 2024).

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(\frac{\hat m_t}
        {\sqrt{\hat v_{t,B}} + \epsilon} + \lambda\, \theta_{t-1}\right)

    with :math:`\hat v_{t,B}` the bias-corrected moving average of the mean of
    :math:`|g|^2` over each block :math:`B` (see :func:`scale_by_adam_mini`),
    and decoupled weight decay on the leaves ``mask`` selects. Defaults are
    the reference code's (version 1.1.1): learning rate :math:`10^{-3}`,
    :math:`\epsilon = 10^{-8}` (its docstring says :math:`10^{-6}`, its code
    uses :math:`10^{-8}`), no weight decay, and, when there is some, none on
    norms and biases (:func:`adam_mini_decay_mask`). Its decay multiplies
    :math:`\theta_{t-1}` by :math:`1 - \alpha_t \lambda` before the step,
    which is the formula above.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params to decay: a tree of bools or a function of the
            params returning one; ``None`` decays all. The default spares
            norms and biases, by name, as the reference does.
        partition: ``partition(name, shape) -> blocks per axis``;
            ``None``: :func:`adam_mini_partition` ``()`` (pass
            ``adam_mini_partition(n_heads)`` for per-head query/key blocks).
        state_bits: how :math:`m` is stored: 32, 16 (bfloat16), 8 or 4
            (block-wise quantized); the block :math:`v` stays float32.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adam_mini(learning_rate=0.1)
        >>> params = {"mlp": {"kernel": jnp.ones((2, 3))}}
        >>> state = tx.init(params)
        >>> g = {"mlp": {"kernel": jnp.array([[1.0, 2.0, 0.0], [-1.0, 2.0, 0.0]])}}
        >>> updates, state = tx.update(g, state, params)
        >>> print(updates["mlp"]["kernel"].round(4))
        [[-0.1 -0.1  0. ]
         [ 0.1 -0.1  0. ]]

    References:
        Zhang et al., 2024, "Adam-mini: Use Fewer Learning Rates To Gain More",
        https://arxiv.org/abs/2406.16793; reference code (version 1.1.1)
        https://github.com/zyushun/Adam-mini
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_scalar_or_schedule("weight_decay", weight_decay)
    return chain(
        scale_by_adam_mini(b1, b2, eps, partition=partition, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )
