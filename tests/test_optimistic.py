"""Tests of adamx/optimistic.py: the optimistic gradient against Optax's in
float64 (updates and states), both interfaces of optimistic Adam against
Optax's (defaults, a schedule), the min-max game optimism is for, and the
stored previous step at 8 bits.

The table rows compare each optimizer with Optax away from the defaults, and
tests/test_references.py with a NumPy transcription."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, make_params, run

import adamx


def test_scale_by_optimistic_gradient_is_optaxs_with_its_state(x64):
    ours_tx = adamx.chain(
        adamx.scale_by_optimistic_gradient(alpha=0.3, beta=1.7), adamx.scale(-1e-2)
    )
    theirs_tx = optax.chain(
        optax.scale_by_optimistic_gradient(alpha=0.3, beta=1.7), optax.scale(-1e-2)
    )
    ours, ours_state = run(ours_tx, make_params(jnp.float64), 100)
    theirs, theirs_state = run(
        theirs_tx, make_params(jnp.float64), 100, optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours_og, theirs_og = ours_state[0], theirs_state[0]
    assert ours_og._fields == theirs_og._fields
    assert not bool(ours_og.is_initial_step)
    assert_trees_close(
        ours_og.previous_gradient, theirs_og.previous_gradient, rtol=1e-12
    )


def test_first_step_is_alpha_times_the_gradient_then_the_change_counts():
    tx = adamx.scale_by_optimistic_gradient(alpha=0.5, beta=2.0)
    state = tx.init(jnp.zeros(2))
    assert bool(state.is_initial_step)
    u, state = tx.update(jnp.array([2.0, -4.0]), state)
    np.testing.assert_allclose(u, [1.0, -2.0])
    u, state = tx.update(jnp.array([3.0, -4.0]), state)
    np.testing.assert_allclose(u, [2.5 * 3.0 - 2.0 * 2.0, -2.0])


def test_optimistic_adam_with_its_defaults_is_optaxs(x64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ours_tx, theirs_tx = adamx.optimistic_adam(1e-2), optax.optimistic_adam(1e-2)
    ours, ours_state = run(ours_tx, make_params(jnp.float64), 100)
    theirs, theirs_state = run(
        theirs_tx, make_params(jnp.float64), 100, optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # The same stages: Adam's moments, then the optimistic one (its last step
    # sets the rate; Optax's last stage keeps no state, adamx's the rate, 1).
    for i in range(2):
        assert type(ours_state[i]).__name__ == type(theirs_state[i]).__name__
        assert ours_state[i]._fields == theirs_state[i]._fields
    assert float(adamx.get_learning_rate(ours_state)) == 1.0


def test_optimistic_adam_warns_as_optax_does():
    with pytest.warns(DeprecationWarning, match="optimistic_adam_v2"):
        adamx.optimistic_adam(1e-2)


def test_optimistic_adam_v2_with_a_schedule_and_defaults_is_optaxs(x64):
    lr = optax.warmup_cosine_decay_schedule(0.0, 2e-2, 10, 100)
    ours, _ = run(adamx.optimistic_adam_v2(lr), make_params(jnp.float64), 100)
    theirs, _ = run(
        optax.optimistic_adam_v2(lr),
        make_params(jnp.float64),
        100,
        optax.apply_updates,
    )
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_the_two_interfaces_are_one_algorithm(x64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v1 = adamx.optimistic_adam(2e-2, 0.5, b1=0.8)
    v2 = adamx.optimistic_adam_v2(1.0, alpha=2e-2, beta=0.5, b1=0.8)
    a, _ = run(v1, make_params(jnp.float64), 50)
    b, _ = run(v2, make_params(jnp.float64), 50)
    assert_trees_close(a, b, rtol=1e-12, atol=1e-12)


def game(tx, steps):
    """The distance to the equilibrium of min_x max_y x y after each step."""

    def step(carry, _):
        params, state = carry
        gx, gy = jax.grad(lambda x, y: x * y, argnums=(0, 1))(*params)
        updates, state = tx.update((gx, -gy), state, params)
        params = adamx.apply_updates(params, updates)
        return (params, state), jnp.hypot(*params)

    params = (jnp.array(1.0), jnp.array(2.0))
    return jax.lax.scan(step, (params, tx.init(params)), length=steps)[1]


def test_optimism_converges_in_a_bilinear_game_where_descent_diverges(x64):
    ogd = game(adamx.optimistic_gradient_descent(0.1), 1000)
    sgd = game(adamx.sgd(0.1), 1000)
    assert float(ogd[-1]) < 1e-2 * float(ogd[0])
    assert float(sgd[-1]) > 100 * float(sgd[0])
    # Optax's numbers on the game, too, for Optimistic Adam.
    ours = game(adamx.optimistic_adam_v2(1.0, alpha=1e-2), 1025)
    theirs = game(optax.optimistic_adam_v2(1.0, alpha=1e-2), 1025)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert float(ours[-1]) < 1e-2


@pytest.mark.parametrize("bits", [16, 8])
def test_the_previous_step_is_stored_in_state_bits(bits):
    params = {"w": jnp.zeros((64, 128)), "b": jnp.zeros(5)}
    tx = adamx.optimistic_gradient_descent(1e-2, beta=0.5, state_bits=bits)
    state = tx.init(params)
    stored = state[0].previous_gradient
    if bits == 16:
        assert stored["w"].dtype == jnp.bfloat16
    else:
        assert isinstance(stored["w"], adamx.QuantizedArray)
        assert stored["b"].dtype == jnp.float32
    ref_tx = adamx.optimistic_gradient_descent(1e-2, beta=0.5)
    rng = np.random.default_rng(0)
    ref_state = ref_tx.init(params)
    update, ref_update = jax.jit(tx.update), jax.jit(ref_tx.update)
    for _ in range(10):
        g = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params
        )
        u, state = update(g, state)
        ref, ref_state = ref_update(g, ref_state)
        err = np.linalg.norm(u["w"] - ref["w"]) / np.linalg.norm(ref["w"])
        assert err < 0.02, err
    big = {"w": jnp.zeros((1024, 1024))}
    full = adamx.state_nbytes(adamx.optimistic_adam_v2(1e-2).init(big))
    low = adamx.state_nbytes(adamx.optimistic_adam_v2(1e-2, state_bits=bits).init(big))
    assert low <= (0.5 if bits == 16 else 0.26) * full + 64  # + the scalars
