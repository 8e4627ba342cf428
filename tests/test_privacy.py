"""Tests of adamx/privacy.py: DP-SGD against ``optax.contrib.dpsgd`` in float64
and float32, Optax's draws for every kind of key, the clipped mean against a
NumPy transcription, the noise's scale, injected hyperparameters, bfloat16.

DP-SGD takes per-example gradients (a batch axis first), which the table's
shared step does not give, so it has no row there: everything runs here, on
helpers' problem with one example per row of each step's batch. Bad arguments
are in test_errors.py."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import (
    assert_bitwise_equal,
    assert_trees_close,
    batch,
    loss,
    make_params,
)

import adamx


@jax.jit
def per_example_grads(params, x):
    """One gradient per row of ``x``: every leaf gets the batch axis first."""
    return jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, x[:, None, :])


def run(tx, params, steps, apply_updates=adamx.apply_updates):
    """Params and state after ``steps`` jitted steps on per-example gradients."""

    @jax.jit
    def step(p, s, x):
        u, s = tx.update(per_example_grads(p, x), s, p)
        return apply_updates(p, u), s

    dtype = jax.tree.leaves(params)[0].dtype
    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, dtype))
    return params, state


def optax_dpsgd(*args, **kwargs):
    # Optax's dpsgd passes its seed on by the deprecated name.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.contrib.dpsgd(*args, **kwargs)


# (learning rate, l2_norm_clip, noise_multiplier, seed, options): a clip that
# most examples exceed, and one that few do.
CASES = {
    "plain": (1e-2, 0.5, 0.3, 3, {}),
    "momentum": (1e-2, 0.5, 1.1, 0, {"momentum": 0.9}),
    "nesterov": (2e-2, 5.0, 0.2, 11, {"momentum": 0.8, "nesterov": True}),
}


# Heavy ball runs in "schedule", with a learning rate that changes each step.
@pytest.mark.parametrize("case", ["plain", "nesterov", "schedule"])
def test_dpsgd_matches_optax_in_float64(x64, case):
    if case == "schedule":
        lr, clip, noise, seed, kw = CASES["momentum"]
        lr = adamx.linear_schedule(3e-2, 1e-3, 80)
    else:
        lr, clip, noise, seed, kw = CASES[case]
    params = make_params(jnp.float64)
    ours, ours_state = run(adamx.dpsgd(lr, clip, noise, seed, **kw), params, 100)
    theirs, theirs_state = run(
        optax_dpsgd(lr, clip, noise, seed, **kw), params, 100, optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(
        ours_state[0].rng_key, jax.random.key_data(theirs_state[0].rng_key)
    )
    assert not np.allclose(ours["w"], params["w"])


def test_dpsgd_matches_optax_in_float32():
    lr, clip, noise, seed, kw = CASES["momentum"]
    ours, _ = run(adamx.dpsgd(lr, clip, noise, seed, **kw), make_params(), 30)
    theirs, _ = run(
        optax_dpsgd(lr, clip, noise, seed, **kw), make_params(), 30, optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=1e-5, atol=1e-6)


def aggregated(tx, steps=3):
    """The outputs of ``steps`` eager steps on fixed per-example gradients."""
    params = make_params()
    grads = per_example_grads(params, batch(0))
    state = tx.init(params)
    out = []
    for _ in range(steps):
        u, state = tx.update(grads, state)
        out.append(u)
    return out, state


@pytest.mark.parametrize(
    "key",
    [
        5,
        np.int64(5),
        jnp.array(5),
        jax.random.key(5),
        jax.random.key(5, impl="rbg"),
    ],
    ids=["int", "numpy-int", "int-array", "typed", "rbg"],
)
def test_the_aggregate_draws_optaxs_noise_for_every_kind_of_key(key):
    ours, ours_state = aggregated(adamx.differentially_private_aggregate(1.0, 0.7, key))
    theirs, theirs_state = aggregated(
        optax.contrib.differentially_private_aggregate(1.0, 0.7, key)
    )
    assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(
        ours_state.rng_key, jax.random.key_data(theirs_state.rng_key)
    )


def test_a_deprecated_seed_and_a_missing_key_warn_as_optaxs_do():
    with pytest.warns(DeprecationWarning, match="seed"):
        by_seed = adamx.differentially_private_aggregate(1.0, 0.7, seed=4)
    with pytest.warns(UserWarning, match="key"):
        no_key = adamx.differentially_private_aggregate(1.0, 0.7)
    with pytest.warns(DeprecationWarning):
        theirs = optax.contrib.differentially_private_aggregate(1.0, 0.7, seed=4)
    assert_trees_close(aggregated(by_seed)[0], aggregated(theirs)[0], rtol=1e-6)
    assert_trees_close(
        aggregated(no_key)[0],
        aggregated(adamx.differentially_private_aggregate(1.0, 0.7, 0))[0],
        rtol=0,
    )


def test_a_raw_key_draws_as_its_typed_key():
    # jax.random.PRNGKey's uint32 pair, which Optax does not take.
    raw = adamx.differentially_private_aggregate(1.0, 0.7, jax.random.PRNGKey(9))
    typed = adamx.differentially_private_aggregate(1.0, 0.7, jax.random.key(9))
    assert_bitwise_equal(aggregated(raw)[0], aggregated(typed)[0])


def test_without_noise_it_is_the_mean_of_the_clipped_gradients(x64):
    """Abadi et al., Algorithm 1, transcribed: each example's gradient (all
    leaves as one vector) scaled to norm at most C, then averaged."""
    params = make_params(jnp.float64)
    grads = per_example_grads(params, batch(3, jnp.float64))
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    b = leaves[0].shape[0]
    norms = np.sqrt(sum(np.sum(g.reshape(b, -1) ** 2, axis=1) for g in leaves))
    assert 0 < np.sum(norms > 0.82) < b  # some examples are clipped, not all
    factor = np.minimum(1.0, 0.82 / norms)
    want = [np.tensordot(factor, g, axes=1) / b for g in leaves]

    tx = adamx.differentially_private_aggregate(0.82, 0.0, key=1)
    got, _ = tx.update(grads, tx.init(params))
    for g, w in zip(jax.tree.leaves(got), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)


def test_the_noise_has_standard_deviation_sigma_c_over_the_batch_size():
    grads = {"w": jnp.zeros((4, 200, 100)), "b": jnp.zeros((4, 3))}
    tx = adamx.differentially_private_aggregate(2.0, 0.5, key=0)
    u, state = tx.update(grads, tx.init(grads))
    # C sigma / B = 2 * 0.5 / 4.
    assert abs(float(jnp.std(u["w"])) / 0.25 - 1) < 0.02
    assert abs(float(jnp.mean(u["w"]))) < 0.01
    v, _ = tx.update(grads, state)
    assert not bool(jnp.any(u["w"] == v["w"]))  # a fresh draw at each step


def test_injected_hyperparameters_are_bitwise_the_plain_ones():
    lr, clip, noise, seed, kw = CASES["momentum"]
    plain, plain_state = run(adamx.dpsgd(lr, clip, noise, seed, **kw), make_params(), 5)
    injected_tx = adamx.inject_hyperparams(adamx.dpsgd)(lr, clip, noise, seed, **kw)
    injected, state = run(injected_tx, make_params(), 5)
    assert set(state.hyperparams) == {
        "learning_rate",
        "l2_norm_clip",
        "noise_multiplier",
        "momentum",
    }
    assert_bitwise_equal(injected, plain)


def test_jit_equals_eager_and_bfloat16_is_kept():
    tx = adamx.dpsgd(1e-2, 0.5, 0.3, seed=2)
    params = make_params(jnp.bfloat16)
    grads = per_example_grads(make_params(), batch(0))  # compiled already
    grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads)
    state = tx.init(params)
    eager, _ = tx.update(grads, state, params)
    jitted, _ = jax.jit(tx.update)(grads, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(eager))
    assert_trees_close(
        jax.tree.map(lambda x: x.astype(jnp.float32), eager),
        jax.tree.map(lambda x: x.astype(jnp.float32), jitted),
        rtol=1e-2,
        atol=2e-6,  # bfloat16's spacing at the largest entries, 1e-4
    )
    assert jax.tree.structure(eager) == jax.tree.structure(params)


@pytest.mark.parametrize("name", ["dpsgd", "differentially_private_aggregate"])
def test_argument_names_order_kinds_and_defaults_are_optaxs(name):
    # (adamx.privacy is not among helpers' OPTIMIZER_MODULES, whose shared
    # checks run each optimizer on one gradient per step.)
    ours = inspect.signature(getattr(adamx, name)).parameters
    theirs = inspect.signature(getattr(optax.contrib, name)).parameters
    assert list(ours) == list(theirs)
    for pname, p in theirs.items():
        assert (ours[pname].kind, ours[pname].default) == (p.kind, p.default), pname


def test_gradients_without_one_batch_axis_are_refused():
    tx = adamx.dpsgd(1e-2, 0.5, 0.3, seed=0)
    params = make_params()
    grads = jax.grad(loss)(params, batch(0))  # the batch's mean: no batch axis
    with pytest.raises(ValueError, match="same batch axis first"):
        tx.update(grads, tx.init(params), params)
