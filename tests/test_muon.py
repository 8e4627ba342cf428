"""Tests of adamx/muon.py: Muon against ``optax.contrib.muon`` in float64 for
every option, Newton-Schulz against its closed form (the polynomial of each
singular value) and a NumPy transcription, against ``torch.optim.Muon``,
8-bit state, bad input, composition with the wrappers, and the sharded step
that orthogonalizes whole matrices per device."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import DEFAULT_CODEGEN, assert_bitwise_equal, assert_trees_close
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx.sharding import bytes_per_device, sharded

D = adamx.MuonDimensionNumbers
OD = optax.contrib.MuonDimensionNumbers


def params_tree(dtype=jnp.float64, seed=0):
    """A tall and a wide matrix, a conv kernel, a bias and two stacked layers."""
    rng = np.random.default_rng(seed)
    shapes = {
        "tall": (6, 4),
        "wide": (4, 9),
        "conv": (3, 3, 2, 5),
        "bias": (5,),
        "stack": (2, 4, 4),
    }
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def dims(cls):
    """Dimension numbers for ``params_tree``: the conv kernel's (h, w, in) are
    its fan-in, the stack's first axis a batch of layers; the bias to AdamW."""
    return {
        "tall": cls(),
        "wide": cls(),
        "conv": cls((0, 1, 2), 3),
        "bias": None,
        "stack": cls(1, 2),
    }


def grads_at(params, i):
    """A gradient that depends on the params and the step, smoothly (so that
    a rounding difference is not amplified from step to step)."""
    return jax.tree.map(lambda x: jnp.sin(x + 0.3 * i) + 0.1 * x, params)


def trajectory(tx, params, steps=60):
    """The params after each of ``steps`` jitted steps."""

    @jax.jit
    def step(p, s, i):
        u, s = tx.update(grads_at(p, i), s, p)
        return optax.apply_updates(p, u), s

    state, out = tx.init(params), []
    for i in range(steps):
        params, state = step(params, state, i)
        out.append(params)
    return out


def close_trajectories(a, b, atol):
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=0, atol=atol, err_msg=(t, k))


# ------------------------------------------------ optax.contrib.muon, float64

_OPTAX_SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 60)
SCHEDULE = {
    "adamx": adamx.warmup_cosine_decay_schedule(0.0, 0.02, 10, 60),
    # Optax's schedules compute in the count's precision (int32: float32);
    # adamx's in the default float's. Fed a float64 count, they agree.
    "optax": lambda count: _OPTAX_SCHEDULE(jnp.asarray(count, jnp.float64)),
}

CASES = {
    "defaults": {},
    "no_nesterov": {"nesterov": False},
    "adaptive": {"adaptive": True},
    "spectral": {"preconditioning": "spectral"},
    "aol": {"preconditioning": "aol"},
    "schatten": {"preconditioning": "schatten"},
    "dion_preset": {"ns_coeffs": "dion"},
    "per_step_coefficients": {"ns_coeffs": adamx.NS_COEFFS["polar_express"]},
    "three_steps": {"ns_steps": 3, "ns_coeffs": (3.0, -3.2, 1.2)},
    "consistent_rms": {"consistent_rms": 0.2},
    "mu_dtype": {"mu_dtype": jnp.float32},
    "adam_arguments": {
        "beta": 0.9,
        "eps": 1e-6,
        "weight_decay": 0.1,
        "adam_b1": 0.8,
        "adam_b2": 0.99,
        "adam_eps_root": 1e-6,
        "adam_weight_decay": 0.05,
        "adam_learning_rate": 0.003,
    },
    "weight_decay_mask": {
        "weight_decay": 0.1,
        "weight_decay_mask": {
            "tall": True,
            "wide": False,
            "conv": True,
            "bias": True,
            "stack": True,
        },
    },
    "dimension_numbers": {"muon_weight_dimension_numbers": "tree"},
    "dimension_numbers_fn": {"muon_weight_dimension_numbers": "fn"},
    "dimension_numbers_consistent_rms": {
        "muon_weight_dimension_numbers": "tree",
        "consistent_rms": 0.2,
    },
    "schedule": {"learning_rate": "schedule"},
}


