"""Save and restore optimizer states (and any other pytree of arrays) to disk.

:func:`save` writes a pytree; :func:`restore` reads it back into the structure
of a *target* tree, such as ``tx.init(params)`` or
``jax.eval_shape(tx.init, params)``. The result has the target's exact tree
structure, ``NamedTuple`` states included, where a plain Orbax restore gives
back dicts and lists.

Format: a checkpoint is a directory holding

* ``adamx_checkpoint.json``: the format name and version, the tree structure
  as text (``str(jax.tree.structure(state))``), and for each leaf its key
  path (``jax.tree_util.keystr``), shape, dtype and kind (array, PRNG key or
  Python scalar);
* ``arrays/``: the leaves, written by Orbax's ``PyTreeCheckpointHandler`` as a
  flat dict ``{"leaf_0": ..., "leaf_1": ...}``. Typed PRNG keys are stored as
  their ``jax.random.key_data`` and the key implementation's name; arrays of
  size zero are stored in the JSON file only, as Orbax cannot write them.

Crash safety: :func:`save` writes everything into a sibling directory
``<path>.tmp-<id>`` and only then renames it to ``path``. An existing
checkpoint at ``path`` is first renamed to ``<path>.old-<id>``, the new one is
renamed into place, and the old one is deleted. So if the process dies while
writing, ``path`` still holds the previous checkpoint, unchanged; if it dies
between the two renames, :func:`restore` finds the previous checkpoint under
its ``.old-<id>`` name. A ``.tmp-<id>`` directory left by a save that died is
never read and may be deleted. Concurrent saves to the same path are not
supported.

In a multi-process run every process calls :func:`save` and :func:`restore`
with the same path on a shared file system; Orbax writes each process's
shards, and process 0 alone writes the JSON file and renames directories.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import ArrayTree

__all__ = ["restore", "save"]

FORMAT_NAME = "adamx.checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "adamx_checkpoint.json"
ARRAYS_DIR = "arrays"

_PYTHON_SCALARS = {"bool": bool, "int": int, "float": float, "complex": complex}


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(
            "adamx.checkpoint needs Orbax: pip install orbax-checkpoint"
        ) from e
    return ocp


def _is_python_scalar(x: Any) -> bool:
    # np.float64 subclasses float, but it is an array scalar with a fixed dtype.
    return isinstance(x, (bool, int, float, complex)) and not isinstance(x, np.generic)


def _python_scalar_name(x: Any) -> str:
    # bool subclasses int, so it is tested first.
    return next(n for n, t in _PYTHON_SCALARS.items() if isinstance(x, t))


def _is_key_dtype(dtype: Any) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _scalar_kind(dtype: str) -> str | None:
    """'b', 'i', 'f' or 'c' for a Python scalar name or a numeric dtype name."""
    if dtype in _PYTHON_SCALARS:
        return {"bool": "b", "int": "i", "float": "f", "complex": "c"}[dtype]
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return None
    return "i" if kind == "u" else kind


def _same_structure_text(a: str, b: str) -> bool:
    # Node data printed with an address (a function in a Partial, say) would
    # differ from one process to the next without the tree being different.
    def strip(s: str) -> str:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", s)

    return strip(a) == strip(b)


# ------------------------------------------------------------------ saving


def _describe_leaf(key: str, leaf: Any, name: str) -> tuple[dict[str, Any], Any]:
    """The leaf's JSON entry and the array to hand to Orbax (``None``: nothing)."""
    if _is_python_scalar(leaf):
        value = np.asarray(leaf)
        if value.dtype == object:
            raise TypeError(f"leaf {key} is a Python int too large to save: {leaf!r}")
        entry: dict[str, Any] = {
            "path": key,
            "kind": "python",
            "shape": [],
            "name": name,
        }
        return {**entry, "dtype": _python_scalar_name(leaf)}, value
    if isinstance(leaf, np.generic):
        leaf = np.asarray(leaf)
    if not isinstance(leaf, (jax.Array, np.ndarray)) or isinstance(
        leaf, jax.core.Tracer
    ):
        raise TypeError(
            f"leaf {key} must be an array or a Python scalar to be saved, got "
            f"{leaf!r} of type {type(leaf).__name__}"
        )
    entry = {"path": key, "kind": "array", "shape": list(leaf.shape)}
    entry["dtype"] = str(leaf.dtype)
    if _is_key_dtype(leaf.dtype):
        data = jax.random.key_data(leaf)
        entry.update(
            kind="key",
            key_impl=str(jax.random.key_impl(leaf)),
            data_shape=list(data.shape),
        )
        leaf = data
    if leaf.size == 0:
        return {**entry, "name": None}, None
    return {**entry, "name": name}, leaf


