"""Tests of adamx/native.py: the in-place step and its native CPU kernel."""

import contextlib
import ctypes
import functools
import re
import subprocess
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import native

needs_kernel = pytest.mark.skipif(
    not adamx.native_available(), reason="no C++ compiler to build the kernel"
)


def make_flat(sizes=(1000, 300 * 400, 7), seed=0):
    rng = np.random.default_rng(seed)
    tree = {
        f"w{i}": jnp.asarray(rng.normal(size=n), jnp.float32)
        for i, n in enumerate(sizes)
    }
    return adamx.ravel(tree)


def grads_at(flat, i):
    return jax.tree.map(lambda x: jnp.sin(3.0 * x + i) * (1.0 + i % 3), flat)


def chain_step(tx):
    def run(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    return jax.jit(run)


def native_step(tx):
    return jax.jit(lambda p, s, g: adamx.step(tx, g, s, p), donate_argnums=(0, 1))


def run_both(tx, flat, steps=12):
    """Params and state after ``steps`` steps, by adamx.step and by the chain."""
    by_step, by_chain = native_step(tx), chain_step(tx)
    a = (jax.tree.map(jnp.copy, flat), tx.init(flat))
    b = (flat, tx.init(flat))
    for i in range(steps):
        grads = grads_at(b[0], i)
        a = by_step(*a, grads)
        b = by_chain(*b, grads)
    return a, b


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


OPTIMIZERS = {
    "adam": lambda: adamx.adam(3e-2, fused=True),
    "adam, eps_root, b1 array": lambda: adamx.adam(
        1e-2, b1=jnp.float32(0.8), eps=1e-6, eps_root=1e-8, fused=True
    ),
    "adam, schedule": lambda: adamx.adam(
        adamx.warmup_cosine_decay_schedule(0.0, 5e-2, 4, 20), fused=True
    ),
    "adamw": lambda: adamx.adamw(2e-2, weight_decay=0.1, fused=True),
    "adamw, both schedules": lambda: adamx.adamw(
        adamx.linear_schedule(5e-2, 1e-3, 10),
        weight_decay=lambda count: 0.3 / (1.0 + count.astype(jnp.float32)),
        fused=True,
    ),
    "adamw, no decay": lambda: adamx.adamw(1e-2, weight_decay=0.0, fused=True),
}


@needs_kernel
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_native_step_equals_the_chain_bit_for_bit(name, strict_promotion):
    a, b = run_both(OPTIMIZERS[name](), make_flat())
    assert_bitwise_equal(a, b)
    # The loop really moved the params: not an identity compared to itself.
    assert not np.allclose(a[0].buffers["float32"], make_flat().buffers["float32"])


@needs_kernel
def test_native_step_matches_optax_adamw():
    flat = make_flat(sizes=(20000, 64))
    tree = flat.unravel()
    tx = adamx.adamw(1e-2, weight_decay=0.05, fused=True)
    ox = optax.adamw(1e-2, weight_decay=0.05)
    step = native_step(tx)
    params, state = jax.tree.map(jnp.copy, flat), tx.init(flat)
    o_params, o_state = tree, ox.init(tree)
    for i in range(10):
        grads = grads_at(o_params, i)
        params, state = step(params, state, adamx.ravel(grads))
        updates, o_state = ox.update(grads, o_state, o_params)
        o_params = optax.apply_updates(o_params, updates)
    for x, y in zip(
        jax.tree.leaves(params.unravel()), jax.tree.leaves(o_params), strict=True
    ):
        # Optax rounds 1 - b1 and the like differently: float32-level agreement.
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_native_step_runs_the_kernel_in_place():
    tx = adamx.adam(1e-3, fused=True)
    flat = make_flat()
    lowered = native_step(tx).lower(flat, tx.init(flat), flat)
    hlo = lowered.compile().as_text()
    assert hlo.count('custom_call_target="adamx_adam_step"') == 1
    # Params and both moments are written where they were read: no copies of
    # the buffers, and no element-wise loop of XLA's left over.
    n = flat.buffers["float32"].size
    assert f"f32[{n}]{{0}} copy(" not in hlo
    assert f"f32[{n}]{{0}} fusion(" not in hlo


@needs_kernel
def test_native_step_without_donation_keeps_the_inputs():
    tx = adamx.adamw(1e-2, weight_decay=0.1, fused=True)
    flat = make_flat()
    state = tx.init(flat)
    before = np.asarray(flat.buffers["float32"]).copy()
    params, _ = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))(
        flat, state, grads_at(flat, 0)
    )
    np.testing.assert_array_equal(flat.buffers["float32"], before)
    assert not np.array_equal(params.buffers["float32"], before)


