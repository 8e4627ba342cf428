"""Tree utilities: arithmetic, reductions, casts, random trees and state lookup.

The functions of Optax's ``optax.tree`` under the same names, arguments and
defaults: leaf-by-leaf arithmetic (:func:`add`, :func:`scale`, :func:`where`,
...), reductions to a scalar (:func:`sum`, :func:`norm`, :func:`vdot`, ...),
the moment updates of adaptive optimizers (:func:`update_moment`, ...,
from ``adamx.numerics``), casts
(:func:`cast`, :func:`dtype`), random trees (:func:`random_like`), and the
lookup of values in an optimizer state by name (:func:`get`, :func:`set`,
:func:`map_params`), which works on adamx's states (masked and injected ones
included) as on Optax's.

Names such as ``sum``, ``max`` and ``set`` are meant to be called as
``adamx.tree.sum``: importing them unqualified would hide Python's builtins.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamx.base import ArrayTree, explicit_sharding, tree_zeros_like
from adamx.lookup import NamedTupleKey, get, get_all_with_path, map_params, set
from adamx.moments import bias_correction
from adamx.numerics import (
    update_infinity_moment,
    update_moment,
    update_moment_per_elem_norm,
)
from adamx.transforms import global_norm

__all__ = [
    "NamedTupleKey",
    "add",
    "add_scale",
    "allclose",
    "batch_shape",
    "bias_correction",
    "cast",
    "cast_like",
    "clip",
    "conj",
    "div",
    "dtype",
    "full_like",
    "get",
    "get_all_with_path",
    "map_params",
    "max",
    "min",
    "mul",
    "norm",
    "ones_like",
    "random_like",
    "real",
    "scale",
    "set",
    "size",
    "split_key_like",
    "sub",
    "sum",
    "unwrap_random_key_data",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "vdot",
    "where",
    "zeros_like",
]


def _is_none(x: Any) -> bool:
    return x is None


# ---------------------------------------------------------------- arithmetic


def add(tree_x: Any, tree_y: Any, *other_trees: Any) -> Any:
    r"""The leaf-by-leaf sum of two or more trees.

    .. math:: z^{(i)} = x^{(i)} + y^{(i)} + \dots

    Args:
        tree_x: a tree.
        tree_y: a tree of the same structure.
        *other_trees: more trees of that structure to add.

    Returns:
        The sum, with the structure of ``tree_x``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.add({"a": jnp.ones(2)}, {"a": jnp.ones(2)}, {"a": jnp.ones(2)})
        {'a': Array([3., 3.], dtype=float32)}

    References:
        Optax's ``optax.tree.add``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda *xs: builtins.sum(xs), tree_x, tree_y, *other_trees)


def sub(tree_x: Any, tree_y: Any) -> Any:
    r"""The leaf-by-leaf difference of two trees, :math:`x^{(i)} - y^{(i)}`.

    Args:
        tree_x: a tree.
        tree_y: a tree of the same structure.

    Returns:
        ``tree_x - tree_y``, leaf by leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.sub({"a": jnp.ones(2)}, {"a": jnp.full(2, 3.0)})
        {'a': Array([-2., -2.], dtype=float32)}

    References:
        Optax's ``optax.tree.sub``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(operator.sub, tree_x, tree_y)


def mul(tree_x: Any, tree_y: Any) -> Any:
    r"""The leaf-by-leaf product of two trees, :math:`x^{(i)} y^{(i)}`.

    Args:
        tree_x: a tree.
        tree_y: a tree of the same structure.

    Returns:
        ``tree_x * tree_y``, leaf by leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.mul({"a": jnp.array([2.0, 4.0])}, {"a": jnp.array([3.0, 0.5])})
        {'a': Array([6., 2.], dtype=float32)}

    References:
        Optax's ``optax.tree.mul``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(operator.mul, tree_x, tree_y)


