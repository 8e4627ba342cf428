"""Tests of adamx/prodigy.py: Prodigy against the authors' package
(``prodigyopt.Prodigy``, torch float64) and ``optax.contrib.prodigy`` in float64
over 120 steps, the flat layout, low-bit storage and composition."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_bitwise_equal

import adamx

torch = pytest.importorskip("torch")
prodigyopt = pytest.importorskip("prodigyopt")

STEPS = 120
TOL = 1e-10

_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(16, 5))
Y = _RNG.normal(size=(16, 3))
START = {"w": 0.5 * _RNG.normal(size=(5, 3)), "b": 0.1 * _RNG.normal(size=(3,))}


def loss(params):
    """Least squares with a sine term: the curvature changes as it trains."""
    r = jnp.asarray(X) @ params["w"] + params["b"] - jnp.asarray(Y)
    return jnp.mean(r**2) + 0.1 * jnp.sum(jnp.sin(3 * params["w"]))


grad = jax.jit(jax.grad(loss))


def run_ours(tx, steps=STEPS):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), START)
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        u, state = step(grad(params), state, params)
        params = adamx.apply_updates(params, u)
        out.append(jax.tree.map(np.asarray, params))
    return out, state


def run_optax(tx, steps=STEPS):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), START)
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        u, state = step(grad(params), state, params)
        params = optax.apply_updates(params, u)
        out.append(jax.tree.map(np.asarray, params))
    return out


def run_authors(schedule=None, steps=STEPS, **kw):
    """``prodigyopt.Prodigy`` on torch float64 tensors, fed JAX's gradients."""
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in START.items()}
    for t in tensors.values():
        t.requires_grad_(True)
    opt = prodigyopt.Prodigy(list(tensors.values()), **kw)
    out = []
    for k in range(steps):
        if schedule is not None:
            opt.param_groups[0]["lr"] = schedule(k)
        now = {n: jnp.asarray(t.detach().numpy()) for n, t in tensors.items()}
        g = grad(now)
        for n, t in tensors.items():
            t.grad = torch.tensor(np.asarray(g[n]), dtype=torch.float64)
        opt.step()
        out.append({n: t.detach().numpy().copy() for n, t in tensors.items()})
    return out, opt.param_groups[0]["d"]


def assert_close(ours, theirs):
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=TOL, atol=TOL)
            worst = max(worst, float(np.max(np.abs(a[k] - b[k]))))
    # The run must move, or the comparison proves nothing.
    assert np.abs(ours[-1]["w"] - START["w"]).max() > 1e-2
    return worst


# (adamx keyword arguments, the same for prodigyopt.Prodigy)
AUTHORS_CASES = [
    ({}, {}),
    ({"use_bias_correction": True}, {"use_bias_correction": True}),
    ({"safeguard_warmup": True}, {"safeguard_warmup": True}),
    ({"weight_decay": 0.1}, {"weight_decay": 0.1}),
    (
        {"weight_decay": 0.1, "decouple": False},
        {"weight_decay": 0.1, "decouple": False},
    ),
    ({"growth_rate": 1.05}, {"growth_rate": 1.05}),
    (
        {"betas": (0.8, 0.99), "beta3": 0.9, "estim_lr_coef": 2.0},
        {"betas": (0.8, 0.99), "beta3": 0.9, "d_coef": 2.0},
    ),
    ({"estim_lr0": 1e-4, "eps": 1e-6}, {"d0": 1e-4, "eps": 1e-6}),
    ({"slice_p": 4}, {"slice_p": 4}),
    ({"betas": (0.0, 0.999)}, {"betas": (0.0, 0.999)}),
    ({"learning_rate": 0.5}, {"lr": 0.5}),
]


@pytest.mark.parametrize("ours, theirs", AUTHORS_CASES, ids=lambda c: str(c))
def test_matches_the_authors_package_in_float64(x64, ours, theirs):
    got, state = run_ours(adamx.prodigy(**ours))
    want, d = run_authors(**theirs)
    assert_close(got, want)
    np.testing.assert_allclose(float(state[0].estim_lr), d, rtol=TOL)
    assert d > 1e-4  # d grew from d_0


def test_matches_the_authors_with_a_warmup_from_zero(x64):
    # A learning rate of 0 makes the authors skip the step and not count it
    # (the bias correction's k); the schedule runs on.
    schedule = adamx.linear_schedule(0.0, 1.0, 10)
    sched = [float(schedule(k)) for k in range(STEPS)]
    tx = adamx.prodigy(schedule, use_bias_correction=True)
    got, _ = run_ours(tx)
    want, _ = run_authors(lambda k: sched[k], use_bias_correction=True)
    assert_close(got, want)


