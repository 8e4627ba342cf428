"""Tests of adamx/inplace.py: the in-place step, by the native kernels where the
table has one for the optimizer's stages, by the chain elsewhere."""

import contextlib
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_bitwise_equal, chain_step
from optimizer_table import OPTIMIZERS, ids

import adamx
from adamx import kernels

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


@needs_kernel
@pytest.mark.parametrize("name", ids("kernel"))
def test_native_step_equals_the_chain_bit_for_bit(name, strict_promotion):
    a, b = run_both(OPTIMIZERS[name].ours(), make_flat())
    assert_bitwise_equal(a, b)
    # The loop really moved the params: not an identity compared to itself.
    assert not np.allclose(a[0].buffers["float32"], make_flat().buffers["float32"])


@needs_kernel
def test_native_step_matches_optax_adamw():
    flat = make_flat(sizes=(20000, 64))
    tree = flat.unravel()
    tx = adamx.adamw(1e-2, weight_decay=0.05)
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
@pytest.mark.internals
def test_native_step_runs_the_kernel_in_place():
    tx = adamx.adam(1e-3)
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
    tx = adamx.adamw(1e-2, weight_decay=0.1)
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
    tx = adamx.adam(1e-2)
    grads = grads_at(flat, 1)
    # Op by op, outside jit: the kernel is one of the ops. The reference is the
    # jitted chain; run op by op, the chain itself rounds differently (XLA fuses
    # and contracts only within a compiled program).
    eager = adamx.step(tx, grads, tx.init(flat), flat)
    assert_bitwise_equal(eager, chain_step(tx)(flat, tx.init(flat), grads))


@pytest.mark.parametrize(
    "make_tx, params",
    [
        (lambda: adamx.adam(1e-2, nesterov=True), make_flat()),
        (lambda: adamx.adam(1e-2, state_bits=16), make_flat()),
        (lambda: adamx.nadamw(1e-3), make_flat()),
        (lambda: adamx.inject_hyperparams(adamx.adam)(1e-2), make_flat()),
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
    tx = adamx.adam(1e-2)
    flat = make_flat()
    other = make_flat(sizes=(5, 6))
    with pytest.raises(ValueError, match="state.mu"):
        adamx.step(tx, other, tx.init(flat), flat)


@needs_kernel
def test_native_step_under_shard_map_on_replicated_params():
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    tx = adamx.adam(1e-2)
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
    for i in range(4):
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


@needs_kernel
@pytest.mark.internals
@pytest.mark.parametrize("bits", [32, 8])
def test_leaves_split_between_calls_give_the_same_step(bits, monkeypatch):
    tx = adamx.adam(1e-2, state_bits=bits)
    params = {**make_tree(), "more": jnp.linspace(-1.0, 1.0, 5000)}
    state, grads = tx.init(params), grads_at(params, 0)

    def step(p, s, g):
        return adamx.step(tx, g, s, p)

    whole = jax.jit(step).lower(params, state, grads)
    monkeypatch.setattr(kernels, "ADAM_32BIT", kernels.ADAM_32BIT._replace(per_call=2))
    monkeypatch.setattr(kernels, "ADAM_8BIT", kernels.ADAM_8BIT._replace(per_call=2))
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
    """The jitted chain on each leaf alone, as one tree of results (adam's state
    first in the chain, as adam and adamw build it)."""

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
    for i in range(3):
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


# Adam and AdamW however they are built: the stages, not the construction,
# choose the kernel.
ADAM_CHAINS = {
    "adam": lambda: adamx.adam(1e-3),
    "adamw": lambda: adamx.adamw(1e-3, weight_decay=1e-2),
    "adam by hand": lambda: adamx.chain(
        adamx.scale_by_adam(), adamx.scale_by_learning_rate(1e-3)
    ),
    "adamw by hand": lambda: adamx.chain(
        adamx.scale_by_adam(),
        adamx.add_decayed_weights(1e-2),
        adamx.scale_by_learning_rate(1e-3),
    ),
    "adamw nested": lambda: adamx.chain(
        adamx.chain(adamx.scale_by_adam(), adamx.add_decayed_weights(1e-2)),
        adamx.scale_by_learning_rate(1e-3),
    ),
    "adamw named": lambda: adamx.named_chain(
        ("adam", adamx.scale_by_adam()),
        ("decay", adamx.add_decayed_weights(1e-2)),
        ("rate", adamx.scale_by_learning_rate(1e-3)),
    ),
}


def custom_call_targets(tx, params):
    lowered = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p)).lower(
        params, tx.init(params), params
    )
    return set(re.findall(r"stablehlo.custom_call @(\w+)", lowered.as_text()))


@needs_kernel
@pytest.mark.parametrize("layout", ["tree", "flat"])
@pytest.mark.parametrize("name", list(ADAM_CHAINS))
def test_every_adam_chain_lowers_to_the_native_kernel(name, layout):
    params = make_tree() if layout == "tree" else make_flat()
    assert custom_call_targets(ADAM_CHAINS[name](), params) == {"adamx_adam_step"}


@needs_kernel
@pytest.mark.parametrize("name", list(ADAM_CHAINS))
def test_every_adam_chain_steps_as_its_chain(name):
    tx = ADAM_CHAINS[name]()
    a, b = run_both(tx, make_flat(), steps=4)
    assert_bitwise_equal(a, b)


@needs_kernel
def test_stages_in_another_order_compute_something_else_and_run_the_chain():
    # Decay before Adam normalizes it away: not AdamW, so no kernel, and the
    # chain's numbers.
    tx = adamx.chain(
        adamx.add_decayed_weights(1e-2),
        adamx.scale_by_adam(),
        adamx.scale_by_learning_rate(1e-3),
    )
    params = make_tree()
    assert not custom_call_targets(tx, params)
    a, b = run_both(tx, make_flat(), steps=3)
    assert_bitwise_equal(a, b)
