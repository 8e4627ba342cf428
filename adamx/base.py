"""Core types of adamx: the gradient-transformation protocol and tree helpers.

A gradient transformation is a pair of pure functions::

    state = init(params)
    updates, state = update(updates, state, params=None, **extra_args)

This is the same protocol as Optax, so adamx and Optax transformations can be
mixed in one chain, and an adamx optimizer can be handed to Flax's
``nnx.Optimizer`` or ``TrainState``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, Self

import jax
import jax.numpy as jnp
import numpy as np

from adamx.traits import Traits

__all__ = [
    "ArrayTree",
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "OptState",
    "Params",
    "Schedule",
    "ScalarOrSchedule",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "apply_updates",
    "identity",
    "init_empty_state",
    "set_to_zero",
    "tree_zeros_like",
]

ArrayTree = Any
Params = Any
Updates = Any
OptState = Any
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
ScalarOrSchedule = float | jax.typing.ArrayLike | Schedule

NO_PARAMS_MSG = (
    "{name} needs the current parameters: call `update(updates, state, params)` "
    "with params, not `update(updates, state)`."
)


class TransformInitFn(Protocol):
    """The type of ``init``: ``params -> state``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> init: adamx.TransformInitFn = adamx.adam(0.1).init
        >>> len(init(jnp.zeros(2)))
        2
    """

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """The type of ``update``: ``(updates, state, params=None) -> (updates, state)``.

    Extra keyword arguments are allowed but not required, as in Optax.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale(2.0)
        >>> update: adamx.TransformUpdateFn = tx.update
        >>> update(jnp.ones(2), tx.init(None))[0]
        Array([2., 2.], dtype=float32)
    """

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class TransformUpdateExtraArgsFn(Protocol):
    """The type of an ``update`` that takes extra keyword arguments.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.chain(adamx.scale(2.0))
        >>> update: adamx.TransformUpdateExtraArgsFn = tx.update
        >>> update(jnp.ones(2), tx.init(None), value=1.0)[0]
        Array([2., 2.], dtype=float32)
    """

    def __call__(
        self,
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]: ...


class _InitUpdate(NamedTuple):
    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformation(_InitUpdate):
    """A pair of pure functions ``(init, update)`` that transform gradients.

    ``init(params)`` builds the state; ``update(updates, state, params=None,
    **extra_args)`` returns ``(new_updates, new_state)``. Both are pure, so they
    compile under ``jax.jit`` and run under ``pmap``/``shard_map``.

    It is a ``NamedTuple`` of those two fields, as Optax's is, so Optax and Flax
    accept it and unpack it as they do their own. What the transformation
    declares about itself (:class:`~adamx.Traits`: element-wise or per leaf,
    its stages for the in-place kernels, its state layout) rides beside the two
    fields, in ``traits``. A per-leaf transformation (``elementwise=False``)
    refuses a :class:`~adamx.FlatParams` in ``init``. ``update`` receives
    integer (and boolean) gradients in the default float dtype, so its updates
    are floats: a rate times an integer gradient is not rounded to an integer.

    Args:
        init: ``params -> state``.
        update: ``(updates, state, params=None, **extra_args) -> (updates, state)``.
        traits: what it declares; ``None`` declares nothing.
        derived: the traits are derived from parts that declare their own
            (a chain, a wrapper), so the parts refuse a flat layout themselves.

    Returns:
        The transformation.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.GradientTransformation(
        ...     init=lambda params: adamx.EmptyState(),
        ...     update=lambda u, s, params=None: (u, s),
        ... )
        >>> tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))[0]
        Array([1., 1.], dtype=float32)
    """

    # A class default: _replace and _make build a tuple without __new__, and
    # what they build declares nothing.
    traits: Traits = Traits()

    def __new__(
        cls,
        init: TransformInitFn,
        update: TransformUpdateFn,
        traits: Traits | None = None,
        *,
        derived: bool = False,
    ) -> Self:
        traits = Traits() if traits is None else traits
        # A combination whose traits come from its parts (derived) leaves the
        # refusal to the part that works leaf by leaf, which names itself.
        if traits.elementwise is False and not derived:
            init = _refusing_flat_params(init, _name(update, traits))
        self = super().__new__(cls, init, _float_updates(update))
        self.traits = traits
        return self


class GradientTransformationExtraArgs(GradientTransformation):
    """A :class:`GradientTransformation` whose ``update`` takes extra arguments.

    ``update(updates, state, params=None, **extra_args)``: the keyword
    arguments a loss-aware transformation needs (``value``, ``grad``,
    ``value_fn``, ...) travel through it, and the parts that do not use them
    ignore them. :func:`~adamx.chain`, :func:`~adamx.named_chain` and the
    wrappers return one, as Optax's do, so ``isinstance`` checks written for
    Optax's class of this name see the same answer.

    Args:
        init: ``params -> state``.
        update: ``(updates, state, params=None, **extra_args) -> (updates, state)``.
        traits: what it declares; ``None`` declares nothing.
        derived: the traits are derived from its parts.

    Returns:
        The transformation.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.chain(adamx.scale(2.0))
        >>> isinstance(tx, adamx.GradientTransformationExtraArgs)
        True
        >>> tx.update(jnp.ones(2), tx.init(jnp.zeros(2)), value=3.0)[0]
        Array([2., 2.], dtype=float32)
    """


def _name(update: TransformUpdateFn, traits: Traits) -> str:
    """The factory that built a transformation, for messages."""
    if traits.stages is not None and len(traits.stages) == 1:
        return traits.stages[0].name
    qualname = getattr(update, "__qualname__", "this transformation")
    return qualname.split(".<locals>")[0]


class JoinedLeaves:
    """Base class of params layouts that join several leaves into one buffer.

    A per-leaf transformation's ``init`` refuses such params
    (:class:`adamx.FlatParams` is one). Defined here, beside that guard,
    because the flat layout is built on this module.
    """


def _refusing_flat_params(init: TransformInitFn, name: str) -> TransformInitFn:
    """``init``, refusing a flat layout: a per-leaf transformation's guard."""

    @functools.wraps(init)
    def init_fn(params: Params) -> OptState:
        is_flat = lambda x: isinstance(x, JoinedLeaves)  # noqa: E731
        if any(map(is_flat, jax.tree.leaves(params, is_leaf=is_flat))):
            raise TypeError(
                f"{name} works leaf by leaf (per-leaf "
                "norms, factored or block-quantized moments, or a mask), so it "
                "cannot run on a FlatParams, whose buffers join the leaves: give "
                "it the tree of params (or, where it has one, use an element-wise "
                "configuration: state_bits 32 or 16, no mask)"
            )
        return init(params)

    return init_fn


