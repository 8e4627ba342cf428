r"""Line searches: the step size along an update direction, from the objective.

A line search is the last stage of a chain: it gets the direction :math:`u`
from the stages before it and returns :math:`\eta u`, with :math:`\eta` chosen
by evaluating the objective along the line :math:`\eta \mapsto f(w + \eta u)`.
Its ``update`` takes three extra keyword arguments, which
:func:`~adamx.chain` passes through: ``value`` (:math:`f(w)`), ``grad``
(:math:`\nabla f(w)`) and ``value_fn`` (:math:`f`, called as
``value_fn(params, **kwargs)``); any further keyword argument that names a
parameter of ``value_fn`` (a batch, say) is passed on to it.

* :func:`scale_by_backtracking_linesearch`: shrink :math:`\eta` until the
  Armijo sufficient-decrease criterion holds.
* :func:`scale_by_zoom_linesearch`: Nocedal & Wright's Algorithms 3.5 and 3.6,
  a step that satisfies the strong Wolfe criteria; the line search of
  :func:`~adamx.lbfgs`.
* :func:`value_and_grad_from_state`: ``jax.value_and_grad`` that reuses
  the value and gradient the line search computed at the accepted point.

Names, arguments, defaults, states and numbers are Optax's
(``optax.scale_by_backtracking_linesearch``, ``optax.scale_by_zoom_linesearch``,
``optax.value_and_grad_from_state``); each docstring says where they differ.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.base import GradientTransformationExtraArgs, OptState, Params, Updates

__all__ = [
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_backtracking_linesearch",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
]


# ------------------------------------------------------------ tree algebra


def _vdot(x: jax.Array, y: jax.Array) -> jax.Array:
    """:math:`\\sum_j \\bar x_j y_j` of two arrays, at full precision."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.conj(x)
    return jnp.tensordot(x, y, x.ndim, precision=jax.lax.Precision.HIGHEST)


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """:math:`\\sum \\bar a\\, b` over all leaves of two trees (a scalar)."""
    total: Any = 0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        total = total + _vdot(x, y)
    return jnp.asarray(total)


def tree_sq_norm(tree: Any) -> jax.Array:
    """:math:`\\|a\\|^2 = \\sum |a|^2` over all leaves (a real scalar)."""
    total: Any = 0
    for x in jax.tree.leaves(tree):
        total = total + jnp.sum(jnp.square(x.real) + jnp.square(x.imag))
    return jnp.asarray(total)


def add_scaled(x: Any, scalar: jax.typing.ArrayLike, y: Any) -> Any:
    """:math:`x + s\\, y`, leaf by leaf."""
    s = jnp.asarray(scalar)
    return jax.tree.map(lambda a, b: a + s * b, x, y)


def scaled(scalar: jax.typing.ArrayLike, tree: Any) -> Any:
    """:math:`s\\, x`, leaf by leaf."""
    return jax.tree.map(lambda a: scalar * a, tree)


def cast_like(tree: Any, like: Any) -> Any:
    """Each leaf of ``tree`` in the dtype of the matching leaf of ``like``."""
    return jax.tree.map(
        lambda t, o: t.astype(o.dtype) if hasattr(o, "dtype") else t, tree, like
    )


def _where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _real_dtype(params: Params) -> Any:
    """The real dtype of the first leaf: the dtype of values and step sizes."""
    leaf = jax.tree.leaves(params)[0]
    return jnp.real(jnp.empty((), jnp.asarray(leaf).dtype)).dtype


def _default_float() -> Any:
    return jnp.result_type(float)


# ------------------------------------------------------------ arguments


