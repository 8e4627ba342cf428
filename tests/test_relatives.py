"""Tests of adamx/relatives.py: Yogi, Adan and NovoGrad.

Each ``scale_by_*`` against Optax's own in float64 over 100 steps, for every
option that changes the math (Adan where Optax's coefficient of the gradient
difference agrees with the authors', at b2 = 0.5); Adan against
``pytorch_optimizer``'s port of the authors' code at their defaults; the
states against Optax's classes; edge cases (zero gradients, NovoGrad without
params, schedules, a decay mask); and Adan's and NovoGrad's state at 16, 8
and 4 bits, which test_storage's shared checks do not reach (they read
Adam's field names; Yogi, with Adam's state, takes them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, make_params
from test_adagrad import STEPS, against_optax, max_diff, pair_run, torch_run
from test_lowbit import map_name
from test_storage import big_params, quadratic_run

import adamx
from adamx.lowbit import QuantizedArray, state_nbytes

# Each transformation, then a plain -lr scaling on both sides.
TRANSFORMS = {
    "yogi": (adamx.scale_by_yogi, optax.scale_by_yogi, {}),
    "yogi-options": (
        adamx.scale_by_yogi,
        optax.scale_by_yogi,
        {
            "b1": 0.5,
            "b2": 0.9,
            "eps": 1e-6,
            "eps_root": 1e-4,
            "initial_accumulator_value": 0.0,
        },
    ),
    "adan": (adamx.scale_by_adan, optax.scale_by_adan, {"b2": 0.5}),
    "adan-options": (
        adamx.scale_by_adan,
        optax.scale_by_adan,
        {"b1": 0.9, "b2": 0.5, "b3": 0.95, "eps": 1e-6, "eps_root": 1e-4},
    ),
    "novograd": (adamx.scale_by_novograd, optax.scale_by_novograd, {}),
    "novograd-options": (
        adamx.scale_by_novograd,
        optax.scale_by_novograd,
        {"b1": 0.5, "b2": 0.9, "eps": 1e-6, "eps_root": 1e-4, "weight_decay": 0.1},
    ),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transforms_match_optax_in_float64(x64, name):
    ours, theirs, kw = TRANSFORMS[name]
    diff = against_optax(
        adamx.chain(ours(**kw), adamx.scale(-0.01)),
        optax.chain(theirs(**kw), optax.scale(-0.01)),
    )
    print(f"{name}: max abs diff {diff:.1e} over {STEPS} steps")


def test_schedules_and_a_decay_mask_match_optax(x64):
    mask = {"w": True, "b": False, "nested": {"k": True}}
    rate = optax.linear_schedule(0.03, 0.005, 60)
    decay = optax.linear_schedule(0.1, 0.0, 40)
    adan = {"b2": 0.5, "weight_decay": decay, "mask": mask}
    against_optax(
        adamx.chain(adamx.adan(rate, **adan), adamx.novograd(rate), adamx.yogi(rate)),
        optax.chain(optax.adan(rate, **adan), optax.novograd(rate), optax.yogi(rate)),
    )


@pytest.mark.parametrize(
    "kw, torch_kw",
    [
        ({"eps_root": 0.0}, {}),
        (
            {
                "b1": 0.9,
                "b2": 0.8,
                "b3": 0.95,
                "eps": 1e-6,
                "eps_root": 0.0,
                "weight_decay": 0.05,
            },
            {
                "betas": (0.9, 0.8, 0.95),
                "eps": 1e-6,
                "weight_decay": 0.05,
                "weight_decouple": True,
            },
        ),
    ],
    ids=["defaults", "options"],
)
def test_adan_matches_the_authors_algorithm_in_pytorch_optimizer(x64, kw, torch_kw):
    # At b2 != 0.5 Optax 0.2.8 weighs the gradient difference by 1 - b2;
    # the authors (and adamx) by b2.
    po = pytest.importorskip("pytorch_optimizer")
    want = torch_run(po.Adan, {"lr": 1e-2, "foreach": False, **torch_kw})
    got, optax_run = pair_run(adamx.adan(1e-2, **kw), optax.adan(1e-2, **kw))
    assert_trees_close(got, want, rtol=1e-10, atol=1e-12)
    assert max_diff(optax_run, want) > 1e-3
    print(f"adan {kw}: max abs diff {max_diff(got, want):.1e} over {STEPS} steps")


def test_states_have_optaxs_fields_and_leaves():
    params = make_params()
    pairs = [
        (adamx.scale_by_yogi(), optax.scale_by_yogi()),
        (adamx.scale_by_adan(), optax.scale_by_adan()),
        (adamx.scale_by_novograd(), optax.scale_by_novograd()),
    ]
    for ours, theirs in pairs:
        a, b = jax.eval_shape(ours.init, params), jax.eval_shape(theirs.init, params)
        assert type(a).__name__ == type(b).__name__
        assert a._fields == b._fields
        assert [x.shape for x in jax.tree.leaves(a)] == [
            x.shape for x in jax.tree.leaves(b)
        ]
    # The count is found by name, as Optax's tree utilities look it up.
    state = adamx.adan(0.1).init(params)
    assert int(optax.tree.get(state, "t")) == 0


def test_zero_gradients_give_zero_updates_and_novograd_needs_params_to_decay():
    params = {"w": jnp.ones((3, 4)), "v": jnp.ones(4), "s": jnp.ones(())}
    zeros = jax.tree.map(jnp.zeros_like, params)
    # (Yogi's m starts at 1e-6, as Optax's does, so it steps without a gradient.)
    txs = [adamx.adan(0.1), adamx.novograd(0.1)]

    @jax.jit
    def two_steps(states):
        out = []
        for tx, s in zip(txs, states, strict=True):
            u1, s = tx.update(zeros, s, params)
            u2, s = tx.update(zeros, s, params)
            out.append((u1, u2, s))
        return out

    for u1, u2, state in two_steps([tx.init(params) for tx in txs]):
        for leaf in jax.tree.leaves((u1, u2)):
            np.testing.assert_array_equal(leaf, 0.0)
        for leaf in jax.tree.leaves(state):
            assert np.all(np.isfinite(np.asarray(leaf)))
    # NovoGrad reads the params only to decay them (Optax's always needs them).
    tx = adamx.novograd(0.1)
    tx.update(zeros, tx.init(params))
    tx = adamx.novograd(0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(zeros, tx.init(params))


def test_novograd_keeps_one_second_moment_per_leaf_and_mu_dtype():
    params = make_params()
    tx = adamx.scale_by_novograd(mu_dtype=jnp.bfloat16)
    state = tx.init(params)
    nus = jax.tree.leaves(state.nu)
    assert len(nus) == 3 and all(v.shape == () and v.dtype == jnp.float32 for v in nus)
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(state.mu))
    # v is ||g||^2 on the first step.
    g = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(g, state)
    np.testing.assert_allclose(state.nu["w"], 24.0)


# ----------------------------------------------------------------- storage

# Adan (b1 = 0.9: at its default 0.98 the first moment changes by 2% a step,
# less than an 8-bit code resolves; see scale_by_adan) and NovoGrad, with the
# fields each quantizes and whether each is signed.
STORED = {
    "adan": (
        lambda **s: adamx.adan(1e-2, b1=0.9, **s),
        {"m": True, "v": True, "n": False, "g": True},
    ),
    "novograd": (lambda **s: adamx.novograd(0.3, **s), {"mu": True}),
}


@pytest.mark.parametrize("name", list(STORED))
def test_state_bits_store_the_state_as_asked(name):
    make, fields = STORED[name]
    params = big_params()
    for bits in (16, 8, 4):
        state = jax.eval_shape(make(state_bits=bits).init, params)[0]
        for field, signed in fields.items():
            tree = getattr(state, field)
            if bits == 16:
                assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(tree))
                continue
            assert tree["b"].dtype == jnp.float32, "small leaves keep float32"
            for key in ("w", "odd"):
                assert isinstance(tree[key], QuantizedArray), (field, key)
                assert tree[key].bits == bits
                assert tree[key].format.code_map == map_name(bits, signed), field
        if name == "novograd":  # one number per leaf, at full precision
            assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state.nu))


# Measured: 8-bit state 0.26x of float32's; final losses within 1%.
# (Steps at 4 bits take the same path through adamx.lowbit, with other codes.)
@pytest.mark.parametrize("name", list(STORED))
def test_8_bit_state_keeps_the_float32_loss(name):
    make, _ = STORED[name]
    params = big_params()
    full = state_nbytes(jax.eval_shape(make().init, params))
    eight = state_nbytes(jax.eval_shape(make(state_bits=8).init, params))
    assert eight <= 0.3 * full, (eight, full)
    _, ref = quadratic_run(make(), steps=STEPS)
    _, ours = quadratic_run(make(state_bits=8), steps=STEPS)
    assert ref[-1] < 0.5 * ref[0]  # it trains, so the loss says something
    assert abs(ours[-1] / ref[-1] - 1) < 0.05, (ours[-1], ref[-1])
    print(f"{name}: 8-bit state {eight / full:.2f}x, loss {ours[-1] / ref[-1]:.4f}x")
