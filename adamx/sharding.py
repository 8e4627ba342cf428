r"""Optimizer state on a device mesh: state that follows its params, and ZeRO-1.

Every adamx transformation builds its state from its params with the params'
shardings: on sharded params ``tx.init`` puts each state leaf shaped like a
param where that param lives, and a jitted ``tx.update`` keeps it there. Two
ways to get such a state without ever holding an unsharded copy::

    state = tx.init(params)                       # concrete, sharded params
    state = jax.jit(tx.init, out_shardings=state_shardings(tx, params))(
        params                                    # or jax.ShapeDtypeStruct leaves
    )

That state costs as much memory as Optax's: with data parallelism every device
holds all of it. :func:`sharded` partitions it instead (ZeRO stage 1, Rajbhandari
et al., 2020): with params of :math:`\Psi` elements replicated over :math:`N_d`
devices and :math:`K` bytes of state per param element, each device holds

.. math:: \frac{K \Psi}{N_d} + \text{leaves too small or odd-sized to split}

bytes of optimizer state instead of :math:`K \Psi`, at the cost of one
reduce-scatter of the gradients (all-reduce then slice, on CPU) and one
all-gather of the updates per step, which XLA derives from sharding
constraints. See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextvars
import math
import operator
from collections import defaultdict
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

from adamx.base import GradientTransformation, GradientTransformationExtraArgs, Params
from adamx.combine import call_update, check_transformation
from adamx.lowbit import QuantizedArray, block_axes, is_quantized
from adamx.traits import Traits, traits_of

__all__ = [
    "bytes_per_device",
    "by_matrix",
    "like_state",
    "matrix_work",
    "matrix_workers",
    "sharded",
    "state_shardings",
    "zero_spec",
]

# The mesh axis over which sharded() splits per-matrix work, while its update
# traces the wrapped transformation's.
_WORK_AXIS: contextvars.ContextVar[tuple[Mesh, str] | None] = contextvars.ContextVar(
    "adamx_work_axis", default=None
)

# ------------------------------------------------------------------ helpers


def _shape(x: Any) -> tuple[int, ...] | None:
    shape = getattr(x, "shape", None)
    return None if shape is None else tuple(shape)


def _is_traced(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _explicit(mesh: Any) -> bool:
    types = getattr(mesh, "axis_types", ())
    return bool(types) and all(t == AxisType.Explicit for t in types)


def _visible_sharding(x: Any) -> Sharding | None:
    """The sharding a leaf carries where it can be read: arrays, structs, and
    tracers of a mesh with explicit axes (on ``Auto`` axes a tracer's layout is
    left to the compiler and is not known while tracing)."""
    if isinstance(x, jax.core.Tracer):
        sharding = getattr(jax.typeof(x), "sharding", None)
        return sharding if _explicit(getattr(sharding, "mesh", None)) else None
    return getattr(x, "sharding", None)


def _on_mesh(sharding: Sharding | None, mesh: Mesh) -> Sharding | None:
    """``sharding`` as a sharding over ``mesh``'s devices, or None if it is not."""
    if isinstance(sharding, NamedSharding):
        if sharding.mesh in (mesh, mesh.abstract_mesh):
            return NamedSharding(mesh, sharding.spec)
        if isinstance(sharding.mesh, Mesh) and sharding.mesh.devices.size == 1:
            return sharding if mesh.devices.size == 1 else None
        return None
    if sharding is not None and set(sharding.device_set) == set(mesh.devices.flat):
        return sharding
    return None


def _constrain(x: Any, sharding: Sharding) -> Any:
    if not isinstance(x, jax.Array | jax.core.Tracer):
        return x
    if isinstance(sharding, NamedSharding) and _explicit(sharding.mesh):
        # Explicit axes are part of the array's type: only reshard changes them.
        return jax.sharding.reshard(x, sharding)
    if not isinstance(x, jax.core.Tracer) and x.sharding == sharding:
        return x
    return jax.lax.with_sharding_constraint(x, sharding)