def _integer_as_float(g: Any) -> Any:
    dtype = getattr(g, "dtype", None)
    if dtype is None or dtype == jax.dtypes.float0:
        return g
    if jnp.issubdtype(dtype, jnp.inexact):
        return g
    return jnp.asarray(g).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _float_updates(update: TransformUpdateFn) -> TransformUpdateFn:
    """``update``, given integer (or boolean) gradients in the default float dtype.

    Every transformation computes in floats: a rate times an integer gradient,
    cast back to the integer dtype, would truncate the update silently. The
    updates it returns are then floats, as Optax's Adam returns them.
    """
    if getattr(update, "_casts_integer_updates", False):
        return update

    # The rest of the arguments pass as given: an update function may take no
    # params, or take them by keyword only.
    @functools.wraps(update)
    def update_fn(
        updates: Updates, state: OptState, *args: Any, **kwargs: Any
    ) -> tuple[Updates, OptState]:
        updates = jax.tree.map(_integer_as_float, updates)
        return update(updates, state, *args, **kwargs)

    update_fn._casts_integer_updates = True  # type: ignore[attr-defined]
    return update_fn


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""


def init_empty_state(params: Params) -> EmptyState:
    """Return an :class:`EmptyState`, whatever the params.

    Args:
        params: ignored.

    Returns:
        ``EmptyState()``.

    Example:
        >>> import adamx
        >>> adamx.init_empty_state({"w": 1.0})
        EmptyState()
    """
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    r"""Leave the updates as they are: :math:`u_t = g_t`.

    Returns:
        A stateless :class:`GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.identity()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(None))[0]
        Array([ 1., -2.], dtype=float32)
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state

    return GradientTransformation(
        init_empty_state, update_fn, Traits(elementwise=True, stages=())
    )


def set_to_zero() -> GradientTransformation:
    r"""Replace every update by zeros: :math:`u_t = 0`.

    Used with :func:`adamx.partition` to freeze a group of parameters.

    Returns:
        A stateless :class:`GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.set_to_zero()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(None))[0]
        Array([0., 0.], dtype=float32)
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init_empty_state, update_fn, ELEMENTWISE)


#: The traits of a stage that acts element by element and no kernel takes.
ELEMENTWISE = Traits(elementwise=True)
#: The traits of a stage that works leaf by leaf.
PER_LEAF = Traits(elementwise=False)


def _is_none(x: Any) -> bool:
    return x is None


def apply_updates(params: Params, updates: Updates) -> Params:
    r"""Add the updates to the params, keeping each param's dtype.

    .. math:: \theta_t = \theta_{t-1} + u_t

    The sum is computed in the promoted dtype of param and update, then cast
    back to the param's dtype, so bf16 params stay bf16 even when the updates
    are float32. ``None`` leaves stay ``None``.

    Args:
        params: a tree of arrays.
        updates: a tree of the same structure, as returned by ``update``.

    Returns:
        The new params, same structure and dtypes as ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.apply_updates({"w": jnp.ones(2)}, {"w": jnp.array([0.5, -1.0])})
        {'w': Array([1.5, 0. ], dtype=float32)}
    """
    check_same_shapes("updates", updates, "params", params)

    def add(p, u):
        if p is None:
            return None
        p, u = jnp.asarray(p), jnp.asarray(u)
        # Explicit promotion: bf16 params with float32 updates add in float32
        # (and work under strict dtype promotion), then return to bf16.
        dt = wider_dtype(p.dtype, u.dtype)
        return (p.astype(dt) + u.astype(dt)).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=_is_none)


def wider_dtype(*dtypes: Any) -> Any:
    """The dtype that holds values of all ``dtypes``, as JAX's standard promotion.

    Computed here rather than by ``jnp.promote_types`` so that it also works under
    ``jax_numpy_dtype_promotion="strict"``, where, say, ``float64`` and
    ``float32`` have no implicit promotion path. Floats win over integers;
    ``bfloat16`` with ``float16`` gives ``float32``.
    """
    ds = [jnp.dtype(d) for d in dtypes]
    floats = [d for d in ds if jnp.issubdtype(d, jnp.inexact)]
    if not floats:
        return functools.reduce(np.promote_types, ds)
    widest = max(floats, key=lambda d: d.itemsize)
    if any(d.itemsize == widest.itemsize and d != widest for d in floats):
        # Two different formats of one width (bf16, f16): neither holds the other.
        return jnp.dtype(jnp.float32) if widest.itemsize < 4 else widest
    return widest


def tree_zeros_like(tree: ArrayTree, dtype: Any = None) -> ArrayTree:
    """Zeros shaped like each leaf of ``tree``, optionally in another dtype.

    Leaves that are ``None`` stay ``None``. On concrete, sharded arrays the
    zeros keep the leaf's sharding; under ``jax.eval_shape`` the leaves may be
    ``jax.ShapeDtypeStruct``.

    Args:
        tree: a tree of arrays (or shape/dtype structs).
        dtype: the dtype of the zeros; ``None`` keeps each leaf's dtype.

    Returns:
        A tree of zeros with the structure of ``tree``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree_zeros_like({"w": jnp.ones(2), "b": None}, jnp.bfloat16)
        {'b': None, 'w': Array([0, 0], dtype=bfloat16)}
    """
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def safe_increment(count: jax.Array) -> jax.Array:
    """Add one to an integer counter, saturating at its dtype's maximum."""
    count = jnp.asarray(count)
    max_value = jnp.array(jnp.iinfo(count.dtype).max, count.dtype)
    return jnp.where(count < max_value, count + 1, max_value)


def check_same_structure(name_a: str, a: ArrayTree, name_b: str, b: ArrayTree) -> None:
    """Raise a ``ValueError`` that prints both structures if ``a`` and ``b`` differ.

    Only the tree structure is compared (at trace time, so no cost in a jitted
    step); ``None`` leaves count as part of the structure.
    """
    sa = jax.tree.structure(a, is_leaf=_is_none)
    sb = jax.tree.structure(b, is_leaf=_is_none)
    if sa != sb:
        raise ValueError(
            f"The tree structure of {name_a} does not match that of {name_b}.\n"
            f"  {name_a}: {sa}\n  {name_b}: {sb}{_where_trees_differ(a, b)}"
        )


def _where_trees_differ(a: ArrayTree, b: ArrayTree) -> str:
    """JAX's account of the first place two trees differ (key path and kind)."""
    for x, y in ((a, b), (b, a)):
        try:
            jax.tree.map(lambda *_: None, x, y, is_leaf=_is_none)
        except (ValueError, TypeError) as e:
            return f"\n  {e}"
    return ""


def check_same_shapes(name_a: str, a: ArrayTree, name_b: str, b: ArrayTree) -> None:
    """Like :func:`check_same_structure`, and raise for the first pair of leaves whose
    shapes differ, naming its key path: a leaf of the wrong shape would otherwise
    fail deep inside ``jnp`` or, worse, be broadcast without a word.

    Shapes are static, so the check costs nothing in a jitted step.
    """
    check_same_structure(name_a, a, name_b, b)
    with_paths = jax.tree_util.tree_flatten_with_path(a, is_leaf=_is_none)[0]
    for (path, x), y in zip(
        with_paths, jax.tree.leaves(b, is_leaf=_is_none), strict=True
    ):
        if x is None or y is None:
            continue
        shape_a, shape_b = _shape(x), _shape(y)
        if shape_a != shape_b:
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"{name_a}{where} has shape {shape_a}, but {name_b}{where} has "
                f"shape {shape_b}"
            )


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def require_params(name: str, params: Params | None) -> None:
    """Raise the ``ValueError`` for a transformation called without params."""
    if params is None:
        raise ValueError(NO_PARAMS_MSG.format(name=name))


@jax.tree_util.register_pytree_node_class
class ParamsPlaceholder:
    """Stands in for the params when :func:`adamx.tree.map_params` calls ``init``.

    An empty pytree node: an ``init`` that maps over the params returns it
    wherever the state holds a tree shaped like the params. An ``init`` that
    reads the params' structure (a mask) passes it on unread, see
    :func:`is_params_placeholder`.
    """

    def tree_flatten(self) -> tuple[tuple[()], None]:
        return (), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: Any) -> ParamsPlaceholder:
        del aux, children
        return cls()


def is_params_placeholder(x: Any) -> bool:
    """True for the params' stand-in of ``adamx.tree.map_params`` or of Optax's.

    Optax's (``optax.tree.map_params``) is recognised by its class, without
    importing Optax.
    """
    cls = type(x)
    return cls is ParamsPlaceholder or (
        cls.__name__ == "_ParamsPlaceholder" and cls.__module__.startswith("optax.")
    )


def is_schedule(x: Any) -> bool:
    """True when ``x`` is a schedule: a callable that is not an array."""
    return callable(x) and not isinstance(x, jax.Array)


def is_concrete(x: Any) -> bool:
    """True when ``x`` is a Python number, a NumPy value or a non-traced array."""
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, (int, float, np.number, np.ndarray, jax.Array))


def leafwise(fn: Callable[..., tuple], n_out: int, tree: Any, *others: Any) -> tuple:
    """Apply ``fn`` leaf by leaf to ``tree`` and ``others``; unzip its outputs.

    ``None`` and :class:`~adamx.MaskedNode` entries carry no leaves, so they pass
    through untouched. ``others`` may hold a subtree (a quantized moment) where
    ``tree`` has a leaf.
    """
    leaves, treedef = jax.tree.flatten(tree)
    other_leaves = [treedef.flatten_up_to(o) for o in others]
    outs = [fn(*args) for args in zip(leaves, *other_leaves, strict=True)]
    return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(n_out))


def explicit_sharding(x: Any) -> Any:
    """The sharding of ``x`` if it is split over explicit mesh axes, else None.

    With explicit axes (the default of ``jax.make_mesh``) a sharding is part of
    the type: reshapes and slices must say where their results live.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    if mesh is None or spec is None:
        return None
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()), strict=False))
    used = [
        a for e in spec if e is not None for a in (e if isinstance(e, tuple) else (e,))
    ]
    explicit = jax.sharding.AxisType.Explicit
    return sharding if any(types.get(a) == explicit for a in used) else None
