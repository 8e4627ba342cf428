"""Values in optimizer states found by name: get, set, get_all_with_path, map_params.

Optax's ``optax.tree.get`` and friends, re-exported by ``adamx.tree``. A
name matches a dict key, a ``NamedTuple`` field or a ``NamedTuple`` class
name, so ``get(state, "count")`` finds Adam's step count and
``get(state, "learning_rate")`` an injected learning rate, in adamx's states
as in Optax's. :func:`map_params` finds the copies of the params' tree in a
state by calling ``init`` on a stand-in for the params
(``adamx.base.ParamsPlaceholder``), which :func:`adamx.masked` passes through
unmasked, as Optax's ``masked`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any

import jax

from adamx.base import ParamsPlaceholder, is_params_placeholder

__all__ = ["NamedTupleKey", "get", "get_all_with_path", "map_params", "set"]

KeyPath = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """A key-path entry for a field of a ``NamedTuple``, naming the tuple's class.

    The paths of :func:`get_all_with_path` (and those the ``filtering``
    functions of :func:`get` and :func:`set` receive) use it where
    ``jax.tree_util`` would use a ``GetAttrKey``, so that a filter can tell
    ``ScaleByAdamState.count`` from another state's ``count``.

    Attributes:
        tuple_name: the class name of the ``NamedTuple``.
        name: the field.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> state = adamx.adam(0.1).init(jnp.zeros(2))
        >>> [str(p[-1]) for p, _ in adamx.tree.get_all_with_path(state, "count")]
        ['ScaleByAdamState.count']

    References:
        Optax's ``optax.tree_utils.NamedTupleKey``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _walk(tree: Any, stop: Callable[[Any], bool]) -> list[tuple[KeyPath, Any]]:
    """(path, node) for each leaf of ``tree`` and each subtree where ``stop`` holds.

    As ``jax.tree_util.tree_leaves_with_path``, in the same order, except that
    a ``NamedTuple``'s fields are keyed by :class:`NamedTupleKey`.
    """
    out: list[tuple[KeyPath, Any]] = []
    for path, node in jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: stop(x) or _is_named_tuple(x)
    ):
        if stop(node) or not _is_named_tuple(node):
            out.append((path, node))
            continue
        for field in node._fields:
            key = NamedTupleKey(type(node).__name__, field)
            out += [((*path, key, *p), x) for p, x in _walk(getattr(node, field), stop)]
    return out


def _has_key(node: Any, keys: tuple[str, ...]) -> bool:
    """Whether ``node`` has one of ``keys`` as a field or dict key, or as its name."""
    if _is_named_tuple(node):
        return type(node).__name__ in keys or any(k in node._fields for k in keys)
    return isinstance(node, dict) and any(k in node for k in keys)


def _children(path: KeyPath, node: Any) -> list[tuple[KeyPath, Any, Any]]:
    """(path, key, child) for each field of a ``NamedTuple`` or entry of a dict."""
    if _is_named_tuple(node):
        name = type(node).__name__
        return [
            ((*path, NamedTupleKey(name, f)), f, getattr(node, f)) for f in node._fields
        ]
    return [((*path, jax.tree_util.DictKey(k)), k, v) for k, v in node.items()]


def _find(tree: Any, key: str) -> list[tuple[KeyPath, Any]]:
    """Every value ``key`` names in ``tree``: the outermost ones first, then the
    ones inside each of them, in tree order."""
    has = functools.partial(_has_key, keys=(key,))
    holders = [(p, n) for p, n in _walk(tree, has) if has(n)]
    found = []
    for path, node in holders:
        if _is_named_tuple(node) and type(node).__name__ == key:
            found.append((path, node))
        elif _is_named_tuple(node):
            field = NamedTupleKey(type(node).__name__, key)
            found.append(((*path, field), getattr(node, key)))
        else:
            found.append(((*path, jax.tree_util.DictKey(key)), node[key]))
    for path, node in holders:
        for child_path, _, child in _children(path, node):
            found += [((*child_path, *p), x) for p, x in _find(child, key)]
    return found


