r"""Gradient transformations: the building blocks that ``chain`` into optimizers.

Every factory here validates its arguments, then returns a
:class:`~adamx.GradientTransformation`. Stateful transformations keep their
state in a small ``NamedTuple``.

Adam-family transformations do their arithmetic in at least float32: with
float16 or bfloat16 gradients the moments are read, updated and combined in
float32 and only stored (and returned) in the low-precision dtype. This keeps
``eps`` representable (1e-8 is zero in float16) so half-precision params with
zero gradients give zero updates, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks, lowbit
from adamx.base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    check_same_shapes,
    check_same_structure,
    elementwise,
    identity,
    init_empty_state,
    require_params,
    safe_increment,
    tree_cast,
    tree_zeros_like,
    wider_dtype,
)
from adamx.combine import masked

__all__ = [
    "AddDecayedWeightsState",
    "EmaState",
    "FactoredState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByRmsState",
    "ScaleByScheduleState",
    "ScaleByStddevState",
    "TraceState",
    "add_decayed_weights",
    "bias_correction",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "ema",
    "global_norm",
    "scale",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_param_block_rms",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_schedule",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "trace",
]


# --------------------------------------------------------------- helpers


def _leafwise(fn: Callable[..., tuple], n_out: int, tree: Any, *others: Any) -> tuple:
    """Apply ``fn`` leaf by leaf to ``tree`` and ``others``; unzip its outputs.

    ``None`` and :class:`~adamx.MaskedNode` entries carry no leaves, so they pass
    through untouched.
    """
    leaves, treedef = jax.tree.flatten(tree)
    other_leaves = [treedef.flatten_up_to(o) for o in others]
    outs = [fn(*args) for args in zip(leaves, *other_leaves, strict=True)]
    return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(n_out))


def _compute_dtype(dtype: Any) -> Any:
    """At least float32, so that eps and squared gradients stay representable."""
    return wider_dtype(dtype, jnp.float32)


def _as_float(count: jax.Array) -> jax.Array:
    """A step count in the default float dtype, for powers like :math:`\\beta^t`."""
    return jnp.asarray(count).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _check_state_tree(
    updates: Any, state_tree: Any, name: str, *, shapes: bool = True
) -> None:
    # A quantized moment is one node standing for one leaf of the params.
    check = check_same_shapes if shapes else check_same_structure
    check("updates", updates, name, lowbit.as_placeholders(state_tree))


def bias_correction(moment: Any, decay: jax.typing.ArrayLike, count: jax.Array) -> Any:
    r"""Divide an exponential moving average by its bias, leaf by leaf.

    .. math:: \hat{m}_t = \frac{m_t}{1 - \beta^t}

    The moving average of :math:`t` values that starts at zero underestimates
    their mean by the factor :math:`1 - \beta^t`; this undoes it.

    Args:
        moment: a tree of moving averages :math:`m_t`.
        decay: the decay rate :math:`\beta` of the average.
        count: the number of values averaged so far, :math:`t \ge 1`.

    Returns:
        The corrected tree, in the dtypes of ``moment``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.bias_correction(jnp.array([0.1]), 0.9, jnp.array(1))
        Array([0.99999976], dtype=float32)
    """
    correction = 1 - decay ** _as_float(count)
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


def global_norm(tree: Any) -> jax.Array:
    r"""The L2 norm of all leaves of a tree taken together.

    .. math:: \|g\|_2 = \sqrt{\textstyle\sum_i \sum_j (g^{(i)}_j)^2}

    Args:
        tree: a tree of arrays.

    Returns:
        A scalar array.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])})
        Array(5., dtype=float32)
    """
    leaves = jax.tree.leaves(tree)
    # Accumulate in at least float32, and in one dtype across leaves of mixed
    # precision, so that bf16 leaves do not lose the sum.
    acc = wider_dtype(jnp.float32, *[x.dtype for x in leaves])
    sums = [jnp.sum(jnp.square(x.astype(acc))) for x in leaves]
    return jnp.sqrt(sum(sums, start=jnp.zeros([], acc)))


def _safe_norm(x: jax.Array, min_norm: jax.typing.ArrayLike) -> jax.Array:
    """max(||x||, min_norm) with a gradient that stays finite at x = 0."""
    norm = jnp.linalg.norm(x)
    x = jnp.where(norm <= min_norm, jnp.ones_like(x), x)
    return jnp.where(norm <= min_norm, min_norm, jnp.linalg.norm(x))


def _safe_rms(x: jax.Array, min_rms: jax.typing.ArrayLike) -> jax.Array:
    """max(rms(x), min_rms) with a gradient that stays finite at x = 0."""
    rms = jnp.sqrt(jnp.mean(jnp.square(x)))
    x = jnp.where(rms <= min_rms, jnp.ones_like(x), x)
    return jnp.where(rms <= min_rms, min_rms, jnp.sqrt(jnp.mean(jnp.square(x))))


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
        return jax.tree.map(lambda g: step_size * g, updates), state

    return elementwise(GradientTransformation(init_empty_state, update_fn))


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

    return elementwise(GradientTransformation(init_fn, update_fn))


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`."""

    # Not named "count", so that Optax's tree_get(state, "count") still finds
    # the one step counter of an Adam state.
    step: jax.Array  # shape=(), int32: steps taken so far
    learning_rate: jax.Array  # shape=(), float32: the rate used at the last step


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule | None = None, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""Scale updates by minus the learning rate (a number or a schedule).

    .. math:: u_t = -\alpha_t\, g_t

    The learning rate applied at the last step is kept in the state
    (``state.learning_rate``; before the first step, the rate the first step
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
        >>> float(s.learning_rate)
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
            step=count, learning_rate=jnp.asarray(rate(count), jnp.float32)
        )

    def update_fn(updates, state, params=None):
        del params
        lr = rate(state.step)
        if is_schedule:
            step = sign * lr
            updates = jax.tree.map(
                lambda g: jnp.array(step, dtype=g.dtype) * g, updates
            )
        else:
            # A Python scalar stays weakly typed, so float64 and bf16 updates
            # are scaled in their own precision, exactly as Optax does.
            step = sign * learning_rate
            updates = jax.tree.map(lambda g: step * g, updates)
        return updates, ScaleByLearningRateState(
            step=safe_increment(state.step),
            learning_rate=jnp.asarray(lr, jnp.float32),
        )

    return elementwise(GradientTransformation(init_fn, update_fn))


