"""Low-precision state: code maps, block-wise quantization, state_bits on the Adam
family, Kahan summation and stochastic rounding for bfloat16 params.

The code maps are checked against a NumPy transcription of the construction in
Dettmers et al. (bitsandbytes' ``create_dynamic_map``) and Li et al. (the linear
map without zero); quantization against a brute-force nearest-code search.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from test_transforms import compiled_step

import adamx
import adamx.checkpoint
from adamx import lowbit
from adamx.lowbit import (
    QuantizedArray,
    code_map,
    dequantize,
    kahan_summation,
    quantize,
    state_nbytes,
    stochastic_round,
    stochastic_rounding,
)

ADAM_FAMILY = [
    "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adamaxw", "radam",
    "adabelief", "lamb",
]  # fmt: skip
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


# ----------------------------------------------------------- state_bits: setup


def big_params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(64, 128)), dtype),  # 8192: quantized
        "b": jnp.asarray(rng.normal(size=(128,)), dtype),  # small: float32
        "odd": jnp.asarray(rng.normal(size=(33, 131)), dtype),  # padded blocks
    }


def moments(state):
    """Every moment (mu, nu, nu_max) of an Adam-family state, by field."""
    found = {}

    def visit(node):
        if hasattr(node, "_fields"):
            for field in ("mu", "nu", "nu_max"):
                if field in node._fields:
                    found.setdefault(field, []).append(getattr(node, field))
            for child in node:
                visit(child)
        elif isinstance(node, (tuple, list)):
            for child in node:
                visit(child)

    visit(state)
    return found


@pytest.mark.parametrize("name", ADAM_FAMILY)
@pytest.mark.parametrize("bits", [16, 8, 4])
def test_state_bits_stores_the_moments_as_asked(name, bits, strict_promotion):
    tx = getattr(adamx, name)(learning_rate=1e-2, state_bits=bits)
    params = big_params()
    state = tx.init(params)
    found = moments(state)
    assert found
    for field, trees in found.items():
        for tree in trees:
            w, b = tree["w"], tree["b"]
            if bits == 16:
                assert w.dtype == b.dtype == jnp.bfloat16, field
                continue
            assert isinstance(w, QuantizedArray) and w.bits == bits, field
            assert isinstance(tree["odd"], QuantizedArray), field
            signed = field == "mu"
            assert w.format.code_map == map_name(bits, signed), field
            assert b.dtype == jnp.float32, "small leaves keep float32 state"

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: jnp.sin(p) * 0.1, params)
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    new, new_state = step(params, state)
    new, new_state = step(new, new_state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    for leaf in jax.tree.leaves(new):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert not bool(jnp.all(new["w"] == params["w"]))


def test_state_bits_is_checked():
    for bad in (7, 0, True, "8", 8.0, jnp.array([8])):
        with pytest.raises(ValueError, match="state_bits must be one of 32, 16, 8, 4"):
            adamx.adam(1e-3, state_bits=bad)
    with pytest.raises(ValueError, match=r"state_bits must be .* got 7"):
        adamx.scale_by_amsgrad(state_bits=7)


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"mu_dtype": jnp.bfloat16}, ["mu_dtype"]),
        ({"nu_dtype": jnp.float16}, ["nu_dtype"]),
        (
            {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16},
            ["mu_dtype", "nu_dtype"],
        ),
    ],
)
def test_state_bits_and_dtype_arguments_do_not_mix(kwargs, names):
    with pytest.raises(ValueError) as info:
        adamx.adamw(1e-3, state_bits=8, **kwargs)
    for name in ["state_bits=8", *names]:
        assert name in str(info.value)
    # 32 leaves the dtype arguments in charge.
    adamx.adamw(1e-3, state_bits=32, **kwargs)


def test_fused_refuses_quantized_state_and_takes_bf16():
    with pytest.raises(ValueError, match="fused=True cannot be combined with state_b"):
        adamx.adam(1e-3, fused=True, state_bits=8)
    tx = adamx.adam(1e-3, fused=True, state_bits=16)
    flat = adamx.ravel(big_params())
    _, state = tx.update(flat, tx.init(flat), flat)
    assert state[0].mu.buffers["float32"].dtype == jnp.bfloat16
    assert adamx.is_elementwise(adamx.adam(1e-3, state_bits=16))
    assert not adamx.is_elementwise(adamx.adam(1e-3, state_bits=4))


@pytest.mark.parametrize("inject", ["adamx", "optax"])
def test_inject_hyperparams_with_state_bits(inject):
    """Injected or not, the storage is built once and then read from the state."""
    import optax

    wrapper = {"adamx": adamx.inject_hyperparams, "optax": optax.inject_hyperparams}
    tx = wrapper[inject](adamx.adamw)(learning_rate=1e-2, state_bits=8)
    params = big_params()
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(params, state, params)
    assert updates["w"].shape == (64, 128)
    assert isinstance(moments(new_state)["mu"][0]["w"], QuantizedArray)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


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


def quadratic_run(tx, steps=100, seed=0):
    """Minimise 0.5 * sum(h * (x - c)^2) from x = 0, h in [0.5, 2], c ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    shape = (128, 96)  # 12288 elements: quantized
    h = jnp.asarray(10.0 ** rng.uniform(-0.3, 0.3, shape), jnp.float32)
    c = jnp.asarray(rng.normal(size=shape), jnp.float32)
    params = {"x": jnp.zeros(shape), "bias": jnp.zeros(8)}

    def loss(p):
        return 0.5 * jnp.sum(h * (p["x"] - c) ** 2) + jnp.sum((p["bias"] - 1) ** 2)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        p = adamx.apply_updates(p, u)
        return p, s, loss(p)

    state = tx.init(params)
    trajectory, losses = [], []
    for _ in range(steps):
        params, state, value = step(params, state)
        trajectory.append(params["x"])
        losses.append(value)
    return np.stack(trajectory), np.asarray(losses, np.float64)


