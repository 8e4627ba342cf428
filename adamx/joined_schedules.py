r"""Schedules made of phases: a warm-up and a decay, cycles, restarts, joins.

Each schedule here runs one curve of ``adamx.schedules`` after another: a
linear warm-up then a constant, cosine or exponential decay; the one-cycle
schedules, up then down; cosine cycles with warm restarts; and
:func:`join_schedules`, which strings any schedules together, each counting
steps from its own start. They follow the conventions of
``adamx.schedules``: the step is handled with ``jnp`` operations only (they
run under ``jax.jit`` and ``jax.vmap`` with a traced step), arguments are
checked when the schedule is built, and values must be >= 0 unless
``signed=True``. Each factory has the name, argument names, argument order and
defaults of the Optax function it mirrors, and gives the same values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp

from adamx.base import Schedule
from adamx.checks import check_nonnegative, check_positive_int, check_range
from adamx.schedules import (
    Numeric,
    _check_exponential_decay,
    _check_value,
    _concrete_float,
    _cosine_weight,
    _elapsed,
    _linear_interpolate,
    _to_float,
    exponential_decay,
    linear_schedule,
    piecewise_interpolate_schedule,
)

__all__ = [
    "cosine_onecycle_schedule",
    "join_schedules",
    "linear_onecycle_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]


def warmup_constant_schedule(
    init_value: Numeric,
    peak_value: Numeric,
    warmup_steps: int,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Rise linearly from ``init_value`` to ``peak_value``, then hold it.

    .. math:: v_t = I + (P - I)\,\frac{\min(t, W)}{W}

    with :math:`I` = ``init_value``, :math:`P` = ``peak_value`` and :math:`W`
    = ``warmup_steps``. Optax turns ``warmup_steps=0`` into the constant
    :math:`I`, never reaching :math:`P`; here it is refused (use
    :func:`constant_schedule` for no warm-up).

    Args:
        init_value: the value :math:`I` at step 0.
        peak_value: the value :math:`P` from step :math:`W` on.
        warmup_steps: the length :math:`W` of the warm-up, an int > 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.joined_schedules import warmup_constant_schedule
        >>> s = warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
        >>> [float(s(t)) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    _check_value("init_value", init_value, signed)
    _check_value("peak_value", peak_value, signed)
    check_positive_int("warmup_steps", warmup_steps)
    return linear_schedule(
        init_value=init_value,
        end_value=peak_value,
        transition_steps=warmup_steps,
        signed=signed,
    )


def warmup_cosine_decay_schedule(
    init_value: Numeric,
    peak_value: Numeric,
    warmup_steps: int,
    decay_steps: int,
    end_value: Numeric = 0.0,
    exponent: Numeric = 1.0,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Rise linearly to ``peak_value``, then fall along half a cosine.

    .. math::

        v_t = \begin{cases}
            I + (P - I)\,\dfrac{t}{W} & t < W \\[1ex]
            E + (P - E)\left[\tfrac{1}{2}\left(1 + \cos
            \dfrac{\pi \min(t - W,\, D - W)}{D - W}\right)\right]^{p} & t \ge W
        \end{cases}

    with :math:`I` = ``init_value``, :math:`P` = ``peak_value``, :math:`W` =
    ``warmup_steps``, :math:`D` = ``decay_steps`` (the whole length, warm-up
    included), :math:`E` = ``end_value`` and :math:`p` = ``exponent``.

    Args:
        init_value: the value :math:`I` at step 0.
        peak_value: the value :math:`P` at step :math:`W`.
        warmup_steps: the length :math:`W` of the warm-up, an int >= 0; 0 starts
            the decay at step 0.
        decay_steps: the step :math:`D` where the decay ends, warm-up included;
            an int > ``warmup_steps``.
        end_value: the value :math:`E` from step :math:`D` on. It must be 0 when
            ``peak_value`` is 0, where Optax would ignore it.
        exponent: the power :math:`p` of the cosine factor, a number >= 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.joined_schedules import warmup_cosine_decay_schedule
        >>> s = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=6)
        >>> [round(float(s(t)), 4) for t in range(8)]
        [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """
    _check_value("init_value", init_value, signed)
    _check_value("peak_value", peak_value, signed)
    check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
    check_positive_int("decay_steps", decay_steps)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"decay_steps must be > warmup_steps={warmup_steps!r} (it counts the "
            f"warm-up), got {decay_steps!r}"
        )
    _check_value("end_value", end_value, signed)
    check_nonnegative("exponent", exponent)
    end_f = _concrete_float(end_value)
    if _concrete_float(peak_value) == 0.0 and end_f is not None and end_f != 0.0:
        # Optax scales the decay by peak_value, so it would ignore end_value.
        raise ValueError(f"end_value must be 0 when peak_value is 0, got {end_value!r}")
    cosine_steps = decay_steps - warmup_steps

    def schedule(count: Any) -> jax.Array:
        left = cosine_steps - _elapsed(count, warmup_steps, cosine_steps)
        weight = _cosine_weight(left, cosine_steps)
        decayed = _linear_interpolate(end_value, peak_value, weight**exponent)
        if warmup_steps == 0:
            return jnp.asarray(decayed)
        warm_frac = _to_float(_elapsed(count, 0, warmup_steps)) / warmup_steps
        warm = _linear_interpolate(init_value, peak_value, warm_frac)
        return jnp.where(count < warmup_steps, warm, decayed)

    return schedule