def get_all_with_path(
    tree: Any,
    key: Any,
    filtering: Callable[[KeyPath, Any], bool] | None = None,
) -> list[tuple[KeyPath, Any]]:
    r"""Every value in ``tree`` named ``key``, with its path.

    ``key`` matches a dict key, a ``NamedTuple`` field, or a ``NamedTuple``
    class name (then the tuple itself is the value). A field of a
    ``NamedTuple`` appears in the path as a :class:`NamedTupleKey`;
    ``jax.tree_util.keystr`` prints a path.

    Args:
        tree: the tree to search, e.g. an optimizer state.
        key: the name to look for.
        filtering: ``(path, value) -> bool``, keeping only the matches for
            which it is True.

    Returns:
        A list of ``(path, value)``: the outermost matches in tree order, then
        the matches inside them.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.inject_hyperparams(adamx.adam)(learning_rate=0.1)
        >>> found = adamx.tree.get_all_with_path(tx.init(jnp.zeros(2)), "learning_rate")
        >>> [jax.tree_util.keystr(path) for path, _ in found]
        ["InjectHyperparamsState.hyperparams['learning_rate']"]

    References:
        Optax's ``optax.tree.get_all_with_path``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    found = _find(tree, key)
    if filtering is not None:
        found = [(p, v) for p, v in found if filtering(p, v)]
    return found


def get(
    tree: Any,
    key: Any,
    default: Any | None = None,
    filtering: Callable[[KeyPath, Any], bool] | None = None,
) -> Any:
    r"""The one value in ``tree`` named ``key``, or ``default`` if there is none.

    ``key`` matches as in :func:`get_all_with_path`. On an adamx optimizer's
    state, ``get(state, "count")`` is the step count of its moments and, for
    an :func:`adamx.inject_hyperparams` state, ``get(state, "learning_rate")``
    the injected rate, as for the same Optax optimizers.

    Args:
        tree: the tree to search, e.g. an optimizer state.
        key: the name to look for.
        default: what to return when nothing matches.
        filtering: ``(path, value) -> bool``, to choose among several matches.

    Returns:
        The value, or ``default``.

    Raises:
        KeyError: if several values match; the message lists their paths.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.inject_hyperparams(adamx.adam)(learning_rate=0.1)
        >>> adamx.tree.get(tx.init(jnp.zeros(2)), "learning_rate")
        Array(0.1, dtype=float32)

    References:
        Optax's ``optax.tree.get``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    found = get_all_with_path(tree, key, filtering)
    if len(found) > 1:
        paths = [jax.tree_util.keystr(p) for p, _ in found]
        raise KeyError(
            f"Found multiple values for {key!r}, at {paths}; pass a filtering "
            "function to choose one"
        )
    return found[0][1] if found else default


