"""Tests of adamx/frontier.py against the authors' PyTorch code and its ports.

ADOPT, LaProp, MARS and StableAdamW are also compared with NumPy
transcriptions in ``test_references.py``; here each runs against the PyTorch
package its reference lives in, in float64, over 100 steps of the same
problem, and the parts of each formula that the shared problem does not reach
(StableAdamW's clipping, MARS' routing of other shapes) get problems of their
own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_references import (
    F64_TOL,
    SIN_WEIGHT,
    X,
    Y,
    assert_trajectories_close,
    initial_params,
    run_adamx,
)

import adamx

NUM_STEPS = 100


def run_torch(make_optimizer, num_steps=NUM_STEPS, grad_scale=None):
    """The shared problem in float64 torch; ``grad_scale(step)`` multiplies
    the gradient of that step (a spike), default 1."""
    torch = pytest.importorskip("torch")
    params = {
        key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
        for key, value in initial_params().items()
    }
    x = torch.tensor(X, dtype=torch.float64)
    y = torch.tensor(Y, dtype=torch.float64)
    optimizer = make_optimizer(list(params.values()))
    trajectory = {key: [] for key in params}
    for step in range(num_steps):
        optimizer.zero_grad()
        residual = x @ params["w"] + params["b"] - y
        loss = (residual**2).sum() / x.shape[0] + SIN_WEIGHT * torch.sin(
            params["w"]
        ).sum()
        if grad_scale is not None:
            loss = loss * grad_scale(step)
        loss.backward()
        optimizer.step()
        for key, value in params.items():
            trajectory[key].append(value.detach().numpy().copy())
    return {key: np.stack(values) for key, values in trajectory.items()}


def run_scaled(tx, grad_scale, num_steps=NUM_STEPS):
    """``run_adamx`` in float64 with the gradient of step i times
    ``grad_scale(i)``."""
    from test_references import loss_jax

    x, y = jnp.asarray(X), jnp.asarray(Y)
    params = jax.tree.map(jnp.asarray, initial_params())
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, c: tx.update(
            jax.tree.map(lambda g: g * c, jax.grad(loss_jax)(p, x, y)), s, p
        )
    )
    trajectory = {key: [] for key in params}
    for i in range(num_steps):
        updates, state = step(params, state, grad_scale(i))
        params = adamx.apply_updates(params, updates)
        for key, value in params.items():
            trajectory[key].append(np.asarray(value))
    return {key: np.stack(values) for key, values in trajectory.items()}


# ------------------------------------------------------------------ LaProp


@pytest.mark.parametrize(
    "hyper",
    [{}, {"b1": 0.8, "b2": 0.95, "weight_decay": 0.1}],
    ids=["defaults", "decay"],
)
def test_laprop_matches_pytorch_optimizer_laprop(x64, hyper):
    """pytorch-optimizer's LaProp adds eps to sqrt(v) before the bias
    correction (the authors add it after): equal at the default eps of 1e-15.
    Its decoupled weight decay of the stepped params, scaled by the rate, is
    adamx's."""
    po = pytest.importorskip("pytorch_optimizer")
    lr = 1e-2
    b1, b2 = hyper.get("b1", 0.9), hyper.get("b2", 0.999)
    want = run_torch(
        lambda p: po.LaProp(
            p,
            lr=lr,
            betas=(b1, b2),
            weight_decay=hyper.get("weight_decay", 0.0),
            foreach=False,
        )
    )
    got = run_adamx(adamx.laprop(lr, **hyper), jnp.float64)
    assert_trajectories_close(got, want, F64_TOL, F64_TOL)


def test_laprop_weighs_its_momentum_by_the_learning_rate():
    # Five steps at rate 1 along +1, then one at rate 1e-3 along -1: the
    # momentum gathered at the large rate outweighs the new gradient 1000-fold,
    # so the step still goes along +1 (Adam's momentum would weigh it 1:9).
    lr = adamx.piecewise_constant_schedule(1.0, {5: 1e-3})
    tx = adamx.laprop(lr, b1=0.9)
    params = jnp.zeros(1)
    state = tx.init(params)
    steps = []
    for g in [1.0] * 5 + [-1.0]:
        u, state = tx.update(jnp.full(1, g), state, params)
        steps.append(float(u[0]))
    # Every gradient normalizes to +-1 (v is the debiased EMA of ones: 1).
    average_5 = 1 - 0.9**5
    momentum_6 = 0.9 * average_5 - 0.1 * 1e-3
    average_6 = 0.9 * average_5 + 0.1 * 1e-3
    np.testing.assert_allclose(steps[:5], -1.0, rtol=1e-5)
    np.testing.assert_allclose(steps[5], -1e-3 * momentum_6 / average_6, rtol=1e-5)


# -------------------------------------------------------------------- MARS