def warmup_exponential_decay_schedule(
    init_value: Numeric,
    peak_value: Numeric,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: Numeric,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: Numeric | None = None,
    *,
    signed: bool = False,
) -> Schedule:
    r"""Rise linearly to ``peak_value``, then decay it exponentially.

    .. math::

        v_t = \begin{cases}
            I + (P - I)\,\dfrac{t}{W} & t < W \\[1ex]
            \operatorname{clip}_E\!\left(P\, r^{\,p_t}\right),\quad
            p_t = \dfrac{\max(t - W - B,\, 0)}{T} & t \ge W
        \end{cases}

    with :math:`I` = ``init_value``, :math:`P` = ``peak_value``, :math:`W` =
    ``warmup_steps``, :math:`T` = ``transition_steps``, :math:`r` =
    ``decay_rate`` and :math:`B` = ``transition_begin``, counted from the end
    of the warm-up (the value holds at :math:`P` for :math:`B` steps); with
    ``staircase`` the exponent :math:`p_t` is rounded down. The decay is
    :func:`~adamx.exponential_decay` from :math:`P`, joined after a
    :func:`~adamx.linear_schedule` warm-up by :func:`join_schedules`, as in
    Optax, and :math:`\operatorname{clip}_E` bounds it by ``end_value`` as
    there: from below when :math:`r < 1`, from above when :math:`r \ge 1`.

    ``warmup_steps=0`` starts the decay at step 0 (:math:`I` is then never
    used). Where Optax turns a ``transition_steps`` of 0 or a ``decay_rate``
    of 0 into the constant :math:`P` and reads a negative
    ``transition_begin`` as 0, these are refused, as by
    :func:`~adamx.exponential_decay`.

    Args:
        init_value: the value :math:`I` at step 0.
        peak_value: the value :math:`P` at the end of the warm-up, where the
            decay starts.
        warmup_steps: the length :math:`W` of the warm-up, an int >= 0.
        transition_steps: the steps :math:`T` per factor of :math:`r`, an
            int > 0.
        decay_rate: the factor :math:`r`, a number > 0.
        transition_begin: the steps :math:`B` the value holds at :math:`P`
            after the warm-up before it decays, an int >= 0.
        staircase: if ``True``, the value drops in steps every :math:`T`
            steps.
        end_value: the bound :math:`E`, or ``None`` for no bound.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.joined_schedules import warmup_exponential_decay_schedule
        >>> s = warmup_exponential_decay_schedule(
        ...     0.0, 1.0, warmup_steps=2, transition_steps=1, decay_rate=0.5,
        ...     end_value=0.2)
        >>> [float(s(t)) for t in range(7)]
        [0.0, 0.5, 1.0, 0.5, 0.25, 0.2, 0.2]
    """
    _check_value("init_value", init_value, signed)
    _check_value("peak_value", peak_value, signed)
    check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
    # Checked here so that messages name peak_value, the decay's start.
    _check_exponential_decay(
        "peak_value",
        peak_value,
        transition_steps,
        decay_rate,
        transition_begin,
        staircase,
        end_value,
        signed,
    )
    decay = exponential_decay(
        init_value=peak_value,
        transition_steps=transition_steps,
        # A number, or a traced one: exponential_decay takes both.
        decay_rate=cast(float, decay_rate),
        transition_begin=transition_begin,
        staircase=staircase,
        end_value=end_value,
        signed=signed,
    )
    if warmup_steps == 0:
        return decay
    warmup = linear_schedule(
        init_value=init_value,
        end_value=peak_value,
        transition_steps=warmup_steps,
        signed=signed,
    )
    return join_schedules([warmup, decay], [warmup_steps])


