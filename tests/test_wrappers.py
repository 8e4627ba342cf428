"""Tests of adamx/wrappers.py: hyperparameters, skipping, scaling, accumulation."""

import functools
import importlib
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    DEFAULT_CODEGEN,
    OPTIMIZER_MODULES,
    assert_bitwise_equal,
    assert_trees_close,
)
from optimizer_table import OPTIMIZERS, ids

import adamx


def _factories():
    """Every optimizer of adamx's optimizer modules: a public factory whose
    first argument is the learning rate."""
    names = set()
    for module_name in OPTIMIZER_MODULES:
        module = importlib.import_module(f"adamx.{module_name}")
        for name in module.__all__:
            fn = getattr(module, name)
            first = list(inspect.signature(fn).parameters)[:1] if callable(fn) else []
            if first == ["learning_rate"]:
                names.add(name)
    return sorted(names)


# The optimizers, each injected with its defaults; Sophia's default Hessian
# estimator needs the loss at each update (tests/test_sophia.py injects it).
NAMES = [name for name in _factories() if name != "sophia"]
# Where XLA compiles the plain optimizer's constant hyperparameters into
# fusions other than the injected ones' (MARS's correction feeding Adam's
# moments, schedule-free's weight sums), the last bit of a step moves.
LAST_BIT = {"mars", "schedule_free_adamw", "schedule_free_sgd"}


def quadratic_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    }

    def loss(p):
        return (
            jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum(p["b"] ** 4) + jnp.sum(p["w"] ** 2)
        )

    return params, loss


def train(tx, params, loss, steps, update_only=False):
    """Train; with update_only, jit the optimizer's update by itself, with XLA's
    default code generation (the bitwise comparisons of injected hyperparameters)."""
    if update_only:
        grad = jax.jit(jax.grad(loss))
        update = jax.jit(tx.update, compiler_options=DEFAULT_CODEGEN)

        def step(p, s):
            u, s = update(grad(p), s, p)
            return adamx.apply_updates(p, u), s

    else:

        @jax.jit
        def step(p, s):
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return adamx.apply_updates(p, u), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


# ------------------------------------------------------------------ inject_hyperparams


@pytest.mark.parametrize("name", NAMES)
def test_injected_trajectory_is_bitwise_equal_to_plain_in_float32(name):
    kwargs = {"learning_rate": 1e-2}
    if "weight_decay" in inspect.signature(getattr(adamx, name)).parameters:
        kwargs["weight_decay"] = 0.05
    params, loss = quadratic_problem()
    plain, _ = train(getattr(adamx, name)(**kwargs), params, loss, 30, True)
    injected_tx = adamx.inject_hyperparams(getattr(adamx, name))(**kwargs)
    injected, state = train(injected_tx, params, loss, 30, True)
    if name in LAST_BIT:
        assert_trees_close(plain, injected, rtol=1e-6, atol=1e-7)
    else:
        assert_bitwise_equal(plain, injected)
    assert "learning_rate" in state.hyperparams


def test_injected_schedule_is_bitwise_equal_and_its_value_readable():
    schedule = adamx.warmup_cosine_decay_schedule(0.0, 0.05, 5, 30)
    params, loss = quadratic_problem()
    plain, _ = train(adamx.adamw(schedule, weight_decay=0.1), params, loss, 12, True)
    tx = adamx.inject_hyperparams(adamx.adamw)(schedule, weight_decay=0.1)
    injected, state = train(tx, params, loss, 12, True)
    assert_bitwise_equal(plain, injected)
    # The value stored is the one used at the last step (count 11).
    np.testing.assert_allclose(
        state.hyperparams["learning_rate"], schedule(11), rtol=1e-7
    )
    assert int(state.count) == 12


