"""Tests of adamx/schedule_free.py: the authors' PyTorch optimizers, Optax's
wrapper, and the evaluation params through every wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import schedulefree
import torch
from helpers import DEFAULT_CODEGEN, assert_trees_close, batch, make_params, run

import adamx

STEPS = 120
SHAPES = {"w": (4, 6), "b": (6,)}


def grad_np(p, t):
    """A gradient with curvature and a fresh term at each step, at ``p``."""
    rng = np.random.default_rng(1000 + t)
    return 0.5 * p + np.cos(3 * p) + 0.3 * rng.normal(size=p.shape)


def init_np(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s) for k, s in SHAPES.items()}


def run_torch(cls, kwargs, steps=STEPS):
    """The authors' optimizer in float64: y after each step, and x at the end."""
    params = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in init_np().items()
    }
    opt = cls(list(params.values()), **kwargs)
    opt.train()
    ys = []
    for t in range(steps):
        for p in params.values():
            p.grad = torch.from_numpy(grad_np(p.detach().numpy(), t))
        opt.step()
        ys.append({k: p.detach().numpy().copy() for k, p in params.items()})
    opt.eval()  # p is x now
    x = {k: p.detach().numpy().copy() for k, p in params.items()}
    return ys, x


def run_jax(tx, steps=STEPS, apply=adamx.apply_updates, eval_fn=None):
    params = {k: jnp.asarray(v) for k, v in init_np().items()}
    state = tx.init(params)
    ys = []

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply(params, updates), state

    for t in range(steps):
        grads = {k: jnp.asarray(grad_np(np.asarray(v), t)) for k, v in params.items()}
        params, state = step(params, state, grads)
        ys.append(params)
    eval_fn = eval_fn or adamx.schedule_free_eval_params
    return ys, eval_fn(state, params), state


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


ADAMW_CASES = [
    ({}, {}),
    (
        {"learning_rate": 0.05, "warmup_steps": 10, "weight_decay": 0.1},
        {"lr": 0.05, "warmup_steps": 10, "weight_decay": 0.1},
    ),
    (
        {
            "learning_rate": 0.02,
            "warmup_steps": 7,
            "b1": 0.95,
            "b2": 0.99,
            "eps": 1e-6,
            "weight_decay": 0.01,
            "weight_lr_power": 1.0,
        },
        {
            "lr": 0.02,
            "warmup_steps": 7,
            "betas": (0.95, 0.99),
            "eps": 1e-6,
            "weight_decay": 0.01,
            "weight_lr_power": 1.0,
        },
    ),
    (
        {"learning_rate": 0.03, "weight_lr_power": 0.0},
        {"lr": 0.03, "weight_lr_power": 0.0},
    ),
]


@pytest.mark.parametrize("ours, theirs", ADAMW_CASES)
def test_adamw_matches_the_authors_in_float64(x64, ours, theirs):
    want_y, want_x = run_torch(schedulefree.AdamWScheduleFree, theirs)
    got_y, got_x, _ = run_jax(adamx.schedule_free_adamw(**ours))
    for t, (g, w) in enumerate(zip(got_y, want_y, strict=True)):
        assert max_diff(g, w) < 1e-10, t
    assert max_diff(got_x, want_x) < 1e-10
    # x is not y: the comparison of the evaluation point says something.
    assert max_diff(got_x, got_y[-1]) > 1e-3


SGD_CASES = [
    ({}, {}),
    (
        {"learning_rate": 0.2, "warmup_steps": 10, "weight_decay": 0.05},
        {"lr": 0.2, "warmup_steps": 10, "weight_decay": 0.05},
    ),
    (
        {"learning_rate": 0.1, "b1": 0.8, "weight_lr_power": 1.0, "warmup_steps": 3},
        {"lr": 0.1, "momentum": 0.8, "weight_lr_power": 1.0, "warmup_steps": 3},
    ),
]


@pytest.mark.parametrize("ours, theirs", SGD_CASES)
def test_sgd_matches_the_authors_in_float64(x64, ours, theirs):
    want_y, want_x = run_torch(schedulefree.SGDScheduleFree, theirs)
    got_y, got_x, _ = run_jax(adamx.schedule_free_sgd(**ours))
    for t, (g, w) in enumerate(zip(got_y, want_y, strict=True)):
        assert max_diff(g, w) < 1e-10, t
    assert max_diff(got_x, want_x) < 1e-10
    assert max_diff(got_x, got_y[-1]) > 1e-3


