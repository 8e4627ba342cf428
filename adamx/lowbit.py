r"""Block-wise quantized arrays: the codes behind ``state_bits=8`` and ``4``.

A moment is cut into blocks; each block keeps one float32
:math:`a_b = \max_{i \in b} |x_i|` and one small integer code per element, the
index of the nearest value of a fixed *code map* :math:`Q \subset [-1, 1]`:

.. math::
    c_i = \operatorname*{arg\,min}_{k} \left| \frac{x_i}{a_b} - Q_k \right|,
    \qquad \tilde x_i = a_b\, Q_{c_i}

With 8 bits (Dettmers et al., 2021): blocks of 256, the *dynamic* map for both
moments, signed for :math:`m`, unsigned for :math:`v`. With 4 bits (Li et al.,
2023): blocks of 128, the signed dynamic map of 16 codes for :math:`m`, and for
:math:`v` the linear map without zero, :math:`Q_k = (k + 1) / 16`, two codes
packed in a byte. A step dequantizes, updates in float32 and quantizes again,
inside the jitted step (:func:`update_quantized`).

The dynamic map stores a number as a sign bit, an exponent :math:`E` written as
:math:`E` leading zero bits, an indicator bit set to one, and the remaining
:math:`F` bits as a linear fraction:

.. math::
    Q(s, E, f) = (-1)^s\, 10^{-E} \left(0.1 + 0.9\, \frac{f + 1/2}{2^F}\right)

so small numbers get a wide exponent and large ones a long fraction. The codes
with no indicator bit stand for 0 and 1. This is bitsandbytes'
``create_dynamic_map``: the same values, assigned to the bit patterns as the
paper's figure lays them out.

Which moments are stored this way is :mod:`adamx.storage`'s decision;
:func:`state_nbytes` counts the bytes a state holds, and ``docs/memory.md`` has
what each configuration costs and saves.

References:
    Dettmers et al., 2021, "8-bit Optimizers via Block-wise Quantization",
    https://arxiv.org/abs/2110.02861

    Li et al., 2023, "Memory Efficient Optimizers with 4-bit States",
    https://arxiv.org/abs/2309.01507
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import explicit_sharding

__all__ = [
    "BLOCK_SIZES",
    "QuantizedArray",
    "QuantizedFormat",
    "block_axes",
    "code_map",
    "dequantize",
    "is_quantized",
    "quantize",
    "requantize",
    "state_nbytes",
    "update_quantized",
    "zeros",
]

#: Elements per block for each quantized width.
BLOCK_SIZES = {8: 256, 4: 128}

# ------------------------------------------------------------------ code maps


class _CodeMap(NamedTuple):
    """A code map: the value of each code, and what the encoder needs."""

    name: str
    bits: int
    values: np.ndarray  # float32[2**bits], the value each code stands for
    width: int  # bits below the sign bit (all bits for unsigned maps)
    one: int  # the code of 1.0 (dynamic maps)
    thresholds: np.ndarray  # float32[D - 1]: midpoints between the D decades
    zero_cut: float  # float32: midpoint between 0 and the smallest code
    one_cut: float  # float32: midpoint between the largest code below 1 and 1

    @property
    def bin_scale(self) -> float:
        """10^(width - 1) / 0.9: with 5^-F, the inverse of a decade's bin width."""
        return 10.0 ** (self.width - 1) / 0.9


def _dynamic_map(signed: bool, bits: int, exponent_bits: int) -> _CodeMap:
    width = bits - 1 if signed else bits
    values = np.zeros(2**bits, np.float64)
    bottoms, tops = [], []
    for decade in range(exponent_bits):
        zeros = exponent_bits - 1 - decade  # the exponent E
        fraction_bits = width - zeros - 1
        n = 2**fraction_bits
        # Bin centres of [0.1, 1] cut in n equal bins, as create_dynamic_map.
        centres = 10.0**-zeros * (0.1 + 0.9 * (np.arange(n) + 0.5) / n)
        codes = (1 << fraction_bits) + np.arange(n)
        values[codes] = centres
        if signed:
            values[codes | (1 << width)] = -centres
        bottoms.append(np.float32(centres[0]))
        tops.append(np.float32(centres[-1]))
    one = 1 << width if signed else 1
    values[one] = 1.0

    def mid(a: Any, b: Any) -> float:
        return float(np.float32((np.float64(a) + np.float64(b)) / 2))

    thresholds = [mid(tops[d - 1], bottoms[d]) for d in range(1, exponent_bits)]
    return _CodeMap(
        name="dynamic_signed" if signed else "dynamic_unsigned",
        bits=bits,
        values=values.astype(np.float32),
        width=width,
        one=one,
        thresholds=np.asarray(thresholds, np.float32),
        zero_cut=mid(0.0, bottoms[0]),
        one_cut=mid(tops[-1], 1.0),
    )


