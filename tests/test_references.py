"""Every optimizer against an independent NumPy transcription of its paper.

The references below are written from the papers' pseudo-code, with the
conventions the Optax documentation states where a paper leaves a choice open
(where ``eps`` sits, whether weight decay is scaled by the learning rate). They
share no code with adamx, so a mistake would have to be made twice to pass.

Each case runs ``NUM_STEPS`` steps on a small regression problem whose gradient
depends on the parameters, and compares the whole trajectory, so an error in
bias correction or in a state update shows up at the step where it starts.
"""

import functools
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import OPTIMIZER_MODULES

import adamx

NUM_STEPS = 100
F64_TOL = 1e-10
# adamx, like Optax, computes Adafactor's beta2_t = 1 - t^-decay_rate in float32
# even for float64 parameters, which caps the agreement at about 1e-9 here.
F64_TOL_BY_NAME = {"adafactor": 1e-8}
# float32 runs are compared with the float64 reference, so this bounds the
# drift, not the last bit. The parameters are O(1), so the absolute part is
# 1e-4 of their scale; Adam-like steps normalise small gradients, whose float32
# rounding (they are differences of O(1) terms) is thereby amplified.
F32_RTOL = 1e-4
F32_ATOL = 1e-4

# ---------------------------------------------------------------------------
# The problem: least squares with a sine term, so the Hessian changes along
# the trajectory and a wrong step size cannot hide behind a fixed curvature.

_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(8, 5))
Y = _RNG.normal(size=(8, 3))
W0 = 0.5 * _RNG.normal(size=(5, 3))
# A zero bias makes LAMB's first step take its zero-norm branch.
B0 = np.zeros(3)
SIN_WEIGHT = 0.1


def initial_params():
    return {"w": W0.copy(), "b": B0.copy()}


def loss_jax(params, x, y):
    residual = x @ params["w"] + params["b"] - y
    return jnp.sum(residual**2) / x.shape[0] + SIN_WEIGHT * jnp.sum(
        jnp.sin(params["w"])
    )


def grad_numpy(params):
    residual = X @ params["w"] + params["b"] - Y
    return {
        "w": 2.0 * X.T @ residual / X.shape[0] + SIN_WEIGHT * np.cos(params["w"]),
        "b": 2.0 * residual.sum(axis=0) / X.shape[0],
    }


# ---------------------------------------------------------------------------
# References. Each acts on one leaf: ``step(p, g, state, t, lr, **hyper)``
# returns the new parameter, keeps its moments in the dict ``state`` (empty at
# t = 1, so a missing moment reads as its initial value) and counts t from 1.


def _rms(x):
    return np.sqrt(np.mean(x**2))


def _nesterov_mhat(m, g, b1, t):
    # Dozat (2016) as Optax writes it: the look-ahead momentum is debiased for
    # step t + 1, the fresh gradient for step t.
    return b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)


def adam_ref(
    p,
    g,
    s,
    t,
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    nesterov=False,
    weight_decay=0.0,
):
    """Kingma & Ba (2014), Algorithm 1; decoupled decay of Loshchilov & Hutter.

    As in PyTorch and Optax, the decay is multiplied by the learning rate.
    """
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
    mhat = _nesterov_mhat(m, g, b1, t) if nesterov else m / (1 - b1**t)
    vhat = v / (1 - b2**t)
    direction = mhat / (np.sqrt(vhat + eps_root) + eps) + weight_decay * p
    return p - lr * direction


def amsgrad_ref(
    p,
    g,
    s,
    t,
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    bias_correction_mu=True,
    bias_correction_nu=True,
):
    """Reddi et al. (2018), Algorithm 2 (AMSGrad).

    The paper uses raw moments; Optax by default takes the running maximum of
    the bias-corrected second moment and debiases the first. Both switches off
    give the paper's algorithm.
    """
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
    mhat = m / (1 - b1**t) if bias_correction_mu else m
    vhat = v / (1 - b2**t) if bias_correction_nu else v
    vmax = s["vmax"] = np.maximum(s.get("vmax", 0.0), vhat)
    return p - lr * mhat / (np.sqrt(vmax + eps_root) + eps)


