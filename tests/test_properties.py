"""Properties every optimizer in the table keeps, checked on random pytrees.

Hypothesis draws the trees: dicts, lists and tuples nested up to three deep,
with ``None`` and empty containers among the children, and array leaves of
rank 0 to 3 (size zero included) in float32, bfloat16 and float16, all in one
dtype or mixed. Values are finite and at most 10 in size. Each optimizer from
``optimizer_table.OPTIMIZERS`` runs a few steps on such a tree, with fresh
random gradients each step, and must keep these properties:

* a jitted step computes what the same step computes eagerly;
* params keep their dtype and shape, and so do the updates and state leaves;
* the state's tree structure does not change from step to step, and the
  jitted step is traced once, not again at each step;
* finite params and gradients give finite updates, state and params.

Compiling is the cost, so the examples are few, each one a rich tree (one
drawn, and two written out that cover what a drawn one may miss), and
derandomized, so that a failure reproduces anywhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from optimizer_table import OPTIMIZERS

import adamx

# The table's rows but the lean ones (optimizer_table.LEAN), to keep CI short.
IDS = [name for name, entry in OPTIMIZERS.items() if "lean" not in entry.tags]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
KEYS = ["a", "b", "c"]
STEPS = 3
MAX_EXAMPLES = 1  # drawn trees, besides the explicit examples below


class Leaf:
    """An array yet to be made; drawn trees hold these, so drawing stays cheap."""

    def __init__(self, shape, dtype, scale):
        self.shape, self.dtype, self.scale = shape, jnp.dtype(dtype), scale

    def __repr__(self):
        return f"Leaf({self.shape}, {self.dtype.name}, {self.scale})"


@st.composite
def leaves(draw, dtype):
    rank = draw(st.sampled_from([2, 0, 1, 3]))
    shape = tuple(draw(st.sampled_from([3, 0, 1, 2, 4])) for _ in range(rank))
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    # A leaf of zeros (a frozen embedding) or of tiny values is where 0 / 0 and
    # underflow would show.
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-3, 0.0]))
    return Leaf(shape, dtype, scale)


# The choices are listed richest first: Hypothesis starts from the first of
# each, so even its simplest tree nests containers three deep.
@st.composite
def subtrees(draw, depth, dtype):
    if depth > 0:
        kinds = ["dict", "list", "tuple", "leaf", "none"]
    else:
        kinds = ["leaf", "leaf", "leaf", "none"]
    kind = draw(st.sampled_from(kinds))
    if kind == "leaf":
        return draw(leaves(dtype))
    if kind == "none":
        return None
    n = draw(st.sampled_from([2, 3, 1, 0]))
    children = [draw(subtrees(depth - 1, dtype)) for _ in range(n)]
    if kind == "dict":
        return dict(zip(KEYS, children, strict=False))
    return children if kind == "list" else tuple(children)


@st.composite
def dict_trees(draw):
    dtype = draw(st.sampled_from([*DTYPES, None]))  # None: a dtype for each leaf
    n = draw(st.sampled_from([2, 3, 1]))
    return dict(zip(KEYS, [draw(subtrees(2, dtype)) for _ in range(n)], strict=False))


def trees():
    """A dict at the root, as params usually are, with at least four array leaves.

    The empty tree comes as an explicit example; drawn trees are kept large,
    so that each compile covers more.
    """
    return dict_trees().filter(lambda tree: len(jax.tree.leaves(tree)) >= 4)


EMPTY = {}
# Every dtype with values in it, None leaves, an empty list, a size-zero array,
# tiny and all-zero leaves: the cases a drawn tree may miss, always run.
MIXED = {
    "a": None,
    "b": [
        Leaf((2, 3), jnp.float32, 1.0),
        None,
        (Leaf((), jnp.bfloat16, 1.0), Leaf((4, 1, 2), jnp.float16, 1.0)),
    ],
    "c": {
        "a": Leaf((0, 4), jnp.float16, 1.0),
        "b": None,
        "c": [],
        "d": Leaf((3, 4), jnp.bfloat16, 1e-3),
        "e": Leaf((4,), jnp.float16, 0.0),
    },
}


def materialize(spec, data_seed):
    """Params, and gradients for each step: finite, in [-10, 10]."""
    rng = np.random.default_rng(data_seed)

    def make(leaf):
        values = rng.uniform(-10.0, 10.0, size=leaf.shape) * leaf.scale
        return jnp.asarray(values, leaf.dtype)

    def tree():
        return jax.tree.map(make, spec, is_leaf=lambda x: isinstance(x, Leaf))

    params = tree()
    return params, [tree() for _ in range(STEPS)]


def trajectory(name, params, grads, jit):
    """[(params, state, updates)] from init and after each step, and the traces.

    The updates at index 0 are None. Traces counts how often ``step`` ran as
    Python: once per step eagerly, once in all when jitted and nothing changes
    type between steps.
    """
    tx = OPTIMIZERS[name]()[0]
    traces = []

    def step(params, state, g):
        traces.append(None)
        updates, state = tx.update(g, state, params)
        return adamx.apply_updates(params, updates), state, updates

    step = jax.jit(step) if jit else step
    state = tx.init(params)
    out = [(params, state, None)]
    for g in grads:
        params, state, updates = step(params, state, g)
        out.append((params, state, updates))
    return out, len(traces)


def keystr(path):
    return jax.tree_util.keystr(path)


def after_last_attribute(path):
    """Split a key path into the state field it is in and the rest."""
    attrs = [i for i, k in enumerate(path) if isinstance(k, jax.tree_util.GetAttrKey)]
    cut = attrs[-1] + 1 if attrs else 1
    return keystr(path[:cut]), keystr(path[cut:])


# Newton-Schulz multiplies a rounding difference near a small singular value by
# up to its slope at zero (3.4 for Muon's quintic) at every one of its steps.
ULPS = {"muon": 64}
# Schedule-free's step is c (z - y) + k u, with z and y params-sized: its
# rounding error is on the params' scale, not the step's.
PARAMS_SCALED_STEPS = {"adamw_schedule_free", "sgd_schedule_free"}


def check_jit_equals_eager(eager, jitted, ulps=8, params_scaled_steps=False):
    # XLA may fuse or fold constants differently from eager execution, and with
    # half-precision leaves it may skip a rounding between two stages of a
    # chain, so allow a few ulps of the dtype of the param a leaf belongs to
    # (a float32 state leaf fed by bfloat16 updates gets bfloat16's). The ulps
    # are of the largest value on the same scale (all updates, all params, all
    # of one state field): a difference of terms, such as an Adam step minus
    # weight decay, keeps the absolute error of its terms.
    eps = {
        keystr(path): float(jnp.finfo(x.dtype).eps)
        for path, x in jax.tree_util.tree_leaves_with_path(eager[0][0])
    }
    for t, (e, j) in enumerate(zip(eager, jitted, strict=True)):
        assert jax.tree.structure(j) == jax.tree.structure(e), f"jit, step {t}"
        e = jax.tree_util.tree_leaves_with_path(e)
        j = jax.tree.leaves(j)
        scale = {}
        for path, x in e:
            field, _ = after_last_attribute(path)
            top = float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))
            scale[field] = max(scale.get(field, 0.0), top)
        if params_scaled_steps:  # fields "[0]" params, "[2]" updates
            scale["[2]"] = max(scale.get("[2]", 0.0), scale.get("[0]", 0.0))
        for (path, x), y in zip(e, j, strict=True):
            where = f"jit differs from eager: step {t}, leaf {keystr(path)}"
            assert y.dtype == x.dtype, where
            field, param = after_last_attribute(path)
            # Leaves of no param (step counts, learning rates) get float32's.
            tol = ulps * eps.get(param, float(jnp.finfo(jnp.float32).eps))
            np.testing.assert_allclose(
                np.asarray(y, np.float64),
                np.asarray(x, np.float64),
                rtol=tol,
                atol=tol * scale[field],
                err_msg=where,
            )


def check_dtypes_and_shapes_kept(steps):
    def kinds(tree):
        return [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

    params0, state0, _ = steps[0]
    for t, (params, state, updates) in enumerate(steps[1:], start=1):
        assert kinds(params) == kinds(params0), f"params changed kind, step {t}"
        assert kinds(updates) == kinds(params0), f"updates unlike params, step {t}"
        assert kinds(state) == kinds(state0), f"state changed kind, step {t}"


def check_structure_stable(steps, traces):
    params0, state0, _ = steps[0]
    want = {"params": params0, "state": state0, "updates": params0}
    for t, (params, state, updates) in enumerate(steps[1:], start=1):
        got = {"params": params, "state": state, "updates": updates}
        for what, tree in got.items():
            assert jax.tree.structure(tree) == jax.tree.structure(want[what]), (
                f"{what} structure changed, step {t}"
            )
    # A state leaf that turns weakly typed, or changes in any way the checks
    # above miss, makes jit trace the step again.
    assert traces == 1, f"the jitted step was traced {traces} times"


def check_finite(steps):
    for t, step in enumerate(steps[1:], start=1):
        for path, x in jax.tree_util.tree_leaves_with_path(step):
            assert np.isfinite(np.asarray(x, np.float64)).all(), (
                f"not finite from finite inputs: step {t}, {keystr(path)}"
            )


# One test checks all the properties: the trajectories cost a compile each, and
# under pytest-xdist separate tests would compute them once per worker.
@pytest.mark.parametrize("name", IDS)
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        # strict_promotion only flips a global flag, the same for every example.
        HealthCheck.function_scoped_fixture,
    ],
)
@given(spec=trees(), data_seed=st.integers(0, 2**16))
@example(spec=EMPTY, data_seed=0)
@example(spec=MIXED, data_seed=1)
def test_properties_hold_on_random_trees(strict_promotion, name, spec, data_seed):
    params, grads = materialize(spec, data_seed)
    eager, _ = trajectory(name, params, grads, jit=False)
    jitted, traces = trajectory(name, params, grads, jit=True)
    check_jit_equals_eager(
        eager, jitted, ULPS.get(name, 8), name in PARAMS_SCALED_STEPS
    )
    check_dtypes_and_shapes_kept(jitted)
    check_structure_stable(jitted, traces)
    check_finite(jitted)