def arguments(case, lib):
    """The case's keyword arguments for ``lib``'s muon."""
    kw = {"learning_rate": 0.02, **CASES[case]}
    cls = D if lib == "adamx" else OD
    spec = kw.get("muon_weight_dimension_numbers")
    if spec == "tree":
        kw["muon_weight_dimension_numbers"] = dims(cls)
    elif spec == "fn":
        kw["muon_weight_dimension_numbers"] = lambda p: dims(cls)
    if kw["learning_rate"] == "schedule":
        kw["learning_rate"] = SCHEDULE[lib]
    return kw


# Moments stored in float32: adamx steps from the moment as it is stored,
# Optax from its value before rounding, so they differ by float32 roundings.
TOLERANCE = {"mu_dtype": 1e-6}


@pytest.mark.parametrize("case", list(CASES))
def test_muon_matches_optax_in_float64(x64, case):
    params = params_tree()
    ours = trajectory(adamx.muon(**arguments(case, "adamx")), params)
    theirs = trajectory(optax.contrib.muon(**arguments(case, "optax")), params)
    close_trajectories(ours, theirs, atol=TOLERANCE.get(case, 1e-10))
    # Every leaf moved, so every group was compared.
    for k in params:
        assert not np.allclose(ours[-1][k], params[k]), k


@pytest.mark.parametrize("preconditioning", ["frobenius", "aol"])
def test_scale_by_muon_alone_matches_optax_on_n_d_leaves(x64, preconditioning):
    params = {k: v for k, v in params_tree().items() if k != "bias"}
    spec = {k: v for k, v in dims(D).items() if k != "bias"}
    their_spec = {k: v for k, v in dims(OD).items() if k != "bias"}
    ours = trajectory(
        adamx.chain(
            adamx.scale_by_muon(
                weight_dimension_numbers=spec, preconditioning=preconditioning
            ),
            adamx.scale(-0.01),
        ),
        params,
    )
    theirs = trajectory(
        optax.chain(
            optax.contrib.scale_by_muon(
                weight_dimension_numbers=their_spec, preconditioning=preconditioning
            ),
            optax.scale(-0.01),
        ),
        params,
    )
    close_trajectories(ours, theirs, atol=1e-10)


def test_the_state_is_optaxs_with_its_fields(x64):
    params = params_tree()
    ours = adamx.muon(0.02).init(params)
    theirs = optax.contrib.muon(0.02).init(params)
    inner = ours.inner_states["muon"].inner_state[0]
    assert isinstance(inner, adamx.ScaleByMuonState)
    their_inner = theirs.inner_states["muon"].inner_state[0]
    assert inner._fields == their_inner._fields == ("count", "mu", "ns_coeffs")
    np.testing.assert_array_equal(inner.ns_coeffs, their_inner.ns_coeffs)


# ----------------------------------------------------------- Newton-Schulz


def ns_numpy(g, coeffs, steps, pre="frobenius", eps=1e-8):
    """The iteration as the reference code writes it (Keller Jordan's Muon; AOL
    as Turbo-Muon; Schatten-4 as Grishina et al.), one matrix, float64."""
    transposed = g.shape[0] > g.shape[1]
    x = g.T if transposed else g
    if pre == "frobenius":
        x = x / (np.linalg.norm(x) + eps)
    elif pre == "spectral":
        x = x / (np.linalg.norm(x, 2) + eps)
    rows = np.asarray(coeffs, np.float64)
    rows = rows if rows.ndim == 2 else np.tile(rows, (steps, 1))
    for i, (a, b, c) in enumerate(rows):
        A = x @ x.T
        if i == 0 and pre == "aol":
            s = 1 / np.sqrt(np.maximum(np.abs(A).sum(axis=1), eps))
            x, A = s[:, None] * x, s[:, None] * A * s[None, :]
        elif i == 0 and pre == "schatten":
            s = 1 / np.sqrt(max(np.linalg.norm(A), eps))
            x, A = s * x, s * s * A
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if transposed else x


def iterated(preset, x):
    """The scalar map the iteration applies to each normalized singular value."""
    rows = np.asarray(adamx.NS_COEFFS[preset], np.float64)
    rows = rows if rows.ndim == 2 else np.tile(rows, (5, 1))
    for a, b, c in rows:
        x = a * x + b * x**3 + c * x**5
    return x


