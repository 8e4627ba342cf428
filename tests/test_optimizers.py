"""Shared checks over the optimizer table, and each optimizer against Optax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optimizer_table import MU_DTYPE, NU_DTYPE, OPTIMIZERS

import adamx

IDS = list(OPTIMIZERS)


def make_params(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 6)), dtype),
        "b": jnp.asarray(rng.normal(size=(6,)), dtype),
        "nested": {"k": jnp.asarray(rng.normal(size=(3, 2, 5)), dtype)},
    }


def loss(params, x):
    """A loss whose gradient depends on the params (and on the batch x)."""
    h = jnp.tanh(x @ params["w"] + params["b"])
    return (
        jnp.mean(h**2)
        + 0.1 * jnp.sum(jnp.sin(params["nested"]["k"]))
        + 0.01 * jnp.sum(params["w"] ** 4)
    )


def batch(step, dtype=jnp.float32, n=8):
    return jnp.asarray(np.random.default_rng(100 + step).normal(size=(n, 4)), dtype)


def make_step(tx, apply_updates):
    def step(params, state, x):
        grads = jax.grad(loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return step


def run(tx, apply_updates, params, steps, jit=True):
    step = make_step(tx, apply_updates)
    step = jax.jit(step) if jit else step
    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, batch(i, params["w"].dtype))
    return params, state


def assert_trees_close(a, b, rtol, atol=0.0):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", IDS)
def test_matches_optax_in_float64(name, x64):
    ax_tx, ox_tx = OPTIMIZERS[name]()
    params = make_params(jnp.float64)
    ours, _ = run(ax_tx, adamx.apply_updates, params, 100)
    theirs, _ = run(ox_tx, optax.apply_updates, params, 100)
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # The run must have moved the params, or the comparison proves nothing.
    assert not np.allclose(ours["w"], params["w"])


@pytest.mark.parametrize("name", IDS)
def test_float32_run_matches_optax_compiles_once_and_keeps_state_layout(name):
    ax_tx, ox_tx = OPTIMIZERS[name]()
    params = make_params()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, x):
        return make_step(ax_tx, adamx.apply_updates)(params, state, x)

    state0 = state = ax_tx.init(params)
    ours = params
    for i in range(20):
        ours, state = step(ours, state, batch(i))
    chex.clear_trace_counter()
    theirs, _ = run(ox_tx, optax.apply_updates, params, 20)
    # Optax's own float32 rounding error reaches 2e-5 here (radam); see
    # test_float32_is_at_least_as_accurate_as_optax for which side is closer.
    assert_trees_close(ours, theirs, rtol=1e-4, atol=3e-5)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(ours))
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


@pytest.mark.parametrize("name", IDS)
def test_float32_is_at_least_as_accurate_as_optax(name):
    """Against the same run in float64, adamx's float32 error is no larger."""
    ax_tx, ox_tx = OPTIMIZERS[name]()
    ours, _ = run(ax_tx, adamx.apply_updates, make_params(), 20)
    theirs, _ = run(ox_tx, optax.apply_updates, make_params(), 20)
    jax.config.update("jax_enable_x64", True)
    try:
        ax64, _ = OPTIMIZERS[name]()
        exact, _ = run(ax64, adamx.apply_updates, make_params(jnp.float64), 20)
    finally:
        jax.config.update("jax_enable_x64", False)

    def error(tree):
        return max(
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(exact), strict=True)
        )

    assert error(ours) <= 1.5 * error(theirs) + 1e-7


@pytest.mark.parametrize("name", IDS)
def test_jit_equals_no_jit_under_strict_promotion(name, strict_promotion):
    tx, _ = OPTIMIZERS[name]()
    params = make_params()
    jitted, _ = run(tx, adamx.apply_updates, params, 2, jit=True)
    eager, _ = run(tx, adamx.apply_updates, params, 2, jit=False)
    assert_trees_close(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", IDS)
def test_works_inside_lax_scan(name):
    tx, _ = OPTIMIZERS[name]()
    params = make_params()
    xs = jnp.stack([batch(i) for i in range(6)])
    step = make_step(tx, adamx.apply_updates)

    def body(carry, x):
        return step(*carry, x), None

    (scanned, _), _ = jax.lax.scan(body, (params, tx.init(params)), xs)
    looped, _ = run(tx, adamx.apply_updates, params, 6)
    assert_trees_close(scanned, looped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", IDS)
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


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", IDS)
def test_low_precision_params_keep_their_dtype(name, dtype, strict_promotion):
    tx, _ = OPTIMIZERS[name]()
    params = make_params(dtype)
    state0 = tx.init(params)
    new, state = run(tx, adamx.apply_updates, params, 3)
    for leaf in jax.tree.leaves(new):
        assert leaf.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(leaf)))
    for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
    # The step is not lost to rounding: the params moved.
    assert not bool(jnp.all(new["w"] == params["w"]))


