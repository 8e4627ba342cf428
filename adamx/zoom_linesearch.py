r"""The zoom line search: a step size that meets the strong Wolfe criteria.

Nocedal & Wright's Algorithms 3.5 and 3.6: grow the step until an interval
brackets an acceptable one, then shrink the interval by cubic or quadratic
interpolation; the line search of :func:`~adamx.lbfgs`. It takes the extra
arguments of every line search (``value``, ``grad``, ``value_fn``; see
:mod:`adamx.linesearch`). Names, arguments, defaults, states, numbers and
verbose diagnostics are Optax's (``optax.scale_by_zoom_linesearch``); the
docstring says where they differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.base import GradientTransformationExtraArgs, Params, Updates
from adamx.linesearch import (
    add_scaled,
    cast_like,
    check_steps,
    require_extra_args,
    scaled,
    split_kwargs,
    tree_vdot,
    tree_where,
    values_dtype,
)

__all__ = [
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_zoom_linesearch",
]


# Optax's diagnostics, word for word, so that logs read alike.
FLAG_INTERVAL_NOT_FOUND = (
    "No interval satisfying curvature condition. "
    "Consider increasing maximal possible stepsize of the linesearch."
)
FLAG_INTERVAL_TOO_SMALL = (
    "Length of searched interval has been reduced below threshold."
)
FLAG_CURVATURE_COND_NOT_SATISFIED = (
    "Returning stepsize with sufficient decrease but curvature condition not satisfied."
)
FLAG_NO_STEPSIZE_FOUND = (
    "Linesearch failed, no stepsize satisfying sufficient decrease found."
)
FLAG_NOT_A_DESCENT_DIRECTION = (
    "The linesearch failed because the provided direction is not a descent direction. "
)


def _print_if(condition: jax.Array, message: str, **values: Any) -> None:
    """``jax.debug.print(message, **values)`` where ``condition`` holds."""
    jax.lax.cond(
        condition,
        lambda: jax.debug.print(message, **values, ordered=True),
        lambda: None,
    )


def _fall_back_diagnosis(
    s: Any, value_0: Any, slope_0: Any, taken: Any, stepsize_precision: Any
) -> None:
    """Say why the zoom search ran out of steps, and what it takes instead."""
    jax.debug.print(
        "adamx.scale_by_zoom_linesearch: no step size met both criteria in "
        "max_linesearch_steps (value {v0}, slope {d0}, last step size {eta}, "
        "decrease error {dec}, curvature error {curv}); taking step size {taken}.",
        v0=value_0,
        d0=slope_0,
        eta=s.stepsize,
        dec=s.decrease_error,
        curv=s.curvature_error,
        taken=taken,
        ordered=True,
    )
    width = jnp.abs(s.high - s.low)
    _print_if(
        s.interval_found & (width <= stepsize_precision),
        FLAG_INTERVAL_TOO_SMALL + " Interval length: {width}.",
        width=width,
    )
    safe = s.safe_stepsize > 0.0
    _print_if(
        safe,
        FLAG_CURVATURE_COND_NOT_SATISFIED
        + " Stepsize ensuring sufficient decrease: {safe}.",
        safe=s.safe_stepsize,
    )
    _print_if(~safe, FLAG_NO_STEPSIZE_FOUND)
    _print_if(
        ~safe & ~(slope_0 < 0.0),
        FLAG_NOT_A_DESCENT_DIRECTION
        + "The slope (={d0}) at stepsize=0 should be negative.",
        d0=slope_0,
    )
    _print_if(
        jnp.isinf(s.decrease_error),
        "The objective is not finite at the last step size tried.",
    )


# ------------------------------------------------------------ zoom


class ZoomLinesearchInfo(NamedTuple):
    """What the last round of :func:`scale_by_zoom_linesearch` did.

    A positive ``decrease_error`` means the step taken does not decrease the
    objective enough (the values may not decrease monotonically); a positive
    ``curvature_error`` alone is milder (a ``max_learning_rate`` too small to
    reach the curvature criterion, say).
    """

    num_linesearch_steps: jax.Array  # shape=(), int: evaluations of value_fn
    decrease_error: jax.Array  # shape=(), float: sufficient decrease missed by
    curvature_error: jax.Array  # shape=(), float: small curvature missed by


class ScaleByZoomLinesearchState(NamedTuple):
    """State of :func:`scale_by_zoom_linesearch`."""

    learning_rate: jax.Array  # shape=(), real: the step size accepted last
    value: jax.Array  # shape=(), real: the objective at the accepted point
    grad: Updates  # like params: its gradient there
    info: ZoomLinesearchInfo


class _Zoom(NamedTuple):
    """The carry of the zoom line search's loop (scalars unless noted)."""

    count: jax.Array  # type: ignore[assignment]  # evaluations so far
    stepsize: jax.Array  # the last point tried, its value, gradient and slope
    value: jax.Array
    grad: Updates
    slope: jax.Array
    decrease_error: jax.Array  # the criteria at that point
    curvature_error: jax.Array
    interval_found: jax.Array  # bool: in the zoom phase (Algorithm 3.6)
    done: jax.Array  # bool: both criteria met
    failed: jax.Array  # bool: out of steps, or the interval is too small
    # The bracket: phi(low) <= phi(high), not low <= high.
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    cubic_ref: jax.Array  # the third point of the cubic interpolation
    value_cubic_ref: jax.Array
    # The best point with sufficient decrease, in case curvature is never met.
    safe_stepsize: jax.Array
    safe_value: jax.Array
    safe_grad: Updates