@pytest.mark.parametrize("preset", list(adamx.NS_COEFFS))
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_newton_schulz_maps_each_singular_value_by_its_polynomial(x64, preset, shape):
    g = np.random.default_rng(1).normal(size=shape)
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    want = u @ np.diag(iterated(preset, s / (np.linalg.norm(g) + 1e-8))) @ vt
    got = adamx.orthogonalize_via_newton_schulz(jnp.asarray(g), preset)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pre", ["frobenius", "spectral", "aol", "schatten"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_newton_schulz_matches_a_numpy_transcription(x64, pre, shape):
    g = np.random.default_rng(2).normal(size=shape)
    coeffs = adamx.NS_COEFFS["standard"]
    want = ns_numpy(g, coeffs, 5, pre)
    got = adamx.orthogonalize_via_newton_schulz(
        jnp.asarray(g), coeffs, preconditioning=pre
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("preset", list(adamx.NS_COEFFS))
def test_singular_values_land_in_the_band_the_coefficients_promise(preset):
    """In float32, on a matrix of condition 100: the band is the polynomial's
    range over the normalized singular values' interval."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.normal(size=(64, 48)))
    v, _ = np.linalg.qr(rng.normal(size=(48, 48)))
    s = np.geomspace(1.0, 0.01, 48)
    g = (u * s) @ v.T
    norm = np.linalg.norm(s)
    grid = np.linspace(s.min() / norm, s.max() / norm, 10_001)
    low, high = iterated(preset, grid).min(), iterated(preset, grid).max()
    q = adamx.orthogonalize_via_newton_schulz(jnp.asarray(g, jnp.float32), preset)
    sv = np.linalg.svd(np.asarray(q, np.float64), compute_uv=False)
    assert low - 2e-3 <= sv.min() and sv.max() <= high + 2e-3, (sv.min(), sv.max())
    # The polar factor's singular vectors: Q is U S' V^T with G's U and V.
    np.testing.assert_allclose(q @ (v * (1 / s)) @ u.T @ g, q, atol=5e-3)


def count_dots(tx, params):
    grads = grads_at(params, 0)
    jaxpr = jax.make_jaxpr(tx.update)(grads, tx.init(params))
    return str(jaxpr).count("dot_general")


def test_same_shape_matrices_are_orthogonalized_as_one_batch(x64):
    rng = np.random.default_rng(4)
    # Six layers' (8, 16), a (16, 8) that joins them transposed, one (5, 7).
    shapes = {f"l{i}": (8, 16) for i in range(6)} | {"t": (16, 8), "o": (5, 7)}
    params = {k: jnp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
    tx = adamx.scale_by_muon()
    # Three matmuls per step, five steps, once per shape: 2 shapes, not 8 leaves.
    assert count_dots(tx, params) == 2 * 3 * 5
    updates, _ = tx.update(grads_at(params, 0), tx.init(params))
    for k in params:
        g = np.asarray(grads_at(params, 0)[k])
        beta = 0.95
        nesterov = beta * (1 - beta) * g / (1 - beta**2) + (1 - beta) * g / (1 - beta)
        want = ns_numpy(nesterov, adamx.NS_COEFFS["standard"], 5)
        np.testing.assert_allclose(updates[k], want, rtol=0, atol=1e-11, err_msg=k)


def test_bfloat16_matmuls_accumulate_in_float32_and_stay_close():
    g = jnp.asarray(np.random.default_rng(5).normal(size=(64, 96)), jnp.float32)
    low = adamx.orthogonalize_via_newton_schulz(g, "standard", ns_dtype=jnp.bfloat16)
    full = adamx.orthogonalize_via_newton_schulz(g, "standard")
    assert low.dtype == jnp.float32
    rel = np.linalg.norm(low - full) / np.linalg.norm(full)
    assert 1e-4 < rel < 5e-2, rel  # rounded as bfloat16 is, and no further
    text = (
        jax.jit(
            lambda x: adamx.orthogonalize_via_newton_schulz(
                x, "standard", ns_dtype=jnp.bfloat16
            )
        )
        .lower(g)
        .as_text()
    )
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) == 15
    for line in dots:
        assert re.search(r"tensor<(\d+x)+bf16>, tensor<(\d+x)+bf16>\)", line), line
        assert line.rstrip().endswith("xf32>"), line


@pytest.mark.parametrize("ns_dtype", [jnp.bfloat16, None])
def test_matches_torch_muon_within_its_bfloat16_precision(ns_dtype):
    """``torch.optim.Muon`` (torch 2.13) runs the iteration in bfloat16 and its
    momentum without bias correction; without Nesterov the correction is a scale
    the iteration's normalization removes, so the two agree but for rounding.
    Its weights are (out, in): adamx's transposed."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    w0 = (rng.normal(size=(32, 48)) * 0.1).astype(np.float32)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    y = rng.normal(size=(64, 48)).astype(np.float32)

    def grad(w):
        return x.T @ (x @ w - y) / 64

    weight = torch.nn.Parameter(torch.tensor(w0.T.copy()))
    opt = torch.optim.Muon([weight], lr=0.02, weight_decay=0.1, nesterov=False)
    tx = adamx.muon(0.02, nesterov=False, weight_decay=0.1, eps=1e-7, ns_dtype=ns_dtype)
    params = {"w": jnp.asarray(w0)}
    state, update = tx.init(params), jax.jit(tx.update)
    for _ in range(30):
        g = grad(np.asarray(params["w"]))
        weight.grad = torch.tensor(grad(weight.detach().numpy().T).T.copy())
        opt.step()
        u, state = update({"w": jnp.asarray(g)}, state, params)
        params = adamx.apply_updates(params, u)
        theirs = weight.detach().numpy().T
        apart = np.abs(np.asarray(params["w"]) - theirs).max()
        moved = np.abs(theirs - w0).max()
        assert apart < 0.04 * moved, (apart, moved)


# ------------------------------------------------------------- 8-bit state


def least_squares(tx, steps=100):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(256, 128)), jnp.float32)
    w_true = rng.normal(size=(128, 96)) / np.sqrt(128)
    y = jnp.asarray(x @ w_true + 0.1 * rng.normal(size=(256, 96)), jnp.float32)
    params = {"w": jnp.zeros((128, 96)), "b": jnp.zeros(96)}

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return adamx.apply_updates(p, u), s, value

    state = tx.init(params)
    first = float(loss(params))
    for _ in range(steps):
        params, state, _ = step(params, state)
    return first, float(loss(params)), adamx.state_nbytes(state)