def _linear_nonzero_map(bits: int) -> _CodeMap:
    n = 2**bits
    values = ((np.arange(n) + 1) / n).astype(np.float32)
    return _CodeMap(
        "linear_nonzero", bits, values, bits, n - 1, np.zeros(0, np.float32), 0.0, 1.0
    )


# Built once: (map name, bits) -> map. 8-bit: the dynamic maps with 7 exponent
# bits of Dettmers et al.; 4-bit: the signed dynamic map with 3 exponent bits
# and the linear map without zero of Li et al.
_MAPS = {
    ("dynamic_signed", 8): _dynamic_map(True, 8, 7),
    ("dynamic_unsigned", 8): _dynamic_map(False, 8, 7),
    ("dynamic_signed", 4): _dynamic_map(True, 4, 3),
    ("linear_nonzero", 4): _linear_nonzero_map(4),
}
for _m in _MAPS.values():
    _m.values.flags.writeable = False


def _map_for(bits: int, signed: bool) -> str:
    """The map a moment of this sign uses at this width."""
    if signed:
        return "dynamic_signed"
    return "dynamic_unsigned" if bits == 8 else "linear_nonzero"


def map_8bit(signed: bool) -> _CodeMap:
    """The 8-bit code map of a moment of this sign, with its encoder's constants."""
    return _MAPS[(_map_for(8, signed), 8)]


def code_map(name: str, bits: int) -> np.ndarray:
    """The value of each code of a code map, indexed by code.

    Args:
        name: ``"dynamic_signed"`` (first moments), ``"dynamic_unsigned"``
            (8-bit second moments) or ``"linear_nonzero"`` (4-bit second
            moments).
        bits: 8 or 4.

    Returns:
        A read-only float32 array of ``2**bits`` values in :math:`[-1, 1]`.

    Example:
        >>> from adamx.lowbit import code_map
        >>> code_map("linear_nonzero", 4)[:3]
        array([0.0625, 0.125 , 0.1875], dtype=float32)
        >>> sorted(code_map("dynamic_signed", 4))[-3:]
        [np.float32(0.6625), np.float32(0.8875), np.float32(1.0)]
    """
    key = (name, bits)
    if key not in _MAPS:
        raise ValueError(
            f"no code map {name!r} with {bits} bits; the maps are {sorted(_MAPS)}"
        )
    return _MAPS[key].values


def _inverse_powers_of_five(exponent: jax.Array) -> jax.Array:
    """:math:`5^{-e}` for int32 ``e`` in [0, 7], from e's bits, within a few ulps.

    Three selects and two products, where a select per decade would take seven.
    """
    power = jnp.float32(1)
    for bit, factor in enumerate((0.2, 0.04, 0.0016)):
        set_ = (exponent & (1 << bit)) != 0
        power = power * jnp.where(set_, jnp.float32(factor), jnp.float32(1))
    return power


def _encode(a: jax.Array, cmap: _CodeMap) -> jax.Array:
    """The nearest code to each value of ``a`` (float32, in [-1, 1]), as int32."""
    if cmap.name == "linear_nonzero":
        n = 2**cmap.bits
        # Nearest of (k + 1) / n; a tie goes to the smaller value.
        k = jnp.ceil(jnp.abs(a) * jnp.float32(n) - jnp.float32(0.5)) - 1
        return jnp.clip(k, 0, n - 1).astype(jnp.int32)
    m = jnp.abs(a)
    # Which decade: each threshold passed moves one decade up, to one more
    # fraction bit F. The decades' bins are equal in width, so the nearest code
    # within a decade is the bin the value falls in; the thresholds are the
    # midpoints between decades, so the nearest code overall is in the decade
    # chosen.
    fraction_bits = jnp.full(m.shape, cmap.width - 1 - len(cmap.thresholds), jnp.int32)
    for t in cmap.thresholds:
        fraction_bits = fraction_bits + (m > t).astype(jnp.int32)
    # A decade E = width - 1 - F has 2^F bins of width 0.9 * 10^-E / 2^F from
    # 0.1 * 10^-E, so the bin is floor(m * 10^(width-1) / (0.9 * 5^F) - 2^F / 9):
    # powers of 5 and 2 instead of a table of per-decade constants.
    first = jnp.left_shift(jnp.int32(1), fraction_bits)
    inverse = jnp.float32(cmap.bin_scale) * _inverse_powers_of_five(fraction_bits)
    f = jnp.floor(m * inverse - first.astype(jnp.float32) * jnp.float32(1 / 9))
    # A decade's codes are first .. 2 * first - 1.
    code = first + jnp.clip(f.astype(jnp.int32), 0, first - 1)
    code = jnp.where(m > cmap.zero_cut, code, 0)
    if cmap.name == "dynamic_signed":
        code = jnp.where((a < 0) & (code != 0), code | (1 << cmap.width), code)
        # -1 has no code of its own; its nearest is the largest negative one.
        code = jnp.where(a > cmap.one_cut, cmap.one, code)
    else:
        code = jnp.where(m > cmap.one_cut, cmap.one, code)
    return code


