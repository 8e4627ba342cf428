r"""Complex params as pairs of real ones, for optimizers written for real params.

adamx's Adam family takes complex params as they are (second moments of
:math:`|g|^2`); :func:`split_real_and_imaginary` instead runs any optimizer on
the real and imaginary parts as two real params, and puts its updates back
together. For a complex param :math:`z = x + iy` of a real loss,
``jax.grad`` returns :math:`\overline{\partial L / \partial x + i\,
\partial L / \partial y}`: conjugate the gradients before ``update`` so that
the parts are the gradients of the parts. Names, arguments and the state
class are ``optax.contrib``'s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    wider_dtype,
)
from adamx.combine import call_update, check_transformation
from adamx.traits import Traits, traits_of

__all__ = [
    "SplitRealAndImaginaryArrays",
    "SplitRealAndImaginaryState",
    "split_real_and_imaginary",
]


class SplitRealAndImaginaryArrays(NamedTuple):
    """The two real arrays a complex leaf becomes inside
    :func:`split_real_and_imaginary` (and in its inner state)."""

    real: jax.Array  # the real part, in the complex dtype's real dtype
    imaginary: jax.Array  # the imaginary part, likewise


class SplitRealAndImaginaryState(NamedTuple):
    """State of :func:`split_real_and_imaginary`."""

    inner_state: OptState  # the inner transformation's, on the split params


def _split(x: Any) -> Any:
    if x is not None and jnp.iscomplexobj(x):
        return SplitRealAndImaginaryArrays(jnp.real(x), jnp.imag(x))
    return x


def _is_pair(x: Any) -> bool:
    return isinstance(x, SplitRealAndImaginaryArrays)


def _merge(x: Any) -> Any:
    if not _is_pair(x):
        return x
    ct = wider_dtype(x.real.dtype, x.imaginary.dtype)
    return jax.lax.complex(x.real.astype(ct), x.imaginary.astype(ct))


def split_real_and_imaginary(
    inner: GradientTransformation,
) -> GradientTransformation:
    r"""Run ``inner`` on the real and imaginary parts of complex leaves apart.

    .. math::
        z = x + iy \;\mapsto\; (x, y), \qquad
        (u_x, u_y) = \text{inner}(g_x, g_y), \qquad
        u_z = u_x + i\, u_y

    Each complex leaf of the params and updates becomes a
    :class:`SplitRealAndImaginaryArrays` pair of real arrays, which ``inner``
    treats as two leaves; real leaves pass as they are. So Adam on the parts
    keeps separate second moments :math:`g_x^2` and :math:`g_y^2`, where
    Adam on the complex leaf keeps one of :math:`|g_z|^2`, and optimizers
    that refuse complex params (ADOPT, Sophia, ...) can run on them. The
    parts are merged exactly (``jax.lax.complex``); extra keyword
    arguments of ``update`` go to ``inner``.

    Args:
        inner: the transformation to run on real arrays.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`SplitRealAndImaginaryState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.split_real_and_imaginary(adamx.scale_by_adam())
        >>> params = jnp.array([1.0 + 2.0j])
        >>> u, _ = tx.update(jnp.array([3.0 - 0.5j]), tx.init(params), params)
        >>> u.round(4)  # Adam's first step on each part: its sign
        Array([1.-1.j], dtype=complex64)

    References:
        Optax's ``optax.contrib.split_real_and_imaginary``,
        https://optax.readthedocs.io/en/latest/api/contrib.html
    """
    check_transformation("inner", inner)

    def init_fn(params: Params) -> SplitRealAndImaginaryState:
        return SplitRealAndImaginaryState(inner.init(jax.tree.map(_split, params)))

    def update_fn(
        updates: Updates,
        state: SplitRealAndImaginaryState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SplitRealAndImaginaryState]:
        split_params = None if params is None else jax.tree.map(_split, params)
        new_updates, inner_state = call_update(
            inner,
            jax.tree.map(_split, updates),
            state.inner_state,
            split_params,
            extra_args,
        )
        merged = jax.tree.map(_merge, new_updates, is_leaf=_is_pair)
        return merged, SplitRealAndImaginaryState(inner_state)

    traits = Traits(elementwise=traits_of(inner).elementwise)
    return GradientTransformationExtraArgs(init_fn, update_fn, traits, derived=True)
