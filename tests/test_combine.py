"""Combinators: chain, named_chain, partition and masked, alone and mixed with Optax."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

STEPS = 10
F64 = {"rtol": 1e-10, "atol": 1e-12}

# ---------------------------------------------------------------------------
# A small problem whose gradient depends on every parameter group, with targets
# large enough that the gradient norm exceeds 1 (so norm clipping is active).

_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(6, 4))
Y = 3.0 * _RNG.normal(size=(6, 2))


def make_params(dtype=jnp.float64):
    rng = np.random.default_rng(1)
    shapes = {"enc": {"w": (4, 3), "b": (3,)}, "head": {"w": (3, 2), "b": (2,)}}
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )
    params["emb"] = jnp.asarray(rng.normal(size=5), dtype)
    return params


def loss(params):
    dtype = params["emb"].dtype
    x, y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
    h = jnp.tanh(x @ params["enc"]["w"] + params["enc"]["b"])
    h = h * jnp.cos(jnp.sum(params["emb"]))
    out = h @ params["head"]["w"] + params["head"]["b"]
    return jnp.mean((out - y) ** 2) + 0.1 * jnp.sum(params["emb"] ** 2)


# Compiled once per dtype and shared by the tests, which would otherwise spend
# their time differentiating the loss op by op.
grad = jax.jit(jax.grad(loss))


def run(tx, params, steps=STEPS, apply_updates=adamx.apply_updates):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad(params), state, params)
        return apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def assert_moved(new, old):
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        assert not np.allclose(a, b)


def first_adam_step(g):
    """Adam's first bias-corrected step is g / (|g| + eps), whatever b1 and b2."""
    g = np.asarray(g)
    return g / (np.abs(g) + 1e-8)


# ------------------------------------------------------------------- chain


def _named(*transforms):
    return adamx.named_chain(*((f"stage{i}", t) for i, t in enumerate(transforms)))


COMBINATORS = {"chain": adamx.chain, "named_chain": _named}