def adamax_ref(p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Kingma & Ba (2014), section 7.1, with ``eps`` inside the max as Optax has it."""
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    u = s["u"] = np.maximum(b2 * s.get("u", 0.0), np.abs(g) + eps)
    return p - lr * (m / (1 - b1**t) / u + weight_decay * p)


def radam_ref(
    p,
    g,
    s,
    t,
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    threshold=5.0,
    nesterov=False,
):
    """Liu et al. (2019), Algorithm 2 (RAdam).

    The paper rectifies when rho_t > 4; Optax (and so adamx) when
    rho_t >= ``threshold``, 5 by default, and otherwise takes the momentum step.
    """
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
    mhat = _nesterov_mhat(m, g, b1, t) if nesterov else m / (1 - b1**t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho_t < threshold:
        return p - lr * mhat
    r = np.sqrt(
        (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    )
    vhat = v / (1 - b2**t)
    return p - lr * r * mhat / (np.sqrt(vhat + eps_root) + eps)


def adabelief_ref(
    p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False
):
    """Zhuang et al. (2020), Algorithm 2; ``eps_root`` is the paper's in-EMA eps."""
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    belief = s["s"] = b2 * s.get("s", 0.0) + (1 - b2) * (g - m) ** 2 + eps_root
    mhat = _nesterov_mhat(m, g, b1, t) if nesterov else m / (1 - b1**t)
    shat = belief / (1 - b2**t)
    return p - lr * mhat / (np.sqrt(shat) + eps)


def acprop_ref(
    p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, weight_decay=0.0
):
    """Zhuang et al. (2021), Algorithm 2: g_t over the RMS of the previous
    steps' g - m (centred on the new mean); the first step is g_1 itself."""
    shat = s["s"] / (1 - b2 ** (t - 1)) if t > 1 else 1.0
    step = g / (np.sqrt(shat) + eps)
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["s"] = b2 * s.get("s", 0.0) + (1 - b2) * (g - m) ** 2 + eps_root
    return p - lr * (step + weight_decay * p)


def lamb_ref(
    p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.0
):
    """You et al. (2019), Algorithm 2, with a trust ratio per parameter array.

    The ratio is 1 where either norm is 0, so zero-initialised arrays still move.
    """
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
    mhat = m / (1 - b1**t)
    vhat = v / (1 - b2**t)
    r = mhat / (np.sqrt(vhat + eps_root) + eps) + weight_decay * p
    p_norm, r_norm = np.linalg.norm(p), np.linalg.norm(r)
    ratio = 1.0 if p_norm == 0 or r_norm == 0 else p_norm / r_norm
    return p - lr * ratio * r


def adopt_ref(
    p, g, s, t, lr, b1=0.9, b2=0.9999, eps=1e-6, use_clipping=True, nesterov=False
):
    """Taniguchi et al. (2024), as the authors' code (iShohei220/adopt) runs it.

    The first step only measures v; later ones divide by the previous v,
    clip at (t - 1)^(1/4) and move by the first moment. The Nesterov form is
    Optax's addition.
    """
    if t == 1:
        s["v"] = g * g
        return p
    normed = g / np.maximum(np.sqrt(s["v"]), eps)
    if use_clipping:
        normed = np.clip(normed, -((t - 1) ** 0.25), (t - 1) ** 0.25)
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * normed
    s["v"] = b2 * s["v"] + (1 - b2) * g * g
    return p - lr * (b1 * m + (1 - b1) * normed if nesterov else m)


def laprop_ref(
    p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-15, weight_decay=0.0, mask=None
):
    """Ziyin et al. (2020), as the authors' code (Z-T-WANG/LaProp-Optimizer)
    runs it: the momentum weighs each normalized gradient by its learning rate
    and is debiased by the same average of the rates. The decay of the stepped
    params is scaled by the rate, as pytorch-optimizer's port has it."""
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    lr_avg = s["lr_avg"] = b1 * s.get("lr_avg", 0.0) + (1 - b1) * lr
    denom = np.sqrt(v / (1 - b2**t)) + eps
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * lr * (g / denom)
    p = p - (lr / lr_avg) * m
    return p * (1 - lr * weight_decay)


def mars_ref(
    p,
    g,
    s,
    t,
    lr,
    b1=0.95,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.0,
    gamma=0.025,
    optimize_1d=False,
    adam_b1=0.9,
    adam_b2=0.95,
    adam_weight_decay=0.1,
):
    """Yuan et al. (2024), MARS-AdamW as the authors' code (AGI-Arena/MARS,
    is_approx=True) runs it: matrices take the variance-reduced gradient,
    clipped to norm 1, into Adam; other leaves take AdamW with their own betas.
    """
    m, v = s.get("m", 0.0), s.get("v", 0.0)
    if optimize_1d or p.ndim == 2:
        c = (g - s.get("last", 0.0)) * (gamma * (b1 / (1 - b1))) + g
        norm = np.linalg.norm(c)
        if norm > 1:
            c = c / norm
        s["last"] = g
        wd = weight_decay
    else:
        c, b1, b2, wd = g, adam_b1, adam_b2, adam_weight_decay
    m = s["m"] = b1 * m + (1 - b1) * c
    v = s["v"] = b2 * v + (1 - b2) * c * c
    denom = (np.sqrt(v) / np.sqrt(1 - b2**t) + eps) * (1 - b1**t)
    return p - lr * (wd * p + m / denom)


def stable_adamw_ref(
    p, g, s, t, lr, b1=0.9, b2=0.99, eps=1e-6, weight_decay=1e-2, mask=None
):
    """Wortsman et al. (2023), as torch-optimi's StableAdamW: Adam's debiased
    moments, the rate divided by the leaf's RMS of g / sqrt(v) where above 1."""
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    rms = np.sqrt(np.mean(g * g / np.maximum(v_hat, eps**2)))
    rate = lr / max(1.0, rms)
    return p - rate * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p)


def lion_ref(p, g, s, t, lr, b1=0.9, b2=0.99, weight_decay=1e-3):
    """Chen et al. (2023), Algorithm 2; the decay is multiplied by the learning rate."""
    m = s.get("m", 0.0)
    update = np.sign(b1 * m + (1 - b1) * g) + weight_decay * p
    s["m"] = b2 * m + (1 - b2) * g
    return p - lr * update


def sgd_ref(p, g, s, t, lr, momentum=None, nesterov=False):
    """Sutskever et al. (2013), in the form PyTorch and Optax use.

    Heavy ball ``m = g + mu m``; Nesterov steps along ``g + mu m`` with the new m.
    """
    if momentum is None:
        return p - lr * g
    m = s["m"] = g + momentum * s.get("m", 0.0)
    return p - lr * (g + momentum * m if nesterov else m)


def lars_ref(
    p,
    g,
    s,
    t,
    lr,
    weight_decay=0.0,
    trust_coefficient=0.001,
    eps=0.0,
    momentum=0.9,
    nesterov=False,
):
    """You et al. (2017), Algorithm 1, in Optax's form: the trust ratio of the
    decayed gradient (norm of g + wd p, not |g| + wd |p|), 1 where a norm is
    0, and momentum over the lr-scaled steps."""
    d = g + weight_decay * p
    p_norm, d_norm = np.linalg.norm(p), np.linalg.norm(d)
    ratio = (
        1.0
        if p_norm == 0 or d_norm == 0
        else trust_coefficient * p_norm / (d_norm + eps)
    )
    step = lr * ratio * d
    m = s["m"] = step + momentum * s.get("m", 0.0)
    return p - (step + momentum * m if nesterov else m)


