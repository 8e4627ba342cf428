r"""Transforms that decide whether, when and where an update applies.

*When*: :func:`apply_every` sums the gradients of ``k`` steps and lets them
through on the last; :func:`conditionally_transform` and
:func:`conditionally_mask` run a transformation only at the steps a condition
chooses. *Whether*: :func:`skip_not_finite` and :func:`skip_large_updates`
are the tests :class:`~adamx.MultiSteps` applies to each micro-step
(``should_skip_update_fn``); :func:`zero_nans` replaces NaNs by zeros.
*Where*: :func:`freeze` and :func:`selective_transform` hold a set of
parameters still; :func:`keep_params_nonnegative` stops each parameter at
zero. :func:`scale_gradient` scales a gradient inside the backward pass.

Names, arguments, defaults and state classes are Optax's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    ELEMENTWISE,
    PER_LEAF,
    ArrayTree,
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    Updates,
    is_concrete,
    require_params,
    safe_increment,
    set_to_zero,
    tree_zeros_like,
    wider_dtype,
)
from adamx.combine import call_update, check_transformation, masked, partition
from adamx.moments import abs_sq
from adamx.traits import Traits, traits_of

__all__ = [
    "ApplyEvery",
    "ConditionFn",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "NonNegativeParamsState",
    "ShouldSkipUpdateFunction",
    "ZeroNansState",
    "apply_every",
    "conditionally_mask",
    "conditionally_transform",
    "freeze",
    "keep_params_nonnegative",
    "scale_gradient",
    "selective_transform",
    "skip_large_updates",
    "skip_not_finite",
    "zero_nans",
]


def _around(inner: Any, init: Any, update: Any) -> GradientTransformation:
    """A wrapper that runs ``inner`` at some steps: element-wise as it is."""
    return GradientTransformationExtraArgs(
        init, update, Traits(elementwise=traits_of(inner).elementwise), derived=True
    )


# ------------------------------------------------------------------ when


class ApplyEvery(NamedTuple):
    """State of :func:`apply_every`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps mod k
    grad_acc: Updates  # like params: the gradients summed since the last step