def _constrain_tree(tree: Any, shardings: Any) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(
        [
            _constrain(x, s)
            for x, s in zip(leaves, treedef.flatten_up_to(shardings), strict=True)
        ]
    )


def _key(path: tuple) -> tuple[str, ...]:
    return tuple(repr(k) for k in path)


def _match(state: Any, params: Any) -> list[int | None]:
    """For each state leaf, the index of the param leaf it is shaped after.

    A state leaf is matched to the param whose tree path ends its own path
    (``state[0].mu['w']`` ends with ``['w']``) and whose shape it has; the
    longest such path wins, so ``['a']['w']`` is preferred to ``['w']``. A
    quantized moment counts as one leaf, of the shape it stands for.
    """
    index = {}
    for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
        index[_key(path)] = (i, _shape(leaf))
    found = []
    flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_quantized)[0]
    for path, leaf in flat:
        key, shape, hit = _key(path), _shape(leaf), None
        for start in range(len(key) + 1):
            entry = index.get(key[start:])
            if entry is not None and entry[1] == shape:
                hit = entry[0]
                break
        found.append(hit)
    return found


def _axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple | list) else (entry,)


def _spec_of(sharding: Any) -> P | None:
    if isinstance(sharding, P):
        return sharding
    return getattr(sharding, "spec", None)


# ------------------------------------------------------------------ public


def zero_spec(
    shape: tuple[int, ...], mesh: Mesh, axis: str, spec: P | None = None
) -> P:
    r"""The ZeRO-1 partition of an array of ``shape`` over mesh axis ``axis``.

    The largest dimension whose size divides by the number of shards it would
    have (``mesh.shape[axis]`` times the shards ``spec`` already gives it) is
    split over ``axis``; the first such dimension wins a tie. Where none
    divides, or ``spec`` already uses ``axis``, the spec is left as it is.

    Args:
        shape: the array's shape.
        mesh: the device mesh.
        axis: the name of the mesh axis to split over.
        spec: the array's existing partition (over other mesh axes), or
            ``None`` for a replicated array.

    Returns:
        A ``PartitionSpec`` with one entry per dimension.

    Example:
        >>> import jax
        >>> from adamx.sharding import zero_spec
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> tuple(zero_spec((3, 16), mesh, "data"))
        (None, 'data')
        >>> tuple(zero_spec((), mesh, "data"))
        ()
    """
    entries = list(spec or ()) + [None] * (len(shape) - len(spec or ()))
    if any(axis in _axes(e) for e in entries):
        return P(*entries)
    size = mesh.shape[axis]
    best = None
    for d, n in enumerate(shape):
        shards = math.prod(mesh.shape[a] for a in _axes(entries[d])) * size
        if n > 0 and n % shards == 0 and (best is None or n > shape[best]):
            best = d
    if best is not None:
        existing = _axes(entries[best])
        entries[best] = (*existing, axis) if existing else axis
    return P(*entries)


