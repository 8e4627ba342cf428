"""Tests of adamx/averaging.py: lookahead, snapshot, measure_with_ema, and the
Polyak and periodic copies of the params, each against Optax's own object."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    assert_bitwise_equal,
    assert_trees_close,
    batch,
    loss,
    make_params,
)

import adamx

STEPS = 100
F64 = {"rtol": 1e-10, "atol": 1e-12}


# ------------------------------------------------------------------ lookahead


def run_lookahead(tx, params, lib=adamx, steps=STEPS):
    """Lookahead's loop: gradients at the fast params, updates to both."""

    @jax.jit
    def step(params, state, x):
        grads = jax.grad(loss)(params.fast, x)
        updates, state = tx.update(grads, state, params)
        return lib.apply_updates(params, updates), state

    params = lib.LookaheadParams.init_synced(params)
    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, jnp.float64))
    return params, state


def assert_pairs_close(ours, theirs):
    assert type(ours).__name__ == "LookaheadParams"
    assert_trees_close(ours.fast, theirs.fast, **F64)
    assert_trees_close(ours.slow, theirs.slow, **F64)


LOOKAHEAD_CASES = {
    "k5-a0.5": {"sync_period": 5, "slow_step_size": 0.5},
    "k3-a0.8-reset": {"sync_period": 3, "slow_step_size": 0.8, "reset_state": True},
    "k1-a0.3": {"sync_period": 1, "slow_step_size": 0.3},
    "k7-a1": {"sync_period": 7, "slow_step_size": 1.0},
}


@pytest.mark.parametrize("kw", LOOKAHEAD_CASES.values(), ids=LOOKAHEAD_CASES)
def test_lookahead_of_adam_matches_optax(x64, kw):
    params = make_params(jnp.float64)
    ours, our_state = run_lookahead(adamx.lookahead(adamx.adam(3e-2), **kw), params)
    theirs, their_state = run_lookahead(
        optax.lookahead(optax.adam(3e-2), **kw), params, optax
    )
    assert isinstance(ours, adamx.LookaheadParams)
    assert_pairs_close(ours, theirs)
    assert not np.allclose(ours.slow["w"], params["w"])
    assert int(our_state.steps_since_sync) == int(their_state.steps_since_sync)
    # Adam's moments (and count, which reset_state sets back to zero).
    for field in ("count", "mu", "nu"):
        assert_trees_close(
            getattr(our_state.fast_state[0], field),
            getattr(their_state.fast_state[0], field),
            **F64,
        )


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_of_an_optax_optimizer_equals_optax_lookahead(x64, reset_state):
    params = make_params(jnp.float64)
    fast = optax.sgd(0.05, momentum=0.9)
    kw = {"sync_period": 4, "slow_step_size": 0.6, "reset_state": reset_state}
    # Given Optax's LookaheadParams, adamx's updates come in that class.
    ours, our_state = run_lookahead(adamx.lookahead(fast, **kw), params, optax)
    theirs, their_state = run_lookahead(optax.lookahead(fast, **kw), params, optax)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert_trees_close(ours, theirs, **F64)
    assert type(our_state).__name__ == type(their_state).__name__
    assert our_state._fields == their_state._fields
    assert_trees_close(our_state.fast_state, their_state.fast_state, **F64)
    assert int(our_state.steps_since_sync) == int(their_state.steps_since_sync)


def test_lookahead_slow_params_follow_the_paper():
    # A NumPy transcription of Algorithm 1: k SGD steps from phi, then
    # phi += alpha (theta - phi), theta restarts at phi.
    k, alpha, lr = 3, 0.5, 0.1
    tx = adamx.lookahead(adamx.sgd(lr), sync_period=k, slow_step_size=alpha)
    params = adamx.LookaheadParams.init_synced(jnp.array([1.0, -2.0]))
    state = tx.init(params)
    phi = np.array([1.0, -2.0])
    theta = phi.copy()
    for t in range(1, 13):
        grads = 2 * params.fast  # the gradient of sum(p**2)
        updates, state = tx.update(grads, state, params)
        params = adamx.apply_updates(params, updates)
        theta = theta - lr * 2 * theta
        if t % k == 0:
            phi = phi + alpha * (theta - phi)
            theta = phi.copy()
        np.testing.assert_allclose(params.slow, phi, rtol=1e-6)
        np.testing.assert_allclose(params.fast, theta, rtol=1e-6)


def test_lookahead_zero_gradients_keep_both_copies():
    tx = adamx.lookahead(adamx.adam(0.1), sync_period=2, slow_step_size=0.5)
    start = adamx.LookaheadParams.init_synced({"w": jnp.arange(3.0), "b": jnp.ones(2)})
    params, state = start, tx.init(start)
    zeros = jax.tree.map(jnp.zeros_like, params.fast)
    update = jax.jit(tx.update)
    for _ in range(5):
        updates, state = update(zeros, state, params)
        params = adamx.apply_updates(params, updates)
    assert_bitwise_equal(params, start)