def _check_steps(name: str, value: Any, *, allow_zero: bool) -> None:
    """A count of evaluations: an integer (a traced one is let through)."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, jax.Array) and value.ndim == 0:
        if jnp.issubdtype(value.dtype, jnp.integer):
            value = int(value)
    checks.check_positive_int(name, value, allow_zero=allow_zero)


def _split_kwargs(
    value_fn: Callable[..., Any], extra_args: dict[str, Any], name: str
) -> dict[str, Any]:
    """The extra arguments that ``value_fn`` takes; raise on any other."""
    try:
        parameters = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return dict(extra_args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra_args)
    unused = sorted(k for k in extra_args if k not in parameters)
    if unused:
        raise TypeError(
            f"{name}.update got keyword arguments {unused} that value_fn does not "
            f"take (value_fn's parameters: {list(parameters)}); pass only the "
            "arguments value_fn needs"
        )
    return dict(extra_args)


def _require_extra_args(name: str, value: Any, grad: Any, value_fn: Any) -> None:
    missing = [
        k
        for k, v in (("value", value), ("grad", grad), ("value_fn", value_fn))
        if v is None
    ]
    if missing:
        raise TypeError(
            f"{name}.update needs the keyword arguments value, grad and value_fn "
            f"(the objective at the params, its gradient, and the objective "
            f"itself); missing {missing}: call update(updates, state, params, "
            "value=value, grad=grad, value_fn=loss)"
        )
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable, got {value_fn!r}")


# ------------------------------------------------------------ backtracking


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last round of :func:`scale_by_backtracking_linesearch` did."""

    num_linesearch_steps: jax.Array  # shape=(), int: evaluations of value_fn
    # shape=(), real: how far the accepted step misses the criterion, 0 if met
    decrease_error: jax.Array


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of :func:`scale_by_backtracking_linesearch`."""

    learning_rate: jax.Array  # shape=(), real: the step size accepted last
    value: jax.Array  # shape=(), real: the objective at the accepted point
    grad: Updates | None  # like params: its gradient there (store_grad), or None
    info: BacktrackingLinesearchInfo


def scale_by_backtracking_linesearch(
    max_backtracking_steps: jax.typing.ArrayLike,
    slope_rtol: jax.typing.ArrayLike = 1e-4,
    decrease_factor: jax.typing.ArrayLike = 0.8,
    increase_factor: jax.typing.ArrayLike = 1.5,
    max_learning_rate: jax.typing.ArrayLike = 1.0,
    atol: jax.typing.ArrayLike = 0.0,
    rtol: jax.typing.ArrayLike = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    r"""Backtracking line search: shrink the step until it decreases enough.

    .. math::
        \eta \leftarrow \min(\gamma_+ \eta_{k-1}, \eta_{\max}), \qquad
        \eta \leftarrow \gamma_- \eta \quad \text{until} \quad
        f(w + \eta u) \le (1 + \delta) f(w) + c\, \eta \,
        \langle u, \nabla f(w) \rangle + \epsilon

    with :math:`u` the incoming updates, :math:`\eta_{k-1}` the step size the
    last round accepted (1 before the first), :math:`\gamma_+` =
    ``increase_factor``, :math:`\gamma_-` = ``decrease_factor``, :math:`c` =
    ``slope_rtol`` (Armijo's constant), :math:`\delta` = ``rtol`` and
    :math:`\epsilon` = ``atol``. The result is :math:`\eta u`. At most
    ``max_backtracking_steps + 1`` step sizes are tried; if the last still
    fails the criterion it is taken anyway, unless the objective there is not
    finite, in which case :math:`\eta = 0`. The inner product is the real
    :math:`\operatorname{Re} \sum g\, u` for complex params (JAX's gradient
    convention). :math:`u` must be a descent direction
    (:math:`\langle u, \nabla f(w) \rangle < 0`), as plain gradient descent's is.

    ``update`` takes ``value``, ``grad`` and ``value_fn`` (see the module
    docstring) and passes any further keyword arguments to ``value_fn``.
    Names, arguments, defaults and numbers are Optax's.

    Args:
        max_backtracking_steps: how many times :math:`\eta` may be shrunk.
        slope_rtol: :math:`c \in [0, 1)`, the fraction of the linear decrease
            required.
        decrease_factor: :math:`\gamma_- \in (0, 1)`.
        increase_factor: :math:`\gamma_+ \ge 1`, how much the first guess may
            exceed the last accepted step (``math.inf``: start at
            :math:`\eta_{\max}` each round).
        max_learning_rate: :math:`\eta_{\max} > 0`.
        atol: :math:`\epsilon \ge 0`.
        rtol: :math:`\delta \ge 0`.
        store_grad: also compute :math:`\nabla f` at the accepted point and
            keep it in the state, for :func:`value_and_grad_from_state`.
        verbose: print a diagnosis when no step meets the criterion.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`ScaleByBacktrackingLinesearchState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> import jax
        >>> def f(w): return jnp.sum(w ** 2)
        >>> tx = adamx.chain(
        ...     adamx.sgd(1.0),
        ...     adamx.scale_by_backtracking_linesearch(15, store_grad=True),
        ... )
        >>> value_and_grad = adamx.value_and_grad_from_state(f)
        >>> @jax.jit
        ... def step(w, state):
        ...     value, grad = value_and_grad(w, state=state)
        ...     u, state = tx.update(
        ...         grad, state, w, value=value, grad=grad, value_fn=f
        ...     )
        ...     return adamx.apply_updates(w, u), state
        >>> w = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(w)
        >>> for _ in range(3):
        ...     w, state = step(w, state)
        >>> print(f"{f(w):.3f}", state[1].learning_rate)
        0.653 0.8

    References:
        Armijo, 1966, "Minimization of functions having Lipschitz continuous
        first partial derivatives", https://doi.org/10.2140/pjm.1966.16.1;
        Nocedal & Wright, 2006, "Numerical Optimization", Algorithm 3.1,
        https://doi.org/10.1007/978-0-387-40065-5;
        Vaswani et al., 2019, "Painless Stochastic Gradient",
        https://arxiv.org/abs/1905.09997;
        ``optax.scale_by_backtracking_linesearch``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    _check_steps("max_backtracking_steps", max_backtracking_steps, allow_zero=True)
    checks.check_range("slope_rtol", slope_rtol, 0.0, 1.0, high_open=True)
    checks.check_range(
        "decrease_factor", decrease_factor, 0.0, 1.0, low_open=True, high_open=True
    )
    checks.check_range("increase_factor", increase_factor, 1.0, math.inf)
    checks.check_range(
        "max_learning_rate", max_learning_rate, 0.0, math.inf, low_open=True
    )
    checks.check_nonnegative("atol", atol)
    checks.check_nonnegative("rtol", rtol)
    checks.check_bool("store_grad", store_grad)
    checks.check_bool("verbose", verbose)
    name = "scale_by_backtracking_linesearch"

    def init_fn(params: Params) -> ScaleByBacktrackingLinesearchState:
        dtype = _real_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype),
            value=jnp.asarray(jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params) if store_grad else None,
            info=BacktrackingLinesearchInfo(
                num_linesearch_steps=jnp.asarray(0),
                decrease_error=jnp.asarray(jnp.inf, dtype),
            ),
        )

    def update_fn(
        updates: Updates,
        state: ScaleByBacktrackingLinesearchState,
        params: Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        grad: Updates | None = None,
        value_fn: Callable[..., jax.typing.ArrayLike] | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByBacktrackingLinesearchState]:
        if params is None:
            raise ValueError(f"{name} needs the current params: update(u, s, params)")
        _require_extra_args(name, value, grad, value_fn)
        assert value_fn is not None and value is not None
        kwargs = _split_kwargs(value_fn, extra_args, name)

        def objective(w: Params) -> jax.Array:
            return jnp.asarray(value_fn(w, **kwargs))

        # The slope of eta -> f(w + eta u) at 0.
        slope = jnp.real(tree_vdot(updates, jax.tree.map(jnp.conj, grad)))

        def error(eta: jax.Array, new_value: jax.Array) -> jax.Array:
            err = new_value - (1.0 + rtol) * value - eta * slope_rtol * slope
            err = jnp.where(jnp.isnan(err), jnp.inf, err)
            return jnp.maximum(err, 0.0)

        def cond(carry: tuple) -> jax.Array:
            _, _, _, err, i = carry
            return (~(err <= atol)) & (i <= max_backtracking_steps)

        def body(carry: tuple) -> tuple:
            eta, _, g, _, i = carry
            # The first try is the guess itself; each later one shrinks it.
            eta = jnp.where(i > 0, decrease_factor * eta, eta)
            w = add_scaled(params, eta, updates)
            if store_grad:
                new_value, pullback = jax.vjp(objective, w)
                err = error(eta, new_value)
                last = (err <= atol) | (i == max_backtracking_steps)
                g = jax.lax.cond(
                    last,
                    lambda: pullback(jnp.ones_like(new_value))[0],
                    lambda: g,
                )
            else:
                new_value = objective(w)
                err = error(eta, new_value)
            return cast_like((eta, new_value, g, err, i + 1), carry)

        guess = jnp.minimum(increase_factor * state.learning_rate, max_learning_rate)
        carry = (
            guess,
            value,
            jax.tree.map(jnp.zeros_like, params),
            jnp.asarray(jnp.inf),
            0,
        )
        eta, new_value, new_grad, err, steps = jax.lax.while_loop(cond, body, carry)
        # A step to a non-finite objective is no step.
        accepted = jnp.where(jnp.isinf(err), 0.0, eta)
        if verbose:
            jax.lax.cond(
                err > atol,
                lambda: jax.debug.print(
                    "adamx.scale_by_backtracking_linesearch: no step size met the "
                    "sufficient-decrease criterion (value {value}, slope {slope}, "
                    "step size {eta}, decrease error {err}); taking step size "
                    "{taken} (0 where the objective is not finite; a slope >= 0 "
                    "is no descent direction)",
                    value=value,
                    slope=slope,
                    eta=eta,
                    err=err,
                    taken=accepted,
                    ordered=True,
                ),
                lambda: None,
            )
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=accepted,
            value=jnp.asarray(new_value),
            grad=new_grad if store_grad else None,
            info=BacktrackingLinesearchInfo(
                num_linesearch_steps=jnp.asarray(steps), decrease_error=err
            ),
        )
        return scaled(accepted, updates), cast_like(new_state, state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


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
        increase_factor: :math:`> 1`, the growth of the step while bracketing.
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
    _check_steps("max_linesearch_steps", max_linesearch_steps, allow_zero=False)
    if max_learning_rate is not None:
        checks.check_range(
            "max_learning_rate", max_learning_rate, 0.0, math.inf, low_open=True
        )
    checks.check_nonnegative("tol", tol)
    checks.check_range("increase_factor", increase_factor, 1.0, math.inf, low_open=True)
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
        dtype = _real_dtype(params)
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
        _require_extra_args(name, value, grad, value_fn)
        assert value_fn is not None and value is not None
        kwargs = _split_kwargs(value_fn, extra_args, name)
        value_and_grad = jax.value_and_grad(value_fn)
        dtype = _real_dtype(params)

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
            safe_eta, safe_v, safe_g = _where(
                safe, (eta, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad)
            )
            # Too little decrease, or no better than the last point: the
            # minimum lies before eta. An upward slope: it lies before eta,
            # after the last point.
            high_is_new = (dec > 0.0) | ((v >= s.value) & (s.count > 0))
            low_is_new = (d >= 0.0) & ~high_is_new
            prev, new = (s.stepsize, s.value, s.slope), (eta, v, d)
            lo, hi = _where(low_is_new, (new, prev), (prev, new))
            found = high_is_new | low_is_new | (err <= tol)
            # At the largest step without a bracket, the curvature criterion
            # is out of reach: take that step.
            done = (err <= tol) | (at_max & ~found)
            if verbose:
                jax.lax.cond(
                    at_max & ~found,
                    lambda: jax.debug.print(
                        "adamx.scale_by_zoom_linesearch: no bracket below "
                        "max_learning_rate={m}; taking it without small "
                        "curvature (value {v0}, slope {d0}, decrease error "
                        "{dec}, curvature error {curv})",
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
            safe_eta, safe_v, safe_g = _where(
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
            new_hi = _where(high_to_low, lo, _where(high_to_new, new, hi))
            new_lo = _where(high_to_new, lo, new)
            # The point the bracket dropped: the next cubic's third point.
            ref, value_ref = _where(high_to_new | high_to_low, hi[:2], lo[:2])
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
            eta, v, g = _where(
                use_safe,
                (s.safe_stepsize, s.safe_value, s.safe_grad),
                (s.stepsize, s.value, s.grad),
            )
            if verbose:
                jax.debug.print(
                    "adamx.scale_by_zoom_linesearch: no step size met both "
                    "criteria in max_linesearch_steps (value {v0}, slope {d0}, "
                    "last step size {eta}, decrease error {dec}, curvature "
                    "error {curv}); taking step size {taken}. A slope >= 0 is "
                    "no descent direction; an infinite decrease error, a "
                    "non-finite objective.",
                    v0=value_0,
                    d0=slope_0,
                    eta=s.stepsize,
                    dec=s.decrease_error,
                    curv=s.curvature_error,
                    taken=eta,
                    ordered=True,
                )
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


# ------------------------------------------------------------ reuse


def _find_field(tree: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` in ``tree``: a NamedTuple field or a
    dict key, at any depth (found values are searched too)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            if key in node._fields:
                found.append(getattr(node, key))
            children = list(node)
        elif isinstance(node, dict):
            if key in node:
                found.append(node[key])
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            children = jax.tree_util.tree_flatten(
                node, is_leaf=lambda x: x is not node
            )[0]
            if len(children) == 1 and children[0] is node:
                return
        for child in children:
            walk(child)

    walk(tree)
    return found


def value_and_grad_from_state(
    value_fn: Callable[..., jax.typing.ArrayLike],
) -> Callable[..., tuple[jax.Array, Updates]]:
    r"""``jax.value_and_grad`` that reuses what a line search stored.

    .. math::
        (f(w_k), \nabla f(w_k)) = \begin{cases} (v, g) \text{ from the state}
        & v \text{ finite} \\ \text{computed} & \text{otherwise} \end{cases}

    A line search evaluates the objective and its gradient at the point it
    accepts, which is the next iterate :math:`w_k`; for a deterministic
    objective the next step can take them from the state instead of computing
    them again. Before the first step the stored value is :math:`+\infty`, so
    they are computed.

    Args:
        value_fn: the objective, ``value_fn(params, *args, **kwargs)``, a
            differentiable scalar.

    Returns:
        ``value_and_grad(params, *args, state, **kwargs) -> (value, grad)``,
        where ``state`` (keyword only) is the optimizer state, which must hold
        exactly one ``value`` and one ``grad`` field (a
        :class:`ScaleByZoomLinesearchState`, or a
        :class:`ScaleByBacktrackingLinesearchState` with ``store_grad=True``).
        It raises ``ValueError`` if they are missing or the gradient is
        ``None``, and ``KeyError`` if the state holds several.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def f(w): return jnp.sum((w - 1.0) ** 2)
        >>> tx = adamx.chain(adamx.sgd(1.0), adamx.scale_by_zoom_linesearch(15))
        >>> w = jnp.array([3.0, -2.0])
        >>> state = tx.init(w)
        >>> value_and_grad = adamx.value_and_grad_from_state(f)
        >>> value, grad = value_and_grad(w, state=state)  # computed
        >>> u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
        >>> w = adamx.apply_updates(w, u)
        >>> value, grad = value_and_grad(w, state=state)  # taken from the state
        >>> print(value, grad)
        0.0 [0. 0.]

    References:
        ``optax.value_and_grad_from_state``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    if not callable(value_fn):
        raise TypeError(f"value_fn must be callable, got {value_fn!r}")

    def value_and_grad(
        params: Params, *fn_args: Any, state: OptState, **fn_kwargs: Any
    ) -> tuple[jax.Array, Updates]:
        found = {k: _find_field(state, k) for k in ("value", "grad")}
        for k, values in found.items():
            if len(values) > 1:
                raise KeyError(
                    f"the state holds {len(values)} fields named {k!r}; "
                    "value_and_grad_from_state needs exactly one (one line search "
                    "in the optimizer)"
                )
        if not found["value"] or not found["grad"] or found["grad"][0] is None:
            raise ValueError(
                "the state holds no value and gradient to reuse: it needs a "
                "scale_by_zoom_linesearch, or a scale_by_backtracking_linesearch "
                "with store_grad=True"
            )
        value, grad = found["value"][0], found["grad"][0]
        return jax.lax.cond(
            jnp.isfinite(value),
            lambda *_: (value, grad),
            lambda p, a, kw: jax.value_and_grad(value_fn)(p, *a, **kw),
            params,
            fn_args,
            fn_kwargs,
        )

    return value_and_grad