def div(tree_x: Any, tree_y: Any) -> Any:
    r"""The leaf-by-leaf quotient of two trees, :math:`x^{(i)} / y^{(i)}`.

    Args:
        tree_x: a tree.
        tree_y: a tree of the same structure.

    Returns:
        ``tree_x / tree_y``, leaf by leaf (true division).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.div({"a": jnp.array([3.0, 1.0])}, {"a": jnp.array([2.0, 4.0])})
        {'a': Array([1.5 , 0.25], dtype=float32)}

    References:
        Optax's ``optax.tree.div``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(operator.truediv, tree_x, tree_y)


def scale(scalar: jax.typing.ArrayLike, tree: Any) -> Any:
    r"""Every leaf multiplied by one scalar, :math:`c\, x^{(i)}`.

    Args:
        scalar: :math:`c`.
        tree: a tree.

    Returns:
        ``scalar * tree``, leaf by leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.scale(0.5, {"a": jnp.ones(2)})
        {'a': Array([0.5, 0.5], dtype=float32)}

    References:
        Optax's ``optax.tree.scale``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda x: scalar * x, tree)


def add_scale(tree_x: Any, scalar: jax.typing.ArrayLike, tree_y: Any) -> Any:
    r"""One tree plus a scalar times another, :math:`x^{(i)} + c\, y^{(i)}`.

    ``None`` leaves of ``tree_x`` stay ``None``.

    Args:
        tree_x: :math:`x`, a tree.
        scalar: :math:`c`.
        tree_y: :math:`y`, a tree of the same structure.

    Returns:
        ``tree_x + scalar * tree_y``, leaf by leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.add_scale({"a": jnp.ones(2)}, 2.0, {"a": jnp.ones(2)})
        {'a': Array([3., 3.], dtype=float32)}

    References:
        Optax's ``optax.tree.add_scale``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    c = jnp.asarray(scalar)
    return jax.tree.map(
        lambda x, y: None if x is None else x + c * y, tree_x, tree_y, is_leaf=_is_none
    )


def where(condition: Any, tree_x: Any, tree_y: Any) -> Any:
    r"""``tree_x`` where ``condition`` holds, else ``tree_y``, leaf by leaf.

    .. math:: z^{(i)} = \begin{cases} x^{(i)} & c \\ y^{(i)} & \text{otherwise}
       \end{cases}

    Args:
        condition: a boolean (array) broadcast against every leaf.
        tree_x: the tree chosen where ``condition`` is True.
        tree_y: the tree chosen elsewhere, of the same structure.

    Returns:
        A tree of the structure of ``tree_x``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.where(jnp.array(False), {"a": jnp.ones(2)}, {"a": jnp.zeros(2)})
        {'a': Array([0., 0.], dtype=float32)}

    References:
        Optax's ``optax.tree.where``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)


def conj(tree: Any) -> Any:
    r"""The complex conjugate of every leaf, :math:`\bar x^{(i)}`.

    Args:
        tree: a tree.

    Returns:
        A tree of the same structure (real leaves unchanged).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.conj({"a": jnp.array([1 + 2j])})
        {'a': Array([1.-2.j], dtype=complex64)}

    References:
        Optax's ``optax.tree.conj``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(jnp.conj, tree)


def real(tree: Any) -> Any:
    r"""The real part of every leaf, :math:`\operatorname{Re} x^{(i)}`.

    Args:
        tree: a tree.

    Returns:
        A tree of the same structure, complex leaves replaced by their real part.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.real({"a": jnp.array([1 + 2j])})
        {'a': Array([1.], dtype=float32)}

    References:
        Optax's ``optax.tree.real``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(jnp.real, tree)


