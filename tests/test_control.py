"""Tests of adamx/control.py: each transform against Optax's own, and its edge cases.

The Optax comparisons run 100 steps in float64 on tests/helpers.py's problem,
adamx's transform around adamx.adam against Optax's around optax.adam, and
compare every step's updates and the final params and state.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import batch, loss, make_params

import adamx

STEPS = 100
RTOL, ATOL = 1e-10, 1e-12
# The steps whose gradient holds a NaN, in the runs that test for them.
POISONED = (5, 17, 18, 40, 77)


def _poison(grads, bad):
    w = grads["w"]
    return dict(grads, w=jnp.where(bad, w.at[0, 1].set(jnp.nan), w))


def run(
    tx,
    steps=STEPS,
    *,
    poisoned=(),
    params=None,
    state=None,
    start=0,
    loss_fn=loss,
    extra=False,
):
    """A jitted run under ``lax.scan`` from step ``start``: the final params
    and state, and each step's updates and state stacked; with ``extra``,
    ``update`` is given the loss as ``value``."""
    params = make_params(jnp.float64) if params is None else params
    state = tx.init(params) if state is None else state
    steps = range(start, start + steps)
    xs = jnp.stack([batch(i, params["w"].dtype) for i in steps])
    bad = jnp.asarray([i in poisoned for i in steps])
    (params, state), (updates, states) = _scan(tx, loss_fn, extra)(
        (params, state), xs, bad
    )
    return params, state, updates, states


@functools.cache
def _scan(tx, loss_fn, extra):
    """The jitted scan of ``run``, compiled once for each transformation."""

    def step(carry, inputs):
        p, s = carry
        x, b = inputs
        value, g = jax.value_and_grad(loss_fn)(p, x)
        kwargs = {"value": value} if extra else {}
        u, s = tx.update(_poison(g, b), s, p, **kwargs)
        return (adamx.apply_updates(p, u), s), (u, s)

    return jax.jit(lambda carry, xs, bad: jax.lax.scan(step, carry, (xs, bad)))


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    """Leaves of ``a`` and ``b`` close, in order (the tree types may differ)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_runs_match(ours, theirs, part=None, moves=True, **kw):
    """Every step's updates and the final params of two runs close; and the
    ``part`` of the final states where given (the states' parts that have
    the same leaves in both libraries)."""
    p, s, us, states = run(ours, **kw)
    q, t, vs, _ = run(theirs, **kw)
    assert_close(us, vs)  # the leading axis is the step
    assert_close(p, q)
    if part is not None:
        assert_close(part(s), part(t))
    # A run that never moved would match trivially.
    assert (float(adamx.global_norm(us)) > 0) == moves
    return p, s, us, states


# ------------------------------------------------------------------ apply_every


def test_apply_every_after_adam_matches_optax(x64):
    assert_runs_match(
        adamx.chain(adamx.adam(1e-2), adamx.apply_every(3)),
        optax.chain(optax.adam(1e-2), optax.apply_every(3)),
        part=lambda s: (s[0][0], s[1]),
    )


def test_apply_every_before_adam_matches_optax(x64):
    # Adam sees the sum of 4 gradients, and zeros between.
    assert_runs_match(
        adamx.chain(adamx.apply_every(4), adamx.adam(1e-2)),
        optax.chain(optax.apply_every(4), optax.adam(1e-2)),
        part=lambda s: (s[0], s[1][0]),
    )


def test_apply_every_injected_k_changed_mid_run_matches_optax(x64):
    ours = adamx.chain(adamx.adam(1e-2), adamx.inject_hyperparams(adamx.apply_every)(3))
    theirs = optax.chain(
        optax.adam(1e-2), optax.inject_hyperparams(optax.apply_every)(k=jnp.int32(3))
    )
    ends = []
    for tx in (ours, theirs):
        p, s, _, _ = run(tx, steps=50)
        if tx is ours:
            s = (s[0], adamx.set_hyperparams(s[1], k=2))
        else:
            s[1].hyperparams["k"] = jnp.asarray(2, s[1].hyperparams["k"].dtype)
        assert int(s[1].hyperparams["k"]) == 2
        ends.append(run(tx, steps=50, params=p, state=s, start=50))
    (p, s, us, _), (q, t, vs, _) = ends
    assert_close(us, vs)
    assert_close(p, q)
    assert_close(s[1].inner_state, t[1].inner_state)
    # At step 50 the count is 50 mod 3 = 2, so 0 mod 2: from there every
    # second step emits.
    emitted = np.abs(np.asarray(us["b"])).sum(axis=1) > 0
    np.testing.assert_array_equal(emitted, [i % 2 == 1 for i in range(50)])