def _check_pct(name: str, value: Any, low: float, low_name: str) -> None:
    """A fraction of the cycle strictly between ``low`` and 1."""
    f = _concrete_float(value)
    check_range(name, value, 0.0, 1.0, low_open=True, high_open=True)
    if f is None:
        raise TypeError(f"{name} must be a concrete number, got {value!r}")
    if f <= low:
        raise ValueError(f"{name} must be in ({low_name}={low!r}, 1), got {value!r}")


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: Numeric,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    *,
    signed: bool = False,
) -> Schedule:
    r"""The one-cycle schedule with straight lines: up, down, then further down.

    With :math:`P` = ``peak_value``, :math:`I = P / d` (``div_factor``),
    :math:`T` = ``transition_steps``, :math:`b_1 = \lfloor`
    ``pct_start`` :math:`\cdot T \rfloor` and :math:`b_2 = \lfloor`
    ``pct_final`` :math:`\cdot T \rfloor`, the value moves linearly through

    .. math::

        (0, I) \to (b_1, P) \to (b_2, I) \to (T, I / d_f)

    and stays at :math:`I / d_f` (``final_div_factor``) after step :math:`T`.
    It is :func:`piecewise_interpolate_schedule` with ``'linear'``.

    Args:
        transition_steps: the length :math:`T` of the cycle, an int > 0, long
            enough that :math:`0 \le b_1 < b_2 < T`.
        peak_value: the value :math:`P` at step :math:`b_1`.
        pct_start: the fraction of the cycle spent rising, in ``(0, 1)``.
        pct_final: the fraction of the cycle after which the last phase starts,
            in ``(pct_start, 1)``.
        div_factor: :math:`d`, the ratio of the peak to the initial value, > 0.
        final_div_factor: :math:`d_f`, the ratio of the initial to the final
            value, > 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    References:
        Smith and Topin, `Super-Convergence: Very Fast Training of Neural
        Networks Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_,
        2017.

    Example:
        >>> from adamx.joined_schedules import linear_onecycle_schedule
        >>> s = linear_onecycle_schedule(10, 1.0, pct_start=0.2, pct_final=0.6,
        ...                              div_factor=4.0, final_div_factor=5.0)
        >>> [round(float(s(t)), 4) for t in (0, 1, 2, 4, 6, 8, 10, 12)]
        [0.25, 0.625, 1.0, 0.625, 0.25, 0.15, 0.05, 0.05]
    """
    check_positive_int("transition_steps", transition_steps)
    _check_value("peak_value", peak_value, signed)
    _check_pct("pct_start", pct_start, 0.0, "0")
    _check_pct("pct_final", pct_final, float(pct_start), "pct_start")
    check_range("div_factor", div_factor, 0.0, math.inf, low_open=True, high_open=True)
    check_range(
        "final_div_factor",
        final_div_factor,
        0.0,
        math.inf,
        low_open=True,
        high_open=True,
    )
    rise_end = int(pct_start * transition_steps)
    fall_end = int(pct_final * transition_steps)
    if rise_end == fall_end:
        # Equal boundaries would merge two phases into one key of the dict.
        raise ValueError(
            f"transition_steps={transition_steps!r} is too short to separate "
            f"pct_start={pct_start!r} and pct_final={pct_final!r}: both fall on "
            f"step {rise_end}"
        )
    return piecewise_interpolate_schedule(
        "linear",
        peak_value / div_factor,
        {
            rise_end: div_factor,
            fall_end: 1.0 / div_factor,
            transition_steps: 1.0 / final_div_factor,
        },
        signed=signed,
    )


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: Numeric,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    *,
    signed: bool = False,
) -> Schedule:
    r"""The one-cycle schedule with cosine ramps: up to the peak, then down.

    With :math:`P` = ``peak_value``, :math:`I = P / d` (``div_factor``),
    :math:`T` = ``transition_steps`` and :math:`b_1 = \lfloor`
    ``pct_start`` :math:`\cdot T \rfloor`, the value follows half a cosine
    from :math:`I` at step 0 to :math:`P` at :math:`b_1`, then another to
    :math:`I / d_f` (``final_div_factor``) at :math:`T`, where it stays:

    .. math::

        v_t = b + (a - b)\,\tfrac{1}{2}\left(1 + \cos \pi x_t\right)

    with :math:`(a, b, x_t) = (I, P, t / b_1)` on the way up and
    :math:`(P, I/d_f, (t - b_1)/(T - b_1))` on the way down. It is
    :func:`piecewise_interpolate_schedule` with ``'cosine'``.

    Args:
        transition_steps: the length :math:`T` of the cycle, an int > 0.
        peak_value: the value :math:`P` at step :math:`b_1`.
        pct_start: the fraction of the cycle spent rising, in ``(0, 1)``.
        div_factor: :math:`d`, the ratio of the peak to the initial value, > 0.
        final_div_factor: :math:`d_f`, the ratio of the initial to the final
            value, > 0.
        signed: allow negative values; by default the values must be >= 0,
            as a learning rate, weight decay or momentum must be.

    Returns:
        A schedule ``step -> value``.

    References:
        Smith and Topin, `Super-Convergence: Very Fast Training of Neural
        Networks Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_,
        2017.

    Example:
        >>> from adamx.joined_schedules import cosine_onecycle_schedule
        >>> s = cosine_onecycle_schedule(10, 1.0, pct_start=0.2, div_factor=4.0,
        ...                              final_div_factor=5.0)
        >>> [round(float(s(t)), 4) for t in (0, 1, 2, 6, 10, 12)]
        [0.25, 0.625, 1.0, 0.525, 0.05, 0.05]
    """
    check_positive_int("transition_steps", transition_steps)
    _check_value("peak_value", peak_value, signed)
    _check_pct("pct_start", pct_start, 0.0, "0")
    check_range("div_factor", div_factor, 0.0, math.inf, low_open=True, high_open=True)
    check_range(
        "final_div_factor",
        final_div_factor,
        0.0,
        math.inf,
        low_open=True,
        high_open=True,
    )
    return piecewise_interpolate_schedule(
        "cosine",
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            transition_steps: 1.0 / (div_factor * final_div_factor),
        },
        signed=signed,
    )


