r"""Low-precision optimizer state, and low-precision params that keep small updates.

Adam keeps two moments per parameter: 8 bytes of state per float32 param. Two
ways to cut that, and two to train bfloat16 params without losing the updates
that are smaller than half their spacing:

* **Block-wise quantized moments** (``state_bits=8`` or ``4`` on the Adam
  family). A moment is cut into blocks; each block keeps one float32
  :math:`a_b = \max_{i \in b} |x_i|` and one small integer code per element,
  the index of the nearest value of a fixed *code map* :math:`Q \subset [-1, 1]`:

  .. math::
      c_i = \operatorname*{arg\,min}_{k} \left| \frac{x_i}{a_b} - Q_k \right|,
      \qquad \tilde x_i = a_b\, Q_{c_i}

  With 8 bits (Dettmers et al., 2021, "8-bit Optimizers via Block-wise
  Quantization"): blocks of 256, the *dynamic* map for both moments, signed for
  :math:`m`, unsigned for :math:`v`. With 4 bits (Li et al., 2023, "Memory
  Efficient Optimizers with 4-bit States"): blocks of 128, the signed dynamic
  map of 16 codes for :math:`m`, and for :math:`v` the linear map without zero,
  :math:`Q_k = (k + 1) / 16`, two codes packed in a byte. Each step
  dequantizes, updates in float32 and quantizes again, inside the jitted step.
  Tensors of fewer than :data:`MIN_QUANTIZED_SIZE` elements keep float32 state.
* **bfloat16 moments** (``state_bits=16``).
* :func:`kahan_summation` keeps, per bfloat16 param, the part of each update
  that rounding lost, and adds it back at the next step.
* :func:`stochastic_rounding` rounds the new params up or down at random, with
  the probabilities that make the rounding exact in expectation.

:func:`state_nbytes` counts the bytes a state holds; ``docs/memory.md`` has the
bytes per param of each configuration and the measured cost in time and
accuracy.

The dynamic map stores a number as a sign bit, an exponent :math:`E` written as
:math:`E` leading zero bits, an indicator bit set to one, and the remaining
:math:`F` bits as a linear fraction:

.. math::
    Q(s, E, f) = (-1)^s\, 10^{-E} \left(0.1 + 0.9\, \frac{f + 1/2}{2^F}\right)

so small numbers get a wide exponent and large ones a long fraction. The codes
with no indicator bit stand for 0 and 1. This is bitsandbytes'
``create_dynamic_map``: the same values, assigned to the bit patterns as the
paper's figure lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import (
    GradientTransformation,
    Params,
    elementwise,
    is_elementwise,
    require_params,
    tree_zeros_like,
    wider_dtype,
)
from adamx.combine import MaskedNode, call_update, check_transformation

__all__ = [
    "BLOCK_SIZES",
    "MIN_QUANTIZED_SIZE",
    "KahanSummationState",
    "QuantizedArray",
    "QuantizedFormat",
    "StochasticRoundingState",
    "code_map",
    "dequantize",
    "kahan_summation",
    "quantize",
    "state_nbytes",
    "stochastic_round",
    "stochastic_rounding",
]

STATE_BITS = (32, 16, 8, 4)
#: Elements per block for each quantized width.
BLOCK_SIZES = {8: 256, 4: 128}
#: Tensors with fewer elements keep float32 state: their codes would save
#: little, and their absmax values would cost a larger share.
MIN_QUANTIZED_SIZE = 4096

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
    """
    x = jnp.asarray(x)
    fmt = _format(tuple(x.shape), x.dtype, bits, signed, block_size)
    cmap = _MAPS[(fmt.code_map, bits)]
    codes, absmax = _quantize_blocks(_as_blocks(x, fmt).astype(jnp.float32), cmap, bits)
    return QuantizedArray(codes, absmax, fmt)


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
    fmt = q.format
    cmap = _MAPS[(fmt.code_map, fmt.bits)]
    blocks = _dequantize_blocks(q.codes, q.absmax, cmap, fmt.bits)
    return _from_blocks(blocks, fmt.shape, fmt.dtype)


