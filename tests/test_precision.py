"""Tests of adamx/precision.py: bfloat16 params that keep small updates, by
Kahan summation and by stochastic rounding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizer_table import CORE, OPTIMIZERS, ids
from test_storage import batch, big_params, make_step

import adamx
import adamx.checkpoint
from adamx.precision import (
    kahan_summation,
    stochastic_round,
    stochastic_rounding,
)


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


# Adam's successors on bfloat16 params: wrapped in Kahan summation, each keeps
# the steps that plain bfloat16 rounding loses (steps of 1e-3 on params near 1,
# where bfloat16's spacing is 2^-7) and follows its own float32 run.
@pytest.mark.parametrize("name", ids("frontier", without=CORE))
def test_frontier_optimizers_on_bfloat16_params_with_kahan_summation(name):
    rng = np.random.default_rng(0)
    shape = (64, 128)
    h = jnp.asarray(10.0 ** rng.uniform(-0.3, 0.3, shape), jnp.float32)
    c = jnp.asarray(1 + rng.normal(size=shape), jnp.float32)
    start = {"w": jnp.asarray(1 + 0.1 * rng.normal(size=shape), jnp.float32)}

    def run(tx, dtype, steps=60):
        def loss(p):
            return 0.5 * jnp.sum(h * (p["w"].astype(jnp.float32) - c) ** 2)

        @jax.jit
        def step(p, s):
            g = jax.tree.map(lambda x, p_: x.astype(p_.dtype), jax.grad(loss)(p), p)
            u, s = tx.update(g, s, p)
            return adamx.apply_updates(p, u), s

        p = jax.tree.map(lambda x: x.astype(dtype), start)
        s = tx.init(p)
        for _ in range(steps):
            p, s = step(p, s)
        return np.asarray(p["w"], np.float32)

    make = OPTIMIZERS[name].ours
    full = run(make(), jnp.float32)
    kahan = run(kahan_summation(make()), jnp.bfloat16)
    plain = run(make(), jnp.bfloat16)
    moved = np.linalg.norm(full - np.asarray(start["w"]))
    kahan_err = np.linalg.norm(kahan - full) / moved
    plain_err = np.linalg.norm(plain - full) / moved
    assert kahan_err < 0.05, kahan_err
    assert kahan_err < 0.5 * plain_err, (kahan_err, plain_err)