def fromage_ref(p, g, s, t, lr, min_norm=1e-6):
    """Bernstein et al. (2020), Algorithm 1, as the authors' code
    (jxbz/fromage) runs it, with Optax's floor on both norms."""
    p_norm = max(np.linalg.norm(p), min_norm)
    g_norm = max(np.linalg.norm(g), min_norm)
    ratio = 1.0 if p_norm == 0 or g_norm == 0 else p_norm / g_norm
    return (p - lr * ratio * g) / np.sqrt(1 + lr**2)


def rmsprop_ref(
    p,
    g,
    s,
    t,
    lr,
    decay=0.9,
    eps=1e-8,
    initial_scale=0.0,
    eps_in_sqrt=True,
    centered=False,
    momentum=None,
    nesterov=False,
    bias_correction=False,
):
    """Tieleman & Hinton (2012), lecture 6.5; centred form of Graves (2013).

    Optax (and so adamx) applies momentum to the already lr-scaled step, unlike
    PyTorch, which scales the momentum buffer; the two agree for a constant lr.
    """
    nu = s["nu"] = decay * s.get("nu", initial_scale) + (1 - decay) * g**2
    mu = s["mu"] = decay * s.get("mu", 0.0) + (1 - decay) * g
    correction = 1 - decay**t if bias_correction else 1.0
    variance = nu / correction
    if centered:
        variance = variance - (mu / correction) ** 2
    if eps_in_sqrt:
        step = lr * g / np.sqrt(variance + eps)
    else:
        step = lr * g / (np.sqrt(variance) + eps)
    if momentum is None:
        return p - step
    buf = s["buf"] = step + momentum * s.get("buf", 0.0)
    return p - (step + momentum * buf if nesterov else buf)


def adafactor_ref(
    p,
    g,
    s,
    t,
    lr,
    min_dim_size_to_factor=128,
    decay_rate=0.8,
    decay_offset=0,
    multiply_by_parameter_scale=True,
    clipping_threshold=1.0,
    momentum=None,
    dtype_momentum=None,  # storage precision only
    weight_decay_rate=None,
    eps=1e-30,
    factored=True,
):
    """Shazeer & Stern (2018), Algorithms 4 and 5, with beta2_t = 1 - t^-decay_rate.

    The step is ``lr * max(1e-3, RMS(p))`` (the paper's relative step with a
    given ``lr``); momentum is an undebiased EMA of steps; the decay, as in
    Optax, is added after the learning rate, so it is not multiplied by it.
    """
    del dtype_momentum
    beta2 = 1.0 - (t - decay_offset) ** (-decay_rate)
    g2 = g**2 + eps
    if factored and p.ndim == 2 and min(p.shape) >= min_dim_size_to_factor:
        row = s["row"] = beta2 * s.get("row", 0.0) + (1 - beta2) * g2.sum(axis=1)
        col = s["col"] = beta2 * s.get("col", 0.0) + (1 - beta2) * g2.sum(axis=0)
        v = np.outer(row, col) / row.sum()
    else:
        v = s["v"] = beta2 * s.get("v", 0.0) + (1 - beta2) * g2
    u = g / np.sqrt(v)
    if clipping_threshold is not None:
        u = u / max(1.0, _rms(u) / clipping_threshold)
    u = lr * u
    if multiply_by_parameter_scale:
        u = u * max(1e-3, _rms(p))
    if momentum is not None:
        u = s["m"] = momentum * s.get("m", 0.0) + (1 - momentum) * u
    if weight_decay_rate is not None:
        u = u + weight_decay_rate * p
    return p - u


def adagrad_ref(p, g, s, t, lr, initial_accumulator_value=0.1, eps=1e-7):
    """Duchi et al. (2011), diagonal AdaGrad, with ``eps`` inside the root and
    the sum started at ``initial_accumulator_value`` as Optax has them."""
    acc = s["acc"] = s.get("acc", initial_accumulator_value) + g * g
    return p - lr * np.where(acc > 0, g / np.sqrt(acc + eps), 0.0)


def adadelta_ref(
    p, g, s, t, lr, rho=0.9, eps=1e-6, weight_decay=0.0, weight_decay_mask=None
):
    """Zeiler (2012), Algorithm 1, the step times ``lr``; the weight decay
    joins the gradient first, as in Optax."""
    g = g + weight_decay * p
    eg = s["eg"] = rho * s.get("eg", 0.0) + (1 - rho) * g * g
    dx = np.sqrt(s.get("ex", 0.0) + eps) / np.sqrt(eg + eps) * g
    s["ex"] = rho * s.get("ex", 0.0) + (1 - rho) * dx * dx
    return p - lr * dx


def sm3_ref(p, g, s, t, lr, momentum=0.9):
    """Anil et al. (2019), SM3-II over the rows and columns of a matrix (one
    sum per entry of a vector), momentum on the scaled gradient as in the
    authors' code; Optax's eps = 1e-8 inside the root, 0 / 0 taken as 0."""
    if p.ndim == 2:
        rows = s.get("rows", np.zeros(p.shape[0]))
        cols = s.get("cols", np.zeros(p.shape[1]))
        acc = g * g + np.minimum(rows[:, None], cols[None, :])
        s["rows"], s["cols"] = acc.max(axis=1), acc.max(axis=0)
    else:
        acc = s["acc"] = s.get("acc", 0.0) + g * g
    scaled = np.where(acc > 0, g / np.sqrt(acc + 1e-8), 0.0)
    m = s["m"] = momentum * s.get("m", 0.0) + (1 - momentum) * scaled
    return p - lr * m


