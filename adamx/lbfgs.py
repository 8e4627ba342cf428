r"""L-BFGS: a quasi-Newton direction from the last few steps, and its line search.

:func:`scale_by_lbfgs` multiplies the gradient by an approximation of the
inverse Hessian built from the last ``memory_size`` differences of params and
gradients (Nocedal & Wright's two-loop recursion, their Algorithm 7.4);
:func:`lbfgs` chains it with a step size, by default the zoom line search of
:mod:`adamx.zoom_linesearch`, which needs the objective: ``update`` takes
``value``, ``grad`` and ``value_fn``. Names, arguments, defaults, states and
numbers are Optax's (``optax.lbfgs``, ``optax.scale_by_lbfgs``).
"""

from __future__ import annotations

from typing import NamedTuple, cast

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
    identity,
    safe_increment,
)
from adamx.combine import chain, check_transformation
from adamx.linesearch import (
    add_scaled,
    cast_like,
    dtype_of,
    scaled,
    tree_sq_norm,
    tree_vdot,
)
from adamx.transforms import scale, scale_by_learning_rate
from adamx.zoom_linesearch import scale_by_zoom_linesearch

__all__ = ["ScaleByLBFGSState", "lbfgs", "scale_by_lbfgs"]


class ScaleByLBFGSState(NamedTuple):
    """State of :func:`scale_by_lbfgs`; ``m`` is ``memory_size``."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken
    params: Params  # like params: the params at the last step
    updates: Params  # like params: the incoming updates (gradients) there
    # like params with a leading axis m: the last m differences of params,
    # a ring buffer whose slot (count - 1) % m is the newest
    diff_params_memory: Params
    diff_updates_memory: Params  # the same for the updates
    # shape=(m,), default float: 1 / <diff_updates, diff_params> per slot
    weights_memory: jax.Array


def two_loop_recursion(
    updates: Updates,
    diff_params_memory: Params,
    diff_updates_memory: Params,
    weights_memory: jax.Array,
    identity_scale: jax.typing.ArrayLike,
    memory_idx: jax.Array,
) -> Updates:
    r"""The L-BFGS product :math:`H_k g` by Nocedal & Wright's Algorithm 7.4.

    .. math::
        \begin{aligned}
        q &\leftarrow g; \quad \alpha_i \leftarrow \rho_i \langle s_i, q \rangle,
        \; q \leftarrow q - \alpha_i y_i \quad (i = k-1, \dots, k-m) \\
        r &\leftarrow \gamma_k q; \quad \beta \leftarrow \rho_i \langle y_i, r
        \rangle, \; r \leftarrow r + (\alpha_i - \beta) s_i \quad (i = k-m,
        \dots, k-1)
        \end{aligned}

    with :math:`s_i, y_i, \rho_i` the memory's params differences, updates
    differences and weights, oldest at ``memory_idx``. Empty slots hold zeros
    and change nothing.

    Args:
        updates: :math:`g`.
        diff_params_memory: :math:`s`, each leaf stacked along a first axis m.
        diff_updates_memory: :math:`y`, likewise.
        weights_memory: :math:`\rho`, shape ``(m,)``.
        identity_scale: :math:`\gamma_k`, the initial inverse Hessian's scale.
        memory_idx: the slot of the oldest pair.

    Returns:
        :math:`r = H_k g`, like ``updates``.
    """
    m = weights_memory.shape[0]
    # Oldest to newest.
    order = (memory_idx + jnp.arange(m)) % m

    def pair(i: jax.Array) -> tuple:
        return jax.tree.map(lambda x: x[i], (diff_params_memory, diff_updates_memory))

    def newest_first(q: Updates, i: jax.Array) -> tuple:
        s, y = pair(i)
        alpha = weights_memory[i] * jnp.real(tree_vdot(s, q))
        return cast_like(add_scaled(q, -alpha, y), q), alpha

    q, alphas = jax.lax.scan(newest_first, updates, order, reverse=True)  # type: ignore[var-annotated]
    r = scaled(identity_scale, q)

    def oldest_first(r: Updates, i_alpha: tuple) -> tuple:
        i, alpha = i_alpha
        s, y = pair(i)
        beta = weights_memory[i] * jnp.real(tree_vdot(y, r))
        return cast_like(add_scaled(r, alpha - beta, s), r), beta

    r, _ = jax.lax.scan(oldest_first, r, (order, alphas))
    return r


def scale_by_lbfgs(
    memory_size: int = 10,
    scale_init_precond: bool = True,
) -> GradientTransformation:
    r"""L-BFGS: multiply the updates by a limited-memory inverse Hessian.

    .. math::
        \begin{aligned}
        s_{k-1} &= w_k - w_{k-1}, \qquad y_{k-1} = g_k - g_{k-1}, \qquad
        \rho_{k-1} = 1 / \langle y_{k-1}, s_{k-1} \rangle \\
        H_k &= V_{k-1}^\top H_{k-1} V_{k-1} + \rho_{k-1} s_{k-1} s_{k-1}^\top,
        \qquad V_i = I - \rho_i y_i s_i^\top,
        \qquad H_{k-m} = \gamma_k I \\
        \gamma_k &= \langle s_{k-1}, y_{k-1} \rangle / \|y_{k-1}\|^2, \qquad
        \gamma_0 = \min(1, 1 / \|g_0\|), \qquad u_k = H_k g_k
        \end{aligned}

    with :math:`w_k` the params and :math:`g_k` the incoming updates at step
    :math:`k` and :math:`m` = ``memory_size``: the last :math:`m` pairs
    :math:`(s_i, y_i)` define :math:`H_k`, and :math:`H_k g_k` is computed by
    the two-loop recursion (Nocedal & Wright's Algorithm 7.4) without forming
    a matrix. A pair with :math:`\langle y, s \rangle = 0` gets
    :math:`\rho = 0` and is ignored. The memory is updated before the product,
    so that a line search after this stage sees :math:`w_k` already moved.
    The result is the direction :math:`H_k g_k` (a descent direction after a
    sign flip: :func:`lbfgs` adds the step size).

    :math:`\gamma_k` is Nocedal & Wright's (7.20) with
    ``scale_init_precond=True`` and 1 without. At the first step, with no
    pairs, Optax's :math:`\gamma_0 = \min(1, 1/\|g_0\|)` keeps the first step
    inside the unit ball; the references leave :math:`\gamma_0` open. Names,
    arguments, defaults and numbers are Optax's.

    Args:
        memory_size: :math:`m \ge 1`, how many pairs to keep.
        scale_init_precond: scale the initial inverse Hessian by
            :math:`\gamma_k` (else the identity).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByLBFGSState`; ``update`` needs the params.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_lbfgs()
        >>> w = jnp.array([3.0, 4.0])
        >>> state = tx.init(w)
        >>> u, state = tx.update(w, state, w)  # the gradient of |w|^2 / 2
        >>> print(u)  # gamma_0 = 1 / |g_0|
        [0.6 0.8]

    References:
        Nocedal & Wright, 2006, "Numerical Optimization", Algorithms 7.4 and
        7.5, https://doi.org/10.1007/978-0-387-40065-5;
        Liu & Nocedal, 1989, "On the limited memory BFGS method for large
        scale optimization", https://doi.org/10.1007/BF01589116;
        ``optax.scale_by_lbfgs``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    checks.check_positive_int("memory_size", memory_size)
    checks.check_bool("scale_init_precond", scale_init_precond)

    def init_fn(params: Params) -> ScaleByLBFGSState:
        memory = jax.tree.map(
            lambda p: jnp.zeros((memory_size, *jnp.shape(p)), dtype_of(p)),
            params,
        )
        return ScaleByLBFGSState(
            count=jnp.zeros([], jnp.int32),
            params=jax.tree.map(jnp.zeros_like, params),
            updates=jax.tree.map(jnp.zeros_like, params),
            diff_params_memory=memory,
            diff_updates_memory=memory,
            weights_memory=jnp.zeros(memory_size),
        )

    def update_fn(
        updates: Updates, state: ScaleByLBFGSState, params: Params | None = None
    ) -> tuple[Updates, ScaleByLBFGSState]:
        if params is None:
            raise ValueError(
                "scale_by_lbfgs needs the current params: call "
                "update(updates, state, params)"
            )
        k = state.count
        memory_idx = k % memory_size
        newest = (k - 1) % memory_size

        # The pair of the step just taken; none before the first step.
        s = jax.tree.map(lambda a, b: a - b, params, state.params)
        y = jax.tree.map(lambda a, b: a - b, updates, state.updates)
        ys = jnp.real(tree_vdot(y, s))
        rho = jnp.where(ys == 0.0, 0.0, 1.0 / ys)
        s, y, rho = jax.tree.map(
            lambda x: jnp.where(k > 0, x, jnp.zeros_like(x)), (s, y, rho)
        )
        s_mem, y_mem, rho_mem = jax.tree.map(
            lambda mem, x: mem.at[newest].set(x),
            (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
            (s, y, rho),
        )

        if scale_init_precond:
            yy = tree_sq_norm(y)
            gamma = jnp.where(yy > 0.0, jnp.real(tree_vdot(y, s)) / yy, 1.0)
            # No pair yet: the first step goes at most a unit distance.
            g_norm = jnp.sqrt(tree_sq_norm(jax.lax.stop_gradient(updates)))
            gamma = jnp.where(k > 0, gamma, jnp.minimum(1.0, 1.0 / g_norm))
        else:
            gamma = jnp.asarray(1.0)

        direction = two_loop_recursion(
            updates, s_mem, y_mem, rho_mem, gamma, memory_idx
        )
        return direction, ScaleByLBFGSState(
            count=safe_increment(k),
            params=params,
            updates=updates,
            diff_params_memory=s_mem,
            diff_updates_memory=y_mem,
            weights_memory=rho_mem,
        )

    return GradientTransformation(init_fn, update_fn)


#: lbfgs's default line search, Optax's: the zoom, 20 evaluations at most,
#: starting each round at a step size of 1.
_ZOOM_FROM_ONE = scale_by_zoom_linesearch(
    max_linesearch_steps=20, initial_guess_strategy="one"
)


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _ZOOM_FROM_ONE,
) -> GradientTransformationExtraArgs:
    r"""L-BFGS with a line search (Liu & Nocedal, 1989).

    .. math::
        w_{k+1} = w_k - \eta_k H_k \nabla f(w_k)

    with :math:`H_k` the limited-memory inverse Hessian of
    :func:`scale_by_lbfgs` and :math:`\eta_k` from ``linesearch`` (by default
    the zoom line search, strong Wolfe criteria, starting each round at
    :math:`\eta = 1`), times ``learning_rate`` if one is given. It is
    ``chain(scale_by_lbfgs(...), scale(-1) or scale_by_learning_rate(lr),
    linesearch)``, as in Optax, whose names, arguments, defaults and numbers
    these are. ``update`` takes the extra keyword arguments the line search
    needs: ``value`` (:math:`f(w_k)`), ``grad`` (:math:`\nabla f(w_k)`) and
    ``value_fn`` (:math:`f`); :func:`~adamx.value_and_grad_from_state`
    reuses the value and gradient the line search computed at the new point.

    Args:
        learning_rate: a number or a schedule scaling the step; ``None`` (the
            default) leaves the step size to the line search.
        memory_size: how many past pairs of differences to keep (see
            :func:`scale_by_lbfgs`).
        scale_init_precond: scale the initial inverse Hessian by
            :math:`\gamma_k` (see :func:`scale_by_lbfgs`).
        linesearch: the line search (a transformation taking ``value``,
            ``grad`` and ``value_fn``), or ``None`` for none.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs`; its state is a
        tuple of the three stages' states.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> import jax
        >>> def f(w):  # Rosenbrock's function, minimum at (1, 1)
        ...     return (1.0 - w[0]) ** 2 + 100.0 * (w[1] - w[0] ** 2) ** 2
        >>> tx = adamx.lbfgs()
        >>> value_and_grad = adamx.value_and_grad_from_state(f)
        >>> @jax.jit
        ... def step(w, state):
        ...     value, grad = value_and_grad(w, state=state)
        ...     u, state = tx.update(
        ...         grad, state, w, value=value, grad=grad, value_fn=f
        ...     )
        ...     return adamx.apply_updates(w, u), state
        >>> w = jnp.array([-1.2, 1.0])
        >>> state = tx.init(w)
        >>> for _ in range(40):
        ...     w, state = step(w, state)
        >>> print(w)
        [1. 1.]

    References:
        Liu & Nocedal, 1989, "On the limited memory BFGS method for large
        scale optimization", https://doi.org/10.1007/BF01589116;
        Nocedal & Wright, 2006, "Numerical Optimization", Algorithms 7.4 and
        7.5, https://doi.org/10.1007/978-0-387-40065-5;
        ``optax.lbfgs``, https://optax.readthedocs.io/en/latest/api/optimizers.html
    """
    if learning_rate is None:
        step: GradientTransformation = scale(-1.0)
    else:
        checks.check_scalar_or_schedule("learning_rate", learning_rate)
        step = scale_by_learning_rate(learning_rate)
    if linesearch is None:
        linesearch = identity()
    else:
        check_transformation("linesearch", linesearch)
    tx = chain(
        scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond),
        step,
        linesearch,
    )
    return cast(GradientTransformationExtraArgs, tx)