@pytest.mark.parametrize("combine", COMBINATORS.values(), ids=COMBINATORS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_transformations_apply_in_order(combine, jit):
    g = jnp.array([3.0, -0.4, 0.25])
    clip_then_scale = combine(adamx.clip(1.0), adamx.scale(2.0))
    scale_then_clip = combine(adamx.scale(2.0), adamx.clip(1.0))
    for tx, expected in [
        (clip_then_scale, [2.0, -0.8, 0.5]),
        (scale_then_clip, [1.0, -0.8, 0.5]),
    ]:
        update = jax.jit(tx.update) if jit else tx.update
        np.testing.assert_allclose(update(g, tx.init(g))[0], expected, rtol=1e-6)


def test_chain_state_is_a_tuple_in_stage_order():
    tx = adamx.chain(adamx.scale_by_adam(), adamx.trace(0.5), adamx.scale(-1.0))
    g = jnp.array([2.0, -0.5, 1e-3])
    state = tx.init(g)
    assert isinstance(state, tuple) and len(state) == 3
    assert isinstance(state[0], adamx.ScaleByAdamState)
    assert isinstance(state[1], adamx.TraceState)
    assert state[2] == adamx.EmptyState()
    updates, state = jax.jit(tx.update)(g, state)
    assert int(state[0].count) == 1
    # The trace starts from zero, so after one step it holds Adam's output.
    np.testing.assert_allclose(state[1].trace, first_adam_step(g), rtol=1e-6)
    np.testing.assert_allclose(updates, -first_adam_step(g), rtol=1e-6)


def test_empty_chain_is_the_identity():
    tx = adamx.chain()
    g = {"w": jnp.ones(2)}
    state = tx.init(g)
    assert state == ()
    chex.assert_trees_all_equal(tx.update(g, state)[0], g)


@pytest.mark.parametrize("position", [0, 2])
@pytest.mark.parametrize(
    "bad",
    ["adam", None, lambda g: g, (1, 2), optax.adam],
    ids=["str", "none", "function", "tuple", "factory"],
)
def test_chain_rejects_a_non_transformation_naming_its_index(bad, position):
    transforms = [adamx.scale(1.0), adamx.clip(1.0)]
    transforms.insert(position, bad)
    with pytest.raises(TypeError, match=f"chain argument {position} "):
        adamx.chain(*transforms)


def test_chain_update_with_a_state_of_the_wrong_length():
    tx = adamx.chain(adamx.scale(2.0), adamx.scale_by_adam())
    g = jnp.ones(3)
    state = tx.init(g)
    with pytest.raises(ValueError, match="chain of 2 transformations.* 1 entries"):
        tx.update(g, state[:1])
    with pytest.raises(ValueError, match="chain of 2 transformations.* 3 entries"):
        tx.update(g, (*state, adamx.EmptyState()))


MIXED_CHAINS = {
    "adamx_chain_of_optax_clip_and_adamx_adam": (
        lambda: adamx.chain(optax.clip_by_global_norm(1.0), adamx.adam(1e-3)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
    ),
    "optax_chain_of_adamx_scale_by_adam": (
        lambda: optax.chain(adamx.scale_by_adam(), optax.scale(-1e-3)),
        lambda: optax.chain(optax.scale_by_adam(), optax.scale(-1e-3)),
    ),
}


@pytest.mark.parametrize("mixed, reference", MIXED_CHAINS.values(), ids=MIXED_CHAINS)
def test_chains_mixing_adamx_and_optax_match_optax(mixed, reference, x64):
    params = make_params()
    assert float(optax.tree.norm(grad(params))) > 1.0
    ours, _ = run(mixed(), params, steps=20)
    theirs, _ = run(reference(), params, steps=20, apply_updates=optax.apply_updates)
    chex.assert_trees_all_close(ours, theirs, **F64)
    assert_moved(ours, params)


# ------------------------------------------------------------- extra args


def scale_by_value(seen):
    """Multiplies the updates by the ``value`` extra argument; logs the names it got."""

    def update_fn(updates, state, params=None, **extra_args):
        del params
        seen.append(sorted(extra_args))
        return jax.tree.map(lambda g: g * extra_args["value"], updates), state

    return adamx.GradientTransformation(adamx.init_empty_state, update_fn)


# Each case: a factory of (recorder) -> transformation, and the factor each leaf
# of {"w", "b"} ends up multiplied by when value=3. optax.scale and adamx.clip
# take no **kwargs, so they fail if the value is not dropped for them.
EXTRA_ARGS_CASES = {
    "chain": (
        lambda rec: adamx.chain(adamx.clip(10.0), rec, optax.scale(2.0)),
        {"w": 6.0, "b": 6.0},
    ),
    "named_chain": (
        lambda rec: adamx.named_chain(
            ("clip", adamx.clip(10.0)), ("value", rec), ("lr", optax.scale(2.0))
        ),
        {"w": 6.0, "b": 6.0},
    ),
    "masked": (
        lambda rec: adamx.masked(
            adamx.chain(rec, optax.scale(2.0)), {"w": True, "b": False}
        ),
        {"w": 6.0, "b": 1.0},
    ),
    "partition": (
        lambda rec: adamx.partition(
            {"a": adamx.chain(rec, optax.scale(2.0)), "b": optax.scale(-1.0)},
            {"w": "a", "b": "b"},
        ),
        {"w": 6.0, "b": -1.0},
    ),
}


@pytest.mark.parametrize(
    "build, factors", EXTRA_ARGS_CASES.values(), ids=EXTRA_ARGS_CASES
)
def test_extra_args_reach_transformations_that_accept_them(build, factors):
    seen = []
    tx = build(scale_by_value(seen))
    g = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    update = jax.jit(lambda g, s, v: tx.update(g, s, g, value=v))
    updates, _ = update(g, tx.init(g), jnp.array(3.0))
    assert seen and all(names == ["value"] for names in seen)
    for name, factor in factors.items():
        np.testing.assert_allclose(updates[name], factor * np.asarray(g[name]))


def test_optax_transformations_without_kwargs_reject_extra_args():
    # The premise of the test above: passing the value on would be an error.
    tx = optax.scale(2.0)
    with pytest.raises(TypeError):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)), value=1.0)


@dataclasses.dataclass
class _CallableUpdate:
    """An update function that is an object; dataclass equality makes it unhashable."""

    factor: float

    def __call__(self, updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g: self.factor * g, updates), state


def test_extra_args_with_an_unhashable_update_callable():
    stage = adamx.GradientTransformation(adamx.init_empty_state, _CallableUpdate(2.0))
    tx = adamx.chain(stage)
    g = jnp.array([1.0, -2.0])
    updates, _ = tx.update(g, tx.init(g), value=1.0)
    np.testing.assert_allclose(updates, [2.0, -4.0])


