"""Tests of adamx/injection.py beyond tests/test_wrappers.py's: the stateful
injector and its schedules, against Optax's, through jit and checkpoints."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_bitwise_equal, assert_trees_close, batch, loss, make_params

import adamx
import adamx.checkpoint as ckpt

STEPS = 100


class Plateau:
    """A stateful schedule of the loss: shrink the rate when the loss beats no record.

    Written against the protocol only, so Optax's injector and adamx's take it.
    """

    def __init__(self, rate):
        self.rate = rate

    def init(self):
        # Strongly typed, in the default float dtype: the state keeps its type.
        return {
            "rate": jnp.asarray(self.rate, dtype=float),
            "best": jnp.asarray(jnp.inf, dtype=float),
        }

    def update(self, state, value=None, **extra_args):
        del extra_args
        worse = value > state["best"]
        return {
            "rate": jnp.where(worse, state["rate"] * 0.97, state["rate"]),
            "best": jnp.minimum(state["best"], value),
        }

    def __call__(self, state, **extra_args):
        del extra_args
        return state["rate"]


def make_step(tx):
    """The jitted step: the loss goes to ``update`` as ``value``, as Optax's
    ``value_and_grad`` training loops pass it."""

    @jax.jit
    def step(params, state, x):
        value, grads = jax.value_and_grad(loss)(params, x)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    return step


def train(tx, params, steps, first=0, state=None, set_b2_at=None, set_b2=None):
    """Params and state after ``steps`` steps from step ``first``; at step
    ``set_b2_at``, ``set_b2(state)`` changes b2 between steps."""
    step = make_step(tx)
    state = tx.init(params) if state is None else state
    dtype = jax.tree.leaves(params)[0].dtype
    for i in range(first, first + steps):
        if i == set_b2_at:
            state = set_b2(state)
        params, state = step(params, state, batch(i, dtype))
    return params, state


def optax_stateful(factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.inject_stateful_hyperparams(factory)


def test_names_and_signatures_match_optax():
    ours = inspect.signature(adamx.inject_stateful_hyperparams).parameters
    theirs = inspect.signature(optax.inject_stateful_hyperparams).parameters
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].kind == theirs[name].kind, name
    assert list(inspect.signature(adamx.WrappedSchedule).parameters) == list(
        inspect.signature(optax.WrappedSchedule).parameters
    )
    assert (
        adamx.InjectStatefulHyperparamsState._fields
        == optax.InjectStatefulHyperparamsState._fields
    )
    assert (
        adamx.WrappedScheduleState._fields
        == optax.schedules._inject.WrappedScheduleState._fields
    )


def _compare_with_optax(params, ours, theirs, set_b2_at, b2):
    with jax.numpy_dtype_promotion("standard"):
        p_theirs, s_theirs = train(
            theirs,
            params,
            STEPS,
            set_b2_at=set_b2_at,
            set_b2=lambda s: s._replace(hyperparams={**s.hyperparams, "b2": b2}),
        )
    p_ours, s_ours = train(
        ours,
        params,
        STEPS,
        set_b2_at=set_b2_at,
        set_b2=lambda s: adamx.set_hyperparams(s, b2=b2),
    )
    assert isinstance(s_ours, adamx.InjectStatefulHyperparamsState)
    assert int(s_ours.count) == int(s_theirs.count) == STEPS
    assert_trees_close(p_ours, p_theirs, rtol=1e-10, atol=1e-10)
    assert s_ours.hyperparams.keys() == s_theirs.hyperparams.keys()
    assert_trees_close(s_ours.hyperparams, s_theirs.hyperparams, 1e-12, 1e-12)
    # Each library's WrappedScheduleState class; the same leaves.
    assert_trees_close(
        jax.tree.leaves(s_ours.hyperparams_states),
        jax.tree.leaves(s_theirs.hyperparams_states),
        0,
        0,
    )
    mu_ours, mu_theirs = s_ours.inner_state[0].mu, s_theirs.inner_state[0].mu
    assert_trees_close(mu_ours, mu_theirs, rtol=1e-10, atol=1e-14)
    return s_ours


def test_stateful_and_plain_schedules_match_optax_in_float64(x64):
    # A schedule of the loss for the rate, a plain schedule for b1, numbers for
    # the rest, and b2 changed half way through, as a training loop would.
    params = make_params(jnp.float64)
    # One schedule for both: Optax's own computes in float32 given an int32
    # count (tests/test_schedules.py compares the schedules themselves).
    b1 = adamx.linear_schedule(0.8, 0.95, 60)
    ours = adamx.inject_stateful_hyperparams(adamx.adam, hyperparam_dtype=jnp.float64)(
        Plateau(0.05), b1=b1, b2=0.99, eps=1e-6
    )
    theirs = optax_stateful(optax.adam)(Plateau(0.05), b1=b1, b2=0.99, eps=1e-6)
    state = _compare_with_optax(params, ours, theirs, set_b2_at=50, b2=0.95)
    # The loss rose often enough on fresh batches for the rate to shrink.
    assert float(state.hyperparams["learning_rate"]) < 0.05 / 4
    assert float(state.hyperparams["b2"]) == 0.95
    assert int(state.hyperparams_states["b1"].count) == STEPS
    assert float(adamx.get_learning_rate(state)) == pytest.approx(
        float(state.hyperparams["learning_rate"])
    )


def test_each_others_wrapped_schedules_are_taken(x64):
    # The protocol is structural: each library's injector takes the other's.
    params = make_params(jnp.float64)
    sched = optax.cosine_decay_schedule(0.1, 80, 0.1)
    ours = adamx.inject_stateful_hyperparams(adamx.sgd, hyperparam_dtype=jnp.float64)(
        optax.WrappedSchedule(sched), momentum=0.9
    )
    theirs = optax_stateful(optax.sgd)(adamx.WrappedSchedule(sched), momentum=0.9)
    with jax.numpy_dtype_promotion("standard"):
        p_theirs, _ = train(theirs, params, STEPS)
        p_ours, _ = train(ours, params, STEPS)
    assert_trees_close(p_ours, p_theirs, rtol=1e-10, atol=1e-10)


def test_plain_schedules_give_what_inject_hyperparams_gives():
    # One machinery: a plain schedule wrapped gives the same values, and the
    # same bits, as inject_hyperparams, which gives the plain optimizer's.
    params = make_params()
    sched = adamx.warmup_cosine_decay_schedule(0.0, 0.1, 10, 100)
    kwargs = dict(learning_rate=sched, weight_decay=0.1)
    p_stateful, s_stateful = train(
        adamx.inject_stateful_hyperparams(adamx.adamw)(**kwargs), params, 30
    )
    p_plain, s_plain = train(
        adamx.inject_hyperparams(adamx.adamw)(**kwargs), params, 30
    )
    assert_bitwise_equal(p_stateful, p_plain)
    assert_bitwise_equal(s_stateful.hyperparams, s_plain.hyperparams)
    assert_bitwise_equal(s_stateful.inner_state, s_plain.inner_state)
    assert s_stateful.hyperparams["learning_rate"].dtype == jnp.float32


def test_state_goes_through_a_checkpoint_and_training_resumes(tmp_path):
    params = make_params()
    tx = adamx.inject_stateful_hyperparams(adamx.adam)(
        Plateau(0.05), b1=adamx.linear_schedule(0.8, 0.95, 60)
    )
    p_whole, s_whole = train(tx, params, STEPS)
    p_half, s_half = train(tx, params, STEPS // 2)
    ckpt.save(tmp_path / "state", s_half)
    restored = ckpt.restore(tmp_path / "state", tx.init(params))
    assert jax.tree.structure(restored) == jax.tree.structure(s_half)
    assert isinstance(restored.hyperparams_states["b1"], adamx.WrappedScheduleState)
    assert_bitwise_equal(restored, s_half)
    p_resumed, s_resumed = train(
        tx, p_half, STEPS - STEPS // 2, first=STEPS // 2, state=restored
    )
    assert_bitwise_equal(p_resumed, p_whole)
    assert_bitwise_equal(s_resumed, s_whole)


def test_a_jitted_step_traces_once_as_values_change():
    traces = []
    tx = adamx.inject_stateful_hyperparams(adamx.sgd)(Plateau(0.1), momentum=0.5)

    @jax.jit
    def step(params, state, x):
        traces.append(None)
        value, grads = jax.value_and_grad(loss)(params, x)
        updates, state = tx.update(grads, state, params, value=value)
        return adamx.apply_updates(params, updates), state

    params = make_params()
    state = tx.init(params)
    for i in range(5):
        state = adamx.set_hyperparams(state, momentum=0.1 * i)
        params, state = step(params, state, batch(i))
    assert len(traces) == 1
    assert float(state.hyperparams["momentum"]) == pytest.approx(0.4)


def test_wrapped_schedule_matches_optax_under_jit_with_traced_state(x64):
    sched = optax.warmup_exponential_decay_schedule(0.0, 1.0, 10, 7, 0.8)
    ours, theirs = adamx.WrappedSchedule(sched), optax.WrappedSchedule(sched)

    def advance(schedule):
        @jax.jit
        def next_value(state):
            return schedule(state, value=1.0), schedule.update(state, value=1.0)

        return next_value

    s_ours, s_theirs = ours.init(), theirs.init()
    step_ours, step_theirs = advance(ours), advance(theirs)
    values_ours, values_theirs = [], []
    for _ in range(STEPS):
        v, s_ours = step_ours(s_ours)
        values_ours.append(v)
        v, s_theirs = step_theirs(s_theirs)
        values_theirs.append(v)
    np.testing.assert_allclose(values_ours, values_theirs, rtol=1e-12, atol=0)
    assert s_ours.count.dtype == jnp.int32 and int(s_ours.count) == STEPS
    # The count saturates at the int32 maximum, as Optax's does.
    top = adamx.WrappedScheduleState(jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    assert int(ours.update(top).count) == int(theirs.update(top).count)
    assert int(ours.update(top).count) == np.iinfo(np.int32).max
    assert isinstance(ours, adamx.StatefulSchedule)
    assert isinstance(ours, optax.schedules.StatefulSchedule)
    assert not isinstance(sched, adamx.StatefulSchedule)


def test_set_hyperparams_reaches_a_stateful_state_inside_a_chain():
    tx = adamx.chain(
        adamx.clip_by_global_norm(1.0),
        adamx.inject_stateful_hyperparams(adamx.sgd)(learning_rate=0.1),
    )
    params = make_params()
    state = adamx.set_hyperparams(tx.init(params), learning_rate=0.5)
    assert state[1].hyperparams["learning_rate"].dtype == jnp.float32
    _, state = tx.update(params, state, params)
    assert float(adamx.get_learning_rate(state)) == 0.5
    with pytest.raises(KeyError, match="momentum"):
        adamx.set_hyperparams(state, momentum=0.9)


def test_inject_hyperparams_points_a_stateful_schedule_to_the_stateful_injector():
    with pytest.raises(TypeError, match="inject_stateful_hyperparams"):
        adamx.inject_hyperparams(adamx.sgd)(Plateau(0.1))