def clip(
    tree: Any,
    min_value: jax.typing.ArrayLike | None = None,
    max_value: jax.typing.ArrayLike | None = None,
) -> Any:
    r"""Every leaf clipped to :math:`[\min, \max]`.

    .. math:: z^{(i)} = \min(\max(x^{(i)}, a), b)

    Args:
        tree: a tree.
        min_value: :math:`a`; ``None`` leaves values unbounded below.
        max_value: :math:`b`; ``None`` leaves values unbounded above.

    Returns:
        A tree of the same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.clip({"a": jnp.array([-2.0, 0.5, 2.0])}, -1.0, 1.0)
        {'a': Array([-1. ,  0.5,  1. ], dtype=float32)}

    References:
        Optax's ``optax.tree.clip``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda x: jnp.clip(x, min_value, max_value), tree)


# ---------------------------------------------------------------- reductions


def _leaf_vdot(a: Any, b: Any) -> jax.Array:
    """:math:`\\sum_j \\bar a_j b_j` of two leaves, at the highest matmul precision."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"vdot needs leaves of one shape, got {a.shape} and {b.shape}")
    sharding = explicit_sharding(a)
    if sharding is None:
        return jnp.vdot(a, b, precision=jax.lax.Precision.HIGHEST)
    # jnp.vdot ravels first, which a leaf split over explicit mesh axes cannot
    # do without moving its data: contract every axis in place instead, the
    # scalar replicated.
    if jnp.iscomplexobj(a):
        a = jnp.conj(a)
    return jnp.tensordot(
        a,
        b,
        a.ndim,
        precision=jax.lax.Precision.HIGHEST,
        out_sharding=jax.NamedSharding(sharding.mesh, jax.P()),
    )


def vdot(tree_x: Any, tree_y: Any) -> jax.typing.ArrayLike:
    r"""The inner product of two trees, the first conjugated.

    .. math:: \langle x, y \rangle = \sum_i \sum_j \bar x^{(i)}_j\, y^{(i)}_j

    Each leaf's product runs at ``jax.lax.Precision.HIGHEST``.

    Args:
        tree_x: a tree.
        tree_y: a tree of the same structure and leaf shapes.

    Returns:
        A scalar (``0`` for trees without leaves).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.vdot({"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([3.0, 4.0])})
        Array(11., dtype=float32)

    References:
        Optax's ``optax.tree.vdot``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    products = jax.tree.map(_leaf_vdot, tree_x, tree_y)
    return jax.tree.reduce(operator.add, products, initializer=0)


def sum(tree: Any, associative_reduction: bool = False) -> jax.typing.ArrayLike:
    r"""The sum of every element of every leaf, :math:`\sum_i \sum_j x^{(i)}_j`.

    Args:
        tree: a tree.
        associative_reduction: add the leaves' sums as a balanced tree
            (``jax.tree.reduce_associative``), which compiles faster for very
            many leaves but may round differently; by default they are added
            in the tree's order.

    Returns:
        A scalar (``0`` for a tree without leaves).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.sum({"a": jnp.ones(2), "b": jnp.ones((2, 2))})
        Array(6., dtype=float32)

    References:
        Optax's ``optax.tree.sum``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    sums = jax.tree.map(jnp.sum, tree)
    if associative_reduction:
        return jax.tree.reduce_associative(operator.add, sums, identity=0)
    return jax.tree.reduce(operator.add, sums, initializer=0)


def _extremum(tree: Any, leaf_fn: Callable, pair_fn: Callable, start: float) -> Any:
    """``pair_fn``-reduction of ``leaf_fn`` of every non-empty leaf, from ``start``."""
    per_leaf = jax.tree.map(lambda x: None if jnp.size(x) == 0 else leaf_fn(x), tree)
    return jax.tree.reduce(pair_fn, per_leaf, initializer=start)


def max(tree: Any) -> jax.typing.ArrayLike:
    r"""The largest element of all leaves, :math:`\max_{i,j} x^{(i)}_j`.

    Empty leaves are skipped; a tree without elements gives ``-inf``.

    Args:
        tree: a tree of real arrays.

    Returns:
        A scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.max({"a": jnp.array([1.0, 5.0]), "b": jnp.array([3.0])})
        Array(5., dtype=float32)

    References:
        Optax's ``optax.tree.max``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return _extremum(tree, jnp.max, jnp.maximum, -float("inf"))


def min(tree: Any) -> jax.typing.ArrayLike:
    r"""The smallest element of all leaves, :math:`\min_{i,j} x^{(i)}_j`.

    Empty leaves are skipped; a tree without elements gives ``inf``.

    Args:
        tree: a tree of real arrays.

    Returns:
        A scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.min({"a": jnp.array([1.0, 5.0]), "b": jnp.array([3.0])})
        Array(1., dtype=float32)

    References:
        Optax's ``optax.tree.min``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return _extremum(tree, jnp.min, jnp.minimum, float("inf"))