def madgrad_ref(p, g, s, t, lr, momentum=0.9, weight_decay=0.0, eps=1e-6):
    """Defazio & Jelassi (2021), Algorithm 1, as the authors' code
    (facebookresearch/madgrad) runs it: lambda = (lr + eps) sqrt(k + 1), the
    cube root plus eps, the decay added to the gradient."""
    g = g + weight_decay * p
    x0 = s.setdefault("x0", p.copy())
    lamb = (lr + eps) * np.sqrt(t)
    gsq = s["gsq"] = s.get("gsq", 0.0) + lamb * g * g
    total = s["s"] = s.get("s", 0.0) + lamb * g
    z = x0 - total / (np.cbrt(gsq) + eps)
    return momentum * p + (1 - momentum) * z


def yogi_ref(p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-3):
    """Zaheer et al. (2018), Algorithm 2, with Optax's conventions: both
    moments start at 1e-6 and are debiased as Adam's."""
    m = s["m"] = b1 * s.get("m", 1e-6) + (1 - b1) * g
    v = s.get("v", 1e-6)
    v = s["v"] = v - (1 - b2) * np.sign(v - g * g) * g * g
    return p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def adan_ref(
    p,
    g,
    s,
    t,
    lr,
    b1=0.98,
    b2=0.92,
    b3=0.99,
    eps=1e-8,
    eps_root=1e-8,
    weight_decay=0.0,
    mask=None,
):
    """Xie et al. (2022), Algorithm 1, as the authors' code (sail-sg/Adan,
    no_prox=True) runs it: its betas are one minus the paper's, so the
    difference of gradients enters with weight b2."""
    diff = g - s["prev"] if t > 1 else np.zeros_like(g)
    s["prev"] = g
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * diff
    n = s["n"] = b3 * s.get("n", 0.0) + (1 - b3) * (g + b2 * diff) ** 2
    denom = np.sqrt(n / (1 - b3**t) + eps_root) + eps
    step = (m / (1 - b1**t) + b2 * v / (1 - b2**t)) / denom
    return p * (1 - lr * weight_decay) - lr * step


def novograd_ref(
    p, g, s, t, lr, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0
):
    """Ginsburg et al. (2019), Algorithm 1, one second moment per parameter
    array; as in Optax, eps also guards the first step."""
    sq = np.sum(g * g)
    v = s["v"] = sq if t == 1 else b2 * s["v"] + (1 - b2) * sq
    step = g / (np.sqrt(v + eps_root) + eps) + weight_decay * p
    m = s["m"] = step if t == 1 else b1 * s["m"] + step
    return p - lr * m


def sign_sgd_ref(p, g, s, t, lr):
    """Bernstein et al. (2018), Algorithm 1 (signSGD)."""
    return p - lr * np.sign(g)


def signum_ref(p, g, s, t, lr, beta=0.9):
    """Bernstein et al. (2018), Algorithm 2 (Signum): the sign of the momentum
    m = beta m + (1 - beta) g, not debiased."""
    m = s["m"] = beta * s.get("m", 0.0) + (1 - beta) * g
    return p - lr * np.sign(m)


def rprop_ref(
    p, g, s, t, lr, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6, max_step_size=50.0
):
    """Igel & Huesken (2003), iRprop-: after a change of sign the step size
    shrinks, the parameter stays and the stored gradient is zeroed."""
    step = s.get("step", np.full_like(p, lr))
    agree = g * s.get("g", 0.0)
    step = np.where(
        agree > 0,
        np.minimum(step * eta_plus, max_step_size),
        np.where(agree < 0, np.maximum(step * eta_minus, min_step_size), step),
    )
    g = np.where(agree < 0, 0.0, g)
    s["step"], s["g"] = step, g
    return p - step * np.sign(g)


def optimistic_gradient_descent_ref(p, g, s, t, lr, alpha=1.0, beta=1.0):
    """Mokhtari et al. (2020), generalized OGD; g_0 = g_1 (no previous gradient)."""
    last = s.get("g", g)
    s["g"] = g
    return p - lr * ((alpha + beta) * g - beta * last)


def _optimistic_adam_step(g, s, t, alpha, beta, b1, b2, eps, eps_root, nesterov):
    """Daskalakis et al. (2018)'s optimism on Adam's step r_t (Optax's form)."""
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
    mhat = _nesterov_mhat(m, g, b1, t) if nesterov else m / (1 - b1**t)
    r = mhat / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
    last = s.get("r", r)
    s["r"] = r
    return (alpha + beta) * r - beta * last


def optimistic_adam_v2_ref(
    p,
    g,
    s,
    t,
    lr,
    alpha=1.0,
    beta=1.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    nesterov=True,
):
    step = _optimistic_adam_step(g, s, t, alpha, beta, b1, b2, eps, eps_root, nesterov)
    return p - lr * step


def optimistic_adam_ref(
    p,
    g,
    s,
    t,
    lr,
    optimism=None,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    nesterov=True,
):
    """Optax's first interface: the rate weighs r_t, the optimism its change."""
    o = lr if optimism is None else optimism
    return p - _optimistic_adam_step(g, s, t, lr, o, b1, b2, eps, eps_root, nesterov)