@needs_kernel
def test_native_step_eagerly_and_on_a_buffer_split_between_threads():
    # 2**20 + 3 elements: several chunks of the kernel's work, and a ragged end.
    flat = make_flat(sizes=(2**20, 3))
    tx = adamx.adam(1e-2, fused=True)
    grads = grads_at(flat, 1)
    # Op by op, outside jit: the kernel is one of the ops. The reference is the
    # jitted chain; run op by op, the chain itself rounds differently (XLA fuses
    # and contracts only within a compiled program).
    eager = adamx.step(tx, grads, tx.init(flat), flat)
    assert_bitwise_equal(eager, chain_step(tx)(flat, tx.init(flat), grads))


@pytest.mark.parametrize(
    "make_tx, params",
    [
        (lambda: adamx.adam(1e-2, nesterov=True, fused=True), make_flat()),
        (lambda: adamx.adam(1e-2, state_bits=16, fused=True), make_flat()),
        (lambda: adamx.nadamw(1e-3, fused=True), make_flat()),
        (lambda: adamx.inject_hyperparams(adamx.adam)(1e-2, fused=True), make_flat()),
        (lambda: adamx.adam(1e-2, state_bits=4), make_flat().unravel()),
        (lambda: adamx.adam(1e-2), {"a": jnp.ones(300, jnp.bfloat16)}),
        (
            lambda: adamx.adamw(1e-2, weight_decay=0.5, mask={"w0": False, "w1": True}),
            {"w0": jnp.ones(30_000), "w1": jnp.ones(20_000)},
        ),
    ],
    ids=[
        "nesterov",
        "bf16 state",
        "nadamw",
        "injected",
        "4-bit",
        "bf16 params",
        "masked decay",
    ],
)
def test_step_is_update_then_apply_where_the_kernel_does_not_apply(make_tx, params):
    tx = make_tx()
    by_step, by_chain = native_step(tx), chain_step(tx)
    a = (jax.tree.map(jnp.copy, params), tx.init(params))
    b = (params, tx.init(params))
    for i in range(3):
        grads = grads_at(b[0], i)
        a = by_step(*a, grads)
        b = by_chain(*b, grads)
    assert_bitwise_equal(a, b)
    hlo = native_step(tx).lower(params, tx.init(params), params).as_text()
    assert "adamx_adam_step" not in hlo


def test_step_works_with_optax_transformations():
    tx = optax.adam(1e-2)
    params = make_flat().unravel()
    new, _ = adamx.step(tx, params, tx.init(params), params)
    updates, _ = tx.update(params, tx.init(params), params)
    assert_bitwise_equal(new, optax.apply_updates(params, updates))


def test_step_reports_mismatched_gradients():
    tx = adamx.adam(1e-2, fused=True)
    flat = make_flat()
    other = make_flat(sizes=(5, 6))
    with pytest.raises(ValueError, match="state.mu"):
        adamx.step(tx, other, tx.init(flat), flat)


def test_a_failed_build_names_the_compiler_and_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "broken-c++"
    bad.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "broken-c++ 1.0"; exit 0; }\n'
        "echo 'cc1plus: fatal error: out of luck' >&2\n"
        "exit 1\n"
    )
    bad.chmod(0o755)
    with pytest.raises(RuntimeError, match="out of luck"):
        native._build(str(bad))
    assert list(tmp_path.glob("*.so")) == []


@needs_kernel
def test_builds_are_cached_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(tmp_path))
    compiler = native.shutil.which("g++")
    first = native._build(compiler)
    assert first.parent == tmp_path and first.exists()
    mtime = first.stat().st_mtime_ns
    assert native._build(compiler) == first
    assert first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # The library exports the handler XLA calls.
    symbols = subprocess.run(
        ["nm", "-D", str(first)], capture_output=True, text=True
    ).stdout
    assert "AdamxAdamStep" in symbols