def state_shardings(tx: GradientTransformation, params: Params) -> Any:
    """The shardings of ``tx.init(params)``, computed without building it.

    For ``jax.jit(tx.init, out_shardings=state_shardings(tx, params))``, which
    creates the state directly sharded. A state leaf shaped like a param gets
    that param's sharding; other leaves (step counts, Adafactor's factored
    moments) are replicated over the params' mesh. For a transformation made
    by :func:`sharded`, the shardings are its ZeRO-1 layout.

    Args:
        tx: the transformation.
        params: the params, as arrays or ``jax.ShapeDtypeStruct`` with their
            ``sharding`` set.

    Returns:
        A tree of ``jax.sharding.Sharding`` with the structure of the state.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.sharding import state_shardings
        >>> from jax.sharding import NamedSharding, PartitionSpec as P
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> params = {"w": jax.ShapeDtypeStruct(
        ...     (8 * jax.device_count(), 3), jnp.float32,
        ...     sharding=NamedSharding(mesh, P("data")))}
        >>> tx = adamx.adam(1e-3)
        >>> shardings = state_shardings(tx, params)
        >>> tuple(shardings[0].mu["w"].spec), tuple(shardings[0].count.spec)
        (('data',), ())
    """
    check_transformation("tx", tx)
    layout = traits_of(tx).layout
    structs = jax.eval_shape(tx.init, params)
    if layout is not None:
        return layout(structs, params)
    p_leaves = jax.tree.leaves(params)
    p_shardings = [_visible_sharding(p) for p in p_leaves]
    fallback = _replicated_like(p_shardings)
    leaves, treedef = jax.tree.flatten(structs, is_leaf=is_quantized)
    out: list[Any] = []
    for leaf, i in zip(leaves, _match(structs, params), strict=True):
        sharding = None if i is None else p_shardings[i]
        if sharding is None and i is not None:
            raise ValueError(
                f"state_shardings needs the sharding of every param; param leaf "
                f"{i} ({p_leaves[i]!r}) has none. Pass arrays, or "
                "jax.ShapeDtypeStruct(..., sharding=...)."
            )
        if is_quantized(leaf):
            out.append(_quantized_like_param(leaf, sharding, fallback))
        else:
            out.append(sharding if sharding is not None else fallback)
    return treedef.unflatten(out)


def _quantized_like_param(
    q: QuantizedArray, sharding: Sharding | None, fallback: Sharding | None
) -> QuantizedArray:
    """Where ``tx.init`` puts a quantized moment of a param with ``sharding``:
    its blocks split as :func:`adamx.lowbit.block_axes` says, on the param's
    devices."""
    codes = absmax = fallback
    spec, mesh = _spec_of(sharding), getattr(sharding, "mesh", None)
    if spec is not None and isinstance(mesh, Mesh) and q.shape:
        split = block_axes(spec, mesh, q.format)
        codes = NamedSharding(mesh, P(split, None))
        absmax = NamedSharding(mesh, P(split))
    return QuantizedArray(codes, absmax, q.format)


def _replicated_like(shardings: list[Sharding | None]) -> Sharding | None:
    """A replicated sharding over the devices of the first known sharding."""
    for s in shardings:
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, P())
        if s is not None:
            if len(s.device_set) == 1:
                return s
            devices = np.array(sorted(s.device_set, key=operator.attrgetter("id")))
            return NamedSharding(Mesh(devices, ("devices",)), P())
    return None


def bytes_per_device(tree: Any) -> int:
    """The largest number of bytes that the arrays of ``tree`` keep on one device.

    A replicated array counts in full on every device that holds it, a sharded
    one by its shard. Leaves without a sharding (NumPy arrays, Python numbers,
    structs without one) count for nothing.

    Args:
        tree: a tree of ``jax.Array`` or ``jax.ShapeDtypeStruct``.

    Returns:
        The maximum over devices of the bytes held there.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.sharding import bytes_per_device
        >>> bytes_per_device({"a": jnp.zeros((4, 2)), "b": jnp.zeros(3)})
        44
    """
    per_device: dict[Any, int] = defaultdict(int)
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None or _shape(leaf) is None:
            continue
        shard = sharding.shard_shape(_shape(leaf))
        nbytes = math.prod(shard) * np.dtype(leaf.dtype).itemsize
        for device in sharding.device_set:
            per_device[device] += nbytes
    return max(per_device.values(), default=0)


def matrix_workers() -> int:
    """How many devices share per-matrix work: the size of the axis a
    :func:`sharded` update splits over while it traces, 1 elsewhere.

    A transformation that works matrix by matrix (Muon's Newton-Schulz) pads
    its stacks of same-shape matrices to a multiple of this number, so that
    :func:`by_matrix` gives each device whole matrices.

    Returns:
        The number of devices.

    Example:
        >>> from adamx.sharding import matrix_workers
        >>> matrix_workers()
        1
    """
    work = _WORK_AXIS.get()
    return 1 if work is None else work[0].shape[work[1]]