def galore_ref(
    p,
    g,
    s,
    t,
    lr,
    rank=128,
    update_proj_gap=200,
    scale=1.0,
    weight_decay=0.0,
    proj_type="reverse_std",
    b1=0.9,
    b2=0.999,
    eps=1e-8,
):
    """Zhao et al. (2024): the authors' GaLoreProjector (its proj_type sides,
    a float32 SVD every update_proj_gap steps from the first), with Optax's
    default base optimizer, Adam, on the projections and Optax's decay of the
    unstepped params. A matrix of a shorter side than the rank keeps it all.

    The SVD is SciPy's LAPACK routine, the one JAX calls on CPU, so that the
    singular vectors' signs (which the moments carry across refreshes) agree.
    """
    matrix = np.ndim(p) == 2
    if matrix:
        rows, cols = g.shape
        left = {"reverse_std": rows >= cols, "std": rows < cols}.get(
            proj_type, proj_type == "left"
        )
        if (t - 1) % update_proj_gap == 0:
            u, _, vh = scipy.linalg.svd(g.astype(np.float32), full_matrices=False)
            s["P"] = (u[:, :rank] if left else vh[:rank].T).astype(np.float64)
        r = s["P"].T @ g if left else g @ s["P"]
    else:
        r = g
    m = s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * r
    v = s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * r**2
    n = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
    if matrix:
        n = scale * (s["P"] @ n if left else n @ s["P"].T)
    return p - lr * (n + weight_decay * p)


def cocob_ref(p, g, s, t, lr, alpha=100.0, eps=1e-8, weight_decay=0.0):
    """Orabona & Tommasi (2017), Algorithm 2, as the authors' TensorFlow code
    (bremen79/cocob) runs it: L starts at eps, and the last bet stands for
    w_t - w_1. The learning rate and an L2 decay scale the gradient it bets
    on, as Optax has them."""
    g = -lr * (g + weight_decay * p)  # the paper's g is the negative gradient
    L, G = s.get("L", eps), s.get("G", 0.0)
    R, theta = s.get("R", 0.0), s.get("theta", 0.0)
    bet = s.get("bet", 0.0)
    L = s["L"] = np.maximum(L, np.abs(g))
    G = s["G"] = G + np.abs(g)
    R = s["R"] = np.maximum(R + bet * g, 0.0)
    theta = s["theta"] = theta + g
    new_bet = s["bet"] = theta / (L * np.maximum(G + L, alpha * L)) * (L + R)
    return p - bet + new_bet


REFERENCES = {
    "adagrad": adagrad_ref,
    "adadelta": adadelta_ref,
    "sm3": sm3_ref,
    "madgrad": madgrad_ref,
    "scale_by_madgrad": madgrad_ref,
    "yogi": yogi_ref,
    "adan": adan_ref,
    "novograd": novograd_ref,
    "adam": adam_ref,
    "adamw": functools.partial(adam_ref, weight_decay=1e-4),
    "nadam": functools.partial(adam_ref, nesterov=True),
    "nadamw": functools.partial(adam_ref, nesterov=True, weight_decay=1e-4),
    "amsgrad": amsgrad_ref,
    "adamax": adamax_ref,
    "adamaxw": functools.partial(adamax_ref, weight_decay=1e-4),
    "radam": radam_ref,
    "adabelief": adabelief_ref,
    "acprop": acprop_ref,
    "lamb": lamb_ref,
    "lion": lion_ref,
    "adopt": adopt_ref,
    "laprop": laprop_ref,
    "mars": mars_ref,
    "stable_adamw": stable_adamw_ref,
    "sgd": sgd_ref,
    "lars": lars_ref,
    "fromage": fromage_ref,
    "rmsprop": rmsprop_ref,
    "adafactor": adafactor_ref,
    "cocob": cocob_ref,
    "sign_sgd": sign_sgd_ref,
    "signum": signum_ref,
    "rprop": rprop_ref,
    "optimistic_gradient_descent": optimistic_gradient_descent_ref,
    "optimistic_adam_v2": optimistic_adam_v2_ref,
    "optimistic_adam": optimistic_adam_ref,
    "galore": galore_ref,
}

LEARNING_RATES = {"sgd": 0.05, "lion": 1e-3, "rmsprop": 1e-3, "adafactor": 3e-3}
# AdaDelta's paper has no rate: 1 is its own method.
LEARNING_RATES["adadelta"] = 1.0
# LARS's steps are the trust coefficient (1e-3) times the rate.
LEARNING_RATES["lars"] = 1.0
DEFAULT_LR = 1e-2

