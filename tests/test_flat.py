"""Tests of adamx/flat.py: the flat layout, on which element-wise optimizers make
one pass per buffer and per-leaf ones refuse to run; and flatten, which joins the
leaves at every step."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from optimizer_table import CORE, OPTIMIZERS, ids

import adamx


def make_tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {"w": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "dense": [
            jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
            jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        ],
        "scale": jnp.asarray(rng.normal(size=()), jnp.float32),
        "empty": jnp.zeros((0, 3), jnp.float32),
        "frozen": None,
    }


def loss(tree):
    return (
        jnp.sum(jnp.sin(tree["conv"]["w"]) ** 2)
        + jnp.sum((tree["dense"][0] @ jnp.ones(5) - 1.0) ** 2)
        + jnp.sum(tree["dense"][1] ** 4)
        + tree["scale"] ** 2
    )


def test_ravel_and_unravel_round_trip_with_mixed_dtypes():
    tree = {
        "a": jnp.arange(6.0).reshape(2, 3),
        "b": jnp.arange(4, dtype=jnp.bfloat16),
        "c": [jnp.ones(()), None, jnp.full((2,), 7.0)],
    }
    flat = adamx.ravel(tree)
    assert sorted(flat.buffers) == ["bfloat16", "float32"]
    assert flat.buffers["float32"].shape == (6 + 1 + 2,)
    back = flat.unravel()
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    # A FlatParams is a pytree whose leaves are the buffers.
    assert len(jax.tree.leaves(flat)) == 2
    assert adamx.ravel(flat) is flat


def test_gradient_of_a_flat_layout_is_a_flat_layout():
    tree = make_tree()
    flat = adamx.ravel(tree)
    grads = jax.grad(lambda f: loss(f.unravel()))(flat)
    assert isinstance(grads, adamx.FlatParams)
    expected = jax.grad(loss)(tree)
    for x, y in zip(
        jax.tree.leaves(grads.unravel()), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def run_tree(tx, tree, steps):
    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return adamx.apply_updates(p, u), s

    state = tx.init(tree)
    for _ in range(steps):
        tree, state = step(tree, state)
    return tree


def run_flat(tx, tree, steps):
    flat = adamx.ravel(tree)

    def step(f, s):
        g = jax.grad(lambda f: loss(f.unravel()))(f)
        u, s = tx.update(g, s, f)
        return adamx.apply_updates(f, u), s

    step = jax.jit(step, donate_argnums=(0, 1))
    state = tx.init(flat)
    for _ in range(steps):
        flat, state = step(flat, state)
    return flat, state


@pytest.mark.parametrize("name", ids("elementwise", without=CORE))
def test_flat_step_equals_the_chain_on_the_tree(name):
    tree = make_tree()
    plain = run_tree(OPTIMIZERS[name].ours(), tree, 15)
    flat, state = run_flat(OPTIMIZERS[name].ours(), tree, 15)
    got = flat.unravel()
    assert jax.tree.structure(got) == jax.tree.structure(plain)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # Every non-scalar state array is a whole buffer, not one array per leaf.
    buffer_size = flat.buffers["float32"].size
    arrays = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert all(x.shape == (buffer_size,) for x in arrays)
    # Only the stateless ones keep no buffer.
    assert arrays or name in ("sgd", "sign_sgd")


def test_flat_state_round_trips_through_a_checkpoint(tmp_path):
    tx = adamx.adam(1e-2)
    flat, state = run_flat(tx, make_tree(), 3)
    adamx.checkpoint.save(tmp_path / "ckpt", {"params": flat, "opt": state})
    target = {"params": flat, "opt": tx.init(flat)}
    restored = adamx.checkpoint.restore(tmp_path / "ckpt", target)
    assert isinstance(restored["params"], adamx.FlatParams)
    saved = {"params": flat, "opt": state}
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: adamx.adam(1e-3, state_bits=8), "scale_by_adam"),
        (lambda: adamx.lamb(1e-3), "scale_by_trust_ratio"),
        (lambda: adamx.adafactor(1e-3), "scale_by_factored_rms"),
        (lambda: adamx.adamw(1e-3, mask={"w": True}), "masked"),
        (lambda: adamx.partition({"a": adamx.adam(1e-3)}, {"w": "a"}), "partition"),
        (lambda: adamx.clip_by_block_rms(1.0), "clip_by_block_rms"),
    ],
    ids=["8-bit", "lamb", "adafactor", "masked", "partition", "block rms"],
)
def test_per_leaf_transformations_refuse_a_flat_layout(make, name):
    # Their traits say they work leaf by leaf: init refuses, naming the stage.
    with pytest.raises(TypeError, match=f"{name} works leaf by leaf.*FlatParams"):
        make().init(adamx.ravel(make_tree()))
    # The tree itself is fine.
    make().init({"w": jnp.ones(3)})


@pytest.mark.parametrize("name", ids(without=("elementwise",)))
def test_the_table_declares_which_optimizers_are_element_wise(name):
    # The tag and the traits agree: what is not element-wise says so.
    assert adamx.traits_of(OPTIMIZERS[name].ours()).elementwise is not True


@pytest.mark.parametrize("name", ids("elementwise"))
def test_element_wise_optimizers_declare_it(name):
    assert adamx.traits_of(OPTIMIZERS[name].ours()).elementwise is True
    # Block codes are per leaf, where the optimizer has moments to store.
    if "state_bits" in OPTIMIZERS[name].tags:
        tx = OPTIMIZERS[name].ours(state_bits=4)
        assert adamx.traits_of(tx).elementwise is False


def test_ravel_refuses_sharded_params():
    mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
    w = jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("x")))
    with pytest.raises(ValueError, match=r"\['w'\].*sharded"):
        adamx.ravel({"w": w, "b": jnp.ones(3)})


# ------------------------------------------------------------------ flatten


def _train(tx, params, steps=100, value=False, apply_updates=adamx.apply_updates):
    """Params and state after ``steps`` jitted steps on helpers' problem."""

    @jax.jit
    def step(p, s, x):
        v, g = jax.value_and_grad(helpers.loss)(p, x)
        extra = {"value": v} if value else {}
        u, s = tx.update(g, s, p, **extra)
        return apply_updates(p, u), s

    state = tx.init(params)
    dtype = jax.tree.leaves(params)[0].dtype
    for i in range(steps):
        params, state = step(params, state, helpers.batch(i, dtype))
    return params, state


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: adamx.adam(1e-2, b1=0.8), lambda: optax.adam(1e-2, b1=0.8)),
        # Per leaf on a tree, global on the one vector: a single trust ratio.
        (lambda: adamx.lamb(1e-2), lambda: optax.lamb(1e-2)),
        (
            lambda: adamx.chain(adamx.clip(0.05), adamx.sgd(0.1, momentum=0.9)),
            lambda: optax.chain(optax.clip(0.05), optax.sgd(0.1, momentum=0.9)),
        ),
    ],
    ids=["adam", "lamb", "clip-sgd"],
)
def test_flatten_matches_optax_in_float64(x64, ours, theirs):
    params = helpers.make_params(jnp.float64)
    p_ours, s_ours = _train(adamx.flatten(ours()), params)
    p_theirs, s_theirs = _train(
        optax.flatten(theirs()), params, apply_updates=optax.apply_updates
    )
    helpers.assert_trees_close(p_ours, p_theirs, rtol=1e-10, atol=1e-10)
    # The inner state is built for the one vector, as Optax's is; adamx's also
    # records counts and the learning rate.
    vectors = [x for x in jax.tree.leaves(s_ours) if x.ndim]
    assert all(x.shape == (4 * 6 + 6 + 30,) for x in vectors)
    helpers.assert_trees_close(
        vectors, [x for x in jax.tree.leaves(s_theirs) if x.ndim], 1e-9, 1e-12
    )