def test_without_a_compiler_the_reason_says_so(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native._load.__wrapped__() == "no C++ compiler: set $CXX or install g++"


def test_without_a_kernel_step_warns_once_and_still_steps(monkeypatch):
    monkeypatch.setattr(native, "_load", lambda: "no C++ compiler: test")
    native._warn_once.cache_clear()
    tx = adamx.adam(1e-2, fused=True)
    flat = make_flat()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler: test"):
        params, state = adamx.step(tx, flat, tx.init(flat), flat)
    updates, ref_state = tx.update(flat, tx.init(flat), flat)
    assert_bitwise_equal(
        (params, state), (adamx.apply_updates(flat, updates), ref_state)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adamx.step(tx, flat, state, params)
    native._warn_once.cache_clear()


@needs_kernel
def test_native_step_under_shard_map_on_replicated_params():
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    tx = adamx.adam(1e-2, fused=True)
    flat = make_flat()

    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False
    )
    def step(params, state, grads):
        return adamx.step(tx, grads, state, params)

    a = jax.jit(step)(flat, tx.init(flat), grads_at(flat, 0))
    b = chain_step(tx)(flat, tx.init(flat), grads_at(flat, 0))
    assert_bitwise_equal(a, b)


def make_tree(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"big": (300, 400), "ragged": (80_000 + 100,), "conv": (3, 3, 16, 32)}
    tree = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    tree["small"] = jnp.asarray(rng.normal(size=(7,)), jnp.float32)  # float32 state
    tree["empty"] = jnp.zeros((0, 4), jnp.float32)  # nothing to update: no kernel
    tree["half"] = jnp.asarray(rng.normal(size=(64,)), jnp.bfloat16)  # the chain's
    tree["none"] = None
    return tree


def assert_one_step_agrees(tx, params, state, grads, code_flips=0.0):
    """One step by adamx.step and by the jitted chain, from the same state."""
    got = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))(params, state, grads)
    want = chain_step(tx)(params, state, grads)
    paths = [
        jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(got)
    ]
    for path, x, y in zip(
        paths, jax.tree.leaves(got), jax.tree.leaves(want), strict=True
    ):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        if x.dtype == np.uint8:
            # The new moments agree to float32 rounding; one at a midpoint
            # between two codes may take the neighbouring code.
            differ = x != y
            assert differ.mean() <= code_flips, path
            assert np.all(np.abs(x[differ].astype(int) - y[differ]) <= 1), path
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=path)
    return want


@needs_kernel
@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize(
    "make_tx",
    [
        lambda bits: adamx.adam(2e-2, state_bits=bits),
        lambda bits: adamx.adamw(
            adamx.cosine_decay_schedule(3e-2, 10), weight_decay=0.1, state_bits=bits
        ),
    ],
    ids=["adam", "adamw"],
)
def test_native_step_on_a_tree_agrees_with_the_chain_step_by_step(make_tx, bits):
    tx = make_tx(bits)
    params = make_tree()
    state = tx.init(params)
    hlo = native_step(tx).lower(params, state, params).as_text()
    # One call per kernel for all its leaves: with 8 bits, one for the three
    # leaves of 4096 elements or more and one for the small leaf's float32
    # state; with float32 state, one for the four leaves.
    calls = {
        name: (len(operands.split(",")), int(results))
        for results, name, operands in re.findall(
            r"%\S+:(\d+) = stablehlo.custom_call @(\w+)\(([^)]*)\)", hlo
        )
    }
    if bits == 8:
        # Operands: scalars, two tables, six buffers a leaf; results: five a leaf.
        assert calls == {
            "adamx_adam_8bit_step": (3 + 6 * 3, 5 * 3),
            "adamx_adam_step": (1 + 4, 3),
        }
    else:
        assert calls == {"adamx_adam_step": (1 + 4 * 4, 3 * 4)}
    # In place: no copy of any leaf's params or moments, whatever its rank.
    compiled = native_step(tx).lower(params, state, params).compile().as_text()
    # (An empty leaf's copy of nothing does not count.)
    assert not re.search(r"(f32|u8)\[[1-9]\d*(,[1-9]\d*)*\]\{[\d,]+\} copy\(", compiled)
    for i in range(6):
        grads = grads_at(params, i)
        params, state = assert_one_step_agrees(
            tx, params, state, grads, code_flips=1e-3 if bits == 8 else 0.0
        )


