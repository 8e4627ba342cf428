"""Numerics: moment updates, and norms and counters with safe edges.

The moving averages of adaptive optimizers (:func:`update_moment`,
:func:`update_infinity_moment`, :func:`update_moment_per_elem_norm`, Optax's
``optax.tree.update_moment`` and friends, which :mod:`adamx.tree` re-exports);
norms whose gradient is finite at zero and counters that saturate instead of
overflowing (Optax's top-level ``optax.safe_norm``,
``optax.safe_root_mean_squares``, ``optax.safe_increment`` and
``optax.safe_int32_increment``). Same arguments and numbers as Optax's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adamx.base import safe_increment as _safe_int_increment
from adamx.moments import abs_sq
from adamx.transforms import _safe_rms

__all__ = [
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
]


def _is_none(x: Any) -> bool:
    return x is None


def safe_norm(
    x: jax.typing.ArrayLike,
    min_norm: jax.typing.ArrayLike,
    ord: int | float | str | None = None,  # Optax's name, as numpy's
    axis: None | tuple[int, ...] | int = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""The norm of ``x``, at least ``min_norm``, with a finite gradient at zero.

    .. math:: \max(\|x\|, n_{\min})

    Written as ``jnp.maximum(jnp.linalg.norm(x), min_norm)`` the gradient at
    :math:`x = 0` is NaN, since both branches are differentiated; here the
    norm is taken of ones wherever it falls below ``min_norm``, so the
    gradient there is zero.

    Args:
        x: an array.
        min_norm: :math:`n_{\min}`, the smallest value returned.
        ord: the order of the norm, as ``jax.numpy.linalg.norm``'s.
        axis: the axis (or pair of axes, for a matrix norm) to take it over;
            ``None`` takes it over the whole array (a vector norm for 1-D
            ``x``, Frobenius for 2-D).
        keepdims: keep the reduced axes, with size one.

    Returns:
        The norm, per ``axis``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.safe_norm(jnp.array([3.0, 4.0]), 1.0)
        Array(5., dtype=float32)
        >>> jax.grad(adamx.safe_norm)(jnp.zeros(2), 1e-6)
        Array([0., 0.], dtype=float32)

    References:
        Optax's ``optax.safe_norm``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    x = jnp.asarray(x)
    norm = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=True)
    ones_where_small = jnp.where(norm <= min_norm, jnp.ones_like(x), x)
    masked = jnp.linalg.norm(ones_where_small, ord=ord, axis=axis, keepdims=keepdims)
    if not keepdims:
        norm = jnp.squeeze(norm, axis=axis)
    return jnp.where(norm <= min_norm, min_norm, masked)


def safe_root_mean_squares(
    x: jax.typing.ArrayLike, min_rms: jax.typing.ArrayLike
) -> jax.Array:
    r"""The root mean square of ``x``, at least ``min_rms``, with a finite gradient
    at zero.

    .. math:: \max\Big(\sqrt{\tfrac{1}{n}\textstyle\sum_j |x_j|^2},\ r_{\min}\Big)

    The RMS of ones is taken wherever it falls below ``min_rms``, so the
    gradient there is zero instead of NaN. This is the RMS that
    :func:`adamx.clip_by_block_rms` and :func:`adamx.scale_by_param_block_rms`
    use.

    Args:
        x: an array (complex ones count :math:`|x|`).
        min_rms: :math:`r_{\min}`, the smallest value returned.

    Returns:
        A scalar array.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.safe_root_mean_squares(jnp.array([3.0, -3.0]), 1.0)
        Array(3., dtype=float32)

    References:
        Optax's ``optax.safe_root_mean_squares``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return _safe_rms(jnp.asarray(x), min_rms)