def by_matrix(stack: jax.Array) -> jax.Array:
    """Lay a stack of matrices ``(B, m, n)`` out by whole matrices over the axis
    a :func:`sharded` update splits over; unchanged elsewhere.

    Each device then holds ``B / matrix_workers()`` whole matrices and works on
    them alone: no collective inside the work, one to bring the stack in and
    one to send its results back to the state's layout (:func:`like_state`).

    Args:
        stack: the matrices, their number a multiple of :func:`matrix_workers`.

    Returns:
        ``stack``, constrained to that layout.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.sharding import by_matrix
        >>> by_matrix(jnp.zeros((2, 3, 3))).shape
        (2, 3, 3)
    """
    work = _WORK_AXIS.get()
    if work is None:
        return stack
    mesh, axis = work
    spec = P(axis, *([None] * (stack.ndim - 1)))
    return _constrain(stack, NamedSharding(mesh, spec))


def matrix_work(fn: Any, xs: list[jax.Array], *args: Any) -> list[jax.Array]:
    """Run ``fn(xs, *args)``, per-matrix work on leaves laid out as state, where
    :func:`by_matrix` and :func:`like_state` can place its arrays.

    On a mesh of ``Auto`` axes (or outside :func:`sharded`) that is a plain
    call. A mesh with ``Explicit`` axes makes each array's layout part of its
    type, and slicing a stack split by matrices would need a reshard per
    matrix: there ``fn`` runs inside ``jax.sharding.auto_axes``, its results
    laid out as state leaves.

    Args:
        fn: ``(list of arrays, *args) -> list of arrays shaped like them``.
        xs: the arrays.
        *args: what else ``fn`` reads (pass arrays here, not in a closure:
            inside ``auto_axes`` a closed-over array keeps its explicit type).

    Returns:
        ``fn(xs, *args)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.sharding import matrix_work
        >>> matrix_work(lambda xs, k: [k * x for x in xs], [jnp.ones(2)], 2.0)[0]
        Array([2., 2.], dtype=float32)
    """
    work = _WORK_AXIS.get()
    if work is None or not _explicit(work[0]):
        return fn(xs, *args)
    mesh, axis = work
    auto = Mesh(
        mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.shape)
    )
    out = [NamedSharding(mesh, zero_spec(_shape(x) or (), mesh, axis)) for x in xs]
    token = _WORK_AXIS.set((auto, axis))
    try:
        return jax.sharding.auto_axes(fn, out_sharding=out)(xs, *args)
    finally:
        _WORK_AXIS.reset(token)


def like_state(x: jax.Array) -> jax.Array:
    """Lay ``x`` out as a :func:`sharded` update lays out a state leaf of its
    shape (:func:`zero_spec`); unchanged elsewhere.

    Args:
        x: an array shaped like a param.

    Returns:
        ``x``, constrained to that layout.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.sharding import like_state
        >>> like_state(jnp.ones(3)).shape
        (3,)
    """
    work = _WORK_AXIS.get()
    if work is None:
        return x
    mesh, axis = work
    return _constrain(x, NamedSharding(mesh, zero_spec(x.shape, mesh, axis)))


