"""Tests of adamx/moments.py and adamx/storage.py's part in it: a transformation
built from the skeleton gets storage, hyperparameters in state and complex
params from the framework, and complex params get Optax's numbers."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_bitwise_equal, assert_trees_close
from optimizer_table import CORE, OPTIMIZERS, ids

import adamx
from adamx.moments import LeafStep, abs_sq, moment_transform
from adamx.storage import Moment, Storage

# ------------------------------------------------- a transformation of its own


class ScaleByMeanAbsState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


def scale_by_mean_abs(decay=0.9, eps=1e-8, *, state_bits=None):
    """A made-up transformation: g over a moving average of |g|, with momentum."""
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g, m, a):
        m = x.h.decay * m + (1 - x.h.decay) * g
        a = x.h.decay * a + (1 - x.h.decay) * jnp.abs(g)
        return m / (a + x.h.eps), m, a

    return moment_transform(
        ScaleByMeanAbsState,
        [Moment("mu"), Moment("nu", signed=False)],
        storage,
        body,
        name="scale_by_mean_abs",
        hyperparams={"decay": decay, "eps": eps},
    )


def numpy_mean_abs(grads, decay=0.9, eps=1e-8):
    m = np.zeros_like(grads[0])
    a = np.zeros_like(grads[0])
    out = []
    for g in grads:
        m = decay * m + (1 - decay) * g
        a = decay * a + (1 - decay) * np.abs(g)
        out.append(m / (a + eps))
    return out


def grads(shape=(64, 100), steps=5, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.normal(size=shape).astype(dtype) for _ in range(steps)]


def test_a_new_transformation_is_its_state_and_body(x64):
    gs = grads(dtype=np.float64)
    tx = scale_by_mean_abs()
    state = tx.init(jnp.zeros(gs[0].shape))
    for g, want in zip(gs, numpy_mean_abs(gs), strict=True):
        got, state = jax.jit(tx.update)(jnp.asarray(g), state)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    assert int(state.count) == len(gs)


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_it_gets_low_bit_storage_for_free(bits):
    gs = grads()
    tx = scale_by_mean_abs(state_bits=bits)
    state = tx.init(jnp.zeros(gs[0].shape))
    if bits == 16:
        assert state.mu.dtype == state.nu.dtype == jnp.bfloat16
    else:
        assert isinstance(state.mu, adamx.QuantizedArray) and state.mu.bits == bits
        assert state.nu.format.code_map != state.mu.format.code_map
    assert adamx.traits_of(tx).elementwise is (bits == 16)
    for g, want in zip(gs, numpy_mean_abs(gs), strict=True):
        got, state = jax.jit(tx.update)(jnp.asarray(g), state)
        # The update is a ratio of two moments in [-1, 1]: their quantization
        # error, not the formula, sets the difference.
        tol = {16: 0.02, 8: 0.06, 4: 0.6}[bits]
        assert np.median(np.abs(np.asarray(got) - want)) < tol


def test_its_hyperparameters_inject_bitwise():
    gs = grads()
    plain = scale_by_mean_abs(0.8)
    injected = adamx.inject_hyperparams(scale_by_mean_abs)(0.8)
    a, b = plain.init(jnp.zeros(gs[0].shape)), injected.init(jnp.zeros(gs[0].shape))
    assert sorted(b.hyperparams) == ["decay", "eps"]
    for g in gs:
        u, a = plain.update(jnp.asarray(g), a)
        v, b = injected.update(jnp.asarray(g), b)
        assert_bitwise_equal(u, v)
    assert_bitwise_equal(a, b.inner_state)


def test_its_trees_are_checked():
    tx = scale_by_mean_abs()
    state = tx.init({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="state.mu"):
        tx.update({"v": jnp.zeros(3)}, state)


# ------------------------------------------------------------ Python numbers


def test_python_numbers_and_integer_params_get_float_moments_and_updates(x64):
    # Optax takes Python numbers as params; an integer one gets float moments
    # here (Optax keeps its second moment int32, truncated) and a float update.
    tx = adamx.adam(0.1)
    params = {"i": 3, "f": 2.5, "a": jnp.array([1, -2], jnp.int32)}
    state = tx.init(params)
    for leaf in jax.tree.leaves(state[0].mu) + jax.tree.leaves(state[0].nu):
        assert leaf.dtype == jnp.float64
    m = {k: np.zeros(np.shape(v)) for k, v in params.items()}
    v = {k: np.zeros(np.shape(v)) for k, v in params.items()}
    for t in range(1, 4):
        grads = {"i": t, "f": -0.5 * t, "a": jnp.array([t, 1 - t], jnp.int32)}
        updates, state = tx.update(grads, state)
        for k, g in grads.items():
            g = np.asarray(g, np.float64)
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g**2
            m_hat, v_hat = m[k] / (1 - 0.9**t), v[k] / (1 - 0.999**t)
            want = -0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
            assert updates[k].dtype == jnp.float64
            np.testing.assert_allclose(updates[k], want, rtol=1e-12)


# ------------------------------------------------------------ complex params


def test_adam_on_a_complex_param_takes_the_modulus_squared():
    # The example of Optax's: v holds |g|^2, so the first step is g / |g|.
    p = jnp.array([1 + 2j], jnp.complex64)
    g = jnp.array([0.3 - 0.4j], jnp.complex64)
    tx = adamx.adam(0.1)
    u, state = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(u, [-0.06 + 0.08j], rtol=1e-6)
    # The second moment is real, in the param's real dtype.
    assert state[0].mu.dtype == jnp.complex64
    assert state[0].nu.dtype == jnp.float32


def complex_params():
    rng = np.random.default_rng(3)

    def c(*shape):
        return jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape))

    return {"w": c(4, 6), "b": c(6)}


def complex_loss(params, x):
    h = x @ params["w"] + params["b"]
    return jnp.sum(jnp.abs(jnp.tanh(h)) ** 2) + 0.01 * jnp.sum(
        jnp.abs(params["w"]) ** 4
    )


# Optax's Lion takes the sign of a complex number as z / |z|, as adamx does;
# every optimizer of the table that Optax has runs on complex params.
@pytest.mark.parametrize("name", ids("optax", without=(*CORE, "real")))
def test_complex_params_get_optaxs_numbers_in_float64(name, x64):
    ours, theirs = OPTIMIZERS[name]()
    if name == "adafactor_momentum_decay":
        # Optax's momentum buffer is float32 by default and drops the
        # imaginary part; adamx keeps it (complex64). Compared where both
        # keep it whole.
        kw = dict(learning_rate=1e-2, momentum=0.9, weight_decay_rate=0.01)
        ours = adamx.adafactor(**kw, dtype_momentum=jnp.complex128)
        theirs = optax.adafactor(**kw, dtype_momentum=jnp.complex128)
    params = complex_params()
    x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 4)))

    def run(tx, apply_updates):
        def step(p, s):
            # The conjugate of the gradient, as Optax's complex tests take it.
            g = jax.tree.map(jnp.conj, jax.grad(complex_loss)(p, x))
            u, s = tx.update(g, s, p)
            return apply_updates(p, u), s

        p, s = params, tx.init(params)
        for _ in range(30):
            p, s = jax.jit(step)(p, s)
        return p

    got = run(ours, adamx.apply_updates)
    want = run(theirs, optax.apply_updates)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert not np.allclose(got["w"], params["w"])


@pytest.mark.parametrize("name", ids("real"))
def test_optimizers_defined_for_real_params_refuse_complex_ones(name):
    with pytest.raises(
        TypeError, match=r"defined for real params.*\['z'\] is complex64"
    ):
        OPTIMIZERS[name].ours().init(
            {"w": jnp.ones(2), "z": jnp.ones(2, jnp.complex64)}
        )


def test_a_real_moment_dtype_keeps_a_complex_params_moment_complex(x64):
    # A real dtype asks for a precision; the imaginary part is not dropped.
    params = {"w": jnp.zeros(3, jnp.complex128)}
    state = adamx.adam(1e-3, mu_dtype=jnp.float32).init(params)
    assert state[0].mu["w"].dtype == jnp.complex64
    assert state[0].nu["w"].dtype == jnp.float64
    state = adamx.adam(1e-3, mu_dtype=jnp.complex128, nu_dtype=jnp.complex64).init(
        {"w": jnp.zeros(3, jnp.complex64)}
    )
    assert state[0].mu["w"].dtype == jnp.complex128
    assert state[0].nu["w"].dtype == jnp.float32


@pytest.mark.parametrize("bits", [16, 8])
def test_low_bit_storage_leaves_complex_params_at_full_precision(bits):
    params = {"z": jnp.zeros((100, 100), jnp.complex64), "w": jnp.zeros((100, 100))}
    state = adamx.adam(1e-3, state_bits=bits).init(params)
    assert state[0].mu["z"].dtype == jnp.complex64
    assert state[0].nu["z"].dtype == jnp.float32
    assert not isinstance(state[0].mu["w"], jax.Array) or bits == 16


def test_abs_sq_is_the_square_for_reals_and_the_modulus_squared_for_complex():
    np.testing.assert_array_equal(abs_sq(jnp.array([-3.0])), [9.0])
    np.testing.assert_allclose(abs_sq(jnp.array([3 - 4j])), [25.0])
    assert abs_sq(jnp.array([3 - 4j])).dtype == jnp.float32