# ------------------------------------------------ stateless, extra-args support


def _decay_by_params(updates, params):
    if params is None:
        return jax.tree.map(lambda g: 0.5 * g, updates)
    return jax.tree.map(lambda g, p: g + 0.01 * jnp.sin(p), updates, params)


def _leaf_decay(g, p):
    return 0.5 * g if p is None else g + 0.01 * jnp.sin(p)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (adamx.stateless(_decay_by_params), optax.stateless(_decay_by_params)),
        (
            adamx.stateless_with_tree_map(_leaf_decay),
            optax.stateless_with_tree_map(_leaf_decay),
        ),
    ],
    ids=["stateless", "stateless_with_tree_map"],
)
def test_stateless_matches_optax_over_100_steps(ours, theirs, x64):
    params = make_params()
    got, state = run(adamx.chain(ours, adamx.adam(1e-2)), params, steps=100)
    want, _ = run(
        optax.chain(theirs, optax.adam(1e-2)),
        params,
        steps=100,
        apply_updates=optax.apply_updates,
    )
    chex.assert_trees_all_close(got, want, **F64)
    assert_moved(got, params)
    assert state[0] == adamx.EmptyState()
    # Without params, f gets None.
    g = grad(params)
    chex.assert_trees_all_close(
        ours.update(g, ours.init(params), value=1.0)[0],
        theirs.update(g, theirs.init(params))[0],
        **F64,
    )


def test_with_extra_args_support_lets_a_plain_update_take_extra_args(x64):
    plain = optax.scale_by_adam()  # a GradientTransformation, no **extra_args
    tx = adamx.with_extra_args_support(plain)
    assert isinstance(tx, adamx.GradientTransformationExtraArgs)
    params = make_params()
    ours = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.array(1.0)))
    theirs = jax.jit(plain.update)
    state, theirs_state = tx.init(params), plain.init(params)
    for _ in range(100):
        g = grad(params)
        updates, state = ours(g, state, params)
        want, theirs_state = theirs(g, theirs_state, params)
        chex.assert_trees_all_close(updates, want, **F64)
        params = adamx.apply_updates(params, jax.tree.map(lambda u: -0.01 * u, updates))
    with pytest.raises(TypeError):
        plain.update(g, theirs_state, params, value=1.0)


def test_with_extra_args_support_keeps_updates_that_take_them():
    chained = adamx.chain(adamx.scale(2.0))
    assert adamx.with_extra_args_support(chained) is chained
    seen = []
    tx = adamx.with_extra_args_support(scale_by_value(seen))
    assert isinstance(tx, adamx.GradientTransformationExtraArgs)
    updates, _ = tx.update(jnp.ones(2), tx.init(None), value=3.0)
    np.testing.assert_array_equal(updates, [3.0, 3.0])
    assert seen == [["value"]]


# ------------------------------------------------------------- named_chain


def test_named_chain_state_is_keyed_by_name():
    tx = adamx.named_chain(
        ("clip", optax.clip_by_global_norm(1.0)),
        ("adam", adamx.scale_by_adam()),
        ("lr", adamx.scale(-0.1)),
    )
    g = jnp.array([3.0, -4.0])
    state = tx.init(g)
    assert list(state) == ["clip", "adam", "lr"]
    updates, state = jax.jit(tx.update)(g, state)
    assert int(state["adam"].count) == 1
    clipped = np.array([0.6, -0.8])
    np.testing.assert_allclose(state["adam"].mu, 0.1 * clipped, rtol=1e-6)
    np.testing.assert_allclose(updates, -0.1 * first_adam_step(clipped), rtol=1e-6)


def test_named_chain_rejects_duplicate_names():
    with pytest.raises(ValueError, match=r"duplicates \['a'\]"):
        adamx.named_chain(
            ("a", adamx.scale(1.0)), ("b", adamx.clip(1.0)), ("a", adamx.scale(2.0))
        )


@pytest.mark.parametrize(
    "bad",
    [
        ("lonely",),
        ("x", adamx.scale(1.0), "extra"),
        ["x", adamx.scale(1.0)],
        (1, adamx.scale(1.0)),
        ("x", "not a transformation"),
        adamx.scale(1.0),
    ],
    ids=["one", "three", "list", "int-name", "bad-transform", "bare-transform"],
)
def test_named_chain_rejects_a_bad_pair(bad):
    with pytest.raises(TypeError, match="named_chain argument 1"):
        adamx.named_chain(("ok", adamx.clip(1.0)), bad)


