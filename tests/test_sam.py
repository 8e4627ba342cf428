"""Tests of adamx/sam.py: sam and normalize, each against Optax's own object in
float64, and against the paper's update written out in NumPy."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, batch, loss, make_params

import adamx

STEPS = 100
F64 = {"rtol": 1e-10, "atol": 1e-12}


def sam_pair(lib, contrib, sync_period, reset_state, opaque_mode=False):
    """SAM of Adam with a normalized-SGD-with-momentum climb, from ``lib``."""
    outer = lib.adamw(3e-2, weight_decay=0.1)
    adv = lib.chain(contrib.normalize(), lib.sgd(0.05, momentum=0.5))
    return contrib.sam(
        outer,
        adv,
        sync_period=sync_period,
        reset_state=reset_state,
        opaque_mode=opaque_mode,
    )


def run_transparent(tx, params, apply_updates, steps=STEPS):
    """One gradient per call, on the batch of the call."""

    @jax.jit
    def step(params, state, x):
        grads = jax.grad(loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, jnp.float64))
    return params, state


def run_opaque(tx, params, apply_updates, steps=STEPS):
    """One period per call; the adversarial gradients on the call's batch."""

    @jax.jit
    def step(params, state, x):
        grads = jax.grad(loss)(params, x)
        grad_fn = jax.grad(lambda p, i: loss(p, x))
        updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
        return apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, jnp.float64))
    return params, state


def assert_states_close(ours, theirs):
    assert type(ours).__name__ == type(theirs).__name__ == "SAMState"
    assert ours._fields == theirs._fields
    assert int(ours.steps_since_sync) == int(theirs.steps_since_sync)
    assert_trees_close(ours.cache, theirs.cache, **F64)
    # AdamW's moments and the climb's momentum, field by field.
    for field in ("count", "mu", "nu"):
        a, b = getattr(ours.opt_state[0], field), getattr(theirs.opt_state[0], field)
        assert_trees_close(a, b, **F64)
    assert_trees_close(ours.adv_state[1][0].trace, theirs.adv_state[1][0].trace, **F64)


CASES = {"k2-reset": (2, True), "k3-keep": (3, False), "k5-reset": (5, True)}


@pytest.mark.parametrize("sync_period, reset_state", CASES.values(), ids=CASES)
def test_transparent_sam_matches_optax(x64, sync_period, reset_state):
    params = make_params(jnp.float64)
    ours, our_state = run_transparent(
        sam_pair(adamx, adamx, sync_period, reset_state), params, adamx.apply_updates
    )
    theirs, their_state = run_transparent(
        sam_pair(optax, optax.contrib, sync_period, reset_state),
        params,
        optax.apply_updates,
    )
    assert_trees_close(ours, theirs, **F64)
    assert not np.allclose(ours["w"], params["w"])
    assert_states_close(our_state, their_state)


OPAQUE = {"k2-keep": (2, False), "k4-reset": (4, True)}


@pytest.mark.parametrize("sync_period, reset_state", OPAQUE.values(), ids=OPAQUE)
def test_opaque_sam_matches_optax(x64, sync_period, reset_state):
    params = make_params(jnp.float64)
    ours, our_state = run_opaque(
        sam_pair(adamx, adamx, sync_period, reset_state, True),
        params,
        adamx.apply_updates,
    )
    theirs, their_state = run_opaque(
        sam_pair(optax, optax.contrib, sync_period, reset_state, True),
        params,
        optax.apply_updates,
    )
    assert_trees_close(ours, theirs, **F64)
    assert not np.allclose(ours["w"], params["w"])
    assert our_state.cache is None and their_state.cache is None
    assert int(our_state.opt_state[0].count) == STEPS
    for field in ("mu", "nu"):
        a, b = (
            getattr(our_state.opt_state[0], field),
            getattr(their_state.opt_state[0], field),
        )
        assert_trees_close(a, b, **F64)
    assert_trees_close(
        our_state.adv_state[1][0].trace, their_state.adv_state[1][0].trace, **F64
    )