@needs_kernel
def test_8bit_native_step_is_the_block_wise_algorithm():
    from test_lowbit import reference_quantized_adam

    rng = np.random.default_rng(8)
    shape = (40, 300)  # 12000 elements: 47 blocks, the last one ragged
    grads = [
        np.float32(rng.normal(size=shape) * np.exp(rng.uniform(-3, 1, shape)))
        for _ in range(6)
    ]
    expected = reference_quantized_adam([g.astype(np.float64) for g in grads], 8)
    # Learning rate 1 from zero: each step's update is the params' difference.
    tx = adamx.adam(1.0, state_bits=8)
    params = jnp.zeros(shape)
    state = tx.init(params)
    step = native_step(tx)
    for g, want in zip(grads, expected, strict=True):
        before = np.asarray(params, np.float64)
        params, state = step(params, state, jnp.asarray(g))
        got = before - np.asarray(params, np.float64)
        rel = np.abs(got - want) / (np.abs(want) + 1e-6)
        # As the XLA step's test: a value at a midpoint may take the other
        # code; and the params' rounding adds ulps of |params| <= 6.
        assert np.mean(rel > 1e-4) < 2e-3 and np.median(rel) < 1e-5
        assert np.max(rel) < 0.05


@needs_kernel
@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_native_step_on_sharded_params_gives_the_chains_numbers(axis_type):
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    # Documented: right numbers, though XLA gathers each leaf for the kernel;
    # Explicit axes are part of the params' type, so the step keeps them.
    explicit = axis_type == "Explicit"
    mesh = jax.make_mesh((8,), ("d",), axis_types=(getattr(AxisType, axis_type),))
    rng = np.random.default_rng(3)
    params = {
        "w": jnp.asarray(rng.normal(size=(512, 256)), jnp.float32),  # 8-bit
        "b": jnp.asarray(rng.normal(size=(16_384 * 2,)), jnp.float32),
    }
    params = jax.device_put(params, NamedSharding(mesh, P("d")))
    for bits in (32, 8):
        tx = adamx.adam(1e-2, state_bits=bits)
        state = tx.init(params)
        grads = grads_at(params, 0)
        with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
            got = jax.jit(lambda p, s, g, tx=tx: adamx.step(tx, g, s, p))(
                params, state, grads
            )
            want = chain_step(tx)(params, state, grads)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7
            )
        if explicit:
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                assert x.sharding.spec == y.sharding.spec, (x.sharding, y.sharding)


@needs_kernel
def test_8bit_native_step_with_nan_and_inf_gradients_is_the_chains():
    # A NaN block maximum stays NaN and codes of NaN and inf moments are the
    # chain's, so a step that apply_if_finite would skip leaves the same state.
    tx = adamx.adam(1e-2, state_bits=8)
    params = {"w": jnp.ones((64, 128))}
    state = tx.init(params)
    grads = {"w": jnp.ones((64, 128)).at[3, 5].set(jnp.nan).at[40, 0].set(jnp.inf)}
    got = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))(params, state, grads)
    want = chain_step(tx)(params, state, grads)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.isnan(np.asarray(got[1][0].mu["w"].absmax)).sum() == 1


def code_map_edges(cmap):
    """Magnitudes in (0, 1] at and around every edge of the encoder's cases."""

    def ulps(x):
        return [
            np.nextafter(x, 0, dtype=np.float32),
            x,
            np.nextafter(x, 1, dtype=np.float32),
        ]

    edges = [*cmap.thresholds, cmap.zero_cut, cmap.one_cut]
    edges += [2.0**e for e in range(-31, 0)]  # binade boundaries
    for fraction_bits in range(8):
        # bin boundaries: where m * 10^(w-1) / (0.9 * 5^F) - 2^F / 9 is a whole number
        inverse = cmap.bin_scale / 5.0**fraction_bits
        edges += [
            (k + 2**fraction_bits / 9) / inverse for k in range(0, 2**fraction_bits, 7)
        ]
    values = np.concatenate([ulps(np.float32(x)) for x in edges])
    return values[(values > 0) & (values < 1)]


