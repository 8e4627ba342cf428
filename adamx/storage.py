r"""How a transformation stores its moments: ``state_bits``, ``mu_dtype``, ``nu_dtype``.

A transformation that keeps moments per param (Adam's :math:`m` and :math:`v`,
a momentum buffer) describes them once, as :class:`Moment` entries, and takes a
:class:`Storage` parsed from its arguments at construction. Everything that
depends on how the moments are kept lives here:

* ``state_bits=32`` stores each moment in its dtype argument (``mu_dtype``,
  ``nu_dtype``), or the param's; ``16`` in bfloat16; ``8`` and ``4`` as
  block-wise codes (:class:`adamx.lowbit.QuantizedArray`) for floating params of
  at least :data:`MIN_QUANTIZED_SIZE` elements, float32 (or the params' dtype,
  if wider) for smaller ones.
* Second moments (``signed=False``) of complex params are real: they hold
  :math:`|g|^2`, stored in the param's real dtype. A complex param's other
  moments stay complex, at the precision a real dtype argument asks for
  (``mu_dtype=float32``: complex64), and at full precision whatever
  ``state_bits`` says. A complex dtype argument keeps a real param's first
  moments in that dtype (their imaginary parts stay zero), as Optax does.
* Codes live where their param does: split by whole blocks over the axes that
  split the param's rows (:func:`adamx.lowbit.block_axes`), else replicated.
* :func:`update_moments` runs one leaf's element-wise step on its stored
  moments: cast in (and back by :func:`store_like`), or decoded and encoded
  again inside the step.

The arithmetic stays the transformation's; :mod:`adamx.moments` puts the two
together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks, lowbit
from adamx.base import check_same_shapes, check_same_structure, wider_dtype

__all__ = [
    "MIN_QUANTIZED_SIZE",
    "STATE_BITS",
    "Moment",
    "Storage",
    "as_placeholders",
    "as_stored_fns",
    "cast",
    "check_moment_tree",
    "load",
    "moment_dtype_of",
    "real_dtype",
    "store",
    "store_like",
    "update_moments",
]

#: The widths ``state_bits`` takes.
STATE_BITS = (32, 16, 8, 4)
#: Tensors with fewer elements keep float32 state: their codes would save
#: little, and their block maxima would cost a larger share.
MIN_QUANTIZED_SIZE = 4096


class Moment(NamedTuple):
    """One moment a transformation keeps per param, as a field of its state.

    Example:
        >>> from adamx.storage import Moment
        >>> Moment("nu", signed=False, dtype="nu_dtype")
        Moment(name='nu', signed=False, dtype='nu_dtype', initial=0.0)
    """

    name: str  # the state field that holds it
    signed: bool = True  # False: real and >= 0 (a second moment)
    dtype: str | None = None  # the Storage dtype argument it follows, if any
    initial: Any = 0.0  # its value before the first step


def real_dtype(dtype: Any) -> Any:
    """The real dtype of the same precision: float32 for complex64."""
    dtype = jnp.dtype(dtype)
    return (
        jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype
    )


class Storage(NamedTuple):
    """How a transformation's moments are stored; static, parsed once.

    ``bits`` is 32, 16, 8 or 4, or ``None`` where it is traced (a wrapper that
    injects every number); a built state then says how it is stored.
    ``dtypes`` maps a dtype argument's name (``"mu_dtype"``) to its value.

    Example:
        >>> from adamx.storage import Storage
        >>> Storage.parse(8).elementwise, Storage.parse(16).elementwise
        (False, True)
    """

    bits: int | None = 32
    dtypes: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, state_bits: Any = None, **dtypes: Any) -> Storage:
        """Validate a factory's storage arguments, naming any that is wrong.

        Args:
            state_bits: 32, 16, 8 or 4; ``None`` is 32 (a default that Optax's
                ``inject_hyperparams``, which injects numbers, leaves alone).
            **dtypes: the factory's dtype arguments by name (``mu_dtype=...``);
                any that is not ``None`` conflicts with ``state_bits != 32``.

        Returns:
            The :class:`Storage`.
        """
        checked = tuple(
            (name, checks.check_moment_dtype(name, value))
            for name, value in dtypes.items()
        )
        bits = _check_state_bits(32 if state_bits is None else state_bits)
        given = [f"{k}={v!r}" for k, v in dtypes.items() if v is not None]
        if bits is not None and bits != 32 and given:
            raise ValueError(
                f"state_bits={bits} sets how the moments are stored, and so does "
                f"{' and '.join(given)}: pass one or the other, not both"
            )
        return cls(bits, checked)

    @property
    def elementwise(self) -> bool | None:
        """Whether moments so stored are element-wise: block codes are not (on a
        flat buffer their blocks would span leaves)."""
        if self.bits is None:
            return None
        return self.bits in (32, 16)

    @property
    def quantized(self) -> bool:
        """Whether moments of large floating params are block codes."""
        return self.bits in lowbit.BLOCK_SIZES

    @property
    def in_dtypes(self) -> bool:
        """Whether moments are kept in their dtype arguments or the params'
        dtype (``state_bits=32``; or traced, where the state says), rather than
        in bfloat16 or block codes chosen by ``state_bits``."""
        return self.bits in (32, None)

    def dtype_of(self, moment: Moment) -> Any:
        """The dtype argument ``moment`` follows (``None``: the params')."""
        return dict(self.dtypes).get(moment.dtype) if moment.dtype else None

    def init(self, moment: Moment, params: Any) -> Any:
        """The moment's value before the first step, for every param.

        Args:
            moment: which moment.
            params: the params (arrays, shape/dtype structs, or Python
                numbers, whose moments take the default float dtype).

        Returns:
            A tree like ``params``; a quantized param's moment is one
            :class:`~adamx.lowbit.QuantizedArray` node.
        """
        if self.bits is None:
            raise ValueError(
                "state_bits must be known to build the state, got a traced value: "
                "keep it out of the traced hyperparameters (static_args='state_bits')"
            )
        dtype = self.dtype_of(moment)
        return jax.tree.map(lambda p: self._leaf(moment, dtype, p), params)

    def _leaf(self, moment: Moment, dtype: Any, p: Any) -> Any:
        p_dtype = moment_dtype_of(p)
        complex_param = jnp.issubdtype(p_dtype, jnp.complexfloating)
        if self.bits == 32 or complex_param:
            store = jnp.dtype(p_dtype if dtype is None else dtype)
            if not moment.signed or not (
                complex_param or jnp.issubdtype(store, jnp.complexfloating)
            ):
                # Second moments are real; so are a real param's other moments
                # unless a complex dtype asks otherwise.
                store = real_dtype(store)
            elif complex_param and not jnp.issubdtype(store, jnp.complexfloating):
                # A real dtype asks for a precision: a complex param's moment
                # keeps both its parts at that precision.
                store = jnp.dtype(
                    jnp.complex128 if store.itemsize == 8 else jnp.complex64
                )
            return _full_like(p, moment.initial, store)
        if self.bits == 16:
            return _full_like(p, moment.initial, jnp.bfloat16)
        bits = int(self.bits or 0)
        store = wider_dtype(p_dtype, jnp.float32)
        # Integer params (whose moments are float) are not quantized either.
        floating = jnp.issubdtype(getattr(p, "dtype", int), jnp.floating)
        if not (floating and math.prod(jnp.shape(p)) >= MIN_QUANTIZED_SIZE):
            return _full_like(p, moment.initial, store)
        if _is_zero(moment.initial):
            q = lowbit.zeros(tuple(p.shape), store, bits, moment.signed)
        else:
            full = jnp.full(p.shape, moment.initial, store)
            q = lowbit.quantize(full, bits, moment.signed)
        return _place_like(p, q)


def moment_dtype_of(p: Any) -> Any:
    """The dtype a param's moments follow: its own, or the default float
    dtype for an integer param or a Python number (as Optax takes them).

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.storage import moment_dtype_of
        >>> moment_dtype_of(jnp.ones(2, jnp.bfloat16)), moment_dtype_of(3)
        (dtype(bfloat16), dtype('float32'))
    """
    dtype = getattr(p, "dtype", None)
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(p)
    if jnp.issubdtype(dtype, jnp.inexact):
        return dtype
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _full_like(p: Any, value: Any, dtype: Any) -> jax.Array:
    # zeros_like and full_like keep the sharding of a concrete, sharded param.
    if _is_zero(value):
        return jnp.zeros_like(p, dtype=dtype)
    return jnp.full_like(p, value, dtype=dtype)


def _check_state_bits(state_bits: Any) -> int | None:
    """``state_bits`` as an int; ``None`` if traced; a ``ValueError`` if invalid.

    Optax's ``inject_hyperparams`` passes every number as an array, and traced
    ones while the step is traced; the storage of a state already built is
    read from the state, so a traced value is let through.
    """
    if isinstance(state_bits, jax.core.Tracer):
        return None
    if isinstance(state_bits, (jax.Array, np.ndarray, np.generic)) and not (
        np.ndim(state_bits) or jnp.issubdtype(state_bits.dtype, jnp.bool_)
    ):
        value = np.asarray(state_bits).item()
        state_bits = int(value) if value in STATE_BITS else state_bits
    if (
        isinstance(state_bits, bool)
        or not isinstance(state_bits, (int, np.integer))
        or state_bits not in STATE_BITS
    ):
        raise ValueError(f"state_bits must be one of 32, 16, 8, 4, got {state_bits!r}")
    return int(state_bits)


def _place_like(like: Any, q: lowbit.QuantizedArray) -> lowbit.QuantizedArray:
    """Put a quantized moment on the devices of a concrete, sharded param,
    its blocks split as :func:`adamx.lowbit.block_axes` says."""
    sharding = getattr(like, "sharding", None)
    if (
        isinstance(like, jax.core.Tracer)
        or not isinstance(like, jax.Array)
        or sharding is None
        or len(sharding.device_set) == 1
    ):
        return q
    P = jax.sharding.PartitionSpec
    named = jax.sharding.NamedSharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None:
        devices = np.array(sorted(sharding.device_set, key=lambda d: d.id))
        mesh, split = jax.sharding.Mesh(devices, ("devices",)), None
    else:
        split = lowbit.block_axes(getattr(sharding, "spec", None), mesh, q.format)
    return lowbit.QuantizedArray(
        jax.device_put(q.codes, named(mesh, P(split, None))),
        jax.device_put(q.absmax, named(mesh, P(split))),
        q.format,
    )


def as_placeholders(tree: Any) -> Any:
    """``tree`` with each :class:`~adamx.lowbit.QuantizedArray` replaced by one leaf.

    Its structure and leaf shapes are then those of the params, for checks.
    """

    def placeholder(x: Any) -> Any:
        if lowbit.is_quantized(x):
            return jax.ShapeDtypeStruct(x.format.shape, x.format.dtype)
        return x

    return jax.tree.map(placeholder, tree, is_leaf=lowbit.is_quantized)


def check_moment_tree(
    updates: Any, moment: Any, name: str, *, shapes: bool = True, what: str = "updates"
) -> None:
    """Raise a ``ValueError`` naming both trees where ``updates`` (or the tree
    ``what`` names) does not match a moment (or params) tree; a quantized
    moment counts as one leaf."""
    check = check_same_shapes if shapes else check_same_structure
    check(what, updates, name, as_placeholders(moment))


def load(m: Any, dtype: Any) -> jax.Array:
    """A stored moment as an array of ``dtype``, decoded if quantized.

    For a transformation whose formula is not element-wise (SOAP rotates its
    moments), so that :func:`update_moments` cannot run it block by block.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.storage import load
        >>> load(jnp.ones(2, jnp.bfloat16), jnp.float32)
        Array([1., 1.], dtype=float32)
    """
    if lowbit.is_quantized(m):
        return lowbit.dequantize(m).astype(dtype)
    return cast(m, dtype)


def store(x: jax.Array, like: Any) -> Any:
    """A fresh moment in ``like``'s storage: its dtype, or its codes' format.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.storage import store
        >>> store(jnp.ones(2), jnp.zeros(2, jnp.bfloat16)).dtype
        dtype(bfloat16)
    """
    if lowbit.is_quantized(like):
        return lowbit.requantize(x, like)
    return x.astype(like.dtype)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` in ``dtype``; the real part where a complex value meets a real dtype.

    A real param's moment kept complex (a complex ``mu_dtype``) has a zero
    imaginary part; JAX warns when a cast drops it implicitly (and will refuse).

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.storage import cast
        >>> cast(jnp.array([1.5 + 0j]), jnp.float32)
        Array([1.5], dtype=float32)
    """
    if jnp.issubdtype(x.dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        x = jnp.real(x)
    return x.astype(dtype)


def store_like(x: Any, like: Any) -> Any:
    """A fresh moment in the storage of ``like`` (already so when quantized)."""
    if lowbit.is_quantized(like):
        return x
    return cast(x, like.dtype)


def as_stored_fns(*moments: Any) -> list[Callable[[jax.Array], jax.Array]]:
    """Per moment, a function rounding a fresh value to the moment's storage.

    Where a moment is stored in bfloat16 and computed in float32, the update is
    computed from the moment as it will be stored: XLA can then read the new
    moment from the loop that writes it, instead of recomputing it from the old
    one, which it would have to keep aside (a copy of every moment, each step)
    while the new one overwrites it in place. Only where the storage has the
    computation's exponent range: a float16 second moment would underflow to
    zero, and the update divide by ``eps`` alone, so float16 (and float32 under
    float64) moments are used as computed. Quantized moments, too: each pass of
    their step recomputes the new moments from the old codes.
    """

    def fn(m: Any) -> Callable[[jax.Array], jax.Array]:
        if lowbit.is_quantized(m):
            return lambda x: x
        dtype = jnp.dtype(m.dtype)

        def as_stored(x: jax.Array) -> jax.Array:
            narrower = dtype.itemsize < x.dtype.itemsize
            if narrower and jnp.finfo(dtype).minexp == jnp.finfo(x.dtype).minexp:
                return x.astype(dtype).astype(x.dtype)
            return x

        return as_stored

    return [fn(m) for m in moments]


def update_moments(
    body: Callable[..., tuple], dtypes: list[Any], g: jax.Array, *moments: Any
) -> tuple:
    """Run an element-wise leaf update on stored moments.

    ``body(g, *moments)`` gets each moment in its entry of ``dtypes`` and
    returns ``(update, *new_moments)`` in them. Moments stored as arrays are
    cast in and returned as computed (the caller casts them back with
    :func:`store_like`); quantized ones are decoded and the new values encoded
    again inside the same computation (:func:`adamx.lowbit.update_quantized`).

    Args:
        body: the element-wise update of one leaf.
        dtypes: the dtype each moment is computed in.
        g: the gradient leaf.
        *moments: the stored moments of that leaf.

    Returns:
        ``(update, *new_moments)``, the update in the shape of ``g``.
    """
    if not any(lowbit.is_quantized(m) for m in moments):
        return body(g, *(cast(m, d) for m, d in zip(moments, dtypes, strict=True)))
    # Only real floating params are quantized: their moments share one dtype.
    return lowbit.update_quantized(body, dtypes[0], g, *moments)
