r"""Transformations that look at a whole layer, unit or example at once.

A leaf of the params is a layer here: its norm, its params' norm or a slice
of it (a *unit*, one output neuron) decides how its update is scaled or
clipped. LARS and Fromage scale each layer's step by a trust ratio,
:func:`scale_by_param_block_norm` by its params' norm,
:func:`adaptive_grad_clip` clips unit by unit, :func:`centralize` takes out
each slice's mean, and :func:`normalize_by_update_norm` divides the whole
update by its norm. :func:`per_example_global_norm_clip` and
:func:`per_example_layer_norm_clip` clip per-example gradients before they
are summed, as differentially private SGD does.

Names, arguments, defaults and float64 numbers are Optax's; the trust ratio
itself is :func:`adamx.scale_by_trust_ratio`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    ELEMENTWISE,
    PER_LEAF,
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    init_empty_state,
    leafwise,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain, masked
from adamx.moments import abs_sq
from adamx.storage import check_moment_tree, real_dtype
from adamx.transforms import (
    AddDecayedWeightsState,
    _safe_norm,
    add_decayed_weights,
    global_norm,
    learning_rate_stage,
    scale_by_trust_ratio,
    trace,
)

__all__ = [
    "AdaptiveGradClipState",
    "adaptive_grad_clip",
    "centralize",
    "fromage",
    "lars",
    "normalize_by_update_norm",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "scale_by_param_block_norm",
]

MaskOrFn = Any | Callable[[Any], Any] | None
Axis = int | tuple[int, ...] | None

#: The state of :func:`adaptive_grad_clip`: it keeps none (Optax's name for it).
AdaptiveGradClipState = EmptyState


def _at_least_float32(dtype: Any) -> Any:
    """The dtype a norm of ``dtype`` values is summed in: float32 or wider."""
    return wider_dtype(jnp.float32, dtype)


# ------------------------------------------------------------ optimizers


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = True,
    trust_coefficient: jax.typing.ArrayLike = 0.001,
    eps: jax.typing.ArrayLike = 0.0,
    trust_ratio_mask: MaskOrFn = True,
    momentum: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""LARS: SGD with momentum whose step is scaled layer by layer (You et al., 2017).

    Per leaf :math:`i` (a layer), with :math:`\lambda` and the trust ratio
    applied where their masks say:

    .. math::
        \begin{aligned}
        \tilde g^{(i)}_t &= g^{(i)}_t + \lambda\, \theta^{(i)}_{t-1}, \qquad
        r^{(i)}_t = \frac{\eta\, \|\theta^{(i)}_{t-1}\|}
        {\|\tilde g^{(i)}_t\| + \epsilon} \\
        m_t &= \mu\, m_{t-1} - \alpha_t\, r_t \tilde g_t, \qquad
        \theta_t = \theta_{t-1} + \begin{cases} \mu\, m_t - \alpha_t\, r_t
        \tilde g_t & \text{nesterov} \\ m_t & \text{otherwise} \end{cases}
        \end{aligned}

    with :math:`r = 1` where either norm is zero. The momentum accumulates
    steps already scaled by the learning rate, as the paper's Algorithm 1 and
    Optax do. The paper divides by :math:`\|g\| + \lambda \|\theta\|`; Optax,
    and so adamx, by the norm of the decayed gradient :math:`\|g +
    \lambda\theta\|`. The two agree without weight decay (the default).

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        weight_decay_mask: a tree of bools with the params' structure (or a
            prefix of it), or a function of the params returning one: the
            leaves to decay. ``True`` decays all.
        trust_coefficient: :math:`\eta \ge 0`.
        eps: :math:`\epsilon \ge 0`, added to the denominator of the ratio.
        trust_ratio_mask: the leaves whose step the trust ratio scales, as
            ``weight_decay_mask`` says them.
        momentum: :math:`\mu \ge 0`.
        nesterov: use Nesterov momentum.
        state_bits: how :math:`m` is stored: 32 (as the params), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.lars(learning_rate=1.0, trust_coefficient=0.1)
        >>> params = jnp.array([3.0, 4.0])
        >>> updates, state = tx.update(jnp.array([0.0, 2.0]), tx.init(params), params)
        >>> print(updates)  # -0.1 * (5 / 2) * g
        [ 0.  -0.5]

    References:
        You et al., 2017, "Large Batch Training of Convolutional Networks",
        https://arxiv.org/abs/1708.03888

        Optax's ``lars``, https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.lars
    """
    checks.check_nonnegative("momentum", momentum)
    checks.check_bool("nesterov", nesterov)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
            mask=trust_ratio_mask,
        ),
        learning_rate_stage(learning_rate),
        trace(decay=momentum, nesterov=nesterov, state_bits=state_bits),
    )


