"""cautious(tx) against the authors' C-AdamW and pytorch_optimizer, and on the table."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import batch, loss, make_params
from optimizer_table import OPTIMIZERS, ids
from pytorch_optimizer import ADOPT

import adamx
from adamx.cautious import PARAM_FREE

STEPS = 120


def c_adamw_reference(params, grad_fn, steps, lr, b1, b2, eps, wd, normalization):
    """The authors' C-AdamW step (kyleliang919/C-Optim, c_adamw.py, its
    per-tensor branch), transcribed to NumPy: decay, moments, the mask of
    ``m * g > 0`` normalized per tensor, the bias-corrected step."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for t in range(1, steps + 1):
        g = grad_fn(p, t - 1)
        for k in p:
            if wd > 0:
                p[k] = p[k] + p[k] * (-lr * wd)
            m[k] = m[k] * b1 + g[k] * (1 - b1)
            v[k] = v[k] * b2 + g[k] * g[k] * (1 - b2)
            denom = np.sqrt(v[k]) + eps
            step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            mask = (m[k] * g[k] > 0).astype(np.float64)
            if normalization == "mean":
                mask = mask / max(mask.mean(), 1e-3)
            else:
                mask = mask * (mask.size / (mask.sum() + 1))
            p[k] = p[k] + (m[k] * mask / denom) * -step_size
        out.append({k: x.copy() for k, x in p.items()})
    return out


def flat_params(dtype=jnp.float64):
    p = make_params(dtype)
    return {"w": p["w"], "b": p["b"], "k": p["nested"]["k"]}


def flat_loss(p, x):
    return loss({"w": p["w"], "b": p["b"], "nested": {"k": p["k"]}}, x)


def numpy_grad(p, step):
    g = jax.grad(flat_loss)({k: jnp.asarray(x) for k, x in p.items()}, batch(step))
    return {k: np.asarray(x) for k, x in g.items()}


@pytest.mark.parametrize("normalization", ["mean", "paper"])
@pytest.mark.parametrize(
    "b1, b2, wd", [(0.9, 0.999, 0.0), (0.8, 0.95, 0.0), (0.9, 0.999, 0.1)]
)
def test_cautious_adamw_matches_c_adamw_in_float64(x64, normalization, b1, b2, wd):
    # eps = 0: the reference adds eps to sqrt(v) before its bias correction,
    # adamw after; without eps the two formulas are the same. The reference
    # decays outside the mask, and so does cautious(adamw).
    lr = 2e-2
    params = flat_params()
    want = c_adamw_reference(
        params, numpy_grad, STEPS, lr, b1, b2, 0.0, wd, normalization
    )
    tx = adamx.cautious(
        adamx.adamw(lr, b1=b1, b2=b2, eps=0.0, weight_decay=wd),
        normalization=normalization,
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s, x):
        u, s = tx.update(jax.grad(flat_loss)(p, x), s, p)
        return adamx.apply_updates(p, u), s

    p, worst = params, 0.0
    for t in range(STEPS):
        p, state = step(p, state, batch(t))
        for k in p:
            diff = float(np.abs(np.asarray(p[k]) - want[t][k]).max())
            worst = max(worst, diff)
            assert diff < 1e-10, (k, t, diff)
    assert np.abs(np.asarray(p["w"]) - np.asarray(params["w"])).max() > 0.1
    print(f"max abs diff over {STEPS} steps: {worst:.2e}")