def _zeros(like: Any, dtype: Any, bits: int, signed: bool) -> QuantizedArray:
    """The quantized zeros standing in for a moment shaped like ``like``."""
    fmt = _format(tuple(like.shape), dtype, bits, signed, None)
    num_blocks = -(-math.prod(fmt.shape) // fmt.block_size)
    codes = jnp.zeros((num_blocks, fmt.block_size * bits // 8), jnp.uint8)
    absmax = jnp.zeros((num_blocks,), jnp.float32)
    codes, absmax = _place_like(like, fmt, codes, absmax)
    return QuantizedArray(codes, absmax, fmt)


def _row_axes(spec: Any, mesh: Any, fmt: QuantizedFormat) -> Any:
    """The mesh axes that split whole blocks, if the array is split by rows only.

    An array split along its first dimension alone, each shard a whole number
    of blocks, has its blocks split the same way; ``None`` otherwise.
    """
    if spec is None or mesh is None or not fmt.shape:
        return None
    entries = tuple(spec) + (None,) * (len(fmt.shape) - len(tuple(spec)))
    first, rest = entries[0], entries[1:]
    if first is None or any(r is not None for r in rest):
        return None
    axes = first if isinstance(first, tuple) else (first,)
    shards = math.prod(mesh.shape[a] for a in axes)
    rows = fmt.shape[0]
    per_shard = rows // shards * math.prod(fmt.shape[1:])
    if rows % shards or per_shard % fmt.block_size:
        return None
    return first


def _place_like(like: Any, fmt: QuantizedFormat, codes: Any, absmax: Any) -> tuple:
    """Put the codes on the devices of a concrete, sharded param.

    Where the param is split along its first dimension only and each shard
    holds whole blocks, the blocks are split the same way, so each device
    quantizes its own rows; otherwise they are replicated over its devices.
    """
    sharding = getattr(like, "sharding", None)
    if (
        isinstance(like, jax.core.Tracer)
        or not isinstance(like, jax.Array)
        or sharding is None
        or len(sharding.device_set) == 1
    ):
        return codes, absmax
    spec = getattr(sharding, "spec", None)
    mesh = getattr(sharding, "mesh", None)
    split = _row_axes(spec, mesh, fmt)
    if mesh is not None:
        P = jax.sharding.PartitionSpec
        named = jax.sharding.NamedSharding
        return (
            jax.device_put(codes, named(mesh, P(split, None))),
            jax.device_put(absmax, named(mesh, P(split))),
        )
    replicated = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(sorted(sharding.device_set, key=lambda d: d.id)),
                          ("devices",)),
        jax.sharding.PartitionSpec(),
    )  # fmt: skip
    return jax.device_put(codes, replicated), jax.device_put(absmax, replicated)


def is_quantized(x: Any) -> bool:
    """Whether ``x`` is a :class:`QuantizedArray`."""
    return isinstance(x, QuantizedArray)


# --------------------------------------------------- state_bits for Adam family


def check_state_bits(state_bits: Any, **dtypes: Any) -> int | None:
    """Validate ``state_bits``, and that no dtype argument also sets the storage.

    Optax's ``inject_hyperparams`` passes every number as an array, and traced
    ones while the step is traced; the storage of a state already built is read
    from the state, so a traced ``state_bits`` is let through as ``None``.

    Args:
        state_bits: 32, 16, 8 or 4 (or a 0-d array holding one).
        **dtypes: the dtype arguments of the same factory (``mu_dtype=...``);
            any that is not ``None`` conflicts with ``state_bits != 32``.

    Returns:
        ``state_bits`` as an int, or ``None`` if it is traced.
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
    given = [f"{k}={v!r}" for k, v in dtypes.items() if v is not None]
    if state_bits != 32 and given:
        raise ValueError(
            f"state_bits={state_bits} sets how the moments are stored, and so does "
            f"{' and '.join(given)}: pass one or the other, not both"
        )
    return int(state_bits)


def init_moment(params: Params, state_bits: int, signed: bool, dtype: Any) -> Any:
    """Zeros for one moment of every param, stored as ``state_bits`` says.

    32: ``dtype`` (``None``: the params' dtype); 16: bfloat16; 8 and 4: a
    :class:`QuantizedArray` for each floating param of at least
    :data:`MIN_QUANTIZED_SIZE` elements, float32 (or wider) zeros for the rest.
    """
    if state_bits is None:
        raise ValueError(
            "state_bits must be known to build the state, got a traced value: "
            "keep it out of the traced hyperparameters (static_args='state_bits')"
        )
    if state_bits == 32:
        return tree_zeros_like(params, dtype)
    if state_bits == 16:
        return tree_zeros_like(params, jnp.bfloat16)

    def leaf(p):
        store = wider_dtype(p.dtype, jnp.float32)
        if (
            jnp.issubdtype(p.dtype, jnp.floating)
            and math.prod(p.shape) >= MIN_QUANTIZED_SIZE
        ):
            return _zeros(p, store, state_bits, signed)
        return jnp.zeros_like(p, dtype=store)

    return jax.tree.map(leaf, params)


def as_placeholders(tree: Any) -> Any:
    """``tree`` with each :class:`QuantizedArray` replaced by one leaf.

    Its structure and leaf shapes are then those of the params, for checks.
    """

    def placeholder(x: Any) -> Any:
        if is_quantized(x):
            return jax.ShapeDtypeStruct(x.format.shape, x.format.dtype)
        return x

    return jax.tree.map(placeholder, tree, is_leaf=is_quantized)


def store_like(x: Any, like: Any) -> Any:
    """A fresh moment in the storage of ``like`` (already so when quantized)."""
    if is_quantized(like):
        return x
    return x.astype(like.dtype)


def as_stored_fns(*moments: Any) -> list[Callable[[jax.Array], jax.Array]]:
    """Per moment, a function rounding a fresh value to the moment's storage.

    Where a moment is stored in bfloat16 and computed in float32, the update is
    computed from the moment as it will be stored: XLA can then read the new
    moment from the kernel that writes it, instead of recomputing it from the
    old one, which it would have to keep aside (a copy of every moment, each
    step) while the new one overwrites it in place. That halves the step time of
    bfloat16 Adam on CPU. Only where the storage has the computation's exponent
    range: a float16 second moment would underflow to zero, and the update
    divide by ``eps`` alone, so float16 (and float32 under float64) moments are
    used as computed. Quantized moments, too: each pass of their step recomputes
    the new moments from the old codes, so there is no stored copy to read.
    """

    def fn(m: Any) -> Callable[[jax.Array], jax.Array]:
        if is_quantized(m):
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
    body: Callable[..., tuple], compute_dtype: Any, g: jax.Array, *moments: Any
) -> tuple:
    """Run an element-wise leaf update on stored moments, storing them again.

    ``body(g, *moments)`` gets the moments in ``compute_dtype`` and returns
    ``(update, *new_moments)`` in it. Moments stored as arrays are cast in
    and returned as computed (the caller casts them back); quantized ones are
    dequantized, and the new values quantized again with their new block
    maxima, inside the same computation.

    Args:
        body: the element-wise update of one leaf.
        compute_dtype: the dtype ``body`` computes in.
        g: the gradient leaf.
        *moments: the stored moments of that leaf.

    Returns:
        ``(update, *new_moments)``, the update in the shape of ``g``.
    """
    quantized = [m for m in moments if is_quantized(m)]
    if not quantized:
        return body(g, *(m.astype(compute_dtype) for m in moments))
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
            _requantize(x, m) if is_quantized(m) else x
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


def explicit_sharding(x: Any) -> Any:
    """The sharding of ``x`` if it is split over explicit mesh axes, else None.

    With explicit axes (the default of ``jax.make_mesh``) a sharding is part of
    the type: reshapes and slices must say where their results live.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    if mesh is None or spec is None:
        return None
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()), strict=False))
    used = [
        a for e in spec if e is not None for a in (e if isinstance(e, tuple) else (e,))
    ]
    explicit = jax.sharding.AxisType.Explicit
    return sharding if any(types.get(a) == explicit for a in used) else None