def set(
    tree: Any,
    filtering: Callable[[KeyPath, Any], bool] | None = None,
    /,
    **kwargs: Any,
) -> Any:
    r"""A copy of ``tree`` with the values named by ``kwargs`` replaced.

    Each keyword names values as in :func:`get_all_with_path` (a dict key, a
    ``NamedTuple`` field, or a ``NamedTuple`` class name, whose tuple is then
    replaced whole); every match that ``filtering`` keeps is replaced, as
    :func:`get_all_with_path` finds them. (Optax 0.2.8's misses a match inside
    a tuple below a node that matched itself: on an injected state,
    ``set(state, count=0)`` leaves the moments' ``count`` there.)

    Args:
        tree: the tree, e.g. an optimizer state.
        filtering: ``(path, value) -> bool``, replacing only the matches for
            which it is True.
        **kwargs: ``name=new_value``.

    Returns:
        The new tree; ``tree`` itself is not modified.

    Raises:
        KeyError: if a name matches nothing (that ``filtering`` keeps).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> state = adamx.adam(0.1).init(jnp.zeros(2))
        >>> adamx.tree.get(adamx.tree.set(state, count=jnp.array(7)), "count")
        Array(7, dtype=int32, weak_type=True)

    References:
        Optax's ``optax.tree.set``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    for key in kwargs:
        if not get_all_with_path(tree, key, filtering):
            kept = " that filtering keeps" if filtering is not None else ""
            raise KeyError(f"Found no values matching {key!r}{kept} in {tree}")
    keep = filtering or (lambda path, value: True)
    names = tuple(kwargs)
    has_any = functools.partial(_has_key, keys=names)

    def replace(path: KeyPath, node: Any) -> Any:
        if not has_any(node):
            return node
        name = type(node).__name__
        if _is_named_tuple(node) and name in kwargs and keep(path, node):
            return kwargs[name]
        new = {}
        for child_path, key, child in _children(path, node):
            if key in kwargs and keep(child_path, child):
                new[key] = kwargs[key]
            else:
                new[key] = rebuild(child_path, child)
        return node._replace(**new) if _is_named_tuple(node) else new

    def rebuild(prefix: KeyPath, subtree: Any) -> Any:
        treedef = jax.tree.structure(subtree, is_leaf=has_any)
        nodes = _walk(subtree, has_any)
        return treedef.unflatten([replace((*prefix, *p), n) for p, n in nodes])

    return rebuild((), tree)


def map_params(
    initable: Any,
    f: Callable[..., Any],
    state: Any,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    r"""Apply ``f`` to every copy of the params' tree inside an optimizer state.

    The moments of an optimizer are trees shaped like the params; this maps
    ``f`` over each of them (say, to turn a tree of param shardings into the
    state's), leaving the counters and other fields alone or passing them to
    ``transform_non_params``. Which fields are param-shaped is found by calling
    ``init`` on a stand-in for the params, so it needs no params.

    Masked optimizers (:func:`adamx.masked`, the ``mask`` of
    :func:`adamx.adamw`) keep :class:`adamx.MaskedNode` where a leaf is
    hidden: ``f`` is not called there, unless ``is_leaf`` makes
    ``MaskedNode`` a leaf, which ``rest`` trees of the params' structure need.

    Args:
        initable: a transformation, or its ``init`` function.
        f: called as ``f(leaf, *rest_leaves)`` for each leaf of each copy.
        state: the state to map over, from ``initable``'s ``init``.
        *rest: trees of the params' structure whose leaves ``f`` also gets.
        transform_non_params: called on every other leaf of the state;
            ``None`` keeps those.
        is_leaf: passed on to ``jax.tree.map`` over each copy.

    Returns:
        The state with ``f`` applied.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> params = {"w": jnp.ones(2), "b": jnp.ones(3)}
        >>> tx = adamx.adamw(0.1, mask={"w": True, "b": False})
        >>> state = tx.init(params)
        >>> shapes = adamx.tree.map_params(
        ...     tx, lambda x: x.shape, state, transform_non_params=lambda _: None
        ... )
        >>> shapes[0].mu
        {'b': (3,), 'w': (2,)}

    References:
        Optax's ``optax.tree.map_params``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    init = initable.init if hasattr(initable, "init") else initable
    shadow = init(_placeholder())

    def visit(stand_in: Any, value: Any) -> Any:
        if is_params_placeholder(stand_in):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        return value if transform_non_params is None else transform_non_params(value)

    return jax.tree.map(visit, shadow, state, is_leaf=is_params_placeholder)


def _placeholder() -> Any:
    """The params' stand-in: Optax's where Optax is loaded, else adamx's.

    Optax's ``masked`` lets only its own stand-in through, :func:`adamx.masked`
    both, so Optax's serves chains that mix the two.
    """
    optax_state_utils = sys.modules.get("optax.tree_utils._state_utils")
    optax_placeholder = getattr(optax_state_utils, "_ParamsPlaceholder", None)
    return ParamsPlaceholder() if optax_placeholder is None else optax_placeholder()
