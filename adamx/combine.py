"""Combinators: build one transformation out of several.

``chain`` runs transformations one after the other; ``named_chain`` does the
same with a name per stage; ``partition`` gives each group of parameters its
own transformation; ``masked`` applies a transformation to a subset of leaves.
``stateless`` and ``stateless_with_tree_map`` make a transformation of a
function; ``with_extra_args_support`` lets one ignore extra arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from adamx.base import (
    PER_LEAF,
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    init_empty_state,
    is_params_placeholder,
)
from adamx.traits import chained, traits_of

__all__ = [
    "MaskOrFn",
    "MaskedNode",
    "MaskedState",
    "MultiTransformState",
    "PartitionState",
    "chain",
    "masked",
    "multi_transform",
    "named_chain",
    "partition",
    "stateless",
    "stateless_with_tree_map",
    "with_extra_args_support",
]


def check_transformation(name: str, tx: Any) -> None:
    """Raise ``TypeError`` unless ``tx`` has callable ``init`` and ``update``."""
    if not (
        callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))
    ):
        raise TypeError(
            f"{name} must be a GradientTransformation (a pair of init and update "
            f"functions), got {tx!r} of type {type(tx).__name__}"
        )


def _takes_extra_args(update: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def call_update(
    tx: Any,
    updates: Updates,
    state: OptState,
    params: Params | None,
    extra_args: Mapping[str, Any],
) -> tuple[Updates, OptState]:
    """Call ``tx.update``, passing ``extra_args`` only to updates that take them.

    Transformations written for plain Optax accept no keyword arguments beyond
    ``params``; they get none, so they can sit in a chain next to ones that do.
    """
    if extra_args and _takes_extra_args(tx.update):
        return tx.update(updates, state, params, **extra_args)
    return tx.update(updates, state, params)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    r"""Apply transformations one after the other.

    .. math:: (u_t, S_t) = f_n \circ \dots \circ f_1 (g_t, S_{t-1})

    The state is a tuple with one entry per transformation, as in Optax, so
    ``state[0]`` is the first stage's state. Optax transformations may appear in
    the chain.

    Args:
        *transforms: the transformations, in the order they are applied.

    Returns:
        A :class:`GradientTransformation` whose state is a tuple of the inner
        states.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.chain(adamx.clip(1.0), adamx.scale(-0.5))
        >>> tx.update(jnp.array([4.0, -0.2]), tx.init(jnp.zeros(2)))[0]
        Array([-0.5,  0.1], dtype=float32)
    """
    for i, t in enumerate(transforms):
        check_transformation(f"chain argument {i}", t)

    def init_fn(params):
        return tuple(t.init(params) for t in transforms)

    def update_fn(updates, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transformations got a state with "
                f"{len(state)} entries; was the state built by this chain's init?"
            )
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = call_update(t, updates, s, params, extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    # Its traits are its parts', each stage found under the part's index.
    traits = chained([(i, traits_of(t)) for i, t in enumerate(transforms)])
    return GradientTransformationExtraArgs(init_fn, update_fn, traits, derived=True)


def named_chain(
    *transforms: tuple[str, GradientTransformation],
) -> GradientTransformation:
    r"""Apply named transformations one after the other.

    .. math:: (u_t, S_t) = f_n \circ \dots \circ f_1 (g_t, S_{t-1})

    Like :func:`chain`, but the state is a dict from each stage's name to its
    state, which reads better in logs and checkpoints.

    Args:
        *transforms: ``(name, transformation)`` pairs, in the order applied.

    Returns:
        A :class:`GradientTransformation` whose state is a dict of inner states.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.named_chain(("clip", adamx.clip(1.0)), ("lr", adamx.scale(-0.1)))
        >>> sorted(tx.init(jnp.zeros(2)))
        ['clip', 'lr']
    """
    names = []
    for i, item in enumerate(transforms):
        if not (
            isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
        ):
            raise TypeError(
                f"named_chain argument {i} must be a (name, transformation) pair, "
                f"got {item!r}"
            )
        check_transformation(f"named_chain argument {i} ({item[0]!r})", item[1])
        names.append(item[0])
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"named_chain names must be unique, got duplicates {dupes}")

    def init_fn(params):
        return {name: t.init(params) for name, t in transforms}

    def update_fn(updates, state, params=None, **extra_args):
        new_state = {}
        for name, t in transforms:
            updates, new_state[name] = call_update(
                t, updates, state[name], params, extra_args
            )
        return updates, new_state

    traits = chained([(name, traits_of(t)) for name, t in transforms])
    return GradientTransformationExtraArgs(init_fn, update_fn, traits, derived=True)


class MaskedNode(NamedTuple):
    """Stands in for a leaf that a mask hides from the inner transformation.

    It is an empty pytree node, so the inner transformation keeps no state for
    that leaf.
    """


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner transformation's state."""

    inner_state: Any  # the inner state, MaskedNode where the mask is False