# (optimizer, non-default hyperparameters). The empty dict pins the defaults.
CASES = [
    ("adagrad", {}),
    ("adagrad", {"initial_accumulator_value": 0.0, "eps": 1e-4}),
    ("adadelta", {}),
    ("adadelta", {"rho": 0.5, "eps": 1e-3, "weight_decay": 0.1}),
    ("cocob", {}),
    ("cocob", {"alpha": 10.0, "eps": 1e-4, "weight_decay": 0.1}),
    ("sm3", {}),
    ("sm3", {"momentum": 0.0}),
    ("madgrad", {}),
    ("madgrad", {"momentum": 0.0, "weight_decay": 0.05}),
    ("madgrad", {"momentum": 0.5, "eps": 1e-3}),
    ("scale_by_madgrad", {}),
    ("yogi", {}),
    ("yogi", {"b1": 0.5, "b2": 0.9, "eps": 1e-6}),
    ("adan", {}),
    (
        "adan",
        {"b1": 0.9, "b2": 0.8, "b3": 0.95, "eps_root": 0.0, "weight_decay": 0.1},
    ),
    ("novograd", {}),
    ("novograd", {"b1": 0.5, "b2": 0.9, "eps_root": 1e-4, "weight_decay": 0.1}),
    ("adam", {}),
    ("adam", {"b1": 0.5, "b2": 0.9, "eps": 1e-3}),
    ("adam", {"eps_root": 1e-4}),
    ("adam", {"nesterov": True}),
    ("adamw", {}),
    ("adamw", {"b1": 0.8, "weight_decay": 0.1}),
    ("adamw", {"weight_decay": 0.05, "nesterov": True}),
    ("nadam", {}),
    ("nadam", {"b1": 0.95, "eps_root": 1e-4}),
    ("nadamw", {}),
    ("nadamw", {"weight_decay": 0.1, "b2": 0.99}),
    ("amsgrad", {}),
    ("amsgrad", {"b2": 0.9, "eps_root": 1e-4}),
    ("amsgrad", {"bias_correction_mu": False, "bias_correction_nu": False}),
    ("adamax", {}),
    ("adamax", {"b1": 0.8, "b2": 0.9, "eps": 1e-3}),
    ("adamaxw", {}),
    ("adamaxw", {"weight_decay": 0.1}),
    ("radam", {}),
    ("radam", {"b2": 0.99, "threshold": 8.0}),
    ("radam", {"eps": 1e-3, "eps_root": 1e-4}),
    ("radam", {"nesterov": True}),
    ("adabelief", {}),
    ("adabelief", {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-8}),
    ("adabelief", {"nesterov": True}),
    ("acprop", {}),
    ("acprop", {"b1": 0.8, "b2": 0.99, "eps": 1e-8, "eps_root": 1e-10}),
    ("acprop", {"b1": 0.5, "weight_decay": 0.1}),
    ("lamb", {}),
    ("lamb", {"weight_decay": 0.1, "eps": 1e-8}),
    ("lamb", {"eps_root": 1e-4}),
    ("adopt", {}),
    ("adopt", {"b1": 0.8, "b2": 0.99, "eps": 1e-3}),
    ("adopt", {"use_clipping": False, "nesterov": True}),
    ("laprop", {}),
    ("laprop", {"b1": 0.95, "b2": 0.9, "eps": 1e-8, "weight_decay": 0.1}),
    ("mars", {}),
    ("mars", {"b1": 0.9, "gamma": 0.1, "weight_decay": 0.1, "adam_b2": 0.99}),
    ("mars", {"optimize_1d": True, "weight_decay": 0.05}),
    ("stable_adamw", {}),
    ("stable_adamw", {"b1": 0.8, "b2": 0.95, "eps": 1e-3, "weight_decay": 0.0}),
    ("lion", {}),
    ("lion", {"b1": 0.95, "b2": 0.98, "weight_decay": 0.1}),
    ("lion", {"weight_decay": 0.0}),
    ("sgd", {}),
    ("lars", {}),
    (
        "lars",
        {
            "weight_decay": 0.01,
            "trust_coefficient": 0.02,
            "eps": 1e-3,
            "nesterov": True,
        },
    ),
    ("lars", {"momentum": 0.5, "trust_coefficient": 0.01}),
    ("fromage", {}),
    ("fromage", {"min_norm": 0.0}),
    ("fromage", {"min_norm": 0.5}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.5, "nesterov": True}),
    ("rmsprop", {}),
    ("rmsprop", {"decay": 0.95, "eps_in_sqrt": False}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"initial_scale": 1.0, "momentum": 0.9}),
    ("rmsprop", {"momentum": 0.9, "nesterov": True}),
    ("rmsprop", {"bias_correction": True, "eps_in_sqrt": False}),
    # Debiased and centred, the first step's variance is 0 and the step blows up.
    ("rmsprop", {"centered": True, "decay": 0.99, "eps_in_sqrt": False}),
    ("adafactor", {}),
    ("adafactor", {"min_dim_size_to_factor": 2}),
    (
        "adafactor",
        {"min_dim_size_to_factor": 2, "clipping_threshold": None, "decay_rate": 0.5},
    ),
    (
        "adafactor",
        {
            "min_dim_size_to_factor": 2,
            "multiply_by_parameter_scale": False,
            "clipping_threshold": None,
        },
    ),
    (
        "adafactor",
        {
            "momentum": 0.9,
            "dtype_momentum": np.float64,
            "weight_decay_rate": 1e-3,
            "min_dim_size_to_factor": 2,
            "factored": False,
        },
    ),
    ("sign_sgd", {}),
    ("signum", {}),
    ("signum", {"beta": 0.5}),
    ("rprop", {}),
    (
        "rprop",
        {
            "eta_minus": 0.3,
            "eta_plus": 1.5,
            "min_step_size": 1e-3,
            "max_step_size": 0.03,
        },
    ),
    ("optimistic_gradient_descent", {}),
    ("optimistic_gradient_descent", {"alpha": 0.5, "beta": 2.0}),
    ("optimistic_adam_v2", {}),
    (
        "optimistic_adam_v2",
        {"alpha": 0.5, "beta": 0.2, "eps_root": 1e-8, "nesterov": False},
    ),
    ("optimistic_adam", {}),
    ("optimistic_adam", {"optimism": 0.05, "nesterov": False}),
    # The reference's matrix is 5 x 3: Optax's side (reverse_std) projects its
    # columns, the authors' default (std) its rows; rank 2 truncates.
    ("galore", {}),
    ("galore", {"rank": 2, "update_proj_gap": 10, "scale": 0.5, "weight_decay": 0.1}),
    ("galore", {"rank": 2, "update_proj_gap": 7, "proj_type": "std"}),
    ("galore", {"rank": 1, "update_proj_gap": 3, "proj_type": "right", "scale": 2.0}),
]


def _case_id(case):
    name, hyper = case
    if not hyper:
        return name
    return (
        name
        + "-"
        + "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in hyper.items())
    )


def _constant(value):
    return lambda count: value


