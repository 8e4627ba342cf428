"""Tests of adamx/polyak.py: Polyak's step (SPS_max), MoMo and MoMo-Adam, which
take the loss as ``update(..., value=loss)``. Each against Optax's twin and
against a NumPy transcription of its reference (the formula of Optax's
documentation for ``polyak_sgd``; the authors' ``momo.Momo`` and
``momo.MomoAdam`` for MoMo), in float64 over 100 steps; then storage, bad
calls, signatures and composition. The optimizer table's shared checks pass
no loss, so these optimizers are not in it: this file covers them."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_bitwise_equal, assert_trees_close

import adamx

STEPS = 100
TOL = 1e-10

# Least squares plus a sine term lifted to be >= 0: a loss whose lower
# bound is 0, with a gradient that depends on the params.
_RNG = np.random.default_rng(1)
X = _RNG.normal(size=(16, 5))
Y = _RNG.normal(size=(16, 3))
START = {"w": 0.5 * _RNG.normal(size=(5, 3)), "b": 0.1 * _RNG.normal(size=(3,))}


def loss(p):
    r = jnp.asarray(X) @ p["w"] + p["b"] - jnp.asarray(Y)
    return jnp.mean(r**2) + 0.1 * jnp.sum(1 + jnp.sin(3 * p["w"]))


def value_and_grad_np(p):
    r = X @ p["w"] + p["b"] - Y
    value = float(np.mean(r**2) + 0.1 * np.sum(1 + np.sin(3 * p["w"])))
    grads = {
        "w": 2 * X.T @ r / r.size + 0.3 * np.cos(3 * p["w"]),
        "b": 2 * r.sum(axis=0) / r.size,
    }
    return value, grads


def run_ours(tx, steps=STEPS):
    """The trajectory of ``tx`` from START in float64, fed the loss."""

    def body(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, value=value)
        p = adamx.apply_updates(p, u)
        return (p, s), p

    @jax.jit
    def go(p):
        return jax.lax.scan(body, (p, tx.init(p)), length=steps)[1]

    out = jax.tree.map(np.asarray, go(jax.tree.map(jnp.asarray, START)))
    return [{k: v[i] for k, v in out.items()} for i in range(steps)]


def assert_close(ours, theirs, tol=TOL):
    worst = max(
        float(np.max(np.abs(a[k] - b[k])))
        for a, b in zip(ours, theirs, strict=True)
        for k in a
    )
    assert worst <= tol, worst
    moved = max(float(np.max(np.abs(ours[-1][k] - START[k]))) for k in START)
    assert moved > 1e-3, moved
    return worst


def dot(a, b):
    return sum(float(np.sum(a[k] * b[k])) for k in a)


# ------------------------------------------------------- transcriptions


def polyak_documented(steps, scaling_at, max_lr=1.0, f_min=0.0, eps=0.0, plus=False):
    """x <- x - s_t min((f - f*) / (|g|^2 + eps), max_lr) g (Optax's docs)."""
    p = {k: v.copy() for k, v in START.items()}
    out = []
    for t in range(steps):
        value, g = value_and_grad_np(p)
        gap = max(value - f_min, 0.0) if plus else value - f_min
        sq = dot(g, g) + eps
        rate = 0.0 if sq <= np.finfo(np.float64).eps else min(gap / sq, max_lr)
        p = {k: p[k] - scaling_at(t) * rate * g[k] for k in p}
        out.append(p)
    return out


def momo_authors(
    steps, lr_at=lambda t: 1.0, weight_decay=0.0, beta=0.9, lb=0.0, use_fstar=False
):
    """``momo.Momo.step`` (fabian-sp/MoMo), its default bias_correction=False."""
    p = {k: v.copy() for k, v in START.items()}
    initial_lb = lb
    d, gw = {}, {}
    out = []
    for k in range(1, steps + 1):
        lr, lmbda = lr_at(k - 1), weight_decay
        value, g = value_and_grad_np(p)
        if k == 1:
            loss_avg = value
        loss_avg = beta * loss_avg + (1 - beta) * value
        rho = 1
        _dot = _gamma = _norm = 0.0
        for n in p:
            if k == 1:
                d[n] = g[n].copy()
                gw[n] = float(np.sum(p[n] * g[n]))
            d[n] = beta * d[n] + (1 - beta) * g[n]
            gw[n] = beta * gw[n] + (1 - beta) * float(np.sum(p[n] * g[n]))
            _dot += float(np.sum(p[n] * d[n]))
            _gamma += gw[n]
            _norm += float(np.sum(d[n] * d[n]))
        c = 1 + lr * lmbda
        if use_fstar:
            cap = c * loss_avg + _dot - c * _gamma
            if cap < c * rho * lb:
                lb = max(cap / (2 * c * rho), initial_lb)
        if lmbda > 0:
            t1 = max(c * (loss_avg - rho * lb) + _dot - c * _gamma, 0.0) / _norm
        else:
            t1 = max(loss_avg - rho * lb + _dot - _gamma, 0.0) / _norm
        tau = min(lr / rho, t1)
        if use_fstar:
            h = loss_avg + _dot - _gamma
            lb = max((h - tau * _norm / 2) / rho, initial_lb)
        for n in p:
            p[n] = p[n] - tau * d[n]
            if lmbda > 0:
                p[n] = p[n] / c
        out.append({n: x.copy() for n, x in p.items()})
    return out


def momo_adam_authors(
    steps,
    lr=1e-2,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    lb=0.0,
    use_fstar=False,
):
    """``momo.MomoAdam.step`` (fabian-sp/MoMo), its default divide=True."""
    p = {k: v.copy() for k, v in START.items()}
    b1, b2 = betas
    initial_lb, lmbda = lb, weight_decay
    d = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    gw = {k: 0.0 for k in p}
    loss_avg = 0.0
    out = []
    for k in range(1, steps + 1):
        value, g = value_and_grad_np(p)
        _dot = _gamma = _norm = 0.0
        bc1, bc2 = 1 - b1**k, 1 - b2**k
        for n in p:
            d[n] = d[n] * b1 + (1 - b1) * g[n]
            v2[n] = v2[n] * b2 + (1 - b2) * g[n] * g[n]
            gw[n] = gw[n] * b1 + (1 - b1) * float(np.sum(p[n] * g[n]))
            big_d = np.sqrt(v2[n] / bc2) + eps
            _dot += float(np.sum(p[n] * d[n]))
            _gamma += gw[n]
            _norm += float(np.sum(d[n] * (d[n] / big_d)))
        loss_avg = (1 - b1) * value + b1 * loss_avg
        c = 1 + lr * lmbda
        if use_fstar:
            cap = c * loss_avg + _dot - c * _gamma
            if cap < c * bc1 * lb:
                lb = max(cap / (2 * c * bc1), initial_lb)
        nom = c * (loss_avg - bc1 * lb) + _dot - c * _gamma
        tau = min(lr / bc1, max(nom, 0.0) / _norm)
        if use_fstar:
            h = loss_avg + _dot - _gamma
            lb = max((h - tau * _norm / 2) / bc1, initial_lb)
        for n in p:
            big_d = np.sqrt(v2[n] / bc2) + eps
            p[n] = p[n] - tau * d[n] / big_d
            if lmbda > 0:
                p[n] = p[n] / c
        out.append({n: x.copy() for n, x in p.items()})
    return out


# --------------------------------------------------------------- Polyak


@pytest.mark.parametrize(
    "kw",
    [{}, {"max_learning_rate": 0.3, "f_min": 0.05, "eps": 1e-3, "variant": "sps+"}],
    ids=["defaults", "options"],
)
def test_polyak_sgd_matches_optax_and_its_formula_in_float64(x64, kw):
    ours = run_ours(adamx.polyak_sgd(**kw))
    assert_close(ours, run_ours(optax.polyak_sgd(**kw)))
    theirs = dict(kw)
    theirs["max_lr"] = theirs.pop("max_learning_rate", 1.0)
    theirs["plus"] = theirs.pop("variant", "sps") == "sps+"
    assert_close(ours, polyak_documented(STEPS, lambda t: 1.0, **theirs))


def test_polyak_sgd_scales_its_step_as_documented_where_optax_does_not(x64):
    # A cap of 2 leaves Polyak's ratio in charge at first, where the two part.
    schedule = adamx.linear_schedule(0.9, 0.3, 50)
    ours = run_ours(adamx.polyak_sgd(scaling=schedule, max_learning_rate=2.0))
    want = polyak_documented(STEPS, lambda t: 0.9 - 0.6 * min(t, 50) / 50, 2.0)
    assert_close(ours, want)
    # Optax measures the norm of the scaled gradient: another trajectory.
    theirs = run_ours(optax.polyak_sgd(scaling=schedule, max_learning_rate=2.0))
    apart = max(
        np.abs(a["w"] - b["w"]).max() for a, b in zip(ours, theirs, strict=True)
    )
    assert apart > 0.1, apart


def test_scale_by_polyak_takes_no_step_without_a_gradient_and_needs_the_loss():
    tx = adamx.scale_by_polyak()
    g = {"w": jnp.zeros(3)}
    u, _ = tx.update(g, tx.init(g), value=1.0)
    assert np.all(np.asarray(u["w"]) == 0)
    with pytest.raises(TypeError, match=r"needs the loss: .*value=loss"):
        tx.update(g, tx.init(g))
    # A gap below 0 steps up the gradient with "sps", not with "sps+".
    g = {"w": jnp.array([1.0, 0.0])}
    assert float(tx.update(g, (), value=-1.0)[0]["w"][0]) == -1.0
    plus = adamx.scale_by_polyak(variant="sps+")
    assert float(plus.update(g, (), value=-1.0)[0]["w"][0]) == 0.0


# ----------------------------------------------------------------- MoMo


def _schedule(t):
    return 1.0 - 0.5 * jnp.minimum(t, 50) / 50


def _schedule_np(t):
    return 1.0 - 0.5 * min(t, 50) / 50


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {
            "learning_rate": _schedule,
            "beta": 0.8,
            "lower_bound": 0.01,
            "adapt_lower_bound": True,
        },
    ],
    ids=["defaults", "schedule-adapted-bound"],
)
def test_momo_matches_optax_without_weight_decay(x64, kw):
    assert_close(run_ours(adamx.momo(**kw)), run_ours(optax.contrib.momo(**kw)))