def test_8_bit_state_is_a_third_and_reaches_the_same_loss():
    first, full, full_bytes = least_squares(adamx.muon(0.02))
    _, low, low_bytes = least_squares(adamx.muon(0.02, state_bits=8))
    assert low_bytes <= 0.35 * full_bytes, (low_bytes, full_bytes)
    assert abs(low / full - 1) < 0.05, (low, full)
    assert full < 0.1 * first, (first, full)  # it trained


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ns_steps": 0}, r"ns_steps must be > 0, got 0"),
        ({"ns_steps": 2.5}, r"ns_steps must be an integer, got 2.5"),
        ({"ns_coeffs": (1.0, 2.0)}, r"ns_coeffs must be three numbers.*\(2,\)"),
        ({"ns_coeffs": ((1, 2, 3, 4),)}, r"ns_coeffs .*shape \(1, 4\)"),
        ({"ns_coeffs": "quintic"}, r"ns_coeffs must be a preset name .*'quintic'"),
        ({"ns_coeffs": (1.0, float("nan"), 2.0)}, r"ns_coeffs must be finite"),
        (
            {"ns_coeffs": adamx.NS_COEFFS["dion"], "ns_steps": 3},
            r"5 per-step triples, more than ns_steps=3",
        ),
        ({"beta": 1.0}, r"beta must be in \[0.0, 1.0\), got 1.0"),
        ({"beta": -0.1}, r"beta must be in \[0.0, 1.0\), got -0.1"),
        ({"eps": -1.0}, r"eps must be in \[0.0, inf\), got -1.0"),
        ({"preconditioning": "newton"}, r"preconditioning must be one of .*'newton'"),
        ({"ns_dtype": jnp.float64}, r"ns_dtype .*float64"),
        ({"ns_dtype": jnp.int8}, r"ns_dtype must be a floating dtype"),
        ({"nesterov": 1}, r"nesterov must be a bool, got 1"),
        ({"state_bits": 7}, r"state_bits must be one of"),
        ({"consistent_rms": -0.2}, r"consistent_rms must be in \[0.0, inf\)"),
        ({"muon_weight_dimension_numbers": {"w": (0, 1)}}, r"MuonDimensionNumbers"),
        (
            {"muon_weight_dimension_numbers": D(reduction_axis=0.5)},
            r"axes of .* must be ints",
        ),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        adamx.muon(0.02, **kwargs)