def test_apply_every_sums_k_steps_and_emits_exact_zeros_between():
    tx = adamx.apply_every(3)
    state = tx.init(jnp.zeros(1))
    got = []
    for g in [1.0, 2.0, 3.0, 4.0, jnp.inf, 6.0, 7.0]:
        u, state = tx.update(jnp.array([g]), state)
        got.append(float(u[0]))
    # Optax returns 0 * inf = NaN at step 5; the sum is let through at step 6.
    assert got[:5] == [0.0, 0.0, 6.0, 0.0, 0.0]
    assert got[5] == np.inf and got[6] == 0.0
    assert int(state.count) == 1
    # k = 1, the default, lets every gradient through.
    tx = adamx.apply_every()
    u, state = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    assert float(u[0]) == 2.0 and int(state.count) == 0


# ------------------------------------------------------------------ conditionally_*


def test_conditionally_transform_matches_optax(x64):
    condition = lambda t: t < 40  # noqa: E731
    # Off the chosen steps the gradient passes through to the learning rate.
    assert_runs_match(
        adamx.chain(
            adamx.conditionally_transform(adamx.scale_by_adam(), condition),
            adamx.scale(-1e-2),
        ),
        optax.chain(
            optax.conditionally_transform(optax.scale_by_adam(), condition),
            optax.scale(-1e-2),
        ),
        part=lambda s: s[0],
    )


def test_conditionally_mask_matches_optax(x64):
    condition = lambda t: t % 3 == 0  # noqa: E731
    assert_runs_match(
        adamx.conditionally_mask(adamx.adam(1e-2), condition),
        optax.conditionally_mask(optax.adam(1e-2), condition),
        part=lambda s: (s.step, s.inner_state[0]),
    )


def test_conditionally_mask_of_injected_adam_on_the_loss_matches_optax(x64):
    """The loss forwarded to the condition; Adam's rate in its state."""

    def condition(step, value):
        return value > 0.0

    _, s, _, _ = assert_runs_match(
        adamx.conditionally_mask(
            adamx.inject_hyperparams(adamx.adam, hyperparam_dtype=jnp.float64)(1e-2),
            condition,
            forward_extra_args=True,
        ),
        optax.conditionally_mask(
            optax.inject_hyperparams(optax.adam)(1e-2),
            condition,
            forward_extra_args=True,
        ),
        part=lambda s: (s.step, s.inner_state.inner_state[0]),
        extra=True,
    )
    # Both branches taken: the inner Adam ran at some steps, not all.
    assert 5 < int(s.inner_state.inner_state[0].count) < 95


@pytest.mark.parametrize("mask", [False, True])
def test_conditional_boundary_step(mask):
    """The condition t < 5: steps 0-4 run Adam, step 5 does not, and the inner
    state stops at Adam's fifth step."""
    wrap = adamx.conditionally_mask if mask else adamx.conditionally_transform
    inner = adamx.scale_by_adam()
    tx = wrap(inner, lambda t: t < 5)
    g = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    state, inner_state = tx.init(g), inner.init(g)
    update = jax.jit(tx.update)
    for t in range(7):
        u, state = update(g, state)
        if t < 5:
            want, inner_state = inner.update(g, inner_state)
        else:
            want = jax.tree.map(jnp.zeros_like, g) if mask else g
        assert_close(u, want, rtol=1e-6, atol=0)
        assert int(state.step) == t + 1
    assert int(state.inner_state.count) == 5


def test_conditionally_mask_does_not_run_the_inner_update_when_off():
    tx = adamx.conditionally_mask(adamx.adam(1e-2), lambda t: t > 2)
    g = jnp.ones(3)
    jaxpr = jax.make_jaxpr(tx.update)(g, tx.init(g))
    top = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert "cond" in top and "sqrt" not in top


def test_conditionally_mask_under_inject_hyperparams_is_the_plain_one():
    # The inner transformation and the condition are static arguments.
    condition = lambda t: t % 2 == 1  # noqa: E731
    plain = adamx.conditionally_mask(adamx.adam(1e-2), condition)
    injected = adamx.inject_hyperparams(adamx.conditionally_mask)(
        adamx.adam(1e-2), condition
    )
    g = make_params()
    s, t = plain.init(g), injected.init(g)
    assert t.hyperparams == {}
    step, injected_step = jax.jit(plain.update), jax.jit(injected.update)
    for _ in range(2):
        (u, s), (v, t) = step(g, s), injected_step(g, t)
        assert_close(u, v, rtol=0, atol=0)


