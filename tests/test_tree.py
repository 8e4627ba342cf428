"""Tests of adamx/tree.py, adamx/lookup.py and adamx/numerics.py: each function
against Optax's of the same name on the same inputs (float64 trees of several
leaves, None leaves, integer and complex leaves), its signature against Optax's,
and the state lookups (get, set, get_all_with_path, map_params) on adamx's
optimizer states, masked and injected ones included."""

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx import tree

# ---------------------------------------------------------------- inputs


def floats(seed=0, dtype=jnp.float64):
    """Several leaves of several ranks, nested, with a None leaf."""
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 4)), dtype),
        "b": jnp.asarray(rng.normal(size=(4,)), dtype),
        "nested": {"k": jnp.asarray(rng.normal(size=(4,)), dtype), "x": None},
        "s": jnp.asarray(rng.normal(), dtype),
    }


def ints(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": jnp.asarray(rng.integers(-5, 6, size=(3, 2)), jnp.int32),
        "b": jnp.asarray(rng.integers(-5, 6, size=(4,)), jnp.int32),
    }


def complexes(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "z": jnp.asarray(rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))),
        "r": jnp.asarray(rng.normal(size=(4,)) + 1j * rng.normal(size=(4,))),
    }


def assert_same(ours, theirs, rtol=0.0):
    """Same structure (None leaves included), dtypes and numbers (to ``rtol``)."""
    is_none = lambda x: x is None  # noqa: E731
    assert jax.tree.structure(ours, is_leaf=is_none) == jax.tree.structure(
        theirs, is_leaf=is_none
    )
    for x, y in zip(
        jax.tree.leaves(ours, is_leaf=is_none),
        jax.tree.leaves(theirs, is_leaf=is_none),
        strict=True,
    ):
        if y is None or isinstance(y, (np.dtype, str, int, float)):
            assert type(x) is type(y) and x == y, (x, y)
            continue
        assert jnp.asarray(x).dtype == jnp.asarray(y).dtype, (x, y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


# ---------------------------------------------------------------- signatures

NAMES = [n for n in tree.__all__ if n != "NamedTupleKey"]


def test_names_are_optaxs():
    optax_names = {n for n in dir(optax.tree) if not n.startswith("_")}
    assert set(NAMES) == optax_names - {"tree_utils"} - {
        n for n in optax_names if inspect.ismodule(getattr(optax.tree, n))
    }


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_optaxs(name):
    ours = inspect.signature(getattr(tree, name)).parameters
    theirs = inspect.signature(getattr(optax.tree, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


@pytest.mark.parametrize(
    "name",
    [
        "tree_map_params",
        "update_moment",
        "update_infinity_moment",
        "update_moment_per_elem_norm",
        "safe_norm",
        "safe_root_mean_squares",
        "safe_increment",
        "safe_int32_increment",
    ],
)
def test_top_level_names(name):
    ours = getattr(adamx, name)
    assert name in adamx.__all__
    params = inspect.signature(ours).parameters.values()
    theirs = inspect.signature(getattr(optax, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in params] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    if name.startswith("update_") or name == "tree_map_params":
        short = name.removeprefix("tree_")
        assert ours is getattr(tree, short)


def test_one_implementation_each():
    assert adamx.safe_int32_increment is adamx.safe_increment
    assert tree.zeros_like is adamx.tree_zeros_like
    assert tree.bias_correction is adamx.bias_correction


# ---------------------------------------------------------------- arithmetic

# (name, call, the kinds of leaves: f float64, i int32, c complex128)
UNARY = [
    ("conj", lambda m, t: m.conj(t), "fc"),
    ("real", lambda m, t: m.real(t), "fc"),
    ("scale", lambda m, t: m.scale(-0.3, t), "fic"),
    ("clip_both", lambda m, t: m.clip(t, -0.5, 0.7), "fi"),
    ("clip_min", lambda m, t: m.clip(t, min_value=0.1), "f"),
    ("clip_max", lambda m, t: m.clip(t, max_value=0.1), "f"),
    ("batch_shape", lambda m, t: m.batch_shape(t, (2, 3)), "f"),
    ("batch_shape_none", lambda m, t: m.batch_shape(t), "f"),
    ("zeros_like", lambda m, t: m.zeros_like(t), "fc"),
    ("zeros_like_int", lambda m, t: m.zeros_like(t, jnp.int32), "f"),
    ("ones_like", lambda m, t: m.ones_like(t), "fi"),
    ("ones_like_f32", lambda m, t: m.ones_like(t, dtype=jnp.float32), "i"),
    ("full_like", lambda m, t: m.full_like(t, 2.5), "fc"),
    ("full_like_int", lambda m, t: m.full_like(t, 3, jnp.int32), "f"),
    ("cast", lambda m, t: m.cast(t, jnp.float32), "fi"),
    ("cast_none", lambda m, t: m.cast(t, None), "f"),
    ("sum", lambda m, t: m.sum(t), "fic"),
    ("sum_associative", lambda m, t: m.sum(t, associative_reduction=True), "f"),
    ("max", lambda m, t: m.max(t), "fi"),
    ("min", lambda m, t: m.min(t), "fi"),
    ("size", lambda m, t: m.size(t), "f"),
    ("dtype", lambda m, t: m.dtype(t), "fic"),
]
BINARY = [
    ("add", lambda m, x, y: m.add(x, y), "fic"),
    ("add3", lambda m, x, y: m.add(x, y, x), "f"),
    ("sub", lambda m, x, y: m.sub(x, y), "fi"),
    ("mul", lambda m, x, y: m.mul(x, y), "fic"),
    ("div", lambda m, x, y: m.div(x, y), "fic"),
    ("add_scale", lambda m, x, y: m.add_scale(x, -0.7, y), "fc"),
    ("where_true", lambda m, x, y: m.where(jnp.array(True), x, y), "fi"),
    ("where_false", lambda m, x, y: m.where(False, x, y), "f"),
    ("vdot", lambda m, x, y: m.vdot(x, y), "fic"),
    ("cast_like", lambda m, x, y: m.cast_like(x, m.cast(y, jnp.float32)), "fi"),
    ("allclose_far", lambda m, x, y: m.allclose(x, y), "fc"),
    ("allclose_near", lambda m, x, y: m.allclose(x, m.add_scale(x, 1e-9, y)), "f"),
    ("allclose_tol", lambda m, x, y: m.allclose(x, y, rtol=10.0, atol=5.0), "fi"),
]
KINDS = {"f": floats, "i": ints, "c": complexes}


def cases(table):
    return [
        pytest.param(name, fn, KINDS[k], id=f"{name}-{KINDS[k].__name__}")
        for name, fn, kinds in table
        for k in kinds
    ]


MOMENTS = [
    ("update_moment_1", lambda m, g, t: m.update_moment(g, t, 0.9, 1), "f"),
    ("update_moment_2", lambda m, g, t: m.update_moment(g, t, 0.999, 2), "fc"),
    ("update_moment_3", lambda m, g, t: m.update_moment(g, t, 0.5, 3), "f"),
    (
        "update_infinity",
        lambda m, g, t: m.update_infinity_moment(g, t, 0.9, 1e-3),
        "fc",
    ),
    ("elem_norm_2", lambda m, g, t: m.update_moment_per_elem_norm(g, t, 0.9, 2), "fc"),
    ("elem_norm_3", lambda m, g, t: m.update_moment_per_elem_norm(g, t, 0.9, 3), "fc"),
    (
        "elem_norm_2.5",
        lambda m, g, t: m.update_moment_per_elem_norm(g, t, 0.9, 2.5),
        "c",
    ),
    ("bias_correction", lambda m, g, t: m.bias_correction(g, 0.9, jnp.array(3)), "f"),
]


@pytest.mark.parametrize("name,fn,make", cases(UNARY))
def test_unary_as_optax(x64, name, fn, make):
    t = make()
    assert_same(fn(tree, t), fn(optax.tree, t))


@pytest.mark.parametrize("name,fn,make", cases(BINARY))
def test_binary_as_optax(x64, name, fn, make):
    x, y = make(0), make(1)
    if make is ints:
        y = jax.tree.map(lambda v: jnp.where(v == 0, 1, v), y)
    assert_same(fn(tree, x, y), fn(optax.tree, x, y))


@pytest.mark.parametrize("name,fn,make", cases(MOMENTS))
def test_moments_as_optax(x64, name, fn, make):
    g, t = make(0), jax.tree.map(jnp.abs, make(1))
    # adamx.bias_correction raises beta to a float count, Optax to the integer
    # one (by squaring): an ulp apart.
    rtol = 1e-15 if name == "bias_correction" else 0.0
    assert_same(fn(tree, g, t), fn(optax.tree, g, t), rtol=rtol)


def test_moments_keep_none_updates(x64):
    g = {"a": jnp.ones(2), "b": None}
    t = {"a": jnp.full(2, 0.5), "b": None}
    for name in ("update_moment", "update_moment_per_elem_norm"):
        ours = getattr(tree, name)(g, t, 0.9, 2)
        assert_same(ours, getattr(optax.tree, name)(g, t, 0.9, 2))
        assert ours["b"] is None
    assert tree.update_infinity_moment(g, t, 0.9, 0.0)["b"] is None


def test_add_scale_keeps_none(x64):
    x, y = {"a": jnp.ones(2), "b": None}, {"a": jnp.ones(2), "b": jnp.ones(3)}
    assert_same(tree.add_scale(x, 2.0, y), optax.tree.add_scale(x, 2.0, y))


def test_allclose_nan(x64):
    a = {"a": jnp.array([1.0, jnp.nan])}
    for equal_nan in (False, True):
        ours = tree.allclose(a, a, equal_nan=equal_nan)
        assert bool(ours) == bool(optax.tree.allclose(a, a, equal_nan=equal_nan))
        assert bool(ours) is equal_nan


def test_reductions_of_empty_trees(x64):
    for name in ("sum", "max", "min", "size", "vdot", "norm", "allclose", "dtype"):
        args = ({}, {}) if name in ("vdot", "allclose") else ({},)
        ours, theirs = getattr(tree, name)(*args), getattr(optax.tree, name)(*args)
        if name == "dtype":
            assert ours == theirs
            continue
        if name != "norm":  # global_norm's zero is a float32
            assert jnp.asarray(ours).dtype == jnp.asarray(theirs).dtype, name
        np.testing.assert_array_equal(ours, theirs)
    # Empty leaves are skipped by max and min.
    t = {"a": jnp.zeros((0, 2)), "b": jnp.array([2.0, -1.0])}
    assert float(tree.max(t)) == float(optax.tree.max(t)) == 2.0
    assert float(tree.min(t)) == float(optax.tree.min(t)) == -1.0


# ---------------------------------------------------------------- norm


@pytest.mark.parametrize("ord", [None, 1, jnp.inf, "infinity"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("kind", ["float64", "int32", "complex128"])
def test_norm_as_optax(x64, ord, squared, kind):
    t = {"float64": floats, "int32": ints, "complex128": complexes}[kind]()
    ours = tree.norm(t, ord=ord, squared=squared)
    theirs = optax.tree.norm(t, ord=ord, squared=squared)
    if kind == "int32" and ord in (None, 2):
        # adamx's 2-norm is global_norm's: integer leaves summed in float32.
        # Optax sums in int32 and takes the root in the default float.
        assert ours.dtype == jnp.float32
        kind = jnp.integer if squared else jnp.floating
        assert jnp.issubdtype(theirs.dtype, kind)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
        return
    # The squared 2-norm is global_norm's, squared: within an ulp or two.
    rtol = 1e-15 if squared and ord in (None, 2) else 0.0
    assert_same(ours, theirs, rtol=rtol)


def test_norm_is_global_norm(x64):
    t = floats()
    assert tree.norm(t) == adamx.global_norm(t)
    bf16 = {"a": jnp.linspace(-3.0, 5.0, 7, dtype=jnp.bfloat16), "b": None}
    # bf16 leaves: summed in float32 as global_norm does (Optax sums in bf16).
    assert tree.norm(bf16).dtype == jnp.float32
    assert tree.norm(bf16) == adamx.global_norm(bf16)
    np.testing.assert_allclose(tree.norm(bf16), optax.tree.norm(bf16), rtol=1e-2)


def test_norm_refuses_other_orders():
    with pytest.raises(ValueError, match="ord must be"):
        tree.norm({"a": jnp.ones(2)}, ord=3)
    with pytest.raises(ValueError):
        optax.tree.norm({"a": jnp.ones(2)}, ord=3)


def test_jit(x64):
    x, y = floats(0), floats(1)
    for name in ("norm", "vdot", "sum", "add_scale"):
        args = (
            (x, 0.5, y) if name == "add_scale" else (x, y) if name == "vdot" else (x,)
        )
        # Under jit XLA may sum in another order: an ulp apart.
        ours = jax.jit(getattr(tree, name))(*args)
        assert_same(ours, getattr(optax.tree, name)(*args), rtol=1e-15)


def test_vdot_of_leaves_split_over_explicit_axes(x64):
    # Contracted in place (no ravel of a sharded leaf), the scalar replicated.
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
    x, y = complexes(0), complexes(1)
    split = {
        "z": jax.device_put(x["z"], NamedSharding(mesh, P())),
        "r": jax.device_put(x["r"], NamedSharding(mesh, P("data"))),
    }
    got = jax.jit(tree.vdot)(split, y)
    want = sum(np.vdot(np.asarray(x[k]), np.asarray(y[k])) for k in x)
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_vdot_refuses_shapes_that_differ():
    with pytest.raises(ValueError, match="one shape"):
        tree.vdot({"a": jnp.ones(2)}, {"a": jnp.ones(3)})


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("handler", [None, "promote", "highest", "lowest"])
def test_dtype_as_optax(x64, handler):
    same = {"a": jnp.ones(2), "b": jnp.ones(3)}
    mixed = {
        "a": jnp.ones(2, jnp.float16),
        "b": jnp.ones(3),
        "c": jnp.ones(1, jnp.int8),
    }
    assert tree.dtype(same, handler) == optax.tree.dtype(same, handler)
    if handler is None:
        with pytest.raises(ValueError, match="Expected dtype=float16 for"):
            tree.dtype(mixed)
        with pytest.raises(ValueError):
            optax.tree.dtype(mixed)
    else:
        assert tree.dtype(mixed, handler) == optax.tree.dtype(mixed, handler)


def test_dtype_errors(x64):
    unordered = {"a": jnp.ones(2, jnp.int32), "b": jnp.ones(2, jnp.uint32)}
    for handler in ("highest", "lowest"):
        with pytest.raises(ValueError, match="not ordered"):
            tree.dtype(unordered, handler)
        with pytest.raises(ValueError):
            optax.tree.dtype(unordered, handler)
    assert tree.dtype(unordered, "promote") == optax.tree.dtype(unordered, "promote")
    with pytest.raises(ValueError, match="mixed_dtype_handler must be"):
        tree.dtype(unordered, "widest")


# ---------------------------------------------------------------- random


@pytest.mark.parametrize(
    "sampler,dtype",
    [
        (jax.random.uniform, jnp.float32),
        (jax.random.rademacher, jnp.int32),
        # A sampler without out_sharding.
        (lambda key, shape, dtype: jax.random.bernoulli(key, 0.3, shape), None),
    ],
)
def test_random_like_as_optax(x64, sampler, dtype):
    t = floats()
    key = jax.random.key(3)
    ours = tree.random_like(key, t, sampler, dtype)
    assert_same(ours, optax.tree.random_like(key, t, sampler, dtype))


def test_random_like_default_sampler(x64):
    t, key = floats(), jax.random.key(1)
    assert_same(tree.random_like(key, t), optax.tree.random_like(key, t))


def test_keys_as_optax(x64):
    t, key = floats(), jax.random.key(7)
    ours, theirs = tree.split_key_like(key, t), optax.tree.split_key_like(key, t)
    assert_same(
        tree.unwrap_random_key_data(ours), optax.tree.unwrap_random_key_data(theirs)
    )
    raw = tree.unwrap_random_key_data({"k": key, "x": jnp.ones(2)})
    assert raw["k"].dtype == jnp.uint32
    assert_same(raw, optax.tree.unwrap_random_key_data({"k": key, "x": jnp.ones(2)}))


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ord": jnp.inf}, {"axis": 1}, {"axis": 0, "keepdims": True}, {"ord": "fro"}],
)
def test_safe_norm_as_optax(x64, kwargs):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    x = x.at[1].set(0.0).at[:, 2].set(0.0)

    def value_and_grad(safe_norm):
        def f(v, min_norm):
            return jnp.sum(safe_norm(v, min_norm, **kwargs))

        return jax.jit(lambda v, m: (safe_norm(v, m, **kwargs), jax.grad(f)(v, m)))

    ours, theirs = value_and_grad(adamx.safe_norm), value_and_grad(optax.safe_norm)
    for min_norm in (0.0, 0.5, 100.0):
        assert_same(ours(x, min_norm), theirs(x, min_norm))
    # Finite gradients where the norm is zero.
    assert np.all(np.isfinite(ours(jnp.zeros((3, 4)), 1e-3)[1]))


def test_safe_root_mean_squares_as_optax(x64):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    for v in (x, jnp.zeros((3, 4)), x + 1j * x):
        for min_rms in (0.5, 10.0):
            assert_same(
                adamx.safe_root_mean_squares(v, min_rms),
                optax.safe_root_mean_squares(v, min_rms),
            )
    grad = jax.grad(adamx.safe_root_mean_squares)(jnp.zeros(3), 1e-3)
    assert_same(grad, jax.grad(optax.safe_root_mean_squares)(jnp.zeros(3), 1e-3))


@pytest.mark.parametrize(
    "count",
    [
        np.int32(5),
        np.int32(2**31 - 1),
        np.uint8(255),
        np.float32(3.0),
        np.float64(np.finfo(np.float64).max),
    ],
)
def test_safe_increment_as_optax(x64, count):
    c = jnp.asarray(count)
    assert_same(adamx.safe_increment(c), optax.safe_increment(c))


def test_safe_increment_refuses_other_dtypes():
    for bad in (jnp.array(True), jnp.array(1j)):
        with pytest.raises(ValueError, match="integer or floating"):
            adamx.safe_increment(bad)
        with pytest.raises(ValueError):
            optax.safe_increment(bad)


# ---------------------------------------------------------------- lookup


def paths(found):
    return [(jax.tree_util.keystr(p), v) for p, v in found]


def assert_found_same(ours, theirs):
    assert [p for p, _ in paths(ours)] == [p for p, _ in paths(theirs)]
    assert_same([v for _, v in ours], [v for _, v in theirs])


class Inner(NamedTuple):
    count: jax.Array
    learning_rate: jax.Array


class Outer(NamedTuple):
    count: jax.Array
    inner: Inner
    extra: dict


def nested_tree():
    return {
        "first": Outer(jnp.array(1), Inner(jnp.array(2), jnp.array(0.1)), {"count": 3}),
        "second": [{"learning_rate": jnp.array(0.2), "other": 5}, None],
        "Inner": 7,
    }


PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "nested": {"k": jnp.ones(4)}}
MASK = {"w": True, "b": False, "nested": {"k": True}}


def states():
    """adamx's and Optax's states of a few optimizers."""
    txs = {
        "adamx_adam": adamx.adam(0.1),
        "adamx_adamw_mask": adamx.adamw(0.1, mask=MASK),
        "adamx_inject": adamx.inject_hyperparams(adamx.adam)(42.0),
        "adamx_inject_mask": adamx.inject_hyperparams(adamx.adamw)(0.1, mask=MASK),
        "adamx_chain_twice": adamx.chain(adamx.scale_by_adam(), adamx.scale_by_adam()),
        "optax_adam": optax.adam(0.1),
        "optax_adamw_mask": optax.adamw(0.1, mask=MASK),
        "optax_inject": optax.inject_hyperparams(optax.adam)(42.0),
        "optax_inject_sched": optax.inject_hyperparams(optax.sgd)(
            learning_rate=lambda c: 1 / (c + 1)
        ),
    }
    out = {name: tx.init(PARAMS) for name, tx in txs.items()}
    out["nested"] = nested_tree()
    return out


STATES = states()
KEYS = [
    "count",
    "learning_rate",
    "mu",
    "hyperparams",
    "ScaleByAdamState",
    "Inner",
    "inner_state",
    "b1",
    "absent",
]


@pytest.mark.parametrize("state_name", list(STATES))
@pytest.mark.parametrize("key", KEYS)
def test_get_all_with_path_as_optax(state_name, key):
    state = STATES[state_name]
    ours = tree.get_all_with_path(state, key)
    assert_found_same(ours, optax.tree.get_all_with_path(state, key))
    is_array = lambda path, value: isinstance(value, jax.Array)  # noqa: E731
    assert_found_same(
        tree.get_all_with_path(state, key, is_array),
        optax.tree.get_all_with_path(state, key, is_array),
    )


@pytest.mark.parametrize("state_name", list(STATES))
@pytest.mark.parametrize("key", KEYS)
def test_get_as_optax(state_name, key):
    state = STATES[state_name]
    try:
        theirs = optax.tree.get(state, key, default="none")
    except KeyError:
        with pytest.raises(KeyError, match="multiple values"):
            tree.get(state, key, default="none")
        return
    assert_same(tree.get(state, key, default="none"), theirs)


def test_get_on_adamx_states():
    # The injected rate, as Optax's get finds on its own injected state.
    s = adamx.inject_hyperparams(adamx.adam)(42.0).init(PARAMS)
    assert float(tree.get(s, "learning_rate")) == 42.0
    assert float(optax.tree.get(s, "learning_rate")) == 42.0
    theirs = optax.inject_hyperparams(optax.adam)(42.0).init(PARAMS)
    assert float(optax.tree.get(theirs, "learning_rate")) == 42.0
    # The step count of the moments, one per Adam state.
    tx = adamx.adamw(0.1, mask=MASK)
    state = tx.update(PARAMS, tx.init(PARAMS), PARAMS)[1]
    assert int(tree.get(state, "count")) == 1
    in_adam = lambda path, _: path[-1].tuple_name == "ScaleByAdamState"  # noqa: E731
    assert int(tree.get(STATES["adamx_inject_mask"], "count", filtering=in_adam)) == 0
    # Two scale_by_adam in a chain: two counts, told apart by a filter.
    with pytest.raises(KeyError, match=r"\[0\]ScaleByAdamState.count"):
        tree.get(STATES["adamx_chain_twice"], "count")
    first = tree.get(
        STATES["adamx_chain_twice"],
        "count",
        filtering=lambda path, _: path[0] == jax.tree_util.SequenceKey(0),
    )
    assert int(first) == 0
    assert isinstance(tree.get(s, "ScaleByAdamState"), adamx.ScaleByAdamState)
    assert tree.get(s, "absent", default=3) == 3


SETS = [
    ("count", {"count": jnp.array(9)}),
    ("learning_rate", {"learning_rate": jnp.array(0.5)}),
    ("two", {"count": 4, "mu": None}),
    ("class", {"ScaleByAdamState": "replaced"}),
    ("hyperparams", {"hyperparams": {}}),
]


def replaced_all(result, values, filtering=None):
    """Whether every value named in ``values`` (that ``filtering`` keeps) is new."""
    return all(
        v is new
        for key, new in values.items()
        for _, v in optax.tree.get_all_with_path(result, key, filtering)
    )


def is_array(path, value):
    return isinstance(value, jax.Array)


@pytest.mark.parametrize("state_name", list(STATES))
@pytest.mark.parametrize("name,values", SETS, ids=[n for n, _ in SETS])
@pytest.mark.parametrize("filtering", [None, is_array])
def test_set_as_optax(state_name, name, values, filtering):
    state = STATES[state_name]
    args = () if filtering is None else (filtering,)
    try:
        theirs = optax.tree.set(state, *args, **values)
    except KeyError:
        with pytest.raises(KeyError, match="Found no values matching"):
            tree.set(state, *args, **values)
        return
    ours = tree.set(state, *args, **values)
    # adamx replaces every value get_all_with_path finds.
    assert replaced_all(ours, values, filtering)
    if replaced_all(theirs, values, filtering):
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        assert_same(jax.tree.leaves(ours), jax.tree.leaves(theirs))
    else:
        # Optax misses a match inside a tuple inside a node that matched (the
        # moments' count inside an injected state, whose own count matched).
        assert name in ("count", "two") and "inject" in state_name


def test_set_on_adamx_states():
    s = STATES["adamx_inject"]
    new = tree.set(s, learning_rate=jnp.array(0.5))
    assert float(new.hyperparams["learning_rate"]) == 0.5
    assert float(s.hyperparams["learning_rate"]) == 42.0
    assert float(tree.get(new, "learning_rate")) == 0.5
    new = tree.set(STATES["adamx_adamw_mask"], count=jnp.array(5))
    assert int(new[0].count) == 5
    with pytest.raises(KeyError, match="'absent'"):
        tree.set(s, absent=1)


def test_set_finds_what_get_finds():
    # A match inside a tuple inside a matching dict: every value that
    # get_all_with_path reports is replaced.
    t = {"count": 1, "inner": ({"count": 2},)}
    assert len(tree.get_all_with_path(t, "count")) == 2
    assert tree.set(t, count=0) == {"count": 0, "inner": ({"count": 0},)}


# ---------------------------------------------------------------- map_params


def plus_one(x):
    return x + 1


MAPPED = {
    "adam": lambda: adamx.adam(0.1),
    "adam_8bit": lambda: adamx.adam(0.1, state_bits=8),
    "adamw_mask": lambda: adamx.adamw(0.1, mask=MASK),
    "adamw_mask_fn": lambda: adamx.adamw(
        0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "inject_adamw_mask": lambda: adamx.inject_hyperparams(adamx.adamw)(0.1, mask=MASK),
    "partition": lambda: adamx.partition(
        {"a": adamx.adam(0.1), "s": adamx.sgd(0.1, momentum=0.9)},
        {"w": "a", "b": "s", "nested": {"k": "a"}},
    ),
    "multi_steps": lambda: adamx.MultiSteps(adamx.adamw(0.1, mask=MASK), 2),
    "apply_if_finite": lambda: adamx.apply_if_finite(adamx.lion(0.1), 3),
}


@pytest.mark.parametrize("name", list(MAPPED))
def test_map_params_as_optax_on_adamx_states(name):
    tx = MAPPED[name]()
    state = tx.init(PARAMS)
    ours = adamx.tree_map_params(tx, plus_one, state)
    # Optax's map_params works on adamx's states too, masked ones included.
    assert_same(ours, optax.tree.map_params(tx, plus_one, state))
    assert_same(
        tree.map_params(tx.init, plus_one, state, transform_non_params=jnp.zeros_like),
        optax.tree.map_params(
            tx.init, plus_one, state, transform_non_params=jnp.zeros_like
        ),
    )
    # Every param-shaped moment (zero at init) became one; nothing else moved.
    changed = [
        (jax.tree_util.keystr(p), x)
        for (p, x), y in zip(
            jax.tree_util.tree_leaves_with_path(ours),
            jax.tree.leaves(state),
            strict=True,
        )
        if not np.array_equal(x, y)
    ]
    assert changed
    assert all("count" not in p and "step" not in p for p, _ in changed)


def test_map_params_masked_adamw():
    tx = adamx.adamw(0.1, mask=MASK)
    state = tx.init(PARAMS)
    # Moments are param-shaped: each leaf becomes its param's shape.
    shapes = tree.map_params(
        tx, lambda x: x.shape, state, transform_non_params=lambda _: None
    )
    expected = jax.tree.map(lambda p: p.shape, PARAMS)
    assert shapes[0].mu == expected and shapes[0].nu == expected
    assert shapes[0].count is None and shapes[2].step is None
    # The decay's mask hides "b": a spec tree of the params' structure needs
    # MaskedNode as a leaf, as in Optax.
    specs = {"w": "W", "b": "B", "nested": {"k": "K"}}
    masked_inner = lambda: adamx.masked(  # noqa: E731
        adamx.GradientTransformation(
            lambda p: {"count": jnp.zeros([]), "params": p, "copy": p},
            lambda u, s, p=None: (u, s),
        ),
        MASK,
    )
    tx = masked_inner()
    state = tx.init(PARAMS)
    is_masked = lambda v: isinstance(v, adamx.MaskedNode)  # noqa: E731
    got = tree.map_params(
        tx,
        lambda p, spec: None if is_masked(p) else spec,
        state,
        specs,
        is_leaf=is_masked,
        transform_non_params=lambda _: None,
    )
    want = {"w": "W", "b": None, "nested": {"k": "K"}}
    assert got.inner_state == {"count": None, "params": want, "copy": want}
    theirs = optax.tree.map_params(
        tx,
        lambda p, spec: None if is_masked(p) else spec,
        state,
        specs,
        is_leaf=is_masked,
        transform_non_params=lambda _: None,
    )
    assert theirs == got
    # Without rest trees, the hidden leaves are skipped.
    bumped = tree.map_params(tx, plus_one, state)
    assert isinstance(bumped.inner_state["params"]["b"], adamx.MaskedNode)
    assert float(bumped.inner_state["params"]["w"][0, 0]) == 2.0
    assert float(bumped.inner_state["count"]) == 0.0


def test_map_params_on_optax_states():
    # Optax's own cases: the same answers from adamx.tree.map_params.
    for tx in (
        optax.adam(0.1),
        optax.adamw(0.1, mask=MASK),
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
    ):
        state = tx.init(PARAMS)
        assert_same(
            tree.map_params(tx, plus_one, state),
            optax.tree.map_params(tx, plus_one, state),
        )
        none = lambda _: None  # noqa: E731
        assert tree.map_params(tx, none, state) == optax.tree.map_params(
            tx, none, state
        )


def test_placeholder_passes_masks_only_for_map_params():
    tx = adamx.adamw(0.1, mask=MASK)
    with pytest.raises(ValueError, match="mask's tree structure"):
        tx.init({"other": jnp.ones(2)})
