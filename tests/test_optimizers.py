"""Each optimizer of the table against Optax, and what the property suite leaves out.

Jit against eager, dtypes and structure kept, one trace, finite steps and empty
trees are the property suite's (``test_properties.py``): a state that keeps its
types and is traced once is what ``lax.scan`` needs of a carry. Here: Optax's
numbers in float64 and float32, ``pmap``, ``None`` leaves, and the factories'
signatures.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    OPTIMIZER_MODULES,
    assert_trees_close,
    batch,
    loss,
    make_params,
    run,
)
from optimizer_table import CORE, OPTIMIZERS, ids

import adamx

IDS = ids("optax")


@pytest.mark.parametrize("name", IDS)
def test_matches_optax_in_float64(name, x64):
    ax_tx, ox_tx = OPTIMIZERS[name]()
    params = make_params(jnp.float64)
    ours, _ = run(ax_tx, params, 100)
    theirs, _ = run(ox_tx, params, 100, optax.apply_updates)
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # The run must have moved the params, or the comparison proves nothing.
    assert not np.allclose(ours["w"], params["w"])


ACCURACY_IDS = set(ids("optax", without=CORE))


@pytest.mark.parametrize("name", IDS)
def test_float32_run_matches_optax_and_is_at_least_as_accurate(name):
    ax_tx, ox_tx = OPTIMIZERS[name]()
    ours, _ = run(ax_tx, make_params(), 20)
    theirs, _ = run(ox_tx, make_params(), 20, optax.apply_updates)
    # Optax's own float32 rounding error reaches 2e-5 here (radam); the check
    # below says which side is closer.
    assert_trees_close(ours, theirs, rtol=1e-4, atol=3e-5)
    if name not in ACCURACY_IDS:
        return  # a variant, schedule or wrapper of an optimizer checked plain
    # Against the same run in float64, adamx's float32 error is no larger.
    jax.config.update("jax_enable_x64", True)
    try:
        ax64, _ = OPTIMIZERS[name]()
        exact, _ = run(ax64, make_params(jnp.float64), 20)
    finally:
        jax.config.update("jax_enable_x64", False)

    def error(tree):
        return max(
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(exact), strict=True)
        )

    assert error(ours) <= 1.5 * error(theirs) + 1e-7


@pytest.mark.parametrize("name", ids(without=(*CORE, "lean")))
def test_pmap_with_pmean_matches_single_device(name):
    n = jax.local_device_count()
    assert n == 8, "conftest asks for 8 host devices"
    tx, _ = OPTIMIZERS[name]()
    params = make_params()
    xs = jnp.stack(
        [batch(i, n=4) for i in range(n)]
    )  # one shard of the batch per device

    def pstep(params, state, x):
        grads = jax.lax.pmean(jax.grad(loss)(params, x), "d")
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * n), t)  # noqa: E731
    p, s = replicate(params), replicate(tx.init(params))
    pstep = jax.pmap(pstep, axis_name="d")
    for _ in range(3):
        p, s = pstep(p, s, xs)

    def mean_grad_step(params, state):
        per_shard = [jax.grad(loss)(params, x) for x in xs]
        grads = jax.tree.map(lambda *g: sum(g) / n, *per_shard)
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    q, t = params, tx.init(params)
    for _ in range(3):
        q, t = jax.jit(mean_grad_step)(q, t)
    for i in range(n):
        replica = jax.tree.map(lambda x, i=i: x[i], p)
        assert_trees_close(replica, q, rtol=1e-5, atol=1e-6)


def _moment_leaves(state, field):
    found = []

    def visit(node):
        if hasattr(node, "_fields"):
            if field in node._fields:
                found.extend(jax.tree.leaves(getattr(node, field)))
            for child in node:
                visit(child)
        elif isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    return found


@pytest.mark.parametrize("name", ids("mu_dtype", without=CORE))
def test_mu_dtype_is_honoured(name):
    tx = OPTIMIZERS[name].ours(mu_dtype=jnp.bfloat16)
    _, state = run(tx, make_params(), 2)
    mus = _moment_leaves(state, "mu")
    assert mus and all(m.dtype == jnp.bfloat16 for m in mus)


@pytest.mark.parametrize("name", ids("nu_dtype", without=CORE))
def test_nu_dtype_is_honoured(name):
    tx = OPTIMIZERS[name].ours(nu_dtype=jnp.bfloat16)
    ref = OPTIMIZERS[name].ours()
    ours, state = run(tx, make_params(), 10)
    full, _ = run(ref, make_params(), 10)
    nus = _moment_leaves(state, "nu")
    assert nus and all(v.dtype == jnp.bfloat16 for v in nus)
    # bf16 second moments change the trajectory only slightly.
    assert_trees_close(ours, full, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", ids("optax", without=CORE))
def test_none_leaves_pass_through(name):
    ax_tx, ox_tx = OPTIMIZERS[name]()
    params = {"a": jnp.arange(1.0, 7.0).reshape(2, 3), "frozen": None}
    grads = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "frozen": None}
    ours, s = ax_tx.update(grads, ax_tx.init(params), params)
    theirs, _ = ox_tx.update(grads, ox_tx.init(params), params)
    assert ours["frozen"] is None
    # atol: an optimizer that forms its update as new params minus params
    # (Optax's schedule-free) rounds it to the params' spacing.
    np.testing.assert_allclose(ours["a"], theirs["a"], rtol=2e-5, atol=2e-6)
    new = adamx.apply_updates(params, ours)
    assert new["frozen"] is None
    ours2, _ = ax_tx.update(grads, s, new)
    assert ours2["frozen"] is None


@pytest.mark.parametrize("name", ids("params"))
def test_optimizers_that_need_params_say_so(name):
    tx = OPTIMIZERS[name].ours()
    g = {"w": jnp.ones((3, 3))}
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(g, tx.init(g))


def test_argument_names_order_and_defaults_follow_optax():
    import inspect

    import optax.contrib

    # Every optimizer and scale_by_* of adamx's optimizer modules that Optax
    # (or optax.contrib) has too.
    names = sorted(
        name
        for module in OPTIMIZER_MODULES
        for name in importlib.import_module(f"adamx.{module}").__all__
        if name[0].islower()
        and callable(getattr(optax, name, None) or getattr(optax.contrib, name, None))
    )
    assert len(names) >= 18, names
    for name in names:
        theirs_fn = getattr(optax, name, None) or getattr(optax.contrib, name)
        ours = inspect.signature(getattr(adamx, name)).parameters
        theirs = inspect.signature(theirs_fn).parameters
        for pname, p in theirs.items():
            assert pname in ours, f"{name} lacks {pname}"
            assert ours[pname].kind == p.kind, f"{name}.{pname} kind differs"
            default = ours[pname].default
            if hasattr(p.default, "init") and hasattr(p.default, "update"):
                # A transformation (Sophia's Hessian estimator): adamx's own.
                assert hasattr(default, "init") and hasattr(default, "update")
            elif callable(p.default) and p.default is not p.empty:
                # Functions (ADOPT's clipping bound) are compared by value.
                for t in (0, 1, 16):
                    assert float(default(t)) == float(p.default(t)), f"{name}.{pname}"
            else:
                assert default == p.default, f"{name}.{pname} default differs"
        positional = [k for k, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert list(ours)[: len(positional)] == positional, name


@pytest.mark.parametrize("mode", ["hard", "smooth", "refined"])
def test_scale_by_lion_modes_match_optax(x64, mode):
    ours = adamx.scale_by_lion(b1=0.8, mode=mode, smooth_beta=2.0)
    theirs = optax.scale_by_lion(b1=0.8, mode=mode, smooth_beta=2.0)
    params = jnp.array([0.3, -2.0, 0.0, 0.7, 1.5])
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for i in range(100):
        grads = jnp.sin(params * (i + 1))
        u_ours, s_ours = ours.update(grads, s_ours)
        u_theirs, s_theirs = theirs.update(grads, s_theirs)
        np.testing.assert_allclose(u_ours, u_theirs, rtol=1e-12, atol=1e-12)
    # Only "hard" is the sign; the others leave small entries unsaturated.
    magnitudes = np.abs(np.asarray(u_ours))
    unsaturated = np.any((magnitudes > 0) & (magnitudes < 1))
    assert unsaturated == (mode != "hard"), magnitudes


def test_scale_by_lion_refuses_an_unknown_mode_and_a_bad_slope():
    with pytest.raises(ValueError, match="mode must be"):
        adamx.scale_by_lion(mode="soft")
    with pytest.raises(ValueError, match="smooth_beta"):
        adamx.scale_by_lion(mode="smooth", smooth_beta=0.0)
