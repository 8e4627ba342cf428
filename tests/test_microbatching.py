"""Tests of adamx/microbatching.py against optax.microbatching, in float64: the
functions themselves, and training loops whose gradients they compute."""

import inspect

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.microbatching as omb
import pytest

import adamx
from adamx import microbatching as amb

STEPS = 100
RNG = np.random.default_rng(0)
A = RNG.normal(size=(12, 3))
B = RNG.normal(size=(12, 3))


def _types(module, *names):
    return tuple(getattr(module.AccumulationType, n) for n in names)


def close(ours, theirs, tol=1e-12):
    helpers.assert_trees_close(ours, theirs, rtol=tol, atol=tol)


def per_example(c, a, b):
    return a * b, a / (1.0 + b**2) * c


def reductions(c, a, b):
    return {
        "sum": jnp.sum(c + a + 2 * b, axis=0),
        "mean": (jnp.mean(c * a), {"key": jnp.mean(b)}),
        "rows": a - b,
    }


def test_names_and_signatures_match_optax():
    # optax.microbatching's public names.
    theirs = {n for n in dir(omb) if not n.startswith("_")}
    assert set(amb.__all__) == theirs
    assert [t.name for t in amb.AccumulationType] == [
        t.name for t in omb.AccumulationType
    ]
    assert [f.name for f in amb.Accumulator.__dataclass_fields__.values()] == [
        f.name for f in omb.Accumulator.__dataclass_fields__.values()
    ]
    for name in ("microbatch", "micro_grad", "micro_vmap", "reshape_batch_axis"):
        ours = inspect.signature(getattr(amb, name)).parameters
        theirs = inspect.signature(getattr(omb, name)).parameters
        assert list(ours) == list(theirs), name
        for p in ours:
            assert ours[p].kind == theirs[p].kind, (name, p)
            if not callable(theirs[p].default) or p == "vmap_fn":
                default = ours[p].default
                if isinstance(default, amb.AccumulationType):
                    default = default.name
                    assert default == theirs[p].default.name, (name, p)
                else:
                    assert default == theirs[p].default, (name, p)
    assert adamx.microbatch is amb.microbatch


@pytest.mark.parametrize("size", [1, 4, 12])
@pytest.mark.parametrize(
    ("fun", "acc"),
    [
        (per_example, ("CONCAT",)),
        (per_example, ("RUNNING_MEAN",)),
        (reductions, {"sum": "SUM", "mean": "MEAN", "rows": "CONCAT"}),
    ],
    ids=["concat", "running_mean", "tree"],
)
def test_microbatch_matches_optax_in_float64(x64, size, fun, acc):
    def accumulator(module):
        if isinstance(acc, dict):
            return {k: getattr(module.AccumulationType, v) for k, v in acc.items()}
        return getattr(module.AccumulationType, acc[0])

    args = (jnp.float64(0.7), jnp.asarray(A), jnp.asarray(B))
    ours = amb.microbatch(fun, (1, 2), size, accumulator(amb))(*args)
    theirs = omb.microbatch(fun, (1, 2), size, accumulator(omb))(*args)
    close(ours, theirs)
    if acc != ("RUNNING_MEAN",):
        close(ours, fun(*args))  # the rows come back in order


def test_strided_microbatches_and_reshape_batch_axis_match_optax():
    def fun(x):
        return x[:-1] @ x[1:]

    x = jnp.arange(6.0)
    ours = amb.microbatch(fun, 0, 3)(x)
    assert (
        float(ours)
        == float(omb.microbatch(fun, 0, 3)(x))
        == 0 * 2 + 2 * 4 + 1 * 3 + 3 * 5
    )
    tree = {"a": jnp.arange(24.0).reshape(2, 12), "b": jnp.arange(12)}
    close(
        amb.reshape_batch_axis(tree["a"], 4, 1), omb.reshape_batch_axis(tree["a"], 4, 1)
    )
    np.testing.assert_array_equal(
        amb.reshape_batch_axis(tree["b"], 3), omb.reshape_batch_axis(tree["b"], 3)
    )


@pytest.mark.parametrize("acc", ["SUM", "MEAN", "RUNNING_MEAN", "CONCAT"])
def test_in_axes_argnames_and_early_stop_match_optax(x64, acc):
    arg0 = jnp.asarray(RNG.normal(size=(8, 4, 5)))
    arg1 = jnp.transpose(arg0, (1, 0, 2))

    def fun(a, b):
        return jnp.einsum("bij,kbj->ik", a, b)

    for module_kwargs in [
        dict(argnums=(0, 1), in_axes=(0, 1)),
        dict(argnums=(), argnames=("b", "a"), in_axes=(1, 0)),
        dict(argnums=0, argnames="b", in_axes=(0, 1), num_real_microbatches=3),
    ]:
        results = []
        for module in (amb, omb):
            f = module.microbatch(
                fun,
                microbatch_size=2,
                accumulator=getattr(module.AccumulationType, acc),
                **module_kwargs,
            )
            if module_kwargs["argnums"] == ():
                results.append(f(a=arg0, b=arg1))
            elif module_kwargs["argnums"] == 0:
                results.append(f(arg0, b=arg1))
            else:
                results.append(f(arg0, arg1))
        close(*results)