def _fromage_shrink(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    r"""Fromage's division by :math:`\sqrt{1 + \alpha_t^2}`, as a last stage.

    .. math:: u \leftarrow \frac{\theta + u}{s_t} - \theta
       = \frac{1}{s_t}\left(u - \frac{\alpha_t^2}{1 + s_t}\, \theta\right),
       \qquad s_t = \sqrt{1 + \alpha_t^2}

    The second form has no cancellation for small :math:`\alpha_t`, and no
    product of two factors of :math:`\alpha_t` that a compiler could fold
    into one for a constant rate and not for an injected one. The factors are
    computed from :math:`\alpha_t` in the update's precision (at least
    float32), whether it is a Python number or an injected array.
    """
    is_schedule = callable(learning_rate)

    def init_fn(params: Any) -> Any:
        del params
        if is_schedule:
            return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        require_params("fromage", params)
        check_moment_tree(updates, params, "params")
        if callable(learning_rate):
            lr = learning_rate(state.count)
            state = AddDecayedWeightsState(count=safe_increment(state.count))
        else:
            lr = learning_rate

        def leaf(u: jax.Array, p: jax.Array) -> tuple[jax.Array]:
            ct = wider_dtype(u.dtype, p.dtype)
            a = jnp.asarray(lr).astype(real_dtype(_at_least_float32(ct)))
            s = jnp.sqrt(1 + a * a)
            shrink = (a * a / (1 + s)).astype(ct)
            # Times 1 / s, not over s: a compiler turns a division by a
            # constant into that product, so both kinds of rate get it.
            keep = (1 / s).astype(ct)
            new = (u.astype(ct) - shrink * p.astype(ct)) * keep
            return (new.astype(u.dtype),)

        (updates,) = leafwise(leaf, 1, updates, params)
        return updates, state

    return GradientTransformation(init_fn, update_fn, ELEMENTWISE)


def fromage(
    learning_rate: ScalarOrSchedule, min_norm: jax.typing.ArrayLike = 1e-6
) -> GradientTransformation:
    r"""Fromage: Frobenius-matched gradient descent (Bernstein et al., 2020).

    Per leaf :math:`i` (a layer):

    .. math::
        \theta^{(i)}_t = \frac{1}{\sqrt{1 + \alpha_t^2}} \left(\theta^{(i)}_{t-1} -
        \alpha_t \frac{\max(\|\theta^{(i)}_{t-1}\|, \nu)}
        {\max(\|g^{(i)}_t\|, \nu)}\, g^{(i)}_t\right)

    Each layer moves by :math:`\alpha_t` times its own norm, and the division
    keeps the norms from growing. With ``min_norm=0`` the ratio is 1 where
    either norm is zero, as in the authors' code; Optax's default
    :math:`\nu = 10^{-6}`, kept here, instead lets a zero-initialized layer
    move by only :math:`\alpha_t \nu` at its first step.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule (the paper
            uses 0.01).
        min_norm: :math:`\nu \ge 0`, the floor of both norms.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.fromage(learning_rate=0.75)
        >>> params = jnp.array([3.0, 4.0])
        >>> updates, _ = tx.update(jnp.array([0.0, 1.0]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates))  # (3, 4 - 3.75) / 1.25
        [2.4 0.2]

    References:
        Bernstein et al., 2020, "On the distance between two neural networks
        and the stability of learning", https://arxiv.org/abs/2002.03432
        (code: https://github.com/jxbz/fromage)
    """
    return chain(
        scale_by_trust_ratio(min_norm),
        learning_rate_stage(learning_rate),
        _fromage_shrink(learning_rate),
    )


# ------------------------------------------------------------ transforms


def scale_by_param_block_norm(
    min_scale: jax.typing.ArrayLike = 1e-3,
) -> GradientTransformation:
    r"""Scale each leaf's update by the norm of its param.

    .. math:: u_t^{(i)} = \max(\|\theta^{(i)}\|, s_{\min})\, g_t^{(i)}

    with the Frobenius norm of the whole leaf (a weight vector or matrix).
    :func:`adamx.scale_by_param_block_rms` uses the RMS instead.

    Args:
        min_scale: :math:`s_{\min} \ge 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`; ``update`` needs
        ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_param_block_norm()
        >>> p = jnp.array([3.0, 4.0])
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(p), p)[0]
        Array([  5., -10.], dtype=float32)

    References:
        Optax's ``scale_by_param_block_norm``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    checks.check_nonnegative("min_scale", min_scale)

    def update_fn(updates, state, params=None):
        require_params("scale_by_param_block_norm", params)
        check_moment_tree(updates, params, "params")

        def leaf(u: jax.Array, p: jax.Array) -> tuple[jax.Array]:
            norm = _safe_norm(p.astype(_at_least_float32(p.dtype)), min_scale)
            return ((u * norm.astype(u.dtype)).astype(u.dtype),)

        (updates,) = leafwise(leaf, 1, updates, params)
        return updates, state

    return GradientTransformation(init_empty_state, update_fn, PER_LEAF)


def normalize_by_update_norm(
    scale_factor: jax.typing.ArrayLike = 1.0, eps: jax.typing.ArrayLike = 1e-6
) -> GradientTransformation:
    r"""Divide the updates by their global norm (normalized gradient descent).

    .. math:: u_t = \frac{c}{\|g_t\|_2 + \epsilon}\, g_t

    where :math:`\|g_t\|_2` is the norm of all leaves together
    (:func:`adamx.global_norm`). With :math:`c < 0` this is a descent step
    of length about :math:`|c|`.

    Args:
        scale_factor: :math:`c`, a finite number of either sign.
        eps: :math:`\epsilon \ge 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.normalize_by_update_norm(scale_factor=-1.0, eps=0.0)
        >>> tx.update(jnp.array([3.0, 4.0]), tx.init(None))[0]
        Array([-0.6, -0.8], dtype=float32)

    References:
        Optax's ``normalize_by_update_norm``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    checks.check_finite("scale_factor", scale_factor)
    checks.check_nonnegative("eps", eps)

    def update_fn(updates, state, params=None):
        del params
        divisor = (global_norm(updates) + eps) / scale_factor

        def leaf(g: jax.Array) -> jax.Array:
            ct = wider_dtype(g.dtype, divisor.dtype)
            return (g.astype(ct) / divisor.astype(real_dtype(ct))).astype(g.dtype)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn, ELEMENTWISE)


def centralize() -> GradientTransformation:
    r"""Subtract from each leaf its mean over all axes but the first.

    .. math:: u_t^{(i)}[k, \dots] = g_t^{(i)}[k, \dots] -
       \operatorname{mean}_{\dots}\, g_t^{(i)}[k, \dots]

    for leaves of rank 2 and more; vectors and scalars pass unchanged. This
    is the authors' code, written for PyTorch's layout, where the first axis
    of a weight is its output: each output neuron's weights are centred.
    Flax's kernels put the output last (``(in, out)``), so there the first
    axis is the input; transpose, or mask the leaves, to centre by output.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.centralize()
        >>> g = jnp.array([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]])
        >>> tx.update(g, tx.init(g))[0]
        Array([[-1.,  0.,  1.],
               [-2.,  0.,  2.]], dtype=float32)

    References:
        Yong et al., 2020, "Gradient Centralization: A New Optimization
        Technique for Deep Neural Networks", https://arxiv.org/abs/2004.01461
        (code: https://github.com/Yonghongwei/Gradient-Centralization)
    """

    def update_fn(updates, state, params=None):
        del params

        def leaf(g: jax.Array) -> jax.Array:
            if g.ndim <= 1:
                return g
            return g - jnp.mean(g, axis=tuple(range(1, g.ndim)), keepdims=True)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn, PER_LEAF)


# --------------------------------------------------------- unit-wise clip


def _check_axis(axis: Any) -> Axis:
    """``axis`` as ``None``, an int or a tuple of ints; a clear error otherwise."""
    if axis is None:
        return None
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        return int(axis)
    if isinstance(axis, (tuple, list)) and all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis
    ):
        if len(set(axis)) != len(axis):
            raise ValueError(f"axis must not repeat an axis, got {axis!r}")
        return tuple(int(a) for a in axis)
    raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")


def _unit_axes(shape: tuple[int, ...], axis: Axis) -> tuple[int, ...]:
    """The axes a unit's norm sums over, for a leaf of ``shape``.

    Without ``axis``, from the rank, as the authors' code (NFNets) does: a
    vector (size-1 axes aside) is one unit; a rank-2 or rank-3 leaf
    (``(in, out)``, multi-head ``(in, heads, out)``) sums over axis 0; a
    rank-4 convolution kernel (HWIO) over (0, 1, 2); a rank-5 one (DHWIO) over
    (0, 1, 2, 3).
    """
    ndim = len(shape)
    if axis is not None:
        axes = (axis,) if isinstance(axis, int) else axis
        if any(not -ndim <= a < ndim for a in axes):
            raise ValueError(
                f"axis {axis!r} is out of range for a leaf of shape {shape}"
            )
        return tuple(sorted(a % ndim for a in axes))
    if sum(d != 1 for d in shape) <= 1:
        return tuple(range(ndim))
    if ndim in (2, 3):
        return (0,)
    if ndim in (4, 5):
        return tuple(range(ndim - 1))
    raise ValueError(
        f"adaptive_grad_clip infers the units of leaves of rank 1 to 5, got a "
        f"leaf of shape {shape}; pass axis= to say which axes a unit spans"
    )


def _unitwise_norm(x: jax.Array, axes: tuple[int, ...], dtype: Any) -> jax.Array:
    """The L2 norm of each unit of ``x``, in ``dtype``, broadcast to ``x``'s shape."""
    squared = jnp.sum(abs_sq(x.astype(dtype)), axis=axes, keepdims=True)
    return jnp.broadcast_to(jnp.sqrt(squared), x.shape)


def adaptive_grad_clip(
    clipping: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike = 1e-3,
    axis: int | tuple[int, ...] | None = None,
) -> GradientTransformation:
    r"""Clip each unit's update to a fraction of its params' norm (AGC, NFNets).

    For each unit :math:`k` (a slice of a leaf: one output neuron of a weight
    matrix, one output channel of a convolution kernel):

    .. math::
        u_t^{(k)} = \begin{cases} g_t^{(k)} & \|g_t^{(k)}\| < \lambda
        \max(\|\theta^{(k)}\|, \epsilon) \\[2pt]
        \lambda\, \dfrac{\max(\|\theta^{(k)}\|, \epsilon)}{\max(\|g_t^{(k)}\|,
        10^{-6})}\, g_t^{(k)} & \text{otherwise} \end{cases}

    Without ``axis``, a unit is found from each leaf's rank as the authors'
    code and Optax find it: a vector (or a leaf with one axis longer than 1)
    is one unit; a leaf of rank 2 or 3 sums over axis 0 (Flax's ``(in, out)``
    and multi-head ``(in, heads, out)`` kernels); rank 4 and 5 (HWIO and
    DHWIO convolutions) over all axes but the last. Other ranks need
    ``axis``; ``init`` refuses a leaf whose units it cannot tell.

    The state is ``AdaptiveGradClipState`` (an
    :class:`~adamx.EmptyState`).

    Args:
        clipping: :math:`\lambda \ge 0`, the largest ratio of a unit's update
            norm to its params' norm.
        eps: :math:`\epsilon \ge 0`, the floor of the params' norm, so that
            zero-initialized units still move.
        axis: the axes a unit's norm sums over, the same for every leaf;
            ``None`` infers them from each leaf's rank.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`; ``update`` needs
        ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adaptive_grad_clip(0.1)
        >>> p = jnp.array([[3.0, 1.0], [4.0, 0.0]])  # units: columns of norm 5, 1
        >>> g = jnp.array([[3.0, 0.05], [4.0, 0.0]])  # norms 5 and 0.05
        >>> tx.update(g, tx.init(p), p)[0]
        Array([[0.3 , 0.05],
               [0.4 , 0.  ]], dtype=float32)

    References:
        Brock et al., 2021, "High-Performance Large-Scale Image Recognition
        Without Normalization", https://arxiv.org/abs/2102.06171
        (code: https://github.com/google-deepmind/deepmind-research/tree/master/nfnets)
    """
    checks.check_nonnegative("clipping", clipping)
    checks.check_nonnegative("eps", eps)
    axis = _check_axis(axis)

    def init_fn(params: Any) -> EmptyState:
        for path, p in jax.tree_util.tree_leaves_with_path(params):
            try:
                _unit_axes(np.shape(p), axis)
            except ValueError as e:
                raise ValueError(f"params{jax.tree_util.keystr(path)}: {e}") from e
        return EmptyState()

    def update_fn(updates, state, params=None):
        require_params("adaptive_grad_clip", params)
        check_moment_tree(updates, params, "params")

        def leaf(g: jax.Array, p: jax.Array) -> tuple[jax.Array]:
            axes = _unit_axes(g.shape, axis)
            nt = real_dtype(_at_least_float32(wider_dtype(g.dtype, p.dtype)))
            g_norm = _unitwise_norm(g, axes, wider_dtype(nt, g.dtype))
            p_norm = _unitwise_norm(p, axes, wider_dtype(nt, p.dtype))
            max_norm = clipping * jnp.maximum(p_norm, eps)
            ct = wider_dtype(nt, g.dtype)
            ratio = (max_norm / jnp.maximum(g_norm, 1e-6)).astype(ct)
            clipped = (g.astype(ct) * ratio).astype(g.dtype)
            return (jnp.where(g_norm < max_norm, g, clipped),)

        (updates,) = leafwise(leaf, 1, updates, params)
        return updates, state

    return GradientTransformation(init_fn, update_fn, PER_LEAF)


# ------------------------------------------------------- per-example clip


def _check_batched(name: str, grads: Any) -> list[jax.Array]:
    """The leaves of ``grads``, each with the same leading (batch) axis."""
    leaves = jax.tree.leaves(grads)
    if not leaves:
        raise ValueError(f"{name} needs at least one array in grads, got {grads!r}")
    batch = np.shape(leaves[0])[:1]
    if not all(np.ndim(g) >= 1 and np.shape(g)[:1] == batch for g in leaves):
        raise ValueError(
            f"{name} expects every array of grads to have the same batch axis "
            f"first (one gradient per example); got shapes "
            f"{jax.tree.map(np.shape, grads)}"
        )
    return leaves


def _clip_and_sum(
    leaves: Sequence[jax.Array], l2_norm_clip: jax.typing.ArrayLike
) -> tuple[list[jax.Array], jax.Array]:
    """Clip each example's gradient (its slice of every leaf) and sum them."""
    nt = real_dtype(_at_least_float32(wider_dtype(*[g.dtype for g in leaves])))
    squares = [
        jnp.sum(abs_sq(g.astype(wider_dtype(nt, g.dtype))).reshape(len(g), -1), axis=1)
        for g in leaves
    ]
    norms = jnp.sqrt(sum(squares[1:], start=squares[0]))
    # 0 / 0 (an example of zero gradient, clipped at 0) keeps the example.
    multipliers = jnp.nan_to_num(jnp.minimum(l2_norm_clip / norms, 1.0), nan=1.0)
    clipped = jnp.sum(multipliers < 1.0)

    def total(g: jax.Array) -> jax.Array:
        if not jnp.issubdtype(g.dtype, jnp.inexact):
            return jnp.tensordot(multipliers, g.astype(nt), axes=1)
        ct = wider_dtype(nt, g.dtype)
        summed = jnp.tensordot(multipliers.astype(ct), g.astype(ct), axes=1)
        return summed.astype(g.dtype)

    return [total(g) for g in leaves], clipped


def per_example_global_norm_clip(
    grads: Any, l2_norm_clip: jax.typing.ArrayLike
) -> tuple[Any, jax.Array]:
    r"""Clip each example's gradient to a global norm, then sum over the batch.

    .. math:: \bar g = \sum_{b} g_b \min\!\left(1, \frac{C}{\|g_b\|_2}\right)

    where :math:`g_b` is example :math:`b`'s gradient, its slice of every
    leaf, and :math:`\|g_b\|_2` the norm of all of them together. An example
    of zero gradient is kept whole (its factor is 1).

    Args:
        grads: a tree of per-example gradients, each leaf with the batch axis
            first (as ``jax.vmap(jax.grad(loss))`` gives them).
        l2_norm_clip: :math:`C \ge 0` (``inf`` clips nothing).

    Returns:
        ``(summed, num_clipped)``: the tree of clipped gradients summed over
        the batch, and how many examples were clipped.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> grads = [jnp.array([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0], [4.0, 0.0, 3.0]])]
        >>> summed, num_clipped = adamx.per_example_global_norm_clip(grads, 2.5)
        >>> print(summed[0], num_clipped)  # each norm-5 example halved
        [2.  1.5 3.5] 2

    References:
        Abadi et al., 2016, "Deep Learning with Differential Privacy",
        https://arxiv.org/abs/1607.00133
    """
    checks.check_range("l2_norm_clip", l2_norm_clip, 0.0, math.inf)
    leaves = _check_batched("per_example_global_norm_clip", grads)
    summed, clipped = _clip_and_sum(leaves, l2_norm_clip)
    return jax.tree.unflatten(jax.tree.structure(grads), summed), clipped


def per_example_layer_norm_clip(
    grads: Any, global_l2_norm_clip: jax.typing.ArrayLike, uniform: bool = True
) -> tuple[Any, Any]:
    r"""Clip each example's gradient layer by layer, then sum over the batch.

    Each leaf :math:`i` of :math:`K` is clipped on its own, as
    :func:`per_example_global_norm_clip` clips a whole gradient, to

    .. math:: C_i = \begin{cases} C / \sqrt{K} & \text{uniform} \\
       C \sqrt{D_i / D} & \text{otherwise} \end{cases}

    where :math:`D_i` is the size of one example's slice of leaf :math:`i`
    and :math:`D` their sum; either way :math:`\sum_i C_i^2 = C^2`, so the
    whole clipped gradient has norm at most :math:`C`.

    Args:
        grads: a tree of per-example gradients, each leaf with the batch axis
            first.
        global_l2_norm_clip: :math:`C \ge 0`.
        uniform: the same bound for every leaf; ``False`` gives each a share
            in proportion to its size.

    Returns:
        ``(summed, num_clipped)``: two trees like ``grads``, the clipped
        gradients summed over the batch, and per leaf how many examples were
        clipped.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> grads = {"a": jnp.array([[3.0, 4.0], [0.3, 0.4]]), "b": jnp.ones((2, 1))}
        >>> summed, num_clipped = adamx.per_example_layer_norm_clip(grads, 2**0.5)
        >>> print(summed["a"], summed["b"], num_clipped["a"], num_clipped["b"])
        [0.90000004 1.2       ] [2.] 1 0

    References:
        McMahan et al., 2018, "Learning Differentially Private Recurrent
        Language Models", https://arxiv.org/abs/1710.06963
    """
    checks.check_range("global_l2_norm_clip", global_l2_norm_clip, 0.0, math.inf)
    checks.check_bool("uniform", uniform)
    leaves = _check_batched("per_example_layer_norm_clip", grads)
    if uniform:
        bounds = [global_l2_norm_clip * (1.0 / len(leaves)) ** 0.5 for _ in leaves]
    else:
        sizes = [math.prod(np.shape(g)[1:]) for g in leaves]
        total = sum(sizes)
        bounds = [global_l2_norm_clip * (size / total) ** 0.5 for size in sizes]
    pairs = [_clip_and_sum([g], c) for g, c in zip(leaves, bounds, strict=True)]
    treedef = jax.tree.structure(grads)
    summed = jax.tree.unflatten(treedef, [s[0] for s, _ in pairs])
    counts = jax.tree.unflatten(treedef, [n for _, n in pairs])
    return summed, counts
