"""Helpers the test modules share: a small problem, steps, and tree comparisons."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import adamx

#: XLA's default code generation, for one program: ``jax.jit(f,
#: compiler_options=DEFAULT_CODEGEN)``. The suite compiles with XLA's older
#: element-wise emitters (tests/conftest.py), which fold and fuse constants
#: differently; a test that two programs differing in what is a constant (a plain
#: optimizer and the same one with injected hyperparameters) give the same bits
#: checks that with the code generation users get.
DEFAULT_CODEGEN = {"xla_cpu_use_fusion_emitters": True}
_EMITTERS = "--xla_cpu_use_fusion_emitters"

#: The modules that hold optimizers (factories taking the learning rate first,
#: and their ``scale_by_*``): the reference and signature checks cover each.
OPTIMIZER_MODULES = (
    "optimizers",
    "frontier",
    "muon",
    "soap",
    "ademamix",
    "adam_mini",
    "prodigy",
    "sophia",
    "schedule_free",
    "layerwise",
    "adagrad",
    "relatives",
    "distance_over_gradients",
    "parameter_free",
    "sign",
    "optimistic",
    "noise",
    "acprop",
    "galore",
)


def make_params(dtype=jnp.float32, seed=0):
    """A small tree: a matrix, a vector and a nested rank-3 leaf."""
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 6)), dtype),
        "b": jnp.asarray(rng.normal(size=(6,)), dtype),
        "nested": {"k": jnp.asarray(rng.normal(size=(3, 2, 5)), dtype)},
    }


def loss(params, x):
    """A loss of ``make_params``' tree whose gradient depends on the params."""
    h = jnp.tanh(x @ params["w"] + params["b"])
    return (
        jnp.mean(h**2)
        + 0.1 * jnp.sum(jnp.sin(params["nested"]["k"]))
        + 0.01 * jnp.sum(params["w"] ** 4)
    )


def batch(step, dtype=jnp.float32, n=8):
    """The inputs of step ``step``: fixed by the step, fresh at each one."""
    return jnp.asarray(np.random.default_rng(100 + step).normal(size=(n, 4)), dtype)


def make_step(tx, apply_updates=adamx.apply_updates, loss_fn=loss):
    """``(params, state, x) -> (params, state)``: one step on ``loss_fn``."""

    def step(params, state, x):
        grads = jax.grad(loss_fn)(params, x)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return step


def run(tx, params, steps, apply_updates=adamx.apply_updates, jit=True):
    """Params and state after ``steps`` steps of ``tx`` on :func:`loss`."""
    step = make_step(tx, apply_updates)
    step = jax.jit(step) if jit else step
    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, jax.tree.leaves(params)[0].dtype))
    return params, state


def chain_step(tx):
    """The jitted ``(params, state, grads) -> (params, state)`` of the chain."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    return jax.jit(step)


def compiled_step(tx, params):
    """The donated step ``p + tx.update(g, s, p)``, compiled for ``params``."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return adamx.apply_updates(p, u), s

    return (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, tx.init(params), params)
        .compile()
    )


def as_bits(x):
    """The leaf's raw bits, so that NaN payloads and -0.0 are compared too."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = np.asarray(x)
    if x.dtype.kind not in "biu":  # floats, including ml_dtypes' bfloat16
        x = x.view(f"u{x.dtype.itemsize}")
    return x


def assert_bitwise_equal(a, b):
    """Same structure, dtypes, shapes and bits, leaf by leaf."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert getattr(x, "dtype", None) == getattr(y, "dtype", None)
        assert np.shape(x) == np.shape(y)
        np.testing.assert_array_equal(as_bits(x), as_bits(y))


def assert_trees_close(a, b, rtol, atol=0.0):
    """Same structure, and leaves close to ``rtol`` and ``atol``."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------- a float64 problem for transcriptions
# Least squares with a sine term: the gradient depends on the params, and
# NumPy computes it for transcriptions of authors' code (DoG, D-Adaptation).

LSQ_STEPS = 100
LSQ_TOL = 1e-10
_LSQ_RNG = np.random.default_rng(0)
_LSQ_X = _LSQ_RNG.normal(size=(16, 5))
_LSQ_Y = _LSQ_RNG.normal(size=(16, 3))
LSQ_START = {
    "w": 0.5 * _LSQ_RNG.normal(size=(5, 3)),
    "b": 0.1 * _LSQ_RNG.normal(size=(3,)),
}


def lsq_loss(params):
    r = jnp.asarray(_LSQ_X) @ params["w"] + params["b"] - jnp.asarray(_LSQ_Y)
    return jnp.mean(r**2) + 0.1 * jnp.sum(jnp.sin(3 * params["w"]))


def lsq_grad_np(p):
    r = _LSQ_X @ p["w"] + p["b"] - _LSQ_Y
    return {
        "w": 2 * _LSQ_X.T @ r / r.size + 0.3 * np.cos(3 * p["w"]),
        "b": 2 * r.sum(axis=0) / r.size,
    }


def lsq_run(tx, steps=LSQ_STEPS, start=None):
    """The trajectory of ``tx`` from LSQ_START in float64: a list of param dicts."""
    params = jax.tree.map(jnp.asarray, LSQ_START)

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(lsq_loss)(p), s, p)
        p = adamx.apply_updates(p, u)
        return (p, s), p

    @jax.jit
    def go(p):
        state = tx.init(p if start is None else start)
        return jax.lax.scan(body, (p, state), length=steps)[1]

    out = jax.tree.map(np.asarray, go(params))
    return [{k: v[i] for k, v in out.items()} for i in range(steps)]


def assert_lsq_runs_close(ours, theirs, tol=LSQ_TOL):
    worst = max(
        float(np.max(np.abs(a[k] - b[k])))
        for a, b in zip(ours, theirs, strict=True)
        for k in a
    )
    assert worst <= tol, worst
    moved = max(float(np.max(np.abs(ours[-1][k] - LSQ_START[k]))) for k in LSQ_START)
    assert moved > 1e-3, moved  # the run went somewhere
    return worst


def xla_flags(devices: int, default_codegen: bool = False) -> str:
    """This process's ``XLA_FLAGS`` for a subprocess with ``devices`` host devices
    (``default_codegen``: with XLA's fusion emitters, as :data:`DEFAULT_CODEGEN`)."""
    count = "--xla_force_host_platform_device_count"
    flags = os.environ.get("XLA_FLAGS", "").split()
    drop = (count, _EMITTERS) if default_codegen else (count,)
    others = [f for f in flags if not f.startswith(drop)]
    return " ".join([f"{count}={devices}", *others])
