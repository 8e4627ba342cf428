r"""Schedules: functions of the step count that give a hyperparameter's value.

A schedule is a callable ``step -> value``. Transformations that take a
``ScalarOrSchedule`` (a learning rate, a weight decay, ...) accept one, and so
does Optax. This module holds the schedules of one curve each: constant,
polynomial and linear, piecewise constant or interpolated, exponential and
cosine decay. Schedules made of phases joined one after another (a warm-up
then a decay, one-cycle, warm restarts, ``join_schedules``) are in
``adamx.joined_schedules``, and follow the conventions below too. Each
factory has the name, argument names, argument order and defaults of the
Optax function it mirrors, and gives the same values.

Every schedule runs on a Python ``int`` and on a traced integer array under
``jax.jit`` or ``jax.vmap``: the step is only handled with ``jnp`` operations,
never with Python branches on its value. Differences of steps and clipping are
done on integers, so boundaries stay exact past :math:`2^{24}` steps and Python
ints past the int32 range work. Only then is the step cast, explicitly, to
JAX's default float dtype, so the schedules also run under
``jax_numpy_dtype_promotion='strict'``. Given a Python step and Python-number
arguments, the value is weakly typed and does not promote a bf16 update; given
an integer array, it has the default float dtype (float64 under x64, where
Optax returns float32 from some schedules for an int32 step).

Arguments are checked when the schedule is built. Where Optax quietly turns an
argument that makes no sense into some other schedule (a negative length, a
zero decay rate, a warm-up of 0 steps that never reaches the peak), the factory
raises instead; the lengths Optax documents as possibly 0 (``transition_steps``
of :func:`polynomial_schedule`, ``warmup_steps`` of
:func:`~adamx.warmup_cosine_decay_schedule`) keep their meaning. Values that are
traced arrays are let through unchecked. The values a schedule returns (its
``value``, ``init_value``, ``peak_value``, ``end_value``) must be >= 0, as the
learning rates, weight decays and momenta that schedules drive are; a schedule
of something that may be negative says so with ``signed=True`` (Optax's
factories have no such argument and check nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import Schedule, is_concrete
from adamx.checks import (
    check_bool,
    check_finite,
    check_nonnegative,
    check_positive_int,
    check_range,
)

__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
]

Numeric = jax.typing.ArrayLike


# ---------------------------------------------------------------------------
# Step arithmetic shared by the schedules.


def _is_static_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_)
    )


def _elapsed(count: Any, start: int, length: int | None = None) -> Any:
    """Steps since ``start``, clipped to ``[0, length]``, in the step's own type.

    Python numbers stay Python numbers so that steps beyond the int32 range
    still work when x64 is off; integer arrays stay integer so that the
    subtraction is exact.
    """
    if _is_static_number(count):
        count = count.item() if isinstance(count, np.generic) else count
        steps = max(count - start, 0)
        return steps if length is None else min(steps, length)
    steps = jnp.maximum(jnp.asarray(count) - start, 0)
    if length is None:
        return steps
    if isinstance(length, int) and jnp.issubdtype(steps.dtype, jnp.integer):
        if length > jnp.iinfo(steps.dtype).max:
            # A length past the step's integer range (decay_steps=int(1e10)
            # with int32 steps): the steps never reach it, and the caller's
            # length - steps is only representable as a float.
            return _to_float(steps)
    return jnp.minimum(steps, length)


def _to_float(x: Any) -> Any:
    """A step count as a float: a Python float, or an array of the default dtype.

    An explicit cast, rather than letting ``int32 * float`` promote, keeps the
    schedules usable under ``jax_numpy_dtype_promotion='strict'``.
    """
    if _is_static_number(x):
        return float(x)
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _half_cosine(frac: Any) -> Any:
    r""":math:`(1 + \cos \pi x) / 2`, falling from 1 at ``x=0`` to 0 at ``x=1``."""
    return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def _cosine_weight(left: Any, length: int) -> Any:
    r"""The cosine factor :math:`(1 + \cos(\pi (1 - \ell / L))) / 2` of a decay.

    ``left`` = :math:`\ell` is the number of steps still to go, an integer, and
    ``length`` = :math:`L` the decay's length. The factor is computed as
    :math:`\sin^2(\pi \ell / 2L)`, which is exactly 0 at the end and keeps
    full relative precision near it, where ``1 + cos`` cancels; that matters
    once it is raised to an exponent below 1.
    """
    return jnp.sin((0.5 * jnp.pi / length) * _to_float(left)) ** 2


def _linear_interpolate(start: Any, end: Any, frac: Any) -> Any:
    return start + (end - start) * frac


def _cosine_interpolate(start: Any, end: Any, frac: Any) -> Any:
    return end + (start - end) * _half_cosine(frac)


def _concrete_float(x: Any) -> float | None:
    """``float(x)`` for a concrete scalar, ``None`` for a traced one."""
    return float(x) if is_concrete(x) else None


def _check_value(name: str, value: Any, signed: bool) -> None:
    """A value a schedule returns: finite, and >= 0 unless ``signed``."""
    check_bool("signed", signed)
    check_finite(name, value)
    f = _concrete_float(value)
    if not signed and f is not None and f < 0:
        raise ValueError(
            f"{name} must be >= 0, got {value!r}: a learning rate, weight decay or "
            "momentum is never negative (pass signed=True for a schedule of "
            "something that may be)"
        )


def _check_boundaries_and_scales(
    name: str, boundaries_and_scales: Mapping[int, float] | None
) -> tuple[list[int], list[Any]]:
    """Sorted boundaries and their scales; refuses negative steps and scales."""
    if boundaries_and_scales is None:
        return [], []
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"{name} must be a dict {{step: scale}} or None, "
            f"got {boundaries_and_scales!r} of type "
            f"{type(boundaries_and_scales).__name__}"
        )
    for boundary, scale in boundaries_and_scales.items():
        check_positive_int(f"{name} key", boundary, allow_zero=True)
        check_nonnegative(f"{name}[{boundary!r}]", scale)
    items = sorted((int(b), s) for b, s in boundaries_and_scales.items())
    return [b for b, _ in items], [s for _, s in items]


def _check_exponential_decay(
    start_name: str,
    start: Any,
    transition_steps: Any,
    decay_rate: Any,
    transition_begin: Any,
    staircase: Any,
    end_value: Any,
    signed: bool,
) -> None:
    """The arguments of an exponential decay from ``start`` (named ``start_name``).

    An ``end_value`` on the wrong side of the start would replace the value
    from the decay's first step: it must be below it for a decay, above it for
    a growth.
    """
    check_positive_int("transition_steps", transition_steps)
    check_range("decay_rate", decay_rate, 0.0, math.inf, low_open=True, high_open=True)
    check_positive_int("transition_begin", transition_begin, allow_zero=True)
    check_bool("staircase", staircase)
    if end_value is None:
        return
    _check_value("end_value", end_value, signed)
    start_f, end_f = _concrete_float(start), _concrete_float(end_value)
    rate_f = _concrete_float(decay_rate)
    if start_f is None or end_f is None or rate_f is None:
        return
    if rate_f < 1.0 and end_f > start_f:
        raise ValueError(
            f"end_value must be <= {start_name}={start!r} when decay_rate < 1 "
            f"(it is a floor), got {end_value!r}"
        )
    if rate_f >= 1.0 and end_f < start_f:
        raise ValueError(
            f"end_value must be >= {start_name}={start!r} when decay_rate >= 1 "
            f"(it is a ceiling), got {end_value!r}"
        )


# ---------------------------------------------------------------------------
# Schedules.


def constant_schedule(value: Numeric, *, signed: bool = False) -> Schedule:
    r"""A schedule that returns the same value at every step.

    .. math:: v_t = v

    Args:
        value: the value :math:`v`, a finite real number.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``; ``value`` is returned as given.

    Example:
        >>> from adamx.schedules import constant_schedule
        >>> s = constant_schedule(0.1)
        >>> s(0), s(10_000)
        (0.1, 0.1)
    """
    _check_value("value", value, signed)

    def schedule(count: Numeric) -> Numeric:
        del count
        return value

    return schedule


def polynomial_schedule(
    init_value: Numeric,
    end_value: Numeric,
    power: Numeric,
    transition_steps: int,
    transition_begin: int = 0,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Move from ``init_value`` to ``end_value`` along a polynomial of the step.

    .. math::

        v_t = E + (I - E)\left(1 - \frac{\tau_t}{T}\right)^{p},
        \qquad \tau_t = \min(\max(t - B, 0), T)

    with :math:`I` = ``init_value``, :math:`E` = ``end_value``, :math:`p` =
    ``power``, :math:`T` = ``transition_steps`` and :math:`B` =
    ``transition_begin``. The value is :math:`I` up to step :math:`B` and
    :math:`E` from step :math:`B + T` on. As in Optax, ``transition_steps=0``
    gives the constant :math:`I`; a negative ``transition_steps`` or
    ``transition_begin``, which Optax reads as 0, is refused.

    Args:
        init_value: the value :math:`I` before and at the start of the transition.
        end_value: the value :math:`E` at and after its end.
        power: the exponent :math:`p`, a number >= 0.
        transition_steps: the length :math:`T` of the transition, an int >= 0.
        transition_begin: the step :math:`B` where the transition starts, an
            int >= 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.schedules import polynomial_schedule
        >>> s = polynomial_schedule(1.0, 0.0, power=2, transition_steps=4)
        >>> [float(s(t)) for t in range(6)]
        [1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]
    """
    _check_value("init_value", init_value, signed)
    _check_value("end_value", end_value, signed)
    check_nonnegative("power", power)
    check_positive_int("transition_steps", transition_steps, allow_zero=True)
    check_positive_int("transition_begin", transition_begin, allow_zero=True)

    if transition_steps == 0:

        def constant(count: Numeric) -> jax.Array:
            del count
            return jnp.asarray(init_value)

        return constant

    def schedule(count: Numeric) -> jax.Array:
        # The steps left are counted in integers so that the base is exactly 0
        # at the end; 1 - tau / T can round to 2**-54 under jit, and a power
        # below 1 would magnify that.
        left = transition_steps - _elapsed(count, transition_begin, transition_steps)
        frac = _to_float(left) / transition_steps
        return jnp.asarray(_linear_interpolate(end_value, init_value, frac**power))

    return schedule