@pytest.mark.parametrize("name", IDS)
def test_float16_params_with_zero_gradients_give_no_nan(name):
    tx, _ = OPTIMIZERS[name]()
    params = make_params(jnp.float16)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = jax.jit(tx.update)(zeros, state, params)
        for u in jax.tree.leaves(updates):
            assert bool(jnp.all(jnp.isfinite(u))), name
        params = adamx.apply_updates(params, updates)
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert bool(jnp.all(jnp.isfinite(leaf)))


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


@pytest.mark.parametrize("name", MU_DTYPE)
def test_mu_dtype_is_honoured(name):
    tx = getattr(adamx, name)(learning_rate=1e-2, mu_dtype=jnp.bfloat16)
    _, state = run(tx, adamx.apply_updates, make_params(), 2)
    mus = _moment_leaves(state, "mu")
    assert mus and all(m.dtype == jnp.bfloat16 for m in mus)


@pytest.mark.parametrize("name", NU_DTYPE)
def test_nu_dtype_is_honoured(name):
    tx = getattr(adamx, name)(learning_rate=1e-2, nu_dtype=jnp.bfloat16)
    ref = getattr(adamx, name)(learning_rate=1e-2)
    ours, state = run(tx, adamx.apply_updates, make_params(), 10)
    full, _ = run(ref, adamx.apply_updates, make_params(), 10)
    nus = _moment_leaves(state, "nu")
    assert nus and all(v.dtype == jnp.bfloat16 for v in nus)
    # bf16 second moments change the trajectory only slightly.
    assert_trees_close(ours, full, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", IDS)
def test_empty_tree(name):
    tx, _ = OPTIMIZERS[name]()
    state = tx.init({})
    updates, state = jax.jit(tx.update)({}, state, {})
    assert updates == {}


@pytest.mark.parametrize("name", IDS)
def test_none_leaves_pass_through(name):
    ax_tx, ox_tx = OPTIMIZERS[name]()
    params = {"a": jnp.arange(1.0, 7.0).reshape(2, 3), "frozen": None}
    grads = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "frozen": None}
    ours, s = ax_tx.update(grads, ax_tx.init(params), params)
    theirs, _ = ox_tx.update(grads, ox_tx.init(params), params)
    assert ours["frozen"] is None
    np.testing.assert_allclose(ours["a"], theirs["a"], rtol=2e-5)
    new = adamx.apply_updates(params, ours)
    assert new["frozen"] is None
    ours2, _ = ax_tx.update(grads, s, new)
    assert ours2["frozen"] is None


@pytest.mark.parametrize(
    "name", ["adamw", "nadamw", "adamaxw", "lamb", "lion", "adafactor"]
)
def test_optimizers_that_need_params_say_so(name):
    tx = getattr(adamx, name)(learning_rate=1e-2)
    g = {"w": jnp.ones((3, 3))}
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(g, tx.init(g))


def test_argument_names_order_and_defaults_follow_optax():
    import inspect

    names = [
        "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adamaxw", "radam",
        "adabelief", "lamb", "lion", "sgd", "rmsprop", "adafactor",
    ]  # fmt: skip
    for name in names:
        ours = inspect.signature(getattr(adamx, name)).parameters
        theirs = inspect.signature(getattr(optax, name)).parameters
        for pname, p in theirs.items():
            assert pname in ours, f"{name} lacks {pname}"
            assert ours[pname].kind == p.kind, f"{name}.{pname} kind differs"
            assert ours[pname].default == p.default, f"{name}.{pname} default differs"
        positional = [k for k, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert list(ours)[: len(positional)] == positional, name