def test_changing_a_hyperparameter_takes_effect_without_recompiling():
    params, loss = quadratic_problem()
    tx = adamx.inject_hyperparams(adamx.sgd)(learning_rate=0.1, momentum=0.0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return adamx.apply_updates(p, u), s

    state = tx.init(params)
    p1, state = step(params, state)
    state = adamx.set_hyperparams(state, learning_rate=0.01, momentum=0.5)
    p2, state = step(p1, state)
    chex.clear_trace_counter()
    # Independent reference: SGD by hand, with the second step's new values.
    g1 = jax.grad(loss)(params)
    expected1 = jax.tree.map(lambda p, g: p - 0.1 * g, params, g1)
    g2 = jax.grad(loss)(expected1)
    expected2 = jax.tree.map(
        lambda p, a, b: p - 0.01 * (b + 0.5 * a), expected1, g1, g2
    )
    for got, want in [(p1, expected1), (p2, expected2)]:
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6)


def test_set_hyperparams_keeps_dtype_and_rejects_unknown_names():
    tx = adamx.inject_hyperparams(adamx.adam, hyperparam_dtype=jnp.float16)(1e-3)
    state = tx.init(jnp.zeros(3))
    new = adamx.set_hyperparams(state, learning_rate=0.5, b1=0.8)
    assert new.hyperparams["learning_rate"].dtype == jnp.float16
    assert not new.hyperparams["learning_rate"].weak_type
    assert float(new.hyperparams["b1"]) == pytest.approx(0.8, rel=1e-2)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-3, rel=1e-2)
    with pytest.raises(KeyError, match="learnin_rate"):
        adamx.set_hyperparams(state, learnin_rate=0.1)
    with pytest.raises(ValueError, match="InjectHyperparamsState"):
        adamx.set_hyperparams(adamx.adam(1e-3).init(jnp.zeros(3)), learning_rate=0.1)


def test_optaxs_factories_are_read_by_their_types_too():
    # optax.adamw's mask annotation names a type get_type_hints cannot
    # resolve; each annotation is then read on its own.
    import optax

    seen = []

    def mask(p):
        seen.append(p)
        return jax.tree.map(lambda _: True, p)

    tx = adamx.inject_hyperparams(optax.adamw)(1e-2, mask=mask)
    state = tx.init({"w": jnp.ones(3)})
    assert "mask" not in state.hyperparams and "learning_rate" in state.hyperparams
    # Called with the params, never with a step count.
    assert all(isinstance(p, dict) for p in seen)


def test_a_mask_function_is_not_taken_for_a_schedule():
    def mask(p):
        return {"w": True, "b": False}

    params, loss = quadratic_problem()
    tx = adamx.inject_hyperparams(adamx.adamw)(1e-2, weight_decay=0.5, mask=mask)
    state = tx.init(params)
    assert set(state.hyperparams) == {
        "learning_rate",
        "b1",
        "b2",
        "eps",
        "eps_root",
        "weight_decay",
    }
    injected, _ = train(tx, params, loss, 5, True)
    plain, _ = train(
        adamx.adamw(1e-2, weight_decay=0.5, mask=mask), params, loss, 5, True
    )
    assert_bitwise_equal(plain, injected)


def test_static_args_and_ints_stay_out_of_the_state():
    tx = adamx.inject_hyperparams(adamx.adafactor, static_args="decay_rate")(1e-2)
    state = tx.init({"w": jnp.zeros((4, 4))})
    assert "decay_rate" not in state.hyperparams
    assert "min_dim_size_to_factor" not in state.hyperparams  # annotated int
    assert "learning_rate" in state.hyperparams
    # An unknown name is refused when the wrapper is made, not when called.
    with pytest.raises(ValueError, match=r"static_args names \['nope'\], which adam"):
        adamx.inject_hyperparams(adamx.adam, static_args=("nope",))


