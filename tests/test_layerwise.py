"""Tests of adamx/layerwise.py against Optax's own objects.

The transformations run 100 steps in float64 on the shared problem
(``helpers.run``), each followed by a plain step size, next to Optax's chain
of the same transformation; every option that changes the math has a case.
The per-example clips drive a differentially private SGD loop, next to
Optax's functions in the same loop. LARS and Fromage are optimizers: the
table (``optimizer_table.py``) and ``test_references.py`` compare them; here
what the table's rows leave out (masks given as trees, schedules, a zero
layer under Fromage without a norm floor). Then edge cases: zero and NaN
gradients, the unit-wise norm for every rank, dtypes under strict promotion.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.transforms
import pytest
from helpers import assert_trees_close, make_params, run

import adamx
from adamx.layerwise import _unit_axes, _unitwise_norm

STEPS = 100
RTOL, ATOL = 1e-10, 1e-12


def both_runs(ours, theirs, steps=STEPS, params=None):
    """``(adamx's params, Optax's params)`` after ``steps`` float64 steps."""
    params = make_params(jnp.float64) if params is None else params
    got, _ = run(ours, params, steps)
    want, _ = run(theirs, params, steps, optax.apply_updates)
    return got, want, params


# (name, transform of a library (adamx or optax), step size after it)
TRANSFORMS = [
    ("param_block_norm", lambda m: m.scale_by_param_block_norm(), -0.01),
    ("param_block_norm-floor", lambda m: m.scale_by_param_block_norm(3.0), -0.01),
    ("normalize", lambda m: m.normalize_by_update_norm(), -0.05),
    (
        "normalize-negative-eps",
        lambda m: m.normalize_by_update_norm(scale_factor=-0.5, eps=1e-2),
        0.1,
    ),
    ("centralize", lambda m: m.centralize(), -0.05),
    ("agc", lambda m: m.adaptive_grad_clip(0.01), -0.5),
    ("agc-eps", lambda m: m.adaptive_grad_clip(0.02, eps=0.5), -0.5),
    ("agc-axis-last", lambda m: m.adaptive_grad_clip(0.01, axis=-1), -0.5),
]
NAMES = [t[0] for t in TRANSFORMS]


@functools.cache
def plain_sgd(step):
    """The params after plain steps of size ``step``, computed once per size."""
    return run(adamx.scale(step), make_params(jnp.float64), STEPS)[0]


@pytest.mark.parametrize("make, step", [t[1:] for t in TRANSFORMS], ids=NAMES)
def test_transforms_match_optax_in_float64(x64, make, step):
    ours = adamx.chain(make(adamx), adamx.scale(step))
    theirs = optax.chain(make(optax), optax.scale(step))
    got, want, _ = both_runs(ours, theirs)
    assert_trees_close(got, want, rtol=RTOL, atol=ATOL)
    # The transformation changed the run: without it the params end elsewhere.
    assert not np.allclose(got["w"], plain_sgd(step)["w"], rtol=1e-6)


def updates_of_all(lib, cases):
    """Each transformation's first update on each ``(grads, params)`` case,
    all in one compiled program."""

    @jax.jit
    def updates(cases):
        out = []
        for grads, params in cases:
            for _, make, _ in TRANSFORMS:
                tx = make(lib)
                out.append(tx.update(grads, tx.init(params), params)[0])
        return out

    return updates(cases)


def edge_cases():
    """Zero gradients (with params, and with zero params), a NaN, complex."""
    params = make_params(jnp.float64)
    zeros = jax.tree.map(jnp.zeros_like, params)
    nan = jax.tree.map(jnp.sin, params)
    nan["w"] = nan["w"].at[1, 2].set(jnp.nan)
    rng = np.random.default_rng(2)

    def cplx(*shape):
        return jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape))

    complex_params = {"w": cplx(4, 6), "b": cplx(6)}
    complex_grads = {"w": cplx(4, 6), "b": cplx(6)}
    cases = [(zeros, params), (zeros, zeros), (nan, params)]
    return [*cases, (complex_grads, complex_params)]


def test_zero_nan_and_complex_gradients_give_what_optax_gives(x64):
    cases = edge_cases()
    got = updates_of_all(adamx, cases)
    want = updates_of_all(optax, cases)
    labels = [(c, n) for c in ["zero", "zero-params", "nan", "complex"] for n in NAMES]
    for g, w, (case, name) in zip(got, want, labels, strict=True):
        where = f"{name}, {case}"
        assert jax.tree.structure(g) == jax.tree.structure(w), where
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(w), strict=True):
            assert x.dtype == y.dtype, where
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=where)
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=where)
        if case.startswith("zero"):
            assert all(np.all(x == 0) for x in jax.tree.leaves(g)), where
        if case == "nan":
            assert np.isnan(g["w"]).any(), where


def test_updates_keep_their_dtype_under_strict_promotion(strict_promotion):
    params = make_params(jnp.float32)
    grads = jax.tree.map(lambda p: jnp.cos(p).astype(jnp.bfloat16), params)
    got = updates_of_all(adamx, [(grads, params)])
    for updates, name in zip(got, NAMES, strict=True):
        for x, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
            assert x.dtype == jnp.bfloat16 and x.shape == g.shape, name
            assert np.isfinite(np.asarray(x, np.float32)).all(), name


def test_adaptive_grad_clip_clips_some_units_to_their_bound(x64):
    params = make_params(jnp.float64)
    grads = jax.tree.map(lambda p: 0.05 * p + 0.02 * jnp.cos(3 * p), params)
    tx = adamx.adaptive_grad_clip(0.04)
    got = np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])
    g, p = np.asarray(grads["w"]), np.asarray(params["w"])
    # Units of a (4, 6) matrix: its columns.
    bound = 0.04 * np.maximum(np.linalg.norm(p, axis=0), 1e-3)
    clipped = np.linalg.norm(g, axis=0) >= bound
    assert clipped.any() and not clipped.all()
    np.testing.assert_allclose(got[:, ~clipped], g[:, ~clipped], rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=0)[clipped], bound[clipped])
    np.testing.assert_allclose(
        got[:, clipped] / np.linalg.norm(got[:, clipped], axis=0),
        g[:, clipped] / np.linalg.norm(g[:, clipped], axis=0),
    )


UNIT_SHAPES = [(), (5,), (1, 5), (5, 1), (4, 6), (3, 2, 5), (2, 3, 4, 5)]
UNIT_SHAPES += [(2, 2, 3, 4, 5), (0, 3), (1, 1, 7)]


def test_unitwise_norm_matches_optax_for_every_rank(x64):
    rng = np.random.default_rng(1)
    xs = [jnp.asarray(rng.normal(size=shape)) for shape in UNIT_SHAPES]
    cube = jnp.asarray(rng.normal(size=(3, 4, 5)))
    axes = [1, (0, 2), -1]

    @jax.jit
    def norms(xs, cube):
        got = [_unitwise_norm(x, _unit_axes(x.shape, None), x.dtype) for x in xs]
        got += [
            _unitwise_norm(cube, _unit_axes(cube.shape, a), cube.dtype) for a in axes
        ]
        want = [optax.transforms.unitwise_norm(x) for x in xs]
        want += [optax.transforms.unitwise_norm(cube, axis=a) for a in axes]
        return got, want

    got, want = norms(xs, cube)
    for g, w, what in zip(got, want, UNIT_SHAPES + axes, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-14, err_msg=str(what))


def test_adaptive_grad_clip_refuses_leaves_whose_units_it_cannot_tell():
    tx = adamx.adaptive_grad_clip(0.01)
    with pytest.raises(ValueError, match=r"params\['x'\].*\(2, 2, 2, 2, 2, 2\).*axis"):
        tx.init({"y": jnp.ones(3), "x": jnp.ones((2,) * 6)})
    with pytest.raises(ValueError, match=r"params\['b'\].*axis 1 is out of range"):
        adamx.adaptive_grad_clip(0.01, axis=1).init({"b": jnp.ones(3)})
    adamx.adaptive_grad_clip(0.01, axis=(0, 5)).init({"x": jnp.ones((2,) * 6)})


def test_transforms_need_params_where_optax_does():
    g = {"w": jnp.ones((3, 3))}
    for tx in [adamx.scale_by_param_block_norm(), adamx.adaptive_grad_clip(0.1)]:
        with pytest.raises(ValueError, match="needs the current parameters"):
            tx.update(g, tx.init(g))
    for tx in [adamx.normalize_by_update_norm(), adamx.centralize()]:
        tx.update(g, tx.init(g))
    assert adamx.AdaptiveGradClipState is adamx.EmptyState
    tx = adamx.adaptive_grad_clip(0.1)
    assert tx.init(g) == optax.adaptive_grad_clip(0.1).init(g) == ()


# ------------------------------------------------------------- per example


def per_example_loss(params, x):
    """helpers.loss of one example."""
    h = jnp.tanh(x @ params["w"] + params["b"])
    return (
        jnp.mean(h**2)
        + 0.1 * jnp.sum(jnp.sin(params["nested"]["k"]))
        + 0.01 * jnp.sum(params["w"] ** 4)
    )


def dp_sgd_run(clip_fn, steps=STEPS, lr=0.05):
    """Params after ``steps`` steps of SGD on per-example clipped gradients."""
    grads_fn = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0))
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(steps, 8, 4)))

    @jax.jit
    def step(params, x):
        summed, clipped = clip_fn(grads_fn(params, x))
        return jax.tree.map(lambda p, g: p - lr * g / len(x), params, summed), clipped

    params, counts = make_params(jnp.float64), []
    for x in xs:
        params, clipped = step(params, x)
        counts.append(clipped)
    return params, counts


@pytest.mark.parametrize(
    "fn, kw",
    [
        ("per_example_global_norm_clip", {"l2_norm_clip": 0.75}),
        ("per_example_layer_norm_clip", {"global_l2_norm_clip": 1.0}),
        ("per_example_layer_norm_clip", {"global_l2_norm_clip": 1.0, "uniform": False}),
    ],
    ids=["global", "layer-uniform", "layer-by-size"],
)
def test_per_example_clipping_matches_optax_in_dp_sgd(x64, fn, kw):
    got, got_counts = dp_sgd_run(lambda g: getattr(adamx, fn)(g, **kw))
    want, want_counts = dp_sgd_run(lambda g: getattr(optax, fn)(g, **kw))
    assert_trees_close(got, want, rtol=RTOL, atol=ATOL)
    for a, b in zip(got_counts, want_counts, strict=True):
        assert_trees_close(a, b, rtol=0)
    # Some examples were clipped, and not all of them.
    total = sum(sum(int(c) for c in jax.tree.leaves(n)) for n in got_counts)
    assert 0 < total < STEPS * 8 * len(jax.tree.leaves(got_counts[0]))


@pytest.mark.parametrize("clip", [np.inf, 0.0, 1.25, 5.0])
def test_per_example_edge_bounds_match_optax(clip):
    # Optax's examples: integer gradients, a zero example, bounds 0 and inf.
    grads = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
    for fn in ["per_example_global_norm_clip", "per_example_layer_norm_clip"]:
        got = getattr(adamx, fn)(grads, clip)
        want = getattr(optax, fn)(grads, clip)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert x.dtype == y.dtype, fn
            np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=fn)


def test_per_example_clipping_keeps_tree_and_dtype():
    grads = {
        "a": jnp.ones((4, 2, 3), jnp.bfloat16),
        "b": {"c": jnp.full((4,), 2.0, jnp.float32)},
    }
    summed, clipped = adamx.per_example_global_norm_clip(grads, 1.0)
    assert summed["a"].shape == (2, 3) and summed["a"].dtype == jnp.bfloat16
    assert summed["b"]["c"].shape == () and summed["b"]["c"].dtype == jnp.float32
    assert int(clipped) == 4
    # Each example (norm sqrt(6 + 4)) scaled to norm 1, four of them summed.
    np.testing.assert_allclose(summed["b"]["c"], 4 * 2 / np.sqrt(10), rtol=1e-6)
    summed, counts = adamx.per_example_layer_norm_clip(grads, 1.0)
    assert jax.tree.structure(counts) == jax.tree.structure(grads)
    np.testing.assert_allclose(summed["b"]["c"], 4 * 2**-0.5, rtol=1e-6)


def test_per_example_clipping_refuses_grads_without_one_batch_axis():
    for fn in [adamx.per_example_global_norm_clip, adamx.per_example_layer_norm_clip]:
        with pytest.raises(ValueError, match=r"batch axis.*\(3, 2\).*\(2,\)"):
            fn({"a": jnp.ones((3, 2)), "b": jnp.ones(2)}, 1.0)
        with pytest.raises(ValueError, match="batch axis"):
            fn([jnp.ones(())], 1.0)
        with pytest.raises(ValueError, match="at least one array"):
            fn({}, 1.0)


# ------------------------------------------- LARS and Fromage, beyond the table


def test_lars_masks_as_trees_and_schedules_match_optax(x64):
    kw = dict(
        learning_rate=optax.linear_schedule(0.5, 0.05, 60),
        weight_decay=optax.linear_schedule(0.01, 0.1, 40),
        weight_decay_mask={"w": True, "b": False, "nested": True},
        trust_coefficient=0.05,
        eps=1e-3,
        trust_ratio_mask={"w": True, "b": True, "nested": {"k": False}},
        momentum=0.8,
        nesterov=True,
    )
    got, want, params = both_runs(adamx.lars(**kw), optax.lars(**kw))
    assert_trees_close(got, want, rtol=RTOL, atol=ATOL)
    assert not np.allclose(got["b"], params["b"])


def test_fromage_schedule_matches_optax(x64):
    lr = optax.cosine_decay_schedule(0.05, 80)
    got, want, params = both_runs(adamx.fromage(lr), optax.fromage(lr))
    assert_trees_close(got, want, rtol=RTOL, atol=ATOL)
    assert not np.allclose(got["w"], params["w"])


def test_fromage_without_a_norm_floor_moves_a_zero_layer_as_its_authors_do(x64):
    params = dict(make_params(jnp.float64), b=jnp.zeros(6))
    got, want, _ = both_runs(
        adamx.fromage(0.01, 0.0), optax.fromage(0.01, 0.0), 20, params
    )
    assert_trees_close(got, want, rtol=RTOL, atol=ATOL)
    # The authors' first step on a zero layer: -lr * g / sqrt(1 + lr^2).
    tx = adamx.fromage(0.01, min_norm=0.0)
    g = {"b": jnp.arange(1.0, 4.0)}
    p = {"b": jnp.zeros(3)}
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(u["b"], -0.01 * g["b"] / np.sqrt(1 + 1e-4), rtol=1e-14)
    # With Optax's default floor the zero layer barely moves.
    u, _ = adamx.fromage(0.01).update(g, tx.init(p), p)
    assert np.abs(u["b"]).max() < 1e-7


def test_fromage_keeps_the_norm_of_a_layer_whose_step_is_orthogonal(x64):
    # (theta - lr |theta| / |g| g) / sqrt(1 + lr^2) with g orthogonal to theta
    # has theta's norm: the division undoes the step's growth.
    tx = adamx.fromage(0.3)
    p = jnp.array([3.0, 4.0, 0.0])
    u, _ = tx.update(jnp.array([4.0, -3.0, 0.0]), tx.init(p), p)
    np.testing.assert_allclose(np.linalg.norm(p + u), 5.0, rtol=1e-14)
