"""Tests of adamx/noise.py: Optax's draws for the same key, bit for bit, in
float64 and float32, for every kind of key; the noise's moments; the
deprecated and missing keys; bfloat16 updates.

The table row compares noisy_sgd with Optax (float64 and float32, complex
params) and runs it through the property suite."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_bitwise_equal, make_params, run

import adamx


def both(key):
    return (
        adamx.chain(adamx.add_noise(0.05, 0.3, key=key), adamx.scale(-0.1)),
        optax.chain(optax.add_noise(0.05, 0.3, key=key), optax.scale(-0.1)),
    )


def updates(tx, steps=2, dtype=jnp.float32):
    """The updates of ``steps`` eager steps on a fixed gradient tree."""
    g = make_params(dtype)
    state = tx.init(g)
    out = []
    for _ in range(steps):
        u, state = tx.update(g, state)
        out.append(u)
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_add_noise_draws_optaxs_numbers_bit_for_bit(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    ours_tx, theirs_tx = both(7)
    params = make_params(jnp.dtype(dtype))
    ours, ours_state = run(ours_tx, params, 100)
    theirs, theirs_state = run(theirs_tx, params, 100, optax.apply_updates)
    assert_bitwise_equal(ours, theirs)
    assert int(ours_state[0].count) == int(theirs_state[0].count) == 100
    np.testing.assert_array_equal(
        ours_state[0].rng_key, jax.random.key_data(theirs_state[0].rng_key)
    )


@pytest.mark.parametrize(
    "key",
    [
        jax.random.key(3),
        jax.random.key(3, impl="rbg"),
        np.int64(3),
        jnp.array(3),
    ],
    ids=["typed", "rbg", "numpy-int", "int-array"],
)
def test_every_kind_of_key_gives_optaxs_draws(key):
    ours_tx, theirs_tx = both(key)
    assert_bitwise_equal(updates(ours_tx), updates(theirs_tx))


def test_a_raw_key_is_the_typed_key_of_the_same_data():
    # Optax takes no raw (uint32) key; adamx wraps it.
    raw = adamx.add_noise(0.05, 0.3, key=jax.random.PRNGKey(3))
    typed = adamx.add_noise(0.05, 0.3, key=jax.random.key(3))
    assert_bitwise_equal(updates(raw), updates(typed))


def test_the_noise_has_the_annealed_variance():
    eta, gamma = 0.04, 0.55
    tx = adamx.add_noise(eta, gamma, key=0)
    g = jnp.full(200_000, 0.25)
    update = jax.jit(tx.update)
    state = tx.init(g)
    for t in range(1, 6):
        u, state = update(g, state)
        noise = np.asarray(u) - 0.25
        sigma = np.sqrt(eta / t**gamma)
        # Standard errors: sigma / sqrt(n) for the mean, about sigma / sqrt(2n)
        # for the standard deviation; 5 of them.
        assert abs(noise.mean()) < 5 * sigma / np.sqrt(g.size)
        assert abs(noise.std() / sigma - 1) < 5 / np.sqrt(2 * g.size)
        assert abs(np.mean(noise**4) / sigma**4 - 3) < 0.05  # Gaussian kurtosis


def test_zero_variance_is_the_identity():
    g = make_params()
    tx = adamx.add_noise(0.0, 0.55, key=0)
    assert_bitwise_equal(tx.update(g, tx.init(g))[0], g)


def test_a_missing_key_warns_and_is_seed_0_and_seed_is_deprecated():
    with pytest.warns(UserWarning, match="without a key"):
        unkeyed = adamx.noisy_sgd(0.1)
    assert_bitwise_equal(updates(unkeyed), updates(adamx.noisy_sgd(0.1, key=0)))
    with pytest.warns(DeprecationWarning, match="seed"):
        seeded = adamx.noisy_sgd(0.1, seed=4)
    assert_bitwise_equal(updates(seeded), updates(adamx.noisy_sgd(0.1, key=4)))


def test_noisy_sgd_with_a_schedule_is_optaxs(x64):
    lr = optax.exponential_decay(0.05, 10, 0.5)
    ours, _ = run(adamx.noisy_sgd(lr, key=1), make_params(jnp.float64), 30)
    theirs, _ = run(
        optax.noisy_sgd(lr, key=1),
        make_params(jnp.float64),
        30,
        optax.apply_updates,
    )
    np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-13, atol=1e-15)


def test_bfloat16_updates_keep_their_dtype_and_optaxs_draws():
    # Optax adds in bfloat16, adamx in float32 and rounds once: the same
    # draws, within a bfloat16 spacing.
    ours_tx, theirs_tx = both(2)
    ours = updates(ours_tx, 1, jnp.bfloat16)[0]["w"]
    theirs = updates(theirs_tx, 1, jnp.bfloat16)[0]["w"]
    assert ours.dtype == theirs.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(ours, np.float32),
        np.asarray(theirs, np.float32),
        rtol=2**-7,
        atol=2**-9,  # Optax's one more rounding, of the scaled noise
    )
