r"""What a transformation declares about itself, for the framework to act on.

A transformation says what it is once, where its factory builds it, in a
:class:`Traits` carried by its :class:`~adamx.GradientTransformation`:

* ``elementwise``: ``True`` when it acts element by element (reductions over
  the whole tree, such as a global norm, allowed), so that it computes the same
  numbers on a tree and on the same numbers laid out in one flat buffer
  (:class:`~adamx.FlatParams`). ``False`` marks a per-leaf transformation
  (per-leaf norms, factored or block-quantized moments, masks), which refuses a
  flat layout when its state is built. ``None``, the default and what Optax's
  transformations have, declares nothing.
* ``stages``: what it computes, as a kernel sees it: one :class:`Stage` per
  step of the computation, with its factory's name, its arguments and where its
  state sits. :func:`adamx.step` matches an optimizer's stages against its
  table of in-place kernels, so that ``adam(...)`` and the same chain built by
  hand take the same kernel. ``None`` means opaque: no kernel takes it.
* ``layout``: how its state is laid out over devices, a function
  ``(state, params) -> shardings`` (:func:`adamx.sharded` declares one;
  :func:`adamx.sharding.state_shardings` reads it).

Combinators derive their traits from their parts (:func:`chained`): a chain is
element-wise when every part is, and its stages are its parts' stages, each
found under the part's index in the chain's state. Nothing reads a chain's
structure by position.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["Stage", "Traits", "chained", "replace_at", "state_at", "traits_of"]

#: A step into a state: a tuple index, or a dict key.
PathEntry = Hashable


class Stage(NamedTuple):
    """One step of an optimizer's computation, as a kernel sees it.

    Example:
        >>> import adamx
        >>> [s.name for s in adamx.traits_of(adamx.adam(1e-3)).stages]
        ['scale_by_adam', 'scale_by_learning_rate']
        >>> adamx.traits_of(adamx.adam(1e-3)).stages[1].path
        (1,)
    """

    name: str  # the factory that built it, e.g. "scale_by_adam"
    args: Mapping[str, Any]  # the arguments that define what it computes
    path: tuple[PathEntry, ...] = ()  # where its state sits in the whole state


class Traits(NamedTuple):
    """What a transformation declares about itself (see the module docstring).

    Example:
        >>> import adamx
        >>> adamx.traits_of(adamx.adam(1e-3)).elementwise
        True
        >>> adamx.traits_of(adamx.lamb(1e-3)).elementwise
        False
    """

    elementwise: bool | None = None  # None: not declared
    stages: tuple[Stage, ...] | None = None  # None: opaque to kernels
    layout: Callable[[Any, Any], Any] | None = None  # (state, params) -> shardings


def traits_of(tx: Any) -> Traits:
    """The traits ``tx`` declares; nothing declared for foreign transformations.

    Args:
        tx: a transformation, adamx's or another library's.

    Returns:
        Its :class:`Traits`; ``Traits()`` where it declares none.

    Example:
        >>> import optax
        >>> import adamx
        >>> adamx.traits_of(optax.adam(1e-3))
        Traits(elementwise=None, stages=None, layout=None)
    """
    traits = getattr(tx, "traits", None)
    return traits if isinstance(traits, Traits) else Traits()


def chained(parts: Sequence[tuple[PathEntry, Traits]]) -> Traits:
    """The traits of a combination whose state holds each part's under its key.

    Element-wise if every part is, per-leaf if any part is; the stages are the
    parts' in order, each path prefixed with its part's key, or ``None`` if any
    part is opaque.

    Args:
        parts: ``(key, traits)`` per part, in the order they run.

    Returns:
        The combination's :class:`Traits` (with no layout).

    Example:
        >>> from adamx.traits import Stage, Traits, chained
        >>> t = chained([(0, Traits(True, (Stage("a", {}),))), (1, Traits(True, ()))])
        >>> t.elementwise, t.stages[0].path
        (True, (0,))
    """
    flags = [t.elementwise for _, t in parts]
    if False in flags:
        elementwise: bool | None = False
    else:
        elementwise = True if all(f is True for f in flags) else None
    stages: tuple[Stage, ...] | None = None
    if all(t.stages is not None for _, t in parts):
        stages = tuple(
            s._replace(path=(key, *s.path)) for key, t in parts for s in t.stages or ()
        )
    return Traits(elementwise=elementwise, stages=stages)


def state_at(state: Any, path: tuple[PathEntry, ...]) -> Any:
    """The part of ``state`` at ``path`` (a :class:`Stage`'s path).

    Example:
        >>> from adamx.traits import state_at
        >>> state_at(({"a": 1}, 2), (0, "a"))
        1
    """
    for key in path:
        state = state[key]
    return state


def replace_at(state: Any, path: tuple[PathEntry, ...], value: Any) -> Any:
    """``state`` with the part at ``path`` replaced by ``value``.

    Tuples (``NamedTuple`` states included) and dicts along the path are
    rebuilt; ``state`` itself is not modified.

    Example:
        >>> from adamx.traits import replace_at
        >>> replace_at(({"a": 1}, 2), (0, "a"), 5)
        ({'a': 5}, 2)
    """
    if not path:
        return value
    key, rest = path[0], path[1:]
    new = replace_at(state[key], rest, value)
    if isinstance(state, dict):
        return {**state, key: new}
    items = list(state)
    items[int(key)] = new  # type: ignore[call-overload]
    if hasattr(state, "_fields"):
        return type(state)(*items)
    return tuple(items)
