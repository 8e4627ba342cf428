"""Tests of adamx/galore.py: GaLore against ``optax.contrib.galore`` in float64
for every option (Optax's side of projection), every side of projection against
a NumPy transcription of the authors' projector on a wide matrix, 8-bit
projected moments, and what the projector does between refreshes.

The table row runs galore through the property suite; test_references.py runs
the transcription on a tall matrix; bad arguments are in test_errors.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, batch, loss, make_params, run
from test_references import galore_ref

import adamx
from adamx.lowbit import QuantizedArray, state_nbytes

D = adamx.GaLoreDimensionNumbers
OD = optax.contrib.GaLoreDimensionNumbers


def by_rank(cls):
    """Dimension numbers by a leaf's rank: the rank-3 leaf as (3, 2 * 5), the
    matrix transposed (its columns as the reduction axis), vectors not."""

    def dims(params):
        pick = {3: cls(0, (1, 2)), 2: cls(1, 0)}
        return jax.tree.map(lambda p: pick.get(p.ndim), params)

    return dims


MASK = {"w": True, "b": False, "nested": {"k": True}}

# (adamx's arguments, Optax's): each option that changes the numbers.
CASES = {
    "defaults": ({}, {}),
    "rank-gap-scale-masked-decay": (
        dict(rank=2, update_proj_gap=10, scale=0.5, weight_decay=0.1, mask=MASK),
        dict(rank=2, update_proj_gap=10, scale=0.5, weight_decay=0.1, mask=MASK),
    ),
    "dims-function": (
        dict(rank=3, update_proj_gap=7, weight_dimension_numbers=by_rank(D)),
        dict(rank=3, update_proj_gap=7, weight_dimension_numbers=by_rank(OD)),
    ),
    "dims-tree": (
        dict(
            rank=2,
            update_proj_gap=6,
            weight_dimension_numbers={
                "w": None,
                "b": None,
                "nested": {"k": D((0, 1), 2)},
            },
        ),
        dict(
            rank=2,
            update_proj_gap=6,
            weight_dimension_numbers={
                "w": None,
                "b": None,
                "nested": {"k": OD((0, 1), 2)},
            },
        ),
    ),
}


def base_case():
    return (
        dict(rank=2, update_proj_gap=5, base_optimizer=adamx.scale_by_lion(b1=0.8)),
        dict(rank=2, update_proj_gap=5, base_optimizer=optax.scale_by_lion(b1=0.8)),
    )


@pytest.mark.parametrize("case", [*CASES, "base-optimizer", "schedule"])
def test_galore_matches_optax_in_float64(x64, case):
    if case == "base-optimizer":
        ours_kw, theirs_kw = base_case()
        lr = 1e-2
    elif case == "schedule":
        ours_kw, theirs_kw = CASES["rank-gap-scale-masked-decay"]
        lr = adamx.cosine_decay_schedule(3e-2, 100)
    else:
        ours_kw, theirs_kw = CASES[case]
        lr = 1e-2
    ours_tx = adamx.galore(lr, **ours_kw)
    theirs_tx = optax.contrib.galore(lr, **theirs_kw)
    params = make_params(jnp.float64)
    ours, ours_state = run(ours_tx, params, 100)
    theirs, theirs_state = run(theirs_tx, params, 100, optax.apply_updates)
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert_trees_close(
        optax.tree.get(ours_state, "projector"),
        optax.tree.get(theirs_state, "projector"),
        rtol=1e-10,
        atol=1e-12,
    )
    assert int(ours_state[0].count) == int(theirs_state[0].count) == 100
    assert not np.allclose(ours["w"], params["w"])


def test_one_spec_for_every_matrix_matches_optax(x64):
    # A single GaLoreDimensionNumbers applies to every leaf of 2 or more axes.
    rng = np.random.default_rng(2)
    shapes = {"a": (4, 6), "c": (6, 3), "b": (6,)}
    params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}

    def final(tx, apply_updates):
        @jax.jit
        def step(p, s, i):
            g = jax.tree.map(lambda x: jnp.sin(x + 0.3 * i) + 0.1 * x, p)
            u, s = tx.update(g, s, p)
            return apply_updates(p, u), s

        p, s = params, tx.init(params)
        for i in range(100):
            p, s = step(p, s, i)
        return p, s

    kw = dict(rank=2, update_proj_gap=5)
    ours, state = final(
        adamx.galore(1e-2, weight_dimension_numbers=D(1, 0), **kw), adamx.apply_updates
    )
    theirs, _ = final(
        optax.contrib.galore(1e-2, weight_dimension_numbers=OD(1, 0), **kw),
        optax.apply_updates,
    )
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # Transposed: a is 6 x 4 (its 6 projected), c is 3 x 6 (its 6 projected).
    assert state[0].projector["a"].shape == state[0].projector["c"].shape == (6, 2)


def test_galore_matches_optax_in_float32():
    kw, _ = CASES["rank-gap-scale-masked-decay"]
    ours, _ = run(adamx.galore(1e-2, **kw), make_params(), 30)
    theirs, _ = run(
        optax.contrib.galore(1e-2, **kw), make_params(), 30, optax.apply_updates
    )
    # The table's float32 tolerance: an SVD refresh amplifies the ulps by which
    # two orders of the same sums differ.
    assert_trees_close(ours, theirs, rtol=1e-4, atol=3e-5)


def test_the_state_is_optaxs(x64):
    kw, theirs_kw = CASES["dims-function"]
    params = make_params(jnp.float64)
    ours = adamx.scale_by_galore(**kw).init(params)
    theirs = optax.contrib.scale_by_galore(**theirs_kw).init(params)
    assert type(ours).__name__ == type(theirs).__name__ == "GaLoreState"
    assert ours._fields == theirs._fields
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    # The 4 x 6 matrix, transposed to 6 x 4, is projected on the left (6, 3);
    # the rank-3 leaf, 3 x 10, on the right (10, 3); the vector not at all.
    assert ours.projector["w"].shape == (6, 3)
    assert ours.projector["nested"]["k"].shape == (10, 3)
    assert ours.projector["b"].shape == (0, 0)


@pytest.mark.parametrize("proj_type", ["reverse_std", "std", "left", "right"])
def test_every_side_matches_the_authors_projector(x64, proj_type):
    """The NumPy transcription of the authors' GaLoreProjector, on helpers'
    4 x 6 matrix (wide: "std" projects its rows, Optax's rule its columns);
    the rank-3 leaf and the vector get plain Adam, as not 2-D."""
    hyper = dict(rank=2, update_proj_gap=6, scale=0.25, weight_decay=0.05)
    tx = adamx.galore(1e-2, proj_type=proj_type, **hyper)
    params = make_params(jnp.float64)
    ours, state = run(tx, params, 100)

    ref = jax.tree.map(np.asarray, params)
    states = jax.tree.map(lambda _: {}, ref)
    grad = jax.jit(jax.grad(loss))
    for t in range(1, 101):
        grads = grad(ref, batch(t - 1, jnp.float64))
        ref = jax.tree.map(
            lambda p, g, s, t=t: galore_ref(
                p, np.asarray(g), s, t, 1e-2, proj_type=proj_type, **hyper
            ),
            ref,
            grads,
            states,
        )
    assert_trees_close(ours, ref, rtol=1e-10, atol=1e-12)
    left = proj_type in ("std", "left")
    assert state[0].projector["w"].shape == ((4, 2) if left else (6, 2))


def test_the_projector_changes_only_every_update_proj_gap_steps():
    tx = adamx.scale_by_galore(rank=2, update_proj_gap=3)
    params = make_params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    seen = []
    for i in range(7):
        g = jax.grad(loss)(params, batch(i))
        _, state = update(g, state)
        seen.append(np.asarray(state.projector["w"]))
    # Fresh at steps 0, 3 and 6 (counted from 0), kept in between.
    for i in range(1, 7):
        same = np.array_equal(seen[i], seen[i - 1])
        assert same == (i % 3 != 0), i
    # Each fresh one has orthonormal columns.
    np.testing.assert_allclose(seen[3].T @ seen[3], np.eye(2), atol=1e-6)


def test_leaves_not_projected_get_the_base_optimizers_update():
    params = make_params()
    g = jax.grad(loss)(params, batch(0))
    galore, adam = adamx.scale_by_galore(scale=0.5), adamx.scale_by_adam()
    u, _ = jax.jit(galore.update)(g, galore.init(params))
    v, _ = jax.jit(adam.update)(g, adam.init(params))
    # The vector and the rank-3 leaf: Adam's own numbers, without the scale.
    np.testing.assert_array_equal(u["b"], v["b"])
    np.testing.assert_array_equal(u["nested"]["k"], v["nested"]["k"])


def test_integer_params_get_a_float_projector_and_the_floats_updates():
    # An integer param's projector in its dtype would hold zeros and ones.
    ints = {"w": jnp.arange(12, dtype=jnp.int32).reshape(4, 3) - 5}
    floats = {"w": ints["w"].astype(jnp.float32)}
    g = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)), jnp.float32)}
    tx = adamx.scale_by_galore(rank=2)
    got, state = tx.update(g, tx.init(ints), ints)
    want, _ = tx.update(g, tx.init(floats), floats)
    assert state.projector["w"].dtype == jnp.float32
    np.testing.assert_array_equal(got["w"], want["w"])


def test_a_rank_above_the_matrix_keeps_all_of_it(x64):
    # Full rank: the projection is a rotation, and Adam's first step in any
    # orthonormal basis of the gradient's column space is P sign(P^T G).
    g = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)))}
    tx = adamx.scale_by_galore(rank=10)
    u, state = tx.update(g, tx.init(g))
    p = state.projector["w"]
    assert p.shape == (5, 3)
    want = p @ np.sign(p.T @ g["w"])
    np.testing.assert_allclose(u["w"], want, rtol=1e-6)


def test_zero_gradients_give_zero_updates():
    tx = adamx.galore(1e-2, rank=2, update_proj_gap=2)
    params = make_params()
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        u, state = jax.jit(tx.update)(zeros, state, params)
        for leaf in jax.tree.leaves(u):
            assert bool(jnp.all(leaf == 0))


def test_none_leaves_pass_through():
    # (Optax's galore reads the dtype of a None leaf and fails.)
    tx = adamx.galore(1e-2, rank=1)
    params = {"w": jnp.ones((3, 4)), "frozen": None}
    state = tx.init(params)
    u, state = tx.update({"w": jnp.ones((3, 4)), "frozen": None}, state, params)
    assert u["frozen"] is None and u["w"].shape == (3, 4)
    assert state[0].projector["frozen"] is None


def test_bfloat16_params_keep_their_dtype_and_follow_float32():
    kw = dict(rank=2, update_proj_gap=5)
    full, _ = run(adamx.galore(1e-2, **kw), make_params(), 10)
    half, state = run(adamx.galore(1e-2, **kw), make_params(jnp.bfloat16), 10)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(half))
    assert state[0].projector["w"].dtype == jnp.bfloat16
    assert_trees_close(
        jax.tree.map(lambda x: x.astype(jnp.float32), half), full, rtol=0, atol=0.05
    )


# ------------------------------------------------------------------ state_bits


def quadratic(tx, steps=100):
    """0.5 * sum(h (w - c)^2) from w = 0, for a 256 x 64 matrix and a bias:
    the final loss, and the bytes of the state."""
    rng = np.random.default_rng(0)
    shape = (256, 64)
    h = jnp.asarray(10.0 ** rng.uniform(-0.3, 0.3, shape), jnp.float32)
    c = jnp.asarray(rng.normal(size=shape), jnp.float32)
    params = {"w": jnp.zeros(shape), "b": jnp.zeros(8)}

    def f(p):
        return 0.5 * jnp.sum(h * (p["w"] - c) ** 2) + jnp.sum((p["b"] - 1) ** 2)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(f)(p), s, p)
        return adamx.apply_updates(p, u), s

    state = tx.init(params)
    first = float(f(params))
    for _ in range(steps):
        params, state = step(params, state)
    return float(f(params)) / first, state_nbytes(tx.init(params)), state


# Measured: the authors' side ("std", moments 256 x 32 per moment, projector
# 64 x 32) stores 0.34x the float32 state at 8 bits, and ends within 3% of
# the float32 run's loss (both at about 0.46 of the initial loss).
def test_8_bit_projected_moments_keep_the_loss_in_a_third_of_the_bytes():
    kw = dict(rank=32, update_proj_gap=20, proj_type="std")
    ref_loss, ref_bytes, _ = quadratic(adamx.galore(1e-2, **kw))
    loss8, bytes8, state = quadratic(adamx.galore(1e-2, state_bits=8, **kw))
    moments = state[0].base_optimizer_state
    assert isinstance(moments.mu["w"], QuantizedArray)
    assert isinstance(moments.nu["w"], QuantizedArray)
    assert moments.mu["b"].dtype == jnp.float32  # small: not quantized
    assert bytes8 <= 0.35 * ref_bytes, (bytes8, ref_bytes)
    assert ref_loss < 0.5
    assert abs(loss8 / ref_loss - 1) < 0.05, (loss8, ref_loss)


def test_state_bits_16_stores_bfloat16_moments():
    tx = adamx.scale_by_galore(rank=2, state_bits=16)
    state = tx.init(make_params())
    assert state.base_optimizer_state.mu["w"].dtype == jnp.bfloat16
    assert state.base_optimizer_state.mu["w"].shape == (4, 2)


# ------------------------------------------------------------------ refusals


def only_w(spec):
    return {"w": spec, "b": None, "nested": {"k": None}}


@pytest.mark.parametrize(
    "spec, message",
    [
        (only_w(D(0, 2)), r"params\['w'\].*axis 2 is out of range"),
        (only_w(D(0, 0)), r"params\['w'\].*every axis.*exactly once"),
        (
            {"w": D(0, 1), "b": D(0, 1), "nested": {"k": None}},
            r"params\['b'\].*matrices",
        ),
        (lambda p: {"w": D()}, r"must have the params' structure"),
        (
            {"w": D((0,), 1), "b": None, "nested": {"k": D(0, 1)}},
            r"\['nested'\]\['k'\].*exactly once",
        ),
    ],
    ids=["out-of-range", "repeated", "vector", "wrong-tree", "missing-axis"],
)
def test_dimension_numbers_that_do_not_fit_a_leaf_are_refused_at_init(spec, message):
    tx = adamx.galore(1e-2, weight_dimension_numbers=spec)
    with pytest.raises(ValueError, match=message):
        tx.init(make_params())


def test_a_flat_layout_is_refused():
    with pytest.raises(TypeError, match="scale_by_galore works leaf by leaf"):
        adamx.galore(1e-2).init(adamx.ravel(make_params()))