def _check_mask_leaf(m: Any) -> bool:
    if isinstance(m, jax.core.Tracer):
        raise TypeError("mask leaves must be Python bools, not traced values")
    dtype = getattr(m, "dtype", None)
    is_bool_scalar = (
        getattr(m, "shape", None) == () and np.dtype(dtype or object) == bool
    )
    if isinstance(m, (bool, np.bool_)) or is_bool_scalar:
        return bool(m)
    raise TypeError(f"mask leaves must be bools, got {m!r} of type {type(m).__name__}")


def _leaf_mask(mask: Any, tree: Any) -> list[bool]:
    """One bool per leaf of ``tree``, broadcasting a prefix mask over subtrees."""
    try:
        full = jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: _check_mask_leaf(m), sub),
            mask,
            tree,
        )
    except ValueError as e:
        raise ValueError(
            "The mask's tree structure does not match the params (the mask must be "
            "the params' tree or a prefix of it).\n"
            f"  mask:   {jax.tree.structure(mask)}\n"
            f"  params: {jax.tree.structure(tree)}\n  {e}"
        ) from e
    return jax.tree.leaves(full)


def _hide(tree: Any, leaf_mask: list[bool]) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(
        [x if keep else MaskedNode() for x, keep in zip(leaves, leaf_mask, strict=True)]
    )


def masked(
    inner: GradientTransformation,
    mask: Any | Callable[[Params], Any],
) -> GradientTransformation:
    r"""Apply ``inner`` to the leaves where ``mask`` is True; pass the rest through.

    .. math:: u_t^{(i)} = \begin{cases} f(g_t)^{(i)} & m^{(i)} \\ g_t^{(i)} &
       \text{otherwise} \end{cases}

    The inner transformation sees :class:`MaskedNode` in place of hidden leaves
    and keeps no state for them. Masks nest: a ``masked`` inside a ``masked``
    sees only the leaves the outer one let through.

    Args:
        inner: the transformation to apply to the selected leaves.
        mask: a tree of bools with the structure of the params (or a prefix of
            it, a bool then covering a whole subtree), or a function of the
            params (the updates, in ``update``) that returns one. As in
            Optax, ``mask`` is a function when all its leaves are callable: a
            callable pytree of bools (an Equinox module) is a tree.

    Returns:
        A :class:`GradientTransformation` with state :class:`MaskedState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.masked(adamx.scale(0.0), {"w": True, "b": False})
        >>> g = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> tx.update(g, tx.init(g))[0]
        {'b': Array([1., 1.], dtype=float32), 'w': Array([0., 0.], dtype=float32)}
    """
    check_transformation("masked inner", inner)
    # A function when its leaves are all callable, as Optax decides: a
    # callable pytree of booleans (an Equinox module) is a mask tree.
    leaves = jax.tree.leaves(mask)
    is_fn = bool(leaves) and all(callable(leaf) for leaf in leaves)
    if not is_fn:
        for leaf in leaves:
            _check_mask_leaf(leaf)

    def resolve(tree):
        return mask(tree) if is_fn else mask

    def init_fn(params):
        if is_params_placeholder(params):
            # tree.map_params (adamx's or Optax's) asks where the state holds
            # copies of the params: no mask applies to the stand-in, it goes
            # to the inner init whole, as in Optax's masked.
            return MaskedState(inner_state=inner.init(params))
        leaf_mask = _leaf_mask(resolve(params), params)
        return MaskedState(inner_state=inner.init(_hide(params, leaf_mask)))

    def update_fn(updates, state, params=None, **extra_args):
        leaf_mask = _leaf_mask(resolve(updates), updates)
        hidden_params = None if params is None else _hide(params, leaf_mask)
        new_hidden, inner_state = call_update(
            inner,
            _hide(updates, leaf_mask),
            state.inner_state,
            hidden_params,
            extra_args,
        )
        leaves, treedef = jax.tree.flatten(updates)
        new_leaves = iter(jax.tree.leaves(new_hidden))
        merged = [
            next(new_leaves) if keep else u
            for u, keep in zip(leaves, leaf_mask, strict=True)
        ]
        return treedef.unflatten(merged), MaskedState(inner_state=inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn, PER_LEAF)


