"""Argument validation shared by every factory in adamx.

Each check runs at construction time and raises ``ValueError`` or ``TypeError``
with a message that names the argument and echoes the value. Traced values
(for instance hyperparameters injected by :func:`adamx.inject_hyperparams`)
cannot be inspected at trace time and are let through.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import is_concrete, is_schedule


def _as_float(name: str, value: Any) -> float | None:
    """The value as a Python float, ``None`` if traced; raises on non-numbers."""
    if isinstance(value, bool) or not is_concrete(value):
        if isinstance(value, jax.core.Tracer):
            return None
        raise TypeError(f"{name} must be a real number, got {value!r}")
    arr = np.asarray(value)
    if arr.ndim != 0 or not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"{name} must be a real scalar, got {value!r}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    f = float(arr)
    if math.isnan(f):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return f


def check_range(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Check that a scalar hyperparameter lies in an interval.

    The interval is ``[low, high]``, each end open when ``low_open`` or
    ``high_open`` says so.
    """
    f = _as_float(name, value)
    if f is None:
        return
    too_low = f <= low if low_open else f < low
    too_high = f >= high if high_open else f > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def check_decay(name: str, value: Any) -> None:
    """A decay rate such as Adam's b1 or b2: a number in [0, 1)."""
    check_range(name, value, 0.0, 1.0, high_open=True)


def check_nonnegative(name: str, value: Any) -> None:
    """A finite number >= 0 (eps, weight decay, momentum, ...)."""
    check_range(name, value, 0.0, math.inf, high_open=True)


def check_finite(name: str, value: Any) -> None:
    """A finite real number of either sign."""
    f = _as_float(name, value)
    if f is not None and not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_scalar_or_schedule(
    name: str, value: Any, *, nonnegative: bool = True
) -> None:
    """A number, or a callable ``step -> number`` (a schedule)."""
    if is_schedule(value):
        return
    if isinstance(value, bool) or not (
        isinstance(value, jax.core.Tracer) or is_concrete(value)
    ):
        raise TypeError(
            f"{name} must be a number or a schedule (a callable of the step count), "
            f"got {value!r} of type {type(value).__name__}"
        )
    if nonnegative:
        check_nonnegative(name, value)
    else:
        check_finite(name, value)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """An integer > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    """A Python bool (a flag that changes the structure of the computation)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def check_float_dtype(name: str, dtype: Any) -> Any:
    """Canonicalize an optional floating dtype; ``None`` stays ``None``."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name} must be a floating dtype, got {dtype!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype, got {dtype!r}")
    return jax.dtypes.canonicalize_dtype(dt)


def check_moment_dtype(name: str, dtype: Any) -> Any:
    """Canonicalize an optional moment dtype: floating, or complex for complex
    params; ``None`` stays ``None``."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(
            f"{name} must be a floating or complex dtype, got {dtype!r}"
        ) from e
    if not jnp.issubdtype(dt, jnp.inexact):
        raise TypeError(f"{name} must be a floating or complex dtype, got {dtype!r}")
    return jax.dtypes.canonicalize_dtype(dt)


def check_adam_args(b1: Any, b2: Any, eps: Any, eps_root: Any) -> None:
    """Adam's decays in [0, 1), its eps and eps_root >= 0."""
    check_decay("b1", b1)
    check_decay("b2", b2)
    check_nonnegative("eps", eps)
    check_nonnegative("eps_root", eps_root)