def test_traced_number_of_microbatches():
    @jax.jit
    def fun(x, steps):
        return amb.microbatch(jnp.sum, 0, 4, num_real_microbatches=steps)(x)

    x = jnp.arange(128.0)
    # Microbatch i holds rows i, i + 32, i + 64, i + 96.
    expected = sum(float(x[i::32].sum()) for i in range(5))
    assert float(fun(x, 5)) == expected
    assert float(fun(x, 7)) == sum(float(x[i::32].sum()) for i in range(7))


def test_micro_vmap_matches_jax_vmap_and_optax(x64):
    x = jnp.asarray(RNG.normal(size=(2, 8, 3)))
    close(amb.micro_vmap(jnp.sum, 1, microbatch_size=2)(x), jax.vmap(jnp.sum, 1)(x))

    def fun(x, *, y):
        return jnp.sum(x * y)

    y = jnp.asarray(RNG.normal(size=(2, 3)))
    ours = amb.micro_vmap(fun, microbatch_size=2)(x[0], y=x[1])
    close(ours, jax.vmap(fun)(x[0], y=x[1]))
    for acc in ("SUM", "MEAN"):
        ours = amb.micro_vmap(
            fun,
            0,
            microbatch_size=4,
            accumulator=amb.AccumulationType[acc],
            num_real_microbatches=1,
        )(x[0], y=x[1])
        theirs = omb.micro_vmap(
            fun,
            0,
            microbatch_size=4,
            accumulator=omb.AccumulationType[acc],
            num_real_microbatches=1,
        )(x[0], y=x[1])
        close(ours, theirs)
    del y


def _clip_each(max_norm):
    def clip(g):
        norm = optax.tree.norm(g)
        return jax.tree.map(lambda x: x * jnp.minimum(1.0, max_norm / norm), g)

    return clip


@pytest.mark.parametrize("keep_batch_dim", [True, False])
def test_training_on_clipped_per_example_gradients_matches_optax(x64, keep_batch_dim):
    # DP-SGD's gradient without the noise: each example's gradient clipped,
    # then averaged, in microbatches of 4, for 100 steps of Adam.
    def example_loss(params, x):
        x = x if keep_batch_dim else x[None]
        return helpers.loss(params, x)

    def grad_fn(module):
        return module.micro_grad(
            example_loss,
            batch_argnums=1,
            keep_batch_dim=keep_batch_dim,
            microbatch_size=4,
            accumulator=module.AccumulationType.MEAN,
            transform_fn=_clip_each(0.5),
            metrics_fn=optax.tree.norm,
        )

    def train(module, tx, apply):
        @jax.jit
        def step(params, state, x):
            grads, aux = grad_fn(module)(params, x)
            updates, state = tx.update(grads, state, params)
            return apply(params, updates), state, aux

        params = helpers.make_params(jnp.float64)
        state = tx.init(params)
        for i in range(STEPS):
            params, state, aux = step(params, state, helpers.batch(i, jnp.float64, 16))
        return params, aux

    p_ours, aux_ours = train(amb, adamx.adam(1e-2), adamx.apply_updates)
    p_theirs, aux_theirs = train(omb, optax.adam(1e-2), optax.apply_updates)
    close(p_ours, p_theirs, 1e-10)
    close(aux_ours.values, aux_theirs.values)
    close(aux_ours.metrics, aux_theirs.metrics)
    assert aux_ours.values.shape == (16,) and aux_ours.aux is None


def test_gradient_accumulation_in_one_call_matches_optax(x64):
    # The sum of the microbatches' gradients of a summed loss is the whole
    # batch's gradient; 100 steps of SGD on it.
    def summed_loss(params, x):
        return helpers.loss(params, x) * x.shape[0]

    def train(grad, tx, apply):
        @jax.jit
        def step(params, state, x):
            updates, state = tx.update(grad(params, x), state, params)
            return apply(params, updates), state

        params = helpers.make_params(jnp.float64)
        state = tx.init(params)
        for i in range(STEPS):
            params, state = step(params, state, helpers.batch(i, jnp.float64))
        return params

    grad = jax.grad(summed_loss)
    ours = amb.microbatch(grad, argnums=1, microbatch_size=2)
    theirs = omb.microbatch(grad, argnums=1, microbatch_size=2)
    p_ours = train(ours, adamx.sgd(1e-3, momentum=0.9), adamx.apply_updates)
    p_theirs = train(theirs, optax.sgd(1e-3, momentum=0.9), optax.apply_updates)
    close(p_ours, p_theirs, 1e-10)
    p_whole = train(grad, adamx.sgd(1e-3, momentum=0.9), adamx.apply_updates)
    close(p_ours, p_whole, 1e-10)


def test_dtypes_are_kept_and_means_need_floats(strict_promotion):
    x = jnp.asarray(A, jnp.bfloat16)
    for acc in amb.AccumulationType:
        out = amb.microbatch(lambda v: v * 2, 0, 3, acc)(x)
        assert out.dtype == jnp.bfloat16, acc
    with pytest.raises(ValueError, match="MEAN needs floating-point results.*int32"):
        amb.microbatch(jnp.sum, 0, 2, amb.AccumulationType.MEAN)(jnp.arange(4))
    with pytest.raises(ValueError, match=r"one size, got \[4, 6\]"):
        amb.microbatch(lambda a, b: a, (0, 1), 2)(jnp.ones(4), jnp.ones(6))
    assert amb.microbatch(jnp.sum, 0, None) is jnp.sum
