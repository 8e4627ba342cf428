"""adamx inside the Optax and Flax machinery that expects an Optax optimizer.

Every check runs the same loop twice, once with adamx and once with Optax, and
compares the results: the Flax and Optax code paths are the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training import train_state
from helpers import assert_trees_close

import adamx

_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.normal(size=(32, 8)), jnp.float32)
Y = jnp.asarray(_RNG.normal(size=(32, 1)), jnp.float32)
F32_RTOL = 1e-5
F32_ATOL = 1e-6


# ------------------------------------------------------------- Flax NNX


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def train_nnx(tx, steps=20):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [
        float(step(model, optimizer, X[i % 4 :: 4], Y[i % 4 :: 4]))
        for i in range(steps)
    ]
    return np.array(losses), nnx.state(model, nnx.Param), optimizer


def test_nnx_optimizer_trains_like_optax():
    losses, params, optimizer = train_nnx(adamx.adamw(1e-3, weight_decay=1e-2))
    ref_losses, ref_params, _ = train_nnx(optax.adamw(1e-3, weight_decay=1e-2))
    np.testing.assert_allclose(losses, ref_losses, rtol=F32_RTOL)
    assert_trees_close(
        nnx.to_pure_dict(params), nnx.to_pure_dict(ref_params), F32_RTOL, F32_ATOL
    )
    assert int(optimizer.step[...]) == 20
    # Training made progress: the comparison is not of two untouched models.
    assert losses[-1] < losses[0]


# ------------------------------------------------------ Flax TrainState


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(1)(linen.relu(linen.Dense(16)(x)))


@jax.jit
def train_step(state, x, y):
    def loss_fn(params):
        return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def _cosine(lib):
    return lib.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 10)


TRAIN_STATE_PAIRS = [
    pytest.param(lambda lib: lib.adam(1e-3), id="adam"),
    pytest.param(
        lambda lib: lib.adamw(_cosine(lib), weight_decay=0.1), id="adamw-schedule"
    ),
    pytest.param(
        lambda lib: lib.sgd(1e-2, momentum=0.9, nesterov=True), id="sgd-nesterov"
    ),
]


@pytest.mark.parametrize("make_tx", TRAIN_STATE_PAIRS)
def test_train_state_apply_gradients_matches_optax(make_tx):
    model = LinenMLP()
    params = model.init(jax.random.key(0), X)["params"]

    def run(tx):
        state = train_state.TrainState.create(
            apply_fn=model.apply, params=params, tx=tx
        )
        losses = []
        for i in range(8):
            state, loss = train_step(state, X[i % 4 :: 4], Y[i % 4 :: 4])
            losses.append(float(loss))
        return state, np.array(losses)

    ours, our_losses = run(make_tx(adamx))
    theirs, their_losses = run(make_tx(optax))
    np.testing.assert_allclose(our_losses, their_losses, rtol=F32_RTOL)
    assert_trees_close(ours.params, theirs.params, F32_RTOL, F32_ATOL)
    assert int(ours.step) == 8
    assert not np.allclose(
        ours.params["Dense_0"]["kernel"], params["Dense_0"]["kernel"]
    )


# ------------------------------------------------- mixed Optax/adamx chains


def _params(dtype):
    rng = np.random.default_rng(1)
    return {
        "w": jnp.asarray(rng.normal(size=(5, 3)), dtype),
        "b": jnp.asarray(rng.normal(size=(3,)), dtype),
    }


def _loss(params, x):
    # The factor 3 puts the gradient norm around 1, so the clipping in the
    # mixed chains is active on some steps and not on others.
    return 3.0 * jnp.mean(jnp.sin(x @ params["w"] + params["b"]) ** 2)


def run_chain(tx, steps=15):
    params = _params(jnp.float64)
    state = tx.init(params)
    grad = jax.jit(jax.grad(_loss))
    # Jitted: MultiSteps' lax.cond would otherwise compile on every eager call,
    # and inject_hyperparams then hands adamx traced hyperparameters.
    update = jax.jit(tx.update)
    norms = []
    for i in range(steps):
        x = jnp.asarray(np.random.default_rng(10 + i).normal(size=(6, 5)))
        g = grad(params, x)
        norms.append(float(optax.tree.norm(g)))
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, norms


MIXED = [
    pytest.param(
        lambda: adamx.chain(optax.clip_by_global_norm(1.0), adamx.adam(1e-2)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
        id="adamx.chain(optax.clip, adamx.adam)",
    ),
    pytest.param(
        lambda: optax.chain(adamx.scale_by_adam(), optax.scale(-1e-2)),
        lambda: optax.chain(optax.scale_by_adam(), optax.scale(-1e-2)),
        id="optax.chain(adamx.scale_by_adam, optax.scale)",
    ),
    pytest.param(
        lambda: optax.chain(
            optax.masked(adamx.add_decayed_weights(0.1), {"w": True, "b": False}),
            adamx.sgd(1e-2, momentum=0.9),
        ),
        lambda: optax.chain(
            optax.add_decayed_weights(0.1, mask={"w": True, "b": False}),
            optax.sgd(1e-2, momentum=0.9),
        ),
        id="optax.masked(adamx.add_decayed_weights)",
    ),
    pytest.param(
        lambda: optax.inject_hyperparams(adamx.adam)(learning_rate=1e-2, b1=0.8),
        lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2, b1=0.8),
        id="optax.inject_hyperparams(adamx.adam)",
    ),
    pytest.param(
        lambda: optax.MultiSteps(adamx.adamw(1e-2, weight_decay=0.1), 3),
        lambda: optax.MultiSteps(optax.adamw(1e-2, weight_decay=0.1), 3),
        id="optax.MultiSteps(adamx.adamw)",
    ),
]


@pytest.mark.parametrize(("make_ours", "make_theirs"), MIXED)
def test_mixed_chain_matches_pure_optax(make_ours, make_theirs, x64):
    ours, norms = run_chain(make_ours())
    theirs, _ = run_chain(make_theirs())
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert not np.allclose(ours["w"], _params(jnp.float64)["w"])
    assert min(norms) < 1.0 < max(norms)


# ------------------------------------------------ Optax state utilities


def _adam_state_after_one_step():
    params = _params(jnp.float32)
    tx = adamx.adam(0.1)
    _, state = tx.update(params, tx.init(params), params)
    return state


def test_optax_tree_get_finds_moments_and_learning_rate():
    state = _adam_state_after_one_step()
    mu = optax.tree_utils.tree_get(state, "mu")
    assert jax.tree.structure(mu) == jax.tree.structure(_params(jnp.float32))
    np.testing.assert_allclose(optax.tree_utils.tree_get(state, "rate"), 0.1)
    # As in Optax's own adam state, no field is named "learning_rate".
    assert optax.tree_utils.tree_get(state, "learning_rate") is None


def test_optax_tree_get_count_as_with_optax_adam():
    assert int(optax.tree_utils.tree_get(_adam_state_after_one_step(), "count")) == 1


def test_optax_tree_get_finds_the_injected_learning_rate():
    # Optax's lookup by name must see one "learning_rate": the injected one.
    params = {"w": jnp.ones(2)}
    state = adamx.inject_hyperparams(adamx.adam)(42.0).init(params)
    assert float(optax.tree.get(state, "learning_rate")) == 42.0
    theirs = optax.inject_hyperparams(optax.adam)(42.0).init(params)
    assert float(optax.tree.get(theirs, "learning_rate")) == 42.0
    # The last stage still records the rate, under its own name.
    assert float(adamx.get_learning_rate(adamx.adam(0.5).init(params))) == 0.5


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamx.chain(adamx.scale(1.0)),
        lambda: adamx.named_chain(("s", adamx.scale(1.0))),
        lambda: adamx.adam(0.1),
        lambda: adamx.masked(adamx.scale(1.0), {"w": True}),
        lambda: adamx.partition({"a": adamx.scale(1.0)}, {"w": "a"}),
        lambda: adamx.inject_hyperparams(adamx.sgd)(0.1),
        lambda: adamx.apply_if_finite(adamx.sgd(0.1), 3),
    ],
    ids=["chain", "named_chain", "adam", "masked", "partition", "inject", "finite"],
)
def test_combinators_are_extra_args_transformations_and_forward_them(make):
    tx = make()
    assert isinstance(tx, adamx.GradientTransformationExtraArgs)
    assert isinstance(tx, adamx.GradientTransformation)
    params = {"w": jnp.ones(2)}
    plain, _ = tx.update(params, tx.init(params), params)
    extra, _ = tx.update(params, tx.init(params), params, value=1.0, unused=2)
    np.testing.assert_array_equal(plain["w"], extra["w"])