# Tolerances against fp32 Adam over 100 steps at learning rate 1e-2: the largest
# relative deviation of the params, ||x_t - x*_t|| / ||x*_t|| (x*_t the fp32
# run, from x_0 = 0), and of the loss, |L_t / L*_t - 1|. Measured on this
# problem: bf16 0.4% and 0.4%; 8-bit 4.2% and 0.2%; 4-bit 46% and 38%. At 4
# bits the first moment's 16 codes are far apart: a decaying m is held at a code
# (0.9 m rounds back to m) until its block's maximum changes.
DEVIATION = {16: 0.01, 8: 0.06, 4: 0.55}
LOSS_DEVIATION = {16: 0.01, 8: 0.02, 4: 0.5}


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_quantized_adam_follows_fp32_adam_for_100_steps(bits):
    ref, ref_loss = quadratic_run(adamx.adam(1e-2))
    ours, our_loss = quadratic_run(adamx.adam(1e-2, state_bits=bits))
    dev = np.linalg.norm((ours - ref).reshape(100, -1), axis=1) / np.linalg.norm(
        ref.reshape(100, -1), axis=1
    )
    assert dev.max() < DEVIATION[bits], dev.max()
    loss_dev = np.abs(our_loss / ref_loss - 1).max()
    assert loss_dev < LOSS_DEVIATION[bits], loss_dev
    assert our_loss[-1] < 0.7 * our_loss[0]


# 8-bit, measured: deviations of 2.7% (lamb) to 9.4% (radam), loss within 8.4%.
@pytest.mark.parametrize(
    "name", ["nadamw", "amsgrad", "radam", "adabelief", "adamax", "lamb"]
)
def test_each_adam_family_optimizer_follows_its_fp32_run_at_8_bits(name):
    make = getattr(adamx, name)
    ref, ref_loss = quadratic_run(make(1e-2), steps=100)
    ours, our_loss = quadratic_run(make(1e-2, state_bits=8), steps=100)
    dev = np.linalg.norm(ours[-1] - ref[-1]) / np.linalg.norm(ref[-1])
    assert dev < 0.15, dev
    assert np.abs(our_loss / ref_loss - 1).max() < 0.12


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