def join_schedules(
    schedules: Sequence[Schedule], boundaries: Sequence[int]
) -> Schedule:
    r"""Run schedules one after another, each counting steps from its own start.

    .. math::

        v_t = s_k(t - b_k) \quad \text{for } b_k \le t < b_{k+1},
        \qquad b_0 = 0,\ b_{K} = \infty

    with ``schedules`` = :math:`(s_0, \dots, s_{K-1})` and ``boundaries`` =
    :math:`(b_1, \dots, b_{K-1})`.

    Args:
        schedules: the :math:`K \ge 1` schedules, callables ``step -> value``.
        boundaries: the :math:`K - 1` steps where each next schedule takes
            over, ints >= 0 in strictly increasing order.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> from adamx.joined_schedules import join_schedules
        >>> from adamx.schedules import constant_schedule, linear_schedule
        >>> s = join_schedules(
        ...     [constant_schedule(1.0), linear_schedule(1.0, 0.0, 2)], [3]
        ... )
        >>> [float(s(t)) for t in range(6)]
        [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    """
    if isinstance(schedules, (str, bytes)) or not isinstance(schedules, Iterable):
        raise TypeError(f"schedules must be a sequence of schedules, got {schedules!r}")
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Iterable):
        raise TypeError(f"boundaries must be a sequence of ints, got {boundaries!r}")
    schedules = list(schedules)
    boundaries = list(boundaries)
    if not schedules:
        raise ValueError("schedules must hold at least one schedule, got []")
    for i, fn in enumerate(schedules):
        if not callable(fn):
            raise TypeError(
                f"schedules[{i}] must be a callable step -> value, got {fn!r} of "
                f"type {type(fn).__name__}"
            )
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
            f"entries, got {len(boundaries)}: {boundaries!r}"
        )
    for i, boundary in enumerate(boundaries):
        check_positive_int(f"boundaries[{i}]", boundary, allow_zero=True)
    if any(b >= b_next for b, b_next in zip(boundaries, boundaries[1:], strict=False)):
        raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}")

    def schedule(count: Any) -> jax.Array:
        value = schedules[0](count)
        for boundary, fn in zip(boundaries, schedules[1:], strict=True):
            value = jnp.where(count < boundary, value, fn(count - boundary))
        return jnp.asarray(value)

    return schedule