@pytest.mark.parametrize(
    "kw, theirs",
    [
        ({"weight_decay": 0.1}, {"weight_decay": 0.1}),
        (
            {
                "learning_rate": _schedule,
                "weight_decay": 0.05,
                "lower_bound": 0.01,
                "adapt_lower_bound": True,
            },
            {
                "lr_at": _schedule_np,
                "weight_decay": 0.05,
                "lb": 0.01,
                "use_fstar": True,
            },
        ),
    ],
    ids=["weight-decay", "schedule-adapted-bound"],
)
def test_momo_matches_the_authors_code_in_float64(x64, kw, theirs):
    ours = run_ours(adamx.momo(**kw))
    assert_close(ours, momo_authors(STEPS, **theirs))
    # Optax's weight decay does not divide the momentum step.
    other = run_ours(optax.contrib.momo(**kw))
    assert not np.allclose(ours[-1]["w"], other[-1]["w"], rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {
            "learning_rate": 0.05,
            "b1": 0.8,
            "b2": 0.99,
            "eps": 1e-6,
            "lower_bound": 0.01,
            "adapt_lower_bound": True,
        },
    ],
    ids=["defaults", "options-adapted-bound"],
)
def test_momo_adam_matches_optax_without_weight_decay(x64, kw):
    ours = run_ours(adamx.momo_adam(**kw))
    assert_close(ours, run_ours(optax.contrib.momo_adam(**kw)))