def size(tree: Any) -> int:
    r"""The number of elements of all leaves together, :math:`\sum_i |x^{(i)}|`.

    Args:
        tree: a tree.

    Returns:
        A Python int.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.size({"a": jnp.ones((2, 3)), "b": jnp.ones(4), "c": None})
        10

    References:
        Optax's ``optax.tree.size``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return builtins.sum(jnp.size(x) for x in jax.tree.leaves(tree))


def norm(
    tree: Any,
    ord: int | str | float | None = None,  # Optax's name, as numpy's
    squared: bool = False,
) -> jax.Array:
    r"""The vector norm of all leaves taken together.

    .. math:: \|x\|_2 = \Big(\sum_i \sum_j |x^{(i)}_j|^2\Big)^{1/2}, \quad
       \|x\|_1 = \sum_i \sum_j |x^{(i)}_j|, \quad
       \|x\|_\infty = \max_{i,j} |x^{(i)}_j|

    The 2-norm is :func:`adamx.global_norm`, so the two agree to the bit.
    Unlike Optax, which sums in the leaves' dtype, it sums in at least
    float32: for bfloat16 or float16 leaves the result is a float32 (more
    exact); for float32 and float64 leaves the numbers are Optax's.

    Args:
        tree: a tree of arrays (complex ones count :math:`|x|`).
        ord: ``None`` or ``2``, ``1``, or ``inf`` (also ``"inf"``,
            ``"infinity"``).
        squared: return the square of the norm.

    Returns:
        A scalar array.

    Raises:
        ValueError: for another ``ord``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tree = {"a": jnp.array([3.0]), "b": jnp.array([-4.0])}
        >>> adamx.tree.norm(tree), adamx.tree.norm(tree, ord=1)
        (Array(5., dtype=float32), Array(7., dtype=float32))

    References:
        Optax's ``optax.tree.norm``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    if ord is None or ord == 2:
        value = global_norm(tree)
    elif ord == 1:
        value = jnp.asarray(sum(jax.tree.map(jnp.abs, tree)))
    elif ord == jnp.inf or ord in ("inf", "infinity"):
        value = jnp.asarray(max(jax.tree.map(jnp.abs, tree)))
    else:
        raise ValueError(
            f"ord must be None, 1, 2, inf, 'inf' or 'infinity', got {ord!r}"
        )
    return jnp.square(value) if squared else value


def allclose(
    a: Any,
    b: Any,
    rtol: jax.typing.ArrayLike = 1e-05,
    atol: jax.typing.ArrayLike = 1e-08,
    equal_nan: bool = False,
) -> Any:
    r"""Whether every leaf of ``a`` is close to its twin in ``b``.

    .. math:: |a^{(i)}_j - b^{(i)}_j| \le \text{atol} + \text{rtol}\,|b^{(i)}_j|
       \quad \forall i, j

    As ``jax.numpy.allclose``, leaf by leaf.

    Args:
        a: a tree.
        b: a tree of the same structure.
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        equal_nan: count two NaNs as equal.

    Returns:
        A boolean scalar array (``True`` for trees without leaves).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> bool(adamx.tree.allclose({"a": jnp.ones(2)}, {"a": jnp.ones(2) + 1e-9}))
        True

    References:
        Optax's ``optax.tree.allclose``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    close = jax.tree.map(
        lambda x, y: jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan),
        a,
        b,
    )
    return functools.reduce(operator.and_, jax.tree.leaves(close), True)


# ---------------------------------------------------------------- new trees


def batch_shape(tree: Any, shape: tuple[int, ...] = ()) -> Any:
    r"""Every leaf broadcast to leading batch dimensions ``shape``.

    .. math:: z^{(i)} \in \mathbb{R}^{\text{shape} \times \text{shape}(x^{(i)})},
       \quad z^{(i)}_{b} = x^{(i)}

    Args:
        tree: a tree.
        shape: the batch dimensions to put in front of each leaf's shape.

    Returns:
        A tree of the same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.batch_shape({"a": jnp.ones(2)}, (3,))["a"].shape
        (3, 2)

    References:
        Optax's ``optax.tree.batch_shape``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*shape, *jnp.shape(x))), tree)


