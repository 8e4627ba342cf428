"""Tests of adamx/parameter_free.py: D-Adapted AdamW against a NumPy
transcription of its authors' code (D-Adaptation's ``dadaptation.DAdaptAdam``)
in float64 over 100 steps, and against Optax where the table's rows do not
reach (COCOB's schedule and mask, Mechanic's options and extra arguments);
then first steps and storage. COCOB's per-coordinate transcription is in
test_references.py; the table (optimizer_table.py) runs the shared checks and
Optax's default twins."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import LSQ_START as START
from helpers import LSQ_STEPS as STEPS
from helpers import LSQ_TOL as TOL
from helpers import assert_lsq_runs_close as assert_close
from helpers import assert_trees_close, batch, make_params
from helpers import lsq_grad_np as grad_np
from helpers import lsq_run as run_ours

import adamx

# ------------------------------------------------------- transcriptions


def dadapt_authors(
    steps,
    lr_at=lambda k: 1.0,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decouple=False,
    use_bias_correction=False,
    d0=1e-6,
    growth_rate=math.inf,
    grad=grad_np,
):
    """``dadaptation.DAdaptAdam.step`` (facebookresearch/dadaptation) in NumPy,
    one param group."""
    p = {k: v.copy() for k, v in START.items()}
    m, v, s = ({k: np.zeros_like(x) for k, x in START.items()} for _ in range(3))
    b1, b2 = betas
    sb2 = b2**0.5
    d, k, numerator_weighted = d0, 0, 0.0
    out = []
    for step in range(steps):
        lr = lr_at(step)
        g = grad(p)
        bc = ((1 - b2 ** (k + 1)) ** 0.5) / (1 - b1 ** (k + 1))
        dlr = d * lr * (bc if use_bias_correction else 1)
        numerator_acum, sk_l1 = 0.0, 0.0
        for n in p:
            gn = g[n] + weight_decay * p[n] if not decouple else g[n]
            if lr > 0:
                denom = np.sqrt(v[n]) + eps
                numerator_acum += dlr * float(
                    np.dot(gn.ravel(), (s[n] / denom).ravel())
                )
                m[n] = m[n] * b1 + gn * (dlr * (1 - b1))
                v[n] = v[n] * b2 + gn * gn * (1 - b2)
                s[n] = s[n] * sb2 + gn * (dlr * (1 - sb2))
                sk_l1 += float(np.abs(s[n]).sum())
        if sk_l1 == 0:
            out.append({n: x.copy() for n, x in p.items()})
            continue
        numerator_weighted = sb2 * numerator_weighted + (1 - sb2) * numerator_acum
        if lr > 0:
            d_hat = numerator_weighted / ((1 - sb2) * sk_l1)
            d = max(d, min(d_hat, d * growth_rate))
        for n in p:
            denom = np.sqrt(v[n]) + eps
            if weight_decay != 0 and decouple:
                p[n] = p[n] - weight_decay * dlr * p[n]
            p[n] = p[n] - m[n] / denom
        k += 1
        out.append({n: x.copy() for n, x in p.items()})
    return out, d


# --------------------------------------------------------------- COCOB


def test_cocob_matches_optax_with_a_schedule_and_mask(x64):
    # One schedule for both: Optax's rounds its values to float32.
    kw = dict(
        learning_rate=adamx.linear_schedule(1.0, 0.1, 50),
        alpha=20.0,
        eps=1e-6,
        weight_decay=0.01,
        mask={"w": True, "b": False},
    )
    assert_close(run_ours(adamx.cocob(**kw)), run_ours(optax.contrib.cocob(**kw)))


def test_cocob_steps_by_the_change_of_its_bet():
    """A step that a mask leaves out is not taken back at the next step, as it
    would be by a step to w_1 + bet - w_t (Optax's)."""
    params = {"w": jnp.zeros(2)}
    tx = adamx.scale_by_cocob(alpha=4.0, eps=1.0)
    g = {"w": jnp.array([2.0, 2.0])}
    u1, state = tx.update(g, tx.init(params), params)
    u2, _ = tx.update(g, state, params)  # the first step was not applied
    # Bets: -2 / (2 max(4, 8)) 2 = -0.25, then -4 / (2 max(6, 8)) (2 + 0.5).
    np.testing.assert_allclose(u1["w"], -0.25)
    np.testing.assert_allclose(u2["w"], -0.625 + 0.25)


def test_cocob_keeps_half_precision_sums_in_float32():
    # eps = 1e-8 is 0 in float16: a zero gradient would divide 0 by 0.
    params = {"w": jnp.ones(4, jnp.float16)}
    tx = adamx.cocob()
    u, state = tx.update({"w": jnp.zeros(4, jnp.float16)}, tx.init(params), params)
    assert u["w"].dtype == jnp.float16 and np.all(np.asarray(u["w"]) == 0)
    assert state[2].scale["w"].dtype == jnp.float32


# --------------------------------------------------------- D-Adaptation


def _warmup(k):
    return 0.3 * jnp.minimum(k, 10) / 10  # from 0: the first step has a rate of 0


def _warmup_np(k):
    return 0.3 * min(k, 10) / 10


DADAPT_CASES = [
    ({}, {"decouple": True}),
    (
        {
            "learning_rate": 0.5,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "estim_lr0": 1e-3,
            "weight_decay": 0.1,
            "decouple": False,
        },
        {
            "lr_at": lambda k: 0.5,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "d0": 1e-3,
            "weight_decay": 0.1,
        },
    ),
    (
        {"use_bias_correction": True, "growth_rate": 1.05},
        {"use_bias_correction": True, "growth_rate": 1.05, "decouple": True},
    ),
    (
        {"learning_rate": _warmup, "use_bias_correction": True, "weight_decay": 0.1},
        {
            "lr_at": _warmup_np,
            "use_bias_correction": True,
            "weight_decay": 0.1,
            "decouple": True,
        },
    ),
]


@pytest.mark.parametrize(
    "ours, theirs",
    DADAPT_CASES,
    ids=["defaults", "l2-betas-eps-d0", "bias-growth", "warmup-from-0"],
)
def test_dadapt_adamw_matches_the_authors_code_in_float64(x64, ours, theirs):
    # At the defaults (a rate of 1 without bias correction) d overshoots and
    # the params swing, which amplifies the last bits: 1.4e-10 measured.
    tol = 1e-9 if not ours else TOL
    assert_close(
        run_ours(adamx.dadapt_adamw(**ours)),
        dadapt_authors(STEPS, **theirs)[0],
        tol,
    )


def test_dadapt_adamw_warms_up_from_zero_where_optax_takes_nan(x64):
    ours = run_ours(adamx.dadapt_adamw(_warmup), steps=20)
    assert np.isfinite(ours[-1]["w"]).all()
    assert np.array_equal(ours[0]["w"], START["w"])  # no step at rate 0
    theirs = run_ours(optax.contrib.dadapt_adamw(_warmup), steps=20)
    assert np.isnan(theirs[-1]["w"]).all()


def _quadratic(tx, steps=100):
    rng = np.random.default_rng(0)
    shape = (128, 96)  # quantized at 8 and 4 bits
    h = jnp.asarray(10.0 ** rng.uniform(-0.3, 0.3, shape), jnp.float32)
    c = jnp.asarray(rng.normal(size=shape), jnp.float32)

    def f(p):
        return 0.5 * jnp.sum(h * (p["x"] - c) ** 2) + jnp.sum((p["b"] - 1) ** 2)

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(f)(p), s, p)
        p = adamx.apply_updates(p, u)
        return (p, s), (f(p), s[0].estim_lr)

    p = {"x": jnp.zeros(shape), "b": jnp.zeros(8)}
    out = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), length=steps)[1])(p)
    return tuple(np.asarray(x) for x in out)