def test_state_bits_is_static_and_cannot_be_set():
    tx = adamx.inject_hyperparams(adamx.adam)(1e-3, state_bits=8)
    state = tx.init({"w": jnp.zeros((64, 128))})
    assert "state_bits" not in state.hyperparams
    assert isinstance(state.inner_state[0].mu["w"], adamx.QuantizedArray)
    assert state.inner_state[0].mu["w"].bits == 8
    with pytest.raises(KeyError, match="state_bits"):
        adamx.set_hyperparams(state, state_bits=7)


def test_which_arguments_are_hyperparameters_follows_their_types():
    # A float parameter (ArrayLike) becomes one; dtypes, bools, masks and
    # non-schedule callables stay static, whatever their values look like.
    tx = adamx.inject_hyperparams(adamx.adopt)(1e-2, clip_value_fn=lambda t: 2.0)
    state = tx.init(jnp.zeros(3))
    assert sorted(state.hyperparams) == ["b1", "b2", "eps", "learning_rate"]
    tx = adamx.inject_hyperparams(adamx.sgd)(0.1, 0.9, True, jnp.float32)
    assert sorted(tx.init(jnp.zeros(3)).hyperparams) == ["learning_rate", "momentum"]


def test_a_schedule_may_drive_any_numeric_hyperparameter():
    momentum = adamx.linear_schedule(0.5, 0.9, 4)
    tx = adamx.inject_hyperparams(adamx.sgd)(learning_rate=0.1, momentum=momentum)
    state = tx.init(jnp.zeros(1))
    trace = jnp.zeros(1)
    for count in range(5):
        u, state = tx.update(jnp.ones(1), state)
        trace = 1.0 + float(momentum(count)) * trace
        np.testing.assert_allclose(u, -0.1 * trace, rtol=1e-6)
        np.testing.assert_allclose(state.hyperparams["momentum"], momentum(count))


def test_a_partial_factory_can_be_injected():
    factory = functools.partial(adamx.sgd, momentum=0.9)
    tx = adamx.inject_hyperparams(factory)(learning_rate=0.1)
    state = tx.init(jnp.zeros(2))
    assert sorted(state.hyperparams) == ["learning_rate", "momentum"]
    params, loss = quadratic_problem()
    plain, _ = train(adamx.sgd(0.1, momentum=0.9), params, loss, 5, True)
    injected, _ = train(tx, params, loss, 5, True)
    assert_bitwise_equal(plain, injected)
    with pytest.raises(TypeError, match=r"inject_hyperparams\(sgd\)"):
        tx = adamx.inject_hyperparams(factory)(0.1, bogus=1)


def test_inject_validates_the_initial_values():
    with pytest.raises(ValueError, match="b1"):
        adamx.inject_hyperparams(adamx.adam)(1e-3, b1=1.5)


# ------------------------------------------------------------------ get_learning_rate


# Rprop's learning rate is only its initial step size, which it adapts per
# element: there is no one rate to record, as in Optax (its last stage is
# scale(-1)).
NO_RATE = ("rprop",)


@pytest.mark.parametrize(
    "name", [n for n in ids(without=("schedule", "variant")) if n not in NO_RATE]
)
def test_get_learning_rate_reads_every_optimizer(name):
    tx, _ = OPTIMIZERS[name]()
    params, loss = quadratic_problem()
    _, state = train(tx, params, loss, 2)
    expected = {"lion": 1e-3, "simplified_ademamix": 1e-3, "adam_mini": 0.1}
    expected = expected.get(name, 1e-2)
    assert float(adamx.get_learning_rate(state)) == pytest.approx(expected, rel=1e-6)


def test_get_learning_rate_follows_a_schedule_and_injection():
    schedule = adamx.linear_schedule(1.0, 0.0, transition_steps=10)
    params, loss = quadratic_problem()
    for tx in [
        adamx.chain(adamx.clip_by_global_norm(1.0), adamx.adamw(schedule)),
        adamx.inject_hyperparams(adamx.adam)(schedule),
    ]:
        _, state = train(tx, params, loss, 4)
        # The last step was step 3: rate 1 - 3/10.
        assert float(adamx.get_learning_rate(state)) == pytest.approx(0.7, rel=1e-6)
    with pytest.raises(ValueError, match="no learning rate"):
        adamx.get_learning_rate(adamx.scale_by_adam().init(params))