def _update_explicit(
    body: Callable[..., tuple],
    compute_dtype: Any,
    g: jax.Array,
    moments: tuple,
    sharding: Any,
) -> tuple:
    """:func:`update_moments` for a gradient split over explicit mesh axes.

    Split by rows into whole blocks, each device updates its own blocks in one
    pass. Split otherwise, blocks would straddle devices: the leaf is gathered,
    updated with replicated codes, and the update split again.
    """
    mesh = sharding.mesh

    def on(*entries: Any) -> Any:
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*entries))

    reshard = jax.sharding.reshard
    fmt = moments[0].format
    rows = _row_axes(sharding.spec, mesh, fmt)
    if rows is None:
        whole = [
            QuantizedArray(
                reshard(m.codes, on(None, None)), reshard(m.absmax, on(None)), m.format
            )
            for m in moments
        ]
        u, *new = update_moments(body, compute_dtype, reshard(g, on()), *whole)
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


def _requantize(x: jax.Array, like: QuantizedArray) -> QuantizedArray:
    fmt = like.format
    cmap = _MAPS[(fmt.code_map, fmt.bits)]
    blocks = _as_blocks(x, fmt).astype(jnp.float32)
    codes, absmax = _quantize_blocks(blocks, cmap, fmt.bits)
    return QuantizedArray(codes, absmax, fmt)


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