@pytest.mark.parametrize(
    "kw, theirs",
    [
        ({"weight_decay": 0.1}, {"weight_decay": 0.1}),
        (
            {
                "learning_rate": 0.05,
                "b1": 0.8,
                "weight_decay": 0.05,
                "lower_bound": 0.01,
                "adapt_lower_bound": True,
            },
            {
                "lr": 0.05,
                "betas": (0.8, 0.999),
                "weight_decay": 0.05,
                "lb": 0.01,
                "use_fstar": True,
            },
        ),
    ],
    ids=["weight-decay", "options-adapted-bound"],
)
def test_momo_adam_matches_the_authors_code_in_float64(x64, kw, theirs):
    assert_close(run_ours(adamx.momo_adam(**kw)), momo_adam_authors(STEPS, **theirs))


def test_momo_refuses_complex_params_and_needs_params_and_loss():
    for tx in (adamx.momo(), adamx.momo_adam()):
        with pytest.raises(TypeError, match="defined for real params"):
            tx.init({"z": jnp.ones(2, jnp.complex64)})
        g = {"w": jnp.ones(2)}
        with pytest.raises(ValueError, match="needs the current parameters"):
            tx.update(g, tx.init(g), value=1.0)
        with pytest.raises(TypeError, match="needs the loss"):
            tx.update(g, tx.init(g), g)