def test_optax_is_one_step_off_the_authors_with_warmup_only(x64):
    """The known departure: Optax's AdamW step lags its warm-up by one step."""
    kw = {"learning_rate": 0.05, "weight_decay": 0.1}
    want, _ = run_torch(
        schedulefree.AdamWScheduleFree,
        {"lr": 0.05, "warmup_steps": 10, "weight_decay": 0.1},
    )
    optax_y, _, _ = run_jax(
        optax.contrib.schedule_free_adamw(**kw, warmup_steps=10),
        apply=optax.apply_updates,
        eval_fn=optax.contrib.schedule_free_eval_params,
    )
    assert max_diff(optax_y[-1], want[-1]) > 1e-4
    ours, _, _ = run_jax(adamx.schedule_free_adamw(**kw))
    theirs, _, _ = run_jax(
        optax.contrib.schedule_free_adamw(**kw),
        apply=optax.apply_updates,
        eval_fn=optax.contrib.schedule_free_eval_params,
    )
    assert max_diff(ours[-1], theirs[-1]) < 1e-10


def decay(n):
    """A linear decay, the same function for both libraries."""
    return 2e-2 - 1.9e-2 * jnp.minimum(n, 80) / 80


BASES = {
    "sgd": (lambda: adamx.sgd(0.1), lambda: optax.sgd(0.1), 0.1, {}),
    "adam_b1_0": (
        lambda: adamx.adam(1e-2, b1=0.0),
        lambda: optax.adam(1e-2, b1=0.0),
        1e-2,
        {"b1": 0.95},
    ),
    # A decaying schedule given to both, each evaluating it at its own count.
    "adam_schedule": (
        lambda: adamx.adam(decay, b1=0.0),
        lambda: optax.adam(decay, b1=0.0),
        "schedule",
        {"weight_lr_power": 1.0},
    ),
    "clipped_rmsprop": (
        lambda: adamx.chain(adamx.clip_by_global_norm(1.0), adamx.rmsprop(1e-2)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(1e-2)),
        1e-2,
        {"b1": 0.8, "weight_lr_power": 0.0},
    ),
}


@pytest.mark.parametrize("name", BASES)
def test_wrapper_matches_optax_in_float64(x64, name):
    ours_base, theirs_base, lr, kw = BASES[name]
    lr = decay if lr == "schedule" else lr
    got_y, got_x, _ = run_jax(adamx.schedule_free(ours_base(), lr, **kw))
    want_y, want_x, _ = run_jax(
        optax.contrib.schedule_free(theirs_base(), lr, **kw),
        apply=optax.apply_updates,
        eval_fn=optax.contrib.schedule_free_eval_params,
    )
    for t, (g, w) in enumerate(zip(got_y, want_y, strict=True)):
        assert max_diff(g, w) < 1e-10, t
    assert max_diff(got_x, want_x) < 1e-10
    assert max_diff(got_x, got_y[-1]) > 1e-4


# ------------------------------------------------------------ eval params, wrapped


def _eval_after(tx, steps=12, grads_fn=None):
    params = make_params()
    p, s = run(tx, params, steps)
    return p, adamx.schedule_free_eval_params(s, p)


def test_eval_params_through_inject_hyperparams_multisteps_and_sharded():
    make = lambda: adamx.schedule_free_adamw(1e-2, weight_decay=0.1)  # noqa: E731
    plain_p, plain_x = _eval_after(make())
    # x differs from y: the checks below compare the evaluation point.
    assert max_diff(plain_p, plain_x) > 1e-4

    injected = adamx.inject_hyperparams(adamx.schedule_free_adamw)(
        1e-2, weight_decay=0.1
    )
    p, x = _eval_after(injected)
    # Compiled into one step with the loss, constants may fold differently.
    assert_trees_close(p, plain_p, rtol=1e-6, atol=1e-7)
    assert_trees_close(x, plain_x, rtol=1e-6, atol=1e-7)

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    p, x = _eval_after(adamx.sharded(make(), mesh, "data"))
    assert_trees_close(p, plain_p, rtol=1e-6, atol=1e-7)
    assert_trees_close(x, plain_x, rtol=1e-6, atol=1e-7)

    p, x = _eval_after(
        optax.inject_hyperparams(adamx.schedule_free_adamw)(1e-2, weight_decay=0.1)
    )
    assert_trees_close(x, plain_x, rtol=1e-6, atol=1e-7)

    chained = adamx.chain(adamx.clip_by_global_norm(1e3), make())
    p, x = _eval_after(adamx.apply_if_finite(chained, 2))
    assert_trees_close(x, plain_x, rtol=1e-6, atol=1e-7)