def _decode(codes: jax.Array, cmap: _CodeMap, use: int = 0, uses: int = 1) -> jax.Array:
    """The float32 value of each code: ``cmap.values[codes]``, bit for bit.

    8 bits: a lookup in the map's table of 256 values, which on CPU costs less
    than computing a value from its code's bits. A step decodes each moment in
    several passes (``use`` of ``uses``), and each looks up its own copy of
    the table: XLA would otherwise merge identical lookups into one and write
    the decoded moment out in float32. 4 bits: selects on the code's bits, a
    tree over the 16 values; a lookup there would keep XLA from vectorizing
    the loop that packs two codes per byte.
    """
    c = codes.astype(jnp.int32)
    if cmap.bits == 8:
        table = jnp.asarray(np.tile(cmap.values, uses))
        index = c + use * len(cmap.values)
        # Codes split over explicit mesh axes: the lookup must say where its
        # result lives, as the codes do.
        return table.at[index].get(
            mode="promise_in_bounds", out_sharding=explicit_sharding(index)
        )
    values = [jnp.float32(v) for v in cmap.values]
    for bit in range(cmap.bits):
        set_ = (c & (1 << bit)) != 0
        values = [
            jnp.where(set_, high, low)
            for low, high in zip(values[0::2], values[1::2], strict=True)
        ]
    return values[0]


def _pack(codes: jax.Array, bits: int) -> jax.Array:
    """int32 codes in the blocks' shape to uint8 bytes, (k, block*bits/8).

    With 4 bits, byte j of a block holds code j in its low half and code
    j + block/2 in its high half: packing and unpacking then read and write
    contiguous runs, which vectorize, where neighbouring pairs would not.
    """
    if bits == 8:
        return codes.astype(jnp.uint8)
    return (codes[:, 0] | (codes[:, 1] << 4)).astype(jnp.uint8)


def _unpack(packed: jax.Array, bits: int) -> jax.Array:
    """uint8 bytes (k, block*bits/8) to codes in the blocks' shape (_block_shape)."""
    if bits == 8:
        return packed
    shifts = jnp.asarray(np.array([0, 4], np.uint8))[None, :, None]
    return (packed[:, None, :] >> shifts) & jnp.uint8(0xF)


def _block_absmax(*blocks: jax.Array) -> list[jax.Array]:
    r"""Per block (row), :math:`\max(0, \max_i x_i, -\min_i x_i)` of each array.

    One variadic reduction for all of them: XLA fuses the arithmetic that
    produces the blocks into it, where a plain ``max`` is a library call that
    needs its input written out first.
    """
    operands = [y for x in blocks for y in (x, -x)]
    init = [jnp.float32(-jnp.inf)] * len(operands)

    def combine(a: tuple, b: tuple) -> tuple:
        return tuple(jax.lax.max(x, y) for x, y in zip(a, b, strict=True))

    axes = tuple(range(1, blocks[0].ndim))
    out = jax.lax.reduce(tuple(operands), tuple(init), combine, axes)
    zero = jnp.float32(0)
    return [
        jnp.maximum(jnp.maximum(out[2 * i], out[2 * i + 1]), zero)
        for i in range(len(blocks))
    ]


def _encode_blocks(
    x: jax.Array, absmax: jax.Array, cmap: _CodeMap, bits: int
) -> jax.Array:
    """Blocks (k, *_block_shape) of float32 to packed codes, given their maxima."""
    inverse = jnp.where(absmax > 0, 1 / absmax, jnp.float32(0))
    return _pack(_encode(x * _per_block(inverse, x.ndim), cmap), bits)


