r"""Sharpness-aware minimization: a step uphill, then the real step from there.

SAM (Foret et al., 2021) takes the gradient not at the params :math:`w` but at
the worst point nearby, :math:`w + \rho\, g / \|g\|`, and applies it to
:math:`w`. :func:`sam` wraps two optimizers to do it: an *adversarial* one that
climbs (:func:`normalize` then SGD with rate :math:`\rho` is the paper's), and
the *outer* one that takes the real step. Names, arguments, defaults and state
classes are ``optax.contrib``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.base import (
    ELEMENTWISE,
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    apply_updates,
    require_params,
    wider_dtype,
)
from adamx.combine import check_transformation
from adamx.traits import Traits, chained, traits_of
from adamx.transforms import global_norm

__all__ = ["NormalizeState", "SAMState", "normalize", "sam"]

#: State of :func:`normalize`: it keeps none.
NormalizeState = EmptyState


def normalize() -> GradientTransformation:
    r"""Scale the updates to unit norm over the whole tree.

    .. math::
        u_t = \frac{g_t}{\|g_t\|_2}, \qquad
        \|g_t\|_2 = \Big(\sum_i \sum_j |g^{(i)}_{t,j}|^2\Big)^{1/2}

    SAM's adversarial direction (its :math:`\hat\epsilon(w)` for :math:`p = 2`);
    chained with :func:`~adamx.sgd` at rate :math:`\rho`, it is the step to
    :math:`w + \rho\, g / \|g\|`. The norm is summed in at least float32 and
    counts :math:`|g|` for complex leaves. A zero gradient stays zero (Optax
    divides 0 by 0 and returns NaN).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`NormalizeState` (an :class:`~adamx.EmptyState`).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.normalize()
        >>> grads = {"a": jnp.array([3.0]), "b": jnp.array([0.0, -4.0])}
        >>> tx.update(grads, tx.init(grads))[0]["b"]
        Array([ 0. , -0.8], dtype=float32)

    References:
        Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", https://arxiv.org/abs/2010.01412
    """

    def init_fn(params: Params) -> NormalizeState:
        del params
        return NormalizeState()

    def update_fn(
        updates: Updates, state: NormalizeState, params: Params | None = None
    ) -> tuple[Updates, NormalizeState]:
        del params
        norm = global_norm(updates)
        # A zero gradient is divided by 1: it stays zero, not NaN.
        norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))

        def scaled(g: jax.Array) -> jax.Array:
            ct = wider_dtype(g.dtype, norm.dtype)
            return (g.astype(ct) / norm.astype(ct)).astype(g.dtype)

        return jax.tree.map(scaled, updates), state

    return GradientTransformation(init_fn, update_fn, ELEMENTWISE)


class SAMState(NamedTuple):
    """State of :func:`sam`."""

    steps_since_sync: jax.Array  # shape=(), int32: calls since the last outer step
    opt_state: OptState  # the outer optimizer's state
    adv_state: OptState  # the adversarial optimizer's state
    cache: Params | None  # like params: where the period started (None: opaque)


GradFn = Callable[[Params, int], Updates]


def _select(cond: jax.Array, if_true: Any, if_false: Any) -> Any:
    """``if_true`` where ``cond`` holds, else ``if_false``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), if_true, if_false)


def _negated(tree: Updates) -> Updates:
    return jax.tree.map(lambda u: -u, tree)


