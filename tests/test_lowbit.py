"""Tests of adamx/lowbit.py: code maps and block-wise quantization.

The code maps are checked against a NumPy transcription of the construction in
Dettmers et al. (bitsandbytes' ``create_dynamic_map``) and Li et al. (the linear
map without zero); quantization against a brute-force nearest-code search.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compiled_step

import adamx
from adamx import lowbit
from adamx.lowbit import (
    QuantizedArray,
    code_map,
    dequantize,
    quantize,
    state_nbytes,
)

QUANTIZED = [(8, True), (8, False), (4, True), (4, False)]

# ------------------------------------------------------------ the reference maps


def reference_dynamic_map(signed, max_exponent_bits, total_bits):
    """The dynamic map as Dettmers et al. build it, sorted.

    For each exponent i = 0..E-1, the centres of equal bins of [0.1, 1] scaled
    by 10^(i - E + 1): 2^i of them when signed (and their negatives), 2^(i+1)
    when unsigned; then 0 and 1.
    """
    values = []
    data_bits = total_bits - 1
    for i in range(max_exponent_bits):
        extra = 0 if signed else 1
        n = 2 ** (i + data_bits - max_exponent_bits + extra)
        edges = np.linspace(0.1, 1.0, n + 1)
        centres = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - max_exponent_bits + 1)
        values.extend(centres)
        if signed:
            values.extend(-centres)
    values.extend([0.0, 1.0])
    assert len(values) == 2**total_bits
    return np.sort(np.asarray(values))


def reference_map(name, bits):
    if name == "linear_nonzero":
        return (np.arange(2**bits) + 1) / 2**bits
    return reference_dynamic_map(name == "dynamic_signed", bits - 1, bits)


def map_name(bits, signed):
    if signed:
        return "dynamic_signed"
    return "dynamic_unsigned" if bits == 8 else "linear_nonzero"


def reference_quantize(x, bits, signed):
    """Brute force: block maxima, then the nearest value of the sorted map."""
    block = lowbit.BLOCK_SIZES[bits]
    q = np.sort(code_map(map_name(bits, signed), bits).astype(np.float64))
    flat = np.asarray(x, np.float64).reshape(-1)
    pad = -len(flat) % block
    blocks = np.concatenate([flat, np.zeros(pad)]).reshape(-1, block)
    absmax = np.abs(blocks).max(axis=1)
    scaled = blocks / np.where(absmax > 0, absmax, 1)[:, None]
    dist = np.abs(scaled[..., None] - q)
    return blocks, absmax, scaled, q[np.argmin(dist, axis=-1)], dist.min(axis=-1)


def worst_case_error(q, signed):
    """The largest distance from a point of the range to its nearest code."""
    q = np.sort(q)
    low = -1.0 if signed else 0.0
    return max(q[0] - low, 1.0 - q[-1], np.max(np.diff(q)) / 2)


def heavy_tailed(shape, seed):
    """Values over many orders of magnitude, as optimizer moments are."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * np.exp(rng.uniform(-12, 2, shape))


# ------------------------------------------------------------------ code maps


@pytest.mark.parametrize("name, bits", [(map_name(b, s), b) for b, s in QUANTIZED])
def test_code_maps_are_those_of_the_papers(name, bits):
    ours = code_map(name, bits)
    assert ours.dtype == np.float32 and ours.shape == (2**bits,)
    np.testing.assert_allclose(np.sort(ours), reference_map(name, bits), rtol=1e-6)
    assert len(set(ours.tolist())) == 2**bits, "every code stands for its own value"
    assert not ours.flags.writeable


def test_code_map_names_are_checked():
    with pytest.raises(ValueError, match="no code map 'dynamic_signed' with 2 bits"):
        code_map("dynamic_signed", 2)