# ------------------------------------------------------------------ MultiSteps' tests


# About the median squared norm of the run's gradients, so both branches are taken.
MAX_SQUARED_NORM = 0.5


def _skip_fns(lib):
    return {
        "skip_not_finite": lib.skip_not_finite,
        "skip_large_updates": functools.partial(
            lib.skip_large_updates, max_squared_norm=MAX_SQUARED_NORM
        ),
    }


@pytest.mark.parametrize(
    ("name", "crossed"),
    [
        ("skip_not_finite", False),
        ("skip_large_updates", False),
        ("skip_not_finite", True),
    ],
    ids=["skip_not_finite", "skip_large_updates", "skip_not_finite-crossed"],
)
def test_multisteps_skipping_matches_optax(name, crossed, x64):
    """adamx.MultiSteps against optax.MultiSteps, each with its library's test
    (``own``) or with the other's (``crossed``), on gradients with NaNs."""
    ours_fn, theirs_fn = _skip_fns(adamx)[name], _skip_fns(optax)[name]
    if crossed:
        ours_fn, theirs_fn = theirs_fn, ours_fn
    ours = adamx.MultiSteps(adamx.adam(1e-2), 3, should_skip_update_fn=ours_fn)
    theirs = optax.MultiSteps(
        optax.adam(1e-2),
        3,
        should_skip_update_fn=theirs_fn,
        accumulator_dtype=jnp.float64,
    )
    p, s, us, states = run(ours.gradient_transformation(), poisoned=POISONED)
    q, t, vs, others = run(theirs.gradient_transformation(), poisoned=POISONED)
    assert_close(us, vs)
    assert_close(states.skip_state, others.skip_state)  # at every step
    assert_close(p, q)
    assert_close(s.inner_opt_state[0], t.inner_opt_state[0])
    assert int(s.gradient_step) == int(t.gradient_step)
    assert int(s.mini_step) == int(t.mini_step)
    skipped = np.asarray(states.skip_state["should_skip"])
    assert skipped[list(POISONED)].all()
    assert 5 <= skipped.sum() < 95
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))


def test_multisteps_skipped_micro_step_is_as_if_it_had_not_happened():
    tx = adamx.MultiSteps(
        adamx.adam(1e-2), 2, should_skip_update_fn=adamx.skip_not_finite
    )
    g = {"a": jnp.array([1.0, 2.0])}
    state = tx.init(g)
    assert int(state.skip_state["num_not_finite"]) == 0
    _, state = tx.update(g, state)
    bad = {"a": jnp.array([jnp.nan, jnp.inf])}
    u, skipped = jax.jit(tx.update)(bad, state)
    assert_close(u, {"a": jnp.zeros(2)}, rtol=0, atol=0)
    assert bool(skipped.skip_state["should_skip"])
    assert int(skipped.skip_state["num_not_finite"]) == 2
    assert_close(skipped._replace(skip_state=()), state._replace(skip_state=()), 0, 0)
    # The next good micro-step completes the pair.
    u, state = tx.update(g, skipped)
    assert bool(tx.has_updated(state)) and float(jnp.abs(u["a"]).sum()) > 0


def test_multisteps_without_a_test_keeps_an_empty_skip_state():
    tx = adamx.MultiSteps(adamx.sgd(1.0), 2)
    state = tx.init(jnp.zeros(2))
    assert state.skip_state == ()
    _, state = tx.update(jnp.ones(2), state)
    assert state.skip_state == ()


def test_multisteps_refuses_a_test_that_returns_no_bool():
    tx = adamx.MultiSteps(
        adamx.sgd(1.0), 2, should_skip_update_fn=lambda u, s, p: (jnp.zeros(2), ())
    )
    with pytest.raises(ValueError, match=r"bool of shape \(\).*float32.*\(2,\)"):
        tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))


def test_skip_functions_match_optax(x64):
    tree = {
        "a": jnp.array([1.0, jnp.nan, -jnp.inf]),
        "b": jnp.array([[3.0, -4.0]]),
        "c": jnp.array(2.0),
    }
    finite = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0, -4.0]])}
    for t in (tree, finite):
        ours, theirs = (
            adamx.skip_not_finite(t, 0, None),
            optax.skip_not_finite(t, 0, None),
        )
        assert bool(ours[0]) == bool(theirs[0])
        assert_close(ours[1], theirs[1], 0, 0)
        for m in (1.0, 30.0, 31.0):
            ours = adamx.skip_large_updates(t, 0, None, m)
            theirs = optax.skip_large_updates(t, 0, None, m)
            assert bool(ours[0]) == bool(theirs[0])
            assert_close(ours[1], theirs[1], rtol=1e-15, atol=0)
    # The boundary: a squared norm equal to the limit is skipped.
    assert bool(adamx.skip_large_updates(finite, 0, None, 30.0)[0])
    assert not bool(adamx.skip_large_updates(finite, 0, None, 30.0 + 1e-9)[0])


