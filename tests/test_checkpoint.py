"""adamx.checkpoint: round trips, resumed training, dtypes, sharding, crash safety."""

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import as_bits, assert_bitwise_equal
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from optimizer_table import OPTIMIZERS, ids

import adamx
import adamx.checkpoint as ckpt

_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.normal(size=(8, 4)), jnp.float32)
Y = jnp.asarray(_RNG.normal(size=(8, 3)), jnp.float32)


def make_params():
    rng = np.random.default_rng(1)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        "emb": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    }


def loss(params):
    out = jnp.tanh(X @ params["w"] + params["b"]) * jnp.cos(jnp.sum(params["emb"]))
    return jnp.mean((out - Y) ** 2) + 0.1 * jnp.sum(params["emb"] ** 2)


MASK = {"w": True, "b": False, "emb": True}
LABELS = {"w": "adam", "b": "sgd", "emb": "frozen"}

# Combinators around optimizers, besides the optimizers of the table.
COMBINATIONS = {
    "adamw_mask": lambda: adamx.adamw(1e-2, weight_decay=0.1, mask=MASK),
    "chain_partition_masked": lambda: adamx.chain(
        adamx.masked(adamx.clip_by_global_norm(1.0), MASK),
        adamx.partition(
            {
                "adam": adamx.adam(1e-2),
                "sgd": adamx.sgd(1e-2, momentum=0.9),
                "frozen": adamx.set_to_zero(),
            },
            LABELS,
        ),
    ),
}
MAKERS = {
    **{name: OPTIMIZERS[name].ours for name in ids(without=("schedule", "variant"))},
    **COMBINATIONS,
}


def make_step(tx):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return adamx.apply_updates(params, updates), state

    return step