def test_dynamic_map_codes_follow_the_bit_layout():
    """Sign bit, then the exponent as leading zeros, an indicator bit, fraction."""
    q = code_map("dynamic_signed", 8)
    assert q[0] == 0 and q[0b1000_0000] == 1
    assert q[0b0100_0000] == pytest.approx(0.1 + 0.9 * 0.5 / 64)  # E=0, f=0
    assert q[0b0111_1111] == pytest.approx(1 - 0.9 * 0.5 / 64)  # E=0, last f
    assert q[0b0000_0001] == pytest.approx(1e-6 * 0.55)  # E=6, no fraction bits
    assert q[0b1100_0000] == -q[0b0100_0000]


# -------------------------------------------------------------- quantization


@pytest.mark.parametrize("bits, signed", QUANTIZED)
@pytest.mark.parametrize("shape", [(5, 300), (4096,), (7,), (0,), (0, 3)])
def test_quantize_picks_the_nearest_code_within_the_maps_bound(bits, signed, shape):
    x = heavy_tailed(shape, seed=sum(shape) + bits)
    if not signed:
        x = np.abs(x)
    q = quantize(jnp.asarray(x, jnp.float32), bits=bits, signed=signed)
    blocks, absmax, scaled, nearest, dist = reference_quantize(
        np.float32(x), bits, signed
    )
    block = lowbit.BLOCK_SIZES[bits]
    assert q.codes.dtype == jnp.uint8
    assert q.codes.shape == (blocks.shape[0], block * bits // 8)
    np.testing.assert_array_equal(np.asarray(q.absmax), absmax.astype(np.float32))
    back = np.asarray(dequantize(q), np.float64)
    assert back.shape == tuple(shape) and dequantize(q).dtype == jnp.float32
    if not back.size:
        return
    # Compare the elements of the array, not the padding.
    size = back.size
    per_elem = np.repeat(absmax, block)[:size]
    scale = np.where(per_elem > 0, per_elem, 1)
    ours = back.reshape(-1)
    # The code chosen is a nearest one: ties and float32 rounding at the
    # midpoints aside, the same as the brute-force search.
    our_dist = np.abs(ours / scale - scaled.reshape(-1)[:size])
    np.testing.assert_allclose(our_dist, dist.reshape(-1)[:size], atol=2e-6)
    hits = np.isclose(ours / scale, nearest.reshape(-1)[:size], rtol=0, atol=1e-7)
    assert np.mean(hits) > 0.999
    # So the error of a block is at most its absmax times the largest distance
    # from a point of the range to the map, the bound the map implies.
    bound = worst_case_error(code_map(map_name(bits, signed), bits), signed)
    err = np.abs(ours - blocks.reshape(-1)[:size])
    assert np.all(err <= per_elem * bound * (1 + 1e-5) + 1e-30)


@pytest.mark.parametrize("bits, signed", QUANTIZED)
def test_quantizing_code_values_is_exact(bits, signed):
    """Each value of the map, times a block maximum, comes back bit for bit."""
    q = code_map(map_name(bits, signed), bits)
    block = lowbit.BLOCK_SIZES[bits]
    values = np.resize(np.sort(q), block * 2).astype(np.float32)
    values[0], values[block] = 1.0, 1.0  # each block's maximum is exactly 1
    out = quantize(jnp.asarray(values) * 4.0, bits=bits, signed=signed)
    np.testing.assert_array_equal(np.asarray(out.dequantize()), values * 4.0)


@pytest.mark.parametrize("name, bits", [(map_name(b, s), b) for b, s in QUANTIZED])
def test_dequantize_gives_the_maps_values_bit_for_bit(name, bits):
    """Decoding (a lookup, or selects on the bits) gives the table's values."""
    n = 2**bits
    codes = np.arange(n, dtype=np.uint8)
    if bits == 4:  # a block of 16: byte j holds codes j and j + 8
        codes = codes[: n // 2] | (codes[n // 2 :] << 4)
    fmt = lowbit.QuantizedFormat((n,), "float32", n, bits, name)
    q = QuantizedArray(jnp.asarray(codes)[None], jnp.ones(1), fmt)
    np.testing.assert_array_equal(jax.jit(dequantize)(q), code_map(name, bits))


def test_four_bit_codes_are_packed_two_per_byte():
    """Byte j of a block of 128 holds code j (low half) and code j + 64."""
    q = code_map("linear_nonzero", 4)
    x = np.resize(q, 128).astype(np.float32)  # codes 0, 1, ..., 15, 0, 1, ...
    packed = np.asarray(quantize(jnp.asarray(x), bits=4, signed=False).codes)
    assert packed.shape == (1, 64)
    codes = np.resize(np.arange(16), 128)
    np.testing.assert_array_equal(packed[0], codes[:64] | (codes[64:] << 4))


def test_block_of_zeros_and_zero_size():
    for bits, signed in QUANTIZED:
        q = quantize(jnp.zeros((3, 200)), bits=bits, signed=signed)
        assert float(jnp.max(jnp.abs(q.dequantize()))) == 0.0
        assert quantize(jnp.zeros((0,)), bits=bits).dequantize().shape == (0,)


def test_quantized_array_is_a_pytree_of_codes_and_absmax():
    q = quantize(jnp.linspace(-1, 1, 1000), bits=4)
    leaves, treedef = jax.tree.flatten(q)
    assert [x.dtype for x in leaves] == [jnp.uint8, jnp.float32]
    again = jax.tree.unflatten(treedef, leaves)
    assert again.format == q.format and again.shape == (1000,) and again.bits == 4
    doubled = jax.jit(lambda q: jax.tree.map(lambda x: x, q))(q)
    np.testing.assert_array_equal(doubled.dequantize(), q.dequantize())
    struct = jax.eval_shape(lambda x: quantize(x, bits=8), jnp.zeros(1000))
    assert struct.codes.shape == (4, 256) and struct.absmax.shape == (4,)
    assert q.nbytes == 8 * 64 + 8 * 4
    assert repr(q) == "QuantizedArray((1000,), float32, 4 bits, dynamic_signed, " \
        "blocks of 128)"  # fmt: skip


def test_quantize_checks_its_arguments():
    with pytest.raises(ValueError, match="bits must be 8 or 4, got 6"):
        quantize(jnp.ones(3), bits=6)
    with pytest.raises(ValueError, match="block_size must be a positive even int"):
        quantize(jnp.ones(3), block_size=7)


# ---------------------------------------------------------- bytes per param


def test_state_nbytes_per_param_on_large_matrices():
    params = {f"layer{i}": jnp.zeros((1024, 1024)) for i in range(4)}
    n = sum(p.size for p in params.values())
    per_param = {}
    for bits in (32, 16, 8, 4):
        structs = jax.eval_shape(adamx.adamw(1e-3, state_bits=bits).init, params)
        per_param[bits] = state_nbytes(structs) / n
    assert per_param[32] == pytest.approx(8, abs=1e-3)
    assert per_param[16] == pytest.approx(4, abs=1e-3)
    assert per_param[8] <= 2.05 and per_param[8] == pytest.approx(2 + 8 / 256, 1e-4)
    assert per_param[4] <= 1.1 and per_param[4] == pytest.approx(1 + 8 / 128, 1e-4)
    # The same on concrete arrays.
    concrete = adamx.scale_by_adam(state_bits=4).init({"w": jnp.zeros((512, 512))})
    assert state_nbytes(concrete) == 2 * (512 * 512 // 2 + 4 * 512 * 512 // 128) + 4


def test_state_nbytes_counts_keys_and_skips_python_numbers():
    state = {"key": jax.random.key(0), "step": 3, "x": jnp.zeros(3, jnp.int8)}
    assert state_nbytes(state) == 8 + 3


# -------------------------------------------------- 100 steps on a quadratic


def reference_quantized_adam(grads, bits, b1=0.9, b2=0.999, eps=1e-8):
    """Adam in float64 whose moments go through the brute-force quantizer."""

    def round_trip(x, signed):
        blocks, absmax, _, nearest, _ = reference_quantize(x, bits, signed)
        return (nearest * absmax[:, None]).reshape(-1)[: x.size].reshape(x.shape)

    m = np.zeros_like(grads[0], np.float64)
    v = np.zeros_like(m)
    updates = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        updates.append((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
        m, v = round_trip(m, True), round_trip(v, False)
    return updates


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_adam_is_the_block_wise_algorithm(bits):
    rng = np.random.default_rng(bits)
    grads = [
        np.float32(rng.normal(size=(40, 300)) * np.exp(rng.uniform(-3, 1, (40, 300))))
        for _ in range(6)
    ]
    expected = reference_quantized_adam([g.astype(np.float64) for g in grads], bits)
    tx = adamx.scale_by_adam(state_bits=bits)
    state = tx.init(jnp.zeros((40, 300)))
    update = jax.jit(tx.update)
    for g, want in zip(grads, expected, strict=True):
        got, state = update(jnp.asarray(g), state)
        rel = np.abs(np.asarray(got, np.float64) - want) / (np.abs(want) + 1e-6)
        # float32 against float64: a value at a midpoint may take the other
        # code, and that difference then carries on; all else agrees closely.
        assert np.mean(rel > 1e-4) < 1e-3 and np.median(rel) < 1e-5
        assert np.max(rel) < 0.05


@pytest.mark.internals
@pytest.mark.parametrize("bits, n", [(8, 1 << 20), (4, 1 << 20), (8, (1 << 20) + 100)])
def test_quantized_step_writes_no_float32_moment(bits, n):
    """The new moments go from registers to codes: the compiled step's scratch
    memory holds no float32 array of the leaf's size, only copies of the old
    codes that the update still reads while the new ones overwrite them. An
    8-bit leaf that is not whole blocks has no padded copy of its gradient
    written out either."""
    compiled = compiled_step(adamx.adam(1e-3, state_bits=bits), {"w": jnp.zeros(n)})
    scratch = compiled.memory_analysis().temp_size_in_bytes
    blocks = -(-n // lowbit.BLOCK_SIZES[bits])
    # Both moments' codes, and a few float32 values per block (maxima, their
    # inverses): well under one float32 moment, 4 * n bytes.
    allowed = 2 * n * bits // 8 + 8 * 4 * blocks + 4096
    assert scratch <= allowed < 4 * n, (scratch, allowed)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("signed", [True, False])
def test_outside_jit_the_codes_are_those_traced_inside_a_program(bits, signed):
    # Outside jit, quantize and dequantize run as a compiled program of their
    # own; inside one they are inlined: the two give the same bits.
    rng = np.random.default_rng(bits + signed)
    x = rng.normal(size=(33, 131)).astype(np.float32)
    x = jnp.asarray(x if signed else np.abs(x))
    eager = lowbit.quantize(x, bits, signed)
    traced = jax.jit(lambda x: lowbit.quantize(x, bits, signed))(x)
    assert eager.format == traced.format
    np.testing.assert_array_equal(eager.codes, traced.codes)
    np.testing.assert_array_equal(
        np.asarray(eager.absmax).view(np.uint32),
        np.asarray(traced.absmax).view(np.uint32),
    )
    back = lowbit.dequantize(eager)
    assert back.shape == x.shape and back.dtype == x.dtype
    np.testing.assert_array_equal(
        np.asarray(back).view(np.uint32),
        np.asarray(jax.jit(lowbit.dequantize)(eager)).view(np.uint32),
    )
    again = lowbit.requantize(back * 2, eager)
    np.testing.assert_array_equal(
        again.codes, jax.jit(lowbit.requantize)(back * 2, eager).codes
    )