# ---------------------------------- jit, donation, scan, checkpoint, sharding


def loss_fn(params, x):
    h = jnp.tanh(x @ params["w"][:, :16])
    return (
        jnp.mean(h**2)
        + 0.1 * jnp.sum(jnp.sin(params["odd"]))
        + jnp.sum(params["b"] ** 2)
    )


def make_step(tx):
    def step(params, state, x):
        grads = jax.grad(loss_fn)(params, x)
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    return step


def batch(i):
    return jnp.asarray(np.random.default_rng(i).normal(size=(8, 64)), jnp.float32)


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_jit_donation_and_scan_agree(bits):
    tx = adamx.adamw(1e-2, state_bits=bits)
    params = big_params()
    plain = jax.jit(make_step(tx))
    donated = jax.jit(make_step(tx), donate_argnums=(0, 1))
    p1, s1 = params, tx.init(params)
    p2, s2 = jax.tree.map(jnp.copy, params), tx.init(params)
    for i in range(3):
        p1, s1 = plain(p1, s1, batch(i))
        p2, s2 = donated(p2, s2, batch(i))
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def body(carry, x):
        return make_step(tx)(*carry, x), None

    xs = jnp.stack([batch(i) for i in range(3)])
    (p3, s3), _ = jax.lax.scan(body, (params, tx.init(params)), xs)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p3, s3)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