# ------------------------------------------------------------------ apply_if_finite


def test_apply_if_finite_skips_non_finite_steps_and_counts_them():
    inner = adamx.adam(0.1)
    tx = adamx.apply_if_finite(inner, max_consecutive_errors=2)
    params = jnp.array([1.0, -2.0])
    good = [jnp.array([0.3, -0.1]), jnp.array([0.2, 0.5]), jnp.array([-0.4, 0.1])]
    bad = jnp.array([jnp.nan, 1.0])
    sequence = [good[0], bad, jnp.array([jnp.inf, 0.0]), good[1], bad, good[2]]
    state = tx.init(params)
    p = params
    counts = []
    update = jax.jit(tx.update)
    for g in sequence:
        u, state = update(g, state, p)
        p = adamx.apply_updates(p, u)
        counts.append((int(state.notfinite_count), int(state.total_notfinite)))
    assert counts == [(0, 0), (1, 1), (2, 2), (0, 2), (1, 3), (0, 3)]
    # Reference: the inner optimizer fed only the finite gradients.
    q, s = params, inner.init(params)
    for g in good:
        u, s = inner.update(g, s, q)
        q = adamx.apply_updates(q, u)
    np.testing.assert_array_equal(p, q)


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
    tx = adamx.apply_if_finite(adamx.sgd(1.0), max_consecutive_errors=2)
    state = tx.init(jnp.zeros(1))
    bad = jnp.array([jnp.nan])
    outputs = []
    for _ in range(4):
        u, state = tx.update(bad, state)
        outputs.append((bool(jnp.isnan(u[0])), int(state.notfinite_count)))
    # Two skips, then the NaN goes through and the counter starts again.
    assert outputs == [(False, 1), (False, 2), (True, 0), (False, 1)]
    assert int(state.total_notfinite) == 4


def test_apply_if_finite_leaves_inner_state_untouched_on_skip():
    tx = adamx.apply_if_finite(adamx.adam(0.1), max_consecutive_errors=5)
    s0 = tx.init(jnp.zeros(3))
    _, s1 = tx.update(jnp.array([1.0, jnp.nan, 0.0]), s0)
    assert_bitwise_equal(s0.inner_state, s1.inner_state)


# ------------------------------------------------------------------ loss scaling


def test_dynamic_loss_scale_backs_off_and_grows():
    tx = adamx.dynamic_loss_scaling(
        adamx.sgd(1.0), initial_scale=8.0, growth_interval=2, min_scale=2.0
    )
    state = tx.init(jnp.zeros(1))
    finite, bad = jnp.array([4.0], jnp.float16), jnp.array([jnp.inf], jnp.float16)
    scales = []
    for g in [bad, bad, bad, finite, finite, finite, finite]:
        u, state = tx.update(g, state)
        scales.append(float(state.scale))
    assert scales == [4.0, 2.0, 2.0, 2.0, 4.0, 4.0, 8.0]
    assert int(state.skipped_steps) == 3
    assert float(adamx.loss_scale(state)) == 8.0