@pytest.mark.parametrize(
    "hyper",
    [{}, {"gamma": 0.1, "weight_decay": 0.1, "adam_b1": 0.8}],
    ids=["defaults", "options"],
)
def test_mars_matches_pytorch_optimizer_mars(x64, hyper):
    """pytorch-optimizer's MARS ports the authors' code; on the shared tree
    (a matrix and a vector) their routing agrees. The port adds eps to sqrt(v)
    before the bias correction (the authors, and adamx, after it): with eps = 0
    the two are the same formula."""
    po = pytest.importorskip("pytorch_optimizer")
    lr = 1e-2
    want = run_torch(
        lambda p: po.MARS(
            p,
            lr=lr,
            eps=0.0,
            gamma=hyper.get("gamma", 0.025),
            weight_decay=hyper.get("weight_decay", 0.0),
            lr_1d=lr,
            betas_1d=(hyper.get("adam_b1", 0.9), 0.95),
            foreach=False,
        )
    )
    got = run_adamx(adamx.mars(lr, eps=0.0, **hyper), jnp.float64)
    assert_trajectories_close(got, want, F64_TOL, F64_TOL)


def test_mars_gives_matrices_to_mars_and_other_shapes_to_adamw():
    params = {
        "matrix": jnp.ones((3, 4)),
        "vector": jnp.ones(4),
        "kernel": jnp.ones((2, 2, 3)),
    }
    grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    tx = adamx.mars(0.1, gamma=0.5, adam_weight_decay=0.0)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
    # A constant gradient: AdamW steps by the rate; MARS's correction is zero
    # after the first step, whose gradient it magnified and normalized.
    np.testing.assert_allclose(updates["vector"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(updates["kernel"], -0.1, rtol=1e-5)
    assert not np.allclose(updates["matrix"], -0.1, rtol=1e-3)
    everything = adamx.mars(0.1, gamma=0.5, optimize_1d=True)
    state = everything.init(params)
    for _ in range(2):
        updates, state = everything.update(grads, state, params)
    for leaf in updates.values():
        assert not np.allclose(leaf, -0.1, rtol=1e-3)


def test_mars_clips_the_corrected_gradient_to_norm_one():
    # One leaf, first step: c = g (1 + gamma b1 / (1 - b1)), of norm > 1,
    # divided by its norm: then Adam's first step is the sign anyway, so look
    # at the state: the second moment holds (1 - b2) c^2 with |c| = 1.
    g = jnp.asarray([[3.0, 4.0]])
    tx = adamx.scale_by_mars()
    _, state = tx.update(g, tx.init(g))
    nu = state[1].nu
    np.testing.assert_allclose(nu, (1 - 0.99) * (g / 5.0) ** 2, rtol=1e-6)
    np.testing.assert_allclose(state[0].last_grad, g)


# ------------------------------------------------------------- StableAdamW


def _spike(step):
    return 300.0 if step in (40, 41) else 1.0


@pytest.mark.parametrize("grad_scale", [None, _spike], ids=["plain", "spike"])
@pytest.mark.parametrize(
    "hyper", [{}, {"b1": 0.8, "weight_decay": 0.1}], ids=["defaults", "options"]
)
def test_stable_adamw_matches_torch_optimi(x64, hyper, grad_scale):
    """The spike (the loss times 300 for two steps) drives the update's RMS
    far above 1, so the clipping is compared too."""
    optimi = pytest.importorskip("optimi")
    lr = 1e-2
    want = run_torch(
        lambda p: optimi.StableAdamW(
            p,
            lr=lr,
            betas=(hyper.get("b1", 0.9), 0.99),
            weight_decay=hyper.get("weight_decay", 1e-2),
            foreach=False,
        ),
        grad_scale=grad_scale,
    )
    tx = adamx.stable_adamw(lr, **hyper)
    if grad_scale is None:
        got = run_adamx(tx, jnp.float64)
    else:
        got = run_scaled(tx, grad_scale)
    assert_trajectories_close(got, want, F64_TOL, F64_TOL)


def test_stable_adamw_clips_a_spike_and_adamw_does_not():
    # After 20 steps of gradients ~1, one 1000x larger: AdamW's step stays near
    # the rate (Adam normalizes), StableAdamW's shrinks by the RMS of g/sqrt(v).
    params = jnp.zeros(64)
    grads = jnp.asarray(np.random.default_rng(0).normal(size=64))
    ours = adamx.stable_adamw(1.0, weight_decay=0.0)
    theirs = adamx.adamw(1.0, b2=0.99, eps=1e-6, weight_decay=0.0)
    s1, s2 = ours.init(params), theirs.init(params)
    for _ in range(20):
        _, s1 = ours.update(grads, s1, params)
        _, s2 = theirs.update(grads, s2, params)
    spike = 1000 * grads
    u1, _ = ours.update(spike, s1, params)
    u2, _ = theirs.update(spike, s2, params)
    v = 0.99 * (1 - 0.99**20) * grads**2 + 0.01 * spike**2
    v_hat = v / (1 - 0.99**21)
    rho = float(jnp.sqrt(jnp.mean(spike**2 / v_hat)))
    assert rho > 2
    np.testing.assert_allclose(
        jnp.linalg.norm(u1) * rho, jnp.linalg.norm(u2), rtol=1e-4
    )


def test_scale_by_stable_adam_needs_params_only_to_decay():
    g = jnp.ones(3)
    plain = adamx.scale_by_stable_adam()
    plain.update(g, plain.init(g))
    decaying = adamx.scale_by_stable_adam(weight_decay=0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        decaying.update(g, decaying.init(g))


def test_stable_adamw_weight_decay_mask():
    params = {"w": jnp.ones(3), "b": jnp.ones(3)}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = adamx.stable_adamw(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["b"], 0.0)