def safe_increment(count: jax.typing.ArrayLike) -> jax.typing.ArrayLike:
    r"""Add one to a counter, saturating at its dtype's largest value.

    .. math:: c_{t+1} = \min(c_t + 1,\ c_{\max})

    An ``int32`` step counter at :math:`2^{31} - 1` stays there instead of
    wrapping to :math:`-2^{31}`. Float counters saturate at their dtype's
    largest finite value.

    Args:
        count: an integer or floating-point counter.

    Returns:
        The incremented counter, in ``count``'s dtype.

    Raises:
        ValueError: for a counter of another dtype (bool, complex).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.safe_increment(jnp.asarray(2147483647, dtype=jnp.int32))
        Array(2147483647, dtype=int32)

    References:
        Optax's ``optax.safe_increment``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.integer):
        return _safe_int_increment(count)
    if jnp.issubdtype(count.dtype, jnp.floating):
        top = jnp.array(jnp.finfo(count.dtype).max, count.dtype)
        return jnp.where(count < top, count + jnp.ones([], count.dtype), top)
    raise ValueError(f"count must have an integer or floating dtype, got {count.dtype}")


#: Optax's older name of :func:`safe_increment`.
safe_int32_increment = safe_increment


# ---------------------------------------------------------------- moments


def update_moment(updates: Any, moments: Any, decay: Any, order: Any) -> Any:
    r"""The exponential moving average of the ``order``-th power of the updates.

    .. math:: m_t = (1 - \beta)\, g_t^{k} + \beta\, m_{t-1}

    ``None`` updates give ``None`` moments.

    Args:
        updates: :math:`g_t`, a tree.
        moments: :math:`m_{t-1}`, a tree of the same structure.
        decay: :math:`\beta`.
        order: :math:`k` (``2`` for Adam's second moment; for complex updates
            :math:`g^2`, not :math:`|g|^2`, see
            :func:`update_moment_per_elem_norm`).

    Returns:
        :math:`m_t`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.update_moment(jnp.array([2.0]), jnp.array([1.0]), 0.9, 2)
        Array([1.3], dtype=float32)

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization",
        https://arxiv.org/abs/1412.6980; Optax's ``optax.tree.update_moment``.
    """
    return jax.tree.map(
        lambda g, m: None if g is None else (1 - decay) * (g**order) + decay * m,
        updates,
        moments,
        is_leaf=_is_none,
    )


def update_infinity_moment(updates: Any, moments: Any, decay: Any, eps: Any) -> Any:
    r"""The exponentially weighted infinity norm of the updates (Adamax's).

    .. math:: u_t = \max(|g_t| + \epsilon,\ \beta\, u_{t-1})

    ``None`` updates give ``None``.

    Args:
        updates: :math:`g_t`, a tree.
        moments: :math:`u_{t-1}`, a tree of the same structure.
        decay: :math:`\beta`.
        eps: :math:`\epsilon`.

    Returns:
        :math:`u_t`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> g, u = jnp.array([-2.0]), jnp.array([3.0])
        >>> adamx.tree.update_infinity_moment(g, u, 0.5, 0.0)
        Array([2.], dtype=float32)

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization", §7.1,
        https://arxiv.org/abs/1412.6980; Optax's ``optax.tree.update_infinity_moment``.
    """
    return jax.tree.map(
        lambda g, m: None if g is None else jnp.maximum(jnp.abs(g) + eps, decay * m),
        updates,
        moments,
        is_leaf=_is_none,
    )


def _elementwise_power(g: jax.Array, order: Any) -> jax.Array:
    """:math:`|g|^k` for complex ``g`` (through :math:`|g|^2`), :math:`g^k` for real."""
    if jnp.isrealobj(g):
        return g**order
    half = order / 2
    # An integer power keeps the integer_pow of a real square.
    return abs_sq(g) ** (int(half) if float(half).is_integer() else half)


def update_moment_per_elem_norm(
    updates: Any, moments: Any, decay: Any, order: Any
) -> Any:
    r"""The exponential moving average of the ``order``-th power of :math:`|g|`.

    .. math:: m_t = (1 - \beta)\, |g_t|^{k} + \beta\, m_{t-1}

    For real updates :math:`g^k` (as :func:`update_moment`); for complex ones
    :math:`(g \bar g)^{k/2}`, which is real.

    Args:
        updates: :math:`g_t`, a tree.
        moments: :math:`m_{t-1}`, a tree of the same structure.
        decay: :math:`\beta`.
        order: :math:`k`.

    Returns:
        :math:`m_t`; ``None`` where the update is ``None``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> g, m = jnp.array([3j]), jnp.array([0.0])
        >>> adamx.tree.update_moment_per_elem_norm(g, m, 0.0, 2)
        Array([9.], dtype=float32)

    References:
        Optax's ``optax.tree.update_moment_per_elem_norm``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(
        lambda g, m: (
            None
            if g is None
            else (1 - decay) * _elementwise_power(g, order) + decay * m
        ),
        updates,
        moments,
        is_leaf=_is_none,
    )