def assert_same_types(a, b, where="root"):
    """type(a) is type(b) at every node and leaf, NamedTuples included."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_types(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        # Unflattening sorts dict keys, as every JAX tree function does.
        assert sorted(a) == sorted(b), where
        for k in a:
            assert_same_types(a[k], b[k], f"{where}[{k!r}]")


def siblings(path):
    return sorted(p.name for p in Path(path).parent.iterdir())


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", list(MAKERS))
def test_round_trip_then_resume_is_bitwise_uninterrupted(tmp_path, name):
    tx = MAKERS[name]()
    step = make_step(tx)
    params0 = make_params()
    params, state = params0, tx.init(params0)
    for _ in range(3):
        params, state = step(params, state)
    path = tmp_path / name
    ckpt.save(path, {"params": params, "opt_state": state, "step": 3})

    target = {"params": params0, "opt_state": tx.init(params0), "step": 0}
    restored = ckpt.restore(path, target)
    assert_same_types(restored, target)
    assert jax.tree.structure(restored) == jax.tree.structure(target)
    assert restored["step"] == 3 and type(restored["step"]) is int
    assert_bitwise_equal(restored["params"], params)
    assert_bitwise_equal(restored["opt_state"], state)

    resumed_params, resumed_state = restored["params"], restored["opt_state"]
    for _ in range(3):
        params, state = step(params, state)
        resumed_params, resumed_state = step(resumed_params, resumed_state)
    assert_bitwise_equal(resumed_params, params)
    assert_bitwise_equal(resumed_state, state)


def test_restore_into_eval_shape_target(tmp_path):
    tx = adamx.adamw(1e-2, mask=MASK)
    params = make_params()
    params, state = make_step(tx)(params, tx.init(params))
    ckpt.save(tmp_path / "c", {"opt": state, "step": 7})

    target = jax.eval_shape(lambda p: {"opt": tx.init(p), "step": 0}, params)
    restored = ckpt.restore(tmp_path / "c", target)
    assert_same_types(restored["opt"], state)
    assert_bitwise_equal(restored["opt"], state)
    # The Python int comes back as the 0-d int32 array the target asks for.
    assert isinstance(restored["step"], jax.Array)
    assert restored["step"].dtype == jnp.int32 and int(restored["step"]) == 7


def unusual_leaves():
    key = jax.random.key(0)
    return {
        "bf16": jnp.asarray([1.5, -0.0, jnp.nan, jnp.inf], jnp.bfloat16),
        "f16": jnp.asarray([[1e-4, 6e4]], jnp.float16),
        "f32_bits": jnp.asarray([-0.0, jnp.nan, -jnp.inf, 1e-45], jnp.float32),
        "u8": jnp.arange(250, 256, dtype=jnp.uint8),
        "i8": jnp.asarray([-128, 0, 127], jnp.int8),
        "i32": jnp.asarray(-(2**31) + 1, jnp.int32),
        "bool": jnp.asarray([True, False, True]),
        "key": key,
        "keys": jax.random.split(key, 3),
        "rbg_key": jax.random.key(1, impl="rbg"),
        "empty": jnp.zeros((0, 3), jnp.float32),
        "empty_keys": jax.random.split(key, 0),
        "scalar": jnp.asarray(2.5, jnp.float32),
        "numpy": np.arange(3, dtype=np.int16),
        "py_int": 7,
        "py_float": 0.1,
        "py_bool": True,
        "none": None,
        "masked": adamx.MaskedNode(),
        "empty_state": adamx.EmptyState(),
        "tuple": (jnp.ones(2), [jnp.zeros(1, jnp.int32)]),
    }


def test_dtypes_keys_scalars_and_empty_leaves(tmp_path):
    tree = unusual_leaves()
    ckpt.save(str(tmp_path / "c"), tree)
    restored = ckpt.restore(str(tmp_path / "c"), unusual_leaves())
    assert_same_types(restored, tree)
    assert_bitwise_equal(restored, tree)
    assert jax.random.key_impl(restored["rbg_key"]) == jax.random.key_impl(
        tree["rbg_key"]
    )
    assert isinstance(restored["numpy"], np.ndarray)
    # A restored key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.normal(restored["keys"][1], (4,)),
        jax.random.normal(tree["keys"][1], (4,)),
    )

    abstract = ckpt.restore(tmp_path / "c", jax.eval_shape(unusual_leaves))
    assert abstract["key"].dtype == tree["key"].dtype
    np.testing.assert_array_equal(as_bits(abstract["keys"]), as_bits(tree["keys"]))
    np.testing.assert_array_equal(as_bits(abstract["bf16"]), as_bits(tree["bf16"]))
    assert abstract["py_float"].dtype == jnp.float32
    assert float(abstract["py_float"]) == np.float32(0.1)


def test_metadata_records_structure_paths_shapes_dtypes(tmp_path):
    tx = adamx.adam(1e-3)
    state = tx.init(make_params())
    ckpt.save(tmp_path / "c", state)
    with open(tmp_path / "c" / ckpt.METADATA_FILE) as f:
        meta = json.load(f)
    assert meta["version"] == ckpt.FORMAT_VERSION
    assert meta["treedef"] == str(jax.tree.structure(state))
    leaves = jax.tree_util.tree_leaves_with_path(state)
    assert [e["path"] for e in meta["leaves"]] == [
        jax.tree_util.keystr(k) for k, _ in leaves
    ]
    assert [e["shape"] for e in meta["leaves"]] == [list(x.shape) for _, x in leaves]
    assert [e["dtype"] for e in meta["leaves"]] == [str(x.dtype) for _, x in leaves]


def test_restore_onto_sharded_target(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:8]), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    params = {"w": jnp.arange(64.0, dtype=jnp.float32).reshape(16, 4)}
    tx = adamx.adam(1e-2)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones((16, 4))}, state, params)
    # Saved sharded as well: Orbax writes the shards, not a host copy.
    saved = {"params": jax.device_put(params, sharding), "opt": state}
    ckpt.save(tmp_path / "c", saved)

    sharded_params = jax.device_put(params, sharding)
    array_target = {"params": sharded_params, "opt": tx.init(sharded_params)}
    abstract_target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        array_target,
    )
    for target in (array_target, abstract_target):
        restored = ckpt.restore(tmp_path / "c", target)
        assert_bitwise_equal(restored, saved)
        assert type(restored["opt"][0]) is adamx.ScaleByAdamState
        for got, want in zip(
            jax.tree.leaves(restored), jax.tree.leaves(target), strict=True
        ):
            assert got.sharding == want.sharding
        assert restored["opt"][0].mu["w"].sharding == sharding


# ------------------------------------------------------------------ crash safety


def test_overwrite_and_pathlib_parents(tmp_path):
    path = tmp_path / "deep" / "er" / "ckpt"
    ckpt.save(path, {"w": jnp.zeros(3)})
    ckpt.save(path, {"w": jnp.ones(3)})
    np.testing.assert_array_equal(ckpt.restore(path, {"w": jnp.zeros(3)})["w"], 1.0)
    assert siblings(path) == ["ckpt"]


@pytest.mark.parametrize("step", ["_write_arrays", "_write_metadata"])
def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch, step):
    path = tmp_path / "ckpt"
    ckpt.save(path, {"w": jnp.zeros(3)})
    before = sorted(os.listdir(path))

    real = getattr(ckpt, step)

    def crash(*args):
        real(*args)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt, step, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ckpt.save(path, {"w": jnp.ones(3)})
    monkeypatch.undo()

    assert sorted(os.listdir(path)) == before
    np.testing.assert_array_equal(ckpt.restore(path, {"w": jnp.ones(3)})["w"], 0.0)
    assert siblings(path) == ["ckpt"]


def test_crash_during_first_save_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt, "_write_arrays", crash)
    with pytest.raises(RuntimeError):
        ckpt.save(tmp_path / "ckpt", {"w": jnp.ones(3)})
    assert list(tmp_path.iterdir()) == []


def fail_renames_from(monkeypatch, n, only_once=False):
    """Make the n-th rename, and (unless only_once) every later one, fail."""
    real, calls = ckpt._rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == n or (len(calls) > n and not only_once):
            raise RuntimeError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(ckpt, "_rename", rename)


def test_crash_between_moves_is_recovered(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    ckpt.save(path, {"w": jnp.zeros(3)})
    # The process "dies" after moving the old checkpoint aside: no rename after
    # that one succeeds, not even save's attempt to move it back.
    fail_renames_from(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ckpt.save(path, {"w": jnp.ones(3)})
    monkeypatch.undo()
    assert not path.exists()
    assert [n.split("-")[0] for n in siblings(path)] == ["ckpt.old"]

    np.testing.assert_array_equal(ckpt.restore(path, {"w": jnp.ones(3)})["w"], 0.0)
    # The next save puts a checkpoint at path and clears the aside copy.
    ckpt.save(path, {"w": jnp.full(3, 2.0)})
    np.testing.assert_array_equal(ckpt.restore(path, {"w": jnp.ones(3)})["w"], 2.0)
    assert siblings(path) == ["ckpt"]


def test_failed_move_in_puts_old_checkpoint_back(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    ckpt.save(path, {"w": jnp.zeros(3)})
    fail_renames_from(monkeypatch, 2, only_once=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ckpt.save(path, {"w": jnp.ones(3)})
    monkeypatch.undo()
    assert siblings(path) == ["ckpt"]
    np.testing.assert_array_equal(ckpt.restore(path, {"w": jnp.ones(3)})["w"], 0.0)


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an adamx checkpoint"):
        ckpt.save(tmp_path / "data", {"w": jnp.ones(3)})
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------------ errors


def test_mismatched_optimizer_prints_both_structures(tmp_path):
    params = make_params()
    ckpt.save(tmp_path / "c", adamx.adam(1e-3).init(params))
    target = adamx.sgd(1e-3, momentum=0.9).init(params)
    with pytest.raises(ValueError, match="structure") as info:
        ckpt.restore(tmp_path / "c", target)
    message = str(info.value)
    assert "ScaleByAdamState" in message and "TraceState" in message


def test_mismatched_params_tree_prints_both_structures(tmp_path):
    tx = adamx.adam(1e-3)
    ckpt.save(tmp_path / "c", tx.init(make_params()))
    params = {**make_params(), "extra": jnp.zeros(2)}
    with pytest.raises(ValueError, match="structure") as info:
        ckpt.restore(tmp_path / "c", tx.init(params))
    assert "extra" in str(info.value)


def test_mismatched_shape_names_the_leaf(tmp_path):
    tx = adamx.adam(1e-3)
    ckpt.save(tmp_path / "c", tx.init({"w": jnp.zeros((4, 3))}))
    with pytest.raises(ValueError, match=r"\[0\]\.mu\['w'\]") as info:
        ckpt.restore(tmp_path / "c", tx.init({"w": jnp.zeros((5, 3))}))
    assert "(4, 3)" in str(info.value) and "(5, 3)" in str(info.value)


def test_mismatched_dtype_names_the_leaf(tmp_path):
    ckpt.save(tmp_path / "c", {"w": jnp.zeros(3, jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"\['w'\].*bfloat16.*float32"):
        ckpt.restore(tmp_path / "c", {"w": jnp.zeros(3, jnp.float32)})


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ckpt.restore(tmp_path / "nowhere", {"w": jnp.zeros(3)})


def test_unsupported_leaf_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match=r"\['f'\]"):
        ckpt.save(tmp_path / "c", {"f": "not an array"})
    assert list(tmp_path.iterdir()) == []


def test_missing_orbax_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(ImportError, match="pip install orbax-checkpoint"):
        ckpt.save(tmp_path / "c", {"w": jnp.zeros(3)})