def test_lookahead_keeps_dtypes_under_strict_promotion(strict_promotion):
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), make_params())
    tx = adamx.lookahead(adamx.adam(1e-2), sync_period=2, slow_step_size=0.5)
    params = adamx.LookaheadParams.init_synced(params)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params.fast)
    for _ in range(3):
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = adamx.apply_updates(params, updates)
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.bfloat16


def test_lookahead_takes_traced_hyperparameters():
    start = adamx.LookaheadParams.init_synced(jnp.array([1.0, -2.0]))

    def final(period, alpha):
        tx = adamx.lookahead(adamx.sgd(0.1), sync_period=period, slow_step_size=alpha)

        def body(carry, _):
            p, state = carry
            updates, state = tx.update(2 * p.fast, state, p)
            return (adamx.apply_updates(p, updates), state), None

        return jax.lax.scan(body, (start, tx.init(start)), length=7)[0][0]

    traced = jax.jit(final)(jnp.array(3), jnp.array(0.25))
    assert_trees_close(traced, final(3, 0.25), rtol=1e-6)


def test_lookahead_init_with_plain_params_warns_and_takes_them_as_fast():
    tx = adamx.lookahead(adamx.adam(1e-3), sync_period=2, slow_step_size=0.5)
    params = make_params()
    with pytest.warns(UserWarning, match="without a `fast` field"):
        state = tx.init(params)
    assert_bitwise_equal(state, tx.init(adamx.LookaheadParams.init_synced(params)))


def test_lookahead_update_needs_lookahead_params():
    tx = adamx.lookahead(adamx.adam(1e-3), sync_period=2, slow_step_size=0.5)
    params = make_params()
    state = tx.init(adamx.LookaheadParams.init_synced(params))
    with pytest.raises(ValueError, match="lookahead needs the current parameters"):
        tx.update(params, state)
    with pytest.raises(TypeError, match=r"LookaheadParams\(fast, slow\).*dict"):
        tx.update(params, state, params)


def test_lookahead_passes_extra_args_to_the_fast_optimizer():
    def update(updates, state, params=None, *, scale=1.0, **extra_args):
        return jax.tree.map(lambda u: -scale * u, updates), state

    fast = adamx.GradientTransformation(adamx.init_empty_state, update)
    tx = adamx.lookahead(fast, sync_period=3, slow_step_size=0.5)
    params = adamx.LookaheadParams.init_synced(jnp.ones(2))
    updates, _ = tx.update(jnp.ones(2), tx.init(params), params, scale=0.25)
    np.testing.assert_array_equal(updates.fast, [-0.25, -0.25])
    np.testing.assert_array_equal(updates.slow, [0.0, 0.0])


# ------------------------------------------------------------------ snapshot


def norm_trajectory(tx, name, params):
    """The params after STEPS steps and the recorded measurement at each."""

    @jax.jit
    def step(params, state, x):
        updates, state = tx.update(jax.grad(loss)(params, x), state, params)
        return adamx.apply_updates(params, updates), state, optax.tree.get(state, name)

    state = tx.init(params)
    seen = [optax.tree.get(state, name)]
    for i in range(STEPS):
        params, state, measured = step(params, state, batch(i, jnp.float64))
        seen.append(measured)
    return params, seen


def test_snapshot_in_a_chain_matches_optax(x64):
    params = make_params(jnp.float64)

    def solver(lib, snapshot, norm):
        return lib.chain(
            lib.sgd(learning_rate=0.1, momentum=0.9),
            snapshot("norm_before_clip", norm),
            lib.clip_by_global_norm(0.05),
        )

    name = "norm_before_clip"
    ours = norm_trajectory(
        solver(adamx, adamx.snapshot, adamx.global_norm), name, params
    )
    theirs = norm_trajectory(
        solver(optax, optax.snapshot, optax.tree.norm), name, params
    )
    assert_trees_close(ours, theirs, **F64)
    assert len({float(n) for n in ours[1]}) > STEPS // 2  # it records each step


def test_snapshot_of_a_tree_keeps_its_structure_and_passes_updates_on():
    tx = adamx.snapshot("abs", lambda u: jax.tree.map(jnp.abs, u))
    params = make_params()
    state = tx.init(params)
    assert isinstance(state, adamx.SnapshotState)
    grads = jax.tree.map(lambda p: -p, params)
    updates, new_state = jax.jit(tx.update)(grads, state)
    assert_bitwise_equal(updates, grads)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert_bitwise_equal(new_state.measurement["abs"], jax.tree.map(jnp.abs, params))


# ------------------------------------------------------------------ measure_with_ema