def test_checkpoint_round_trip_is_exact_and_training_resumes(bits, tmp_path):
    tx = kahan_summation(adamx.adamw(1e-2, state_bits=bits))
    params = big_params(dtype=jnp.bfloat16)
    step = jax.jit(make_step(tx))
    state = tx.init(params)
    for i in range(2):
        params, state = step(params, state, batch(i))
    adamx.checkpoint.save(tmp_path / "ckpt", {"params": params, "opt": state})
    target = jax.eval_shape(lambda: {"params": params, "opt": tx.init(params)})
    restored = adamx.checkpoint.restore(tmp_path / "ckpt", target)
    assert jax.tree.structure(restored) == jax.tree.structure(
        {"params": params, "opt": state}
    )
    for a, b in zip(
        jax.tree.leaves({"params": params, "opt": state}),
        jax.tree.leaves(restored),
        strict=True,
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    p1, s1 = step(params, state, batch(5))
    p2, s2 = step(restored["params"], restored["opt"], batch(5))
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_stochastic_rounding_state(tmp_path):
    tx = stochastic_rounding(adamx.adam(1e-2, state_bits=8), seed=3)
    params = big_params(dtype=jnp.bfloat16)
    params, state = jax.jit(make_step(tx))(params, tx.init(params), batch(0))
    adamx.checkpoint.save(tmp_path / "sr", state)
    restored = adamx.checkpoint.restore(
        tmp_path / "sr", jax.eval_shape(tx.init, params)
    )
    np.testing.assert_array_equal(
        jax.random.key_data(restored.key), jax.random.key_data(state.key)
    )
    a = jax.jit(make_step(tx))(params, state, batch(1))
    b = jax.jit(make_step(tx))(params, restored, batch(1))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("bits", [32, 16, 8, 4])
@pytest.mark.parametrize("spec", [P("d", None), P(None, "d")])
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_params_give_the_numbers_of_unsharded_ones(bits, spec, axis_type):
    """Row-split params keep row-split codes; otherwise codes are replicated."""
    assert jax.device_count() == 8, "conftest asks for 8 host devices"
    mesh = jax.make_mesh((8,), ("d",), axis_types=(axis_type,))
    tx = adamx.adam(1e-2, state_bits=bits)
    params = {"w": jnp.asarray(heavy_tailed((256, 64), 1), jnp.float32)}
    sharded = jax.device_put(params, NamedSharding(mesh, spec))
    step = jax.jit(lambda p, s, x: make_step_w(tx)(p, s, x))
    p1, s1 = params, tx.init(params)
    p2, s2 = sharded, tx.init(sharded)
    if bits in (8, 4):
        codes = s2[0].mu["w"].codes
        # Row-split params split whole blocks the same way; others replicate.
        assert codes.sharding.is_fully_replicated == (spec == P(None, "d"))
    for i in range(3):
        p1, s1 = step(p1, s1, jnp.float32(i))
        p2, s2 = step(p2, s2, jnp.float32(i))
    assert p2["w"].sharding.is_equivalent_to(NamedSharding(mesh, spec), 2)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def make_step_w(tx):
    def step(params, state, t):
        grads = jax.grad(lambda p: jnp.sum(jnp.sin(p["w"] + t) * p["w"]))(params)
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    return step


# ------------------------------------------------------ bf16 params: Kahan, SR


def tiny_updates_run(wrap, steps=200, dtype=jnp.bfloat16):
    """SGD with a step 1/8 of bf16's spacing at 1: plain rounding loses all."""
    params = {"w": jnp.ones((64, 64), dtype), "small": jnp.ones(3, jnp.float32)}
    tx = wrap(adamx.sgd(2.0**-10))
    grads = {"w": -jnp.ones((64, 64), dtype), "small": -jnp.ones(3)}

    @jax.jit
    def step(params, state):
        u, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, u), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def test_plain_bf16_loses_tiny_updates_and_kahan_keeps_them():
    exact = 1.0 + 200 * 2.0**-10
    plain, _ = tiny_updates_run(lambda tx: tx)
    assert bool(jnp.all(plain["w"] == 1.0)), "each update is below half a spacing"
    kahan, state = tiny_updates_run(kahan_summation)
    assert kahan["w"].dtype == jnp.bfloat16
    # bf16 spacing at 1.2 is 2^-7: the param is the fp32 value rounded down,
    # and the rest is in the compensation.
    w = np.asarray(kahan["w"], np.float64)
    assert np.all(np.abs(w - exact) <= 2.0**-7)
    c = np.asarray(state.compensation["w"], np.float64)
    np.testing.assert_allclose(w + c, exact, atol=2.0**-14)
    assert isinstance(state.compensation["small"], adamx.MaskedNode)
    np.testing.assert_allclose(kahan["small"], exact, rtol=1e-6)


def test_kahan_compensation_dtype():
    tx = kahan_summation(adamx.sgd(1e-3), compensation_dtype=jnp.float32)
    state = tx.init({"w": jnp.ones(3, jnp.bfloat16)})
    assert state.compensation["w"].dtype == jnp.float32
    with pytest.raises(TypeError, match="compensation_dtype must be a floating"):
        kahan_summation(adamx.sgd(1e-3), compensation_dtype=jnp.int32)


def test_stochastic_rounding_tracks_the_fp32_trajectory_in_the_mean():
    exact = 1.0 + 200 * 2.0**-10
    sr, _ = tiny_updates_run(lambda tx: stochastic_rounding(tx, seed=0))
    w = np.asarray(sr["w"], np.float64)
    assert len(np.unique(w)) > 1
    # Each param is a sum of 200 independent rounding errors, each bounded by
    # the spacing 2^-7 and of mean zero: the mean of 4096 params is within
    # 5 standard deviations (sd <= 2^-7 * sqrt(200 / 4) / 64) of the exact value.
    assert abs(w.mean() - exact) < 5 * 2.0**-7 * math.sqrt(50) / 64
    np.testing.assert_allclose(sr["small"], exact, rtol=1e-6)