def test_skip_large_updates_takes_the_modulus_of_complex_updates():
    skip, info = adamx.skip_large_updates(jnp.array([3 + 4j]), 0, None, 26.0)
    assert not bool(skip) and float(info["norm_squared"]) == 25.0


# ------------------------------------------- zero_nans, keep_params_nonnegative


def test_zero_nans_adam_keep_params_nonnegative_matches_optax(x64):
    # Half of make_params' entries start negative: the first step moves them
    # to 0. The NaNs of the poisoned steps are zeroed before Adam sees them.
    p, _, us, states = assert_runs_match(
        adamx.chain(
            adamx.zero_nans(), adamx.adam(5e-2), adamx.keep_params_nonnegative()
        ),
        optax.chain(
            optax.zero_nans(), optax.adam(5e-2), optax.keep_params_nonnegative()
        ),
        part=lambda s: (s[0], s[1][0], s[2]),
        poisoned=POISONED,
    )
    found = np.asarray(states[0].found_nan["w"])
    np.testing.assert_array_equal(found, [i in POISONED for i in range(STEPS)])
    assert not np.asarray(states[0].found_nan["b"]).any()
    assert all(bool(jnp.all(x >= 0)) for x in jax.tree.leaves(p))
    start = make_params(jnp.float64)
    after_one = adamx.apply_updates(start, jax.tree.map(lambda u: u[0], us))
    for x, y in zip(jax.tree.leaves(start), jax.tree.leaves(after_one), strict=True):
        np.testing.assert_array_equal(np.asarray(y)[np.asarray(x) < 0], 0.0)


def test_zero_nans_zeroes_nans_only():
    tx = adamx.zero_nans()
    g = {"a": jnp.array([jnp.nan, jnp.inf, -1.0]), "b": jnp.ones(2), "c": None}
    state = tx.init(g)
    assert jax.tree.map(bool, state.found_nan) == {"a": False, "b": False, "c": None}
    u, state = jax.jit(tx.update)(g, state)
    np.testing.assert_array_equal(u["a"], [0.0, np.inf, -1.0])
    assert u["c"] is None
    assert jax.tree.map(bool, state.found_nan) == {"a": True, "b": False, "c": None}


def test_keep_params_nonnegative_edges():
    tx = adamx.keep_params_nonnegative()
    params = jnp.array([0.0, 0.0, -1.0, -1.0, 2.0])
    updates = jnp.array([-1.0, 1.0, 3.0, 0.5, -2.0])
    u, state = tx.update(updates, tx.init(params), params)
    # At 0 a step down is stopped; a negative param that a step leaves below
    # zero is moved to 0; one that a step takes above zero keeps the step.
    np.testing.assert_array_equal(u, [0.0, 1.0, 3.0, 1.0, -2.0])
    assert state == adamx.NonNegativeParamsState() == optax.NonNegativeParamsState()
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(updates, state)
    with pytest.raises(TypeError, match="real params.*complex64"):
        tx.init(jnp.ones(2, jnp.complex64))


# ------------------------------------------------------------------ freeze, selective


def test_freeze_before_adam_matches_optax(x64):
    mask = {"w": True, "b": False, "nested": True}
    p, *_ = assert_runs_match(
        adamx.chain(adamx.freeze(mask), adamx.adam(1e-2)),
        optax.chain(optax.freeze(mask), optax.adam(1e-2)),
        part=lambda s: s[1][0],
    )
    start = make_params(jnp.float64)
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, start)
    for frozen, x, y in zip(
        jax.tree.leaves(full), jax.tree.leaves(start), jax.tree.leaves(p), strict=True
    ):
        assert np.array_equal(x, y) == frozen


@pytest.mark.parametrize(
    "mask",
    [{"w": False, "b": True, "nested": {"k": False}}, True],
    ids=["tree", "all"],
)
def test_selective_transform_matches_optax(mask, x64):
    p, *_ = assert_runs_match(
        adamx.selective_transform(adamx.adam(1e-2), freeze_mask=mask),
        optax.selective_transform(optax.adam(1e-2), freeze_mask=mask),
        part=lambda s: s.inner_states["train"].inner_state[0],
        moves=mask is not True,
    )
    start = make_params(jnp.float64)
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, start)
    for frozen, x, y in zip(
        jax.tree.leaves(full), jax.tree.leaves(start), jax.tree.leaves(p), strict=True
    ):
        assert np.array_equal(x, y) == frozen