class PartitionState(NamedTuple):
    """State of :func:`partition`: one :class:`MaskedState` per label."""

    inner_states: dict[Hashable, MaskedState]


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
) -> GradientTransformation:
    r"""Give each group of parameters its own transformation (param groups).

    .. math:: u_t^{(i)} = f_{\ell(i)}(g_t)^{(i)}

    where :math:`\ell(i)` is the label of leaf :math:`i`. This is the
    counterpart of PyTorch's parameter groups.

    Args:
        transforms: a mapping from label to transformation.
        param_labels: a tree of labels with the params' structure (or a prefix
            of it), or a function of the params that returns one.

    Returns:
        A :class:`GradientTransformation` with state :class:`PartitionState`.

    Raises:
        ValueError: if a label has no transformation (at construction when the
            labels are a tree, at ``init`` when they are a function).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.partition(
        ...     {"train": adamx.sgd(0.1), "frozen": adamx.set_to_zero()},
        ...     {"w": "train", "b": "frozen"},
        ... )
        >>> g = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> tx.update(g, tx.init(g))[0]
        {'b': Array([0., 0.], dtype=float32), 'w': Array([-0.1, -0.1], dtype=float32)}
    """
    if not isinstance(transforms, Mapping):
        raise TypeError(
            "transforms must be a mapping from label to transformation, "
            f"got {transforms!r}"
        )
    for label, t in transforms.items():
        check_transformation(f"transforms[{label!r}]", t)

    def check_labels(labels):
        missing = set(jax.tree.leaves(labels)) - set(transforms)
        if missing:
            raise ValueError(
                f"param_labels uses labels {sorted(map(repr, missing))} that have no "
                f"transformation; transforms has {sorted(map(repr, transforms))}"
            )

    if not callable(param_labels):
        check_labels(param_labels)

    def masks(labels):
        return {
            label: jax.tree.map(lambda lab, label=label: lab == label, labels)
            for label in transforms
        }

    def init_fn(params):
        labels = param_labels(params) if callable(param_labels) else param_labels
        check_labels(labels)
        return PartitionState(
            {
                label: masked(transforms[label], m).init(params)
                for label, m in masks(labels).items()
            }
        )

    def update_fn(updates, state, params=None, **extra_args):
        labels = param_labels(updates) if callable(param_labels) else param_labels
        new_states = {}
        for label, m in masks(labels).items():
            updates, new_states[label] = masked(transforms[label], m).update(
                updates, state.inner_states[label], params, **extra_args
            )
        return updates, PartitionState(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn, PER_LEAF)