def test_flatten_of_an_element_wise_optimizer_equals_the_tree_and_flat_layouts(x64):
    params = helpers.make_params(jnp.float64)
    p_flat_step, _ = _train(adamx.flatten(adamx.adamw(1e-2)), params)
    p_tree, _ = _train(adamx.adamw(1e-2), params)
    helpers.assert_trees_close(p_flat_step, p_tree, rtol=1e-12, atol=1e-14)
    # On a FlatParams, flatten joins its buffers like any tree's leaves.
    tx = adamx.flatten(adamx.adamw(1e-2))
    assert adamx.traits_of(tx).elementwise is True
    flat = adamx.ravel(params)
    grads = adamx.ravel(jax.tree.map(jnp.ones_like, params))
    u, _ = tx.update(grads, tx.init(flat), flat)
    assert isinstance(u, adamx.FlatParams)
    assert adamx.traits_of(adamx.flatten(adamx.lamb(1e-2))).elementwise is None


def test_flatten_keeps_each_leafs_dtype_and_passes_extra_args(strict_promotion):
    params = {
        "a": jnp.ones((2, 3), jnp.bfloat16),
        "b": jnp.arange(4.0, dtype=jnp.float32),
        "frozen": None,
    }
    seen = {}

    def update(updates, state, params=None, **extra_args):
        seen.update(extra_args, vector=updates, params=params)
        return -updates, state

    inner = adamx.GradientTransformationExtraArgs(lambda p: adamx.EmptyState(), update)
    tx = adamx.flatten(inner)
    grads = jax.tree.map(lambda p: 2 * p, params)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params, value=3.0)
    assert u["a"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.float32
    assert u["frozen"] is None
    np.testing.assert_array_equal(u["b"], -2 * np.arange(4.0))
    np.testing.assert_array_equal(np.asarray(u["a"], np.float32), -2 * np.ones((2, 3)))
    # The vector is in the dtype that holds both, bf16 leaves first (tree order).
    assert seen["vector"].dtype == jnp.float32 and seen["vector"].shape == (10,)
    assert seen["params"].shape == (10,) and seen["value"].shape == ()


def test_flatten_of_an_empty_tree():
    tx = adamx.flatten(adamx.adam(1e-3))
    u, _ = tx.update({}, tx.init({}))
    assert u == {}