def test_opaque_equals_transparent_over_whole_periods(x64):
    # k calls of the transparent mode on one batch are one opaque call on it.
    k = 3
    params = make_params(jnp.float64)
    clear = sam_pair(adamx, adamx, k, False)
    hidden = sam_pair(adamx, adamx, k, False, True)

    @jax.jit
    def period_of_calls(p, s, x):
        for _ in range(k):
            u, s = clear.update(jax.grad(loss)(p, x), s, p)
            p = adamx.apply_updates(p, u)
        return p, s

    @jax.jit
    def one_call(p, s, x):
        grad_fn = jax.grad(lambda q, i: loss(q, x))
        u, s = hidden.update(jax.grad(loss)(p, x), s, p, grad_fn=grad_fn)
        return adamx.apply_updates(p, u), s

    p1, s1 = params, clear.init(params)
    p2, s2 = params, hidden.init(params)
    for period in range(10):
        x = batch(period, jnp.float64)
        p1, s1 = period_of_calls(p1, s1, x)
        p2, s2 = one_call(p2, s2, x)
        assert_trees_close(p1, p2, rtol=1e-12, atol=1e-13)
    assert_trees_close(s1.opt_state, s2.opt_state, rtol=1e-12, atol=1e-13)


def test_sam_follows_the_paper():
    # Foret et al., Algorithm 1 with SGD: w <- w - lr grad L(w + rho g / |g|),
    # written in NumPy, on a quadratic with a varying curvature.
    lr, rho = 0.1, 0.05
    h = np.array([1.0, 3.0, 0.5])

    def grad(w):
        return h * w + np.cos(w)

    tx = adamx.sam(adamx.sgd(lr), adamx.chain(adamx.normalize(), adamx.sgd(rho)))

    @jax.jit
    def step(params, state):
        g = jnp.asarray(h, jnp.float32) * params + jnp.cos(params)
        updates, state = tx.update(g, state, params)
        return adamx.apply_updates(params, updates), state

    params = jnp.array([1.0, -2.0, 0.5])
    state = tx.init(params)
    w = np.array([1.0, -2.0, 0.5])
    for _ in range(20):
        for _ in range(2):
            params, state = step(params, state)
        g = grad(w)
        w = w - lr * grad(w + rho * g / np.linalg.norm(g))
        np.testing.assert_allclose(params, w, rtol=1e-5, atol=1e-6)


def test_sync_period_one_is_the_outer_optimizer(x64):
    # Where Optax's transparent mode steps from the previous call's params,
    # adamx's takes the outer optimizer's step, as both opaque modes do.
    params = make_params(jnp.float64)
    adv = adamx.chain(adamx.normalize(), adamx.sgd(0.05))
    ours, _ = run_transparent(
        adamx.sam(adamx.adam(3e-2), adv, sync_period=1), params, adamx.apply_updates
    )
    plain, _ = run_transparent(adamx.adam(3e-2), params, adamx.apply_updates)
    assert_trees_close(ours, plain, **F64)
    optax_opaque, _ = run_opaque(
        optax.contrib.sam(
            optax.adam(3e-2),
            optax.chain(optax.contrib.normalize(), optax.sgd(0.05)),
            sync_period=1,
            opaque_mode=True,
        ),
        params,
        optax.apply_updates,
    )
    assert_trees_close(ours, optax_opaque, **F64)


def test_zero_gradients_leave_the_params_and_state_finite():
    tx = adamx.sam(adamx.adam(1e-2), adamx.chain(adamx.normalize(), adamx.sgd(0.1)))
    params = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(tx.update)
    new = params
    for _ in range(3):
        updates, state = update(zeros, state, new)
        new = adamx.apply_updates(new, updates)
    assert_trees_close(new, params, rtol=0, atol=0)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def test_complex_params_match_optax(x64):
    rng = np.random.default_rng(0)
    z0 = jnp.asarray(rng.normal(size=5) + 1j * rng.normal(size=5))

    def complex_loss(z, t):
        return jnp.sum(jnp.abs(z - (1 + 0.1 * t)) ** 2 + 0.1 * jnp.abs(z) ** 4)

    def run(lib, contrib):
        tx = contrib.sam(
            lib.adam(1e-2), lib.chain(contrib.normalize(), lib.sgd(0.1)), sync_period=3
        )

        @jax.jit
        def step(z, state, t):
            g = jnp.conj(jax.grad(complex_loss)(z, t))
            u, state = tx.update(g, state, z)
            return lib.apply_updates(z, u), state

        z, state = z0, tx.init(z0)
        for t in range(STEPS):
            z, state = step(z, state, jnp.float64(t))
        return z

    ours, theirs = run(adamx, adamx), run(optax, optax.contrib)
    assert ours.dtype == jnp.complex128
    np.testing.assert_allclose(ours, theirs, **F64)
    assert not np.allclose(ours, z0)


