"""Tests of adamx/sign.py: the sign against Optax's, Signum's accumulator
dtype against Optax, Rprop against ``torch.optim.Rprop`` (its updates) and
Optax (its states) in float64, and Rprop at 8 bits.

signSGD and Signum with their defaults are compared with Optax and a NumPy
transcription by the optimizer table and tests/test_references.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, batch, loss, make_params, run

import adamx

# ------------------------------------------------------------------ the sign


def test_scale_by_sign_is_optaxs_on_zeros_nans_and_complex_numbers():
    g = {
        "r": jnp.array([0.5, -0.0, 0.0, -3.0, jnp.nan, jnp.inf]),
        "c": jnp.array([3 + 4j, 0j, -2j]),
    }
    ours, _ = adamx.scale_by_sign().update(g, adamx.scale_by_sign().init(g))
    theirs, _ = optax.scale_by_sign().update(g, optax.scale_by_sign().init(g))
    for key in g:
        np.testing.assert_array_equal(ours[key], theirs[key])
    np.testing.assert_allclose(ours["c"], [0.6 + 0.8j, 0, -1j], rtol=1e-6)


def test_sign_sgd_with_a_schedule_is_optaxs(x64):
    lr = optax.linear_schedule(0.05, 0.001, 60)
    ours, _ = run(adamx.sign_sgd(lr), make_params(jnp.float64), 100)
    theirs, _ = run(
        optax.sign_sgd(lr), make_params(jnp.float64), 100, optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("accumulator_dtype", [jnp.float32, jnp.bfloat16])
def test_signum_accumulator_dtype_is_optaxs(x64, accumulator_dtype):
    kw = dict(learning_rate=1e-2, beta=0.7, accumulator_dtype=accumulator_dtype)
    ours, state = run(adamx.signum(**kw), make_params(jnp.float64), 100)
    theirs, _ = run(
        optax.signum(**kw), make_params(jnp.float64), 100, optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert state[0].ema["w"].dtype == accumulator_dtype


# ----------------------------------------------------------------- Rprop

RPROP = dict(eta_minus=0.4, eta_plus=1.3, min_step_size=1e-4, max_step_size=0.015)


def torch_loss(torch, p, x):
    """helpers.loss, written in PyTorch."""
    h = torch.tanh(x @ p["w"] + p["b"])
    return (
        torch.mean(h**2)
        + 0.1 * torch.sum(torch.sin(p["k"]))
        + 0.01 * torch.sum(p["w"] ** 4)
    )


def test_rprop_follows_torch_rprop_in_float64(x64):
    torch = pytest.importorskip("torch")
    params = make_params(jnp.float64)
    ours, state = run(adamx.rprop(1e-2, **RPROP), params, 100)

    tp = {
        "w": torch.tensor(np.asarray(params["w"]), requires_grad=True),
        "b": torch.tensor(np.asarray(params["b"]), requires_grad=True),
        "k": torch.tensor(np.asarray(params["nested"]["k"]), requires_grad=True),
    }
    opt = torch.optim.Rprop(
        list(tp.values()),
        lr=1e-2,
        etas=(RPROP["eta_minus"], RPROP["eta_plus"]),
        step_sizes=(RPROP["min_step_size"], RPROP["max_step_size"]),
        foreach=False,
    )
    for i in range(100):
        opt.zero_grad()
        x = torch.tensor(np.asarray(batch(i, jnp.float64)))
        torch_loss(torch, tp, x).backward()
        opt.step()
    theirs = {
        "w": tp["w"].detach().numpy(),
        "b": tp["b"].detach().numpy(),
        "nested": {"k": tp["k"].detach().numpy()},
    }
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # The run reached both step size bounds, so the clipping was compared too.
    sizes = np.concatenate([np.ravel(s) for s in jax.tree.leaves(state[0].step_sizes)])
    assert sizes.min() == RPROP["min_step_size"]
    assert sizes.max() == RPROP["max_step_size"]


def test_rprop_keeps_optaxs_states_and_returns_the_step_optax_returns_next(x64):
    """Fed the same gradients, the states are Optax's; Optax's update at step
    t + 1 is adamx's at step t, masked where the sign flips at t + 1."""
    ours_tx = adamx.scale_by_rprop(0.02, **RPROP)
    theirs_tx = optax.scale_by_rprop(0.02, **RPROP)
    params = make_params(jnp.float64)
    ours, theirs = ours_tx.init(params), theirs_tx.init(params)
    grad = jax.jit(jax.grad(loss))
    ours_update, theirs_update = jax.jit(ours_tx.update), jax.jit(theirs_tx.update)
    previous = jax.tree.map(jnp.zeros_like, params)
    flips = 0
    for i in range(100):
        # Gradients along adamx's trajectory, given to both.
        g = grad(params, batch(i, jnp.float64))
        u, ours = ours_update(g, ours)
        v, theirs = theirs_update(g, theirs)
        assert_trees_close(tuple(ours), tuple(theirs), rtol=1e-13, atol=0.0)
        late = jax.tree.map(
            lambda g, last: jnp.where(g * last < 0, 0.0, last), g, previous
        )
        assert_trees_close(v, late, rtol=0.0, atol=0.0)
        flips += sum(int(jnp.sum(x == 0)) for x in jax.tree.leaves(u))
        params = jax.tree.map(lambda p, d: p - d, params, u)
        previous = u
    assert flips > 0  # the sign flipped somewhere: the masking was exercised