#: Zeros shaped like each leaf: :func:`adamx.tree_zeros_like` under Optax's
#: name ``optax.tree.zeros_like``.
zeros_like = tree_zeros_like


def ones_like(tree: Any, dtype: jax.typing.DTypeLike | None = None) -> Any:
    r"""Ones shaped like each leaf, :math:`z^{(i)} = 1`.

    Args:
        tree: a tree.
        dtype: the dtype of the ones; ``None`` keeps each leaf's.

    Returns:
        A tree of the same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.ones_like({"a": jnp.zeros(2)}, jnp.int32)
        {'a': Array([1, 1], dtype=int32)}

    References:
        Optax's ``optax.tree.ones_like``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda x: jnp.ones_like(x, dtype=dtype), tree)


def full_like(
    tree: Any,
    fill_value: jax.typing.ArrayLike,
    dtype: jax.typing.DTypeLike | None = None,
) -> Any:
    r"""``fill_value`` shaped like each leaf, :math:`z^{(i)} = v`.

    Args:
        tree: a tree.
        fill_value: :math:`v`.
        dtype: the dtype of the result; ``None`` keeps each leaf's.

    Returns:
        A tree of the same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.full_like({"a": jnp.zeros(2)}, 7.0)
        {'a': Array([7., 7.], dtype=float32)}

    References:
        Optax's ``optax.tree.full_like``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(lambda x: jnp.full_like(x, fill_value, dtype=dtype), tree)


# ---------------------------------------------------------------- dtypes


def cast(tree: ArrayTree, dtype: jax.typing.DTypeLike | None) -> ArrayTree:
    r"""Every leaf cast to ``dtype``; ``None`` returns ``tree`` itself.

    Args:
        tree: a tree of arrays.
        dtype: the dtype, or ``None``.

    Returns:
        The cast tree.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.cast({"a": jnp.ones(2)}, jnp.bfloat16)
        {'a': Array([1, 1], dtype=bfloat16)}

    References:
        Optax's ``optax.tree.cast``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def cast_like(tree: Any, other_tree: ArrayTree) -> Any:
    r"""Every leaf cast to the dtype of its twin in ``other_tree``.

    Leaves whose twin has no dtype are kept as they are.

    Args:
        tree: the tree to cast.
        other_tree: a tree of the same structure whose dtypes to take.

    Returns:
        The cast tree.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.tree.cast_like({"a": jnp.ones(2)}, {"a": jnp.zeros(2, jnp.int32)})
        {'a': Array([1, 1], dtype=int32)}

    References:
        Optax's ``optax.tree.cast_like``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    return jax.tree.map(
        lambda x, o: x.astype(o.dtype) if hasattr(o, "dtype") else x, tree, other_tree
    )


def _lower(d1: Any, d2: Any) -> Any:
    """The one of two dtypes that promotes to the other; ValueError if neither."""
    top = jnp.promote_types(d1, d2)
    if top == d1:
        return d2
    if top == d2:
        return d1
    raise ValueError(
        f"dtypes {d1} and {d2} are not ordered: neither promotes to the other"
    )


def _higher(d1: Any, d2: Any) -> Any:
    return d2 if _lower(d1, d2) == d1 else d1