def sharded(
    tx: GradientTransformation,
    mesh: Mesh,
    axis: str = "data",
    *,
    params_sharding: Any = None,
) -> GradientTransformation:
    r"""Partition ``tx``'s state over one mesh axis: ZeRO stage 1.

    Each state leaf is split over ``axis`` along its largest dimension that
    divides by the axis size (:func:`zero_spec`); a leaf with no such
    dimension, such as a step count, is replicated. On each step

    .. math::
        \tilde g = \operatorname{shard}(g), \quad
        (\tilde u, S_t) = f(\tilde g, S_{t-1}, \operatorname{shard}(\theta)),
        \quad u = \operatorname{gather}(\tilde u)

    where :math:`f` is ``tx.update``, :math:`\operatorname{shard}` lays a
    param-shaped tree out like the state and :math:`\operatorname{gather}`
    returns it to the params' layout. Both are sharding constraints: inside
    ``jax.jit`` XLA turns the first, with the gradients' mean over the batch,
    into a reduce-scatter (on CPU, an all-reduce and a slice) and the second
    into an all-gather. The numbers are those of ``tx``, and the params keep
    the sharding they have. Make ``sharded`` the outermost wrapper, so that
    :func:`state_shardings` sees its layout.

    The updates are returned with the params' sharding where it can be seen:
    on concrete arrays, and inside ``jit`` on a mesh with explicit axes. On a
    mesh of ``Auto`` axes a traced param's sharding is unknown, so updates
    come back replicated (plain data parallelism) unless ``params_sharding``
    says otherwise.

    Works on a :class:`~adamx.FlatParams`: each flat buffer is split when its
    length divides by the axis size, else replicated. Quantized moments
    (``state_bits=8`` or ``4``) are split by whole blocks when their number of
    blocks divides by the axis size, and replicated otherwise; on a mesh with
    ``Explicit`` axes they are refused with a ``ValueError``.

    Args:
        tx: the transformation whose state to partition.
        mesh: the device mesh.
        axis: the mesh axis to partition over (the data-parallel axis).
        params_sharding: the params' shardings (``Sharding`` or
            ``PartitionSpec`` on ``mesh``), one for all leaves or a tree like
            the params. When given, state leaves shaped like a param are split
            over ``axis`` on top of that param's partition over other axes.

    Returns:
        A :class:`~adamx.GradientTransformation` with ``tx``'s state, laid out
        as described.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.sharding import sharded
        >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
        >>> tx = sharded(adamx.adam(0.1), mesh, "data")
        >>> params = {"w": jnp.ones((3, 16))}
        >>> state = tx.init(params)
        >>> tuple(state[0].mu["w"].sharding.spec)
        (None, 'data')
        >>> updates, state = jax.jit(tx.update)(params, state, params)
        >>> updates["w"][0, :2]
        Array([-0.1, -0.1], dtype=float32)

    References:
        Rajbhandari et al., 2020, "ZeRO: Memory Optimizations Toward Training
        Trillion Parameter Models", https://arxiv.org/abs/1910.02054
    """
    check_transformation("tx", tx)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {mesh!r}")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"axis must be one of the mesh's axes {mesh.axis_names}, got {axis!r}"
        )

    def base_specs(target: Any, params: Any) -> list[P | None]:
        """For each leaf of ``target``, the partition of the param it follows."""
        if params_sharding is None or params is None:
            return [None] * len(jax.tree.leaves(target, is_leaf=is_quantized))
        given = _broadcast_params_sharding(params_sharding, params)
        return [None if i is None else given[i] for i in _match(target, params)]

    size = mesh.shape[axis]

    def layout(target: Any, params: Any) -> Any:
        specs = iter(base_specs(target, params))

        def place(x):
            if is_quantized(x):
                next(specs)
                codes, absmax = _quantized_split(x, axis, size)
                return QuantizedArray(
                    NamedSharding(mesh, codes), NamedSharding(mesh, absmax), x.format
                )
            spec = zero_spec(_shape(x) or (), mesh, axis, next(specs))
            return NamedSharding(mesh, spec)

        return jax.tree.map(place, target, is_leaf=is_quantized)

    def params_layout(updates: Any, params: Any) -> Any:
        leaves, treedef = jax.tree.flatten(updates)
        n = len(leaves)
        given = (
            [None] * n
            if params_sharding is None
            else _broadcast_params_sharding(params_sharding, updates, keep=True)
        )
        p_leaves = [None] * n if params is None else treedef.flatten_up_to(params)
        out = []
        for u, p, g in zip(leaves, p_leaves, given, strict=True):
            seen = _on_mesh(_visible_sharding(p), mesh) or _on_mesh(
                _visible_sharding(u), mesh
            )
            if seen is not None:
                out.append(seen)
            elif isinstance(g, Sharding):
                out.append(g)
            else:
                out.append(NamedSharding(mesh, P() if g is None else g))
        return treedef.unflatten(out)

    def init_fn(params):
        structs = jax.eval_shape(tx.init, params)
        _check_state_supported(structs, mesh)
        shardings = layout(structs, params)
        if _is_traced(params):
            return _constrain_tree(tx.init(params), shardings)
        if _on_devices(params, set(mesh.devices.flat)):
            # Compiled with its output layout, the state is created in shards:
            # no device ever holds all of it.
            return jax.jit(tx.init, out_shardings=shardings)(params)
        return jax.device_put(tx.init(params), shardings)

    def update_fn(updates, state, params=None, **extra_args):
        out = params_layout(updates, params)
        grads = _constrain_tree(updates, layout(updates, updates))
        if params is not None:
            params = _constrain_tree(params, layout(params, params))
        state = _constrain_tree(state, layout(state, updates))
        # Per-matrix work (Muon's Newton-Schulz) is split by whole matrices over
        # the axis; with the params split over other axes too, it is left to XLA.
        token = _WORK_AXIS.set((mesh, axis) if params_sharding is None else None)
        try:
            new_updates, new_state = call_update(tx, grads, state, params, extra_args)
        finally:
            _WORK_AXIS.reset(token)
        new_state = _constrain_tree(new_state, layout(new_state, updates))
        return _constrain_tree(new_updates, out), new_state

    # Sharding changes where numbers live, not what they are: an element-wise
    # transformation stays one.
    traits = Traits(elementwise=traits_of(tx).elementwise, layout=layout)
    return GradientTransformationExtraArgs(init_fn, update_fn, traits, derived=True)


