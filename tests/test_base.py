"""Core types and tree helpers: apply_updates, identity, set_to_zero, zeros."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from optimizer_table import OPTIMIZERS

import adamx

# ------------------------------------------------------------ apply_updates


def _numpy_apply(p, u):
    """The reference: add in the promoted dtype, round once to the param's dtype."""
    p, u = np.asarray(p), np.asarray(u)
    wide = np.dtype(jnp.promote_types(p.dtype, u.dtype))
    return (p.astype(wide) + u.astype(wide)).astype(p.dtype)


def test_apply_updates_adds_leafwise():
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": (jnp.array([0.5]),)}
    updates = {"w": jnp.array([[0.5, -1.0], [0.0, 2.5]]), "b": (jnp.array([-2.0]),)}
    new = adamx.apply_updates(params, updates)
    chex.assert_trees_all_equal(
        new, {"w": jnp.array([[1.5, 1.0], [3.0, 6.5]]), "b": (jnp.array([-1.5]),)}
    )


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_bf16_params_with_f32_updates_stay_bf16_and_add_in_f32(jit, strict_promotion):
    rng = np.random.default_rng(0)
    p = rng.normal(size=64).astype(ml_dtypes.bfloat16)
    u = (rng.normal(size=64) * 1e-2).astype(np.float32)
    # 1 + 2^-8 + 2^-20 rounds up in bf16, but the update alone rounds to 2^-8 in
    # bf16 and 1 + 2^-8 is a tie that rounds down: only an f32 sum gets it right.
    p[0], u[0] = 1.0, np.float32(2.0**-8 + 2.0**-20)
    apply = jax.jit(adamx.apply_updates) if jit else adamx.apply_updates
    new = apply({"w": jnp.asarray(p)}, {"w": jnp.asarray(u)})["w"]
    assert new.dtype == jnp.bfloat16
    expected = (p.astype(np.float32) + u).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(new), expected)
    assert float(new[0]) == 1.0 + 2.0**-7
    in_bf16 = p[0] + u[0].astype(ml_dtypes.bfloat16)
    assert float(in_bf16) == 1.0, "the case above must tell the two sums apart"


def _promotion_case(param_dtype, update_dtype, p, u):
    return pytest.param(
        param_dtype,
        update_dtype,
        p,
        u,
        id=f"{jnp.dtype(param_dtype).name}+{jnp.dtype(update_dtype).name}",
    )


@pytest.mark.parametrize(
    "param_dtype, update_dtype, p, u",
    [
        _promotion_case(jnp.float32, jnp.bfloat16, [1.0, -3.5], [2.0**-8, 0.3]),
        # 1 + 2^-10 is a float16 value that bf16 rounds to 1; the f32 sum with
        # 2^-8 then rounds up in bf16, while 1 + 2^-8 in bf16 is a tie to 1.
        _promotion_case(jnp.bfloat16, jnp.float16, [2.0**-8], [1 + 2.0**-10]),
        # 1e5 overflows float16 but not the float32 sum with -60000.
        _promotion_case(jnp.float16, jnp.bfloat16, [-60000.0], [1e5]),
        # An integer param takes the float sum, truncated back to int as Optax does.
        _promotion_case(jnp.int32, jnp.float32, [3, -2], [-0.7, 1.5]),
    ],
)
def test_apply_updates_sums_in_the_promoted_dtype(param_dtype, update_dtype, p, u):
    p, u = jnp.array(p, param_dtype), jnp.array(u, update_dtype)
    new = adamx.apply_updates(p, u)
    assert new.dtype == param_dtype
    np.testing.assert_array_equal(np.asarray(new), _numpy_apply(p, u))
    np.testing.assert_array_equal(np.asarray(new), optax.apply_updates(p, u))


@pytest.mark.parametrize(
    "param_dtype, update_dtype",
    [(jnp.float32, jnp.float64), (jnp.float64, jnp.float32)],
)
def test_apply_updates_mixing_f32_and_f64(param_dtype, update_dtype, x64):
    p = jnp.asarray(np.linspace(-1.0, 1.0, 7), param_dtype)
    u = jnp.asarray(np.linspace(1e-9, 1e-3, 7), update_dtype)
    new = adamx.apply_updates(p, u)
    assert new.dtype == param_dtype
    np.testing.assert_array_equal(np.asarray(new), _numpy_apply(p, u))


def test_apply_updates_keeps_none_leaves():
    params = {"w": jnp.ones(3), "frozen": None, "nested": [None, jnp.zeros(2)]}
    updates = {"w": jnp.full(3, 0.5), "frozen": None, "nested": [None, jnp.ones(2)]}
    new = jax.jit(adamx.apply_updates)(params, updates)
    assert new["frozen"] is None and new["nested"][0] is None
    np.testing.assert_array_equal(new["w"], np.full(3, 1.5))
    np.testing.assert_array_equal(new["nested"][1], np.ones(2))


@pytest.mark.parametrize("empty", [{}, (), []], ids=["dict", "tuple", "list"])
def test_apply_updates_on_empty_trees(empty):
    assert adamx.apply_updates(empty, empty) == empty
    assert jax.jit(adamx.apply_updates)(empty, empty) == empty