# -------------------------------------------------------- low-precision params


def _is_low_precision(p: Any) -> bool:
    dtype = getattr(p, "dtype", None)
    return (
        dtype is not None
        and jnp.issubdtype(dtype, jnp.floating)
        and jnp.dtype(dtype).itemsize < 4
    )


class KahanSummationState(NamedTuple):
    """State of :func:`kahan_summation`."""

    inner_state: Any  # the wrapped optimizer's state
    compensation: Any  # like params (low-precision leaves), MaskedNode elsewhere


def kahan_summation(
    inner: GradientTransformation, compensation_dtype: Any | None = None
) -> GradientTransformation:
    r"""Compensated (Kahan) summation of the updates into low-precision params.

    .. math::
        \begin{aligned}
        y_t &= u_t + c_{t-1} \\
        \theta_t &= \operatorname{round}(\theta_{t-1} + y_t) \\
        c_t &= y_t - (\theta_t - \theta_{t-1})
        \end{aligned}

    :math:`u_t` is the inner optimizer's update and :math:`\operatorname{round}`
    the rounding to the params' dtype. An update below half the spacing of the
    params is not lost but kept in :math:`c` until enough of it has gathered.
    This runs for bfloat16 and float16 leaves; wider ones pass through.

    The returned updates are :math:`\theta_t - \theta_{t-1}` in float32, so
    :func:`adamx.apply_updates` lands exactly on :math:`\theta_t`; wrap the whole
    optimizer, with nothing after it. The compensation is stored by default in
    the params' dtype, as in optimi: it is at most half a unit in the last place
    of :math:`\theta`, so in bfloat16 it carries 8 more significant bits below
    the param's last one, 16 in all, for 2 bytes per param instead of the 4 of
    float32 params (``compensation_dtype=jnp.float32`` keeps 24 more, for 4).

    Args:
        inner: the optimizer whose updates are summed.
        compensation_dtype: dtype of :math:`c`; ``None`` uses each param's.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`KahanSummationState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.lowbit import kahan_summation
        >>> params = jnp.ones(2, jnp.bfloat16)
        >>> tx = kahan_summation(adamx.sgd(1e-3))
        >>> state = tx.init(params)
        >>> for _ in range(100):  # each step is 1e-3, a quarter of a bf16 spacing
        ...     u, state = tx.update(-jnp.ones(2, jnp.bfloat16), state, params)
        ...     params = adamx.apply_updates(params, u)
        >>> params
        Array([1.10156, 1.10156], dtype=bfloat16)
    """
    check_transformation("inner", inner)
    if compensation_dtype is not None:
        compensation_dtype = jnp.dtype(compensation_dtype)
        if not jnp.issubdtype(compensation_dtype, jnp.floating):
            raise TypeError(
                f"compensation_dtype must be a floating dtype, got "
                f"{compensation_dtype!r}"
            )

    def init_fn(params):
        def leaf(p):
            if not _is_low_precision(p):
                return MaskedNode()
            return jnp.zeros_like(p, dtype=compensation_dtype or p.dtype)

        return KahanSummationState(inner.init(params), jax.tree.map(leaf, params))

    def update_fn(updates, state, params=None, **extra_args):
        require_params("kahan_summation", params)
        updates, inner_state = call_update(
            inner, updates, state.inner_state, params, extra_args
        )
        p_leaves, treedef = jax.tree.flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        c_leaves = treedef.flatten_up_to(state.compensation)
        new_u, new_c = [], []
        for p, u, c in zip(p_leaves, u_leaves, c_leaves, strict=True):
            if isinstance(c, MaskedNode):
                new_u.append(u)
                new_c.append(c)
                continue
            ct = wider_dtype(p.dtype, u.dtype, c.dtype, jnp.float32)
            p_ = p.astype(ct)
            y = u.astype(ct) + c.astype(ct)
            # Both are values of p's dtype, so their difference in float32 is
            # exact and p + delta gives back the rounded sum.
            delta = (p_ + y).astype(p.dtype).astype(ct) - p_
            new_u.append(delta)
            new_c.append((y - delta).astype(c.dtype))
        return treedef.unflatten(new_u), KahanSummationState(
            inner_state, treedef.unflatten(new_c)
        )

    tx = GradientTransformation(init_fn, update_fn)
    return elementwise(tx) if is_elementwise(inner) else tx


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`."""

    inner_state: Any  # the wrapped optimizer's state
    key: jax.Array  # shape=(), typed PRNG key: split once per step


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    r"""Round ``x`` to ``dtype`` up or down at random, exactly in expectation.

    .. math::
        \operatorname{sr}(x) = \begin{cases} \lceil x \rceil & \text{with
        probability } (x - \lfloor x \rfloor) / (\lceil x \rceil - \lfloor x
        \rfloor) \\ \lfloor x \rfloor & \text{otherwise} \end{cases}, \qquad
        \mathbb{E}[\operatorname{sr}(x)] = x

    where :math:`\lfloor x \rfloor, \lceil x \rceil` are the neighbours of
    :math:`x` in ``dtype``. For bfloat16, the upper half of a float32, 16
    random bits are added to the lower half before it is cut off, so the
    probabilities are exact to :math:`2^{-16}` of a spacing.

    Args:
        x: values in float32 (or a wider float).
        dtype: the low-precision float dtype to round to.
        key: a PRNG key.

    Returns:
        ``x`` rounded, in ``dtype``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from adamx.lowbit import stochastic_round
        >>> x = jnp.full(100_000, 1.0 + 2.0**-9)  # a quarter of the way up
        >>> r = stochastic_round(x, jnp.bfloat16, jax.random.key(0))
        >>> sorted(set(r.tolist())), round(float(r.astype(jnp.float32).mean()), 4)
        ([1.0, 1.0078125], 1.002)
    """
    dtype = jnp.dtype(dtype)
    x = jnp.asarray(x).astype(jnp.float32)
    if dtype == jnp.bfloat16:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        noise = jax.random.bits(key, x.shape, jnp.uint32) >> 16
        # Adding to the magnitude's bits rounds the magnitude up with the right
        # probability, for either sign; inf stays inf.
        finite = jnp.isfinite(x)
        bits = jnp.where(finite, bits + noise, bits) & jnp.uint32(0xFFFF0000)
        return jax.lax.bitcast_convert_type(bits, jnp.float32).astype(dtype)
    nearest = x.astype(dtype)
    near = nearest.astype(jnp.float32)
    other = jnp.nextafter(
        nearest, jnp.where(near > x, -jnp.inf, jnp.inf).astype(dtype)
    ).astype(jnp.float32)
    low, high = jnp.minimum(near, other), jnp.maximum(near, other)
    gap = high - low
    up = jnp.where(gap > 0, (x - low) / jnp.where(gap > 0, gap, 1), 0)
    draw = jax.random.uniform(key, x.shape, jnp.float32)
    out = jnp.where(near == x, near, jnp.where(draw < up, high, low))
    return jnp.where(jnp.isfinite(x), out, x).astype(dtype)


def stochastic_rounding(
    inner: GradientTransformation, seed: int | jax.Array = 0
) -> GradientTransformation:
    r"""Round the new low-precision params stochastically instead of to nearest.

    .. math::
        \theta_t = \operatorname{sr}(\theta_{t-1} + u_t), \qquad
        \mathbb{E}[\theta_t \mid \theta_{t-1}] = \theta_{t-1} + u_t

    :math:`u_t` is the inner optimizer's update, computed and added in float32,
    and :math:`\operatorname{sr}` is :func:`stochastic_round` to the params'
    dtype. An update far below the spacing of the params moves a param by one
    spacing with a probability in proportion, so none is lost on average. This
    runs for bfloat16 and float16 leaves; wider ones pass through.

    The key is kept in the state and split once per step (and folded with the
    leaf's index), so a run is determined by ``seed``. The returned updates are
    :math:`\theta_t - \theta_{t-1}` in float32, so :func:`adamx.apply_updates`
    lands exactly on :math:`\theta_t`; wrap the whole optimizer.

    Args:
        inner: the optimizer whose updates are rounded.
        seed: an int, or a PRNG key (typed or raw ``uint32``).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`StochasticRoundingState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.lowbit import stochastic_rounding
        >>> params = jnp.ones(1000, jnp.bfloat16)
        >>> tx = stochastic_rounding(adamx.sgd(1e-3), seed=0)
        >>> state = tx.init(params)
        >>> for _ in range(100):
        ...     u, state = tx.update(-jnp.ones(1000, jnp.bfloat16), state, params)
        ...     params = adamx.apply_updates(params, u)
        >>> round(float(params.astype(jnp.float32).mean()), 2)
        1.1
    """
    check_transformation("inner", inner)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        make_key = lambda: jax.random.key(int(seed))  # noqa: E731
    elif isinstance(seed, jax.Array | np.ndarray) and (
        jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
        or seed.dtype == np.uint32
    ):
        key = seed
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(jnp.asarray(key))
        make_key = lambda: key  # noqa: E731
    else:
        raise TypeError(f"seed must be an int or a PRNG key, got {seed!r}")

    def init_fn(params):
        return StochasticRoundingState(inner.init(params), make_key())

    def update_fn(updates, state, params=None, **extra_args):
        require_params("stochastic_rounding", params)
        updates, inner_state = call_update(
            inner, updates, state.inner_state, params, extra_args
        )
        key, step_key = jax.random.split(state.key)
        p_leaves, treedef = jax.tree.flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        new_u = []
        for i, (p, u) in enumerate(zip(p_leaves, u_leaves, strict=True)):
            if not _is_low_precision(p) or u is None:
                new_u.append(u)
                continue
            ct = wider_dtype(p.dtype, u.dtype, jnp.float32)
            p_ = p.astype(ct)
            rounded = stochastic_round(
                p_ + u.astype(ct), p.dtype, jax.random.fold_in(step_key, i)
            )
            new_u.append(rounded.astype(ct) - p_)
        return treedef.unflatten(new_u), StochasticRoundingState(inner_state, key)

    return GradientTransformation(init_fn, update_fn)