def test_float16_mlp_with_loss_scaling_matches_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(8, 1))).astype(np.float32)
    params32 = {
        "w1": jnp.asarray(rng.normal(size=(8, 16)) / 3, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(16, 1)) / 4, jnp.float32),
    }

    def loss(p, x, y):
        h = jnp.tanh(x @ p["w1"])
        return jnp.mean((h @ p["w2"] - y) ** 2)

    def fit(dtype, scaled):
        p = jax.tree.map(lambda a: a.astype(dtype), params32)
        xd, yd = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        inner = adamx.adam(1e-2, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
        tx = (
            adamx.dynamic_loss_scaling(inner, initial_scale=2.0**24)
            if scaled
            else inner
        )

        @jax.jit
        def step(p, s):
            scale = adamx.loss_scale(s).astype(dtype)
            g = jax.grad(lambda q: loss(q, xd, yd) * scale)(p)
            u, s = tx.update(g, s, p)
            return adamx.apply_updates(p, u), s

        s = tx.init(p)
        for _ in range(150):
            p, s = step(p, s)
        return p, float(loss(jax.tree.map(lambda a: a.astype(jnp.float32), p), x, y)), s

    p16, loss16, s16 = fit(jnp.float16, True)
    _, loss32, _ = fit(jnp.float32, False)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(p16))
    assert loss32 < 0.05
    assert abs(loss16 - loss32) < 0.2 * loss32 + 2e-3
    # A scale of 2**24 overflows float16 (max 65504): the first steps back off.
    assert int(s16.skipped_steps) >= 1


# ------------------------------------------------------------------ MultiSteps


@pytest.mark.parametrize("k", [1, 3])
def test_multisteps_equals_one_step_on_the_mean_gradient(k):
    params, loss = quadratic_problem()
    inner = adamx.adamw(1e-2, weight_decay=0.1)
    acc = adamx.MultiSteps(inner, every_k_schedule=k)
    rng = np.random.default_rng(1)
    micro = [
        jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
        for _ in range(2 * k)
    ]
    p, s = params, acc.init(params)
    update = jax.jit(acc.update)
    for i, g in enumerate(micro):
        u, s = update(g, s, p)
        p = adamx.apply_updates(p, u)
        assert bool(acc.has_updated(s)) == ((i + 1) % k == 0)
    q, t = params, inner.init(params)
    for j in range(2):
        mean = jax.tree.map(lambda *g: sum(g) / k, *micro[j * k : (j + 1) * k])
        u, t = inner.update(mean, t, q)
        q = adamx.apply_updates(q, u)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_multisteps_runs_the_inner_update_only_under_cond():
    params, _ = quadratic_problem()
    acc = adamx.MultiSteps(adamx.adam(1e-2), every_k_schedule=4)
    state = acc.init(params)
    jaxpr = jax.make_jaxpr(acc.update)(params, state, params)
    top_level = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert "cond" in top_level
    # The inner Adam's sqrt lives inside the cond branch, not at the top level.
    assert "sqrt" not in top_level


def test_multisteps_memory_is_one_params_sized_buffer():
    params, _ = quadratic_problem()
    inner = adamx.adam(1e-2)
    extra = sum(
        x.nbytes for x in jax.tree.leaves(adamx.MultiSteps(inner, 4).init(params))
    )
    base = sum(x.nbytes for x in jax.tree.leaves(inner.init(params)))
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    assert extra - base == param_bytes + 2 * 4  # two int32 counters


def test_multisteps_matches_optax_multisteps():
    params, loss = quadratic_problem()
    ours = adamx.MultiSteps(
        adamx.adam(1e-2), every_k_schedule=2
    ).gradient_transformation()
    theirs = optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2)
    p, _ = train(ours, params, loss, 8)
    q, _ = train(theirs, params, loss, 8)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ monitor


def test_monitor_records_norms_and_skipped_steps():
    tx = adamx.monitor(adamx.apply_if_finite(adamx.sgd(0.5), max_consecutive_errors=3))
    state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(1)})
    g = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([2.0])}
    _, state = jax.jit(tx.update)(g, state)
    assert float(state.grad_norm) == pytest.approx(3.0)
    assert float(state.update_norm) == pytest.approx(1.5)
    g_bad = {"a": jnp.array([jnp.nan, 2.0]), "b": jnp.array([2.0])}
    _, state = jax.jit(tx.update)(g_bad, state)
    assert int(state.skipped_steps) == 1
    assert float(state.update_norm) == 0.0