# ----------------------------------------------------------- signatures


@pytest.mark.parametrize(
    "name, theirs",
    [
        ("polyak_sgd", optax.polyak_sgd),
        ("scale_by_polyak", optax.scale_by_polyak),
        ("momo", optax.contrib.momo),
        ("momo_adam", optax.contrib.momo_adam),
    ],
)
def test_argument_names_order_and_defaults_follow_optax(name, theirs):
    ours = inspect.signature(getattr(adamx, name)).parameters
    for pname, p in inspect.signature(theirs).parameters.items():
        assert list(ours).index(pname) == list(
            inspect.signature(theirs).parameters
        ).index(pname), pname
        assert ours[pname].kind == p.kind and ours[pname].default == p.default


# ---------------------------------------------------------- composition


def test_value_reaches_the_polyak_stage_through_chains_and_wrappers(x64):
    tx = adamx.chain(adamx.clip_by_global_norm(1.0), adamx.polyak_sgd(0.5))
    theirs = optax.chain(optax.clip_by_global_norm(1.0), optax.polyak_sgd(0.5))
    assert_close(run_ours(tx), run_ours(theirs))
    # apply_if_finite and MultiSteps pass it on too.
    for wrapped in (
        adamx.apply_if_finite(adamx.momo(), 3),
        adamx.MultiSteps(adamx.momo(), every_k_schedule=1).gradient_transformation(),
    ):
        assert_close(run_ours(wrapped, 20), run_ours(adamx.momo(), 20))


@pytest.mark.parametrize(
    "factory, kw",
    [
        (adamx.momo, {"learning_rate": 0.5, "lower_bound": 0.01}),
        (adamx.momo_adam, {"learning_rate": 0.05, "b1": 0.8}),
        (adamx.polyak_sgd, {"max_learning_rate": 0.5, "f_min": 0.01}),
        (adamx.momo, {"learning_rate": 0.5, "weight_decay": 0.01}),
    ],
    ids=["momo", "momo_adam", "polyak_sgd", "momo-weight-decay"],
)
def test_injected_hyperparameters_are_the_plain_optimizers(factory, kw):
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), START)
    plain, injected = factory(**kw), adamx.inject_hyperparams(factory)(**kw)
    steps = jax.jit(plain.update), jax.jit(injected.update)
    ps, states = [params, params], [plain.init(params), injected.init(params)]
    for _ in range(10):
        for i in range(2):
            value, g = jax.value_and_grad(loss)(ps[i])
            u, states[i] = steps[i](g, states[i], ps[i], value=value)
            ps[i] = adamx.apply_updates(ps[i], u)
    if "weight_decay" in kw:
        # XLA folds the plain optimizer's constant 1 + lr wd into its step
        # otherwise than the injected one's: the last bit moves.
        assert_trees_close(ps[0], ps[1], rtol=1e-6, atol=1e-7)
    else:
        assert_bitwise_equal(ps[0], ps[1])
    assert (
        "learning_rate" in states[1].hyperparams or "scaling" in states[1].hyperparams
    )
