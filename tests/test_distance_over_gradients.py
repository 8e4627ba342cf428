"""Tests of adamx/distance_over_gradients.py: DoG and DoWG against NumPy
transcriptions of their authors' code (DoG's ``dog.DoG``, DoWG's Algorithm 1)
in float64 over 100 steps, and against Optax where the table's rows do not
reach (masks, L-DoG's options); then first steps and zero gradients. The table
(optimizer_table.py) runs the shared checks and Optax's default twins."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import LSQ_START as START
from helpers import LSQ_STEPS as STEPS
from helpers import assert_lsq_runs_close as assert_close
from helpers import lsq_grad_np as grad_np
from helpers import lsq_run as run_ours

import adamx


def sq_norm(tree):
    return sum(float(np.sum(v**2)) for v in tree.values())


# ------------------------------------------------------- transcriptions


def dog_authors(
    steps, reps_rel=1e-6, lr=1.0, weight_decay=0.0, eps=1e-8, init_eta=None
):
    """``dog.DoG.step`` (formll/dog, PyTorch) in NumPy."""
    p = {k: v.copy() for k, v in START.items()}
    if init_eta is not None:
        reps_rel = 0.0
    out = []
    for k in range(steps):
        g = grad_np(p)
        if weight_decay > 0:
            g = {n: g[n] + weight_decay * p[n] for n in g}
        if k == 0:
            init = {n: v.copy() for n, v in p.items()}
            rbar = reps_rel * (1 + math.sqrt(sq_norm(p)))
            big_g = sq_norm(g) + eps
        else:
            dist = math.sqrt(sq_norm({n: p[n] - init[n] for n in p}))
            rbar = max(rbar, dist)
            big_g += sq_norm(g)
        eta = lr * rbar / math.sqrt(big_g)
        if k == 0 and init_eta is not None:
            eta = init_eta
        p = {n: p[n] - eta * g[n] for n in p}
        out.append(p)
    return out


def dowg_paper(steps, lr=1.0, r2=None, eps=1e-4, weight_decay=0.0):
    """DoWG, Algorithm 1 of Khaled et al. (2023), with Optax's eps."""
    p = {k: v.copy() for k, v in START.items()}
    x0 = {k: v.copy() for k, v in START.items()}
    r2 = eps if r2 is None else r2
    v = 0.0
    out = []
    for _ in range(steps):
        g = grad_np(p)
        g = {n: g[n] + weight_decay * p[n] for n in g}
        r2 = max(r2, sq_norm({n: p[n] - x0[n] for n in p}))
        v += r2 * sq_norm(g)
        eta = r2 / (math.sqrt(v) + eps)
        p = {n: p[n] - lr * eta * g[n] for n in p}
        out.append(p)
    return out


# ------------------------------------------------------------------ DoG


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ({}, {}),
        (
            {
                "learning_rate": 0.5,
                "init_step": ("heuristic", 1e-3),
                "weight_decay": 0.1,
            },
            {"lr": 0.5, "reps_rel": 1e-3, "weight_decay": 0.1},
        ),
        (
            {"init_step": ("learning_rate", 1e-3), "eps": 1e-4},
            {"init_eta": 1e-3, "eps": 1e-4},
        ),
    ],
    ids=["defaults", "lr-reps-decay", "init_eta"],
)
def test_dog_matches_the_authors_code_in_float64(x64, ours, theirs):
    assert_close(run_ours(adamx.dog(**ours)), dog_authors(STEPS, **theirs))


def test_dowg_matches_optax_with_a_decay_mask(x64):
    kw = dict(learning_rate=0.3, weight_decay=0.05, mask={"w": True, "b": False})
    assert_close(run_ours(adamx.dowg(**kw)), run_ours(optax.contrib.dowg(**kw)))


def test_dog_takes_x0_from_its_first_update_where_optax_takes_inits(x64):
    zeros = jax.tree.map(lambda v: jnp.zeros_like(jnp.asarray(v)), START)
    # The authors' code: x_0 and r_eps from the params of the first step
    # (Optax's, from init's zeros, would take r_eps = 1e-6 and x_0 = 0).
    assert_close(run_ours(adamx.dog(), start=zeros), dog_authors(STEPS))


def test_dog_and_dowg_take_no_nan_from_zero_gradients():
    params = {"w": jnp.ones(3)}
    for tx in [adamx.dog(), adamx.dowg(), adamx.cocob(), adamx.dadapt_adamw()]:
        state = tx.init(params)
        for _ in range(2):
            u, state = tx.update({"w": jnp.zeros(3)}, state, params)
            assert np.all(np.asarray(u["w"]) == 0), tx
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state)), tx


# ------------------------------------------------------------------ DoWG


@pytest.mark.parametrize(
    "kw",
    [{}, {"learning_rate": 0.5, "init_estim_sq_dist": 0.01, "eps": 1e-6}],
    ids=["defaults", "options"],
)
def test_dowg_matches_its_paper_in_float64(x64, kw):
    theirs = dict(kw)
    theirs["lr"] = theirs.pop("learning_rate", 1.0)
    theirs["r2"] = theirs.pop("init_estim_sq_dist", None)
    assert_close(run_ours(adamx.dowg(**kw)), dowg_paper(STEPS, **theirs))


# ------------------------------------------------------------- L-DoG


@pytest.mark.parametrize(
    "kw",
    [
        {"global_scale": -1.0},
        {
            "reps_rel": 1e-3,
            "eps": 1e-4,
            "param_dtype": jnp.float64,
            "global_scale": -0.5,
        },
    ],
    ids=["x0-in-float32", "options"],
)
def test_distance_over_gradients_matches_optax_in_float64(x64, kw):
    ours = run_ours(adamx.scale_by_distance_over_gradients(**kw))
    theirs = run_ours(optax.scale_by_distance_over_gradients(**kw))
    assert_close(ours, theirs)


def test_distance_over_gradients_keeps_a_scalar_leaf_scalar():
    tx = adamx.scale_by_distance_over_gradients()
    params = {"s": jnp.array(2.0), "v": jnp.ones(3)}
    u, state = tx.update(
        {"s": jnp.array(1.0), "v": jnp.ones(3)}, tx.init(params), params
    )
    assert u["s"].shape == () and state.grad_sum_of_squares["s"].shape == ()
    # Each leaf its own step: 1e-6 (1 + |x_0|) / |g| for the scalar.
    np.testing.assert_allclose(u["s"], 3e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="defined for real params"):
        tx.init({"z": jnp.ones(2, jnp.complex64)})