# -------------------------------------------------------------- momentum


class TraceState(NamedTuple):
    """State of :func:`trace`."""

    trace: Any  # like params (or accumulator_dtype): the momentum buffer


def trace(
    decay: jax.typing.ArrayLike,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
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
    """
    checks.check_nonnegative("decay", decay)
    checks.check_bool("nesterov", nesterov)
    accumulator_dtype = checks.check_float_dtype("accumulator_dtype", accumulator_dtype)

    def init_fn(params):
        return TraceState(trace=tree_zeros_like(params, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.trace, "state.trace")
        hp = _Hyper(decay=decay)

        def leaf(g, t):
            ct = wider_dtype(g.dtype, t.dtype)
            g_ = g.astype(ct)
            # decay * t in the accumulator's own dtype, as Optax does, so a
            # float32 buffer under float64 params gives Optax's numbers.
            new_t = g_ + (hp(t.dtype).decay * t).astype(ct)
            u = g_ + hp(ct).decay * new_t if nesterov else new_t
            return u.astype(g.dtype), new_t

        updates, new_trace = _leafwise(leaf, 2, updates, state.trace)
        return updates, TraceState(trace=tree_cast(new_trace, accumulator_dtype))

    return elementwise(GradientTransformation(init_fn, update_fn))


class EmaState(NamedTuple):
    """State of :func:`ema`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    ema: Any  # like params (or accumulator_dtype): the moving average


def ema(
    decay: jax.typing.ArrayLike,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
) -> GradientTransformation:
    r"""An exponential moving average of the updates, optionally debiased.

    .. math::
        m_t = \beta\, m_{t-1} + (1 - \beta)\, g_t, \qquad
        u_t = \begin{cases} m_t / (1 - \beta^t) & \text{debias} \\ m_t &
        \text{otherwise} \end{cases}

    Args:
        decay: :math:`\beta \in [0, 1)`.
        debias: divide by :math:`1 - \beta^t` (see :func:`bias_correction`).
        accumulator_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.

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
    accumulator_dtype = checks.check_float_dtype("accumulator_dtype", accumulator_dtype)

    def init_fn(params):
        return EmaState(
            count=jnp.zeros([], jnp.int32),
            ema=tree_zeros_like(params, accumulator_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.ema, "state.ema")
        count = safe_increment(state.count)
        hp = _Hyper(decay=decay)

        def leaf(g, t):
            ct = wider_dtype(g.dtype, t.dtype)
            d = hp(ct).decay
            # decay * t in the accumulator's own dtype, as in trace().
            new_t = (1 - d) * g.astype(ct) + (hp(t.dtype).decay * t).astype(ct)
            u = _debias(new_t, d, count) if debias else new_t
            return u.astype(g.dtype), new_t

        updates, new_ema = _leafwise(leaf, 2, updates, state.ema)
        return updates, EmaState(count=count, ema=_store_like(new_ema, state.ema))

    return elementwise(GradientTransformation(init_fn, update_fn))


# ----------------------------------------------------------- Adam family


class _Hyper:
    """Hyperparameters as arrays of a computation's dtype, made once per update.

    Arithmetic on hyperparameters (``1 - b1``, ``b1 ** t``) then happens in that
    dtype whether a value is a Python float or an array held in the state by
    :func:`adamx.inject_hyperparams`, so both give bitwise the same updates.
    """

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._by_dtype: dict[Any, SimpleNamespace] = {}
        self._derived: dict[Any, Any] = {}

    def derived(self, dtype: Any, fn: Callable[[SimpleNamespace], Any]) -> Any:
        """``fn(self(dtype))``, computed once per dtype and update.

        Scalars that every leaf needs (``1 - b1``, the bias corrections) are
        then emitted once, not once per leaf: less to trace and compile.
        """
        key = jnp.dtype(dtype)
        if key not in self._derived:
            self._derived[key] = fn(self(key))
        return self._derived[key]

    def __call__(self, dtype: Any) -> SimpleNamespace:
        key = jnp.dtype(dtype)
        if key not in self._by_dtype:
            names = list(self._values)
            arrays = tuple(jnp.asarray(self._values[n]).astype(key) for n in names)
            self._by_dtype[key] = SimpleNamespace(
                **dict(zip(names, arrays, strict=True))
            )
        return self._by_dtype[key]


def _moment1(g: jax.Array, m: jax.Array, d: jax.Array) -> jax.Array:
    return (1 - d) * g + d * m


def _moment2(g: jax.Array, v: jax.Array, d: jax.Array) -> jax.Array:
    return (1 - d) * g**2 + d * v


def _debias(x: jax.Array, d: jax.Array, count: jax.Array) -> jax.Array:
    return x / (1 - d ** _as_float(count).astype(x.dtype))


def _first_moment_estimate(
    m: jax.Array,
    g: jax.Array,
    b1: jax.Array,
    count: jax.Array,
    nesterov: bool,
    debias: bool,
) -> jax.Array:
    """Adam's :math:`\\hat m_t`, plain or in Dozat's Nesterov form."""
    if nesterov:
        if not debias:
            return b1 * m + (1 - b1) * g
        return b1 * _debias(m, b1, safe_increment(count)) + (1 - b1) * _debias(
            g, b1, count
        )
    return _debias(m, b1, count) if debias else m


class ScaleByAdamState(NamedTuple):
    """State of scale_by_adam, scale_by_adamax and scale_by_radam (as in Optax)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or mu_dtype): first moment m
    nu: Any  # like params (or nu_dtype): second moment v (adamax: the inf-norm u)