def _check_every(name: str, k: Any) -> None:
    """An integer >= 1, as a Python int or a concrete 0-d array; traced passes."""
    if isinstance(k, jax.core.Tracer):
        return
    arr = np.asarray(k) if is_concrete(k) else None
    if (
        isinstance(k, (bool, np.bool_))
        or arr is None
        or arr.ndim != 0
        or not np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    if int(arr) < 1:
        raise ValueError(f"{name} must be >= 1, got {k!r}")


def apply_every(k: jax.typing.ArrayLike = 1) -> GradientTransformation:
    r"""Sum the updates of ``k`` steps and let the sum through on the last.

    .. math::
        a_t = \begin{cases} g_t & t \bmod k = 0 \\ a_{t-1} + g_t &
        \text{otherwise} \end{cases}, \qquad
        u_t = \begin{cases} a_t & t \bmod k = k - 1 \\ 0 & \text{otherwise}
        \end{cases}

    counting steps from :math:`t = 0`. The other stages of a chain still run
    at every step, so ``k`` steps of batch :math:`B` are not one step of batch
    :math:`kB`; :class:`~adamx.MultiSteps` gives that. Steps that let nothing
    through return exact zeros, also where the sum holds an infinity (Optax
    returns :math:`0 \cdot a_t` there, a NaN).

    Args:
        k: the number of steps summed, an integer :math:`\ge 1` (a
            hyperparameter under :func:`~adamx.inject_hyperparams`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ApplyEvery`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.apply_every(2)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u
        Array([0.], dtype=float32)
        >>> tx.update(jnp.array([3.0]), state)[0]
        Array([4.], dtype=float32)

    References:
        Optax's ``apply_every``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    _check_every("k", k)

    def init_fn(params):
        return ApplyEvery(
            count=jnp.zeros([], jnp.int32), grad_acc=tree_zeros_like(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        every = jnp.asarray(k).astype(jnp.int32)
        c = state.count % every
        first, last = c == 0, c == every - 1

        def accumulate(g, a):
            g = g.astype(a.dtype)
            return jnp.where(first, g, a + g)

        grad_acc = jax.tree.map(accumulate, updates, state.grad_acc)
        new_updates = jax.tree.map(
            lambda a, g: jnp.where(last, a, jnp.zeros_like(a)).astype(g.dtype),
            grad_acc,
            updates,
        )
        return new_updates, ApplyEvery(
            count=safe_increment(state.count) % every, grad_acc=grad_acc
        )

    return GradientTransformation(init_fn, update_fn, ELEMENTWISE)


class ConditionFn(Protocol):
    """A condition of :func:`conditionally_transform` and :func:`conditionally_mask`.

    Called with the number of earlier calls to ``update`` (shape ``()``,
    int32) and, with ``forward_extra_args=True``, the extra keyword arguments
    of ``update``; returns a bool of shape ``()``: run the inner
    transformation at this step.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def after_warmup(step):
        ...     return step >= 1
        >>> tx = adamx.conditionally_mask(adamx.sgd(1.0), after_warmup)
        >>> u, state = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
        >>> u, int(state.step)
        (Array([0.], dtype=float32), 1)
    """

    def __call__(
        self, step: jax.typing.ArrayLike, **extra_args: Any
    ) -> jax.typing.ArrayLike: ...


class ConditionallyTransformState(NamedTuple):
    """State of :func:`conditionally_transform`."""

    inner_state: Any  # the inner transformation's state
    step: jax.Array  # shape=(), int32: calls to update so far


class ConditionallyMaskState(NamedTuple):
    """State of :func:`conditionally_mask`."""

    step: jax.Array  # shape=(), int32: calls to update so far
    inner_state: Any  # the inner transformation's state


def _check_condition(
    inner: Any, should_transform_fn: Any, forward_extra_args: Any
) -> None:
    check_transformation("inner", inner)
    if not callable(should_transform_fn):
        raise TypeError(
            "should_transform_fn must be a callable of the step count, "
            f"got {should_transform_fn!r}"
        )
    checks.check_bool("forward_extra_args", forward_extra_args)


def _run_if(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool,
    *,
    zero_when_off: bool,
) -> Callable[..., Any]:
    """``(updates, step, inner_state, params, extra_args) -> (updates,
    inner_state)``: ``inner``'s update where the condition holds at ``step``,
    else the updates (or zeros) and the inner state as they were."""

    def run(updates, step, inner_state, params, extra_args):
        kwargs = extra_args if forward_extra_args else {}
        on = jnp.asarray(should_transform_fn(step, **kwargs))

        def apply(_):
            return call_update(inner, updates, inner_state, params, extra_args)

        def skip(_):
            out = tree_zeros_like(updates) if zero_when_off else updates
            return out, inner_state

        # lax.cond, so that a step the condition turns off does not compute
        # the inner update at all.
        return jax.lax.cond(on, apply, skip, None)

    return run


def conditionally_transform(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformation:
    r"""Run ``inner`` at the steps a condition chooses; elsewhere pass through.

    .. math::
        (u_t, S_t) = \begin{cases} f(g_t, S_{t-1}) & c(t) \\ (g_t, S_{t-1}) &
        \text{otherwise} \end{cases}

    with :math:`t` the number of earlier calls to ``update`` and :math:`c` =
    ``should_transform_fn``. At a step :math:`c` turns off, the updates come
    out as they went in and the inner state does not change.
    :func:`conditionally_mask` returns zeros there instead.

    Args:
        inner: the transformation to run at the chosen steps.
        should_transform_fn: :math:`c`, a :class:`ConditionFn`: the step count
            (shape ``()``, int32) to a bool of shape ``()``.
        forward_extra_args: also pass ``update``'s extra keyword arguments
            (a loss, say) to ``should_transform_fn``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ConditionallyTransformState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.conditionally_transform(adamx.scale(10.0), lambda t: t >= 1)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u
        Array([1.], dtype=float32)
        >>> tx.update(jnp.array([1.0]), state)[0]
        Array([10.], dtype=float32)

    References:
        Optax's ``conditionally_transform``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    _check_condition(inner, should_transform_fn, forward_extra_args)
    run = _run_if(inner, should_transform_fn, forward_extra_args, zero_when_off=False)

    def init_fn(params):
        return ConditionallyTransformState(
            inner_state=inner.init(params), step=jnp.zeros([], jnp.int32)
        )

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, inner_state = run(
            updates, state.step, state.inner_state, params, extra_args
        )
        return new_updates, ConditionallyTransformState(
            inner_state=inner_state, step=safe_increment(state.step)
        )

    return _around(inner, init_fn, update_fn)


def conditionally_mask(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformation:
    r"""Run ``inner`` at the steps a condition chooses; elsewhere return zeros.

    .. math::
        (u_t, S_t) = \begin{cases} f(g_t, S_{t-1}) & c(t) \\ (0, S_{t-1}) &
        \text{otherwise} \end{cases}

    with :math:`t` the number of earlier calls to ``update`` and :math:`c` =
    ``should_transform_fn``. At a step :math:`c` turns off, the params do not
    move and the inner state does not change.
    :func:`conditionally_transform` passes the updates through instead.

    Args:
        inner: the transformation to run at the chosen steps.
        should_transform_fn: :math:`c`, a :class:`ConditionFn`: the step count
            (shape ``()``, int32) to a bool of shape ``()``.
        forward_extra_args: also pass ``update``'s extra keyword arguments
            (a loss, say) to ``should_transform_fn``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ConditionallyMaskState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.conditionally_mask(adamx.sgd(0.5), lambda t: t % 2 == 1)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u
        Array([0.], dtype=float32)
        >>> tx.update(jnp.array([1.0]), state)[0]
        Array([-0.5], dtype=float32)

    References:
        Optax's ``conditionally_mask``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    _check_condition(inner, should_transform_fn, forward_extra_args)
    run = _run_if(inner, should_transform_fn, forward_extra_args, zero_when_off=True)

    def init_fn(params):
        return ConditionallyMaskState(
            step=jnp.zeros([], jnp.int32), inner_state=inner.init(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, inner_state = run(
            updates, state.step, state.inner_state, params, extra_args
        )
        return new_updates, ConditionallyMaskState(
            step=safe_increment(state.step), inner_state=inner_state
        )

    return _around(inner, init_fn, update_fn)


# ------------------------------------------------------------------ whether


class ShouldSkipUpdateFunction(Protocol):
    """A test of :class:`~adamx.MultiSteps` (``should_skip_update_fn``).

    Called with a micro-step's updates, the number of real steps taken
    (``MultiStepsState.gradient_step``) and the params (``None`` if not
    given); returns a bool of shape ``()`` (skip this micro-step: as if it had
    not happened) and a tree that ``MultiSteps`` keeps in
    ``MultiStepsState.skip_state``, to read for monitoring.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def skip_negative_sum(updates, gradient_step, params):
        ...     total = jnp.sum(updates)
        ...     return total < 0, {"total": total}
        >>> tx = adamx.MultiSteps(
        ...     adamx.sgd(1.0), 2, should_skip_update_fn=skip_negative_sum
        ... )
        >>> _, state = tx.update(jnp.array([-1.0]), tx.init(jnp.zeros(1)))
        >>> int(state.mini_step), float(state.skip_state["total"])
        (0, -1.0)
    """

    def __call__(
        self,
        updates: Updates,
        gradient_step: jax.typing.ArrayLike,
        params: Params | None,
    ) -> tuple[jax.typing.ArrayLike, ArrayTree]: ...


def skip_not_finite(
    updates: Updates,
    gradient_step: jax.typing.ArrayLike,
    params: Params | None,
) -> tuple[jax.Array, ArrayTree]:
    r"""Skip a micro-step whose updates hold a NaN or an infinity.

    .. math:: \text{skip} = n > 0, \qquad n = \#\{i : g_i \text{ not finite}\}

    A :class:`ShouldSkipUpdateFunction`: pass it as
    ``MultiSteps(..., should_skip_update_fn=adamx.skip_not_finite)`` (adamx's
    or Optax's ``MultiSteps``).

    Args:
        updates: the micro-step's updates.
        gradient_step: the real steps taken (not used).
        params: the params (not used).

    Returns:
        ``(skip, info)``: a bool of shape ``()``, and the dict
        ``{"should_skip": skip, "num_not_finite": n}`` (:math:`n` an int32).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> g = jnp.array([1.0, jnp.nan, jnp.inf])
        >>> skip, info = adamx.skip_not_finite(g, 0, None)
        >>> bool(skip), int(info["num_not_finite"])
        (True, 2)

    References:
        Optax's ``skip_not_finite``,
        https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html
    """
    del gradient_step, params
    counts = [
        jnp.sum(jnp.logical_not(jnp.isfinite(g)), dtype=jnp.int32)
        for g in jax.tree.leaves(updates)
    ]
    num_not_finite = (
        jnp.sum(jnp.stack(counts), dtype=jnp.int32)
        if counts
        else jnp.zeros([], jnp.int32)
    )
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def _sum_of_squares(tree: Any) -> jax.Array:
    """:math:`\\sum |g|^2` over the tree, in float32 or wider."""
    sums = []
    for g in jax.tree.leaves(tree):
        g = jnp.asarray(g)
        if not jnp.issubdtype(g.dtype, jnp.inexact):
            g = g.astype(jnp.float32)
        elif jnp.finfo(g.dtype).bits < 32:
            g = g.astype(jnp.float32)
        sums.append(jnp.sum(abs_sq(g)))
    if not sums:
        return jnp.zeros([], jnp.float32)
    dtype = wider_dtype(*(s.dtype for s in sums))
    return jnp.sum(jnp.stack([s.astype(dtype) for s in sums]))


def skip_large_updates(
    updates: Updates,
    gradient_step: jax.typing.ArrayLike,
    params: Params | None,
    max_squared_norm: jax.typing.ArrayLike,
) -> tuple[jax.Array, ArrayTree]:
    r"""Skip a micro-step whose updates have a squared norm too large.

    .. math:: \text{skip} = \lnot\left(\|g\|_2^2 < M\right)

    so a NaN norm also skips. Bind :math:`M` to make it a
    :class:`ShouldSkipUpdateFunction`:
    ``MultiSteps(..., should_skip_update_fn=functools.partial(
    adamx.skip_large_updates, max_squared_norm=M))``. The norm is
    :math:`\sum |g_i|^2` (the modulus for complex updates), summed in float32
    or the updates' wider dtype.

    Args:
        updates: the micro-step's updates.
        gradient_step: the real steps taken (not used).
        params: the params (not used).
        max_squared_norm: :math:`M`, the largest squared norm let through
            (exclusive).

    Returns:
        ``(skip, info)``: a bool of shape ``()``, and the dict
        ``{"should_skip": skip, "norm_squared": n}`` with :math:`n =
        \|g\|_2^2`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> skip, info = adamx.skip_large_updates(jnp.array([3.0, 4.0]), 0, None, 25.0)
        >>> bool(skip), float(info["norm_squared"])
        (True, 25.0)

    References:
        Optax's ``skip_large_updates``,
        https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html
    """
    del gradient_step, params
    checks.check_range("max_squared_norm", max_squared_norm)
    norm_sq = _sum_of_squares(updates)
    limit = jnp.asarray(max_squared_norm).astype(norm_sq.dtype)
    should_skip = jnp.logical_not(norm_sq < limit)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`."""

    found_nan: Any  # like params, each leaf shape=(), bool: a NaN at the last step


def zero_nans() -> GradientTransformation:
    r"""Replace each NaN in the updates by zero, and record where there were any.

    .. math:: u_i = \begin{cases} 0 & g_i \text{ is NaN} \\ g_i &
       \text{otherwise} \end{cases}

    Infinities pass through. The state holds one bool per leaf, True where
    that leaf held a NaN at the last step; it is for reading, the
    transformation does not use it.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ZeroNansState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.zero_nans()
        >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), tx.init(jnp.zeros(2)))
        >>> u, bool(state.found_nan)
        (Array([1., 0.], dtype=float32), True)

    References:
        Optax's ``zero_nans``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """

    def init_fn(params):
        return ZeroNansState(
            found_nan=jax.tree.map(lambda _: jnp.zeros([], jnp.bool_), params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del state, params, extra_args
        found_nan = jax.tree.map(lambda g: jnp.any(jnp.isnan(g)), updates)
        new_updates = jax.tree.map(
            lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates
        )
        return new_updates, ZeroNansState(found_nan=found_nan)

    # One flag per leaf: on a flat layout the flags would be the buffers'.
    return GradientTransformation(init_fn, update_fn, PER_LEAF)


# ------------------------------------------------------------------ where


def _check_bool_leaves(name: str, mask: Any) -> None:
    for leaf in jax.tree.leaves(mask):
        is_bool_array = getattr(leaf, "shape", None) == () and getattr(
            leaf, "dtype", None
        ) == np.dtype(bool)
        if isinstance(leaf, jax.core.Tracer) or not (
            isinstance(leaf, (bool, np.bool_)) or is_bool_array
        ):
            raise TypeError(
                f"{name} must be a bool or a tree of bools, got {leaf!r} (a leaf "
                f"of type {type(leaf).__name__})"
            )


def freeze(mask: bool | ArrayTree) -> GradientTransformation:
    r"""Zero the updates of the parameters ``mask`` marks, holding them still.

    .. math:: u^{(i)} = \begin{cases} 0 & m^{(i)} \\ g^{(i)} & \text{otherwise}
       \end{cases}

    This is ``masked(set_to_zero(), mask)``. Placed before an optimizer in a
    chain, the optimizer still keeps state for the frozen leaves;
    :func:`selective_transform` keeps none.

    Args:
        mask: True freezes every parameter, False none; or a tree of bools
            with the params' structure (or a prefix of it), True for each leaf
            to freeze; or a function of the params that returns one.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`~adamx.MaskedState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.freeze({"w": True, "b": False})
        >>> g = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> tx.update(g, tx.init(g))[0]
        {'b': Array([1., 1.], dtype=float32), 'w': Array([0., 0.], dtype=float32)}

    References:
        Optax's ``freeze``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    return masked(set_to_zero(), mask)


def selective_transform(
    optimizer: GradientTransformation,
    *,
    freeze_mask: bool | ArrayTree,
) -> GradientTransformation:
    r"""Run ``optimizer`` on the parameters not frozen; hold the others still.

    .. math:: u^{(i)} = \begin{cases} 0 & m^{(i)} \\ f(g)^{(i)} &
       \text{otherwise} \end{cases}

    This is :func:`~adamx.partition` with the labels ``"train"``
    (``optimizer``) and ``"freeze"`` (:func:`~adamx.set_to_zero`):
    ``optimizer`` keeps no state for the frozen leaves.

    Args:
        optimizer: the optimizer of the parameters that train.
        freeze_mask: True freezes every parameter, False none; or a tree of
            bools with the params' structure (or a prefix of it), True for each
            leaf to freeze; or a function of the params that returns one.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`~adamx.PartitionState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.selective_transform(
        ...     adamx.sgd(0.1), freeze_mask={"w": True, "b": False}
        ... )
        >>> g = {"w": jnp.ones(2), "b": jnp.ones(2)}
        >>> tx.update(g, tx.init(g))[0]
        {'b': Array([-0.1, -0.1], dtype=float32), 'w': Array([0., 0.], dtype=float32)}

    References:
        Optax's ``selective_transform``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    check_transformation("optimizer", optimizer)
    # A function when its leaves are all callable, as masked decides.
    leaves = jax.tree.leaves(freeze_mask)
    is_fn = bool(leaves) and all(callable(leaf) for leaf in leaves)
    if not is_fn:
        _check_bool_leaves("freeze_mask", freeze_mask)

    def labels(tree: Any) -> Any:
        mask = freeze_mask(tree) if is_fn else freeze_mask  # type: ignore[operator]
        return jax.tree.map(lambda m: "freeze" if m else "train", mask)

    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)


NonNegativeParamsState = EmptyState
"""State of :func:`keep_params_nonnegative`: :class:`~adamx.EmptyState`, none."""


def keep_params_nonnegative() -> GradientTransformation:
    r"""Shorten the updates that would take a parameter below zero.

    .. math:: u_i = \begin{cases} -\theta_i & \theta_i + g_i < 0 \\ g_i &
       \text{otherwise} \end{cases}

    so that :math:`\theta_i + u_i \ge 0`. Put it last in a chain, after the
    learning rate. A parameter that is already negative is moved to zero.
    Complex params are refused: they have no order.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :data:`NonNegativeParamsState` (:class:`~adamx.EmptyState`), whose
        ``update`` needs the params.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.keep_params_nonnegative()
        >>> params = jnp.array([1.0, 0.5])
        >>> tx.update(jnp.array([-0.5, -2.0]), tx.init(params), params)[0]
        Array([-0.5, -0.5], dtype=float32)

    References:
        Optax's ``keep_params_nonnegative``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """

    def init_fn(params):
        for p in jax.tree.leaves(params):
            if jnp.issubdtype(jnp.result_type(p), jnp.complexfloating):
                raise TypeError(
                    "keep_params_nonnegative needs real params (complex numbers "
                    f"have no order), got a leaf of dtype {jnp.result_type(p)}"
                )
        return NonNegativeParamsState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params("keep_params_nonnegative", params)

        def stop_at_zero(p, g):
            if p is None:
                return None
            dt = wider_dtype(p.dtype, g.dtype)
            p, g_ = p.astype(dt), g.astype(dt)
            return jnp.where(p + g_ < 0, -p, g_).astype(g.dtype)

        new_updates = jax.tree.map(
            stop_at_zero, params, updates, is_leaf=lambda x: x is None
        )
        return new_updates, state

    return GradientTransformation(init_fn, update_fn, ELEMENTWISE)


# ------------------------------------------------------------------ backward pass


@jax.custom_vjp
def _scaled(inputs: ArrayTree, scale: jax.Array) -> ArrayTree:
    del scale  # read by the backward pass only
    return inputs


def _scaled_fwd(inputs: ArrayTree, scale: jax.Array) -> tuple[ArrayTree, jax.Array]:
    return inputs, scale


def _scale_cotangent(c: Any, scale: jax.Array) -> Any:
    if c.dtype == jax.dtypes.float0:  # integer inputs have no gradient
        return c
    return c * scale.astype(c.dtype)


def _scaled_bwd(scale: jax.Array, cotangents: ArrayTree) -> tuple[ArrayTree, None]:
    return jax.tree.map(lambda c: _scale_cotangent(c, scale), cotangents), None


_scaled.defvjp(_scaled_fwd, _scaled_bwd)


def scale_gradient(inputs: ArrayTree, scale: jax.typing.ArrayLike) -> ArrayTree:
    r"""The identity on the forward pass; the gradient times ``scale`` backward.

    .. math:: y = x, \qquad \frac{\partial L}{\partial x} = s\,
       \frac{\partial L}{\partial y}

    Applied to params (or activations) inside a loss, it scales their
    gradient without changing the loss: a per-group learning rate written in
    the model. A scale of 1 returns ``inputs`` as they are, and 0 stops the
    gradient (``lax.stop_gradient``), as in Optax; a traced scale goes
    through the general rule.

    Args:
        inputs: a tree of arrays.
        scale: :math:`s`, a real scalar.

    Returns:
        ``inputs``, unchanged, with the scaled backward pass.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> jax.grad(lambda x: jnp.sum(adamx.scale_gradient(x, 0.5) ** 2))(jnp.ones(2))
        Array([1., 1.], dtype=float32)

    References:
        Optax's ``scale_gradient``,
        https://optax.readthedocs.io/en/latest/api/utilities.html
    """
    checks.check_finite("scale", scale)
    if is_concrete(scale):
        if float(np.asarray(scale)) == 1.0:
            return inputs
        if float(np.asarray(scale)) == 0.0:
            return jax.lax.stop_gradient(inputs)
    return _scaled(inputs, jnp.asarray(scale))
