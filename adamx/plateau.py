r"""Reduce the learning rate when a monitored value stops improving.

:func:`reduce_on_plateau` scales the updates by a factor that it lowers each
time the value passed to ``update`` (a validation loss, say) has not improved
for ``patience`` evaluations, as Keras' and PyTorch's ``ReduceLROnPlateau``
callbacks do, but inside the optimizer's state, so the whole loop stays one
jitted step. Names, arguments, defaults and the state class are
``optax.contrib``'s.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    ELEMENTWISE,
    GradientTransformationExtraArgs,
    Params,
    Updates,
    is_concrete,
    safe_increment,
    wider_dtype,
)
from adamx.storage import real_dtype
from adamx.tree import dtype as tree_dtype

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`."""

    scale: jax.Array  # shape=(), the params' lowest real dtype: the factor applied
    best_value: jax.Array  # shape=(), their highest real dtype: the best average
    plateau_count: jax.Array  # shape=(), int32: evaluations without improvement
    cooldown_count: jax.Array  # shape=(), int32: evaluations left in cooldown
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: values in avg_value
    avg_value: jax.Array  # shape=(), like best_value: mean of the values so far


def _check_count(name: str, value: Any, low: int) -> None:
    """An integer >= ``low`` (a Python int or a concrete 0-d array); traced or
    injected floats pass."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value) if is_concrete(value) else None
    if (
        isinstance(value, (bool, np.bool_))
        or arr is None
        or arr.ndim != 0
        or not (
            np.issubdtype(arr.dtype, np.integer)
            or (np.issubdtype(arr.dtype, np.floating) and float(arr).is_integer())
        )
    ):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if arr < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


def _concrete_float(value: Any) -> float | None:
    return float(np.asarray(value)) if is_concrete(value) else None


def reduce_on_plateau(
    factor: float = 0.1,
    patience: jax.typing.ArrayLike = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: jax.typing.ArrayLike = 0,
    accumulation_size: jax.typing.ArrayLike = 1,
    min_scale: jax.typing.ArrayLike = 0.0,
) -> GradientTransformationExtraArgs:
    r"""Lower the scale of the updates when the monitored value plateaus.

    Each call of ``update`` takes a ``value``; every
    :math:`n` = ``accumulation_size`` calls, their mean :math:`\bar f` is one
    evaluation. It improves on the best so far, :math:`f^\star`, when

    .. math::
        \bar f < (1 - r) f^\star - a ,

    which makes :math:`\bar f` the new best and resets the plateau count
    :math:`p`; otherwise :math:`p` grows by one. When :math:`p` reaches
    :math:`P` = ``patience``, the scale drops,

    .. math::
        s \leftarrow \max(\gamma s, s_{\min}), \qquad p \leftarrow 0 ,

    and the next :math:`C` = ``cooldown`` evaluations only count down (they may
    still record a new best). Every update is :math:`u_t = s\, g_t`. The
    plateau is counted as Keras counts it (reduced at the :math:`P`-th
    evaluation without improvement; PyTorch waits one more).

    Args:
        factor: :math:`\gamma \in (0, 1)`, the factor of each reduction.
        patience: :math:`P \ge 1`, evaluations without improvement before one.
        rtol: :math:`r \in [0, 1]`, the relative margin of an improvement.
        atol: :math:`a \ge 0`, the absolute margin (not both 0).
        cooldown: :math:`C \ge 0`, evaluations to wait after a reduction.
        accumulation_size: :math:`n \ge 1`, values averaged per evaluation
            (1 for a validation loss; more for noisy minibatch losses).
        min_scale: :math:`s_{\min} \ge 0`, below which the scale stops.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`ReduceLROnPlateauState`; its ``update`` needs ``value=``.
        The scale is kept in the params' lowest real dtype, the values in
        their highest.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.reduce_on_plateau(factor=0.5, patience=2)
        >>> state = tx.init(jnp.zeros(1))
        >>> for loss in [1.0, 0.9, 0.95, 0.92]:  # two evaluations above 0.9
        ...     u, state = tx.update(jnp.ones(1), state, value=loss)
        >>> u, state.best_value
        (Array([0.5], dtype=float32), Array(0.9, dtype=float32))

    References:
        Optax's ``optax.contrib.reduce_on_plateau``,
        https://optax.readthedocs.io/en/latest/api/contrib.html; Keras'
        ``ReduceLROnPlateau``,
        https://keras.io/api/callbacks/reduce_lr_on_plateau/
    """
    checks.check_range("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    checks.check_range("rtol", rtol, 0.0, 1.0)
    checks.check_nonnegative("atol", atol)
    if _concrete_float(rtol) == 0.0 and _concrete_float(atol) == 0.0:
        raise ValueError(
            "reduce_on_plateau needs rtol or atol above 0, or no value counts as "
            f"an improvement over an equal one: got rtol={rtol!r} and atol={atol!r}"
        )
    # Optax takes patience=0 and then never reduces (a count that has grown
    # past 0 never equals it); refused here.
    _check_count("patience", patience, 1)
    _check_count("cooldown", cooldown, 0)
    _check_count("accumulation_size", accumulation_size, 1)
    checks.check_nonnegative("min_scale", min_scale)

    def init_fn(params: Params) -> ReduceLROnPlateauState:
        lowest = real_dtype(tree_dtype(params, "lowest"))
        highest = real_dtype(tree_dtype(params, "highest"))
        if not jnp.issubdtype(lowest, jnp.floating):
            lowest = highest = jax.dtypes.canonicalize_dtype(jnp.float64)
        return ReduceLROnPlateauState(
            scale=jnp.ones([], lowest),
            best_value=jnp.full([], math.inf, highest),
            plateau_count=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], highest),
        )

    def evaluate(state: ReduceLROnPlateauState) -> ReduceLROnPlateauState:
        """One evaluation of the averaged value: best, plateau, scale."""
        vdt = state.best_value.dtype
        r = jnp.asarray(rtol).astype(vdt)
        a = jnp.asarray(atol).astype(vdt)
        improved = state.avg_value < (1 - r) * state.best_value - a
        best = jnp.where(improved, state.avg_value, state.best_value)
        plateau = jnp.where(improved, 0, safe_increment(state.plateau_count))
        waiting = state.cooldown_count > 0
        reduce = jnp.logical_and(
            jnp.logical_not(waiting),
            plateau == jnp.asarray(patience).astype(jnp.int32),
        )
        sdt = state.scale.dtype
        reduced = jnp.maximum(
            state.scale * jnp.asarray(factor).astype(sdt),
            jnp.asarray(min_scale).astype(sdt),
        )
        kept = jnp.maximum(state.scale, jnp.asarray(min_scale).astype(sdt))
        restart = jnp.logical_or(waiting, reduce)
        scale = jnp.where(waiting, state.scale, jnp.where(reduce, reduced, kept))
        cooldown_count = jnp.where(
            waiting,
            state.cooldown_count - 1,
            jnp.where(reduce, jnp.asarray(cooldown).astype(jnp.int32), 0),
        )
        return ReduceLROnPlateauState(
            scale=scale,
            best_value=best,
            plateau_count=jnp.where(restart, 0, plateau).astype(jnp.int32),
            cooldown_count=cooldown_count.astype(jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], vdt),
        )

    def update_fn(
        updates: Updates,
        state: ReduceLROnPlateauState,
        params: Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ReduceLROnPlateauState]:
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau needs the monitored value: call "
                "update(updates, state, params, value=loss)"
            )
        vdt = state.avg_value.dtype
        count = safe_increment(state.count)
        new = jnp.asarray(value).astype(vdt)
        total = state.count.astype(vdt) * state.avg_value + new
        state = state._replace(avg_value=total / count.astype(vdt), count=count)
        size = jnp.asarray(accumulation_size).astype(jnp.int32)
        state = jax.lax.cond(count == size, evaluate, lambda s: s, state)

        def scaled(g: jax.Array) -> jax.Array:
            ct = wider_dtype(g.dtype, state.scale.dtype)
            return (g.astype(ct) * state.scale.astype(ct)).astype(g.dtype)

        return jax.tree.map(scaled, updates), state

    return GradientTransformationExtraArgs(init_fn, update_fn, ELEMENTWISE)
