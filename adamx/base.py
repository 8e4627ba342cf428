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
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArrayTree",
    "EmptyState",
    "GradientTransformation",
    "OptState",
    "Params",
    "Schedule",
    "ScalarOrSchedule",
    "Updates",
    "apply_updates",
    "elementwise",
    "identity",
    "is_elementwise",
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
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    # Extra keyword arguments are allowed but not required, as in Optax.
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)`` that transform gradients.

    ``init(params)`` builds the state; ``update(updates, state, params=None,
    **extra_args)`` returns ``(new_updates, new_state)``. Both are pure, so they
    compile under ``jax.jit`` and run under ``pmap``/``shard_map``.

    Args:
        init: ``params -> state``.
        update: ``(updates, state, params=None, **extra_args) -> (updates, state)``.

    Returns:
        The transformation, a ``NamedTuple`` that Optax and Flax accept as is.

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

    init: TransformInitFn
    update: TransformUpdateFn


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

    return elementwise(GradientTransformation(init_empty_state, update_fn))


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

    return elementwise(GradientTransformation(init_empty_state, update_fn))


_ELEMENTWISE = "__adamx_elementwise__"


def elementwise(tx: GradientTransformation) -> GradientTransformation:
    """Mark ``tx`` as acting element by element, apart from global reductions.

    Such a transformation gives the same result on a tree and on the same
    numbers laid out in one flat buffer, so :func:`adamx.fused` accepts it.
    Per-leaf transformations (trust ratios, factored moments, masks) are not.

    Args:
        tx: a transformation whose ``update`` is a function defined for it.

    Returns:
        ``tx`` itself.

    Example:
        >>> import adamx
        >>> adamx.is_elementwise(adamx.elementwise(adamx.identity()))
        True
    """
    setattr(tx.update, _ELEMENTWISE, True)
    return tx


def is_elementwise(tx: Any) -> bool:
    """Whether ``tx`` was marked with :func:`elementwise`.

    Args:
        tx: a transformation.

    Returns:
        True for adamx's element-wise transformations and chains of them.

    Example:
        >>> import adamx
        >>> adamx.is_elementwise(adamx.adam(1e-3))
        True
        >>> adamx.is_elementwise(adamx.lamb(1e-3))
        False
    """
    return bool(getattr(getattr(tx, "update", None), _ELEMENTWISE, False))


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


def tree_cast(tree: ArrayTree, dtype: Any) -> ArrayTree:
    """Cast every leaf to ``dtype``; ``dtype=None`` leaves the tree alone."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def tree_cast_like(tree: ArrayTree, like: ArrayTree) -> ArrayTree:
    """Cast each leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


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
            f"  {name_a}: {sa}\n  {name_b}: {sb}"
        )


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


def is_concrete(x: Any) -> bool:
    """True when ``x`` is a Python number, a NumPy value or a non-traced array."""
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, (int, float, np.number, np.ndarray, jax.Array))
