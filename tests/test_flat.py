"""Tests of adamx/flat.py: the flat layout, on which element-wise optimizers make
one pass per buffer and per-leaf ones refuse to run."""

import jax
import jax.numpy as jnp
import numpy as np
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
    assert arrays or name == "sgd"


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