def test_rprop_first_step_moves_by_the_initial_step_size():
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    tx = adamx.rprop(0.1)
    g = {"w": jnp.array([3.0, -1e-6, 0.0])}
    u, state = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["w"], [-0.1, 0.1, 0.0])
    np.testing.assert_array_equal(state[0].step_sizes["w"], np.full(3, 0.1, np.float32))


def test_rprop_zero_gradients_keep_params_and_step_sizes():
    params = {"w": jnp.array([1.0, -2.0])}
    tx = adamx.rprop(0.1)
    state = tx.init(params)
    u, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)
    for _ in range(3):
        u, state = tx.update({"w": jnp.zeros(2)}, state, params)
        np.testing.assert_array_equal(u["w"], [0.0, 0.0])
    np.testing.assert_allclose(state[0].step_sizes["w"], [0.1, 0.1])


def test_rprop_refuses_complex_params_and_a_schedule():
    with pytest.raises(TypeError, match=r"scale_by_rprop is defined for real params"):
        adamx.rprop(0.1).init({"z": jnp.ones(2, jnp.complex64)})
    with pytest.raises(TypeError, match=r"learning_rate must be a real number"):
        adamx.rprop(adamx.linear_schedule(0.1, 0.0, 10))


def quadratic_run(tx, steps):
    """The losses of ``steps`` steps on an ill-conditioned quadratic, with a
    matrix large enough for block codes and a small leaf kept in float32."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(10.0 ** rng.uniform(-1, 1, (64, 128)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(64, 128)), jnp.float32)

    def f(p):
        return 0.5 * jnp.sum(h * (p["w"] - c) ** 2) + 0.5 * jnp.sum((p["b"] - 1) ** 2)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(f)(p), s, p)
        return adamx.apply_updates(p, u), s

    p = {"w": jnp.zeros((64, 128)), "b": jnp.zeros(7)}
    s = tx.init(p)
    losses = []
    for _ in range(steps):
        p, s = step(p, s)
        losses.append(float(f(p)))
    return np.array(losses), s


def test_rprop_at_8_bits_follows_its_float32_run_in_a_quarter_of_the_bytes():
    big = {"w": jnp.zeros((1024, 1024))}
    full = adamx.state_nbytes(adamx.rprop(1e-2).init(big))
    eight = adamx.state_nbytes(adamx.rprop(1e-2, state_bits=8).init(big))
    assert full == 8 * 1024 * 1024
    assert eight <= 0.26 * full, eight / full
    # Within 2.3% at every step down to 1e-4 of the first loss (measured);
    # below, where Rprop's steps shrink to the spacing of the codes, the
    # relative gap grows (30% at 1e-8) while both keep converging.
    ref, _ = quadratic_run(adamx.rprop(1e-2), 32)
    ours, state = quadratic_run(adamx.rprop(1e-2, state_bits=8), 32)
    assert isinstance(state[0].step_sizes["w"], adamx.QuantizedArray)
    assert ref[-1] < 1e-4 * ref[0]
    assert np.abs(ours / ref - 1).max() < 0.05, np.abs(ours / ref - 1).max()