def _check_adam_args(b1: Any, b2: Any, eps: Any, eps_root: Any) -> None:
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("eps_root", eps_root)


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    bias_correction: bool = True,
    nu_dtype: Any | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale updates by Adam's moment estimates (Kingma & Ba, 2014).

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        u_t &= \hat m_t / \left(\sqrt{\hat v_t + \bar\epsilon} + \epsilon\right)
        \end{aligned}

    With ``nesterov=True``, :math:`\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1})
    + (1 - \beta_1) g_t / (1 - \beta_1^t)` (Dozat, 2016). :math:`\epsilon` sits
    outside the square root as in Algorithm 1 of the paper and in
    ``torch.optim.Adam``; :math:`\bar\epsilon` (``eps_root``) inside it.

    With ``state_bits`` 8 or 4, :math:`m_{t-1}` and :math:`v_{t-1}` are read
    from block-wise codes, the step runs as above in float32, and
    :math:`m_t, v_t` are quantized again (:func:`adamx.lowbit.quantize`):
    about 2 or 1 bytes of state per param instead of 8.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the first moment.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside the square root.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        nesterov: use Dozat's Nesterov form of :math:`\hat m_t`.
        bias_correction: divide the moments by :math:`1 - \beta^t`; when False,
            :math:`\hat m_t = m_t` and :math:`\hat v_t = v_t`.
        nu_dtype: dtype of :math:`v`; ``None`` uses the params' dtype.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (as
            ``mu_dtype``/``nu_dtype`` say), 16 (bfloat16), 8 or 4 (block-wise
            quantized, see :mod:`adamx.lowbit`). The update is computed in
            float32 either way. Not to be combined with ``mu_dtype`` or
            ``nu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adam()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)
    """
    _check_adam_args(b1, b2, eps, eps_root)
    checks.check_bool("nesterov", nesterov)
    checks.check_bool("bias_correction", bias_correction)
    mu_dtype = checks.check_float_dtype("mu_dtype", mu_dtype)
    nu_dtype = checks.check_float_dtype("nu_dtype", nu_dtype)
    # None (the default) is 32; not 32 itself, so that Optax's inject_hyperparams,
    # which injects every number, leaves this structural argument alone.
    state_bits = 32 if state_bits is None else state_bits
    state_bits = lowbit.check_state_bits(
        state_bits, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )
    debias = bias_correction

    def init_fn(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=lowbit.init_moment(params, state_bits, True, mu_dtype),
            nu=lowbit.init_moment(params, state_bits, False, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)
        hp = _Hyper(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

        def scalars(h):
            t = _as_float(count).astype(h.b1.dtype)
            return SimpleNamespace(
                omb1=1 - h.b1,
                omb2=1 - h.b2,
                bc1=1 - h.b1**t,
                bc2=1 - h.b2**t,
                # Nesterov's look-ahead term divides by 1 - b1^(t+1).
                bc1_next=1 - h.b1 ** _as_float(safe_increment(count)).astype(t.dtype),
            )

        def leaf(g, m, v):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            c = hp.derived(ct, scalars)
            as_stored = lowbit.as_stored_fns(m, v)

            def body(g, m, v):
                g32 = g.astype(ct)
                m = as_stored[0](c.omb1 * g32 + h.b1 * m)
                v = as_stored[1](c.omb2 * g32**2 + h.b2 * v)
                if not debias:
                    m_hat = h.b1 * m + c.omb1 * g32 if nesterov else m
                    v_hat = v
                else:
                    m_hat = (
                        h.b1 * (m / c.bc1_next) + c.omb1 * (g32 / c.bc1)
                        if nesterov
                        else m / c.bc1
                    )
                    v_hat = v / c.bc2
                # eps_root = 0 (a Python literal) adds nothing: not emitted.
                if not (isinstance(eps_root, (int, float)) and eps_root == 0):
                    v_hat = v_hat + h.eps_root
                u = m_hat / (jnp.sqrt(v_hat) + h.eps)
                return u.astype(g.dtype), m, v

            return lowbit.update_moments(body, ct, g, m, v)

        updates, mu, nu = _leafwise(leaf, 3, updates, state.mu, state.nu)
        mu = _store_like(mu, state.mu)
        nu = _store_like(nu, state.nu)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return _state_bits_tx(init_fn, update_fn, state_bits)


def _store_like(tree: Any, like: Any) -> Any:
    """Cast a freshly computed state tree back to the stored dtypes."""
    return jax.tree.map(lowbit.store_like, tree, like, is_leaf=lowbit.is_quantized)


def _state_bits_tx(
    init_fn: Callable, update_fn: Callable, state_bits: int | None
) -> GradientTransformation:
    """The transformation, marked element-wise unless its moments are quantized.

    Block-wise quantization is not element-wise: on a flat buffer the blocks
    (and which leaves are too small to quantize) would differ from the tree's.
    """
    tx = GradientTransformation(init_fn, update_fn)
    return elementwise(tx) if state_bits in (32, 16) else tx


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or mu_dtype): first moment m
    nu: Any  # like params: second moment v
    nu_max: Any  # like params: running maximum of the (corrected) second moment


def scale_by_amsgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adam with a running maximum of the second moment (Reddi et al., 2018).

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v^{\max}_t &= \max(\hat v^{\max}_{t-1},\, v_t / (1 - \beta_2^t)) \\
        u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{\hat v^{\max}_t + \bar\epsilon}
        + \epsilon}
        \end{aligned}

    The maximum is taken over bias-corrected :math:`v_t`, as in Optax;
    ``torch.optim.Adam(amsgrad=True)`` takes it over raw :math:`v_t` and
    corrects afterwards, and the paper has no bias correction.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside the square root.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        bias_correction_mu: divide :math:`m_t` by :math:`1 - \beta_1^t`.
        bias_correction_nu: divide :math:`v_t` by :math:`1 - \beta_2^t`.
        state_bits: how :math:`m`, :math:`v` and :math:`\hat v^{\max}` are
            stored: 32, 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`; the maximum is then non-decreasing up to the
            quantization error). Not to be combined with ``mu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAmsgradState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_amsgrad()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)
    """
    _check_adam_args(b1, b2, eps, eps_root)
    checks.check_bool("bias_correction_mu", bias_correction_mu)
    checks.check_bool("bias_correction_nu", bias_correction_nu)
    mu_dtype = checks.check_float_dtype("mu_dtype", mu_dtype)
    # None (the default) is 32; not 32 itself, so that Optax's inject_hyperparams,
    # which injects every number, leaves this structural argument alone.
    state_bits = 32 if state_bits is None else state_bits
    state_bits = lowbit.check_state_bits(state_bits, mu_dtype=mu_dtype)

    def init_fn(params):
        return ScaleByAmsgradState(
            count=jnp.zeros([], jnp.int32),
            mu=lowbit.init_moment(params, state_bits, True, mu_dtype),
            nu=lowbit.init_moment(params, state_bits, False, None),
            nu_max=lowbit.init_moment(params, state_bits, False, None),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)

        hp = _Hyper(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

        def leaf(g, m, v, v_max):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            as_stored = lowbit.as_stored_fns(m, v, v_max)

            def body(g, m, v, v_max):
                g32 = g.astype(ct)
                m = as_stored[0](_moment1(g32, m, h.b1))
                v = as_stored[1](_moment2(g32, v, h.b2))
                m_hat = _debias(m, h.b1, count) if bias_correction_mu else m
                v_eff = _debias(v, h.b2, count) if bias_correction_nu else v
                v_max = as_stored[2](jnp.maximum(v_max, v_eff))
                u = m_hat / (jnp.sqrt(v_max + h.eps_root) + h.eps)
                return u.astype(g.dtype), m, v, v_max

            return lowbit.update_moments(body, ct, g, m, v, v_max)

        updates, mu, nu, nu_max = _leafwise(
            leaf, 4, updates, state.mu, state.nu, state.nu_max
        )
        return updates, ScaleByAmsgradState(
            count=count,
            mu=_store_like(mu, state.mu),
            nu=_store_like(nu, state.nu),
            nu_max=_store_like(nu_max, state.nu_max),
        )

    return _state_bits_tx(init_fn, update_fn, state_bits)


def scale_by_adamax(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adam with the infinity norm in place of the second moment (AdaMax).

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \max(\beta_2 v_{t-1},\, |g_t| + \epsilon) \\
        u_t &= \frac{m_t}{(1 - \beta_1^t)\, v_t}
        \end{aligned}

    Kingma & Ba (2014, §7.1) write :math:`\max(\beta_2 v_{t-1}, |g_t|)` and
    need no :math:`\epsilon`; here (as in Optax) :math:`\epsilon` is added to
    :math:`|g_t|` so that a zero gradient never divides by zero.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState` (``nu`` holds :math:`v_t`).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adamax()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)
    """
    _check_adam_args(b1, b2, eps, 0.0)
    # None (the default) is 32; not 32 itself, so that Optax's inject_hyperparams,
    # which injects every number, leaves this structural argument alone.
    state_bits = 32 if state_bits is None else state_bits
    state_bits = lowbit.check_state_bits(state_bits)

    def init_fn(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=lowbit.init_moment(params, state_bits, True, None),
            nu=lowbit.init_moment(params, state_bits, False, None),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)

        hp = _Hyper(b1=b1, b2=b2, eps=eps)

        def leaf(g, m, v):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            as_stored = lowbit.as_stored_fns(m, v)

            def body(g, m, v):
                g32 = g.astype(ct)
                m = as_stored[0](_moment1(g32, m, h.b1))
                v = as_stored[1](jnp.maximum(jnp.abs(g32) + h.eps, h.b2 * v))
                return (_debias(m, h.b1, count) / v).astype(g.dtype), m, v

            return lowbit.update_moments(body, ct, g, m, v)

        updates, mu, nu = _leafwise(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByAdamState(
            count=count, mu=_store_like(mu, state.mu), nu=_store_like(nu, state.nu)
        )

    return _state_bits_tx(init_fn, update_fn, state_bits)


def scale_by_radam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Rectified Adam (Liu et al., 2019).

    .. math::
        \begin{aligned}
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
        {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        u_t &= \begin{cases} r_t\, \hat m_t / (\sqrt{\hat v_t + \bar\epsilon}
        + \epsilon) & \rho_t \ge \rho_{\text{th}} \\ \hat m_t & \text{otherwise}
        \end{cases}
        \end{aligned}

    with :math:`\hat m_t, \hat v_t` as in :func:`scale_by_adam`. The paper
    switches at :math:`\rho_t > 4`; the default threshold here is 5, as in
    Optax and ``torch.optim.RAdam``.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        threshold: :math:`\rho_{\text{th}}`, the rectification threshold (> 4).
        nesterov: use Dozat's Nesterov form of :math:`\hat m_t`.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_radam()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -2.], dtype=float32)
    """
    _check_adam_args(b1, b2, eps, eps_root)
    checks.check_range("threshold", threshold, 4.0, np.inf, low_open=True)
    checks.check_bool("nesterov", nesterov)
    # None (the default) is 32; not 32 itself, so that Optax's inject_hyperparams,
    # which injects every number, leaves this structural argument alone.
    state_bits = 32 if state_bits is None else state_bits
    state_bits = lowbit.check_state_bits(state_bits)

    def init_fn(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=lowbit.init_moment(params, state_bits, True, None),
            nu=lowbit.init_moment(params, state_bits, False, None),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)
        t = _as_float(count)
        hp = _Hyper(b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold)
        b2_ = hp(t.dtype).b2
        ro_inf = 2.0 / (1.0 - b2_) - 1.0
        b2t = b2_**t
        ro = ro_inf - 2 * t * b2t / (1 - b2t)
        # Clamped so the square root is finite on the branch that jnp.where drops.
        ro_safe = jnp.maximum(ro, 4.0 + 1e-3)
        r = jnp.sqrt(
            (ro_safe - 4.0)
            * (ro_safe - 2.0)
            * ro_inf
            / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro_safe)
        )

        def leaf(g, m, v):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            as_stored = lowbit.as_stored_fns(m, v)
            rectify = ro >= hp(t.dtype).threshold

            def body(g, m, v):
                g32 = g.astype(ct)
                m = as_stored[0](_moment1(g32, m, h.b1))
                v = as_stored[1](_moment2(g32, v, h.b2))
                m_hat = _first_moment_estimate(m, g32, h.b1, count, nesterov, True)
                v_hat = _debias(v, h.b2, count)
                rectified = (
                    r.astype(ct) * m_hat / (jnp.sqrt(v_hat + h.eps_root) + h.eps)
                )
                u = jnp.where(rectify, rectified, m_hat)
                return u.astype(g.dtype), m, v

            return lowbit.update_moments(body, ct, g, m, v)

        updates, mu, nu = _leafwise(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByAdamState(
            count=count, mu=_store_like(mu, state.mu), nu=_store_like(nu, state.nu)
        )

    return _state_bits_tx(init_fn, update_fn, state_bits)


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params: first moment m
    nu: Any  # like params: second moment of the prediction error, s


def scale_by_belief(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaBelief: scale by the belief in the gradient (Zhuang et al., 2020).

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \bar\epsilon \\
        u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{s_t / (1 - \beta_2^t)} + \epsilon}
        \end{aligned}

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added to :math:`s_t` each step.
        nesterov: use Dozat's Nesterov form of :math:`\hat m_t`.
        state_bits: how :math:`m` and :math:`s` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByBeliefState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_belief()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1.1111112, -1.1111112], dtype=float32)
    """
    _check_adam_args(b1, b2, eps, eps_root)
    checks.check_bool("nesterov", nesterov)
    # None (the default) is 32; not 32 itself, so that Optax's inject_hyperparams,
    # which injects every number, leaves this structural argument alone.
    state_bits = 32 if state_bits is None else state_bits
    state_bits = lowbit.check_state_bits(state_bits)

    def init_fn(params):
        return ScaleByBeliefState(
            count=jnp.zeros([], jnp.int32),
            mu=lowbit.init_moment(params, state_bits, True, None),
            nu=lowbit.init_moment(params, state_bits, False, None),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)

        hp = _Hyper(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

        def leaf(g, m, s):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            as_stored = lowbit.as_stored_fns(m, s)

            def body(g, m, s):
                g32 = g.astype(ct)
                m = as_stored[0](_moment1(g32, m, h.b1))
                s = as_stored[1](_moment2(g32 - m, s, h.b2) + h.eps_root)
                m_hat = _first_moment_estimate(m, g32, h.b1, count, nesterov, True)
                u = m_hat / (jnp.sqrt(_debias(s, h.b2, count)) + h.eps)
                return u.astype(g.dtype), m, s

            return lowbit.update_moments(body, ct, g, m, s)

        updates, mu, nu = _leafwise(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByBeliefState(
            count=count, mu=_store_like(mu, state.mu), nu=_store_like(nu, state.nu)
        )

    return _state_bits_tx(init_fn, update_fn, state_bits)


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or mu_dtype): momentum m


def scale_by_lion(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Lion: the sign of an interpolated momentum (Chen et al., 2023).

    .. math::
        u_t = \operatorname{sign}(\beta_1 m_{t-1} + (1 - \beta_1) g_t), \qquad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, interpolation for the update.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the momentum.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByLionState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_lion()
        >>> tx.update(jnp.array([0.3, -2.0, 0.0]), tx.init(jnp.zeros(3)))[0]
        Array([ 1., -1.,  0.], dtype=float32)
    """
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    mu_dtype = checks.check_float_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        return ScaleByLionState(
            count=jnp.zeros([], jnp.int32), mu=tree_zeros_like(params, mu_dtype)
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.mu, "state.mu")

        hp = _Hyper(b1=b1, b2=b2)

        def leaf(g, m):
            ct = wider_dtype(g.dtype, m.dtype)
            h = hp(ct)
            g_, m_ = g.astype(ct), m.astype(ct)
            u = jnp.sign((1.0 - h.b1) * g_ + h.b1 * m_)
            return u.astype(g.dtype), _moment1(g_, m_, h.b2)

        updates, mu = _leafwise(leaf, 2, updates, state.mu)
        return updates, ScaleByLionState(
            count=safe_increment(state.count), mu=_store_like(mu, state.mu)
        )

    return elementwise(GradientTransformation(init_fn, update_fn))


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    nu: Any  # like params: moving average of g^2


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Scale by the root of a moving average of squared gradients (RMSProp).

    .. math::
        v_t = \rho\, v_{t-1} + (1 - \rho) g_t^2, \qquad
        u_t = \begin{cases} g_t / \sqrt{v_t + \epsilon} & \text{eps\_in\_sqrt}
        \\ g_t / (\sqrt{v_t} + \epsilon) & \text{otherwise} \end{cases}

    ``torch.optim.RMSprop`` puts :math:`\epsilon` outside the root
    (``eps_in_sqrt=False``); the default here follows Optax.

    Args:
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        initial_scale: :math:`v_0` (PyTorch uses 0, TF1 used 1).
        eps_in_sqrt: where :math:`\epsilon` goes (see above).
        bias_correction: divide :math:`v_t` by :math:`1 - \rho^t`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByRmsState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_rms(decay=0.75, eps=0.0)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([2.], dtype=float32)
    """
    checks.check_decay("decay", decay)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("initial_scale", initial_scale)
    checks.check_bool("eps_in_sqrt", eps_in_sqrt)
    checks.check_bool("bias_correction", bias_correction)

    def init_fn(params):
        return ScaleByRmsState(
            count=jnp.zeros([], jnp.int32),
            nu=jax.tree.map(lambda p: jnp.full_like(p, initial_scale), params),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.nu, "state.nu")
        count = safe_increment(state.count)

        hp = _Hyper(decay=decay, eps=eps)

        def leaf(g, v):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            g32 = g.astype(ct)
            (as_stored,) = lowbit.as_stored_fns(v)
            v = as_stored(_moment2(g32, v.astype(ct), h.decay))
            v_hat = _debias(v, h.decay, count) if bias_correction else v
            if eps_in_sqrt:
                u = jax.lax.rsqrt(v_hat + h.eps) * g32
            else:
                u = 1 / (jnp.sqrt(v_hat) + h.eps) * g32
            return u.astype(g.dtype), v

        updates, nu = _leafwise(leaf, 2, updates, state.nu)
        return updates, ScaleByRmsState(count=count, nu=_store_like(nu, state.nu))

    return elementwise(GradientTransformation(init_fn, update_fn))


class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_stddev`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params: moving average of g
    nu: Any  # like params: moving average of g^2


def scale_by_stddev(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Scale by a moving estimate of the gradients' standard deviation.

    The centred RMSProp of Graves (2013):

    .. math::
        m_t = \rho m_{t-1} + (1 - \rho) g_t, \quad
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \quad
        u_t = g_t / \sqrt{v_t - m_t^2 + \epsilon}

    Args:
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        initial_scale: :math:`v_0`.
        eps_in_sqrt: put :math:`\epsilon` inside the root (else outside).
        bias_correction: divide :math:`m_t, v_t` by :math:`1 - \rho^t`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByStddevState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_stddev(decay=0.75, eps=0.0)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([2.309401], dtype=float32)
    """
    checks.check_decay("decay", decay)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("initial_scale", initial_scale)
    checks.check_bool("eps_in_sqrt", eps_in_sqrt)
    checks.check_bool("bias_correction", bias_correction)

    def init_fn(params):
        return ScaleByStddevState(
            count=jnp.zeros([], jnp.int32),
            mu=tree_zeros_like(params),
            nu=jax.tree.map(lambda p: jnp.full_like(p, initial_scale), params),
        )

    def update_fn(updates, state, params=None):
        del params
        _check_state_tree(updates, state.nu, "state.nu")
        count = safe_increment(state.count)

        hp = _Hyper(decay=decay, eps=eps)

        def leaf(g, m, v):
            ct = _compute_dtype(g.dtype)
            h = hp(ct)
            as_stored = lowbit.as_stored_fns(m, v)
            g32 = g.astype(ct)
            m = as_stored[0](_moment1(g32, m.astype(ct), h.decay))
            v = as_stored[1](_moment2(g32, v.astype(ct), h.decay))
            m_hat = _debias(m, h.decay, count) if bias_correction else m
            v_hat = _debias(v, h.decay, count) if bias_correction else v
            var = v_hat - m_hat**2
            if eps_in_sqrt:
                u = jax.lax.rsqrt(var + h.eps) * g32
            else:
                u = 1 / (jnp.sqrt(var) + h.eps) * g32
            return u.astype(g.dtype), m, v

        updates, mu, nu = _leafwise(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByStddevState(
            count=count, mu=_store_like(mu, state.mu), nu=_store_like(nu, state.nu)
        )

    return elementwise(GradientTransformation(init_fn, update_fn))


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
    """
    checks.check_nonnegative("min_norm", min_norm)
    checks.check_nonnegative("trust_coefficient", trust_coefficient)
    checks.check_nonnegative("eps", eps)

    def update_fn(updates, state, params=None):
        require_params("scale_by_trust_ratio", params)
        _check_state_tree(updates, params, "params")

        def leaf(u, p):
            p_norm = _safe_norm(p, min_norm)
            u_norm = _safe_norm(u, min_norm)
            ratio = trust_coefficient * p_norm / (u_norm + eps)
            zero = jnp.logical_or(p_norm == 0.0, u_norm == 0.0)
            return (u * jnp.where(zero, jnp.array(1.0, dtype=p.dtype), ratio),)

        (updates,) = _leafwise(leaf, 1, updates, params)
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)


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
    """
    checks.check_nonnegative("min_scale", min_scale)

    def update_fn(updates, state, params=None):
        require_params("scale_by_param_block_rms", params)
        _check_state_tree(updates, params, "params")
        updates = jax.tree.map(
            lambda u, p: u * _safe_rms(p, min_scale), updates, params
        )
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)


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
            one = jnp.zeros((1,), dtype=p.dtype)
            if dims is None:
                return one, one, jnp.zeros_like(p)
            d1, d0 = dims
            row = jnp.zeros(tuple(np.delete(p.shape, d0)), dtype=p.dtype)
            col = jnp.zeros(tuple(np.delete(p.shape, d1)), dtype=p.dtype)
            return row, col, one

        v_row, v_col, v = _leafwise(leaf, 3, params)
        return FactoredState(
            count=jnp.zeros([], jnp.int32), v_row=v_row, v_col=v_col, v=v
        )

    def update_fn(updates, state, params=None):
        require_params("scale_by_factored_rms", params)
        # Factored leaves keep (1,)-shaped placeholders in v: structure only.
        _check_state_tree(updates, state.v, "state.v", shapes=False)
        beta = decay_rate_fn(state.count - step_offset, decay_rate)

        def leaf(g, row, col, v, p):
            dims = _factored_dims(p.shape, factored, min_dim_size_to_factor)
            ct = _compute_dtype(g.dtype)
            b = jnp.asarray(beta).astype(ct)
            g32 = g.astype(ct)
            g_sq = jnp.square(g32) + epsilon
            one = jnp.zeros((1,), dtype=p.dtype)
            if dims is None:
                new_v = b * v.astype(ct) + (1.0 - b) * g_sq
                u = g32 * new_v ** (-0.5)
                return u.astype(g.dtype), one, one, new_v.astype(v.dtype)
            d1, d0 = dims
            new_row = b * row.astype(ct) + (1.0 - b) * jnp.mean(g_sq, axis=d0)
            new_col = b * col.astype(ct) + (1.0 - b) * jnp.mean(g_sq, axis=d1)
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

        updates, v_row, v_col, v = _leafwise(
            leaf, 4, updates, state.v_row, state.v_col, state.v, params
        )
        return updates, FactoredState(
            count=safe_increment(state.count), v_row=v_row, v_col=v_col, v=v
        )

    return GradientTransformation(init_fn, update_fn)


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
        _check_state_tree(updates, params, "params")
        if is_schedule:
            wd = weight_decay(state.count)
            new_state = AddDecayedWeightsState(count=safe_increment(state.count))
        else:
            wd, new_state = weight_decay, state
            if isinstance(wd, (int, float)) and wd == 0.0:
                return updates, state

        def leaf(g, p):
            ct = wider_dtype(g.dtype, p.dtype)
            rate = jnp.asarray(wd).astype(ct) if is_schedule else wd
            return (g.astype(ct) + rate * p.astype(ct)).astype(g.dtype)

        return jax.tree.map(leaf, updates, params), new_state

    tx = elementwise(GradientTransformation(init_fn, update_fn))
    return tx if mask is None else masked(tx, mask)


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

    return elementwise(GradientTransformation(init_empty_state, update_fn))


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

    return elementwise(GradientTransformation(init_empty_state, update_fn))


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
    """
    checks.check_range("threshold", threshold, 0.0, np.inf, low_open=True)

    def update_fn(updates, state, params=None):
        del params

        def leaf(u):
            return u / jnp.maximum(1.0, jnp.sqrt(jnp.mean(jnp.square(u))) / threshold)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn)
