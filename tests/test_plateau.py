"""Tests of adamx/plateau.py: reduce_on_plateau against Optax's own object in
float64, and its patience and cooldown boundaries against the rule written out
in Python."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_bitwise_equal, assert_trees_close, batch, loss, make_params

import adamx

STEPS = 120
F64 = {"rtol": 1e-10, "atol": 1e-12}


def run(lib, contrib, kw, params, steps=STEPS):
    """SGD scaled by reduce_on_plateau, monitoring the training loss.

    The rate is high enough that the loss stalls and bounces, so the scale
    drops several times within the run. Returns the params and every state.
    """
    tx = lib.chain(lib.sgd(0.3, momentum=0.9), contrib.reduce_on_plateau(**kw))

    @jax.jit
    def step(params, state, x):
        value, grads = jax.value_and_grad(loss)(params, x)
        # Shifted to stay positive: for a negative best, (1 - rtol) * best
        # lies above it, and rtol widens what counts as an improvement.
        updates, state = tx.update(grads, state, params, value=value + 4.0)
        return lib.apply_updates(params, updates), state

    state = tx.init(params)
    states = []
    for i in range(steps):
        params, state = step(params, state, batch(i % 7, jnp.float64))
        states.append(state[1])
    return params, states


CASES = {
    "patience3": {"patience": 3},
    "cooldown-min_scale": {
        "factor": 0.5,
        "patience": 2,
        "cooldown": 3,
        "min_scale": 0.05,
        "rtol": 1e-3,
    },
    "accumulate-atol": {
        "factor": 0.3,
        "patience": 2,
        "accumulation_size": 4,
        "rtol": 0.0,
        "atol": 1e-3,
    },
}


@pytest.mark.parametrize("kw", CASES.values(), ids=CASES)
def test_matches_optax_in_float64(x64, kw):
    params = make_params(jnp.float64)
    ours, our_states = run(adamx, adamx, kw, params)
    theirs, their_states = run(optax, optax.contrib, kw, params)
    assert_trees_close(ours, theirs, **F64)
    assert not np.allclose(ours["w"], params["w"])
    for a, b in zip(our_states, their_states, strict=True):
        assert type(a).__name__ == type(b).__name__
        assert a._fields == b._fields
        for field in a._fields:
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), **F64)
            assert getattr(a, field).dtype == getattr(b, field).dtype
    # The run crossed at least two reductions, so the comparison saw them.
    factor = kw.get("factor", 0.1)
    assert float(our_states[-1].scale) <= max(factor**2, kw.get("min_scale", 0))


def plateau_rule(
    values, factor, patience, cooldown, rtol=1e-4, atol=0.0, min_scale=0.0
):
    """The rule as the docstring states it, one evaluation per value."""
    scale, best, plateau, wait = 1.0, math.inf, 0, 0
    scales, bests = [], []
    for v in values:
        improved = v < (1 - rtol) * best - atol
        best = v if improved else best
        plateau = 0 if improved else plateau + 1
        if wait > 0:
            wait, plateau = wait - 1, 0
        elif plateau == patience:
            scale, plateau, wait = max(scale * factor, min_scale), 0, cooldown
        else:
            scale = max(scale, min_scale)
        scales.append(scale)
        bests.append(best)
    return np.array(scales), np.array(bests)


def feed(tx, values, params=None):
    params = jnp.zeros(2) if params is None else params
    update = jax.jit(lambda s, v: tx.update(jnp.ones(2), s, value=v))
    state = tx.init(params)
    scales, bests, states = [], [], []
    for v in values:
        u, state = update(state, v)
        scales.append(float(u[0]))
        bests.append(float(state.best_value))
        states.append(state)
    return np.array(scales), np.array(bests), states


def test_patience_boundary():
    # Improve, then exactly `patience` evaluations without: the scale drops on
    # the last of them, not one earlier, and the count starts again.
    values = [1.0, 0.8, 0.8, 0.9, 0.8]
    scales, _, states = feed(adamx.reduce_on_plateau(factor=0.5, patience=3), values)
    np.testing.assert_array_equal(scales, [1, 1, 1, 1, 0.5])
    assert [int(s.plateau_count) for s in states] == [0, 0, 1, 2, 0]
    # The margin: below 0.8 (1 - rtol) = 0.79992 improves, above does not.
    scales, bests, _ = feed(
        adamx.reduce_on_plateau(factor=0.5, patience=1), [0.8, 0.79993, 0.79991]
    )
    np.testing.assert_allclose(bests, [0.8, 0.8, 0.79991], rtol=1e-7)
    np.testing.assert_array_equal(scales, [1, 0.5, 0.5])


def test_cooldown_boundary():
    # After a reduction, `cooldown` evaluations neither count nor reduce (a new
    # best is still recorded); counting resumes on the one after.
    kw = {"factor": 0.5, "patience": 2, "cooldown": 3}
    values = [1.0, 2, 2, 2, 0.5, 2, 2, 2, 2, 2, 2]
    scales, bests, states = feed(adamx.reduce_on_plateau(**kw), values)
    want_scales, want_bests = plateau_rule(values, **kw)
    np.testing.assert_array_equal(scales, want_scales)
    np.testing.assert_array_equal(bests, want_bests)
    np.testing.assert_array_equal(
        scales, [1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25] + [0.25] * 3
    )
    assert [int(s.cooldown_count) for s in states][:8] == [0, 0, 3, 2, 1, 0, 0, 3]
    assert float(states[4].best_value) == 0.5


def test_rule_on_a_long_noisy_sequence():
    rng = np.random.default_rng(1)
    values = np.maximum(np.linspace(1.0, 0.2, 200), 0.4) + 0.02 * rng.normal(size=200)
    kw = {"factor": 0.7, "patience": 4, "cooldown": 2, "min_scale": 0.1, "rtol": 1e-3}
    scales, bests, _ = feed(adamx.reduce_on_plateau(**kw), values.astype(np.float32))
    want_scales, want_bests = plateau_rule(values.astype(np.float32), **kw)
    np.testing.assert_allclose(scales, want_scales, rtol=1e-6)
    np.testing.assert_allclose(bests, want_bests, rtol=1e-6)
    assert want_scales[-1] == 0.1  # it reached the floor


def test_accumulation_averages_values():
    tx = adamx.reduce_on_plateau(patience=1, accumulation_size=3)
    _, bests, states = feed(tx, [3.0, 1.0, 2.0, 5.0])
    assert [int(s.count) for s in states] == [1, 2, 0, 1]
    np.testing.assert_allclose([float(s.avg_value) for s in states], [3, 2, 0, 5])
    np.testing.assert_allclose(bests, [math.inf, math.inf, 2.0, 2.0])


def test_nan_value_is_no_improvement():
    scales, bests, _ = feed(
        adamx.reduce_on_plateau(factor=0.5, patience=1), [1.0, float("nan"), 0.5]
    )
    np.testing.assert_array_equal(scales, [1, 0.5, 0.5])
    np.testing.assert_array_equal(bests, [1.0, 1.0, 0.5])


def test_dtypes_follow_optax_and_complex_params():
    params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2)}
    ours = adamx.reduce_on_plateau().init(params)
    theirs = optax.contrib.reduce_on_plateau().init(params)
    for field in ours._fields:
        assert getattr(ours, field).dtype == getattr(theirs, field).dtype, field
    # Complex params: the scale and the values are real, the updates complex.
    tx = adamx.reduce_on_plateau(factor=0.5, patience=1)
    z = jnp.ones(2, jnp.complex64)
    state = tx.init(z)
    assert state.scale.dtype == state.best_value.dtype == jnp.float32
    for v in [1.0, 2.0]:
        u, state = tx.update(z * (1 + 1j), state, value=v)
    assert u.dtype == jnp.complex64
    np.testing.assert_allclose(u, [0.5 + 0.5j] * 2)


def test_injected_hyperparameters_give_the_same_steps():
    kw = {"factor": 0.5, "patience": 2, "cooldown": 1, "min_scale": 0.2}
    values = [1.0, 2, 2, 2, 2, 2, 2, 0.5, 2]
    plain = feed(adamx.reduce_on_plateau(**kw), values)[0]
    injected = adamx.inject_hyperparams(adamx.reduce_on_plateau)(**kw)
    state = injected.init(jnp.zeros(2))
    update = jax.jit(lambda s, v: injected.update(jnp.ones(2), s, value=v))
    got = []
    for v in values:
        u, state = update(state, v)
        got.append(float(u[0]))
    np.testing.assert_array_equal(got, plain)


def test_works_in_scan_and_keeps_structure():
    tx = adamx.reduce_on_plateau(patience=2)
    params = make_params()

    def body(state, v):
        u, new = tx.update(params, state, value=v)
        return new, u["b"][0]

    state = tx.init(params)
    final, _ = jax.lax.scan(body, state, jnp.array([1.0, 2, 2, 2]))
    assert jax.tree.structure(final) == jax.tree.structure(state)
    assert_bitwise_equal(final.scale, jnp.float32(0.1))


def test_value_is_required():
    tx = adamx.reduce_on_plateau()
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_arguments_follow_optax():
    a = inspect.signature(adamx.reduce_on_plateau).parameters
    b = inspect.signature(optax.contrib.reduce_on_plateau).parameters
    assert list(a) == list(b)
    for name, p in b.items():
        assert a[name].default == p.default and a[name].kind == p.kind
    assert (
        adamx.ReduceLROnPlateauState._fields
        == optax.contrib.ReduceLROnPlateauState._fields
    )