@pytest.mark.parametrize(
    "params, updates",
    [
        ({"w": jnp.ones(2), "b": jnp.ones(2)}, {"w": jnp.ones(2)}),
        ({"w": jnp.ones(2)}, [jnp.ones(2)]),
        ((jnp.ones(2), jnp.ones(2)), (jnp.ones(2), (jnp.ones(2),))),
    ],
    ids=["missing-key", "dict-vs-list", "deeper"],
)
def test_apply_updates_structure_mismatch_prints_both_structures(params, updates):
    with pytest.raises(ValueError) as info:
        adamx.apply_updates(params, updates)
    message = str(info.value)
    assert str(jax.tree.structure(params)) in message
    assert str(jax.tree.structure(updates)) in message


# ------------------------------------------------- identity and set_to_zero


@pytest.mark.parametrize(
    "factory, expected",
    [(adamx.identity, lambda g: g), (adamx.set_to_zero, np.zeros_like)],
    ids=["identity", "set_to_zero"],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_stateless_transformations(factory, expected, jit):
    tx = factory()
    grads = {
        "w": jnp.array([[1.0, -2.0], [0.5, 3.0]]),
        "h": jnp.array([1.0, -1.0], jnp.bfloat16),
    }
    state = tx.init(grads)
    assert state == adamx.EmptyState()
    update = jax.jit(tx.update) if jit else tx.update
    # Extra keyword arguments are accepted and ignored.
    updates, new_state = update(grads, state, grads, value=jnp.array(1.0))
    assert new_state == adamx.EmptyState()
    for name, g in grads.items():
        assert updates[name].dtype == g.dtype
        np.testing.assert_array_equal(
            np.asarray(updates[name], np.float32),
            expected(np.asarray(g, np.float32)),
        )


# ------------------------------------------------------ GradientTransformation


def test_gradient_transformation_is_a_named_tuple_that_optax_chains():
    tx = adamx.GradientTransformation(
        init=adamx.init_empty_state, update=lambda u, s, params=None: (2 * u, s)
    )
    assert isinstance(tx, tuple)
    assert tx._fields == ("init", "update")
    init, update = tx
    assert init is tx.init and update is tx.update

    chained = optax.chain(tx, adamx.clip(1.0), optax.scale(-0.5))
    g = jnp.array([0.25, -3.0])
    updates, _ = jax.jit(chained.update)(g, chained.init(g))
    np.testing.assert_allclose(updates, [-0.25, 0.5])


# ---------------------------------------------------- tree_zeros_like, init


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16, jnp.float32])
def test_tree_zeros_like_dtype_and_none_leaves(dtype):
    tree = {
        "a": jnp.ones((2, 3), jnp.float32),
        "b": jnp.ones(4, jnp.bfloat16),
        "i": jnp.ones((), jnp.int32),
        "none": None,
    }
    zeros = adamx.tree_zeros_like(tree, dtype)
    assert zeros["none"] is None
    for key in ("a", "b", "i"):
        assert zeros[key].shape == tree[key].shape
        assert zeros[key].dtype == (tree[key].dtype if dtype is None else dtype)
        assert not np.any(np.asarray(zeros[key], np.float32))


def test_tree_zeros_like_under_eval_shape():
    structs = {
        "w": jax.ShapeDtypeStruct((3, 5), jnp.float32),
        "b": jax.ShapeDtypeStruct((5,), jnp.bfloat16),
        "none": None,
    }
    out = jax.eval_shape(adamx.tree_zeros_like, structs)
    assert out == structs
    out = jax.eval_shape(lambda t: adamx.tree_zeros_like(t, jnp.float16), structs)
    assert out["w"] == jax.ShapeDtypeStruct((3, 5), jnp.float16)
    assert out["none"] is None


def test_tree_zeros_like_keeps_sharding():
    n = jax.device_count()
    assert n == 8, "conftest asks for 8 host devices"
    sharding = NamedSharding(jax.make_mesh((n,), ("d",)), P("d"))
    x = jax.device_put(jnp.ones((2 * n, 3)), sharding)
    for dtype in (None, jnp.bfloat16):
        zeros = adamx.tree_zeros_like({"x": x}, dtype)["x"]
        assert zeros.sharding.is_equivalent_to(sharding, x.ndim)


@pytest.mark.parametrize("params", [None, {}, {"w": jnp.ones(3)}, (1.0, [2.0])])
def test_init_empty_state(params):
    state = adamx.init_empty_state(params)
    assert state == adamx.EmptyState()
    assert jax.tree.leaves(state) == []


# ------------------------------------------------------------ integer gradients


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_integer_gradients_get_the_updates_of_their_floats(name):
    # A rate times an integer gradient, cast back to the integer dtype, would
    # round the update to zero: every optimizer computes in floats instead.
    # The same steps from the same values, so the same bits; three steps, since
    # some optimizers' first (SOAP's, an accumulating wrapper's) is zero.
    tx, _ = OPTIMIZERS[name]()
    grads = {"w": jnp.array([[1, 2], [-1, 3]], jnp.int32)}
    runs = []
    for g in (grads, jax.tree.map(lambda x: x.astype(jnp.float32), grads)):
        p = {"w": jnp.array([[3.0, 5.0], [1.0, -2.0]])}
        state, updates = tx.init(p), []
        for _ in range(3):
            u, state = tx.update(g, state, p)
            p = adamx.apply_updates(p, u)
            updates.append(u["w"])
        runs.append(np.stack(updates))
    got, want = runs
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # Not all zero, so a truncation would show; Mechanic's scale stays at zero
    # while the gradient does not change.
    if name != "mechanize_adam":
        assert np.abs(want).max() > 1e-7
