"""Tests of adamx/soap.py: SOAP against a NumPy transcription of the authors'
code (nikhilvyas/SOAP) in float64 over refreshes of the eigenbases, against
the ``pytorch-optimizer`` port in float32, bad input, storage and composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_bitwise_equal

import adamx


def params_tree(dtype=jnp.float64, seed=0):
    """Square and 3-D leaves (full-rank statistics from the first step, so the
    eigenbases are unique up to sign), a wide one whose long side exceeds
    ``max_precondition_dim`` in the tests, and a vector."""
    rng = np.random.default_rng(seed)
    shapes = {"square": (8, 8), "cube": (4, 3, 5), "wide": (5, 40), "bias": (6,)}
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def grads_at(params, i):
    return jax.tree.map(lambda x: jnp.sin(x + 0.3 * i) + 0.1 * x, params)


class NumpySoap:
    """The authors' SOAP step (nikhilvyas/SOAP, ``soap.py``), transcribed to
    NumPy in float64, its float32 casts left out; one leaf at a time."""

    def __init__(
        self, lr, b1=0.95, b2=0.95, shampoo_beta=None, eps=1e-8, weight_decay=0.01,
        frequency=10, max_dim=10000, precondition_1d=False, normalize=False,
        correct_bias=True,
    ):  # fmt: skip
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.sb = b2 if shampoo_beta is None else shampoo_beta
        self.wd, self.frequency, self.max_dim = weight_decay, frequency, max_dim
        self.precondition_1d, self.normalize = precondition_1d, normalize
        self.correct_bias = correct_bias
        self.state = {}

    def project(self, x, qs, back=False):
        for q in qs:
            if q is None:
                x = np.moveaxis(x, 0, -1)
            else:
                x = np.tensordot(x, q, axes=([0], [1 if back else 0]))
        return x

    def update_preconditioner(self, g, st):
        for idx, gg in enumerate(st["GG"]):
            if gg is None:
                continue
            others = [a for a in range(g.ndim) if a != idx]
            outer = np.tensordot(g, g, axes=(others, others))
            st["GG"][idx] = gg + (1 - self.sb) * (outer - gg)
        if st["Q"] is None:
            st["Q"] = [
                None if m is None
                else np.flip(np.linalg.eigh(m + 1e-30 * np.eye(len(m)))[1], axis=1)
                for m in st["GG"]
            ]  # fmt: skip
        if st["step"] > 0 and st["step"] % self.frequency == 0:
            v = st["exp_avg_sq"]
            for idx, (m, o) in enumerate(zip(st["GG"], st["Q"], strict=True)):
                if m is None:
                    continue
                est = np.diag(o.T @ m @ o)
                order = np.argsort(-est, kind="stable")
                v = np.take(v, order, axis=idx)
                st["Q"][idx] = np.linalg.qr((m @ o)[:, order])[0]
            st["exp_avg_sq"] = v

    def step(self, key, p, g):
        st = self.state.get(key)
        if st is None:
            rotate_vector = self.precondition_1d and g.shape[0] <= self.max_dim
            dims = [
                (d <= self.max_dim) if g.ndim > 1 else rotate_vector for d in g.shape
            ]
            st = self.state[key] = {
                "step": 0,
                "exp_avg": np.zeros_like(g),
                "exp_avg_sq": np.zeros_like(g),
                "GG": [
                    np.zeros((d, d)) if r else None
                    for d, r in zip(g.shape, dims, strict=True)
                ],
                "Q": None,
            }
            self.update_preconditioner(g, st)
            return p  # the first step only measures
        gp = self.project(g, st["Q"])
        st["step"] += 1
        st["exp_avg"] = self.b1 * st["exp_avg"] + (1 - self.b1) * g
        st["exp_avg_sq"] = self.b2 * st["exp_avg_sq"] + (1 - self.b2) * gp**2
        denom = np.sqrt(st["exp_avg_sq"]) + self.eps
        step_size = self.lr
        if self.correct_bias:
            t = st["step"]
            step_size *= np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        direction = self.project(
            self.project(st["exp_avg"], st["Q"]) / denom, st["Q"], back=True
        )
        if self.normalize:
            direction = direction / (1e-30 + np.sqrt(np.mean(direction**2)))
        p = p - step_size * direction
        p = p - self.lr * self.wd * p
        self.update_preconditioner(g, st)
        return p


def run_adamx(tx, params, steps):
    @jax.jit
    def step(p, s, i):
        u, s = tx.update(grads_at(p, i), s, p)
        return adamx.apply_updates(p, u), s

    state, out = tx.init(params), []
    for i in range(steps):
        params, state = step(params, state, i)
        out.append(params)
    return out


def run_numpy(ref, params, steps):
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = []
    for i in range(steps):
        grads = {k: np.asarray(v) for k, v in grads_at(params, i).items()}
        params = {k: ref.step(k, params[k], grads[k]) for k in params}
        out.append(params)
    return out


# The wide leaf's long side (40) stays unrotated (max_precondition_dim=32): its
# 40 x 40 statistics have rank 5, and the eigenvectors of a repeated eigenvalue
# are any basis of its space, so no two implementations need agree there.
# Vectors are unrotated for the same reason (precondition_1d: rank 1).
CASES = {
    "refresh_every_10": ({}, {}),
    "refresh_every_5": ({"precondition_frequency": 5}, {"frequency": 5}),
    "betas_and_decay": (
        {"b1": 0.9, "b2": 0.99, "shampoo_beta": 0.8, "weight_decay": 0.1, "eps": 1e-6},
        {"b1": 0.9, "b2": 0.99, "shampoo_beta": 0.8, "weight_decay": 0.1, "eps": 1e-6},
    ),
    "normalized_no_bias_correction": (
        {"normalize_grads": True, "correct_bias": False, "precondition_frequency": 4},
        {"normalize": True, "correct_bias": False, "frequency": 4},
    ),
    "refresh_every_step": ({"precondition_frequency": 1}, {"frequency": 1}),
    # With state_bits 8 the first moment is kept in the eigenbasis (rotated
    # along at each refresh); on leaves too small to quantize it is stored
    # exactly, and the step is the same.
    "momentum_in_the_eigenbasis": (
        {"state_bits": 8, "precondition_frequency": 3},
        {"frequency": 3},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_soap_matches_the_authors_algorithm_in_float64(x64, case):
    ours, theirs = CASES[case]
    params = params_tree()
    got = run_adamx(adamx.soap(3e-3, max_precondition_dim=32, **ours), params, 32)
    want = run_numpy(NumpySoap(3e-3, max_dim=32, **theirs), params, 32)
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-10, err_msg=(t, k))
    for k in params:
        assert not np.allclose(got[-1][k], params[k]), k


def test_soap_follows_the_pytorch_optimizer_port_in_float32():
    torch = pytest.importorskip("torch")
    port = pytest.importorskip("pytorch_optimizer")
    params = params_tree(jnp.float32)
    weights = {
        k: torch.nn.Parameter(torch.tensor(np.asarray(v))) for k, v in params.items()
    }
    opt = port.SOAP(
        list(weights.values()),
        lr=3e-3,
        precondition_frequency=4,
        max_precondition_dim=32,
    )
    tx = adamx.soap(3e-3, precondition_frequency=4, max_precondition_dim=32)
    got = run_adamx(tx, params, 24)
    for i in range(24):
        grads = grads_at(
            {k: jnp.asarray(w.detach().numpy()) for k, w in weights.items()}, i
        )
        for k, w in weights.items():
            w.grad = torch.tensor(np.asarray(grads[k]))
        opt.step()
    for k, w in weights.items():
        theirs = w.detach().numpy()
        moved = np.abs(theirs - np.asarray(params[k])).max()
        apart = np.abs(np.asarray(got[-1][k]) - theirs).max()
        assert apart < 1e-3 * max(moved, 1e-3), (k, apart, moved)


def test_the_first_step_measures_and_the_bases_are_eigenvectors(x64):
    params = params_tree()
    tx = adamx.scale_by_soap()
    g = grads_at(params, 0)
    u, state = tx.update(g, tx.init(params))
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
    square = np.asarray(g["square"])
    stats = state.stats["square"]
    np.testing.assert_allclose(stats[0], 0.05 * square @ square.T, atol=1e-12)
    np.testing.assert_allclose(stats[1], 0.05 * square.T @ square, atol=1e-12)
    q = np.asarray(state.bases["square"][0])
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-12)
    eig = np.diag(q.T @ np.asarray(stats[0]) @ q)
    assert np.all(np.diff(eig) <= 1e-12), "columns by decreasing eigenvalue"
    assert state.bases["bias"] == (None,)  # a vector is Adam's


def test_8_bit_moments_store_codes_and_train_like_float32():
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)
    params = {"w": jnp.zeros((64, 64))}

    def loss(p):
        return jnp.mean((p["w"] - target) ** 2)

    def train(tx):
        p, s = params, tx.init(params)
        step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
        for _ in range(100):
            u, s = step(p, s)
            p = adamx.apply_updates(p, u)
        return float(loss(p)), s

    full, full_state = train(adamx.soap(0.05, weight_decay=0.0))
    low, low_state = train(adamx.soap(0.05, weight_decay=0.0, state_bits=8))
    inner = low_state[0]
    assert isinstance(inner.mu["w"], adamx.QuantizedArray)
    assert isinstance(inner.nu["w"], adamx.QuantizedArray)
    assert adamx.state_nbytes(inner.mu) <= 0.3 * adamx.state_nbytes(full_state[0].mu)
    assert full < 0.5 * float(loss(params))
    assert abs(low / full - 1) < 0.1, (low, full)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"b1": 1.0}, r"b1 must be in \[0.0, 1.0\), got 1.0"),
        ({"b2": -0.5}, r"b2 must be in \[0.0, 1.0\), got -0.5"),
        ({"shampoo_beta": 1.5}, r"shampoo_beta must be in \[0.0, 1.0\), got 1.5"),
        ({"eps": -1e-8}, r"eps must be in \[0.0, inf\)"),
        ({"weight_decay": -0.1}, r"weight_decay must be in \[0.0, inf\)"),
        ({"precondition_frequency": 0}, r"precondition_frequency must be > 0, got 0"),
        ({"max_precondition_dim": 2.5}, r"max_precondition_dim must be an integer"),
        ({"precondition_1d": "yes"}, r"precondition_1d must be a bool"),
        ({"precondition_dtype": jnp.int32}, r"precondition_dtype must be a floating"),
        ({"state_bits": 3}, r"state_bits must be one of"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        adamx.soap(3e-3, **kwargs)


def test_a_flat_layout_and_complex_params_are_refused():
    flat = adamx.ravel({"w": jnp.zeros((4, 4))})
    with pytest.raises(TypeError, match="scale_by_soap works leaf by leaf"):
        adamx.scale_by_soap().init(flat)
    with pytest.raises(TypeError, match=r"defined for real params; params\['z'\]"):
        adamx.soap(3e-3).init({"z": jnp.ones((2, 2), jnp.complex64)})


def run(tx, params, steps=6):
    @jax.jit
    def step(p, s, i):
        u, s = tx.update(grads_at(p, i), s, p)
        return adamx.apply_updates(p, u), s

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, i)
    return params, state


def test_injected_hyperparameters_are_bitwise_the_plain_ones():
    params = params_tree(jnp.float32)
    kw = {"b1": 0.9, "weight_decay": 0.05, "precondition_frequency": 2}
    plain, _ = run(adamx.soap(3e-3, **kw), params)
    injected, state = run(adamx.inject_hyperparams(adamx.soap)(3e-3, **kw), params)
    assert_bitwise_equal(injected, plain)
    assert {"learning_rate", "b1", "b2", "weight_decay"} <= set(state.hyperparams)


def test_bfloat16_preconditioners_follow_float32_ones():
    params = params_tree(jnp.float32)
    full, _ = run(adamx.soap(3e-3, precondition_frequency=2), params)
    low, state = run(
        adamx.soap(3e-3, precondition_frequency=2, precondition_dtype=jnp.bfloat16),
        params,
    )
    assert state[0].bases["square"][0].dtype == jnp.bfloat16
    assert state[0].mu["square"].dtype == jnp.float32
    for k in params:
        moved = np.abs(np.asarray(full[k]) - np.asarray(params[k])).max()
        apart = np.abs(np.asarray(low[k]) - np.asarray(full[k])).max()
        assert apart < 0.2 * moved, (k, apart, moved)


def test_bfloat16_params_keep_their_dtype_and_float32_state():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params_tree(jnp.float32))
    new, state = run(adamx.soap(0.05, precondition_frequency=2), params)
    for k in params:
        assert new[k].dtype == jnp.bfloat16
        assert bool(jnp.all(jnp.isfinite(new[k])))
        assert not bool(jnp.all(new[k] == params[k])), k
    assert state[0].stats["square"][0].dtype == jnp.float32


def test_a_donated_state_steps():
    # The statistics and the bases start as zeros of one shape: each its own
    # buffer, or donating the state would donate one buffer twice.
    params = params_tree(jnp.float32)
    tx = adamx.soap(3e-3)

    def step(p, s, i):
        u, s = tx.update(grads_at(p, i), s, p)
        return adamx.apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    for i in range(3):
        p, s = donated(p, s, i)
    want, _ = run(tx, params, steps=3)
    assert_bitwise_equal(p, want)