def _broadcast_params_sharding(
    given: Any, params: Any, keep: bool = False
) -> list[Any]:
    """``params_sharding`` as one ``PartitionSpec`` per param leaf (or, with
    ``keep``, the ``Sharding`` or ``PartitionSpec`` given)."""
    n = len(jax.tree.leaves(params))
    pick = (lambda x: x) if keep else _spec_of
    if isinstance(given, P | Sharding):
        return [pick(given)] * n

    def is_leaf(x: Any) -> bool:
        return isinstance(x, P | Sharding)

    leaves = jax.tree.leaves(given, is_leaf=is_leaf)
    if len(leaves) != n:
        raise ValueError(
            "params_sharding must be one Sharding or PartitionSpec, or a tree like "
            f"the params.\n  params: {jax.tree.structure(params)}\n  "
            f"params_sharding: {jax.tree.structure(given, is_leaf=is_leaf)}"
        )
    return [pick(x) for x in leaves]


def _on_devices(params: Any, devices: set) -> bool:
    """Whether every array leaf lives on exactly ``devices``."""
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array) and set(leaf.sharding.device_set) != devices:
            return False
    return True


def _quantized_split(q: QuantizedArray, axis: str, size: int) -> tuple[P, P]:
    """ZeRO partitions of a quantized moment's codes and block maxima.

    Split by whole blocks, as its gradient's rows are, so that each device
    decodes and encodes its own blocks; replicated when the blocks do not
    divide over the axis.
    """
    blocks = q.codes.shape[0]
    by_block = axis if blocks and blocks % size == 0 else None
    return P(by_block, None), P(by_block)


def _check_state_supported(structs: Any, mesh: Mesh) -> None:
    """Refuse the combinations that cannot run, naming them."""
    quantized = jax.tree.leaves(
        jax.tree.map(is_quantized, structs, is_leaf=is_quantized)
    )
    if any(quantized) and any(t == AxisType.Explicit for t in mesh.axis_types):
        raise ValueError(
            "sharded cannot partition quantized moments (state_bits=8 or 4) over "
            f"a mesh with Explicit axes ({mesh}): decoding their codes is a "
            "gather, which JAX's explicit sharding does not partition. Build the "
            "mesh with axis_types=(jax.sharding.AxisType.Auto, ...), or use "
            "state_bits=16 or 32."
        )