def test_the_reference_masks_something_here(x64):
    """The comparison above would prove little if the mask kept everything."""
    params = flat_params()
    p = {k: np.asarray(v) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    disagree = 0
    for t in range(STEPS):
        g = numpy_grad(p, t)
        for k in p:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            disagree += int(np.sum(m[k] * g[k] <= 0))
            p[k] = p[k] - 2e-2 * np.sign(m[k])
    assert disagree > 50, disagree


@pytest.mark.parametrize("b1, b2", [(0.9, 0.9999), (0.5, 0.99)])
def test_cautious_adopt_matches_pytorch_optimizers_in_float64(x64, b1, b2):
    lr = 1e-2
    params = flat_params()
    names = list(params)
    torch_params = [
        torch.nn.Parameter(torch.tensor(np.asarray(params[k]))) for k in names
    ]
    # pytorch_optimizer clips at step^(1/4), counting the first step as 1;
    # adamx (and the authors) at t^(1/4), counting it as 0.
    ref = ADOPT(
        torch_params,
        lr=lr,
        betas=(b1, b2),
        clip_lambda=lambda step: (step - 1) ** 0.25,
        foreach=False,
        cautious=True,
    )
    tx = adamx.cautious(adamx.adopt(lr, b1=b1, b2=b2), normalization="paper")
    state = tx.init(params)

    @jax.jit
    def step(p, s, x):
        u, s = tx.update(jax.grad(flat_loss)(p, x), s, p)
        return adamx.apply_updates(p, u), s

    p, worst = params, 0.0
    for t in range(STEPS):
        theirs = {
            k: tp.detach().numpy() for k, tp in zip(names, torch_params, strict=True)
        }
        g = numpy_grad(theirs, t)
        for k, tp in zip(names, torch_params, strict=True):
            tp.grad = torch.tensor(g[k])
        ref.step()
        p, state = step(p, state, batch(t))
        for k, tp in zip(names, torch_params, strict=True):
            diff = float(np.abs(np.asarray(p[k]) - tp.detach().numpy()).max())
            worst = max(worst, diff)
            assert diff < 1e-10, (k, t, diff)
    assert np.abs(np.asarray(p["w"]) - np.asarray(params["w"])).max() > 0.05
    print(f"max abs diff over {STEPS} steps: {worst:.2e}")


def _shapes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("name", ids(without=("wrapped", "variant")))
def test_keeps_the_state_and_never_steps_up_the_gradient(name):
    """Each step, every update entry is 0 or of the sign opposite to the
    gradient's, once the decoupled weight decay is taken out where the
    optimizer ends in one (adamw's -lr wd theta, from its declared rate and
    decay): that part is not masked, as in C-AdamW."""
    inner = OPTIMIZERS[name].ours()
    tx = adamx.cautious(inner)
    stages = adamx.traits_of(inner).stages or ()
    names = [stage.name for stage in stages]
    decays = len(names) == 3 and names[1:] == [
        "add_decayed_weights",
        "scale_by_learning_rate",
    ]
    decays = decays and names[0] in PARAM_FREE
    params = make_params()
    state = tx.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(inner.init(params))
    assert _shapes(state) == _shapes(inner.init(params))
    structure = jax.tree.structure(state)

    @jax.jit
    def step(p, s, x):
        g = jax.grad(loss)(p, x)
        u, s = tx.update(g, s, p)
        return adamx.apply_updates(p, u), s, g, u

    def value(v, t):
        return float(v(t)) if callable(v) else float(v)

    moved = 0
    for t in range(12):
        old = params
        params, state, g, u = step(params, state, batch(t))
        if decays:
            rate = value(stages[2].args["learning_rate"], t)
            rate *= value(stages[1].args["weight_decay"], t)
            # What is left of a masked entry is float32 rounding, ~1e-10.
            u = jax.tree.map(
                lambda ul, p, r=rate: jnp.where(
                    jnp.abs(ul + r * p) < 1e-7, 0.0, ul + r * p
                ),
                u,
                old,
            )
        assert jax.tree.structure(state) == structure
        for gl, ul in zip(jax.tree.leaves(g), jax.tree.leaves(u), strict=True):
            gl, ul = np.asarray(gl), np.asarray(ul)
            assert np.all(ul * gl <= 0), (name, t)
            assert np.all(ul[gl == 0] == 0), (name, t)
            moved += int(np.sum(ul != 0))
    assert moved > 0, name


def test_inner_traits_and_flat_layout():
    tx = adamx.cautious(adamx.adam(1e-2))
    assert adamx.traits_of(tx).elementwise is False
    assert adamx.traits_of(tx).stages is None  # no in-place kernel skips the mask
    with pytest.raises(TypeError, match="cautious.*FlatParams"):
        tx.init(adamx.ravel({"w": jnp.zeros(3)}))


def test_a_leaf_with_nothing_agreeing_gets_a_zero_update():
    tx = adamx.cautious(adamx.scale(1.0))  # u = g: everything disagrees
    u, _ = tx.update({"a": jnp.array([1.0, -2.0])}, tx.init(None))
    np.testing.assert_array_equal(u["a"], [0.0, 0.0])
