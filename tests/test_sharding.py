"""Tests of adamx/sharding.py: state laid out like its params, and ZeRO-1 state.

The reference for every sharded run is the same optimizer on one device. The loss
has a polynomial element-wise gradient, so that a sharded and an unsharded run see
the same gradients to the last bit and only the optimizers are compared (one test
with a matmul model allows for the matmul's own rounding).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from optimizer_table import CORE, OPTIMIZERS, ids

import adamx
from adamx.sharding import bytes_per_device, sharded, state_shardings, zero_spec

IDS = ids(without=(*CORE, "lean"))

# Distinct shapes, so that the param a state leaf follows is known by its shape.
LAYOUT_2D = {
    "rows": ((8, 6), P("x", None)),
    "cols": ((6, 4), P(None, "y")),
    "both": ((8, 4), P("x", "y")),
    "bias": ((10,), P()),
}
# For ZeRO on 8 devices: leaves that split along either dim, and one that cannot.
SHAPES_1D = {"w": (16, 12), "k": (4, 3, 24), "odd": (3, 5)}


def make_mesh(shape, names, explicit=False):
    kind = AxisType.Explicit if explicit else AxisType.Auto
    return jax.make_mesh(shape, names, axis_types=(kind,) * len(shape))


def host_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def loss(params):
    """A loss whose gradient, p**3 - p, is exact in any layout.

    Transcendental functions may round differently on arrays of different
    lengths (vectorized and scalar code paths), which would make the gradients
    of a sharded run differ in the last bit from an unsharded one.
    """
    return sum(jnp.sum(0.25 * p**4 - 0.5 * p**2) for p in jax.tree.leaves(params))


def make_step(tx):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return adamx.apply_updates(params, updates), state

    return step


def run(tx, params, steps, state=None):
    step = make_step(tx)
    state = tx.init(params) if state is None else state
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def single_device_run(tx, host, steps):
    params = jax.device_put(host, jax.devices()[0])
    return run(tx, params, steps)


def assert_same_numbers(ours, ref, atol=0.0):
    for k in ref:
        np.testing.assert_allclose(
            np.asarray(ours[k]), np.asarray(ref[k]), rtol=1e-6, atol=atol, err_msg=k
        )


# SOAP rotates its moments by sums over dimensions that the ZeRO layout splits:
# summed in another order, they round differently (by about 1e-7 of params of
# order one).
ATOL = {"soap": 1e-6}


def assert_follows_params(state, params):
    """Each state leaf shaped like a param has that param's sharding; scalars
    (step counts) are replicated. Other leaves (factored moments) are left to
    XLA."""
    by_shape = {p.shape: p.sharding for p in jax.tree.leaves(params)}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = jax.tree_util.keystr(path)
        want = by_shape.get(leaf.shape)
        if want is None:
            if leaf.ndim == 0:
                assert leaf.sharding.is_fully_replicated, (where, leaf.sharding)
        else:
            assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (
                where,
                leaf.sharding,
                want,
            )


def assert_on_all_devices(state, n=8):
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        assert len(leaf.sharding.device_set) == n, jax.tree_util.keystr(path)


def assert_spec(x, mesh, spec):
    want = NamedSharding(mesh, spec)
    assert x.sharding.is_equivalent_to(want, x.ndim), (x.sharding, spec)


def structs(params):
    return jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )


# ------------------------------------------------------ state follows the params


def place_2d(mesh):
    host = host_params({k: s for k, (s, _) in LAYOUT_2D.items()})
    return {
        k: jax.device_put(host[k], NamedSharding(mesh, spec))
        for k, (_, spec) in LAYOUT_2D.items()
    }


def check_state_follows_params(tx, mesh):
    params = place_2d(mesh)
    state = tx.init(params)
    assert_follows_params(state, params)

    new_params, new_state = run(tx, params, 2, state)
    assert_follows_params(new_state, params)
    assert_on_all_devices(new_state)
    for k, p in params.items():
        assert new_params[k].sharding.is_equivalent_to(p.sharding, p.ndim), k

    abstract = jax.eval_shape(tx.init, structs(params))
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (s.shape, s.dtype)

    # Created directly in its layout, from shapes alone.
    shardings = state_shardings(tx, structs(params))
    direct = jax.jit(tx.init, out_shardings=shardings)(params)
    assert_follows_params(direct, params)
    assert_on_all_devices(direct)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", IDS)
def test_state_follows_params_sharded_along_different_axes(name):
    tx, _ = OPTIMIZERS[name]()
    check_state_follows_params(tx, make_mesh((4, 2), ("x", "y")))


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_state_follows_params_on_a_mesh_of_explicit_axes(name):
    tx, _ = OPTIMIZERS[name]()
    check_state_follows_params(tx, make_mesh((4, 2), ("x", "y"), explicit=True))


def test_factored_statistics_keep_their_sharding_from_init_to_update():
    # Every dim factored: the column statistic of a (2, 8) param split along
    # its columns is split too, in init as in update (and as in Optax).
    mesh = make_mesh((8,), ("x",), explicit=True)
    with jax.set_mesh(mesh):
        p = jax.device_put(
            jnp.ones((2, 8), jnp.float16), NamedSharding(mesh, P(None, "x"))
        )
        for tx in (
            adamx.adafactor(min_dim_size_to_factor=1),
            optax.adafactor(min_dim_size_to_factor=1),
        ):
            state = tx.init(p)
            _, new_state = jax.jit(tx.update)(p, state, p)
            for a, b in zip(
                jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True
            ):
                assert jax.typeof(a) == jax.typeof(b)
            v_col = optax.tree.get(state, "v_col")
            assert jax.typeof(v_col).sharding.spec == P("x")


def test_state_shardings_needs_each_params_sharding():
    params = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32)}
    with pytest.raises(ValueError, match="needs the sharding of every param"):
        state_shardings(adamx.adam(1e-3), params)


# ---------------------------------------------------------------------- ZeRO-1


def state_size(state):
    """All bytes of a state, and those of leaves that no dim lets split in 8."""
    leaves = jax.tree.leaves(state)
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    unsplit = sum(
        x.size * x.dtype.itemsize
        for x in leaves
        if not any(d % 8 == 0 for d in x.shape)
    )
    return total, unsplit


def check_zero(tx, mesh, steps=3, atol=0.0):
    host = host_params(SHAPES_1D)
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(host, replicated)
    ztx = sharded(tx, mesh, "data")
    state0 = ztx.init(params)
    ours, state = run(ztx, params, steps, state0)
    ref, ref_state = single_device_run(tx, host, steps)

    assert_same_numbers(ours, ref, atol)
    for k, p in ours.items():
        assert p.sharding.is_equivalent_to(replicated, p.ndim), (k, p.sharding)
    # The step gives the state back in the layout it took: nothing drifts.
    for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state), strict=True):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    total, unsplit = state_size(ref_state)
    assert bytes_per_device(state) <= total / 8 + unsplit
    assert bytes_per_device(ref_state) == total


@pytest.mark.parametrize("name", IDS)
def test_sharded_matches_one_device_and_splits_the_state(name):
    tx, _ = OPTIMIZERS[name]()
    check_zero(tx, make_mesh((8,), ("data",)), atol=ATOL.get(name, 0.0))


@pytest.mark.parametrize("name", ["lamb", "adafactor"])
def test_sharded_on_a_mesh_of_explicit_axes(name):
    tx, _ = OPTIMIZERS[name]()
    check_zero(tx, make_mesh((8,), ("data",), explicit=True), steps=2)


def test_sharded_state_of_adam_is_one_eighth_on_eight_devices():
    mesh = make_mesh((8,), ("data",))
    params = jax.device_put(
        {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}, NamedSharding(mesh, P())
    )
    state = sharded(adamx.adam(1e-3), mesh).init(params)
    # mu and nu of 64 * 32 + 32 floats, in eighths, and three replicated scalars
    # (Adam's count, the learning rate's step and value).
    assert bytes_per_device(state) == 2 * (64 * 32 + 32) * 4 // 8 + 3 * 4
    plain = adamx.adam(1e-3).init(params)
    assert bytes_per_device(plain) == 2 * (64 * 32 + 32) * 4 + 3 * 4


def test_sharded_step_gathers_updates_and_updates_shards():
    mesh = make_mesh((8,), ("data",))
    params = jax.device_put(
        {"w": jnp.full((64, 32), 0.1), "b": jnp.zeros(32)}, NamedSharding(mesh, P())
    )
    x = jax.device_put(
        np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32),
        NamedSharding(mesh, P("data")),
    )

    def model_loss(params, x):
        return jnp.mean(jnp.tanh(x @ params["w"] + params["b"]) ** 2)

    tx = sharded(adamx.adam(1e-2), mesh)

    def step(params, state, x):
        updates, state = tx.update(jax.grad(model_loss)(params, x), state, params)
        return adamx.apply_updates(params, updates), state

    state = tx.init(params)
    compiled = jax.jit(step).lower(params, state, x).compile()
    hlo = compiled.as_text()
    # Adam's arithmetic runs on 8-row shards, and the updates are gathered.
    assert re.search(r"f32\[8,32\]\{1,0\} fusion", hlo), "no sharded Adam update"
    assert "all-gather" in hlo
    new, _ = compiled(params, state, x)
    assert new["w"].sharding.is_fully_replicated

    plain = adamx.adam(1e-2)
    ref_params = jax.device_put(params, jax.devices()[0])
    ref_x = jax.device_put(x, jax.devices()[0])
    ref, _ = jax.jit(
        lambda p, s, x: (
            adamx.apply_updates(p, plain.update(jax.grad(model_loss)(p, x), s, p)[0]),
            None,
        )
    )(ref_params, plain.init(ref_params), ref_x)
    # The batch's matmul itself is split, and sums in another order.
    np.testing.assert_allclose(new["w"], ref["w"], rtol=1e-5)


def test_sharded_over_the_data_axis_of_a_model_parallel_mesh():
    mesh = make_mesh((4, 2), ("data", "model"))
    specs = {"w": P(None, "model"), "k": P("model"), "odd": P()}
    host = host_params(SHAPES_1D)
    params = {
        k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()
    }
    tx = adamx.adamw(1e-2, weight_decay=0.1)
    ztx = sharded(tx, mesh, "data", params_sharding=specs)
    state = ztx.init(params)
    mu = state[0].mu
    # On top of the params' model split: data on the largest dim that divides.
    assert mu["w"].sharding.spec == P("data", "model")
    assert mu["k"].sharding.spec == P("model", None, "data")
    assert mu["odd"].sharding.spec == P(None, None)
    ours, _ = run(ztx, params, 3, state)
    ref, _ = single_device_run(tx, host, 3)
    assert_same_numbers(ours, ref)
    for k, p in params.items():
        assert ours[k].sharding.is_equivalent_to(p.sharding, p.ndim), k


def test_sharded_update_runs_outside_jit_and_keeps_params_sharding():
    mesh = make_mesh((4, 2), ("data", "model"))
    host = host_params({"w": (8, 6)})
    params = {"w": jax.device_put(host["w"], NamedSharding(mesh, P(None, "model")))}
    tx = adamx.sgd(0.1, momentum=0.9)
    ztx = sharded(tx, mesh, "data")
    state = ztx.init(params)
    assert state[0].trace["w"].sharding.spec == P("data", None)
    updates, state = ztx.update(jax.grad(loss)(params), state, params)
    assert updates["w"].sharding.is_equivalent_to(params["w"].sharding, 2)
    ref, _ = tx.update(jax.grad(loss)(host), tx.init(host), host)
    np.testing.assert_allclose(updates["w"], ref["w"], rtol=1e-6)


def test_sharded_state_can_be_created_from_shapes_alone():
    mesh = make_mesh((8,), ("data",))
    params = jax.device_put(host_params(SHAPES_1D), NamedSharding(mesh, P()))
    ztx = sharded(adamx.adam(1e-3), mesh)
    shardings = state_shardings(ztx, structs(params))
    direct = jax.jit(ztx.init, out_shardings=shardings)(params)
    eager = ztx.init(params)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(eager), strict=True):
        assert a.sharding == b.sharding
    assert jax.eval_shape(ztx.init, structs(params))[0].mu["w"].shape == (16, 12)
    assert shardings[0].mu["w"].spec == P("data", None)
    assert shardings[0].mu["k"].spec == P(None, None, "data")
    assert shardings[0].count.spec == P()


def test_sharded_state_round_trips_through_a_checkpoint(tmp_path):
    mesh = make_mesh((8,), ("data",))
    params = jax.device_put(host_params({"w": (16, 4)}), NamedSharding(mesh, P()))
    ztx = sharded(adamx.adam(1e-2), mesh)
    _, state = run(ztx, params, 1)
    adamx.checkpoint.save(tmp_path / "state", state)
    restored = adamx.checkpoint.restore(tmp_path / "state", ztx.init(params))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)


def test_sharded_works_with_flat_buffers():
    mesh = make_mesh((8,), ("data",))
    host = host_params({"w": (16, 12), "b": (8,)})  # 200 floats: 25 per device
    tx = adamx.adam(1e-2)
    flat = jax.device_put(adamx.ravel(host), NamedSharding(mesh, P()))
    ztx = sharded(tx, mesh)
    state = ztx.init(flat)
    assert state[0].mu.buffers["float32"].sharding.spec == P("data")
    step = make_step_flat(ztx)
    ref_step = make_step_flat(tx)
    ref = jax.device_put(adamx.ravel(host), jax.devices()[0])
    ref_state = tx.init(ref)
    for _ in range(3):
        flat, state = step(flat, state)
        ref, ref_state = ref_step(ref, ref_state)
    assert_same_numbers(flat.unravel(), ref.unravel())
    assert bytes_per_device(state) == 2 * 200 * 4 // 8 + 3 * 4


def make_step_flat(tx):
    @jax.jit
    def step(flat, state):
        grads = jax.grad(lambda f: loss(f.unravel()))(flat)
        updates, state = tx.update(grads, state, flat)
        return adamx.apply_updates(flat, updates), state

    return step


def test_quantized_moments_are_created_where_init_puts_them():
    mesh = make_mesh((4, 2), ("x", "y"))
    host = host_params({"rows": (64, 128), "cols": (64, 128), "bias": (10,)})
    specs = {"rows": P("x", None), "cols": P(None, "y"), "bias": P()}
    params = {
        k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()
    }
    tx = adamx.adam(1e-2, state_bits=8)
    state = tx.init(params)
    direct = jax.jit(tx.init, out_shardings=state_shardings(tx, structs(params)))(
        params
    )
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(direct), strict=True):
        if a.ndim:  # eagerly, step counts are made on the default device
            assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a, b.sharding)
    # Rows split in 4 hold 8 whole blocks each: the blocks are split alike.
    assert_spec(direct[0].mu["rows"].codes, mesh, P("x", None))
    assert direct[0].mu["cols"].codes.sharding.is_fully_replicated


@pytest.mark.parametrize("bits", [8, 4])
def test_sharded_works_with_quantized_moments(bits):
    mesh = make_mesh((8,), ("data",))
    # 64 blocks of 256 (or 128) elements, and one leaf too small to quantize.
    host = host_params({"w": (256, 64), "b": (64,)})
    tx = adamx.adam(1e-2, state_bits=bits)
    ztx = sharded(tx, mesh)
    params = jax.device_put(host, NamedSharding(mesh, P()))
    ours, state = run(ztx, params, 3)
    ref, ref_state = single_device_run(tx, host, 3)
    assert_same_numbers(ours, ref)
    # Whole blocks on each device, with their maxima.
    assert_spec(state[0].mu["w"].codes, mesh, P("data", None))
    assert_spec(state[0].mu["w"].absmax, mesh, P("data"))
    total, unsplit = state_size(ref_state)
    assert bytes_per_device(state) <= total / 8 + unsplit


def test_large_quantized_moments_are_split_by_whole_blocks():
    # 1056 blocks of 256: each device decodes and encodes 132 of them.
    mesh = make_mesh((8,), ("data",))
    big = jax.ShapeDtypeStruct(
        (1024, 264), jnp.float32, sharding=NamedSharding(mesh, P())
    )
    ztx = sharded(adamx.adam(1e-2, state_bits=8), mesh)
    mu = state_shardings(ztx, {"big": big})[0].mu["big"]
    assert mu.codes.spec == P("data", None)
    assert mu.absmax.spec == P("data")


def test_sharded_wraps_optax_too():
    mesh = make_mesh((8,), ("data",))
    host = host_params(SHAPES_1D)
    tx = optax.adamw(1e-2, weight_decay=0.1)
    params = jax.device_put(host, NamedSharding(mesh, P()))
    ours, state = run(sharded(tx, mesh), params, 2)
    ref, ref_state = single_device_run(tx, host, 2)
    assert_same_numbers(ours, ref)
    total, unsplit = state_size(ref_state)
    assert bytes_per_device(state) <= total / 8 + unsplit


def test_sharded_refuses_quantized_moments_on_explicit_axes():
    mesh = make_mesh((8,), ("data",), explicit=True)
    params = jax.device_put({"w": jnp.zeros((256, 64))}, NamedSharding(mesh, P()))
    tx = sharded(adamx.adam(1e-2, state_bits=8), mesh)
    with pytest.raises(ValueError, match=r"state_bits=8 or 4.*Explicit axes"):
        tx.init(params)


def test_sharded_keeps_wrapped_state_usable():
    mesh = make_mesh((8,), ("data",))
    params = jax.device_put(host_params({"w": (16, 4)}), NamedSharding(mesh, P()))
    tx = sharded(adamx.inject_hyperparams(adamx.adam)(learning_rate=0.1), mesh)
    state = tx.init(params)
    _, state = run(tx, params, 1, state)
    assert float(adamx.get_learning_rate(state)) == pytest.approx(0.1)
    assert adamx.traits_of(sharded(adamx.adam(1e-3), mesh)).elementwise is True
    assert adamx.traits_of(sharded(adamx.lamb(1e-3), mesh)).elementwise is False


def test_sharded_checks_its_arguments():
    mesh = make_mesh((8,), ("data",))
    with pytest.raises(ValueError, match=r"axis must be one of .*'data'.*got 'batch'"):
        sharded(adamx.adam(1e-3), mesh, "batch")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        sharded(adamx.adam(1e-3), jax.devices(), "data")
    with pytest.raises(TypeError, match="must be a GradientTransformation"):
        sharded(lambda x: x, mesh)
    tx = sharded(adamx.adam(1e-3), mesh, params_sharding={"a": P(), "b": P()})
    with pytest.raises(ValueError, match="params_sharding must be one Sharding"):
        tx.init({"a": jnp.zeros(8)})


# ------------------------------------------------------------------ helpers


def test_zero_spec_splits_the_largest_dim_that_divides():
    mesh = make_mesh((4, 2), ("data", "model"))
    assert zero_spec((12, 8), mesh, "data") == P("data", None)
    assert zero_spec((6, 8), mesh, "data") == P(None, "data")
    assert zero_spec((8, 8), mesh, "data") == P("data", None)  # a tie: the first
    assert zero_spec((3, 5), mesh, "data") == P(None, None)
    assert zero_spec((), mesh, "data") == P()
    assert zero_spec((0, 4), mesh, "data") == P(None, "data")
    # Shards the spec already has count: 8 rows over model and data is 8 shards.
    assert zero_spec((8, 6), mesh, "data", P("model")) == P(("model", "data"), None)
    assert zero_spec((4, 6), mesh, "data", P("model")) == P("model", None)
    # Already split over the axis (FSDP): left alone.
    assert zero_spec((8, 8), mesh, "data", P(None, "data")) == P(None, "data")


def test_bytes_per_device_counts_shards_and_replicas():
    mesh = make_mesh((8,), ("data",))
    split = jax.device_put(jnp.zeros((16, 4)), NamedSharding(mesh, P("data")))
    whole = jax.device_put(jnp.zeros(5), NamedSharding(mesh, P()))
    assert bytes_per_device({"a": split, "b": whole}) == 2 * 4 * 4 + 5 * 4
    structs_only = jax.ShapeDtypeStruct(
        (4, 16), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "data"))
    )
    assert bytes_per_device(structs_only) == 16 * 4 * 2 // 8
    assert bytes_per_device({}) == 0