def test_stochastic_rounding_is_determined_by_the_seed():
    a, _ = tiny_updates_run(lambda tx: stochastic_rounding(tx, seed=1), steps=20)
    b, _ = tiny_updates_run(lambda tx: stochastic_rounding(tx, seed=1), steps=20)
    c, _ = tiny_updates_run(lambda tx: stochastic_rounding(tx, seed=2), steps=20)
    d, _ = tiny_updates_run(
        lambda tx: stochastic_rounding(tx, seed=jax.random.key(1)), steps=20
    )
    np.testing.assert_array_equal(a["w"], b["w"])
    np.testing.assert_array_equal(a["w"], d["w"])
    assert not np.array_equal(np.asarray(a["w"]), np.asarray(c["w"]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_round_is_unbiased(dtype):
    """E[sr(x)] = x, checked with a fixed seed and Hoeffding's bound.

    For each x the n draws are independent, each equal to the lower or the
    upper neighbour of x, an interval of width s. By Hoeffding's inequality the
    mean of n draws is further than t from its expectation with probability at
    most 2 exp(-2 n t^2 / s^2); with n = 2^16 and t = 0.02 s that is 3e-23.
    For bfloat16 the draw's probabilities are exact to 2^-16 of s, so the
    expectation itself is within 2^-16 s of x.
    """
    n = 2**16
    rng = np.random.default_rng(0)
    base = np.asarray(rng.uniform(0.5, 4, 32) * rng.choice([-1, 1], 32), np.float32)
    lo = np.asarray(jnp.asarray(base).astype(dtype).astype(jnp.float32))
    spacing = (
        np.asarray(
            jnp.nextafter(jnp.asarray(lo, dtype), jnp.asarray(np.inf, dtype)).astype(
                jnp.float32
            )
        )
        - lo
    )
    frac = rng.uniform(0, 1, 32).astype(np.float32)
    x = lo + frac * spacing  # strictly between two neighbours (or on the lower)
    draws = stochastic_round(
        jnp.broadcast_to(jnp.asarray(x), (n, 32)), dtype, jax.random.key(42)
    )
    draws = np.asarray(draws.astype(jnp.float32), np.float64)
    assert set(np.unique(draws - lo)) <= {0.0, *spacing.astype(np.float64)}
    t = 0.02 * spacing + 2.0**-16 * spacing
    assert np.all(np.abs(draws.mean(axis=0) - x) <= t)
    assert 2 * math.exp(-2 * n * 0.02**2) < 1e-22


def test_stochastic_round_keeps_representable_values_and_infinities():
    x = jnp.array([1.0, -2.5, 0.0, jnp.inf, -jnp.inf], jnp.float32)
    for dtype in (jnp.bfloat16, jnp.float16):
        r = stochastic_round(x, dtype, jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(r, np.float32), np.asarray(x))


@pytest.mark.parametrize("wrap", [kahan_summation, stochastic_rounding])
def test_wrappers_need_params(wrap):
    tx = wrap(adamx.adam(1e-3))
    g = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match=f"{wrap.__name__} needs the current param"):
        tx.update(g, tx.init(g))


def test_stochastic_rounding_checks_the_seed():
    with pytest.raises(TypeError, match="seed must be an int or a PRNG key"):
        stochastic_rounding(adamx.adam(1e-3), seed=1.5)


def test_wrappers_with_quantized_state_under_strict_promotion(strict_promotion):
    params = big_params(dtype=jnp.bfloat16)
    for wrap in (kahan_summation, lambda t: stochastic_rounding(t, 0)):
        tx = wrap(adamx.adamw(1e-2, state_bits=4))
        p, s = params, tx.init(params)
        for i in range(2):
            p, s = jax.jit(make_step(tx))(p, s, batch(i).astype(jnp.bfloat16))
        assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(p))
        assert not bool(jnp.all(p["w"] == params["w"]))
