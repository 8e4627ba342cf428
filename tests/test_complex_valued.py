"""Tests of adamx/complex_valued.py: split_real_and_imaginary against Optax's
own object in float64, and against the inner optimizer run on the real and
imaginary parts as real params."""

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
F64 = {"rtol": 1e-10, "atol": 1e-12}
RNG = np.random.default_rng(0)
TARGET = RNG.normal(size=(3, 4)) + 1j * RNG.normal(size=(3, 4))
START = {
    "z": RNG.normal(size=(3, 4)) + 1j * RNG.normal(size=(3, 4)),
    "r": RNG.normal(size=(4,)),
}


def complex_loss(params, t):
    """A real loss of a complex matrix and a real vector; changes with t."""
    z, r = params["z"], params["r"]
    fit = jnp.abs(z @ (1.0 + r) - TARGET @ jnp.ones(4) * (1 + 0.01 * t)) ** 2
    return jnp.sum(fit) + 0.1 * jnp.sum(jnp.abs(z) ** 4) + jnp.sum(jnp.sin(r))


def run(tx, apply_updates, params, steps=STEPS):
    """Steps with the conjugated gradients (the parts' gradients as x + iy)."""

    @jax.jit
    def step(params, state, t):
        grads = jax.tree.map(jnp.conj, jax.grad(complex_loss)(params, t))
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    state = tx.init(params)
    for t in range(steps):
        params, state = step(params, state, jnp.asarray(float(t)))
    return params, state


def start(dtype=jnp.complex128):
    real = jnp.finfo(dtype).dtype
    return {"z": jnp.asarray(START["z"], dtype), "r": jnp.asarray(START["r"], real)}


INNER = {
    "adamw": (
        lambda: adamx.adamw(1e-2, weight_decay=0.1),
        lambda: optax.adamw(1e-2, weight_decay=0.1),
    ),
    "lion": (lambda: adamx.lion(1e-3), lambda: optax.lion(1e-3)),
    "adopt": (lambda: adamx.adopt(1e-2), lambda: optax.contrib.adopt(1e-2)),
}


@pytest.mark.parametrize("inner", INNER.values(), ids=INNER)
def test_matches_optax_in_float64(x64, inner):
    ours_inner, theirs_inner = inner
    params = start()
    ours, our_state = run(
        adamx.split_real_and_imaginary(ours_inner()), adamx.apply_updates, params
    )
    theirs, their_state = run(
        optax.contrib.split_real_and_imaginary(theirs_inner()),
        optax.apply_updates,
        params,
    )
    assert ours["z"].dtype == jnp.complex128 and ours["r"].dtype == jnp.float64
    assert_trees_close(ours, theirs, **F64)
    assert not np.allclose(ours["z"], params["z"])
    assert type(our_state).__name__ == type(their_state).__name__
    # The inner moments hold a pair of parts where the param is complex.
    ours_mu = jax.tree.leaves(our_state.inner_state[0])
    theirs_mu = jax.tree.leaves(their_state.inner_state[0])
    for a, b in zip(ours_mu, theirs_mu, strict=True):
        np.testing.assert_allclose(a, b, **F64)


def test_equals_the_inner_optimizer_on_the_parts(x64):
    # The definition: Adam on z = x + iy, split, is Adam on (x, y) as real
    # params, whose gradients jax.grad gives directly.
    params = start()
    ours, _ = run(
        adamx.split_real_and_imaginary(adamx.adam(1e-2)), adamx.apply_updates, params
    )

    def parts_loss(p, t):
        return complex_loss({"z": p["x"] + 1j * p["y"], "r": p["r"]}, t)

    tx = adamx.adam(1e-2)

    @jax.jit
    def step(p, s, t):
        u, s = tx.update(jax.grad(parts_loss)(p, t), s, p)
        return adamx.apply_updates(p, u), s

    p = {"x": params["z"].real, "y": params["z"].imag, "r": params["r"]}
    s = tx.init(p)
    for t in range(STEPS):
        p, s = step(p, s, jnp.asarray(float(t)))
    np.testing.assert_allclose(ours["z"], p["x"] + 1j * p["y"], **F64)
    np.testing.assert_allclose(ours["r"], p["r"], **F64)


def test_differs_from_adam_on_the_complex_leaf():
    # Adam on the complex leaf normalizes by |g|, on the parts by each part.
    g = jnp.array([3.0 + 0.1j])
    split = adamx.split_real_and_imaginary(adamx.scale_by_adam())
    whole = adamx.scale_by_adam()
    u_split, _ = split.update(g, split.init(g))
    u_whole, _ = whole.update(g, whole.init(g))
    np.testing.assert_allclose(u_split, [1.0 + 1.0j], rtol=1e-6)
    np.testing.assert_allclose(u_whole, g / jnp.abs(g), rtol=1e-6)


def test_real_params_pass_through_bitwise():
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.cos(p) * 0.3, params)
    split = adamx.split_real_and_imaginary(adamx.adamw(1e-2, weight_decay=0.1))
    plain = adamx.adamw(1e-2, weight_decay=0.1)
    u1, s1 = split.update(grads, split.init(params), params)
    u2, s2 = plain.update(grads, plain.init(params), params)
    assert_bitwise_equal(u1, u2)
    assert_bitwise_equal(s1.inner_state, s2)


def test_state_holds_pairs_and_dtypes_are_kept(strict_promotion):
    params = {"z": jnp.ones(3, jnp.complex64), "frozen": None}
    tx = adamx.split_real_and_imaginary(adamx.adam(1e-2))
    state = tx.init(params)
    pair = state.inner_state[0].mu["z"]
    assert isinstance(pair, adamx.SplitRealAndImaginaryArrays)
    assert pair.real.dtype == pair.imaginary.dtype == jnp.float32
    grads = {"z": jnp.full(3, 1.0 - 2.0j, jnp.complex64), "frozen": None}
    updates, new = jax.jit(tx.update)(grads, state, params)
    assert updates["z"].dtype == jnp.complex64 and updates["frozen"] is None
    assert jax.tree.structure(new) == jax.tree.structure(state)
    np.testing.assert_allclose(updates["z"], [-0.01 + 0.01j] * 3, rtol=1e-5)


def test_extra_arguments_reach_the_inner_transformation():
    tx = adamx.split_real_and_imaginary(adamx.reduce_on_plateau(factor=0.5, patience=1))
    z = jnp.ones(2, jnp.complex64)
    state = tx.init(z)
    for value in [1.0, 2.0]:
        updates, state = tx.update(z * (2 - 4j), state, value=value)
    np.testing.assert_allclose(updates, [1.0 - 2.0j] * 2)


def test_arguments_follow_optax():
    a = inspect.signature(adamx.split_real_and_imaginary).parameters
    b = inspect.signature(optax.contrib.split_real_and_imaginary).parameters
    assert list(a) == list(b)
    assert (
        adamx.SplitRealAndImaginaryState._fields
        == optax.contrib.SplitRealAndImaginaryState._fields
    )
    with pytest.raises(TypeError, match="inner must be a GradientTransformation"):
        adamx.split_real_and_imaginary(3)