def test_injected_steps_are_bitwise_the_plain_ones():
    kw = {"warmup_steps": 3, "weight_decay": 0.1}
    plain = adamx.schedule_free_adamw(1e-2, **kw)
    injected = adamx.inject_hyperparams(adamx.schedule_free_adamw)(1e-2, **kw)
    results = []
    for tx in (plain, injected):
        update = jax.jit(tx.update, compiler_options=DEFAULT_CODEGEN)
        p, s = make_params(), tx.init(make_params())
        for _ in range(8):
            u, s = update(jax.tree.map(jnp.sin, p), s, p)
            p = adamx.apply_updates(p, u)
        results.append((p, adamx.schedule_free_eval_params(s, p)))
    assert_trees_close(results[0], results[1], rtol=0, atol=0)


def test_eval_params_through_multisteps_equal_the_plain_run_on_mean_gradients(x64):
    params = make_params(jnp.float64)
    tx = adamx.schedule_free_adamw(1e-2, weight_decay=0.1)
    multi = adamx.MultiSteps(adamx.schedule_free_adamw(1e-2, weight_decay=0.1), 2)
    from helpers import loss

    p, s = params, tx.init(params)
    q, m = params, multi.init(params)
    for i in range(10):
        g1 = jax.grad(loss)(q, batch(2 * i, jnp.float64))
        u, m = multi.update(g1, m, q)
        q = adamx.apply_updates(q, u)
        g2 = jax.grad(loss)(q, batch(2 * i + 1, jnp.float64))
        u, m = multi.update(g2, m, q)
        q = adamx.apply_updates(q, u)
        mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
        u, s = tx.update(mean, s, p)
        p = adamx.apply_updates(p, u)
    assert_trees_close(q, p, rtol=1e-12, atol=1e-14)
    x = adamx.schedule_free_eval_params(s, p)
    assert_trees_close(adamx.schedule_free_eval_params(m, q), x, rtol=1e-12, atol=1e-14)
    assert max_diff(x, p) > 1e-4


def test_eval_params_read_optax_schedule_free_states():
    tx = optax.contrib.schedule_free_adamw(1e-2)
    p, s = run(tx, make_params(), 5, optax.apply_updates)
    want = optax.contrib.schedule_free_eval_params(s, p)
    assert_trees_close(adamx.schedule_free_eval_params(s, p), want, rtol=0, atol=0)
    wrapped = optax.MultiSteps(tx, 1)
    _, ws = run(wrapped, make_params(), 5, optax.apply_updates)
    adamx.schedule_free_eval_params(ws, p)


def test_eval_params_without_a_schedule_free_state_say_so():
    state = adamx.adam(1e-2).init(make_params())
    with pytest.raises(ValueError, match="found no in a state of type tuple"):
        adamx.schedule_free_eval_params(state, make_params())
    two = adamx.partition(
        {"a": adamx.schedule_free_sgd(0.1), "b": adamx.schedule_free_sgd(0.1)},
        {"w": "a", "b": "b", "nested": {"k": "a"}},
    )
    with pytest.raises(ValueError, match="found 2"):
        adamx.schedule_free_eval_params(two.init(make_params()), make_params())


# ------------------------------------------------------------ storage


def test_state_bits_store_the_second_moment_and_state_dtype_z():
    params = {"w": jnp.zeros((128, 64))}
    s = adamx.schedule_free_adamw(state_dtype=jnp.bfloat16).init(params)
    assert s.z["w"].dtype == jnp.bfloat16
    assert s.base_optimizer_state[0].nu["w"].dtype == jnp.float32
    s = adamx.schedule_free_adamw(state_bits=8).init(params)
    assert s.z["w"].dtype == jnp.float32
    assert isinstance(s.base_optimizer_state[0].nu["w"], adamx.QuantizedArray)


def test_state_bytes_per_param():
    params = {"w": jnp.zeros((1024, 1024))}
    n = 1024 * 1024
    full = adamx.state_nbytes(adamx.schedule_free_adamw().init(params)) / n
    eight = adamx.state_nbytes(adamx.schedule_free_adamw(state_bits=8).init(params)) / n
    assert 8.0 <= full < 8.01
    assert 5.0 < eight < 5.05, eight
    sgd = adamx.state_nbytes(adamx.schedule_free_sgd().init(params)) / n
    assert 4.0 <= sgd < 4.01
