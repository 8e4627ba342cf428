r"""Gradient transformations: the building blocks that ``chain`` into optimizers.

Every factory here validates its arguments, then returns a
:class:`~adamx.GradientTransformation` that declares its traits (element-wise
or per leaf, and, for the stages the in-place kernels take, its
:class:`~adamx.traits.Stage`). Stateful transformations keep their state in a
small ``NamedTuple``. The adaptive ones (Adam and its family) are in
:mod:`adamx.adaptive`; momentum here is built on the same skeleton
(:mod:`adamx.moments`), so its buffer takes ``state_bits`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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
    Schedule,
    identity,
    init_empty_state,
    leafwise,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import masked
from adamx.moments import LeafStep, abs_sq, moment_transform, promoted
from adamx.moments import debias as _debias
from adamx.storage import Moment, Storage, cast, check_moment_tree, real_dtype
from adamx.traits import Stage, Traits

__all__ = [
    "AddDecayedWeightsState",
    "ClipByGlobalNormState",
    "ClipState",
    "EmaState",
    "FactoredState",
    "ScaleByLearningRateState",
    "ScaleByScheduleState",
    "ScaleByTrustRatioState",
    "ScaleState",
    "TraceState",
    "add_decayed_weights",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "ema",
    "global_norm",
    "scale",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_param_block_rms",
    "scale_by_schedule",
    "scale_by_trust_ratio",
    "trace",
]


# Optax's names for the states of transformations that keep none.
ClipState = EmptyState
ClipByGlobalNormState = EmptyState
ScaleState = EmptyState
ScaleByTrustRatioState = EmptyState


# --------------------------------------------------------------- helpers


def _is_python_number(x: Any) -> bool:
    """A Python int or float: weakly typed, it takes each update's dtype."""
    return type(x) in (int, float)


def global_norm(updates: Any) -> jax.Array:
    r"""The L2 norm of all leaves of a tree taken together.

    .. math:: \|g\|_2 = \sqrt{\textstyle\sum_i \sum_j (g^{(i)}_j)^2}

    Args:
        updates: a tree of arrays (Optax names it so).

    Returns:
        A scalar array.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])})
        Array(5., dtype=float32)
    """
    leaves = jax.tree.leaves(updates)
    # Accumulate in at least float32, and in one dtype across leaves of mixed
    # precision, so that bf16 leaves do not lose the sum; |x|^2 of complex
    # leaves, in their real dtype.
    wide = wider_dtype(jnp.float32, *[x.dtype for x in leaves])
    sums = [jnp.sum(abs_sq(x.astype(wide))) for x in leaves]
    return jnp.sqrt(sum(sums, start=jnp.zeros([], real_dtype(wide))))


def _safe_norm(x: jax.Array, min_norm: jax.typing.ArrayLike) -> jax.Array:
    """max(||x||, min_norm) with a gradient that stays finite at x = 0."""
    norm = jnp.linalg.norm(x)
    x = jnp.where(norm <= min_norm, jnp.ones_like(x), x)
    return jnp.where(norm <= min_norm, min_norm, jnp.linalg.norm(x))


def _safe_rms(x: jax.Array, min_rms: jax.typing.ArrayLike) -> jax.Array:
    """max(rms(x), min_rms) with a gradient that stays finite at x = 0."""
    rms = jnp.sqrt(jnp.mean(abs_sq(x)))
    x = jnp.where(rms <= min_rms, jnp.ones_like(x), x)
    return jnp.where(rms <= min_rms, min_rms, jnp.sqrt(jnp.mean(abs_sq(x))))


# --------------------------------------------------------------- scaling