def edge_gradients(seed=0):
    """Gradients whose new moments, with b1 = b2 = 0, put every 8-bit encoder
    case to the test: m = g hits the signed map's edges (both signs), v = g*g
    the unsigned map's. Each block starts with 1.0, so the block maxima are 1
    and the encoder sees the moments themselves."""
    rng = np.random.default_rng(seed)
    m_edges = code_map_edges(adamx.lowbit.map_8bit(True))
    v_edges = np.sqrt(code_map_edges(adamx.lowbit.map_8bit(False)))
    spread = np.exp(rng.uniform(np.log(1e-12), 0, 4000))  # every decade
    values = np.concatenate([m_edges, -m_edges, v_edges, spread, -spread, [0.0, 1e-45]])
    values = rng.permutation(values.astype(np.float32))
    blocks = -(-values.size // 255)
    g = np.zeros((blocks, 256), np.float32)
    g[:, 0] = 1.0
    g[:, 1:].flat[: values.size] = values
    return {"w": jnp.asarray(g)}


@needs_kernel
def test_8bit_kernel_encodes_the_code_maps_edges_as_lowbit():
    tx = adamx.adam(1.0, b1=0.0, b2=0.0, state_bits=8)
    grads = edge_gradients()
    params = jax.tree.map(jnp.zeros_like, grads)
    state = tx.init(params)
    got = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))(params, state, grads)
    want = chain_step(tx)(params, state, grads)
    m, v = got[1][0].mu["w"], got[1][0].nu["w"]
    np.testing.assert_array_equal(m.absmax, 1.0)
    np.testing.assert_array_equal(v.absmax, 1.0)
    # Codes and maxima bit for bit; the params to float32 rounding.
    assert_bitwise_equal(got[1], want[1])
    np.testing.assert_allclose(got[0]["w"], want[0]["w"], rtol=1e-6)
    # The edges reached many codes of both maps, not a few.
    assert len(np.unique(np.asarray(m.codes))) > 200
    assert len(np.unique(np.asarray(v.codes))) > 200


# Builds of the 8-bit kernel without some of this machine's instructions,
# each registered under a name of its own. Where the machine lacks them, the
# build is the usual one, and the test compares it with itself.
REDUCED_BUILDS = {
    "portable": "-mno-avx512f",  # the loops without AVX-512
    "no VBMI": "-mno-avx512vbmi",  # AVX-512 decoding by float permutes
}


@functools.cache
def reduced_8bit_target(build):
    compiler = native.shutil.which("g++")
    flags = (*native._FLAGS, REDUCED_BUILDS[build])
    library = ctypes.cdll.LoadLibrary(str(native._build(compiler, flags)))
    name = "adamx_test_8bit_step_" + build.replace(" ", "_")
    jax.ffi.register_ffi_target(
        name, jax.ffi.pycapsule(library.AdamxAdam8bitStep), platform="cpu"
    )
    return name


@needs_kernel
@pytest.mark.parametrize("build", list(REDUCED_BUILDS))
@pytest.mark.parametrize("case", ["edges", "tree"])
def test_8bit_kernel_built_without_avx512_paths_steps_to_the_same_bits(
    case, build, monkeypatch
):
    # The fast build (encoder tables, decoding by byte permutes where the CPU
    # has VBMI) against a build without VBMI (decoding by float permutes) and
    # the portable loops, over several steps so that old codes decode too.
    if case == "edges":
        tx, params = adamx.adam(1.0, b1=0.0, b2=0.0, state_bits=8), edge_gradients(1)
    else:
        tx, params = adamx.adamw(2e-2, weight_decay=0.1, state_bits=8), make_tree()

    def compiled_step(state):
        # A function of its own each time: jit would reuse the other's trace.
        def step(p, s, g):
            return adamx.step(tx, g, s, p)

        return jax.jit(step).lower(*state, params).compile()

    fast = (params, tx.init(params))
    target = reduced_8bit_target(build)
    with monkeypatch.context() as patch:
        patch.setattr(native, "_TARGET_8", target)
        reduced_step = compiled_step(fast)
    fast_step = compiled_step(fast)
    assert target in reduced_step.as_text()
    assert target not in fast_step.as_text()
    reduced = fast
    for i in range(4):
        grads = grads_at(params, i) if case == "tree" else edge_gradients(i)
        fast = fast_step(*fast, grads)
        reduced = reduced_step(*reduced, grads)
        assert_bitwise_equal(fast, reduced)


@needs_kernel
@pytest.mark.parametrize("bits", [32, 8])
def test_leaves_split_between_calls_give_the_same_step(bits, monkeypatch):
    tx = adamx.adam(1e-2, state_bits=bits)
    params = {**make_tree(), "more": jnp.linspace(-1.0, 1.0, 5000)}
    state, grads = tx.init(params), grads_at(params, 0)

    def step(p, s, g):
        return adamx.step(tx, g, s, p)

    whole = jax.jit(step).lower(params, state, grads)
    monkeypatch.setattr(native, "_LEAVES_PER_CALL_32", 2)
    monkeypatch.setattr(native, "_LEAVES_PER_CALL_8", 2)
    # A function of its own: a second jit of `step` would reuse its trace.
    split = jax.jit(lambda p, s, g: step(p, s, g)).lower(params, state, grads)
    # float32 state: five leaves in calls of 2, 2, 1; 8 bits: four quantized
    # leaves in two calls and the small leaf's float32 state in one.
    assert whole.as_text().count("stablehlo.custom_call") == (1 if bits == 32 else 2)
    assert split.as_text().count("stablehlo.custom_call") == 3
    assert_bitwise_equal(
        whole.compile()(params, state, grads), split.compile()(params, state, grads)
    )