def _quantize_blocks(
    x: jax.Array, cmap: _CodeMap, bits: int
) -> tuple[jax.Array, jax.Array]:
    """Blocks (k, *_block_shape) of float32 to (codes, absmax)."""
    (absmax,) = _block_absmax(x)
    return _encode_blocks(x, absmax, cmap, bits), absmax


def _dequantize_blocks(
    packed: jax.Array,
    absmax: jax.Array,
    cmap: _CodeMap,
    bits: int,
    use: int = 0,
    uses: int = 1,
) -> jax.Array:
    codes = _unpack(packed, bits)
    return _decode(codes, cmap, use, uses) * _per_block(absmax, codes.ndim)


def _per_block(x: jax.Array, ndim: int) -> jax.Array:
    """Per-block values (k,) shaped to broadcast against blocks of ``ndim``."""
    return x.reshape(x.shape + (1,) * (ndim - 1))


def _quantize_in(x: jax.Array, fmt: QuantizedFormat) -> QuantizedArray:
    cmap = _MAPS[(fmt.code_map, fmt.bits)]
    codes, absmax = _quantize_blocks(
        _as_blocks(x, fmt).astype(jnp.float32), cmap, fmt.bits
    )
    return QuantizedArray(codes, absmax, fmt)


def _dequantize_from(q: QuantizedArray, fmt: QuantizedFormat) -> jax.Array:
    cmap = _MAPS[(fmt.code_map, fmt.bits)]
    blocks = _dequantize_blocks(q.codes, q.absmax, cmap, fmt.bits)
    return _from_blocks(blocks, fmt.shape, fmt.dtype)


# Outside a trace, each runs as one compiled program: op by op, its dozen small
# ops would cost a compile each for every new shape.
_quantize_compiled = jax.jit(_quantize_in, static_argnums=1)
_dequantize_compiled = jax.jit(_dequantize_from, static_argnums=1)


def _traced(x: Any) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(x))


# ------------------------------------------------------------ QuantizedArray


class QuantizedFormat(NamedTuple):
    """The static part of a :class:`QuantizedArray`."""

    shape: tuple[int, ...]  # of the array it stands for
    dtype: str  # that array's dtype, which dequantize returns
    block_size: int  # elements per block
    bits: int  # bits per code: 8 or 4
    code_map: str  # "dynamic_signed", "dynamic_unsigned" or "linear_nonzero"