@pytest.mark.parametrize(
    "spec, message",
    [
        (D(0, 2), r"params\['w'\] \(4, 6\): output axis 2 is out of range for rank 2"),
        (D(0, 0), r"params\['w'\] \(4, 6\): reduction axes \(0,\) and output axes"),
        (D(-3, 1), r"params\['w'\] \(4, 6\): reduction axis -3 is out of range"),
    ],
)
def test_dimension_numbers_that_do_not_fit_a_leaf_are_refused_at_init(spec, message):
    with pytest.raises(ValueError, match=message):
        adamx.scale_by_muon(weight_dimension_numbers={"w": spec}).init(
            {"w": jnp.zeros((4, 6))}
        )
    params = {"w": jnp.zeros((4, 6)), "b": jnp.zeros(6)}
    tx = adamx.muon(0.02, muon_weight_dimension_numbers={"w": spec, "b": None})
    with pytest.raises(ValueError, match=message):
        tx.init(params)
    # Dimension numbers given to a vector: its path, shape and the axis.
    tx = adamx.muon(0.02, muon_weight_dimension_numbers={"w": D(), "b": D()})
    with pytest.raises(ValueError, match=r"params\['b'\] \(6,\): output axis 1"):
        tx.init(params)


def test_scale_by_muon_alone_names_a_leaf_that_is_not_a_matrix():
    with pytest.raises(ValueError, match=r"params\['b'\] has shape \(6,\)"):
        adamx.scale_by_muon().init({"w": jnp.zeros((4, 6)), "b": jnp.zeros(6)})


def test_a_flat_layout_is_refused():
    flat = adamx.ravel({"w": jnp.zeros((4, 6)), "b": jnp.zeros(6)})
    with pytest.raises(TypeError, match="cannot run on a FlatParams"):
        adamx.muon(0.02).init(flat)
    with pytest.raises(TypeError, match="scale_by_muon works leaf by leaf"):
        adamx.scale_by_muon().init(flat)


def test_complex_params_with_bfloat16_matmuls_are_refused():
    params = {"w": jnp.ones((3, 3), jnp.complex64)}
    tx = adamx.scale_by_muon(ns_dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match="complex params need ns_dtype=None"):
        tx.update(params, tx.init(params))


# -------------------------------------------------------------- composition


def run(tx, params, steps=8, compiler_options=None):
    @functools.partial(jax.jit, compiler_options=compiler_options)
    def step(p, s, i):
        u, s = tx.update(grads_at(p, i), s, p)
        return adamx.apply_updates(p, u), s

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, i)
    return params, state


def test_injected_hyperparameters_are_bitwise_the_plain_ones():
    params = params_tree(jnp.float32)
    plain, _ = run(
        adamx.muon(0.02, beta=0.9, weight_decay=0.1),
        params,
        compiler_options=DEFAULT_CODEGEN,
    )
    tx = adamx.inject_hyperparams(adamx.muon)(0.02, beta=0.9, weight_decay=0.1)
    injected, state = run(tx, params, compiler_options=DEFAULT_CODEGEN)
    assert_bitwise_equal(injected, plain)
    assert {"learning_rate", "beta", "eps", "weight_decay"} <= set(state.hyperparams)
    assert "ns_steps" not in state.hyperparams  # the loop's length is static


def test_multi_steps_equals_one_step_on_the_mean_gradient(x64):
    params = params_tree()
    tx = adamx.MultiSteps(adamx.muon(0.02), every_k_schedule=2)
    state = tx.init(params)
    g1, g2 = grads_at(params, 0), grads_at(params, 1)
    _, state = tx.update(g1, state, params)
    got, _ = tx.update(g2, state, params)
    plain = adamx.muon(0.02)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    want, _ = plain.update(mean, plain.init(params), params)
    assert_trees_close(got, want, rtol=1e-12, atol=1e-14)