def _write_arrays(directory: Path, arrays: dict[str, Any]) -> None:
    ocp = _orbax()
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        checkpointer.save(directory, args=ocp.args.PyTreeSave(arrays))
    finally:
        checkpointer.close()


def _write_metadata(file: Path, metadata: dict[str, Any]) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _fsync_dir(directory: Path) -> None:
    # Makes the renames durable where the OS allows a directory to be synced.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _asides(path: Path) -> list[Path]:
    """Earlier checkpoints moved aside by a save, newest first."""
    found = [
        p
        for p in path.parent.glob(glob.escape(path.name) + ".old-*")
        if (p / METADATA_FILE).is_file()
    ]
    return sorted(
        found, key=lambda p: (p / METADATA_FILE).stat().st_mtime, reverse=True
    )


def _commit(tmp: Path, path: Path, token: str) -> None:
    """Move the finished ``tmp`` to ``path``, keeping the old one until it is in."""
    if not os.path.lexists(path):
        _rename(tmp, path)
    else:
        aside = path.with_name(f"{path.name}.old-{token}")
        _rename(path, aside)
        try:
            _rename(tmp, path)
        except BaseException:
            # Should this fail as well, restore still reads the aside copy.
            with contextlib.suppress(Exception):
                _rename(aside, path)
            raise
    _fsync_dir(path.parent)
    for old in _asides(path):
        shutil.rmtree(old, ignore_errors=True)


def _check_overwritable(path: Path) -> None:
    if os.path.lexists(path) and not (path / METADATA_FILE).is_file():
        raise FileExistsError(
            f"{path} exists and is not an adamx checkpoint (it has no "
            f"{METADATA_FILE}); refusing to replace it"
        )