# --------------------------------------------------------------- partition


def _by_path(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _label_fn(params):
    def label(path, leaf):
        if jax.tree_util.keystr(path).startswith("['emb']"):
            return "frozen"
        return "adam" if leaf.ndim == 2 else "sgd"

    return jax.tree_util.tree_map_with_path(label, params)


FULL_LABELS = {
    "enc": {"w": "adam", "b": "sgd"},
    "head": {"w": "adam", "b": "sgd"},
    "emb": "frozen",
}
PREFIX_LABELS = {"enc": "adam", "head": "sgd", "emb": "frozen"}
PREFIX_FULL = {
    "enc": {"w": "adam", "b": "adam"},
    "head": {"w": "sgd", "b": "sgd"},
    "emb": "frozen",
}
LABEL_CASES = {
    "tree": (FULL_LABELS, FULL_LABELS),
    "prefix": (PREFIX_LABELS, PREFIX_FULL),
    "function": (_label_fn, FULL_LABELS),
}


def adamx_groups():
    return {
        "adam": adamx.adam(0.1),
        "sgd": adamx.sgd(0.1),
        "frozen": adamx.set_to_zero(),
    }


def run_groups_separately(transforms, full_labels, params, steps=STEPS):
    """Each optimizer on its own sub-dict of leaves, with gradients of the full loss."""
    labels = _by_path(full_labels)
    groups = {lab: [k for k, v in labels.items() if v == lab] for lab in transforms}
    treedef = jax.tree.structure(params)
    flat = _by_path(params)
    keys = list(flat)
    states = {
        lab: tx.init({k: flat[k] for k in groups[lab]})
        for lab, tx in transforms.items()
    }
    for _ in range(steps):
        grads = _by_path(grad(params))
        for lab, tx in transforms.items():
            sub_p = {k: flat[k] for k in groups[lab]}
            sub_g = {k: grads[k] for k in groups[lab]}
            updates, states[lab] = tx.update(sub_g, states[lab], sub_p)
            flat.update(optax.apply_updates(sub_p, updates))
        params = treedef.unflatten([flat[k] for k in keys])
    return params


@pytest.mark.parametrize("labels, full_labels", LABEL_CASES.values(), ids=LABEL_CASES)
def test_partition_equals_each_group_optimized_on_its_own(labels, full_labels, x64):
    params = make_params()
    ours, state = run(adamx.partition(adamx_groups(), labels), params)
    references = {
        "separately": run_groups_separately(adamx_groups(), full_labels, params),
        "optax.partition": run(
            optax.partition(adamx_groups(), labels),
            params,
            apply_updates=optax.apply_updates,
        )[0],
    }
    for name, reference in references.items():
        chex.assert_trees_all_close(ours, reference, **F64, custom_message=name)
    np.testing.assert_array_equal(ours["emb"], params["emb"])
    assert_moved([ours["enc"], ours["head"]], [params["enc"], params["head"]])

    assert isinstance(state, adamx.PartitionState)
    assert set(state.inner_states) == {"adam", "sgd", "frozen"}
    for inner in state.inner_states.values():
        assert isinstance(inner, adamx.MaskedState)


def test_partition_tree_label_without_transformation_fails_at_construction():
    labels = {"enc": "adam", "head": "bogus", "emb": "frozen"}
    with pytest.raises(ValueError, match="'bogus'"):
        adamx.partition(adamx_groups(), labels)


def test_partition_function_label_without_transformation_fails_at_init():
    tx = adamx.partition(adamx_groups(), lambda p: jax.tree.map(lambda _: "bogus", p))
    with pytest.raises(ValueError, match="'bogus'"):
        tx.init(make_params(jnp.float32))


@pytest.mark.parametrize(
    "labels",
    [
        {"enc": "adam", "head": "sgd"},
        {"enc": "adam", "head": "sgd", "emb": {"x": "frozen"}},
        ["adam", "sgd", "frozen"],
    ],
    ids=["missing-key", "too-deep", "list"],
)
def test_partition_label_tree_mismatch_prints_both_structures(labels):
    params = make_params(jnp.float32)
    tx = adamx.partition(adamx_groups(), labels)
    with pytest.raises(ValueError) as info:
        tx.init(params)
    message = str(info.value)
    assert str(jax.tree.structure(labels)) in message
    assert str(jax.tree.structure(params)) in message


def test_partition_rejects_a_non_transformation():
    with pytest.raises(TypeError, match=r"transforms\['sgd'\]"):
        adamx.partition({"adam": adamx.adam(0.1), "sgd": "sgd"}, {"w": "adam"})


# ------------------------------------------------------------------ masked


TREE_MASK = {
    "enc": {"w": True, "b": False},
    "head": {"w": True, "b": False},
    "emb": True,
}
PREFIX_MASK = {"enc": True, "head": False, "emb": False}
PREFIX_MASK_FULL = {
    "enc": {"w": True, "b": True},
    "head": {"w": False, "b": False},
    "emb": False,
}


def _is_matrix(tree):
    return jax.tree.map(lambda x: x.ndim == 2, tree)


MATRIX_MASK_FULL = {
    "enc": {"w": True, "b": False},
    "head": {"w": True, "b": False},
    "emb": False,
}
MASK_CASES = {
    "tree": (TREE_MASK, TREE_MASK),
    "prefix": (PREFIX_MASK, PREFIX_MASK_FULL),
    "callable": (_is_matrix, MATRIX_MASK_FULL),
}


def _hidden_structure(params, full_mask):
    hidden = jax.tree.map(
        lambda x, m: x if m else adamx.MaskedNode(), params, full_mask
    )
    return jax.tree.structure(hidden)


@pytest.mark.parametrize("mask, full_mask", MASK_CASES.values(), ids=MASK_CASES)
def test_masked_leaves_pass_through_and_keep_no_state(mask, full_mask):
    params = make_params(jnp.float32)
    tx = adamx.masked(adamx.scale_by_adam(), mask)
    state = tx.init(params)
    assert isinstance(state, adamx.MaskedState)
    expected_structure = _hidden_structure(params, full_mask)
    assert jax.tree.structure(state.inner_state.mu) == expected_structure
    assert jax.tree.structure(state.inner_state.nu) == expected_structure

    grads = grad(params)
    updates, new_state = jax.jit(tx.update)(grads, state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for u, g, m in zip(*map(jax.tree.leaves, (updates, grads, full_mask)), strict=True):
        if m:
            np.testing.assert_allclose(u, first_adam_step(g), rtol=1e-5)
        else:
            np.testing.assert_array_equal(u, g)


def _adam_then_lr(lib, wrap):
    """Masked Adam, then a step size: masked-out leaves take plain SGD steps."""
    return lib.chain(wrap(lib, lib.scale_by_adam()), lib.scale(-0.1))


MASKED_VS_OPTAX = {
    "tree": lambda lib, inner: lib.masked(inner, TREE_MASK),
    "prefix": lambda lib, inner: lib.masked(inner, PREFIX_MASK),
    "callable": lambda lib, inner: lib.masked(inner, _is_matrix),
    "nested": lambda lib, inner: lib.masked(
        lib.masked(inner, TREE_MASK), PREFIX_MASK_FULL
    ),
}


@pytest.mark.parametrize("wrap", MASKED_VS_OPTAX.values(), ids=MASKED_VS_OPTAX)
def test_masked_matches_optax_masked(wrap, x64):
    params = make_params()
    ours, _ = run(_adam_then_lr(adamx, wrap), params)
    theirs, _ = run(
        _adam_then_lr(optax, wrap), params, apply_updates=optax.apply_updates
    )
    chex.assert_trees_all_close(ours, theirs, **F64)
    assert_moved(ours, params)


@pytest.mark.parametrize(
    "outer",
    [PREFIX_MASK, PREFIX_MASK_FULL, lambda t: jax.tree.map(lambda x: x.ndim == 1, t)],
    ids=["prefix", "tree", "callable"],
)
def test_nested_masked_touches_only_leaves_both_masks_select(outer):
    params = make_params(jnp.float32)
    tx = adamx.masked(adamx.masked(adamx.scale_by_adam(), TREE_MASK), outer)
    outer_full = outer(params) if callable(outer) else PREFIX_MASK_FULL
    both = jax.tree.map(lambda a, b: a and b, outer_full, TREE_MASK)
    state = tx.init(params)
    inner_mu = state.inner_state.inner_state.mu
    assert jax.tree.structure(inner_mu) == _hidden_structure(params, both)

    grads = grad(params)
    updates, _ = jax.jit(tx.update)(grads, state)
    selected = 0
    for u, g, m in zip(*map(jax.tree.leaves, (updates, grads, both)), strict=True):
        if m:
            selected += 1
            np.testing.assert_allclose(u, first_adam_step(g), rtol=1e-5)
        else:
            np.testing.assert_array_equal(u, g)
    assert 0 < selected < len(jax.tree.leaves(params))


@pytest.mark.parametrize(
    "leaf",
    [
        1,
        "yes",
        jnp.array([True, True]),
        jnp.array(0.5),
    ],
    ids=["int", "str", "bool-vector", "float-scalar-array"],
)
@pytest.mark.parametrize("as_callable", [False, True], ids=["tree", "callable"])
def test_non_bool_mask_leaf_raises_type_error(leaf, as_callable):
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    mask = {"w": True, "b": leaf}
    with pytest.raises(TypeError, match="mask leaves must be"):
        tx = adamx.masked(adamx.scale(2.0), (lambda _: mask) if as_callable else mask)
        tx.init(params)


@pytest.mark.parametrize("np_bool", [np.True_, jnp.array(True)], ids=["numpy", "jax"])
def test_scalar_bool_arrays_are_valid_mask_leaves(np_bool):
    g = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = adamx.masked(adamx.scale(2.0), {"w": np_bool, "b": False})
    updates, _ = tx.update(g, tx.init(g))
    chex.assert_trees_all_equal(updates, {"w": 2.0 * jnp.ones(2), "b": jnp.ones(2)})


def test_traced_mask_raises_type_error():
    tx = adamx.masked(adamx.scale(2.0), lambda t: {"w": jnp.all(t["w"] > 0)})
    g = {"w": jnp.ones(2)}
    state = tx.init(g)
    with pytest.raises(TypeError, match="not traced"):
        jax.jit(tx.update)(g, state)


@pytest.mark.parametrize(
    "mask",
    [
        {"enc": True, "head": False},
        {"enc": True, "head": False, "emb": {"x": True}},
        [True, False, True],
    ],
    ids=["missing-key", "too-deep", "list"],
)
def test_mask_tree_mismatch_prints_both_structures(mask):
    params = make_params(jnp.float32)
    with pytest.raises(ValueError) as info:
        adamx.masked(adamx.scale(2.0), mask).init(params)
    message = str(info.value)
    assert str(jax.tree.structure(mask)) in message
    assert str(jax.tree.structure(params)) in message


@pytest.mark.parametrize(
    "mask, full_mask",
    [(PREFIX_MASK, PREFIX_MASK_FULL), (_is_matrix, MATRIX_MASK_FULL)],
    ids=["tree", "callable"],
)
def test_add_decayed_weights_decays_only_where_the_mask_is_true(mask, full_mask):
    params = make_params(jnp.float32)
    grads = grad(params)
    tx = adamx.add_decayed_weights(0.1, mask=mask)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    leaves = map(jax.tree.leaves, (updates, grads, params, full_mask))
    for u, g, p, m in zip(*leaves, strict=True):
        expected = np.asarray(g) + 0.1 * np.asarray(p) if m else np.asarray(g)
        np.testing.assert_allclose(u, expected, rtol=1e-6)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Module:
    """A callable pytree, as an Equinox module is: its fields are its leaves."""

    w: object
    b: object

    def __call__(self, params):
        raise AssertionError("a callable pytree mask must not be called")


def test_a_callable_pytree_mask_is_a_tree_as_in_optax():
    params = _Module(w=jnp.ones(2), b=jnp.ones(2))
    grads = _Module(w=jnp.full(2, 3.0), b=jnp.full(2, 3.0))
    mask = _Module(w=True, b=False)
    ours = adamx.masked(adamx.scale(2.0), mask)
    theirs = optax.masked(optax.scale(2.0), mask)
    got, _ = ours.update(grads, ours.init(params), params)
    want, _ = theirs.update(grads, theirs.init(params), params)
    np.testing.assert_array_equal(got.w, [6.0, 6.0])
    np.testing.assert_array_equal(got.b, [3.0, 3.0])
    chex.assert_trees_all_equal(got, want)