def linear_schedule(
    init_value: Numeric,
    end_value: Numeric,
    transition_steps: int,
    transition_begin: int = 0,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Move from ``init_value`` to ``end_value`` along a straight line.

    .. math::

        v_t = I + (E - I)\,\frac{\tau_t}{T},
        \qquad \tau_t = \min(\max(t - B, 0), T)

    with :math:`I` = ``init_value``, :math:`E` = ``end_value``, :math:`T` =
    ``transition_steps`` and :math:`B` = ``transition_begin``: the
    :func:`polynomial_schedule` with ``power=1``. As in Optax,
    ``transition_steps=0`` gives the constant :math:`I`; negative lengths are
    refused.

    Args:
        init_value: the value :math:`I` before and at the start of the transition.
        end_value: the value :math:`E` at and after its end.
        transition_steps: the length :math:`T` of the transition, an int >= 0.
        transition_begin: the step :math:`B` where the transition starts, an
            int >= 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.schedules import linear_schedule
        >>> s = linear_schedule(1.0, 0.0, transition_steps=4, transition_begin=1)
        >>> [float(s(t)) for t in range(7)]
        [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    return polynomial_schedule(
        init_value=init_value,
        end_value=end_value,
        power=1,
        transition_steps=transition_steps,
        transition_begin=transition_begin,
        signed=signed,
    )


def piecewise_constant_schedule(
    init_value: Numeric,
    boundaries_and_scales: Mapping[int, float] | None = None,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Start at ``init_value`` and multiply by a factor at each given step.

    .. math:: v_t = I \prod_{i \,:\, t \ge b_i} s_i

    with :math:`I` = ``init_value`` and ``boundaries_and_scales`` =
    :math:`\{b_i: s_i\}`.

    Args:
        init_value: the value :math:`I` before the first boundary.
        boundaries_and_scales: a dict from step :math:`b_i` (an int >= 0) to
            factor :math:`s_i` (a number >= 0), or ``None`` for no jumps.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.schedules import piecewise_constant_schedule
        >>> s = piecewise_constant_schedule(1.0, {2: 0.5, 4: 0.5})
        >>> [float(s(t)) for t in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    _check_value("init_value", init_value, signed)
    boundaries, scales = _check_boundaries_and_scales(
        "boundaries_and_scales", boundaries_and_scales
    )

    def schedule(count: Any) -> jax.Array:
        value = init_value
        for boundary, scale in zip(boundaries, scales, strict=True):
            value = value * jnp.where(count >= boundary, scale, 1.0)
        return jnp.asarray(value)

    return schedule


def exponential_decay(
    init_value: Numeric,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: Numeric | None = None,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Multiply ``init_value`` by ``decay_rate`` every ``transition_steps`` steps.

    .. math::

        v_t = \operatorname{clip}_E\!\left(I\, r^{\,p_t}\right), \qquad
        p_t = \frac{\max(t - B, 0)}{T}
        \quad\left(\text{or } \left\lfloor \frac{\max(t - B, 0)}{T}
        \right\rfloor \text{ with } \texttt{staircase}\right)

    with :math:`I` = ``init_value``, :math:`r` = ``decay_rate``, :math:`T` =
    ``transition_steps`` and :math:`B` = ``transition_begin``. With an
    ``end_value`` :math:`E`, :math:`\operatorname{clip}_E` is
    :math:`\max(\cdot, E)` when :math:`r < 1` (a floor) and
    :math:`\min(\cdot, E)` when :math:`r \ge 1` (a ceiling); without one it
    does nothing.

    Unlike Optax, which turns a zero ``transition_steps`` or ``decay_rate`` into
    a constant schedule, these are refused, as is an ``end_value`` on the wrong
    side of ``init_value`` (which would replace the value from step 0).

    Args:
        init_value: the value :math:`I` up to step :math:`B`.
        transition_steps: the steps :math:`T` per factor of :math:`r`, an int > 0.
        decay_rate: the factor :math:`r`, a number > 0.
        transition_begin: the step :math:`B` where the decay starts, an int >= 0.
        staircase: if ``True``, the exponent is rounded down, so the value
            drops in steps every :math:`T` steps.
        end_value: the bound :math:`E`, or ``None`` for no bound.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.schedules import exponential_decay
        >>> s = exponential_decay(1.0, transition_steps=2, decay_rate=0.5)
        >>> [float(s(t)) for t in (0, 2, 4)]
        [1.0, 0.5, 0.25]
        >>> s = exponential_decay(1.0, 2, 0.5, staircase=True, end_value=0.3)
        >>> [float(s(t)) for t in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.3, 0.3]
    """
    _check_value("init_value", init_value, signed)
    _check_exponential_decay(
        "init_value",
        init_value,
        transition_steps,
        decay_rate,
        transition_begin,
        staircase,
        end_value,
        signed,
    )
    rate_f = _concrete_float(decay_rate)

    def schedule(count: Numeric) -> jax.Array:
        steps = _elapsed(count, transition_begin)
        if staircase:
            exponent = _to_float(steps // transition_steps)
        else:
            exponent = _to_float(steps) / transition_steps
        value = init_value * jnp.power(decay_rate, exponent)
        if end_value is None:
            return jnp.asarray(value)
        if rate_f is None:
            is_floor = jnp.asarray(decay_rate) < 1.0
            return jnp.where(
                is_floor, jnp.maximum(value, end_value), jnp.minimum(value, end_value)
            )
        clip = jnp.maximum if rate_f < 1.0 else jnp.minimum
        return clip(value, end_value)

    return schedule


def cosine_decay_schedule(
    init_value: Numeric,
    decay_steps: int,
    alpha: Numeric = 0.0,
    exponent: Numeric = 1.0,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Decay ``init_value`` along half a cosine, to ``alpha * init_value``.

    .. math::

        v_t = I\left(\alpha + (1 - \alpha)
        \left[\tfrac{1}{2}\left(1 + \cos\frac{\pi \min(t, T)}{T}\right)
        \right]^{p}\right)

    with :math:`I` = ``init_value``, :math:`T` = ``decay_steps``,
    :math:`\alpha` = ``alpha`` and :math:`p` = ``exponent``; the value stays at
    :math:`\alpha I` after step :math:`T`.

    Args:
        init_value: the value :math:`I` at step 0.
        decay_steps: the length :math:`T` of the decay, an int > 0.
        alpha: the final value as a fraction of :math:`I`, in ``[0, 1]``.
        exponent: the power :math:`p` of the cosine factor, a number >= 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    References:
        Loshchilov and Hutter, `SGDR: Stochastic Gradient Descent with Warm
        Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.

    Example:
        >>> from adamx.schedules import cosine_decay_schedule
        >>> s = cosine_decay_schedule(1.0, decay_steps=4, alpha=0.5)
        >>> [round(float(s(t)), 4) for t in range(6)]
        [1.0, 0.9268, 0.75, 0.5732, 0.5, 0.5]
    """
    _check_value("init_value", init_value, signed)
    check_positive_int("decay_steps", decay_steps)
    check_range("alpha", alpha, 0.0, 1.0)
    check_nonnegative("exponent", exponent)

    def schedule(count: Numeric) -> jax.Array:
        elapsed = _elapsed(count, 0, decay_steps)
        if isinstance(elapsed, jax.Array) and jnp.issubdtype(
            elapsed.dtype, jnp.floating
        ):
            left = float(decay_steps) - elapsed  # past the integer range
        else:
            left = decay_steps - elapsed
        weight = _cosine_weight(left, decay_steps)
        return init_value * (alpha + (1.0 - alpha) * weight**exponent)

    return schedule


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: Numeric,
    boundaries_and_scales: Mapping[int, float] | None = None,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Move between scaled values, linearly or along a cosine, between boundaries.

    With ``boundaries_and_scales`` = :math:`\{b_k: s_k\}` sorted by step,
    :math:`b_0 = 0`, :math:`v_0 = I` (``init_value``) and
    :math:`v_k = I \prod_{i \le k} s_i`:

    .. math::

        v_t = f\!\left(v_k,\, v_{k+1},\, \frac{t - b_k}{b_{k+1} - b_k}\right)
        \quad \text{for } b_k \le t < b_{k+1},
        \qquad v_t = v_K \quad \text{for } t \ge b_K

    where :math:`f(a, b, x) = a + (b - a)x` for ``'linear'`` and
    :math:`f(a, b, x) = b + (a - b)\,\tfrac{1}{2}(1 + \cos \pi x)` for
    ``'cosine'``. The scales multiply up: the value reached at :math:`b_k` is
    the product of all scales so far, not :math:`s_k` alone.

    Args:
        interpolate_type: ``'linear'`` or ``'cosine'``.
        init_value: the value :math:`I` at step 0.
        boundaries_and_scales: a dict from step :math:`b_k` (an int >= 0) to
            factor :math:`s_k` (a number >= 0), or ``None`` for the constant
            :math:`I`.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.schedules import piecewise_interpolate_schedule
        >>> s = piecewise_interpolate_schedule("linear", 1.0, {2: 0.5, 6: 0.5})
        >>> [float(s(t)) for t in range(8)]
        [1.0, 0.75, 0.5, 0.4375, 0.375, 0.3125, 0.25, 0.25]
    """
    interpolators: dict[str, Callable[[Any, Any, Any], Any]] = {
        "linear": _linear_interpolate,
        "cosine": _cosine_interpolate,
    }
    if not isinstance(interpolate_type, str) or interpolate_type not in interpolators:
        raise ValueError(
            f"interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}"
        )
    interpolate = interpolators[interpolate_type]
    _check_value("init_value", init_value, signed)
    boundaries, scales = _check_boundaries_and_scales(
        "boundaries_and_scales", boundaries_and_scales
    )
    starts = [0, *boundaries[:-1]]
    values = [init_value]
    for scale in scales:
        values.append(values[-1] * scale)

    def schedule(count: Any) -> jax.Array:
        value = values[-1]
        # Built from the last segment backwards so that the first matching
        # ``count < end`` wins; a segment of length 0 (a boundary at step 0)
        # is never selected.
        for k in reversed(range(len(boundaries))):
            start, end = starts[k], boundaries[k]
            length = max(end - start, 1)
            frac = _to_float(_elapsed(count, start, length)) / length
            segment = interpolate(values[k], values[k + 1], frac)
            value = jnp.where(count < end, segment, value)
        return jnp.asarray(value)

    return schedule