def _shared_token() -> str:
    """A fresh id, the same on every process so all write the same directory."""
    token = uuid.uuid4().hex
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        raw = np.frombuffer(bytes.fromhex(token), np.uint8)
        token = bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw))).hex()
    return token


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def save(path: str | os.PathLike[str], state: ArrayTree) -> None:
    """Write a pytree of arrays to the directory ``path``, atomically.

    Any pytree works: an optimizer state (``NamedTuple`` nodes, ``None``,
    :class:`~adamx.EmptyState`, :class:`~adamx.MaskedNode`), params, or a dict
    of both with Python numbers such as a step counter. Leaves may be arrays of
    any dtype (bfloat16, float16, int8, uint8, bool, ...), of any size
    including zero, typed PRNG keys from ``jax.random.key``, NumPy arrays, or
    Python ``bool``/``int``/``float``/``complex``.

    The checkpoint is written into ``<path>.tmp-<id>`` and renamed into place
    only when complete; a checkpoint already at ``path`` is replaced, and stays
    readable until the new one is in place (see the module docstring). Parent
    directories are created as needed.

    Args:
        path: the checkpoint directory, a ``str`` or ``os.PathLike``.
        state: the pytree to save.

    Raises:
        TypeError: if a leaf is not an array or a Python scalar.
        FileExistsError: if ``path`` exists and is not an adamx checkpoint.
        ImportError: if ``orbax-checkpoint`` is not installed.

    Example:
        >>> import os, shutil, tempfile
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> import adamx.checkpoint
        >>> tx = adamx.adam(1e-3)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> _, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> root = tempfile.mkdtemp()
        >>> path = os.path.join(root, "step_1")
        >>> adamx.checkpoint.save(path, {"opt": state, "step": 1})
        >>> sorted(os.listdir(path))
        ['adamx_checkpoint.json', 'arrays']
        >>> shutil.rmtree(root)
    """
    _orbax()
    path = Path(os.path.abspath(os.fspath(path)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    entries, arrays = [], {}
    for i, (key_path, leaf) in enumerate(leaves):
        entry, array = _describe_leaf(jax.tree_util.keystr(key_path), leaf, f"leaf_{i}")
        entries.append(entry)
        if array is not None:
            arrays[entry["name"]] = array
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "treedef": str(treedef),
        "leaves": entries,
        "jax_version": jax.__version__,
    }

    _check_overwritable(path)
    primary = jax.process_index() == 0
    token = _shared_token()
    tmp = path.with_name(f"{path.name}.tmp-{token}")
    if primary:
        tmp.mkdir(parents=True)
    _sync("adamx.checkpoint.save:mkdir")
    try:
        if arrays:
            _write_arrays(tmp / ARRAYS_DIR, arrays)
        # Written last: a directory with this file in it is a complete checkpoint.
        if primary:
            _write_metadata(tmp / METADATA_FILE, metadata)
        _sync("adamx.checkpoint.save:written")
        if primary:
            _commit(tmp, path, token)
    except BaseException:
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sync("adamx.checkpoint.save:committed")


# ------------------------------------------------------------------ restoring


def _find_checkpoint(path: Path) -> Path:
    if (path / METADATA_FILE).is_file():
        return path
    asides = _asides(path)
    if asides:
        return asides[0]
    if os.path.lexists(path):
        raise FileNotFoundError(
            f"no adamx checkpoint at {path}: {METADATA_FILE} is missing"
        )
    raise FileNotFoundError(f"no checkpoint at {path}")


def _target_spec(key: str, leaf: Any) -> dict[str, Any]:
    """Shape, dtype name and sharding the restored leaf must have."""
    if _is_python_scalar(leaf):
        return {
            "kind": "python",
            "shape": [],
            "dtype": _python_scalar_name(leaf),
            "sharding": None,
        }
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(f"target leaf {key} is a traced value; restore outside jit")
        kind = "numpy" if isinstance(leaf, (np.ndarray, np.generic)) else "jax"
        return {
            "kind": kind,
            "shape": list(np.shape(leaf)),
            "dtype": str(leaf.dtype),
            "sharding": getattr(leaf, "sharding", None),
            "scalar": isinstance(leaf, np.generic),
        }
    raise TypeError(
        f"target leaf {key} must be an array, a jax.ShapeDtypeStruct or a Python "
        f"scalar, got {leaf!r} of type {type(leaf).__name__}"
    )


def _check_leaf(entry: dict[str, Any], spec: dict[str, Any]) -> None:
    if entry["shape"] == spec["shape"] and entry["dtype"] == spec["dtype"]:
        return
    # A Python number and a 0-d array of the same kind stand for each other, so
    # a step counter saved as an int restores into a jax.eval_shape target.
    scalar_pair = (entry["kind"] == "python") != (spec["kind"] == "python")
    if (
        scalar_pair
        and entry["shape"] == spec["shape"] == []
        and _scalar_kind(entry["dtype"]) is not None
        and _scalar_kind(entry["dtype"]) == _scalar_kind(spec["dtype"])
    ):
        return
    raise ValueError(
        f"leaf {entry['path']} does not match the target: the checkpoint has shape "
        f"{tuple(entry['shape'])} and dtype {entry['dtype']}, the target has shape "
        f"{tuple(spec['shape'])} and dtype {spec['dtype']}"
    )


def _restore_arg(ocp: Any, entry: dict[str, Any], spec: dict[str, Any]) -> Any:
    if (
        entry["kind"] == "array"
        and spec["kind"] == "jax"
        and spec["sharding"] is not None
    ):
        # Orbax reads only the shards each process needs.
        return ocp.ArrayRestoreArgs(
            sharding=spec["sharding"],
            global_shape=tuple(entry["shape"]),
            dtype=jnp.dtype(spec["dtype"]),
        )
    return ocp.RestoreArgs(restore_type=np.ndarray)


def _read_arrays(directory: Path, restore_args: dict[str, Any]) -> dict[str, Any]:
    ocp = _orbax()
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        return checkpointer.restore(
            directory, args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    finally:
        checkpointer.close()


def _finish_leaf(entry: dict[str, Any], spec: dict[str, Any], value: Any) -> Any:
    """Turn the value read from disk into a leaf of the target's type."""
    if value is None:  # nothing stored: an array of size zero
        shape = entry["data_shape"] if entry["kind"] == "key" else entry["shape"]
        dtype = "uint32" if entry["kind"] == "key" else entry["dtype"]
        value = np.zeros(shape, jnp.dtype(dtype))
    if entry["kind"] == "key":
        # Annotated for jax.Array, but it converts NumPy key data itself.
        data = cast(jax.Array, np.asarray(value))
        value = jax.random.wrap_key_data(data, impl=entry["key_impl"])
        return (
            value
            if spec["sharding"] is None
            else jax.device_put(value, spec["sharding"])
        )
    if spec["kind"] == "python":
        return _PYTHON_SCALARS[spec["dtype"]](np.asarray(value).item())
    if entry["kind"] == "python":
        # Through a Python number, so an int too large for the dtype raises.
        value = np.asarray(np.asarray(value).item(), jnp.dtype(spec["dtype"]))
    if isinstance(value, jax.Array):
        return value
    if spec["kind"] == "numpy":
        value = np.asarray(value)
        return value[()] if spec["scalar"] else value
    if spec["sharding"] is not None:
        return jax.device_put(value, spec["sharding"])
    return jnp.asarray(value)


def _first_difference(entries: list[dict[str, Any]], leaves: list[Any]) -> str:
    """A line naming the first leaf path that differs, to spot it in long trees."""
    saved = [e["path"] for e in entries]
    wanted = [jax.tree_util.keystr(k) for k, _ in leaves]
    for i, (a, b) in enumerate(zip(saved, wanted, strict=False)):
        if a != b:
            return (
                f"\n  first difference: leaf {i} is {a} in the checkpoint, {b} in "
                "the target"
            )
    if len(saved) != len(wanted):
        return f"\n  the checkpoint has {len(saved)} leaves, the target {len(wanted)}"
    return ""


def restore(path: str | os.PathLike[str], target: ArrayTree) -> ArrayTree:
    """Read the checkpoint at ``path`` into the structure of ``target``.

    ``target`` gives the structure, shapes, dtypes and placement wanted:
    ``tx.init(params)``, or ``jax.eval_shape(tx.init, params)`` to allocate
    nothing twice. The result has the target's tree structure, node types
    included (``ScaleByAdamState`` comes back as ``ScaleByAdamState``, not a
    dict), each leaf equal bit for bit to the saved one, and each leaf of the
    target's kind:

    * a ``jax.Array``, or a ``jax.ShapeDtypeStruct`` with a ``sharding``: a
      ``jax.Array`` with that sharding (Orbax reads only the needed shards);
    * a ``jax.ShapeDtypeStruct`` without one: a ``jax.Array`` on the default
      device;
    * a NumPy array: a NumPy array;
    * a Python ``int``/``float``/``bool``: a Python number of that type.

    A Python number and a 0-d array of the same kind (bool, integer, floating)
    restore into each other. Restored arrays are strongly typed.

    If ``path`` is missing but a save replacing it died between its two renames,
    the previous checkpoint, kept under ``<path>.old-<id>``, is read instead.

    Args:
        path: the checkpoint directory given to :func:`save`.
        target: a pytree of arrays, ``jax.ShapeDtypeStruct`` or Python scalars.

    Returns:
        The restored pytree, with the structure of ``target``.

    Raises:
        FileNotFoundError: if there is no checkpoint at ``path``.
        ValueError: if the saved tree structure differs from the target's (the
            message prints both), or a leaf's shape or dtype does (the message
            names the leaf's key path).
        ImportError: if ``orbax-checkpoint`` is not installed.

    Example:
        >>> import os, shutil, tempfile
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> import adamx.checkpoint
        >>> tx = adamx.adam(1e-3)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> _, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> path = os.path.join(tempfile.mkdtemp(), "opt_state")
        >>> adamx.checkpoint.save(path, state)
        >>> restored = adamx.checkpoint.restore(path, jax.eval_shape(tx.init, params))
        >>> type(restored[0]).__name__, restored[0].mu["w"]
        ('ScaleByAdamState', Array([0.1, 0.1, 0.1], dtype=float32))
        >>> shutil.rmtree(os.path.dirname(path))
    """
    ocp = _orbax()
    path = Path(os.path.abspath(os.fspath(path)))
    found = _find_checkpoint(path)
    with open(found / METADATA_FILE, encoding="utf-8") as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{found / METADATA_FILE} is not an adamx checkpoint file")
    if metadata.get("version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"the checkpoint at {found} has format version {metadata['version']}; "
            f"this adamx reads versions up to {FORMAT_VERSION}"
        )

    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    entries = metadata["leaves"]
    if not _same_structure_text(metadata["treedef"], str(treedef)):
        raise ValueError(
            f"The tree structure of the checkpoint at {found} does not match that of "
            f"the target.\n  checkpoint: {metadata['treedef']}\n"
            f"  target:     {treedef}{_first_difference(entries, leaves)}"
        )

    specs = [_target_spec(jax.tree_util.keystr(k), leaf) for k, leaf in leaves]
    for entry, spec in zip(entries, specs, strict=True):
        _check_leaf(entry, spec)
    restore_args = {
        e["name"]: _restore_arg(ocp, e, s)
        for e, s in zip(entries, specs, strict=True)
        if e["name"] is not None
    }
    values = _read_arrays(found / ARRAYS_DIR, restore_args) if restore_args else {}
    restored = [
        _finish_leaf(e, s, values.get(e["name"]) if e["name"] is not None else None)
        for e, s in zip(entries, specs, strict=True)
    ]
    return jax.tree.unflatten(treedef, restored)