def test_dadapt_adamw_state_bits_store_its_moments_and_follow_float32():
    params = {"w": jnp.zeros((64, 128)), "b": jnp.zeros(8)}
    for bits in (16, 8, 4):
        state = adamx.dadapt_adamw(state_bits=bits).init(params)[0]
        for field in ("exp_avg", "exp_avg_sq", "grad_sum"):
            w, b = getattr(state, field)["w"], getattr(state, field)["b"]
            if bits == 16:
                assert w.dtype == b.dtype == jnp.bfloat16
            else:
                assert isinstance(w, adamx.QuantizedArray) and w.bits == bits
                assert b.dtype == jnp.float32  # small leaves keep float32
    full = adamx.state_nbytes(adamx.dadapt_adamw().init(params))
    assert (
        adamx.state_nbytes(adamx.dadapt_adamw(state_bits=8).init(params)) < 0.3 * full
    )
    # At its defaults D-Adaptation overshoots this quadratic (d reaches 2.35,
    # the loss climbs 2.5x before it falls): 8 bits take the same course, d
    # within 5% (measured 4.9%), the final loss within 20% (measured 17%).
    ref, d_ref = _quadratic(adamx.dadapt_adamw())
    eight, d_eight = _quadratic(adamx.dadapt_adamw(state_bits=8))
    assert ref[-1] < 1e-3 * ref[0]
    assert abs(d_eight[-1] / d_ref[-1] - 1) < 0.06, (d_eight[-1], d_ref[-1])
    assert abs(eight[-1] / ref[-1] - 1) < 0.2, (eight[-1], ref[-1])


# ------------------------------------------------------------- Mechanic


def test_mechanize_matches_optax_with_its_options_in_float64(x64):
    kw = dict(weight_decay=0.0, eps=1e-6, s_init=1e-4, num_betas=3)
    ours = adamx.mechanize(adamx.sgd(1.0, momentum=0.9), **kw)
    theirs = optax.contrib.mechanize(optax.sgd(1.0, momentum=0.9), **kw)
    assert_close(run_ours(ours), run_ours(theirs))


def test_mechanize_passes_extra_arguments_to_its_base_and_takes_x0_late(x64):
    """A loss-aware base (Polyak's step), with init given zeros: x_0 is still
    the params of the first update, as in Optax."""
    params = make_params(jnp.float64)
    zeros = jax.tree.map(jnp.zeros_like, params)

    def trajectory(tx, apply):
        def step(p, s, x):
            value, g = jax.value_and_grad(
                lambda q: jnp.sum(q["w"] ** 2) + jnp.sum(jnp.tanh(x @ q["w"]))
            )(p)
            u, s = tx.update(g, s, p, value=value)
            return apply(p, u), s

        step = jax.jit(step)
        p, s = params, tx.init(zeros)
        for i in range(30):
            p, s = step(p, s, batch(i, jnp.float64))
        return p

    ours = trajectory(adamx.mechanize(adamx.polyak_sgd(0.1)), adamx.apply_updates)
    theirs = trajectory(
        optax.contrib.mechanize(optax.polyak_sgd(0.1)), optax.apply_updates
    )
    assert_trees_close(ours, theirs, rtol=TOL, atol=TOL)
    assert not np.allclose(ours["w"], params["w"])


def test_mechanize_refuses_complex_params_and_no_params():
    tx = adamx.mechanize(adamx.sgd(0.1))
    with pytest.raises(TypeError, match="mechanize is defined for real params"):
        tx.init({"z": jnp.ones(2, jnp.complex64)})
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
