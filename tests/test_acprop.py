"""Tests of adamx/acprop.py: ACProp against the authors' code (transcribed in
PyTorch) and against Optax's own object in float64.

adamx centres the variance on the new mean, :math:`|g_t - m_t|^2`, as the paper
and the authors' code do; Optax 0.2.8 centres it on the previous one. Since
:math:`g_t - m_t = \\beta_1 (g_t - m_{t-1})`, adamx's variance is
:math:`\\beta_1^2` times Optax's run with ``eps_root / b1**2``, and from the
second step on adamx's update is Optax's with ``eps / b1``, divided by
:math:`\\beta_1`: an exact map that lets Optax's object check every step.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, batch, loss, make_params
from test_storage import quadratic_run

import adamx

STEPS = 100
F64 = {"rtol": 1e-10, "atol": 1e-12}


def complex_params():
    rng = np.random.default_rng(3)
    params = make_params(jnp.float64)
    params["z"] = jnp.asarray(rng.normal(size=5) + 1j * rng.normal(size=5))
    return params


def complex_loss(params, x):
    z = params["z"]
    return loss(params, x) + jnp.sum(
        jnp.abs(z - jnp.mean(x)) ** 2 + 0.1 * jnp.abs(z) ** 4
    )


HYPER = {
    "defaults": {},
    "b1-b2-eps": {"b1": 0.8, "b2": 0.99, "eps": 1e-8, "eps_root": 1e-10},
}


@pytest.mark.parametrize("hyper", HYPER.values(), ids=HYPER)
def test_every_step_matches_optax_mapped(x64, hyper):
    b1 = hyper.get("b1", 0.9)
    eps, eps_root = hyper.get("eps", 1e-16), hyper.get("eps_root", 1e-16)
    ours = adamx.scale_by_acprop(**hyper)
    mapped = {**hyper, "b1": b1, "eps": eps / b1, "eps_root": eps_root / b1**2}
    theirs = optax.contrib.scale_by_acprop(**mapped)
    first = optax.contrib.scale_by_acprop(**hyper)

    @jax.jit
    def step(params, s_ours, s_theirs, s_first, x):
        grads = jax.tree.map(jnp.conj, jax.grad(complex_loss)(params, x))
        u, s_ours = ours.update(grads, s_ours)
        v, s_theirs = theirs.update(grads, s_theirs)
        w, s_first = first.update(grads, s_first)
        params = adamx.apply_updates(params, jax.tree.map(lambda a: -1e-2 * a, u))
        return params, (u, v, w), s_ours, s_theirs, s_first

    params = complex_params()
    states = ours.init(params), theirs.init(params), first.init(params)
    worst = 0.0
    for i in range(STEPS):
        params, (u, v, w), *states = step(params, *states, batch(i, jnp.float64))
        want = w if i == 0 else jax.tree.map(lambda a: a / b1, v)
        assert_trees_close(u, want, **F64)
        worst = max(
            worst,
            max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(*map(jax.tree.leaves, (u, want)), strict=True)
            ),
        )
    s_ours, s_theirs, _ = states
    assert_trees_close(s_ours.nu, jax.tree.map(lambda s: b1**2 * s, s_theirs.nu), **F64)
    assert_trees_close(s_ours.mu, s_theirs.mu, **F64)
    assert worst < 1e-12
    assert not np.allclose(params["z"], complex_params()["z"])


def test_differs_from_optax_by_the_centring_only(x64):
    # One step from zero: Optax's variance is (1 - b2) g^2, the authors' is
    # (1 - b2) (g - m_1)^2 = (1 - b2) (b1 g)^2.
    g = jnp.array([1.0, -2.0])
    ours = adamx.scale_by_acprop(eps_root=0.0)
    theirs = optax.contrib.scale_by_acprop(eps_root=0.0)
    u, s = ours.update(g, ours.init(g))
    v, t = theirs.update(g, theirs.init(g))
    np.testing.assert_array_equal(u, v)  # the first step: the gradient itself
    np.testing.assert_allclose(s.nu, 0.001 * (0.9 * g) ** 2, rtol=1e-15)
    np.testing.assert_allclose(t.nu, 0.001 * g**2, rtol=1e-15)
    # From the second step on the updates differ by about 1 / b1.
    u2, _ = ours.update(g, s)
    v2, _ = theirs.update(g, t)
    np.testing.assert_allclose(u2 * 0.9, v2, rtol=1e-12)


def authors_step(p, grad, state, lr, betas, eps, weight_decay):
    """ACProp.step of juntang-zhuang/ACProp-Optimizer (optimizers/ACProp.py),
    one tensor, with rectify=False, amsgrad=False, weight_decouple=True,
    fixed_decay=False, momentum_update=False, in PyTorch."""
    torch = pytest.importorskip("torch")
    beta1, beta2 = betas
    if not state:
        state.update(
            step=0, exp_avg=torch.zeros_like(p), exp_avg_var=torch.zeros_like(p)
        )
    p.mul_(1.0 - lr * weight_decay)
    exp_avg, exp_avg_var = state["exp_avg"], state["exp_avg_var"]
    state["step"] += 1
    bias1 = 1 - beta1 ** state["step"]
    bias2_before = 1 - beta2 ** (state["step"] - 1)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    if state["step"] <= 1:
        p.add_(exp_avg / bias1, alpha=-lr)
    else:
        # Their eps goes into the variance (kept) and under the division.
        denom = (exp_avg_var.add_(eps).sqrt() / math.sqrt(bias2_before)).add_(eps)
        p.addcdiv_(grad * bias1, denom, value=-lr / bias1)
    residual = grad - exp_avg
    exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1 - beta2)


@pytest.mark.parametrize(
    "hyper",
    [{}, {"b1": 0.7, "b2": 0.95, "weight_decay": 0.1}],
    ids=["defaults", "b1-b2-weight_decay"],
)
def test_matches_the_authors_code(x64, hyper):
    torch = pytest.importorskip("torch")
    lr, b1, b2 = 1e-2, hyper.get("b1", 0.9), hyper.get("b2", 0.999)
    wd = hyper.get("weight_decay", 0.0)
    params = make_params(jnp.float64)
    ours, _ = _run(adamx.acprop(lr, **hyper), params)
    leaves, treedef = jax.tree.flatten(params)
    theirs = [torch.tensor(np.asarray(v)) for v in leaves]
    states = [{} for _ in leaves]
    grad = jax.jit(jax.grad(loss))
    for i in range(STEPS):
        current = treedef.unflatten([jnp.asarray(t.numpy()) for t in theirs])
        grads = jax.tree.leaves(grad(current, batch(i, jnp.float64)))
        for p, g, state in zip(theirs, grads, states, strict=True):
            g = torch.tensor(np.asarray(g))
            authors_step(p, g, state, lr, (b1, b2), 1e-16, wd)
    theirs = treedef.unflatten([t.numpy() for t in theirs])
    assert_trees_close(ours, theirs, **F64)
    assert not np.allclose(ours["w"], params["w"])


def _run(tx, params, steps=STEPS):
    @jax.jit
    def step(params, state, x):
        grads = jax.grad(loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, jnp.float64))
    return params, state


def test_bfloat16_moments_follow_the_float32_run():
    make = lambda **kw: adamx.acprop(1e-2, weight_decay=0.01, **kw)  # noqa: E731
    ref, ref_loss = quadratic_run(make(), steps=100)
    ours, our_loss = quadratic_run(make(state_bits=16), steps=100)
    dev = np.linalg.norm(ours[-1] - ref[-1]) / np.linalg.norm(ref[-1])
    assert dev < 0.05, dev
    assert np.abs(our_loss / ref_loss - 1).max() < 0.05
    assert ref_loss[-1] < 0.5 * ref_loss[0]
    state = make(state_bits=16).init({"w": jnp.ones((64, 64))})
    assert state[0].mu["w"].dtype == state[0].nu["w"].dtype == jnp.bfloat16