OPTAX_CASES = [
    {},
    {"weight_decay": 0.1},
    {"safeguard_warmup": True},
    {"betas": (0.8, 0.99), "beta3": 0.95, "estim_lr_coef": 0.5},
    {"estim_lr0": 1e-3, "eps": 1e-5, "learning_rate": 0.7},
]


@pytest.mark.parametrize("hyper", OPTAX_CASES, ids=lambda c: str(c))
def test_matches_optax_with_its_bias_correction_in_float64(x64, hyper):
    got, _ = run_ours(adamx.prodigy(**hyper, use_bias_correction=True))
    want = run_optax(optax.contrib.prodigy(**hyper))
    assert_close(got, want)


def test_differs_from_optax_by_the_bias_correction(x64):
    got, _ = run_ours(adamx.prodigy(), steps=5)
    want = run_optax(optax.contrib.prodigy(), steps=5)
    assert np.abs(got[-1]["w"] - want[-1]["w"]).max() > 1e-6


def test_a_zero_gradient_takes_no_step_where_optax_takes_nan():
    tx = adamx.prodigy()
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    u, new = tx.update({"w": jnp.zeros(3)}, state, params)
    np.testing.assert_array_equal(u["w"], 0.0)
    assert int(new[0].steps) == 0 and new[0].estim_lr == np.float32(1e-6)
    theirs = optax.contrib.prodigy()
    u, _ = theirs.update({"w": jnp.zeros(3)}, theirs.init(params), params)
    assert np.isnan(np.asarray(u["w"])).all()


def test_d_is_one_scalar_over_the_tree_so_a_flat_layout_computes_the_same(x64):
    # The same numbers but for the order of d's sums: equal to rounding.
    tree = {"a": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(5)}
    tx = adamx.prodigy(weight_decay=0.01)
    assert adamx.traits_of(tx).elementwise is True

    def g_of(p):
        return jax.tree.map(lambda x: jnp.sin(2 * x) + 0.3, p)

    p, s = tree, tx.init(tree)
    flat = adamx.ravel(tree)
    fs = tx.init(flat)
    for _ in range(15):
        u, s = tx.update(g_of(p), s, p)
        p = adamx.apply_updates(p, u)
        gf = adamx.ravel(g_of(flat.unravel()))
        fu, fs = tx.update(gf, fs, flat)
        flat = adamx.apply_updates(flat, fu)
    for x, y in zip(jax.tree.leaves(flat.unravel()), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fs[0].estim_lr, s[0].estim_lr, rtol=1e-12)
    assert float(s[0].estim_lr) > 0.1


@pytest.mark.parametrize(
    "make",
    [lambda: adamx.prodigy(slice_p=3), lambda: adamx.prodigy(state_bits=8)],
    ids=["slice_p", "8 bits"],
)
def test_slices_and_block_codes_work_leaf_by_leaf(make):
    assert adamx.traits_of(make()).elementwise is False
    with pytest.raises(TypeError, match="leaf by leaf"):
        make().init(adamx.ravel({"w": jnp.ones(3)}))


def test_slice_p_shrinks_the_estimate_state_and_keeps_params0_exact():
    params = {"w": jnp.arange(100.0).reshape(10, 10), "b": jnp.ones(7)}
    state = adamx.prodigy(slice_p=11).init(params)[0]
    assert state.grad_sum["w"].shape == (10,) and state.grad_sum["b"].shape == (1,)
    np.testing.assert_array_equal(state.params0["w"], np.arange(0.0, 100.0, 11))
    big = {"w": jnp.ones((256, 256))}
    eight = adamx.prodigy(state_bits=8).init(big)[0]
    assert adamx.lowbit.is_quantized(eight.mu["w"])
    assert adamx.lowbit.is_quantized(eight.grad_sum["w"])
    assert eight.params0["w"].dtype == jnp.float32


def test_refuses_complex_params():
    with pytest.raises(TypeError, match="real params"):
        adamx.prodigy().init({"z": jnp.ones(3, jnp.complex64)})


def test_inject_hyperparams_is_bitwise_the_plain_optimizer():
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}

    def train(tx):
        p, s = params, tx.init(params)
        for i in range(5):
            g = jax.tree.map(lambda x, i=i: x + i, p)
            u, s = jax.jit(tx.update)(g, s, p)
            p = adamx.apply_updates(p, u)
        return p, s

    kw = {"weight_decay": 0.1, "growth_rate": 1.1}
    plain, _ = train(adamx.prodigy(0.5, **kw))
    injected, state = train(adamx.inject_hyperparams(adamx.prodigy)(0.5, **kw))
    assert_bitwise_equal(plain, injected)
    assert "growth_rate" in state.hyperparams