def sgdr_schedule(cosine_kwargs: Iterable[dict[str, Numeric]]) -> Schedule:
    r"""Stochastic gradient descent with warm restarts: warm-up-cosine cycles in a row.

    Cycle :math:`k` is ``warmup_cosine_decay_schedule(**cosine_kwargs[k])``
    and lasts its ``decay_steps`` :math:`D_k` (warm-up included):

    .. math::

        v_t = c_k\!\left(t - \textstyle\sum_{i<k} D_i\right)
        \quad \text{for } \textstyle\sum_{i<k} D_i \le t < \sum_{i \le k} D_i

    and the last cycle's end value holds after the last cycle.

    Args:
        cosine_kwargs: one or more dicts of keyword arguments for
            :func:`warmup_cosine_decay_schedule`, one per cycle.

    Returns:
        A schedule ``step -> value``.

    References:
        Loshchilov and Hutter, `SGDR: Stochastic Gradient Descent with Warm
        Restarts <https://arxiv.org/abs/1608.03983>`_, 2017.

    Example:
        >>> from adamx.joined_schedules import sgdr_schedule
        >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=1,
        ...              decay_steps=3)
        >>> s = sgdr_schedule([cycle, cycle])
        >>> [float(s(t)) for t in range(7)]
        [0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0]
    """
    if isinstance(cosine_kwargs, Mapping) or not isinstance(cosine_kwargs, Iterable):
        raise TypeError(
            f"cosine_kwargs must be a sequence of dicts, one per cycle, "
            f"got {cosine_kwargs!r}"
        )
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError("cosine_kwargs must hold at least one cycle, got []")
    schedules = []
    boundaries = []
    start = 0
    for i, kwargs in enumerate(cycles):
        if not isinstance(kwargs, Mapping):
            raise TypeError(
                f"cosine_kwargs[{i}] must be a dict of arguments for "
                f"warmup_cosine_decay_schedule, got {kwargs!r}"
            )
        cycle: Mapping[str, Any] = kwargs
        try:
            schedules.append(warmup_cosine_decay_schedule(**cycle))
        except (TypeError, ValueError) as e:
            raise type(e)(f"cosine_kwargs[{i}]: {e}") from e
        start += cycle["decay_steps"]
        boundaries.append(start)
    return join_schedules(schedules, boundaries[:-1])