def leaf_by_leaf_step(tx):
    """The jitted chain on each leaf alone, as one tree of results."""

    def run(params, state, grads):
        adam, rest = state[0], state[1:]
        new_state = tx.update([], (adam._replace(mu=[], nu=[]), *rest), [])[1]
        out = []
        for g, p, m, v in zip(
            jax.tree.leaves(grads),
            *(
                jax.tree.leaves(x, is_leaf=adamx.lowbit.is_quantized)
                for x in (params, adam.mu, adam.nu)
            ),
            strict=True,
        ):
            u, s = tx.update([g], (adam._replace(mu=[m], nu=[v]), *rest), [p])
            out.append((adamx.apply_updates([p], u)[0], s[0].mu[0], s[0].nu[0]))
        p_def = jax.tree.structure(params)
        m_def = jax.tree.structure(adam.mu, is_leaf=adamx.lowbit.is_quantized)
        new_p, new_m, new_v = zip(*out, strict=True)
        new_adam = new_state[0]._replace(
            mu=m_def.unflatten(new_m), nu=m_def.unflatten(new_v)
        )
        return p_def.unflatten(new_p), (new_adam, *new_state[1:])

    return jax.jit(run)


@needs_kernel
@pytest.mark.parametrize("platform, bits", [("cpu", 32), ("other", 32), ("other", 8)])
@pytest.mark.parametrize(
    "make_tx",
    [
        lambda bits: adamx.adam(2e-2, state_bits=bits),
        lambda bits: adamx.adamw(
            adamx.cosine_decay_schedule(3e-2, 10),
            weight_decay=lambda count: 0.1 / (1.0 + count),
            state_bits=bits,
        ),
    ],
    ids=["adam", "adamw, schedules"],
)
def test_step_is_the_chain_leaf_by_leaf_bit_for_bit(make_tx, platform, bits):
    # On one leaf XLA multiplies by the reciprocals of the bias corrections, as
    # the float32 kernel does; on a tree of several it divides by them, so the
    # chain leaf by leaf is the one to match to the last bit: by the kernel on
    # CPU, and by what other platforms run (the step exported for CUDA, run
    # here on CPU). The 8-bit kernel may round a moment at a midpoint the
    # other way (tested above).
    tx = make_tx(bits)
    params = make_tree()
    a = b = (params, tx.init(params))
    by_step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))
    if platform == "cpu":
        hlo = by_step.lower(*a, params).as_text()
    else:
        exported = jax.export.export(
            by_step,
            platforms=["cuda"],
            disabled_checks=[jax.export.DisabledSafetyCheck.platform()],
        )(*a, params)
        hlo = exported.mlir_module()
        by_step = exported.call
        # The chain's square roots, one per leaf with moments.
        assert hlo.count("stablehlo.sqrt") >= 4
    assert ("adamx_adam" in hlo) == (platform == "cpu")
    for i in range(4):
        grads = grads_at(b[0], i)
        a = by_step(*a, grads)
        b = leaf_by_leaf_step(tx)(*b, grads)
        assert_bitwise_equal(a, b)


@needs_kernel
@pytest.mark.parametrize("bits", [32, 8])
def test_step_under_vmap_runs_the_chain_for_each_member(bits):
    # An ensemble: three members' params, state and gradients stacked.
    tx = adamx.adam(1e-2, state_bits=bits)
    members = [make_tree(seed) for seed in range(3)]
    members = [{k: v for k, v in m.items() if k != "empty"} for m in members]
    states = [tx.init(m) for m in members]
    grads = [grads_at(m, i) for i, m in enumerate(members)]
    stack = functools.partial(jax.tree.map, lambda *xs: jnp.stack(xs))
    step = jax.jit(jax.vmap(lambda p, s, g: adamx.step(tx, g, s, p)))
    got = step(stack(*members), stack(*states), stack(*grads))
    for i in range(3):
        want = chain_step(tx)(members[i], states[i], grads[i])
        member = jax.tree.map(lambda x, i=i: x[i], got)
        for x, y in zip(jax.tree.leaves(member), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(
                np.asarray(x, np.float32),
                np.asarray(y, np.float32),
                rtol=1e-6,
                atol=1e-7,
            )