def sam(
    optimizer: GradientTransformation,
    adv_optimizer: GradientTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformation:
    r"""Sharpness-aware minimization (Foret et al., 2021) around any optimizer.

    With :math:`k` = ``sync_period``, each period starts at the params
    :math:`w`, takes :math:`k - 1` steps of the adversarial optimizer
    :math:`A` *up* the loss, and then one step of the outer optimizer
    :math:`O` from :math:`w` with the gradient found at the last point:

    .. math::
        \begin{aligned}
        w_0 &= w, \qquad w_i = w_{i-1} - A\big(g(w_{i-1})\big), \quad
        i = 1, \dots, k - 1 \\
        w &\leftarrow w + O\big(g(w_{k-1})\big)
        \end{aligned}

    where :math:`A` and :math:`O` return updates to add, as every optimizer
    does (so :math:`A` = ``chain(normalize(), sgd(rho))`` climbs to
    :math:`w + \rho\, g / \|g\|`, the paper's SAM for :math:`k = 2`). The
    outer optimizer sees :math:`w` as its params, so its weight decay acts on
    the real params.

    Two ways to run a period. Transparent (``opaque_mode=False``): each call
    of ``update`` is one gradient; the :math:`k - 1` adversarial calls return
    the climbing steps, and the :math:`k`-th returns the step from
    :math:`w_{k-1}` back to :math:`w` plus the outer step. Opaque
    (``opaque_mode=True``): one call runs the whole period, calling
    ``grad_fn(params, i)`` for the gradient at each adversarial point, and
    returns the outer step alone, so that nothing else in the training loop
    (batch-norm statistics, counters) sees the adversarial points.

    Where Optax differs: with ``sync_period=1`` in the transparent mode,
    Optax's step starts from the previous call's params (the cache of the
    period before), so the params move back and forth; here that period is
    the outer optimizer's plain step, as in the opaque mode. With
    ``sync_period >= 2`` the two agree. A zero gradient in :func:`normalize`
    gives a zero step rather than NaN.

    Args:
        optimizer: the outer optimizer :math:`O`.
        adv_optimizer: the adversarial optimizer :math:`A` (its updates are
            negated: it climbs).
        sync_period: :math:`k \ge 1`, gradients per outer step (2: the paper's
            one adversarial step).
        reset_state: re-initialize the adversarial optimizer's state at each
            outer step.
        opaque_mode: run a whole period in one call, with ``grad_fn``.
        batch_axis_name: in the opaque mode under ``pmap``, the axis over
            which the adversarial gradients are averaged (``lax.pmean``).

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`SAMState`. Its ``update`` needs the params; in the opaque
        mode also ``grad_fn=``, a function ``(params, i) -> gradients`` of
        the adversarial step ``i``. Other keyword arguments are ignored.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> loss = lambda p: jnp.sum(p**2)
        >>> adv = adamx.chain(adamx.normalize(), adamx.sgd(0.5))
        >>> tx = adamx.sam(adamx.sgd(0.1), adv)
        >>> params = jnp.array([3.0, 4.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):  # climb to w + 0.5 g / |g|, then step from w
        ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        ...     print(params)
        [3.3 4.4]
        [2.34 3.12]

    References:
        Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", https://arxiv.org/abs/2010.01412; Optax's
        ``optax.contrib.sam``,
        https://optax.readthedocs.io/en/latest/api/contrib.html
    """
    check_transformation("optimizer", optimizer)
    check_transformation("adv_optimizer", adv_optimizer)
    checks.check_positive_int("sync_period", sync_period)
    checks.check_bool("reset_state", reset_state)
    checks.check_bool("opaque_mode", opaque_mode)
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise TypeError(
            f"batch_axis_name must be None or an axis name (a str), got "
            f"{batch_axis_name!r}"
        )

    def init_fn(params: Params) -> SAMState:
        return SAMState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            opt_state=optimizer.init(params),
            adv_state=adv_optimizer.init(params),
            cache=None if opaque_mode else params,
        )

    def transparent_update(
        updates: Updates,
        state: SAMState,
        params: Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SAMState]:
        del grad_fn, extra_args
        require_params("sam", params)
        steps = state.steps_since_sync
        first, last = steps == 0, steps == sync_period - 1
        # w: the params where this period started (these, on its first call).
        cache = _select(first, params, state.cache)

        adv_updates, adv_state = adv_optimizer.update(updates, state.adv_state, params)
        climb = _negated(adv_updates)
        outer, opt_state = optimizer.update(updates, state.opt_state, cache)

        def back_and_step(w: jax.Array, p: jax.Array, u: jax.Array) -> jax.Array:
            ct = wider_dtype(w.dtype, p.dtype, u.dtype)
            return (w.astype(ct) - p.astype(ct) + u.astype(ct)).astype(u.dtype)

        outer = jax.tree.map(back_and_step, cache, params, outer)
        new_updates = jax.tree.map(
            lambda o, c, g: jnp.where(last, o, c.astype(o.dtype)).astype(g.dtype),
            outer,
            climb,
            updates,
        )
        if reset_state:
            kept = adv_optimizer.init(params)
        else:
            kept = state.adv_state
        return new_updates, SAMState(
            steps_since_sync=(steps + 1) % sync_period,
            opt_state=_select(last, opt_state, state.opt_state),
            adv_state=_select(last, kept, adv_state),
            cache=cache,
        )

    def opaque_update(
        updates: Updates,
        state: SAMState,
        params: Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SAMState]:
        del extra_args
        require_params("sam", params)
        if grad_fn is None:
            raise ValueError(
                "sam(opaque_mode=True) needs grad_fn: call update(updates, state, "
                "params, grad_fn=grad_fn), grad_fn(params, i) returning the "
                "gradients at the adversarial step i"
            )
        grads, point, adv_state = updates, params, state.adv_state
        for i in range(sync_period - 1):
            climb, adv_state = adv_optimizer.update(grads, adv_state, point)
            point = apply_updates(point, _negated(climb))
            grads = grad_fn(point, i)
            if batch_axis_name is not None:
                grads = jax.lax.pmean(grads, axis_name=batch_axis_name)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        new_updates, opt_state = optimizer.update(grads, state.opt_state, params)
        return new_updates, SAMState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            opt_state=opt_state,
            adv_state=adv_state,
            cache=None,
        )

    parts = chained([(0, traits_of(optimizer)), (1, traits_of(adv_optimizer))])
    return GradientTransformationExtraArgs(
        init_fn,
        opaque_update if opaque_mode else transparent_update,
        Traits(elementwise=parts.elementwise),
        derived=True,
    )