def test_apply_if_finite_skips_a_step_with_nan():
    params = params_tree(jnp.float32)
    tx = adamx.apply_if_finite(adamx.muon(0.02), max_consecutive_errors=3)
    state = tx.init(params)
    bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    updates, new = jax.jit(tx.update)(bad, state, params)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert_bitwise_equal(new.inner_state, state.inner_state)
    updates, _ = jax.jit(tx.update)(grads_at(params, 0), new, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_muon_inside_a_partition_is_muon_on_its_group(x64):
    params = params_tree()
    labels = {"tall": "m", "wide": "m", "conv": "s", "bias": "s", "stack": "s"}
    tx = adamx.partition({"m": adamx.muon(0.02), "s": adamx.sgd(0.1)}, labels)
    got, _ = run(tx, params)
    alone, _ = run(adamx.muon(0.02), {k: params[k] for k in ("tall", "wide")})
    for k in ("tall", "wide"):
        np.testing.assert_allclose(got[k], alone[k], rtol=0, atol=1e-13)


def test_bfloat16_params_follow_the_float32_run():
    params = params_tree(jnp.float32)
    full, _ = run(adamx.muon(0.02), params)
    half, state = run(
        adamx.muon(0.02), jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    )
    for k in params:
        assert half[k].dtype == jnp.bfloat16
        moved = np.abs(np.asarray(full[k]) - np.asarray(params[k])).max()
        apart = np.abs(np.asarray(half[k], np.float32) - np.asarray(full[k])).max()
        assert apart < 0.1 * moved + 2e-2, (k, apart, moved)


def test_checkpoint_restores_the_state_bit_for_bit(tmp_path):
    params = params_tree(jnp.float32)
    tx = adamx.muon(0.02, state_bits=8)
    params, state = run(tx, params, steps=3)
    adamx.checkpoint.save(tmp_path / "ckpt", {"params": params, "state": state})
    restored = adamx.checkpoint.restore(
        tmp_path / "ckpt", {"params": params, "state": tx.init(params)}
    )
    assert_bitwise_equal(restored["state"], state)


# ----------------------------------------------------------------- sharded


def transformer_like(layers=3, d=32, seed=0):
    """q, k, v, o and two MLP matrices per layer, norms, an embedding and a head
    (which Muon takes too here: 2-D), so groups of 3*4, 3*2 and 1 matrices."""
    rng = np.random.default_rng(seed)
    tree = {}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            tree[f"{i}/{name}"] = rng.normal(size=(d, d)) / np.sqrt(d)
        tree[f"{i}/up"] = rng.normal(size=(d, 4 * d)) / np.sqrt(d)
        tree[f"{i}/down"] = rng.normal(size=(4 * d, d)) / np.sqrt(4 * d)
        tree[f"{i}/norm"] = np.ones(d)
    tree["embed"] = rng.normal(size=(40, d))
    return {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_muon_gives_the_unsharded_numbers(axis_type):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    params = jax.device_put(transformer_like(), NamedSharding(mesh, P()))
    tx = adamx.muon(0.02, weight_decay=0.1)
    plain, _ = run(tx, params, steps=4)
    split, state = run(sharded(tx, mesh), params, steps=4)
    assert_trees_close(split, plain, rtol=1e-5, atol=1e-6)
    whole = sum(x.nbytes for x in jax.tree.leaves(state))
    assert bytes_per_device(state) <= 0.15 * whole, (bytes_per_device(state), whole)


DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "s32": 4, "u32": 4, "u8": 1, "s8": 1}
COLLECTIVE = re.compile(
    r"\s(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(-start)?\("
)


def collective_bytes(hlo):
    """The bytes each device receives from collectives: the results' sizes."""
    total, count = 0, 0
    for line in hlo.splitlines():
        m = COLLECTIVE.search(line)
        if not m or " = " not in line:
            continue
        result = line[line.index(" = ") + 3 : m.start()]
        for dtype, dims_ in re.findall(
            r"(f32|f64|bf16|s32|u32|u8|s8)\[([\d,]*)\]", result
        ):
            total += DTYPE_BYTES[dtype] * int(
                np.prod([int(d) for d in dims_.split(",") if d])
            )
        count += 1
    return total, count


@pytest.mark.internals
def test_sharded_muon_splits_the_work_by_matrices():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    rng = np.random.default_rng(8)
    params = {
        f"m{i}": jnp.asarray(rng.normal(size=(128, 128)), jnp.float32) for i in range(8)
    }
    params = jax.device_put(params, NamedSharding(mesh, P()))
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))

    def compiled(tx):
        return jax.jit(tx.update).lower(params, tx.init(params), params).compile()

    one = compiled(adamx.muon(0.02))
    ours = compiled(sharded(adamx.muon(0.02), mesh))
    theirs = compiled(sharded(optax.contrib.muon(0.02), mesh))
    flops = [c.cost_analysis()["flops"] for c in (one, ours)]
    assert flops[1] <= 0.2 * flops[0], flops
    moved, count = collective_bytes(ours.as_text())
    assert moved <= 1.5 * param_bytes, moved / param_bytes
    their_moved, their_count = collective_bytes(theirs.as_text())
    assert their_moved > 8 * param_bytes and their_count > 10 * count