def _cubic_min(
    a: jax.Array,
    fa: jax.Array,
    fpa: jax.Array,
    b: jax.Array,
    fb: jax.Array,
    c: jax.Array,
    fc: jax.Array,
) -> jax.Array:
    """The local minimizer of the cubic through (a, fa), (b, fb), (c, fc) with
    slope fpa at a; NaN where it has none (a NaN is never a valid point)."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    # [A, B] of p(x) = A (x-a)^3 + B (x-a)^2 + fpa (x-a) + fa.
    m = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    rhs = jnp.array([fb - fa - fpa * db, fc - fa - fpa * dc])
    coef_a, coef_b = jnp.dot(m, rhs, precision=jax.lax.Precision.HIGHEST) / denom
    radical = coef_b * coef_b - 3.0 * coef_a * fpa
    return a + (-coef_b + jnp.sqrt(radical)) / (3.0 * coef_a)


def _quad_min(
    a: jax.Array, fa: jax.Array, fpa: jax.Array, b: jax.Array, fb: jax.Array
) -> jax.Array:
    """The minimizer of the parabola through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    curvature = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * curvature)


def scale_by_zoom_linesearch(
    max_linesearch_steps: jax.typing.ArrayLike,
    max_learning_rate: jax.typing.ArrayLike | None = None,
    tol: jax.typing.ArrayLike = 0.0,
    increase_factor: jax.typing.ArrayLike = 2.0,
    slope_rtol: jax.typing.ArrayLike = 1e-4,
    curv_rtol: jax.typing.ArrayLike = 0.9,
    approx_dec_rtol: jax.typing.ArrayLike | None = 1e-6,
    stepsize_precision: jax.typing.ArrayLike = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Zoom line search: a step size that meets the strong Wolfe criteria.

    With :math:`\phi(\eta) = f(w + \eta u)` along the incoming updates
    :math:`u`, it looks for :math:`\eta` with sufficient decrease and small
    curvature,

    .. math::
        \phi(\eta) \le \phi(0) + c_1 \eta\, \phi'(0) + \epsilon, \qquad
        |\phi'(\eta)| \le c_2 |\phi'(0)| + \epsilon,

    and returns :math:`\eta u`. Nocedal & Wright's Algorithm 3.5 brackets such
    a step, trying :math:`\eta_0` (1, or the last accepted step) and
    multiplying by ``increase_factor`` up to ``max_learning_rate``; their
    Algorithm 3.6 then zooms into the bracket, taking the minimizer of a cubic
    through the bracket's ends and the previous point where it falls well
    inside the bracket, else that of a parabola, else the midpoint. Near a
    minimum, where :math:`\phi(\eta) \le \phi(0) + c_3 |\phi(0)|`, the decrease
    criterion may be met by Hager and Zhang's approximate one instead,
    :math:`\phi'(\eta) \le (2 c_1 - 1) \phi'(0)`, which rounding does not
    defeat. If the steps run out (or the bracket shrinks below
    ``stepsize_precision``), the best step with sufficient decrease found is
    taken, or the last one tried if none was.

    :math:`c_1` = ``slope_rtol``, :math:`c_2` = ``curv_rtol``, :math:`c_3` =
    ``approx_dec_rtol``, :math:`\epsilon` = ``tol``. ``update`` takes
    ``value``, ``grad`` and ``value_fn`` (see the module docstring), passes
    any further keyword arguments to ``value_fn``, and keeps the objective and
    its gradient at the accepted point in the state, for
    :func:`value_and_grad_from_state`. Names, arguments, defaults and numbers
    are Optax's. For complex params every slope is
    :math:`\operatorname{Re} \sum g\, u` (JAX's gradient convention); Optax
    takes :math:`\operatorname{Re} \sum \bar u\, g` for :math:`\phi'(0)`,
    which is not the derivative of :math:`\phi` there (the same number for
    real params).

    Args:
        max_linesearch_steps: the most evaluations of ``value_fn`` per round.
        max_learning_rate: the largest step size tried; ``None`` for no bound
            (a bound can keep the curvature criterion out of reach).
        tol: :math:`\epsilon \ge 0`.
        increase_factor: :math:`> 0`, the growth of the step while bracketing.
            At most 1, the steps shrink instead, the bracket can miss the
            minimizer, and the search ends on the best step with sufficient
            decrease (as Optax's).
        slope_rtol: :math:`c_1 \in [0, 1)`.
        curv_rtol: :math:`c_2 \ge 0`; ``jnp.inf`` drops the curvature
            criterion, leaving a backtracking search by interpolation.
        approx_dec_rtol: :math:`c_3 \ge 0`; ``None`` keeps to Armijo's
            criterion alone.
        stepsize_precision: below this bracket length, a step with sufficient
            decrease is taken even without small curvature.
        initial_guess_strategy: ``"one"`` (start each round at
            :math:`\eta_0 = 1`, for quasi-Newton directions) or ``"keep"``
            (at the last accepted step, for gradient directions).
        verbose: print a diagnosis when no step meets the criteria.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`ScaleByZoomLinesearchState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def f(w): return jnp.sum((w - 1.0) ** 2)
        >>> tx = adamx.chain(adamx.sgd(1.0), adamx.scale_by_zoom_linesearch(15))
        >>> w = jnp.array([3.0, -2.0])
        >>> state = tx.init(w)
        >>> value_and_grad = adamx.value_and_grad_from_state(f)
        >>> value, grad = value_and_grad(w, state=state)
        >>> u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        >>> print(adamx.apply_updates(w, u), float(state[1].learning_rate))
        [1. 1.] 0.5

    References:
        Nocedal & Wright, 2006, "Numerical Optimization", Algorithms 3.5 and
        3.6, https://doi.org/10.1007/978-0-387-40065-5;
        Hager & Zhang, 2006, "Algorithm 851: CG_DESCENT, a Conjugate Gradient
        Method with Guaranteed Descent", https://doi.org/10.1145/1132973.1132979;
        ``optax.scale_by_zoom_linesearch``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    check_steps("max_linesearch_steps", max_linesearch_steps, allow_zero=False)
    if max_learning_rate is not None:
        checks.check_range(
            "max_learning_rate", max_learning_rate, 0.0, math.inf, low_open=True
        )
    checks.check_nonnegative("tol", tol)
    checks.check_range("increase_factor", increase_factor, 0.0, math.inf, low_open=True)
    checks.check_range("slope_rtol", slope_rtol, 0.0, 1.0, high_open=True)
    checks.check_range("curv_rtol", curv_rtol, 0.0, math.inf)
    if approx_dec_rtol is not None:
        checks.check_nonnegative("approx_dec_rtol", approx_dec_rtol)
    checks.check_nonnegative("stepsize_precision", stepsize_precision)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(
            "initial_guess_strategy must be 'one' or 'keep', got "
            f"{initial_guess_strategy!r}"
        )
    checks.check_bool("verbose", verbose)
    name = "scale_by_zoom_linesearch"

    def init_fn(params: Params) -> ScaleByZoomLinesearchState:
        dtype = values_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype),
            value=jnp.asarray(jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params),
            info=ZoomLinesearchInfo(
                num_linesearch_steps=jnp.asarray(0),
                decrease_error=jnp.asarray(jnp.inf),
                curvature_error=jnp.asarray(jnp.inf),
            ),
        )

    def decrease_error(eta, value_eta, slope_eta, value_0, slope_0):
        # Armijo's criterion (Nocedal & Wright's (3.7a)) ...
        err = value_eta - value_0 - slope_rtol * eta * slope_0
        if approx_dec_rtol is not None:
            # ... or, close enough to a minimum that phi(eta) has not risen
            # above phi(0) by more than c3 |phi(0)|, Hager and Zhang's
            # approximate one (their (23), with (26)-(27) on one iterate).
            approx = slope_eta - (2 * slope_rtol - 1.0) * slope_0
            rise = value_eta - value_0 - approx_dec_rtol * jnp.abs(value_0)
            err = jnp.minimum(jnp.maximum(approx, rise), err)
        err = jnp.maximum(err, 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    def curvature_error(slope_eta, slope_0):
        # Nocedal & Wright's (3.7b), the strong Wolfe curvature criterion.
        err = jnp.abs(slope_eta) - curv_rtol * jnp.abs(slope_0)
        err = jnp.maximum(err, 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    def update_fn(
        updates: Updates,
        state: ScaleByZoomLinesearchState,
        params: Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        grad: Updates | None = None,
        value_fn: Callable[..., jax.typing.ArrayLike] | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByZoomLinesearchState]:
        if params is None:
            raise ValueError(f"{name} needs the current params: update(u, s, params)")
        require_extra_args(name, value, grad, value_fn)
        assert value_fn is not None and value is not None
        kwargs = split_kwargs(value_fn, extra_args, name)
        value_and_grad = jax.value_and_grad(value_fn)
        dtype = values_dtype(params)

        def on_line(eta):
            """phi(eta), the gradient at w + eta u, and phi'(eta)."""
            v, g = value_and_grad(add_scaled(params, eta, updates), **kwargs)
            return v, g, jnp.real(tree_vdot(jax.tree.map(jnp.conj, g), updates))

        value_0 = value
        slope_0 = jnp.real(tree_vdot(jax.tree.map(jnp.conj, grad), updates))
        if initial_guess_strategy == "one":
            guess = jnp.asarray(1.0)
        else:
            guess = state.learning_rate

        def bracket(s: _Zoom) -> _Zoom:
            """One step of Algorithm 3.5: grow the step until a bracket holds."""
            eta = jnp.where(s.count == 0, guess, increase_factor * s.stepsize)
            if max_learning_rate is not None:
                at_max = eta >= max_learning_rate
                eta = jnp.minimum(eta, max_learning_rate)
            else:
                at_max = jnp.asarray(False)
            v, g, d = on_line(eta)
            dec = decrease_error(eta, v, d, value_0, slope_0)
            curv = curvature_error(d, slope_0)
            err = jnp.maximum(dec, curv)
            safe = dec <= tol
            safe_eta, safe_v, safe_g = tree_where(
                safe, (eta, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad)
            )
            # Too little decrease, or no better than the last point: the
            # minimum lies before eta. An upward slope: it lies before eta,
            # after the last point.
            high_is_new = (dec > 0.0) | ((v >= s.value) & (s.count > 0))
            low_is_new = (d >= 0.0) & ~high_is_new
            prev, new = (s.stepsize, s.value, s.slope), (eta, v, d)
            lo, hi = tree_where(low_is_new, (new, prev), (prev, new))
            found = high_is_new | low_is_new | (err <= tol)
            # At the largest step without a bracket, the curvature criterion
            # is out of reach: take that step.
            done = (err <= tol) | (at_max & ~found)
            if verbose:
                jax.lax.cond(
                    at_max & ~found,
                    lambda: jax.debug.print(
                        "adamx.scale_by_zoom_linesearch: "
                        + FLAG_INTERVAL_NOT_FOUND
                        + " "
                        + FLAG_CURVATURE_COND_NOT_SATISFIED
                        + " Taking max_learning_rate={m} (value {v0}, slope "
                        "{d0}, decrease error {dec}, curvature error {curv}).",
                        m=eta,
                        v0=value_0,
                        d0=slope_0,
                        dec=dec,
                        curv=curv,
                        ordered=True,
                    ),
                    lambda: None,
                )
            new_s = _Zoom(
                count=s.count + 1,
                stepsize=eta,
                value=v,
                grad=g,
                slope=d,
                decrease_error=dec,
                curvature_error=curv,
                interval_found=found,
                done=done,
                failed=(s.count + 1 >= max_linesearch_steps) & ~done,
                low=lo[0],
                value_low=lo[1],
                slope_low=lo[2],
                high=hi[0],
                value_high=hi[1],
                slope_high=hi[2],
                cubic_ref=lo[0],
                value_cubic_ref=lo[1],
                safe_stepsize=safe_eta,
                safe_value=safe_v,
                safe_grad=safe_g,
            )
            return cast_like(new_s, s)

        def zoom(s: _Zoom) -> _Zoom:
            """One step of Algorithm 3.6: shrink the bracket [low, high]."""
            width = jnp.abs(s.high - s.low)
            left, right = jnp.minimum(s.high, s.low), jnp.maximum(s.high, s.low)
            too_small = width <= stepsize_precision
            # The cubic's minimizer if well inside the bracket, else the
            # parabola's, else the midpoint.
            cubic = _cubic_min(
                s.low,
                s.value_low,
                s.slope_low,
                s.high,
                s.value_high,
                s.cubic_ref,
                s.value_cubic_ref,
            )
            use_cubic = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
            quad = _quad_min(s.low, s.value_low, s.slope_low, s.high, s.value_high)
            use_quad = ~use_cubic & (
                (quad > left + 0.1 * width) & (quad < right - 0.1 * width)
            )
            eta = jnp.where(use_cubic, cubic, s.cubic_ref)
            eta = jnp.where(use_quad, quad, eta)
            eta = jnp.where(~use_cubic & ~use_quad, (s.low + s.high) / 2.0, eta)
            v, g, d = on_line(eta)
            dec = decrease_error(eta, v, d, value_0, slope_0)
            curv = curvature_error(d, slope_0)
            done = jnp.maximum(dec, curv) <= tol
            better = (dec <= tol) & (v < s.safe_value)
            safe_eta, safe_v, safe_g = tree_where(
                better, (eta, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad)
            )
            # Nocedal & Wright's zoom: eta replaces high if it does not
            # decrease enough or is no better than low; otherwise it becomes
            # low, and the old low becomes high if the slope at eta points
            # back across the bracket.
            high_to_new = (dec > 0.0) | (v >= s.value_low)
            high_to_low = (d * (s.high - s.low) >= 0.0) & ~high_to_new
            lo, hi, new = (
                (s.low, s.value_low, s.slope_low),
                (s.high, s.value_high, s.slope_high),
                (eta, v, d),
            )
            new_hi = tree_where(high_to_low, lo, tree_where(high_to_new, new, hi))
            new_lo = tree_where(high_to_new, lo, new)
            # The point the bracket dropped: the next cubic's third point.
            ref, value_ref = tree_where(high_to_new | high_to_low, hi[:2], lo[:2])
            out_of_steps = s.count + 1 >= max_linesearch_steps
            stuck = out_of_steps | (too_small & (safe_eta > 0.0))
            new_s = s._replace(
                count=s.count + 1,
                stepsize=eta,
                value=v,
                grad=g,
                slope=d,
                decrease_error=dec,
                curvature_error=curv,
                done=done,
                failed=stuck & ~done,
                low=new_lo[0],
                value_low=new_lo[1],
                slope_low=new_lo[2],
                high=new_hi[0],
                value_high=new_hi[1],
                slope_high=new_hi[2],
                cubic_ref=ref,
                value_cubic_ref=value_ref,
                safe_stepsize=safe_eta,
                safe_value=safe_v,
                safe_grad=safe_g,
            )
            return cast_like(new_s, s)

        def fall_back(s: _Zoom) -> _Zoom:
            """Out of steps: the best step with sufficient decrease, if any."""
            use_safe = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
            eta, v, g = tree_where(
                use_safe,
                (s.safe_stepsize, s.safe_value, s.safe_grad),
                (s.stepsize, s.value, s.grad),
            )
            if verbose:
                _fall_back_diagnosis(s, value_0, slope_0, eta, stepsize_precision)
            return cast_like(s._replace(stepsize=eta, value=v, grad=g), s)

        def step(s: _Zoom) -> _Zoom:
            new = jax.lax.cond(s.interval_found, zoom, bracket, s)
            new = jax.lax.cond(new.failed, fall_back, lambda x: x, new)
            return cast_like(new, s)

        zero = jnp.asarray(0.0)
        start = _Zoom(
            count=jnp.asarray(0),
            stepsize=jnp.asarray(0.0, dtype),
            value=jnp.asarray(value, dtype),
            grad=grad,
            slope=slope_0,
            decrease_error=jnp.asarray(jnp.inf),
            curvature_error=jnp.asarray(jnp.inf),
            interval_found=jnp.asarray(False),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
            low=zero,
            value_low=jnp.asarray(value_0),
            slope_low=slope_0,
            high=zero,
            value_high=jnp.asarray(value_0),
            slope_high=slope_0,
            cubic_ref=zero,
            value_cubic_ref=jnp.asarray(value_0),
            safe_stepsize=zero,
            safe_value=jnp.asarray(value_0),
            safe_grad=grad,
        )
        end = jax.lax.while_loop(lambda s: ~(s.done | s.failed), step, start)
        new_state = ScaleByZoomLinesearchState(
            learning_rate=end.stepsize,
            value=end.value,
            grad=end.grad,
            info=ZoomLinesearchInfo(
                num_linesearch_steps=end.count,
                decrease_error=end.decrease_error,
                curvature_error=end.curvature_error,
            ),
        )
        return scaled(end.stepsize, updates), cast_like(new_state, state)

    return GradientTransformationExtraArgs(init_fn, update_fn)
