"""Each transformation against Optax's function of the same name, and closed forms.

The Optax comparisons run in float64, so that a difference of formula (where eps
sits, which count a bias correction uses) shows up far above rounding. The
gradients depend on the params, so a wrong state update changes every later
gradient too.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import compiled_step

import adamx

NUM_STEPS = 30
RTOL = 1e-10
ATOL = 1e-12
# Each run moves its params by -STEP times its updates: enough for the gradients
# to change along the run, too little for any transformation to make it diverge.
STEP = 1e-2
CLIP_NORM = 0.72


def make_params(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 6)), dtype),
        "b": jnp.asarray(rng.normal(size=(6,)), dtype),
        # Two dims >= 4, so scale_by_factored_rms(min_dim_size_to_factor=4)
        # factors a rank-3 leaf along non-trailing axes as well as "w".
        "nested": {"k": jnp.asarray(rng.normal(size=(4, 2, 5)), dtype)},
    }


def loss(params, x):
    h = jnp.tanh(x @ params["w"] + params["b"])
    return (
        jnp.mean(h**2)
        + 0.1 * jnp.sum(jnp.sin(params["nested"]["k"]))
        + 0.01 * jnp.sum(params["w"] ** 4)
    )


_grad = jax.jit(jax.grad(loss))


def batch(step, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(100 + step).normal(size=(8, 4)), dtype)


def trajectory(tx, params, steps=NUM_STEPS):
    """The updates of every step of a run that follows its own updates."""
    state = tx.init(params)
    out = []
    for i in range(steps):
        updates, state = tx.update(_grad(params, batch(i)), state, params)
        out.append(updates)
        params = jax.tree.map(lambda p, u: p - STEP * u, params, updates)
    return out, params


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _schedule(count):
    return 0.1 / (1.0 + 0.5 * count)


def _decay_by_ndim(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _same(name, *args, tol=(RTOL, ATOL), **kwargs):
    """A table row: adamx.<name> and optax.<name> with the same arguments."""

    def show(v):
        return "tree" if isinstance(v, dict) else getattr(v, "__name__", str(v))

    case_id = "-".join(
        [name, *map(show, args), *(f"{k}={show(v)}" for k, v in kwargs.items())]
    )
    return pytest.param(
        lambda: getattr(adamx, name)(*args, **kwargs),
        lambda: getattr(optax, name)(*args, **kwargs),
        tol,
        id=case_id,
    )


TRANSFORMS = [
    _same("scale", -0.3),
    _same("scale_by_learning_rate", 0.1),
    _same("scale_by_learning_rate", 0.1, flip_sign=False),
    _same("scale_by_learning_rate", _schedule),
    _same("scale_by_schedule", _schedule),
    _same("trace", 0.9),
    _same("trace", 0.9, nesterov=True),
    _same("trace", 0.9, accumulator_dtype=jnp.float32),
    _same("ema", 0.9),
    _same("ema", 0.9, debias=False),
    _same("ema", 0.8, accumulator_dtype=jnp.float32),
    _same("scale_by_adam"),
    _same("scale_by_adam", 0.8, 0.99, nesterov=True),
    _same("scale_by_adam", eps_root=1e-8),
    # Optax rounds b1 * mu to float32 before adding the float64 gradient term;
    # adamx adds in float64. Both store mu in float32, so they agree to that.
    _same("scale_by_adam", mu_dtype=jnp.float32, tol=(1e-6, 1e-6)),
    _same("scale_by_amsgrad"),
    _same("scale_by_amsgrad", bias_correction_mu=False, bias_correction_nu=False),
    _same("scale_by_adamax"),
    _same("scale_by_radam"),
    _same("scale_by_radam", nesterov=True, threshold=6.0),
    _same("scale_by_belief"),
    _same("scale_by_belief", nesterov=True),
    _same("scale_by_lion"),
    _same("scale_by_lion", 0.5, 0.9, mu_dtype=jnp.float32),
    _same("scale_by_rms"),
    _same("scale_by_rms", eps_in_sqrt=False),
    _same("scale_by_rms", bias_correction=True),
    _same("scale_by_rms", initial_scale=1.0),
    _same("scale_by_stddev"),
    _same("scale_by_stddev", eps_in_sqrt=False, initial_scale=1.0),
    # With v_0 = 0 the first corrected variance is g**2 - g**2, pure rounding,
    # so the comparison starts from v_0 = 1.
    _same("scale_by_stddev", bias_correction=True, initial_scale=1.0),
    _same("scale_by_trust_ratio"),
    _same("scale_by_trust_ratio", min_norm=0.5, trust_coefficient=0.3, eps=1e-3),
    _same("scale_by_factored_rms", min_dim_size_to_factor=4),
    _same("scale_by_factored_rms", factored=False, decay_rate=0.6),
    _same("scale_by_param_block_rms"),
    # A floor above every leaf's RMS, so the floor branch is the one compared.
    _same("scale_by_param_block_rms", 5.0),
    _same("add_decayed_weights", 0.1),
    _same("add_decayed_weights", _schedule),
    _same("add_decayed_weights", 0.1, {"w": True, "b": False, "nested": True}),
    _same("add_decayed_weights", 0.1, _decay_by_ndim),
    _same("clip", 0.05),
    # About the median gradient norm of the run, so both branches are taken.
    _same("clip_by_global_norm", CLIP_NORM),
    _same("clip_by_block_rms", 0.02),
]


@pytest.mark.parametrize(("make_ours", "make_theirs", "tol"), TRANSFORMS)
def test_matches_optax_in_float64(make_ours, make_theirs, tol, x64):
    params = make_params()
    ours, ours_final = trajectory(make_ours(), params)
    theirs, theirs_final = trajectory(make_theirs(), params)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        try:
            assert_trees_close(a, b, *tol)
        except AssertionError as e:
            raise AssertionError(f"updates differ at step {step}") from e
    assert_trees_close(ours_final, theirs_final, *tol)
    # A transformation that zeroed everything would match trivially.
    assert any(float(adamx.global_norm(u)) > 0 for u in ours)


def test_clip_by_global_norm_case_takes_both_branches(x64):
    """Guards the table's threshold: it must sit inside the run's range of norms."""
    updates, _ = trajectory(adamx.clip_by_global_norm(CLIP_NORM), make_params())
    norms = np.array([float(adamx.global_norm(u)) for u in updates])
    clipped = np.isclose(norms, CLIP_NORM, rtol=1e-12)
    assert 5 <= clipped.sum() <= NUM_STEPS - 5
    assert np.all(norms[~clipped] < CLIP_NORM)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_bias_correction_matches_optax(decay, x64):
    moment = make_params()
    for count in [1, 2, 7, 30]:
        count = jnp.asarray(count, jnp.int32)
        assert_trees_close(
            adamx.bias_correction(moment, decay, count),
            optax.bias_correction(moment, decay, count),
        )


def test_global_norm_matches_optax(x64):
    tree = make_params()
    np.testing.assert_allclose(
        adamx.global_norm(tree), optax.tree.norm(tree), rtol=RTOL
    )


# ------------------------------------------------------------ closed forms


@pytest.mark.parametrize(
    ("scale_factor", "above"), [(0.01, False), (10.0, True)], ids=["below", "above"]
)
def test_clip_by_global_norm_closed_form(scale_factor, above, x64):
    grads = jax.tree.map(lambda x: scale_factor * x, make_params())
    leaves = [np.asarray(x) for x in jax.tree.leaves(grads)]
    norm = np.sqrt(sum(np.sum(x**2) for x in leaves))
    max_norm = 1.0
    assert (norm > max_norm) == above
    tx = adamx.clip_by_global_norm(max_norm)
    out, _ = tx.update(grads, tx.init(grads))
    out_leaves = [np.asarray(x) for x in jax.tree.leaves(out)]
    if above:
        out_norm = np.sqrt(sum(np.sum(x**2) for x in out_leaves))
        np.testing.assert_allclose(out_norm, max_norm, rtol=1e-12)
        for x, y in zip(out_leaves, leaves, strict=True):
            np.testing.assert_allclose(x, y * max_norm / norm, rtol=1e-12)
    else:
        for x, y in zip(out_leaves, leaves, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("decay", [0.9, 0.999])
@pytest.mark.parametrize("count", [1, 3, 100])
def test_bias_correction_closed_form(decay, count, x64):
    m = np.random.default_rng(1).normal(size=(3, 4))
    got = adamx.bias_correction({"m": jnp.asarray(m)}, decay, jnp.asarray(count))
    np.testing.assert_allclose(got["m"], m / (1 - decay**count), rtol=1e-12)


def test_first_adam_step_is_g_over_abs_g_plus_eps(x64):
    g = np.random.default_rng(2).normal(size=(5, 3))
    g[0, 0] = 0.0
    g[1, 1] = 1e-9  # comparable to eps, where eps visibly matters
    eps = 1e-8
    tx = adamx.scale_by_adam(eps=eps)
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.zeros_like(g)))
    np.testing.assert_allclose(u, g / (np.abs(g) + eps), rtol=1e-12, atol=0)


def test_adam_without_bias_correction_matches_numpy_loop(x64):
    b1, b2, eps = 0.8, 0.95, 1e-3
    rng = np.random.default_rng(3)
    grads = rng.normal(size=(12, 4, 3))
    m = np.zeros((4, 3))
    v = np.zeros((4, 3))
    tx = adamx.scale_by_adam(b1, b2, eps, bias_correction=False)
    state = tx.init(jnp.zeros((4, 3)))
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        u, state = tx.update(jnp.asarray(g), state)
        np.testing.assert_allclose(u, m / (np.sqrt(v) + eps), rtol=1e-12)


def test_nu_dtype_bfloat16_stores_nu_in_bfloat16():
    params = make_params(jnp.float32)
    tx = adamx.scale_by_adam(nu_dtype=jnp.bfloat16)
    state = tx.init(params)
    rng = np.random.default_rng(4)
    for _ in range(3):
        grads = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
        )
        updates, state = tx.update(grads, state)
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(state.nu))
    assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.mu))
    for u in jax.tree.leaves(updates):
        assert u.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(u)))
    # Stored rounded, not zero: bf16 keeps the magnitude of g**2.
    assert all(bool(jnp.all(v > 0)) for v in jax.tree.leaves(state.nu))


def _bf16(x):
    """Round float32 values to bfloat16 (to nearest, ties to even), in float32."""
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16), np.float32)


@pytest.mark.parametrize("params_dtype", [jnp.bfloat16, jnp.float32])
def test_bfloat16_moments_are_used_as_stored(params_dtype):
    # Adam in float32 on moments kept in bfloat16: each step's direction comes
    # from the moments rounded as they are stored (see as_stored_fns).
    # Float32 values of the decay rates, which the step computes with.
    b1, b2, eps = float(np.float32(0.9)), float(np.float32(0.999)), 1e-8
    rng = np.random.default_rng(11)
    tx = adamx.scale_by_adam(b1, b2, eps, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    state = tx.init(jnp.zeros(64, params_dtype))
    m = v = np.zeros(64)
    for t in range(1, 6):
        g = _bf16(rng.normal(size=64) * 10.0 ** rng.integers(-4, 2, size=64))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        u, state = tx.update(jnp.asarray(g, params_dtype), state)
        stored_m = np.asarray(state.mu, np.float64)
        stored_v = np.asarray(state.nu, np.float64)
        # The state is the float64 recursion to bfloat16 precision...
        np.testing.assert_allclose(stored_m, m, rtol=2**-7)
        np.testing.assert_allclose(stored_v, v, rtol=2**-7)
        m, v = stored_m, stored_v
        # ...and the update is computed from it as stored; from the unrounded
        # moments it would be off by up to 2**-9. (Float32 tolerance: 1 - b2**t
        # loses digits to cancellation when computed in float32.)
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        expected = m_hat / (np.sqrt(v_hat) + eps)
        if params_dtype == jnp.bfloat16:
            expected = _bf16(expected)
        rtol = 3e-5 if params_dtype == jnp.float32 else 2**-8
        np.testing.assert_allclose(np.asarray(u, np.float64), expected, rtol=rtol)


@pytest.mark.internals
def test_bfloat16_adam_step_copies_no_moment():
    # Donated bfloat16 moments are overwritten in place; were the update computed
    # from the unrounded moments, XLA would keep a copy of each old one aside.
    params = [jnp.ones(4096, jnp.bfloat16) for _ in range(3)]
    text = compiled_step(adamx.adam(1e-3), params).as_text()
    entry = text[text.index("ENTRY") :]
    copies = [line for line in entry.splitlines() if " copy(" in line]
    assert not [c for c in copies if "[4096]" in c], copies


@pytest.mark.parametrize(
    "learning_rate", [0.1, _schedule], ids=["constant", "schedule"]
)
def test_scale_by_learning_rate_keeps_the_rate_of_the_last_step(learning_rate):
    def rate(count):
        return learning_rate(count) if callable(learning_rate) else learning_rate

    tx = adamx.scale_by_learning_rate(learning_rate)
    g = jnp.array([1.0, -2.0])
    state = tx.init(g)
    # Before any step: the rate the first step will use.
    np.testing.assert_allclose(state.rate, rate(0), rtol=1e-7)
    for count in range(1, 5):
        u, state = tx.update(g, state)
        np.testing.assert_allclose(u, -rate(count - 1) * np.asarray(g), rtol=1e-6)
        np.testing.assert_allclose(state.rate, rate(count - 1), rtol=1e-7)
        assert state.rate.dtype == jnp.float32


# ------------------------------------------------------ tree mismatches

MISMATCH = [
    pytest.param(lambda: adamx.trace(0.9), id="trace"),
    pytest.param(lambda: adamx.ema(0.9), id="ema"),
    pytest.param(adamx.scale_by_adam, id="scale_by_adam"),
    pytest.param(adamx.scale_by_amsgrad, id="scale_by_amsgrad"),
    pytest.param(adamx.scale_by_adamax, id="scale_by_adamax"),
    pytest.param(adamx.scale_by_radam, id="scale_by_radam"),
    pytest.param(adamx.scale_by_belief, id="scale_by_belief"),
    pytest.param(adamx.scale_by_lion, id="scale_by_lion"),
    pytest.param(adamx.scale_by_rms, id="scale_by_rms"),
    pytest.param(adamx.scale_by_stddev, id="scale_by_stddev"),
    pytest.param(adamx.scale_by_factored_rms, id="scale_by_factored_rms"),
    pytest.param(lambda: adamx.add_decayed_weights(0.1), id="add_decayed_weights"),
    pytest.param(adamx.scale_by_trust_ratio, id="scale_by_trust_ratio"),
    pytest.param(
        adamx.scale_by_param_block_rms,
        id="scale_by_param_block_rms",
    ),
]


@pytest.mark.parametrize("make_tx", MISMATCH)
def test_tree_mismatch_raises_and_prints_both_structures(make_tx):
    params = make_params(jnp.float32)
    grads = dict(params, extra=jnp.ones(3))
    tx = make_tx()
    with pytest.raises(ValueError) as info:
        tx.update(grads, tx.init(params), params)
    message = str(info.value)
    assert str(jax.tree.structure(grads)) in message
    assert str(jax.tree.structure(params)) in message


def test_add_decayed_weights_passes_none_updates_through_as_optax():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])}
    for updates in (None, {"w": jnp.array([0.5, 0.5]), "b": None}):
        ours = adamx.add_decayed_weights(0.1)
        theirs = optax.add_decayed_weights(0.1)
        got, _ = ours.update(updates, ours.init(params), params)
        want, _ = theirs.update(updates, theirs.init(params), params)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        chex.assert_trees_all_close(got, want)
    np.testing.assert_allclose(got["w"], [0.6, 0.3])