@jax.tree_util.register_pytree_with_keys_class
class QuantizedArray:
    r"""An array stored as block-wise codes: a pytree of ``codes`` and ``absmax``.

    The array is flattened, padded with zeros to whole blocks, and each block
    :math:`b` kept as its largest magnitude :math:`a_b` (float32) and one code
    per element into a code map :math:`Q` (see the module docstring):
    :math:`\tilde x_i = a_b\, Q_{c_i}`. Its two children are the only leaves,
    so ``jax.jit``, buffer donation, ``jax.eval_shape`` and
    :mod:`adamx.checkpoint` treat it like any other state; shape, dtype, block
    size, bits and the map's name are static.

    Attributes:
        codes: uint8, shape ``(num_blocks, block_size * bits // 8)``; with 4
            bits, two codes per byte: byte ``j`` of a block holds code ``j`` in
            its low half and code ``j + block_size // 2`` in its high half.
        absmax: float32, shape ``(num_blocks,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import quantize
        >>> q = quantize(jnp.linspace(-1.0, 1.0, 512), bits=8, signed=True)
        >>> q
        QuantizedArray((512,), float32, 8 bits, dynamic_signed, blocks of 256)
        >>> q.codes.shape, q.codes.dtype, q.absmax.shape
        ((2, 256), dtype('uint8'), (2,))
        >>> err = jnp.abs(q.dequantize() - jnp.linspace(-1.0, 1.0, 512))
        >>> round(float(jnp.max(err)), 4)
        0.007
    """

    def __init__(self, codes: Any, absmax: Any, fmt: QuantizedFormat) -> None:
        self.codes = codes
        self.absmax = absmax
        self.format = fmt

    def tree_flatten_with_keys(self):
        children = [
            (jax.tree_util.GetAttrKey("codes"), self.codes),
            (jax.tree_util.GetAttrKey("absmax"), self.absmax),
        ]
        return children, self.format

    @classmethod
    def tree_unflatten(cls, fmt: QuantizedFormat, children: Any) -> QuantizedArray:
        return cls(children[0], children[1], fmt)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.format.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.format.dtype)

    @property
    def size(self) -> int:
        return math.prod(self.format.shape)

    @property
    def bits(self) -> int:
        return self.format.bits

    @property
    def block_size(self) -> int:
        return self.format.block_size

    @property
    def num_blocks(self) -> int:
        return -(-self.size // self.format.block_size)

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes and the block maxima."""
        return _nbytes(self.codes) + _nbytes(self.absmax)

    def dequantize(self) -> jax.Array:
        """The array the codes stand for, in :attr:`dtype` and :attr:`shape`."""
        return dequantize(self)

    def __repr__(self) -> str:
        f = self.format
        return (
            f"QuantizedArray({f.shape}, {f.dtype}, {f.bits} bits, {f.code_map}, "
            f"blocks of {f.block_size})"
        )


def _format(
    shape: tuple[int, ...], dtype: Any, bits: int, signed: bool, block_size: Any
) -> QuantizedFormat:
    if bits not in BLOCK_SIZES:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if block_size is None:
        block_size = BLOCK_SIZES[bits]
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or block_size <= 0
        or block_size % 2
    ):
        raise ValueError(f"block_size must be a positive even int, got {block_size!r}")
    return QuantizedFormat(
        tuple(int(d) for d in shape),
        jnp.dtype(dtype).name,
        int(block_size),
        bits,
        _map_for(bits, signed),
    )


def _block_shape(fmt: QuantizedFormat) -> tuple[int, ...]:
    """The shape the step gives one block: ``(block,)``, or with 4 bits
    ``(2, block / 2)``, the halves whose codes share the block's bytes."""
    if fmt.bits == 4:
        return (2, fmt.block_size // 2)
    return (fmt.block_size,)


def _as_blocks(x: jax.Array, fmt: QuantizedFormat, spare: int = 0) -> jax.Array:
    """Flatten, pad with zeros to whole blocks: (k, *_block_shape), x's dtype.

    ``spare`` pads that many blocks further and slices them off again: the
    same blocks, by an expression of their own (see :func:`_pass_blocks`).
    """
    flat = jnp.reshape(x, (-1,))
    size = flat.shape[0]
    blocks = -(-size // fmt.block_size)
    padded = (blocks + spare) * fmt.block_size
    if padded != size:
        flat = jnp.pad(flat, (0, padded - size))
    out = flat.reshape(blocks + spare, *_block_shape(fmt))
    return out[:blocks] if spare else out


def _pass_blocks(flat: jax.Array, fmt: QuantizedFormat, use: int) -> jax.Array:
    """:func:`_as_blocks` of a 1-D leaf that is not whole blocks, for pass ``use``.

    Written so that XLA fuses the padding into the pass that reads it. Given
    one pad, XLA shares it between the passes of a step and writes it out, a
    fresh buffer per leaf and step; and it fuses no pad into the reduction
    that takes the block maxima. So pass 0 (the maxima) reads the leaf by a
    clamped lookup with the tail masked to zero, and each encoding pass pads
    ``use`` blocks further and slices them off again: an expression of its
    own, which fuses into that pass.
    """
    if use > 0:
        return _as_blocks(flat, fmt, spare=use)
    size = flat.shape[0]
    blocks = -(-size // fmt.block_size)
    index = jax.lax.broadcasted_iota(jnp.int32, (blocks * fmt.block_size,), 0)
    index = index.reshape(blocks, *_block_shape(fmt))
    inside = flat.at[jnp.minimum(index, size - 1)].get(mode="promise_in_bounds")
    return jnp.where(index < size, inside, jnp.zeros((), flat.dtype))


def _from_blocks(blocks: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    flat = blocks.reshape(-1)
    size = math.prod(shape)
    if flat.shape[0] != size:
        flat = flat[:size]
    return flat.reshape(shape).astype(dtype)


def quantize(
    x: jax.typing.ArrayLike,
    bits: int = 8,
    signed: bool = True,
    block_size: int | None = None,
) -> QuantizedArray:
    r"""Quantize an array block-wise to the nearest codes of a code map.

    .. math::
        a_b = \max_{i \in b} |x_i|, \qquad
        c_i = \operatorname*{arg\,min}_k |x_i / a_b - Q_k|

    The map :math:`Q` is chosen by ``bits`` and ``signed``: the signed dynamic
    map for signed values; for non-negative values the unsigned dynamic map
    with 8 bits and the linear map without zero, :math:`Q_k = (k + 1) / 16`,
    with 4. A block of zeros has :math:`a_b = 0` and stands for zeros.

    Args:
        x: the array (any float dtype; computed in float32).
        bits: 8 or 4 bits per code.
        signed: whether ``x`` may be negative.
        block_size: elements per block; ``None`` for 256 with 8 bits and 128
            with 4.

    Returns:
        A :class:`QuantizedArray`.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import quantize
        >>> q = quantize(jnp.array([0.0, 0.5, 1.0, 2.0]), bits=4, signed=False)
        >>> q.dequantize()
        Array([0.125, 0.5  , 1.   , 2.   ], dtype=float32)

    References:
        Dettmers et al., 2021, "8-bit Optimizers via Block-wise Quantization",
        https://arxiv.org/abs/2110.02861

        Li et al., 2023, "Memory Efficient Optimizers with 4-bit States",
        https://arxiv.org/abs/2309.01507
    """
    x = jnp.asarray(x)
    fmt = _format(tuple(x.shape), x.dtype, bits, signed, block_size)
    return (_quantize_in if _traced(x) else _quantize_compiled)(x, fmt)


def dequantize(q: QuantizedArray) -> jax.Array:
    r"""The array a :class:`QuantizedArray` stands for: :math:`a_b\, Q_{c_i}`.

    Args:
        q: the quantized array.

    Returns:
        An array of ``q.shape`` and ``q.dtype``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import dequantize, quantize
        >>> dequantize(quantize(jnp.array([-2.0, 0.0, 1.0]), bits=8))
        Array([-1.9859375,  0.       ,  1.0015625], dtype=float32)
    """
    return (_dequantize_from if _traced(q) else _dequantize_compiled)(q, q.format)


def zeros(
    shape: tuple[int, ...], dtype: Any, bits: int, signed: bool
) -> QuantizedArray:
    """The codes of an array of zeros of ``shape``, as :func:`quantize` makes them.

    Args:
        shape: the shape of the array the codes stand for.
        dtype: its dtype, which :func:`dequantize` returns.
        bits: 8 or 4.
        signed: whether the array may hold negative values (chooses the map).

    Returns:
        A :class:`QuantizedArray` of zeros, its blocks' maxima zero.

    Example:
        >>> from adamx.lowbit import zeros
        >>> zeros((3, 100), "float32", 8, signed=False).codes.shape
        (2, 256)
    """
    fmt = _format(tuple(shape), dtype, bits, signed, None)
    num_blocks = -(-math.prod(fmt.shape) // fmt.block_size)
    codes = jnp.zeros((num_blocks, fmt.block_size * bits // 8), jnp.uint8)
    absmax = jnp.zeros((num_blocks,), jnp.float32)
    return QuantizedArray(codes, absmax, fmt)


def block_axes(spec: Any, mesh: Any, fmt: QuantizedFormat) -> Any:
    """The mesh axes that split a quantized array's blocks, as its array is split.

    The one rule for where quantized codes live: an array split along its first
    dimension alone, each shard a whole number of blocks, has its blocks split
    over the same axes, so each device decodes and encodes its own rows. Split
    any other way, blocks would straddle devices: ``None``, the codes are
    replicated.

    Args:
        spec: the array's ``PartitionSpec`` (or ``None``).
        mesh: its mesh.
        fmt: the quantized array's format.

    Returns:
        The first entry of ``spec`` (an axis name or a tuple of them), or None.

    Example:
        >>> import jax
        >>> from jax.sharding import PartitionSpec as P
        >>> from adamx.lowbit import block_axes, zeros
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> block_axes(P("data"), mesh, zeros((512, 4), "float32", 8, True).format)
        'data'
    """
    if spec is None or mesh is None or not fmt.shape:
        return None
    entries = tuple(spec) + (None,) * (len(fmt.shape) - len(tuple(spec)))
    first, rest = entries[0], entries[1 : len(fmt.shape)]
    if first is None or any(r is not None for r in rest):
        return None
    axes = first if isinstance(first, tuple) else (first,)
    shards = math.prod(mesh.shape[a] for a in axes)
    rows = fmt.shape[0]
    per_shard = rows // shards * math.prod(fmt.shape[1:])
    if rows % shards or per_shard % fmt.block_size:
        return None
    return first


def is_quantized(x: Any) -> bool:
    """Whether ``x`` is a :class:`QuantizedArray`.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import is_quantized, quantize
        >>> is_quantized(quantize(jnp.ones(4))), is_quantized(jnp.ones(4))
        (True, False)
    """
    return isinstance(x, QuantizedArray)


# ------------------------------------------------------------ the step on codes


def update_quantized(
    body: Callable[..., tuple], compute_dtype: Any, g: jax.Array, *moments: Any
) -> tuple:
    """Run an element-wise leaf update on quantized moments, quantizing them again.

    The old moments are dequantized, ``body(g, *moments)`` computes the update
    and the new moments in ``compute_dtype``, and the new moments are quantized
    with their new block maxima, all inside the same computation: no float32
    copy of a moment is kept between steps. Moments stored as arrays among
    them are cast in and returned as computed.

    Args:
        body: the element-wise update of one leaf, ``(g, *moments) -> (update,
            *new_moments)``.
        compute_dtype: the dtype ``body`` computes in.
        g: the gradient leaf.
        *moments: the stored moments of that leaf, at least one quantized.

    Returns:
        ``(update, *new_moments)``, the update in the shape of ``g``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import quantize, update_quantized
        >>> m = quantize(jnp.zeros(512))
        >>> def body(g, m):
        ...     return g, m + g
        >>> u, m = update_quantized(body, jnp.float32, jnp.ones(512), m)
        >>> float(m.dequantize()[0])
        1.0
    """
    quantized = [m for m in moments if is_quantized(m)]
    fmt = quantized[0].format
    if len(quantized) != len(moments) or any(
        m.block_size != fmt.block_size for m in quantized
    ):
        # Mixed storage: dequantize, update, quantize again.
        loaded = [
            dequantize(m) if is_quantized(m) else m for m in moments
        ]  # fmt: skip
        u, *new = body(g, *(m.astype(compute_dtype) for m in loaded))
        new = [
            requantize(x, m) if is_quantized(m) else x
            for x, m in zip(new, moments, strict=True)
        ]
        return (u, *new)

    explicit = explicit_sharding(g)
    if explicit is not None:
        return _update_explicit(body, compute_dtype, g, moments, explicit)
    # The gradient as a flat vector behind a barrier: XLA would otherwise read
    # a conv kernel's (out, in, 3, 3) elements from the blocks' loops through
    # its four indices, recomputed per element, and not vectorize them.
    flat_g = jax.lax.optimization_barrier(jnp.reshape(g, (-1,)))
    # An 8-bit leaf that is not whole blocks goes in flat, and each pass pads
    # it its own way (see _update_blocks). With 4 bits, packing reads each
    # block twice, and XLA fuses neither a pad nor a lookup into it: one
    # shared pad, written out, costs less there.
    whole = flat_g.shape[0] % fmt.block_size == 0
    u, *new = _update_blocks(
        body,
        compute_dtype,
        _as_blocks(flat_g, fmt) if whole or fmt.bits == 4 else flat_g,
        moments,
        [m.codes for m in moments],
        [m.absmax for m in moments],
    )
    return (_from_blocks(u, tuple(g.shape), u.dtype), *new)


def _update_blocks(
    body: Callable[..., tuple],
    compute_dtype: Any,
    g_blocks: jax.Array,
    moments: tuple,
    codes: list[jax.Array],
    absmaxes: list[jax.Array],
) -> tuple:
    """The quantized step on blocks: ``(update blocks, *new QuantizedArrays)``.

    The new moments are needed by four passes: their block maxima, the
    encoding of each, and the update. Each pass decodes the old moments and
    runs ``body`` again, on its own copy of the inputs (an optimization
    barrier per pass, so XLA cannot merge them): each pass is then one fused
    loop, where a shared result would be written out in float32 and read back.
    Decoding is cheaper than that traffic, and than a fresh buffer of a large
    leaf's size, whose pages the system must map on every step.

    ``g_blocks`` may also be the flat gradient of a leaf that is not whole
    blocks: the update is then the leaf's shape, flat, and the other passes
    pad the gradient each their own way (:func:`_pass_blocks`).
    """
    maps = [_MAPS[(m.format.code_map, m.bits)] for m in moments]
    passes = 2 + len(moments)  # maxima, one encoding per moment, the update

    def run(use: int) -> tuple:
        g_, codes_, absmaxes_, _ = jax.lax.optimization_barrier(
            (g_blocks, codes, absmaxes, jnp.int32(use))
        )
        loaded = [
            _dequantize_blocks(c, a, cm, m.bits, use, passes).astype(compute_dtype)
            for c, a, cm, m in zip(codes_, absmaxes_, maps, moments, strict=True)
        ]
        if g_.ndim == 1 and use == passes - 1:
            # The update needs the leaf's own elements only: the moments
            # flattened and cut to the leaf, the gradient as it is.
            loaded = [x.reshape(-1)[: g_.shape[0]] for x in loaded]
        elif g_.ndim == 1:
            g_ = _pass_blocks(g_, moments[0].format, use)
        u, *new = body(g_, *loaded)
        return u, [x.astype(jnp.float32) for x in new]

    absmax = _block_absmax(*run(0)[1])
    new = [
        QuantizedArray(_encode_blocks(run(1 + i)[1][i], a, cm, m.bits), a, m.format)
        for i, (a, cm, m) in enumerate(zip(absmax, maps, moments, strict=True))
    ]
    return (run(1 + len(moments))[0], *new)


def _update_explicit(
    body: Callable[..., tuple],
    compute_dtype: Any,
    g: jax.Array,
    moments: tuple,
    sharding: Any,
) -> tuple:
    """:func:`update_quantized` for a gradient split over explicit mesh axes.

    Split by rows into whole blocks, each device updates its own blocks in one
    pass. Split otherwise, blocks would straddle devices: the leaf is gathered,
    updated with replicated codes, and the update split again.
    """
    mesh = sharding.mesh

    def on(*entries: Any) -> Any:
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*entries))

    reshard = jax.sharding.reshard
    fmt = moments[0].format
    rows = block_axes(sharding.spec, mesh, fmt)
    if rows is None:
        whole = [
            QuantizedArray(
                reshard(m.codes, on(None, None)), reshard(m.absmax, on(None)), m.format
            )
            for m in moments
        ]
        u, *new = update_quantized(body, compute_dtype, reshard(g, on()), *whole)
        return (reshard(u, sharding), *new)
    blocks = (math.prod(fmt.shape) // fmt.block_size, *_block_shape(fmt))
    within = (None,) * len(_block_shape(fmt))
    u, *new = _update_blocks(
        body,
        compute_dtype,
        jnp.reshape(g, blocks, out_sharding=on(rows, *within)),
        moments,
        [reshard(m.codes, on(rows, None)) for m in moments],
        [reshard(m.absmax, on(rows)) for m in moments],
    )
    return (jnp.reshape(u, g.shape, out_sharding=sharding), *new)


def requantize(x: jax.Array, like: QuantizedArray) -> QuantizedArray:
    """Quantize ``x`` in the format of ``like`` (block size, code map, bits).

    Args:
        x: the new values, of ``like``'s shape.
        like: the quantized array whose format to keep.

    Returns:
        The new :class:`QuantizedArray`.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import quantize, requantize
        >>> q = requantize(jnp.full(512, 2.0), quantize(jnp.zeros(512)))
        >>> float(q.dequantize()[0])
        2.0
    """
    return (_quantize_in if _traced(x) else _quantize_compiled)(x, like.format)


# ------------------------------------------------------------------ counting


def _nbytes(x: Any) -> int:
    dtype = getattr(x, "dtype", None)
    shape = getattr(x, "shape", None)
    if dtype is None or shape is None:
        return 0
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, x)
        return math.prod(data.shape) * np.dtype(data.dtype).itemsize
    return math.prod(shape) * np.dtype(dtype).itemsize


def state_nbytes(state: Any) -> int:
    r"""The bytes the arrays of a state hold, summed over all its leaves.

    .. math:: \text{bytes} = \sum_{\text{leaves } x} |x| \cdot
        \text{itemsize}(x)

    A :class:`QuantizedArray` counts its codes and block maxima; a typed PRNG
    key its key data; Python numbers count nothing. Works on
    ``jax.eval_shape(tx.init, params)`` too, so a configuration can be sized
    without allocating it.

    Args:
        state: any pytree of arrays or ``jax.ShapeDtypeStruct``.

    Returns:
        The number of bytes, an ``int``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.lowbit import state_nbytes
        >>> params = {"w": jnp.zeros((1024, 1024))}
        >>> for bits in (32, 16, 8, 4):
        ...     tx = adamx.adam(1e-3, state_bits=bits)
        ...     n = state_nbytes(jax.eval_shape(tx.init, params))
        ...     print(bits, n / 2**20)
        32 8.000...
        16 4.000...
        8 2.031...
        4 1.062...
    """
    return sum(_nbytes(x) for x in jax.tree.leaves(state))