def test_normalize_matches_optax_in_a_chain(x64):
    params = make_params(jnp.float64)
    ours, _ = run_transparent(
        adamx.chain(adamx.normalize(), adamx.sgd(0.05, momentum=0.9)),
        params,
        adamx.apply_updates,
    )
    theirs, _ = run_transparent(
        optax.chain(optax.contrib.normalize(), optax.sgd(0.05, momentum=0.9)),
        params,
        optax.apply_updates,
    )
    assert_trees_close(ours, theirs, **F64)
    assert not np.allclose(ours["w"], params["w"])


def test_normalize_gives_unit_norm_keeps_dtypes_and_zero(strict_promotion):
    tx = adamx.normalize()
    assert tx.init({"w": jnp.ones(2)}) == adamx.NormalizeState()
    grads = {
        "a": jnp.array([3.0, 0.0], jnp.bfloat16),
        "b": jnp.array([4.0 + 0.0j]),
    }
    out, _ = tx.update(grads, tx.init(grads))
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.complex64
    # 0.6 in bfloat16 is 0.6015625.
    np.testing.assert_allclose(np.asarray(out["a"], np.float32), [0.6, 0.0], rtol=4e-3)
    np.testing.assert_allclose(out["b"], [0.8 + 0.0j], rtol=1e-6)
    zeros, _ = jax.jit(tx.update)({"a": jnp.zeros(3)}, tx.init(None))
    np.testing.assert_array_equal(zeros["a"], np.zeros(3))


def test_bad_calls_are_refused():
    tx = adamx.sam(adamx.sgd(0.1), adamx.sgd(0.1), opaque_mode=True)
    params = jnp.ones(2)
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(params, tx.init(params), params)
    clear = adamx.sam(adamx.sgd(0.1), adamx.sgd(0.1))
    with pytest.raises(ValueError, match="sam needs the current parameters"):
        clear.update(params, clear.init(params))


def test_extra_arguments_pass_through_a_chain():
    tx = adamx.chain(adamx.sam(adamx.sgd(0.1), adamx.sgd(0.1)), adamx.scale(1.0))
    assert isinstance(tx, adamx.GradientTransformationExtraArgs)
    params = jnp.ones(2)
    updates, _ = tx.update(params, tx.init(params), params, value=1.0)
    assert updates.shape == (2,)


def test_pmean_over_batch_axis_name():
    # Each device's adversarial gradient comes from its own batch; with the
    # axis named, the climb uses their mean, so the devices stay in step.
    n = 2
    tx = adamx.sam(
        adamx.sgd(0.1),
        adamx.chain(adamx.normalize(), adamx.sgd(0.5)),
        sync_period=3,
        opaque_mode=True,
        batch_axis_name="i",
    )
    params = jnp.array([1.0, -1.0])
    shift = jnp.arange(n, dtype=jnp.float32)

    def step(p, s, c):
        grad_fn = jax.grad(lambda q, i: jnp.sum((q - c) ** 2))
        g = jax.lax.pmean(grad_fn(p, 0), "i")
        u, s = tx.update(g, s, p, grad_fn=grad_fn)
        return adamx.apply_updates(p, u), s

    replicated = jax.tree.map(lambda x: jnp.stack([x] * n), (params, tx.init(params)))
    out, _ = jax.pmap(step, axis_name="i")(*replicated, shift)
    np.testing.assert_allclose(out[0], out[1])
    assert not np.allclose(out[0], params)


def test_arguments_follow_optax():
    for ours, theirs in [
        (adamx.sam, optax.contrib.sam),
        (adamx.normalize, optax.contrib.normalize),
    ]:
        a = inspect.signature(ours).parameters
        b = inspect.signature(theirs).parameters
        assert list(a) == list(b)
        for name, p in b.items():
            assert a[name].default == p.default and a[name].kind == p.kind
    assert adamx.SAMState._fields == optax.contrib.SAMState._fields