# ---------------------------------------------------------------------------
# Runners. Both return the trajectory: a dict of arrays with a leading axis of
# length ``num_steps``, entry i holding the parameters after step i + 1.


def run_reference(step, lr_at, hyper, num_steps=NUM_STEPS):
    """Runs the NumPy reference in float64; ``lr_at(count)`` counts from 0."""
    params = initial_params()
    states = {key: {} for key in params}
    trajectory = {key: [] for key in params}
    for t in range(1, num_steps + 1):
        grads = grad_numpy(params)
        lr = lr_at(t - 1)
        params = {
            key: step(params[key], grads[key], states[key], t, lr, **hyper)
            for key in params
        }
        for key, value in params.items():
            trajectory[key].append(value)
    return {key: np.stack(values) for key, values in trajectory.items()}


def run_adamx(tx, dtype, num_steps=NUM_STEPS):
    """Runs ``tx`` with ``jax.grad`` of the same loss, jitted once per case."""
    x, y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), initial_params())
    grad_fn = jax.grad(loss_jax)

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(grad_fn(params, x, y), state, params)
        params = adamx.apply_updates(params, updates)
        return (params, state), params

    @jax.jit
    def run(params):
        carry = (params, tx.init(params))
        return jax.lax.scan(body, carry, length=num_steps)[1]

    return run(params)


def assert_trajectories_close(got, want, rtol, atol):
    """Fails at the first step where any leaf differs, showing that step."""
    assert set(got) == set(want)
    for key in sorted(want):
        got_leaf = np.asarray(got[key], np.float64)
        close = np.isclose(got_leaf, want[key], rtol=rtol, atol=atol)
        bad_steps = np.flatnonzero(~close.reshape(len(close), -1).all(axis=1))
        if bad_steps.size:
            i = bad_steps[0]
            np.testing.assert_allclose(
                got_leaf[i],
                want[key][i],
                rtol=rtol,
                atol=atol,
                err_msg=f"leaf {key!r} first differs after step {i + 1}",
            )


def check_against_reference(name, hyper, dtype, rtol, atol, lr=None, lr_at=None):
    """Builds ``adamx.<name>``, runs it and the reference, compares trajectories.

    ``lr`` is what adamx receives (a float or a schedule); ``lr_at`` is the
    reference's own value of it at each count, defaulting to the constant.
    """
    if lr is None:
        lr = LEARNING_RATES.get(name, DEFAULT_LR)
    if lr_at is None:
        lr_at = _constant(lr)
    tx = getattr(adamx, name)(lr, **hyper)
    got = run_adamx(tx, dtype)
    for leaf in jax.tree.leaves(got):
        assert leaf.dtype == dtype, f"parameters became {leaf.dtype}, not {dtype}"
    want = run_reference(REFERENCES[name], lr_at, hyper)
    assert_trajectories_close(got, want, rtol, atol)


# ---------------------------------------------------------------------------
# Tests.


def test_numpy_gradient_matches_jax_grad(x64):
    params = initial_params()
    got = jax.grad(loss_jax)(jax.tree.map(jnp.asarray, params), X, Y)
    want = grad_numpy(params)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-13, atol=1e-13)


# Optimizers compared with their authors' own package in a test file of their
# own instead (the name, and where).
ORACLE_TESTS: dict[str, str] = {
    "ademamix": "test_ademamix.py",
    "simplified_ademamix": "test_ademamix.py",
    "adam_mini": "test_adam_mini.py",
    "prodigy": "test_prodigy.py",
    "scale_by_prodigy": "test_prodigy.py",
    "sophia": "test_sophia.py",
    "schedule_free_adamw": "test_schedule_free.py",
    "schedule_free_sgd": "test_schedule_free.py",
    # Step sizes from sums over the whole tree, which the references' leaf
    # steps cannot see: NumPy transcriptions of the authors' code there.
    "dog": "test_distance_over_gradients.py",
    "dowg": "test_distance_over_gradients.py",
    "dadapt_adamw": "test_parameter_free.py",
    # Takes the initial step size first; checked against Optax's states and
    # torch.optim.Rprop there.
    "scale_by_rprop": "test_sign.py",
    # Optax's draws for the same key (jax.random, split per leaf).
    "noisy_sgd": "test_noise.py",
}


def _optimizer_names():
    """Public factories of the optimizer modules taking the learning rate first."""
    names = set()
    for module_name in OPTIMIZER_MODULES:
        if module_name in ("muon", "soap"):
            continue  # matrix optimizers: tests/test_muon.py and test_soap.py
        module = importlib.import_module(f"adamx.{module_name}")
        for name in module.__all__:
            first = list(inspect.signature(getattr(module, name)).parameters)[:1]
            if first == ["learning_rate"]:
                names.add(name)
    return names


def test_every_optimizer_has_a_reference_and_a_default_case():
    assert set(adamx.optimizers.__all__) <= _optimizer_names()
    assert _optimizer_names() - set(ORACLE_TESTS) == set(REFERENCES)
    defaults = {name for name, hyper in CASES if not hyper}
    assert defaults == set(REFERENCES)


@pytest.mark.parametrize("name, hyper", CASES, ids=[_case_id(c) for c in CASES])
def test_float64_matches_reference(x64, name, hyper):
    tol = F64_TOL_BY_NAME.get(name, F64_TOL)
    check_against_reference(name, hyper, jnp.float64, tol, tol)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_float32_tracks_reference_and_keeps_dtype(name):
    # lax.scan also rejects a state whose dtype changes between steps.
    check_against_reference(name, {}, jnp.float32, F32_RTOL, F32_ATOL)