def test_freeze_and_selective_transform_take_a_mask_function():
    params = make_params()
    by_ndim = lambda tree: jax.tree.map(lambda x: x.ndim == 1, tree)  # noqa: E731
    tree_mask = by_ndim(params)
    for make in (
        lambda m: adamx.chain(adamx.freeze(m), adamx.adam(1e-2)),
        lambda m: adamx.selective_transform(adamx.adam(1e-2), freeze_mask=m),
    ):
        by_fn, by_tree = make(by_ndim), make(tree_mask)
        u, _ = by_fn.update(params, by_fn.init(params), params)
        v, _ = by_tree.update(params, by_tree.init(params), params)
        assert_close(u, v, 0, 0)
        np.testing.assert_array_equal(u["b"], 0.0)
        assert float(jnp.abs(u["w"]).min()) > 0


@pytest.mark.parametrize("mask", [True, False])
def test_freeze_everything_or_nothing_as_optax(mask):
    params = make_params()
    ours, theirs = adamx.freeze(mask), optax.freeze(mask)
    s, t = ours.init(params), theirs.init(params)
    assert_close(s, t, 0, 0)
    assert_close(ours.update(params, s)[0], theirs.update(params, t)[0], 0, 0)
    assert_close(
        ours.update(params, s)[0],
        adamx.tree_zeros_like(params) if mask else params,
        0,
        0,
    )


def test_selective_transform_keeps_no_optimizer_state_for_frozen_leaves():
    params = make_params()
    tx = adamx.selective_transform(
        adamx.adam(1e-2), freeze_mask={"w": True, "b": False, "nested": True}
    )
    nbytes = sum(x.nbytes for x in jax.tree.leaves(tx.init(params)))
    # Adam's state for b alone.
    adam = adamx.adam(1e-2).init(params["b"])
    assert nbytes == sum(x.nbytes for x in jax.tree.leaves(adam))


# ------------------------------------------------------------------ scale_gradient


def test_scale_gradient_in_the_loss_matches_optax(x64):
    scale = -2.0

    def scaled_loss(lib):
        def fn(params, x):
            params = dict(params, w=lib.scale_gradient(params["w"], scale))
            return loss(params, x)

        return fn

    p, _, us, _ = run(adamx.sgd(0.05), loss_fn=scaled_loss(adamx))
    q, _, vs, _ = run(adamx.sgd(0.05), loss_fn=scaled_loss(optax))
    assert_close(us, vs)
    assert_close(p, q)
    assert not np.any(p["w"] == make_params(jnp.float64)["w"])


def test_scale_gradient_with_a_traced_scale_and_its_forward_pass():
    x = {"a": jnp.array([1.0, -2.0]), "n": jnp.array(3)}

    def f(x, s):
        y = adamx.scale_gradient(x, s)
        return jnp.sum(y["a"] ** 3) + y["n"]

    g = jax.jit(jax.grad(f, allow_int=True))(x, jnp.asarray(0.25))
    np.testing.assert_allclose(g["a"], 0.25 * 3 * x["a"] ** 2, rtol=1e-6)
    assert g["n"].dtype == jax.dtypes.float0
    assert float(f(x, 0.25)) == -7.0 + 3
    # Scales of 1 and 0 take Optax's short cuts.
    assert adamx.scale_gradient(x, 1.0) is x
    assert jax.grad(lambda a: jnp.sum(adamx.scale_gradient(a, 0.0)))(x["a"]).sum() == 0


# ------------------------------------------------------------------ dtypes


def test_dtypes_kept_under_strict_promotion(strict_promotion):
    params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), -2.0, jnp.bfloat16), "b": jnp.full(3, jnp.nan)}
    for tx in (
        adamx.apply_every(2),
        adamx.zero_nans(),
        adamx.keep_params_nonnegative(),
        adamx.conditionally_mask(adamx.sgd(0.1), lambda t: t == 0),
        adamx.MultiSteps(
            adamx.sgd(0.1),
            2,
            should_skip_update_fn=functools.partial(
                adamx.skip_large_updates, max_squared_norm=1.0
            ),
        ).gradient_transformation(),
    ):
        u, _ = tx.update(grads, tx.init(params), params)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(
            lambda x: x.dtype, grads
        )
    skip, info = adamx.skip_not_finite(grads, 0, None)
    assert bool(skip) and int(info["num_not_finite"]) == 3