# Optax's older names for partition and its state, and for a mask argument.
multi_transform = partition
MultiTransformState = PartitionState
MaskOrFn = Any | Callable[[Params], Any] | None


# ------------------------------------------------------------------ from functions


def _check_function(f: Any) -> None:
    if not callable(f):
        raise TypeError(
            f"f must be a function of the updates and the params, got {f!r} of "
            f"type {type(f).__name__}"
        )


def stateless(
    f: Callable[[Updates, Params | None], Updates],
) -> GradientTransformation:
    r"""A transformation without state, made of a function of updates and params.

    .. math:: u_t = f(g_t, \theta_{t-1})

    Args:
        f: ``f(updates, params) -> updates``, on whole trees; ``params`` is
            ``None`` when ``update`` is called without them.

    Returns:
        A :class:`GradientTransformation` whose state is
        :class:`~adamx.EmptyState`. Extra keyword arguments to ``update`` are
        ignored.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> decay = lambda u, p: jax.tree.map(lambda g, w: g + 0.1 * w, u, p)
        >>> tx = adamx.stateless(decay)
        >>> tx.update(jnp.array([1.0]), tx.init(None), jnp.array([2.0]))[0]
        Array([1.2], dtype=float32)
    """
    _check_function(f)

    def update_fn(updates, state, params=None, **extra_args):
        del state, extra_args
        return f(updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update_fn)


def stateless_with_tree_map(
    f: Callable[[jax.Array, jax.Array | None], jax.Array],
) -> GradientTransformation:
    r"""A transformation without state, made of a function of one leaf.

    .. math:: u_t^{(i)} = f(g_t^{(i)}, \theta_{t-1}^{(i)})

    Like :func:`stateless`, with the map over the leaves done for you.

    Args:
        f: ``f(update, param) -> update`` for one array; ``param`` is ``None``
            when ``update`` is called without params.

    Returns:
        A :class:`GradientTransformation` whose state is
        :class:`~adamx.EmptyState`. Extra keyword arguments to ``update`` are
        ignored.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.stateless_with_tree_map(lambda g, p: 2.0 * g)
        >>> tx.update({"w": jnp.array([1.0])}, tx.init(None))[0]
        {'w': Array([2.], dtype=float32)}
    """
    _check_function(f)

    def update_fn(updates, state, params=None, **extra_args):
        del state, extra_args
        if params is None:
            return jax.tree.map(lambda u: f(u, None), updates), EmptyState()
        return jax.tree.map(f, updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update_fn)


def with_extra_args_support(
    tx: GradientTransformation,
) -> GradientTransformationExtraArgs:
    r"""``tx``, with an ``update`` that accepts extra keyword arguments.

    .. math:: (u_t, S_t) = f(g_t, S_{t-1}, \theta_{t-1}), \quad
       \text{whatever else } f \text{ is given}

    A :class:`GradientTransformationExtraArgs` is returned as it is; another
    transformation whose ``update`` takes ``**extra_args`` keeps its update,
    which gets them; any other gets an ``update`` that drops them.

    Args:
        tx: a transformation, adamx's or another library's.

    Returns:
        A :class:`GradientTransformationExtraArgs` with ``tx``'s ``init``,
        state and traits.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> plain = adamx.GradientTransformation(
        ...     lambda p: adamx.EmptyState(), lambda u, s, params=None: (u, s)
        ... )
        >>> tx = adamx.with_extra_args_support(plain)
        >>> tx.update(jnp.ones(1), tx.init(None), loss=jnp.array(3.0))[0]
        Array([1.], dtype=float32)
    """
    check_transformation("tx", tx)
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx
    inner = tx
    update = inner.update
    if not _takes_extra_args(update):

        def update(updates, state, params=None, **extra_args):
            del extra_args
            return inner.update(updates, state, params)

    return GradientTransformationExtraArgs(
        inner.init, update, traits_of(inner), derived=True
    )