def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    r"""Multiply every update by a constant.

    .. math:: u_t = \alpha\, g_t

    Args:
        step_size: the factor :math:`\alpha` (any finite real number).

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale(-0.5)
        >>> tx.update(jnp.array([2.0, 4.0]), tx.init(None))[0]
        Array([-1., -2.], dtype=float32)
    """
    checks.check_finite("step_size", step_size)

    def update_fn(updates, state, params=None):
        del params
        if _is_python_number(step_size):
            return jax.tree.map(lambda g: step_size * g, updates), state
        return jax.tree.map(
            lambda g: jnp.asarray(step_size).astype(g.dtype) * g, updates
        ), state

    return GradientTransformation(init_empty_state, update_fn, ELEMENTWISE)


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    r"""Multiply the updates by a factor that depends on the step count.

    .. math:: u_t = s(t)\, g_t, \quad t = 0, 1, \dots

    Args:
        step_size_fn: the schedule :math:`s`, a function of the step count.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByScheduleState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_schedule(lambda t: 1.0 / (t + 1))
        >>> s = tx.init(None)
        >>> u, s = tx.update(jnp.array([1.0]), s)
        >>> u, s = tx.update(jnp.array([1.0]), s)
        >>> u
        Array([0.5], dtype=float32)
    """
    if not callable(step_size_fn):
        raise TypeError(
            f"step_size_fn must be a callable of the step count, got {step_size_fn!r}"
        )

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        step_size = step_size_fn(state.count)
        updates = jax.tree.map(
            lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates
        )
        return updates, ScaleByScheduleState(count=safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn, ELEMENTWISE)


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`."""

    # Named neither "count" nor "learning_rate", so that Optax's
    # tree_get(state, "count") still finds the one step counter of an Adam
    # state, and tree_get(state, "learning_rate") the injected hyperparameter.
    step: jax.Array  # shape=(), int32: steps taken so far
    rate: jax.Array  # shape=(), float32: the learning rate used at the last step


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule | None = None, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""Scale updates by minus the learning rate (a number or a schedule).

    .. math:: u_t = -\alpha_t\, g_t

    The learning rate applied at the last step is kept in the state
    (``state.rate``; before the first step, the rate the first step
    will use), so a training loop can log it without rebuilding the schedule.
    See :func:`adamx.get_learning_rate`.

    Args:
        learning_rate: :math:`\alpha`, a number >= 0 or a schedule
            ``step -> number``. ``None`` makes this an identity.
        flip_sign: when False, scale by :math:`+\alpha_t` instead.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByLearningRateState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_learning_rate(0.1)
        >>> u, s = tx.update(jnp.array([1.0, -2.0]), tx.init(None))
        >>> u
        Array([-0.1,  0.2], dtype=float32)
        >>> float(s.rate)
        0.1...
    """
    checks.check_bool("flip_sign", flip_sign)
    if learning_rate is None:
        return identity()
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    sign = -1 if flip_sign else 1
    is_schedule = callable(learning_rate)

    def rate(count):
        return learning_rate(count) if is_schedule else learning_rate

    def init_fn(params):
        del params
        count = jnp.zeros([], jnp.int32)
        return ScaleByLearningRateState(
            step=count, rate=jnp.asarray(rate(count), jnp.float32)
        )

    def update_fn(updates, state, params=None):
        del params
        lr = rate(state.step)
        step = sign * lr
        if _is_python_number(step):
            # A Python scalar stays weakly typed, so float64 and bf16 updates
            # are scaled in their own precision, exactly as Optax does.
            updates = jax.tree.map(lambda g: step * g, updates)
        else:
            # An array (a schedule's value, or one injected into the state)
            # in each update's own dtype, as the weak scalar would be.
            updates = jax.tree.map(
                lambda g: jnp.array(step, dtype=g.dtype) * g, updates
            )
        return updates, ScaleByLearningRateState(
            step=safe_increment(state.step),
            rate=jnp.asarray(lr, jnp.float32),
        )

    stage = Stage(
        "scale_by_learning_rate",
        {"learning_rate": learning_rate, "flip_sign": flip_sign},
    )
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


def learning_rate_stage(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """The last stage of an optimizer, whose learning rate is not optional."""
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    return scale_by_learning_rate(learning_rate)


# -------------------------------------------------------------- momentum


def _decayed(x: LeafStep, t: jax.Array, kept: Any, storage: Storage) -> jax.Array:
    r""":math:`\mu\, m_{t-1}` for a momentum buffer, in the computation's dtype.

    A buffer kept at 32 bits in a dtype of its own (``accumulator_dtype``, or
    the params') is multiplied in that dtype, as Optax does, so a float32
    buffer under float64 params gives Optax's numbers. Stored in fewer bits
    (``state_bits`` 16, 8, 4), it is multiplied as computed, and only its new
    value rounded.
    """
    if not storage.in_dtypes:
        return x.h.decay * t
    return cast(x.hyper(kept).decay * cast(t, kept), x.dtype)


class TraceState(NamedTuple):
    """State of :func:`trace`."""

    trace: Any  # like params (or accumulator_dtype, or codes): the momentum buffer


def trace(
    decay: jax.typing.ArrayLike,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Heavy-ball momentum, or Nesterov's form of it.

    .. math::
        m_t = g_t + \mu\, m_{t-1}, \qquad
        u_t = \begin{cases} g_t + \mu\, m_t & \text{nesterov} \\ m_t &
        \text{otherwise} \end{cases}

    This is ``torch.optim.SGD``'s momentum with ``dampening=0``.

    Args:
        decay: the momentum :math:`\mu \ge 0`.
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        state_bits: how :math:`m` is stored: 32 (as ``accumulator_dtype``
            says), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state :class:`TraceState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.trace(0.9)
        >>> s = tx.init(jnp.zeros(1))
        >>> u, s = tx.update(jnp.array([1.0]), s)
        >>> u, s = tx.update(jnp.array([1.0]), s)
        >>> u
        Array([1.9], dtype=float32)

    References:
        Polyak, 1964, "Some methods of speeding up the convergence of iteration
        methods", https://doi.org/10.1016/0041-5553(64)90137-5

        Sutskever et al., 2013, "On the importance of initialization and
        momentum in deep learning", https://proceedings.mlr.press/v28/sutskever13.html
    """
    checks.check_nonnegative("decay", decay)
    checks.check_bool("nesterov", nesterov)
    storage = Storage.parse(state_bits, accumulator_dtype=accumulator_dtype)

    def body(x: LeafStep, g: jax.Array, t: jax.Array) -> tuple:
        t = g + _decayed(x, t, x.storage_dtype.trace, storage)
        return (g + x.h.decay * t if nesterov else t), t

    return moment_transform(
        TraceState,
        [Moment("trace", dtype="accumulator_dtype")],
        storage,
        body,
        name="trace",
        hyperparams={"decay": decay},
        stage_args={"nesterov": nesterov},
        compute_dtype=promoted,
        counted=False,
    )


class EmaState(NamedTuple):
    """State of :func:`ema`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    ema: Any  # like params (or accumulator_dtype, or codes): the moving average