def dtype(tree: ArrayTree, mixed_dtype_handler: str | None = None) -> Any:
    r"""The dtype of a tree's leaves.

    With leaves of several dtypes, ``mixed_dtype_handler`` says what to return:
    ``None`` raises, ``"promote"`` gives their ``jax.numpy.promote_types``,
    ``"highest"`` / ``"lowest"`` the one every other promotes to / from
    (a ``ValueError`` where two are not ordered so, as ``int32`` and
    ``uint32``). A tree without leaves gives JAX's default float dtype.

    Args:
        tree: a tree of arrays or scalars.
        mixed_dtype_handler: ``None``, ``"promote"``, ``"highest"`` or
            ``"lowest"``.

    Returns:
        A NumPy dtype.

    Raises:
        ValueError: for mixed dtypes with ``mixed_dtype_handler=None``, unordered
            ones with ``"highest"``/``"lowest"``, or another handler.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tree = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2)}
        >>> adamx.tree.dtype(tree, "lowest"), adamx.tree.dtype(tree, "highest")
        (dtype('float16'), dtype('float32'))

    References:
        Optax's ``optax.tree.dtype``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(leaves).dtype
    dtypes = [jnp.asarray(x).dtype for x in leaves]
    if mixed_dtype_handler is None:
        paths = jax.tree_util.tree_leaves_with_path(tree)
        wrong = [
            f"Expected dtype={dtypes[0]} for {jax.tree_util.keystr(path)} but got {d}."
            for (path, _), d in zip(paths, dtypes, strict=True)
            if d != dtypes[0]
        ]
        if wrong:
            raise ValueError("\n".join(wrong))
        return dtypes[0]
    pairwise = {"promote": jnp.promote_types, "highest": _higher, "lowest": _lower}
    if mixed_dtype_handler not in pairwise:
        raise ValueError(
            "mixed_dtype_handler must be None, 'promote', 'highest' or 'lowest', "
            f"got {mixed_dtype_handler!r}"
        )
    return functools.reduce(pairwise[mixed_dtype_handler], dtypes)


# ---------------------------------------------------------------- random trees


def split_key_like(rng_key: jax.Array, target_tree: ArrayTree) -> ArrayTree:
    r"""One new key per leaf of ``target_tree``, split from ``rng_key``.

    Args:
        rng_key: a PRNG key.
        target_tree: the tree whose structure to take.

    Returns:
        A tree of keys with the structure of ``target_tree``.

    Example:
        >>> import jax
        >>> import adamx
        >>> keys = adamx.tree.split_key_like(jax.random.key(0), {"a": 1.0, "b": 2.0})
        >>> sorted(keys)
        ['a', 'b']

    References:
        Optax's ``optax.tree.split_key_like``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    treedef = jax.tree.structure(target_tree)
    return jax.tree.unflatten(treedef, jax.random.split(rng_key, treedef.num_leaves))


def random_like(
    rng_key: jax.Array,
    target_tree: ArrayTree,
    sampler: Callable[..., jax.typing.ArrayLike] = jax.random.normal,
    dtype: jax.typing.DTypeLike | None = None,
) -> ArrayTree:
    r"""A tree of random draws shaped like ``target_tree``.

    Leaf :math:`i` is ``sampler(k_i, shape_i, dtype_i)``, with keys from
    :func:`split_key_like` (so the numbers are Optax's for the same key), each
    placed with its leaf's sharding where the sampler takes ``out_sharding``.

    Args:
        rng_key: a PRNG key.
        target_tree: a tree of arrays whose shapes (and dtypes) to take.
        sampler: ``(key, shape, dtype) -> array``; by default
            ``jax.random.normal``.
        dtype: the dtype to draw in; ``None`` takes each leaf's.

    Returns:
        A tree of the structure of ``target_tree``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> noise = adamx.tree.random_like(jax.random.key(0), {"w": jnp.zeros((2, 3))})
        >>> noise["w"].shape
        (2, 3)

    References:
        Optax's ``optax.tree.random_like``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    keys = split_key_like(rng_key, target_tree)
    places = "out_sharding" in inspect.signature(sampler).parameters

    def draw(leaf: Any, key: jax.Array) -> jax.typing.ArrayLike:
        dt = dtype or leaf.dtype
        if places:
            return sampler(key, leaf.shape, dt, out_sharding=jax.typeof(leaf).sharding)
        return sampler(key, leaf.shape, dt)

    return jax.tree.map(draw, target_tree, keys)


def unwrap_random_key_data(input_tree: ArrayTree) -> ArrayTree:
    r"""Typed PRNG keys in a tree replaced by their raw ``uint32`` data.

    Lets states holding keys be compared number by number; other leaves are
    kept.

    Args:
        input_tree: a tree of arrays and ``jax.random.key`` keys.

    Returns:
        The tree, each typed key replaced by ``jax.random.key_data`` of it.

    Example:
        >>> import jax
        >>> import adamx
        >>> adamx.tree.unwrap_random_key_data({"k": jax.random.key(0)})["k"].dtype
        dtype('uint32')

    References:
        Optax's ``optax.tree.unwrap_random_key_data``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """

    def unwrap(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
            x.dtype, jax.dtypes.prng_key
        ):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)
