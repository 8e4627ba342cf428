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
* :func:`~adamx.scale_by_zoom_linesearch` (in :mod:`adamx.zoom_linesearch`):
  Nocedal & Wright's Algorithms 3.5 and 3.6, a step that satisfies the strong
  Wolfe criteria; the line search of :func:`~adamx.lbfgs`.
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
    "scale_by_backtracking_linesearch",
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


def tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def values_dtype(params: Params) -> Any:
    """The real dtype of the first leaf: the dtype of values and step sizes."""
    leaf = jax.tree.leaves(params)[0]
    return jnp.real(jnp.empty((), dtype_of(leaf))).dtype


def dtype_of(p: Any) -> Any:
    """A leaf's dtype: an array's, a shape/dtype struct's, a Python number's."""
    dtype = getattr(p, "dtype", None)
    return jnp.dtype(dtype) if dtype is not None else jnp.asarray(p).dtype


def _default_float() -> Any:
    return jnp.result_type(float)


# ------------------------------------------------------------ arguments


def check_steps(name: str, value: Any, *, allow_zero: bool) -> None:
    """A count of evaluations: an integer (a traced one is let through)."""
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, jax.Array) and value.ndim == 0:
        if jnp.issubdtype(value.dtype, jnp.integer):
            value = int(value)
    checks.check_positive_int(name, value, allow_zero=allow_zero)


def split_kwargs(
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
            f"{name}.update: Unexpected keyword arguments {unused}: value_fn "
            f"does not take them (its parameters: {list(parameters)}); pass only "
            "the arguments value_fn needs"
        )
    return dict(extra_args)


def require_extra_args(name: str, value: Any, grad: Any, value_fn: Any) -> None:
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
        increase_factor: :math:`\gamma_+ > 0`, how much the first guess may
            exceed the last accepted step (``math.inf``: start at
            :math:`\eta_{\max}` each round; below 1, the guess shrinks).
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
    check_steps("max_backtracking_steps", max_backtracking_steps, allow_zero=True)
    checks.check_range("slope_rtol", slope_rtol, 0.0, 1.0, high_open=True)
    checks.check_range(
        "decrease_factor", decrease_factor, 0.0, 1.0, low_open=True, high_open=True
    )
    checks.check_range("increase_factor", increase_factor, 0.0, math.inf, low_open=True)
    checks.check_range(
        "max_learning_rate", max_learning_rate, 0.0, math.inf, low_open=True
    )
    checks.check_nonnegative("atol", atol)
    checks.check_nonnegative("rtol", rtol)
    checks.check_bool("store_grad", store_grad)
    checks.check_bool("verbose", verbose)
    name = "scale_by_backtracking_linesearch"

    def init_fn(params: Params) -> ScaleByBacktrackingLinesearchState:
        dtype = values_dtype(params)
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
        require_extra_args(name, value, grad, value_fn)
        assert value_fn is not None and value is not None
        kwargs = split_kwargs(value_fn, extra_args, name)

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
        :class:`~adamx.ScaleByZoomLinesearchState`, or a
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
