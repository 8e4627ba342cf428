r"""A flat parameter layout: one buffer per dtype, one pass per buffer.

An optimizer over a tree of :math:`L` leaves runs at least one kernel per leaf;
with many small leaves the per-kernel overhead, not memory traffic, sets the
step time. :class:`FlatParams` keeps all leaves of one dtype in a single 1-D
buffer, so an element-wise optimizer reads and writes each buffer in one pass:
the layout is the fusion, and any element-wise optimizer takes it as it is. A
per-leaf one (trust ratios, factored or block-quantized moments, masks) refuses
it when its state is built, as its traits declare. The training step unravels
the buffer into the familiar tree inside the loss::

    flat = adamx.ravel(params)                 # once, before training
    tx = adamx.adam(1e-3)
    opt_state = tx.init(flat)

    def loss_fn(flat, batch):
        return model_loss(flat.unravel(), batch)   # slices of the buffer

    grads = jax.grad(loss_fn)(flat, batch)         # a FlatParams too
    updates, opt_state = tx.update(grads, opt_state, flat)
    flat = adamx.apply_updates(flat, updates)

Concatenating a tree into buffers and splitting the result back on every step
is no substitute: it costs more than it saves once leaves are larger than a
few thousand elements (``docs/performance.md``). So the layout is chosen once,
before training, not per step. :func:`flatten` is that per-step concatenation,
Optax's ``optax.flatten``: a wrapper that needs nothing of the training step,
for trees of many tiny leaves or for a transformation that should see all the
parameters as one vector.

Compile time moves the other way with the tree's shapes: XLA generates one
kernel for all identical ones, and each leaf's slice of the buffer is a kernel
of its own. With leaves of many shapes the flat step compiles faster than a
leaf-by-leaf one; with a few shapes repeated it compiles slower.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    JoinedLeaves,
    wider_dtype,
)
from adamx.combine import call_update, check_transformation
from adamx.traits import Traits, traits_of

__all__ = ["FlatParams", "flatten", "ravel"]


class _Slot(NamedTuple):
    buffer: str  # name of the dtype's buffer
    offset: int  # first element of the leaf in its buffer
    shape: tuple[int, ...]


class _Layout(NamedTuple):
    treedef: Any  # jax.tree_util.PyTreeDef of the original tree
    slots: tuple[_Slot, ...]  # one per leaf, in treedef order
    sizes: tuple[tuple[str, int], ...]  # (buffer name, number of elements)


@jax.tree_util.register_pytree_with_keys_class
class FlatParams(JoinedLeaves):
    """A tree stored as one 1-D buffer per dtype; a pytree whose leaves are the buffers.

    Build one with :func:`ravel`; get the tree back with :meth:`unravel`. The
    gradient of a function of a ``FlatParams`` is a ``FlatParams`` with the same
    layout, and ``adamx.apply_updates`` adds two of them buffer by buffer.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> flat = adamx.ravel({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
        >>> flat.buffers["float32"]
        Array([0., 0., 1., 1., 1., 1.], dtype=float32)
        >>> flat.unravel()["w"].shape
        (2, 2)
    """

    def __init__(self, buffers: dict[str, Any], layout: _Layout) -> None:
        self.buffers = buffers
        self.layout = layout

    def tree_flatten_with_keys(self):
        names = [name for name, _ in self.layout.sizes]
        children = [(jax.tree_util.DictKey(n), self.buffers[n]) for n in names]
        return children, self.layout

    @classmethod
    def tree_unflatten(cls, layout: _Layout, children: Any) -> FlatParams:
        names = [name for name, _ in layout.sizes]
        return cls(dict(zip(names, children, strict=True)), layout)

    def unravel(self) -> Any:
        """The tree this layout was made from, its leaves sliced out of the buffers.

        Returns:
            A tree with the original structure, shapes and dtypes.
        """
        # One split per buffer, not a slice per leaf: the gradient of a split is
        # a single concatenate, where slices would each pad a full-size buffer.
        pieces: dict[str, list] = {}
        for name, _ in self.layout.sizes:
            slots = [s for s in self.layout.slots if s.buffer == name]
            cuts = [s.offset for s in slots[1:]]
            pieces[name] = list(jnp.split(self.buffers[name], cuts))
        leaves = [pieces[s.buffer].pop(0).reshape(s.shape) for s in self.layout.slots]
        return jax.tree.unflatten(self.layout.treedef, leaves)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}[{n}]" for name, n in self.layout.sizes)
        return f"FlatParams({len(self.layout.slots)} leaves in {sizes})"


def _check_not_sharded(tree: Any) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        sharding = getattr(leaf, "sharding", None)
        if isinstance(leaf, jax.core.Tracer) or sharding is None:
            continue
        if len(sharding.device_set) > 1 and not sharding.is_fully_replicated:
            raise ValueError(
                "a flat layout cannot hold sharded params: leaf "
                f"{jax.tree_util.keystr(path)} is sharded as {sharding}. Keep the "
                "tree layout (and use adamx.sharded for sharded optimizer state)."
            )


def ravel(tree: Any) -> FlatParams:
    """Lay a tree out as one 1-D buffer per dtype.

    Leaves of each dtype are concatenated in tree order. Sharded leaves are
    refused with a ``ValueError``: one buffer cannot keep their shardings.

    Args:
        tree: a tree of arrays (``None`` leaves are kept in the structure).

    Returns:
        A :class:`FlatParams`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.ravel([jnp.ones(3), jnp.ones(2, jnp.bfloat16)])
        FlatParams(2 leaves in bfloat16[2], float32[3])
    """
    if isinstance(tree, FlatParams):
        return tree
    _check_not_sharded(tree)
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [jnp.asarray(x) for x in leaves]
    offsets: dict[str, int] = {}
    parts: dict[str, list] = {}
    slots = []
    for leaf in leaves:
        name = jnp.dtype(leaf.dtype).name
        offset = offsets.get(name, 0)
        slots.append(_Slot(name, offset, tuple(leaf.shape)))
        offsets[name] = offset + leaf.size
        parts.setdefault(name, []).append(leaf.reshape(-1))
    names = sorted(parts)
    # Always fresh buffers: a one-leaf concatenate would alias the leaf, and
    # donating the flat buffer would then delete the caller's array.
    buffers = {n: jnp.array(jnp.concatenate(parts[n]), copy=True) for n in names}
    layout = _Layout(treedef, tuple(slots), tuple((n, offsets[n]) for n in names))
    return FlatParams(buffers, layout)


# ------------------------------------------------------------------ per step


def _to_vector(tree: Any) -> jax.Array:
    """The leaves of ``tree`` in tree order, concatenated into one 1-D array.

    Leaves of different dtypes are cast, explicitly, to the one that holds
    them all, so that this works under strict dtype promotion too.
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((0,), jnp.float32)
    dtype = wider_dtype(*(x.dtype for x in leaves))
    return jnp.concatenate([x.reshape(-1).astype(dtype) for x in leaves])


def _from_vector(vector: jax.Array, like: Any) -> Any:
    """``vector`` cut into the leaves of ``like``: their shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(like)
    cuts = np.cumsum([np.size(x) for x in leaves])[:-1].tolist()
    pieces = jnp.split(vector, cuts) if leaves else []
    out = [
        piece.reshape(np.shape(x)).astype(jnp.result_type(x))
        for piece, x in zip(pieces, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def flatten(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    r"""Run ``inner`` on one flat vector: the tree's leaves joined at every step.

    .. math::
        (v_t, S_t) = f\big(\operatorname{vec}(g_t), S_{t-1};\,
        \operatorname{vec}(\theta_t)\big), \qquad
        u_t = \operatorname{vec}^{-1}(v_t)

    where :math:`\operatorname{vec}` concatenates the leaves in tree order
    into one 1-D array and :math:`\operatorname{vec}^{-1}` cuts a vector back
    into the leaves' shapes. ``inner`` (:math:`f`) sees a single array in
    ``init`` and ``update``, and its state is built for it. With many tiny
    leaves this saves the per-leaf overhead of each of ``inner``'s steps, at
    the price of a concatenation and a split of the gradients (and the
    params, when given) on every step.

    It differs from :func:`ravel` and :class:`FlatParams`, which lay the
    params out in buffers once, before training, so that nothing is copied at
    a step, but ask the loss to unravel the buffers and give element-wise
    optimizers only: ``flatten`` asks nothing of the training step and takes
    any ``inner``. A per-leaf one computes its per-leaf quantities (a trust
    ratio, a factored moment) over the whole vector, as if the params were
    one leaf. For an element-wise ``inner`` all three layouts give the same
    numbers.

    Leaves of different dtypes are joined in the one that holds them all,
    and each update goes back to its own leaf's dtype (Optax's promotes and
    returns updates in the wider dtype). Sharded leaves are gathered by the
    concatenation.

    Args:
        inner: the transformation to run on the flat vector.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` whose state is
        ``inner``'s state for the flat vector.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.flatten(adamx.scale_by_adam())
        >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
        >>> tx.init(params).mu.shape
        (7,)
        >>> tx.update({"w": jnp.ones((2, 2)), "b": -jnp.ones(3)}, tx.init(params))[0]
        {'b': Array([-1., -1., -1.], dtype=float32), 'w': Array([[1., 1.],
               [1., 1.]], dtype=float32)}

    References:
        Optax's ``optax.flatten``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    check_transformation("inner", inner)

    def init_fn(params):
        return inner.init(_to_vector(params))

    def update_fn(updates, state, params=None, **extra_args):
        flat_params = None if params is None else _to_vector(params)
        flat_updates, state = call_update(
            inner, _to_vector(updates), state, flat_params, extra_args
        )
        return _from_vector(flat_updates, updates), state

    # A flat layout given to it is joined like any tree; only an element-wise
    # inner computes on the vector what it would on the tree.
    elementwise = True if traits_of(inner).elementwise else None
    return GradientTransformationExtraArgs(
        init_fn, update_fn, Traits(elementwise=elementwise), derived=True
    )