EMA_CASES = {
    "norm": (lambda u: optax.tree.norm(u), {"decay": 0.9}),
    "norm-no-debias": (lambda u: optax.tree.norm(u), {"decay": 0.8, "debias": False}),
    "tree-f32-accumulator": (
        lambda u: jax.tree.map(lambda x: jnp.mean(x**2), u),
        {"decay": 0.95, "accumulator_dtype": jnp.float32},
    ),
    "bool": (lambda u: optax.tree.norm(u) > 0.6, {"decay": 0.9}),
}


@pytest.mark.parametrize("measure, kw", EMA_CASES.values(), ids=EMA_CASES)
def test_measure_with_ema_in_optax_monitor_matches_optax(x64, measure, kw):
    # Both sit in one optax.monitor, so they see the same updates.
    tx = optax.chain(
        optax.sgd(0.1, momentum=0.9),
        optax.monitor(
            {
                "ours": adamx.measure_with_ema(measure, **kw),
                "theirs": optax.measure_with_ema(measure, **kw),
            }
        ),
    )
    tol = {"rtol": 1e-6} if "accumulator_dtype" in kw else F64
    params = make_params(jnp.float64)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x):
        updates, state = tx.update(jax.grad(loss)(params, x), state, params)
        return optax.apply_updates(params, updates), state

    for i in range(STEPS):
        params, state = step(params, state, batch(i, jnp.float64))
        assert_trees_close(
            optax.tree.get(state, "ours"), optax.tree.get(state, "theirs"), **tol
        )
    measurements = optax.tree.get(state, "measure_states")
    ours, theirs = measurements
    assert_trees_close(jax.tree.leaves(ours), jax.tree.leaves(theirs), **tol)


def test_measure_with_ema_state_keeps_its_dtype_for_a_boolean_measurement():
    tx = adamx.measure_with_ema(lambda u: adamx.global_norm(u) > 1.0, decay=0.5)
    params = make_params()
    state = tx.init(params)
    _, after = tx.update(params, state)
    assert jax.tree.structure(after) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype

    def body(state, x):
        avg, state = tx.update(jax.tree.map(lambda p: p * x, params), state)
        return state, avg

    _, avgs = jax.lax.scan(body, state, jnp.array([0.0, 10.0, 10.0]))
    # Debiased averages of 0, 1, 1 with decay 0.5: 0, 2/3, 6/7.
    np.testing.assert_allclose(avgs, [0.0, 2 / 3, 6 / 7], rtol=1e-6)


# ------------------------------------------------------------------ copies of params


def test_polyak_and_periodic_copies_match_optax_bitwise(x64):
    tx = adamx.adam(3e-2)
    params = make_params(jnp.float64)

    @jax.jit
    def step(params, state, i, copies):
        grads = jax.grad(loss)(params, batch_at(i))
        updates, state = tx.update(grads, state, params)
        params = adamx.apply_updates(params, updates)
        ours = (
            adamx.incremental_update(params, copies[0], 0.05),
            adamx.periodic_update(params, copies[1], i + 1, 7),
        )
        theirs = (
            optax.incremental_update(params, copies[2], 0.05),
            optax.periodic_update(params, copies[3], i + 1, 7),
        )
        return params, state, (*ours, *theirs)

    xs = jnp.stack([batch(i, jnp.float64) for i in range(STEPS)])

    def batch_at(i):
        return xs[i]

    state = tx.init(params)
    copies = (params,) * 4
    for i in range(STEPS):
        params, state, copies = step(params, state, jnp.asarray(i), copies)
        assert_bitwise_equal(copies[0], copies[2])
        assert_bitwise_equal(copies[1], copies[3])
    assert not np.allclose(copies[0]["w"], params["w"])
    assert not np.allclose(copies[1]["w"], params["w"])  # 100 is not a multiple of 7


def test_incremental_update_float32_matches_optax_and_keeps_none():
    new = {"w": jnp.arange(4.0), "skip": None}
    old = {"w": jnp.ones(4), "skip": None}
    for tau in (0.1, jnp.float32(0.3), 0.0, 1.0):
        ours = adamx.incremental_update(new, old, tau)
        assert ours["skip"] is None
        theirs = optax.incremental_update(new, old, tau)
        assert_bitwise_equal(ours["w"], theirs["w"])


def test_periodic_update_takes_a_traced_period():
    new, old = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    f = jax.jit(adamx.periodic_update)
    for steps, period, expected in [(6, 3, 1.0), (7, 3, 0.0), (0, 5, 1.0)]:
        out = f(new, old, jnp.array(steps), jnp.array(period))
        np.testing.assert_array_equal(out["w"], np.full(3, expected))


def test_copies_of_other_trees_are_refused_printing_both():
    with pytest.raises(ValueError, match="new_tensors.*old_tensors"):
        adamx.incremental_update({"w": jnp.ones(2)}, {"v": jnp.ones(2)}, 0.5)
    with pytest.raises(ValueError, match=r"new_tensors\['w'\] has shape \(2,\)"):
        adamx.periodic_update({"w": jnp.ones(2)}, {"w": jnp.ones(3)}, 1, 2)
