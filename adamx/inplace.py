r"""An optimizer step that writes the params in place: one pass per buffer on CPU.

Optax's protocol returns updates that ``apply_updates`` then adds to the params,
so an Adam step writes the update out and reads it back; XLA's CPU backend also
writes each new moment in a loop of its own: 40 bytes per float32 parameter
where the step's own traffic is 28 (read g, p, m, v; write p, m, v). With
8-bit state XLA makes four passes, each decoding the moments again.
:func:`step` takes the params and returns the new ones, so where a kernel of
:mod:`adamx.kernels`' table computes the optimizer, it runs a native loop that
reads and writes each buffer or leaf once, in place when the params and state
are donated::

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        return adamx.step(tx, grads, opt_state, params)

The kernel-updated leaves are one primitive, lowered per platform: by the
kernels on CPU, by the chain leaf by leaf elsewhere (and under ``vmap``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from adamx import kernels, lowbit
from adamx.base import (
    OptState,
    Params,
    Updates,
    apply_updates,
    check_same_shapes,
)
from adamx.storage import as_placeholders
from adamx.traits import replace_at, state_at, traits_of

__all__ = ["step"]


def step(
    tx: Any,
    grads: Updates,
    opt_state: OptState,
    params: Params,
) -> tuple[Params, OptState]:
    r"""Apply one step of ``tx``: new params and new state from the gradients.

    .. math:: (u_t, S_t) = \mathrm{update}(g_t, S_{t-1}, \theta_{t-1}), \qquad
        \theta_t = \theta_{t-1} + u_t

    Where a kernel of :mod:`adamx.kernels`' table computes ``tx``, on CPU, a
    native loop updates the params and the moments together, in place when
    the jitted step donates them. The kernel is chosen from the stages ``tx``
    declares, however it was built: ``adam`` and ``adamw`` (any learning rate
    or schedule, weight decay a number or a schedule, no mask,
    ``nesterov=False``, bias-corrected, ``state_bits`` 32 or 8) and the same
    chains of :func:`~adamx.scale_by_adam`, :func:`~adamx.add_decayed_weights`
    and :func:`~adamx.scale_by_learning_rate` written by hand. It makes one pass
    over each buffer of a :class:`~adamx.FlatParams` or each leaf of a tree, in
    calls of up to 16 leaves (32 with 8-bit state) that share their work out
    between threads; with 8-bit state it decodes, updates and encodes each
    block of 256 in that pass. Leaves it does not take (not float32, or
    moments in other dtypes) run the chain leaf by leaf, so that XLA compiles
    only what the loop does not update and traces the chain once per kind of
    leaf rather than once per leaf. Every other case (other optimizers,
    wrappers such as :func:`~adamx.inject_hyperparams`, no compiler) runs
    ``tx.update`` and :func:`~adamx.apply_updates`. Other platforms and
    ``vmap`` run the chain leaf by leaf; which runs is decided when the step is
    lowered for its platform (a module exported for several holds both).

    Each leaf's new values are the chain's on that leaf alone. The float32
    loop computes the formula in the order XLA's CPU compiler evaluates it on
    one buffer, where the results are the jitted chain's bit for bit. On a
    tree of several leaves XLA divides by the bias corrections rather than
    multiplying by their reciprocals, and the chain's results then differ
    from these in the last bit of some params; with 8-bit state, a moment at
    a midpoint between two codes may then take the other code.

    Params sharded over several devices: the results are right, but XLA
    gathers each leaf for the kernel and returns it replicated (with
    ``Explicit`` mesh axes, sharded again as the params were). For sharded
    params use ``tx.update`` and ``apply_updates``, or
    :func:`~adamx.sharded` for sharded state.

    Args:
        tx: the optimizer.
        grads: the gradients, a tree like ``params``.
        opt_state: ``tx``'s state.
        params: the params the gradients were taken at.

    Returns:
        ``(new_params, new_opt_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adam(0.1)
        >>> params = adamx.ravel({"w": jnp.array([1.0, -2.0])})
        >>> grads = adamx.ravel({"w": jnp.array([0.5, 0.5])})
        >>> params, state = adamx.step(tx, grads, tx.init(params), params)
        >>> print(params.unravel()["w"].round(4))
        [ 0.9 -2.1]
    """
    plan = kernels.find(traits_of(tx).stages)
    if plan is None:
        return _chain_step(tx, grads, opt_state, params)
    moments = state_at(opt_state, plan.moments)
    stored = [getattr(moments, f) for f in plan.fields]
    # The chain checks the trees it is given; it is given parts of them here.
    for field, tree in zip(plan.fields, stored, strict=True):
        check_same_shapes("grads", grads, f"state.{field}", as_placeholders(tree))
    check_same_shapes("grads", grads, "params", params)
    g_leaves = jax.tree.leaves(grads)
    p_leaves, p_def = jax.tree.flatten(params)
    m_leaves = [jax.tree.flatten(t, is_leaf=lowbit.is_quantized)[0] for t in stored]
    m_def = jax.tree.structure(stored[0], is_leaf=lowbit.is_quantized)
    leaves = list(zip(g_leaves, p_leaves, *m_leaves, strict=True))
    calls = [plan.kernel.call_for(*leaf) for leaf in leaves]
    if all(call is None for call in calls):
        return _chain_step(tx, grads, opt_state, params)

    # The state's other parts (step counts, schedules' states): the chain on
    # no leaves updates them.
    empty = moments._replace(**{f: [] for f in plan.fields})
    others = replace_at(opt_state, plan.moments, empty)
    new_state = tx.update([], others, [])[1]

    @jax.jit
    def chain_leaf(leaf: tuple, others: OptState) -> tuple:
        # The chain is element-wise, so a leaf alone with its moments takes
        # the tree's formula. Jitted, it is traced once per kind of leaf
        # (shape, dtype, moments), not once per leaf.
        g, p, *ms = leaf
        alone = state_at(others, plan.moments)._replace(
            **{f: [m] for f, m in zip(plan.fields, ms, strict=True)}
        )
        updates, state = tx.update([g], replace_at(others, plan.moments, alone), [p])
        new_moments = state_at(state, plan.moments)
        return (
            apply_updates([p], updates)[0],
            *(getattr(new_moments, f)[0] for f in plan.fields),
        )

    # Leaves no kernel takes run the chain; the others, one primitive that
    # each platform lowers its own way.
    rest = [i for i, call in enumerate(calls) if call is None]
    done = [i for i, call in enumerate(calls) if call is not None]
    rest_new = [chain_leaf(leaves[i], others) for i in rest]
    scalars, decay = plan.kernel.scalars(plan, opt_state, new_state)
    done_new = _in_place(
        [leaves[i] for i in done],
        others,
        scalars,
        calls=tuple(call for call in calls if call is not None),
        platform=plan.kernel.platform,
        decay=decay,
        chain_leaf=chain_leaf,
    )
    new: list[Any] = [None] * len(leaves)
    for i, leaf in zip(rest + done, rest_new + list(done_new), strict=True):
        new[i] = leaf
    columns = list(zip(*new, strict=True))
    new_p = p_def.unflatten(columns[0])
    new_moments = state_at(new_state, plan.moments)._replace(
        **{
            f: m_def.unflatten(column)
            for f, column in zip(plan.fields, columns[1:], strict=True)
        }
    )
    return new_p, replace_at(new_state, plan.moments, new_moments)


def _chain_step(
    tx: Any, grads: Updates, opt_state: OptState, params: Params
) -> tuple[Params, OptState]:
    updates, opt_state = tx.update(grads, opt_state, params)
    return apply_updates(params, updates), opt_state


def _in_place(
    leaves: list[tuple],
    others: OptState,
    scalars: jax.Array,
    *,
    calls: tuple[kernels.Call, ...],
    platform: str,
    decay: bool,
    chain_leaf: Callable,
) -> list[tuple]:
    """The leaves' new params and moments: by the calls on their platform, else
    by the chain.

    A primitive rather than ``lax.platform_dependent``: JAX traces neither
    way at trace time and lowers only the platform's way (both, for a module
    exported for several platforms), with no conditional around thousands of
    results for XLA to take apart (docs/performance.md has the measurement).
    """
    if not leaves:
        return []
    flat, in_def = jax.tree.flatten((leaves, others, scalars))
    # Where each leaf's params and moments sit among the operands: the results
    # have their types.
    out_index: list[int] = []
    start = 0
    for leaf in leaves:
        sizes = [len(jax.tree.leaves(x)) for x in leaf]
        out_index += range(start + sizes[0], start + sum(sizes))
        start += sum(sizes)
    out = _in_place_p.bind(
        *map(jnp.asarray, flat),
        in_def=in_def,
        out_index=tuple(out_index),
        calls=calls,
        platform=platform,
        decay=decay,
        chain_leaf=chain_leaf,
    )
    out_def = jax.tree.structure([leaf[1:] for leaf in leaves])
    return jax.tree.unflatten(out_def, out)


def _in_place_abstract(*avals: Any, out_index: tuple[int, ...], **_: Any) -> list:
    return [avals[i].update(weak_type=False) for i in out_index]


def _in_place_run(
    *flat: Any,
    by_kernels: bool,
    in_def: Any,
    calls: tuple,
    decay: bool,
    chain_leaf: Callable,
    **_: Any,
) -> list:
    leaves, others, scalars = jax.tree.unflatten(in_def, flat)
    if by_kernels:
        new = _native_leaves(list(calls), leaves, scalars, decay=decay)
    else:
        new = [chain_leaf(leaf, others) for leaf in leaves]
    return jax.tree.leaves(new)


def _in_place_lowering(platform: str | None) -> Callable:
    """The lowering for ``platform``: by the calls where they were chosen for
    it, by the chain elsewhere (``None``: every platform without a kernel)."""

    def lower(ctx: Any, *args: Any, **params: Any) -> Any:
        by_kernels = params["platform"] == platform
        run = functools.partial(_in_place_run, by_kernels=by_kernels, **params)
        return mlir.lower_fun(run, multiple_results=True)(ctx, *args)

    return lower


def _in_place_eager(*flat: Any, **params: Any) -> Any:
    return jax.jit(functools.partial(_in_place_p.bind, **params))(*flat)


def _in_place_batched(args: tuple, dims: tuple, **params: Any) -> tuple:
    # Under vmap (an ensemble of models, say) the kernels have no batched
    # form: the chain runs, as on other platforms.
    run = functools.partial(_in_place_run, by_kernels=False, **params)
    out = jax.vmap(run, in_axes=dims)(*args)
    return out, [0] * len(out)


def _native_leaves(
    calls: list[kernels.Call], leaves: list[tuple], scalars: jax.Array, *, decay: bool
) -> list[tuple]:
    """The leaves' new params and moments, each by its call."""
    new: list[Any] = [None] * len(leaves)
    # A call for many leaves at once, which it shares out between threads as
    # one range of work; in groups, because XLA's compile time grows faster
    # than the operands of one call.
    for call in dict.fromkeys(calls):
        indices = [i for i, c in enumerate(calls) if c == call]
        for start in range(0, len(indices), call.per_call):
            group = indices[start : start + call.per_call]
            results = call.run([leaves[i] for i in group], scalars, decay)
            for i, leaf in zip(group, results, strict=True):
                new[i] = leaf
    return new


_in_place_p = Primitive("adamx_in_place_step")
_in_place_p.multiple_results = True
_in_place_p.def_abstract_eval(_in_place_abstract)
_in_place_p.def_impl(_in_place_eager)
for _platform in sorted({k.platform for k in kernels.KERNELS}):
    mlir.register_lowering(
        _in_place_p, _in_place_lowering(_platform), platform=_platform
    )
mlir.register_lowering(_in_place_p, _in_place_lowering(None))
batching.primitive_batchers[_in_place_p] = _in_place_batched