def ema(
    decay: jax.typing.ArrayLike,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""An exponential moving average of the updates, optionally debiased.

    .. math::
        m_t = \beta\, m_{t-1} + (1 - \beta)\, g_t, \qquad
        u_t = \begin{cases} m_t / (1 - \beta^t) & \text{debias} \\ m_t &
        \text{otherwise} \end{cases}

    Args:
        decay: :math:`\beta \in [0, 1)`.
        debias: divide by :math:`1 - \beta^t` (see :func:`adamx.bias_correction`).
        accumulator_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        state_bits: how :math:`m` is stored: 32 (as ``accumulator_dtype``
            says), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state :class:`EmaState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.ema(0.5)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([2.], dtype=float32)
    """
    checks.check_decay("decay", decay)
    checks.check_bool("debias", debias)
    storage = Storage.parse(state_bits, accumulator_dtype=accumulator_dtype)
    corrected = debias

    def body(x: LeafStep, g: jax.Array, t: jax.Array) -> tuple:
        d = x.h.decay
        t = (1 - d) * g + _decayed(x, t, x.storage_dtype.ema, storage)
        return (_debias(t, d, x.count) if corrected else t), t

    return moment_transform(
        EmaState,
        [Moment("ema", dtype="accumulator_dtype")],
        storage,
        body,
        name="ema",
        hyperparams={"decay": decay},
        stage_args={"debias": debias},
        compute_dtype=promoted,
    )


# ------------------------------------------------------------ layer-wise


def scale_by_trust_ratio(
    min_norm: jax.typing.ArrayLike = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
) -> GradientTransformation:
    r"""Scale each leaf's update by the ratio of param norm to update norm (LARS/LAMB).

    .. math:: u_t^{(i)} = \eta\, \frac{\|\theta^{(i)}\|}{\|g_t^{(i)}\| + \epsilon}\,
       g_t^{(i)}

    with ratio 1 where either norm is zero; norms below ``min_norm`` count as
    ``min_norm``.

    Args:
        min_norm: floor of both norms (>= 0).
        trust_coefficient: :math:`\eta \ge 0`.
        eps: :math:`\epsilon \ge 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`; ``update`` needs
        ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_trust_ratio()
        >>> p = jnp.array([3.0, 4.0])
        >>> tx.update(jnp.array([0.0, 1.0]), tx.init(p), p)[0]
        Array([0., 5.], dtype=float32)

    References:
        You et al., 2017, "Large Batch Training of Convolutional Networks",
        https://arxiv.org/abs/1708.03888

        You et al., 2019, "Large Batch Optimization for Deep Learning: Training
        BERT in 76 minutes", https://arxiv.org/abs/1904.00962
    """
    checks.check_nonnegative("min_norm", min_norm)
    checks.check_nonnegative("trust_coefficient", trust_coefficient)
    checks.check_nonnegative("eps", eps)

    def update_fn(updates, state, params=None):
        require_params("scale_by_trust_ratio", params)
        check_moment_tree(updates, params, "params")

        def leaf(u, p):
            p_norm = _safe_norm(p, min_norm)
            u_norm = _safe_norm(u, min_norm)
            ratio = trust_coefficient * p_norm / (u_norm + eps)
            zero = jnp.logical_or(p_norm == 0.0, u_norm == 0.0)
            return (u * jnp.where(zero, jnp.array(1.0, dtype=p.dtype), ratio),)

        (updates,) = leafwise(leaf, 1, updates, params)
        return updates, state

    return GradientTransformation(init_empty_state, update_fn, PER_LEAF)


def scale_by_param_block_rms(
    min_scale: jax.typing.ArrayLike = 1e-3,
) -> GradientTransformation:
    r"""Scale each leaf's update by the RMS of its param (Adafactor's relative step).

    .. math:: u_t^{(i)} = \max(\operatorname{rms}(\theta^{(i)}), s_{\min})\, g_t^{(i)}

    Args:
        min_scale: :math:`s_{\min} \ge 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`; ``update`` needs
        ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_param_block_rms()
        >>> p = jnp.array([3.0, 3.0])
        >>> tx.update(jnp.array([1.0, 2.0]), tx.init(p), p)[0]
        Array([3., 6.], dtype=float32)

    References:
        Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with
        Sublinear Memory Cost", https://arxiv.org/abs/1804.04235
    """
    checks.check_nonnegative("min_scale", min_scale)

    def update_fn(updates, state, params=None):
        require_params("scale_by_param_block_rms", params)
        check_moment_tree(updates, params, "params")
        updates = jax.tree.map(
            lambda u, p: u * _safe_rms(p, min_scale), updates, params
        )
        return updates, state

    return GradientTransformation(init_empty_state, update_fn, PER_LEAF)


class FactoredState(NamedTuple):
    """State of :func:`scale_by_factored_rms`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    v_row: Any  # per leaf: row statistics (factored leaves), else shape (1,)
    v_col: Any  # per leaf: column statistics (factored leaves), else shape (1,)
    v: Any  # per leaf: full second moment (unfactored leaves), else shape (1,)


def _adafactor_decay(
    step: jax.Array, exponent: jax.typing.ArrayLike = 0.8
) -> jax.Array:
    """Adafactor's increasing decay :math:`1 - (t + 1)^{-c}`."""
    t = jnp.array(step + 1, jnp.float32)
    return 1.0 - t ** jnp.negative(exponent)


def _factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The two largest dims of a leaf, if it is big enough to factor."""
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _zeros_without_axis(x: jax.Array, axis: int, dtype: Any) -> jax.Array:
    """Zeros shaped (and, on a mesh of explicit axes, sharded) as ``x`` summed
    over ``axis``, so that init and update agree on the statistic's sharding."""
    return jnp.sum(jnp.zeros_like(x, dtype=dtype), axis=axis)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: jax.typing.ArrayLike = 0.8,
    step_offset: jax.typing.ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: jax.typing.ArrayLike = 1e-30,
    decay_rate_fn: Callable[[jax.Array, Any], jax.Array] = _adafactor_decay,
) -> GradientTransformation:
    r"""Adafactor's factored second-moment scaling (Shazeer & Stern, 2018).

    For a leaf whose two largest dims (rows :math:`r`, columns :math:`c`) are
    both at least ``min_dim_size_to_factor``:

    .. math::
        \begin{aligned}
        \hat\beta_t &= 1 - (t + 1)^{-\gamma} \\
        R_t &= \hat\beta_t R_{t-1} + (1 - \hat\beta_t)\, \mathrm{mean}_c(g_t^2
        + \epsilon) \\
        C_t &= \hat\beta_t C_{t-1} + (1 - \hat\beta_t)\, \mathrm{mean}_r(g_t^2
        + \epsilon) \\
        u_t &= g_t \big/ \sqrt{R_t C_t / \mathrm{mean}(R_t)}
        \end{aligned}

    Smaller leaves keep the full moment :math:`v_t` and use
    :math:`u_t = g_t / \sqrt{v_t}`.

    Args:
        factored: factor leaves with two or more big dims.
        decay_rate: :math:`\gamma`, the exponent of the decay schedule.
        step_offset: subtracted from the step count (for fine-tuning).
        min_dim_size_to_factor: smallest dim size that is factored.
        epsilon: :math:`\epsilon > 0`, added to :math:`g_t^2`.
        decay_rate_fn: ``(step, decay_rate) -> decay``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`FactoredState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_factored_rms()
        >>> p = jnp.zeros(2)
        >>> tx.update(jnp.array([2.0, -2.0]), tx.init(p), p)[0]
        Array([ 1., -1.], dtype=float32)

    References:
        Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with
        Sublinear Memory Cost", https://arxiv.org/abs/1804.04235
    """
    checks.check_bool("factored", factored)
    checks.check_nonnegative("decay_rate", decay_rate)
    checks.check_positive_int("min_dim_size_to_factor", min_dim_size_to_factor)
    checks.check_range("epsilon", epsilon, 0.0, np.inf, low_open=True, high_open=True)
    if not callable(decay_rate_fn):
        raise TypeError(f"decay_rate_fn must be callable, got {decay_rate_fn!r}")

    def init_fn(params):
        def leaf(p):
            dims = _factored_dims(p.shape, factored, min_dim_size_to_factor)
            # Statistics of |g|^2: real, for complex params too.
            dtype = real_dtype(p.dtype)
            one = jnp.zeros((1,), dtype=dtype)
            if dims is None:
                return one, one, jnp.zeros_like(p, dtype=dtype)
            d1, d0 = dims
            return (
                _zeros_without_axis(p, d0, dtype),
                _zeros_without_axis(p, d1, dtype),
                one,
            )

        v_row, v_col, v = leafwise(leaf, 3, params)
        return FactoredState(
            count=jnp.zeros([], jnp.int32), v_row=v_row, v_col=v_col, v=v
        )

    def update_fn(updates, state, params=None):
        require_params("scale_by_factored_rms", params)
        # Factored leaves keep (1,)-shaped placeholders in v: structure only.
        check_moment_tree(updates, state.v, "state.v", shapes=False)
        beta = decay_rate_fn(state.count - step_offset, decay_rate)

        def leaf(g, row, col, v, p):
            dims = _factored_dims(p.shape, factored, min_dim_size_to_factor)
            ct = wider_dtype(g.dtype, jnp.float32)
            rt = real_dtype(ct)
            b = jnp.asarray(beta).astype(rt)
            g32 = g.astype(ct)
            g_sq = abs_sq(g32) + epsilon
            one = jnp.zeros((1,), dtype=real_dtype(p.dtype))
            if dims is None:
                new_v = b * v.astype(rt) + (1.0 - b) * g_sq
                u = g32 * new_v ** (-0.5)
                return u.astype(g.dtype), one, one, new_v.astype(v.dtype)
            d1, d0 = dims
            new_row = b * row.astype(rt) + (1.0 - b) * jnp.mean(g_sq, axis=d0)
            new_col = b * col.astype(rt) + (1.0 - b) * jnp.mean(g_sq, axis=d1)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_mean = jnp.mean(new_row, axis=reduced_d1, keepdims=True)
            row_factor = (new_row / row_mean) ** (-0.5)
            col_factor = new_col ** (-0.5)
            u = g32 * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
            return (
                u.astype(g.dtype),
                new_row.astype(row.dtype),
                new_col.astype(col.dtype),
                one,
            )

        updates, v_row, v_col, v = leafwise(
            leaf, 4, updates, state.v_row, state.v_col, state.v, params
        )
        return updates, FactoredState(
            count=safe_increment(state.count), v_row=v_row, v_col=v_col, v=v
        )

    return GradientTransformation(init_fn, update_fn, PER_LEAF)


# ---------------------------------------------------------- weight decay


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights` with a scheduled decay."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    r"""Add the params, times a decay rate, to the updates.

    .. math:: u_t = g_t + \lambda_t\, \theta_{t-1}

    Placed before the learning-rate scaling (as in :func:`adamx.adamw`) this is
    decoupled weight decay scaled by the learning rate, as in
    ``torch.optim.AdamW``; Loshchilov & Hutter multiply :math:`\lambda` by the
    schedule multiplier only.

    Args:
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: a tree of bools (or a function of the params returning one)
            selecting the leaves to decay; ``None`` decays all.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.add_decayed_weights(0.1)
        >>> p = jnp.array([1.0, 2.0])
        >>> tx.update(jnp.zeros(2), tx.init(p), p)[0]
        Array([0.1, 0.2], dtype=float32)

    References:
        Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
        https://arxiv.org/abs/1711.05101
    """
    checks.check_scalar_or_schedule("weight_decay", weight_decay)
    is_schedule = callable(weight_decay)

    def init_fn(params):
        del params
        if is_schedule:
            return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))
        return EmptyState()

    def update_fn(updates, state, params=None):
        require_params("add_decayed_weights", params)
        # A None update (the whole tree or a leaf, as frozen params give) stays
        # None, as in Optax.
        is_none = lambda x: x is None  # noqa: E731
        if not any(g is None for g in jax.tree.leaves(updates, is_leaf=is_none)):
            check_moment_tree(updates, params, "params")
        if is_schedule:
            wd = weight_decay(state.count)
            new_state = AddDecayedWeightsState(count=safe_increment(state.count))
        else:
            wd, new_state = weight_decay, state
            if isinstance(wd, (int, float)) and wd == 0.0:
                return updates, state

        def leaf(g, p):
            if g is None:
                return None
            ct = wider_dtype(g.dtype, p.dtype)
            rate = wd if _is_python_number(wd) else jnp.asarray(wd).astype(ct)
            return (g.astype(ct) + rate * p.astype(ct)).astype(g.dtype)

        return jax.tree.map(leaf, updates, params, is_leaf=is_none), new_state

    stage = Stage("add_decayed_weights", {"weight_decay": weight_decay})
    tx = GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))
    return tx if mask is None else masked(tx, mask)


class DecayStepState(NamedTuple):
    """State of :func:`decay_stepped_params`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far


def decay_stepped_params(
    learning_rate: ScalarOrSchedule,
    weight_decay: jax.typing.ArrayLike,
    *,
    skip_first: bool = False,
) -> GradientTransformation:
    r"""Decoupled weight decay of the params after the step, as a last stage.

    .. math:: u \leftarrow u - \alpha_t \lambda\, (\theta + u)

    so that :math:`\theta + u` becomes :math:`(\theta + u)(1 - \alpha_t
    \lambda)`: PyTorch optimizers that decay ``p`` after adding the step (SOAP's
    and LaProp's reference code) in the form of an update.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule of the count.
        weight_decay: :math:`\lambda \ge 0`.
        skip_first: leave the first step's update alone (SOAP's first step only
            measures, and decays nothing).

    Returns:
        A :class:`~adamx.GradientTransformation` that needs the params.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.transforms import decay_stepped_params
        >>> tx = decay_stepped_params(0.5, 0.1)
        >>> u, _ = tx.update(jnp.array([-1.0]), tx.init(None), jnp.array([3.0]))
        >>> print(u)  # (3 - 1) * (1 - 0.05) - 3
        [-1.1]

    References:
        Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
        https://arxiv.org/abs/1711.05101
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_nonnegative("weight_decay", weight_decay)

    def init_fn(params: Any) -> DecayStepState:
        del params
        return DecayStepState(jnp.zeros([], jnp.int32))

    def update_fn(
        updates: Any, state: DecayStepState, params: Any = None
    ) -> tuple[Any, DecayStepState]:
        require_params("the weight decay of the stepped params", params)
        count = safe_increment(state.count)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def leaf(u: jax.Array, p: jax.Array) -> jax.Array:
            ct = wider_dtype(u.dtype, p.dtype)
            rate = (jnp.asarray(lr) * jnp.asarray(weight_decay)).astype(ct)
            decayed = u.astype(ct) - rate * (p.astype(ct) + u.astype(ct))
            if skip_first:
                decayed = jnp.where(count > 1, decayed, u.astype(ct))
            return decayed.astype(u.dtype)

        return jax.tree.map(leaf, updates, params), DecayStepState(count)

    return GradientTransformation(init_fn, update_fn, Traits(True))


# -------------------------------------------------------------- clipping


def clip(max_delta: jax.typing.ArrayLike) -> GradientTransformation:
    r"""Clip every update element to :math:`[-\delta, \delta]`.

    .. math:: u_t = \operatorname{clip}(g_t, -\delta, \delta)

    Args:
        max_delta: :math:`\delta > 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.clip(1.0)
        >>> tx.update(jnp.array([3.0, -0.5]), tx.init(None))[0]
        Array([ 1. , -0.5], dtype=float32)
    """
    checks.check_range("max_delta", max_delta, 0.0, np.inf, low_open=True)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(
            lambda g: jnp.clip(g, -max_delta, max_delta), updates
        ), state

    return GradientTransformation(init_empty_state, update_fn, ELEMENTWISE)


def clip_by_global_norm(max_norm: jax.typing.ArrayLike) -> GradientTransformation:
    r"""Rescale all updates together so that their global norm is at most ``max_norm``.

    .. math:: u_t = g_t \cdot \min\!\left(1, \frac{c}{\|g_t\|_2}\right)

    where :math:`\|g_t\|_2` is the norm of all leaves together
    (:func:`global_norm`), as in ``torch.nn.utils.clip_grad_norm_``.

    Args:
        max_norm: :math:`c > 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.clip_by_global_norm(1.0)
        >>> tx.update(jnp.array([3.0, 4.0]), tx.init(None))[0]
        Array([0.6, 0.8], dtype=float32)
    """
    checks.check_range("max_norm", max_norm, 0.0, np.inf, low_open=True)

    def update_fn(updates, state, params=None):
        del params
        g_norm = global_norm(updates)
        keep = g_norm < max_norm

        def leaf(t):
            return jax.lax.select(keep, t, t / g_norm.astype(t.dtype) * max_norm)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn, ELEMENTWISE)


def clip_by_block_rms(threshold: jax.typing.ArrayLike) -> GradientTransformation:
    r"""Rescale each leaf so that its RMS is at most ``threshold`` (Adafactor).

    .. math:: u_t^{(i)} = g_t^{(i)} / \max(1, \operatorname{rms}(g_t^{(i)}) / d)

    Args:
        threshold: :math:`d > 0`.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.clip_by_block_rms(1.0)
        >>> tx.update(jnp.array([2.0, -2.0]), tx.init(None))[0]
        Array([ 1., -1.], dtype=float32)

    References:
        Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with
        Sublinear Memory Cost", https://arxiv.org/abs/1804.04235
    """
    checks.check_range("threshold", threshold, 0.0, np.inf, low_open=True)

    def update_fn(updates, state, params=None):
        del params

        def leaf(u):
            return u / jnp.maximum(1.0, jnp.sqrt(jnp.mean(abs_sq(u))) / threshold)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn, PER_LEAF)