def _linear_lr(init_value, end_value, transition_steps):
    def lr_at(count):
        fraction = min(count, transition_steps) / transition_steps
        return init_value + fraction * (end_value - init_value)

    return lr_at


# rmsprop's momentum acts on the lr-scaled step and adamw's decay is scaled by
# the lr, so a changing lr tells those orders apart.
SCHEDULE_CASES = [
    # MADGRAD weighs each step's gradient by its rate, inside the step.
    ("madgrad", {}),
    ("adam", {}),
    ("adamw", {"weight_decay": 0.1}),
    ("adopt", {}),
    ("adopt", {"b1": 0.8, "b2": 0.99, "eps": 1e-3}),
    ("adopt", {"use_clipping": False, "nesterov": True}),
    ("laprop", {"weight_decay": 0.1}),
    ("mars", {"weight_decay": 0.1}),
    ("stable_adamw", {}),
    ("lion", {}),
    ("sgd", {"momentum": 0.9}),
    ("rmsprop", {"momentum": 0.9}),
    ("lars", {"weight_decay": 0.01}),
    ("fromage", {}),
]


@pytest.mark.parametrize(
    "name, hyper", SCHEDULE_CASES, ids=[_case_id(c) for c in SCHEDULE_CASES]
)
def test_linear_schedule_matches_reference(x64, name, hyper):
    if not hasattr(adamx, "linear_schedule"):
        pytest.skip("adamx has no linear_schedule")
    base = LEARNING_RATES.get(name, DEFAULT_LR)
    # The ramp ends before NUM_STEPS so the constant tail is covered too.
    shape = {"init_value": 2 * base, "end_value": 0.1 * base, "transition_steps": 60}
    check_against_reference(
        name,
        hyper,
        jnp.float64,
        F64_TOL,
        F64_TOL,
        lr=adamx.linear_schedule(**shape),
        lr_at=_linear_lr(**shape),
    )


# ---------------------------------------------------------------------------
# PyTorch. Same problem, autograd for the gradient, float64 throughout.


def run_torch(optimizer_cls, lr, torch_kwargs, num_steps=NUM_STEPS):
    torch = pytest.importorskip("torch")
    params = {
        key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
        for key, value in initial_params().items()
    }
    x = torch.tensor(X, dtype=torch.float64)
    y = torch.tensor(Y, dtype=torch.float64)
    optimizer = getattr(torch.optim, optimizer_cls)(
        list(params.values()), lr=lr, **torch_kwargs
    )
    trajectory = {key: [] for key in params}
    for _ in range(num_steps):
        optimizer.zero_grad()
        residual = x @ params["w"] + params["b"] - y
        loss = (residual**2).sum() / x.shape[0] + SIN_WEIGHT * torch.sin(
            params["w"]
        ).sum()
        loss.backward()
        optimizer.step()
        for key, value in params.items():
            trajectory[key].append(value.detach().numpy().copy())
    return {key: np.stack(values) for key, values in trajectory.items()}


# (adamx optimizer, its hyperparameters, torch.optim class, its arguments).
# Where the two libraries define a method differently the arguments pick the
# configuration in which the definitions coincide:
# - torch's RMSprop adds eps outside the square root: adamx's eps_in_sqrt=False.
#   Its momentum buffer holds unscaled steps; equal to adamx for a constant lr.
# - torch's RAdam adds eps to sqrt(v) before bias correction, i.e. uses
#   eps / sqrt(1 - b2^t) against adamx's eps; with eps = 0 they agree.
# - torch's NAdam uses a momentum-decay schedule and its Adam(amsgrad=True)
#   takes the maximum of the raw second moment, so neither is compared here.
TORCH_CASES = [
    ("adam", {}, "Adam", {}),
    (
        "adam",
        {"b1": 0.8, "b2": 0.99, "eps": 1e-6},
        "Adam",
        {"betas": (0.8, 0.99), "eps": 1e-6},
    ),
    ("adamw", {"weight_decay": 0.1}, "AdamW", {"weight_decay": 0.1}),
    (
        "adamw",
        {"b1": 0.8, "weight_decay": 1e-4},
        "AdamW",
        {"betas": (0.8, 0.999), "weight_decay": 1e-4},
    ),
    ("sgd", {}, "SGD", {}),
    # torch starts the buffer at g on the first step, which is g + mu * 0.
    ("sgd", {"momentum": 0.9}, "SGD", {"momentum": 0.9}),
    (
        "sgd",
        {"momentum": 0.9, "nesterov": True},
        "SGD",
        {"momentum": 0.9, "nesterov": True},
    ),
    (
        "adamax",
        {"b1": 0.8, "eps": 1e-3},
        "Adamax",
        {"betas": (0.8, 0.999), "eps": 1e-3},
    ),
    ("rmsprop", {"eps_in_sqrt": False}, "RMSprop", {"alpha": 0.9}),
    (
        "rmsprop",
        {"decay": 0.99, "eps_in_sqrt": False, "centered": True, "momentum": 0.9},
        "RMSprop",
        {"alpha": 0.99, "centered": True, "momentum": 0.9},
    ),
    ("radam", {"eps": 0.0}, "RAdam", {"eps": 0.0}),
]


@pytest.mark.parametrize(
    "name, hyper, torch_cls, torch_kwargs",
    TORCH_CASES,
    ids=[_case_id(c[:2]) for c in TORCH_CASES],
)
def test_float64_matches_torch(x64, name, hyper, torch_cls, torch_kwargs):
    lr = LEARNING_RATES.get(name, DEFAULT_LR)
    want = run_torch(torch_cls, lr, torch_kwargs)
    got = run_adamx(getattr(adamx, name)(lr, **hyper), jnp.float64)
    assert_trajectories_close(got, want, F64_TOL, F64_TOL)
