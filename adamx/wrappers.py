r"""Wrappers that change how a transformation runs, not what it computes.

``apply_if_finite`` skips steps with non-finite gradients;
``dynamic_loss_scaling`` does the same for float16 training with a scaled
loss; ``MultiSteps`` accumulates gradients over micro-steps; ``monitor``
records gradient and update norms in the state. Hyperparameters kept in the
state (``inject_hyperparams``) are in :mod:`adamx.injection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    safe_increment,
    tree_zeros_like,
)
from adamx.combine import call_update, check_transformation
from adamx.control import ShouldSkipUpdateFunction
from adamx.traits import Traits, traits_of
from adamx.transforms import global_norm

__all__ = [
    "ApplyIfFiniteState",
    "DynamicLossScaleState",
    "MonitorState",
    "MultiSteps",
    "MultiStepsState",
    "apply_if_finite",
    "dynamic_loss_scaling",
    "loss_scale",
    "monitor",
]


def _like(inner: Any, init: Any, update: Any) -> GradientTransformation:
    """A wrapper of ``inner``: element-wise (or per leaf) as ``inner`` is.

    Its stages are not ``inner``'s: a wrapper changes how they run (values
    from the state, skipped or accumulated steps), which no kernel knows.
    """
    return GradientTransformationExtraArgs(
        init,
        update,
        Traits(elementwise=traits_of(inner).elementwise),
        derived=True,
    )


def _tree_all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _find_states(state: Any, kind: type | tuple[type, ...]) -> list:
    """The nodes of ``state`` that are instances of ``kind``, outermost first."""
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, kind):
            found.append(node)
        if isinstance(node, tuple):  # NamedTuples included
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    return found


# ------------------------------------------------------------------ skipping steps


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`."""

    notfinite_count: jax.Array  # shape=(), int32: consecutive non-finite steps
    last_finite: jax.Array  # shape=(), bool: whether the last gradient was finite
    total_notfinite: jax.Array  # shape=(), int32: non-finite steps in all
    inner_state: Any  # the wrapped transformation's state


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    r"""Skip steps whose gradients hold a NaN or an infinity.

    .. math::
        (u_t, S_t) = \begin{cases} f(g_t, S_{t-1}) & g_t \text{ finite, or }
        c_{t-1} \ge K \\ (0, S_{t-1}) & \text{otherwise} \end{cases}

    A skipped step returns zero updates and leaves the inner state untouched.
    :math:`c` counts consecutive non-finite steps; after
    :math:`K` = ``max_consecutive_errors`` of them in a row, the next
    non-finite gradient is applied anyway, so that a run that has truly
    diverged shows NaNs rather than stalling in silence, and :math:`c`
    starts again from zero. A finite step also resets :math:`c` to zero.
    ``total_notfinite`` counts every non-finite step.

    Args:
        inner: the transformation to protect.
        max_consecutive_errors: :math:`K \ge 0`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ApplyIfFiniteState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.apply_if_finite(adamx.sgd(0.1), max_consecutive_errors=3)
        >>> u, s = tx.update(jnp.array([1.0, jnp.nan]), tx.init(jnp.zeros(2)))
        >>> u, int(s.total_notfinite)
        (Array([0., 0.], dtype=float32), 1)
    """
    check_transformation("inner", inner)
    checks.check_positive_int(
        "max_consecutive_errors", max_consecutive_errors, allow_zero=True
    )

    def init_fn(params):
        return ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        finite = _tree_all_finite(updates)
        give_up = state.notfinite_count >= max_consecutive_errors
        apply = jnp.logical_or(finite, give_up)

        def do_apply(_):
            return call_update(inner, updates, state.inner_state, params, extra_args)

        def do_skip(_):
            zeros = jax.tree.map(jnp.zeros_like, updates)
            return zeros, state.inner_state

        # lax.cond so a skipped step does not run the inner update at all.
        new_updates, inner_state = jax.lax.cond(apply, do_apply, do_skip, None)
        notfinite_count = jnp.where(
            jnp.logical_or(finite, give_up), 0, state.notfinite_count + 1
        ).astype(jnp.int32)
        total = state.total_notfinite + jnp.logical_not(finite).astype(jnp.int32)
        return new_updates, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=total,
            inner_state=inner_state,
        )

    return _like(inner, init_fn, update_fn)


class DynamicLossScaleState(NamedTuple):
    """State of :func:`dynamic_loss_scaling`."""

    scale: jax.Array  # shape=(), float32: multiply the loss by this
    good_steps: jax.Array  # shape=(), int32: finite steps since the last change
    skipped_steps: jax.Array  # shape=(), int32: overflowing steps in all
    inner_state: Any  # the wrapped optimizer's state


def dynamic_loss_scaling(
    inner: GradientTransformation,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    min_scale: float = 1.0,
    max_scale: float = 2.0**24,
) -> GradientTransformation:
    r"""Dynamic loss scaling for float16 training.

    The training step multiplies the loss by ``state.scale`` (read it with
    ``adamx.loss_scale(state)`` or ``state.scale``) before taking gradients;
    this wrapper divides the gradients by the scale, in float32, and then:

    .. math::
        \begin{aligned}
        &\text{overflow (non-finite } g/s\text{):} && \text{skip the step},\;
        s \leftarrow \max(s \cdot b, s_{\min}) \\
        &\text{else:} && (u_t, S_t) = f(g/s, S_{t-1});\; \text{after } N
        \text{ finite steps in a row, } s \leftarrow \min(s \cdot a, s_{\max})
        \end{aligned}

    A skipped step returns zero updates and leaves the inner state untouched.

    Args:
        inner: the optimizer, fed the unscaled gradients.
        initial_scale: the first scale :math:`s_0 \ge 1`.
        growth_interval: :math:`N > 0`, finite steps before the scale grows.
        growth_factor: :math:`a > 1`.
        backoff_factor: :math:`b \in (0, 1)`.
        min_scale: :math:`s_{\min} > 0`.
        max_scale: :math:`s_{\max} \ge s_0`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`DynamicLossScaleState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.dynamic_loss_scaling(adamx.sgd(1.0), initial_scale=4.0)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([8.0], jnp.float16), state)
        >>> u
        Array([-2.], dtype=float16)
        >>> u, state = tx.update(jnp.array([jnp.inf], jnp.float16), state)
        >>> u, float(state.scale)
        (Array([0.], dtype=float16), 2.0)

    References:
        Micikevicius et al., 2018, "Mixed Precision Training",
        https://arxiv.org/abs/1710.03740
    """
    check_transformation("inner", inner)
    checks.check_range(
        "min_scale", min_scale, 0.0, np.inf, low_open=True, high_open=True
    )
    checks.check_range(
        "initial_scale", initial_scale, min_scale, np.inf, high_open=True
    )
    checks.check_range("max_scale", max_scale, initial_scale, np.inf, high_open=True)
    checks.check_positive_int("growth_interval", growth_interval)
    checks.check_range(
        "growth_factor", growth_factor, 1.0, np.inf, low_open=True, high_open=True
    )
    checks.check_range(
        "backoff_factor", backoff_factor, 0.0, 1.0, low_open=True, high_open=True
    )

    def init_fn(params):
        return DynamicLossScaleState(
            scale=jnp.asarray(initial_scale, jnp.float32),
            good_steps=jnp.zeros([], jnp.int32),
            skipped_steps=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        grads = jax.tree.map(
            lambda g: (g.astype(jnp.float32) / state.scale).astype(g.dtype), updates
        )
        # Overflow is judged on the float32 quotient: a float16 gradient that
        # is finite can still be inf once cast back, and that also counts.
        finite = jnp.logical_and(
            _tree_all_finite(grads),
            _tree_all_finite(
                jax.tree.map(lambda g: g.astype(jnp.float32) / state.scale, updates)
            ),
        )

        def do_apply(_):
            return call_update(inner, grads, state.inner_state, params, extra_args)

        def do_skip(_):
            return jax.tree.map(jnp.zeros_like, grads), state.inner_state

        new_updates, inner_state = jax.lax.cond(finite, do_apply, do_skip, None)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= growth_interval
        scale = jnp.where(
            finite,
            jnp.where(
                grow, jnp.minimum(state.scale * growth_factor, max_scale), state.scale
            ),
            jnp.maximum(state.scale * backoff_factor, min_scale),
        )
        return new_updates, DynamicLossScaleState(
            scale=scale.astype(jnp.float32),
            good_steps=jnp.where(grow, 0, good).astype(jnp.int32),
            skipped_steps=state.skipped_steps
            + jnp.logical_not(finite).astype(jnp.int32),
            inner_state=inner_state,
        )

    return _like(inner, init_fn, update_fn)


def loss_scale(state: OptState) -> jax.Array:
    """The current loss scale of a :func:`dynamic_loss_scaling` state (1 if none).

    Args:
        state: an optimizer state, possibly nested in chains or wrappers.

    Returns:
        A scalar float32 array.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.dynamic_loss_scaling(adamx.adam(1e-3), initial_scale=1024.0)
        >>> float(adamx.loss_scale(tx.init(jnp.zeros(2))))
        1024.0
    """
    found = _find_states(state, DynamicLossScaleState)
    return found[0].scale if found else jnp.ones([], jnp.float32)


# ------------------------------------------------------------------ accumulation


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps`."""

    mini_step: jax.Array  # shape=(), int32: micro-steps since the last real step
    gradient_step: jax.Array  # shape=(), int32: real steps taken
    inner_opt_state: Any  # the wrapped optimizer's state
    acc_grads: Any  # like params (or accumulator dtype): sum of micro-gradients
    skip_state: Any = ()  # what should_skip_update_fn returned last, else ()


class MultiSteps:
    r"""Gradient accumulation: one optimizer step every ``k`` micro-steps.

    .. math::
        a_j = \sum_{i \le j} g_i, \qquad
        u = \begin{cases} f(a_k / k) & j = k \\ 0 & j < k \end{cases}

    The inner optimizer runs only on the :math:`k`-th micro-step (under
    ``lax.cond``, not computed and thrown away on the others), on the mean of
    the :math:`k` gradients, so :math:`k` micro-batches give the same step as
    one batch :math:`k` times larger. The extra memory is one buffer the size
    of the params.

    A ``should_skip_update_fn`` (:func:`~adamx.skip_not_finite`,
    :func:`~adamx.skip_large_updates` or any
    :class:`~adamx.ShouldSkipUpdateFunction`) judges each micro-step: one it
    rejects returns zeros and leaves the state as it was, as if it had not
    happened, but for ``skip_state``, where the function's second output is
    kept.

    Args:
        opt: the inner optimizer.
        every_k_schedule: :math:`k`, an int >= 1 or a function of the number
            of real steps taken that returns one.
        use_grad_mean: average the micro-gradients (else sum them).
        should_skip_update_fn: ``(updates, gradient_step, params) -> (skip,
            info)``, ``skip`` a bool of shape ``()``; ``None`` skips nothing.
        accumulator_dtype: dtype of the accumulator; ``None`` uses the
            params' dtype (float32 is the safe choice for bf16 params).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.MultiSteps(adamx.sgd(1.0), every_k_schedule=2)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([1.0]), state)
        >>> u
        Array([0.], dtype=float32)
        >>> u, state = tx.update(jnp.array([3.0]), state)
        >>> u
        Array([-2.], dtype=float32)
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[jax.Array], jax.Array],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: Any | None = None,
    ) -> None:
        check_transformation("opt", opt)
        if not callable(every_k_schedule):
            checks.check_positive_int("every_k_schedule", every_k_schedule)
        checks.check_bool("use_grad_mean", use_grad_mean)
        if should_skip_update_fn is not None and not callable(should_skip_update_fn):
            raise TypeError(
                "should_skip_update_fn must be a function (updates, gradient_step, "
                f"params) -> (skip, info), got {should_skip_update_fn!r}"
            )
        self._should_skip = should_skip_update_fn
        self._opt = opt
        self._every_k = every_k_schedule
        self._use_grad_mean = use_grad_mean
        self._acc_dtype = checks.check_float_dtype(
            "accumulator_dtype", accumulator_dtype
        )

    def _k(self, gradient_step: jax.Array) -> jax.Array:
        k = self._every_k(gradient_step) if callable(self._every_k) else self._every_k
        return jnp.asarray(k, jnp.int32)

    def init(self, params: Any) -> MultiStepsState:
        """Build the state: zero accumulator, the inner optimizer's state."""
        gradient_step = jnp.zeros([], jnp.int32)
        skip_state = ()
        if self._should_skip is not None:
            # The structure of what the test returns, from zero updates.
            _, skip_state = self._should_skip(
                tree_zeros_like(params), gradient_step, params
            )
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=tree_zeros_like(params, self._acc_dtype),
            skip_state=skip_state,
        )

    def update(
        self,
        updates: Any,
        state: MultiStepsState,
        params: Any = None,
        **extra_args: Any,
    ) -> tuple[Any, MultiStepsState]:
        """Accumulate ``updates``; on the k-th call, step the inner optimizer."""
        if self._should_skip is not None:
            return self._update_unless_skipped(updates, state, params, extra_args)
        k = self._k(state.gradient_step)
        acc = jax.tree.map(
            lambda a, g: (a + g.astype(a.dtype)).astype(a.dtype),
            state.acc_grads,
            updates,
        )
        last = state.mini_step + 1 >= k

        def do_step(_):
            if self._use_grad_mean:
                kf = k.astype(jnp.float32)
                grads = jax.tree.map(
                    lambda a, g: (a / kf.astype(a.dtype)).astype(g.dtype), acc, updates
                )
            else:
                grads = jax.tree.map(lambda a, g: a.astype(g.dtype), acc, updates)
            new_updates, inner = call_update(
                self._opt, grads, state.inner_opt_state, params, extra_args
            )
            return new_updates, MultiStepsState(
                mini_step=jnp.zeros([], jnp.int32),
                gradient_step=safe_increment(state.gradient_step),
                inner_opt_state=inner,
                acc_grads=jax.tree.map(jnp.zeros_like, acc),
                skip_state=state.skip_state,
            )

        def do_accumulate(_):
            return jax.tree.map(jnp.zeros_like, updates), MultiStepsState(
                mini_step=state.mini_step + 1,
                gradient_step=state.gradient_step,
                inner_opt_state=state.inner_opt_state,
                acc_grads=acc,
                skip_state=state.skip_state,
            )

        return jax.lax.cond(last, do_step, do_accumulate, None)

    def _update_unless_skipped(
        self,
        updates: Any,
        state: MultiStepsState,
        params: Any,
        extra_args: dict[str, Any],
    ) -> tuple[Any, MultiStepsState]:
        """``update``, run only if ``should_skip_update_fn`` accepts the micro-step."""
        assert self._should_skip is not None
        skip, skip_state = self._should_skip(updates, state.gradient_step, params)
        skip = jnp.asarray(skip)
        if skip.dtype != jnp.bool_ or skip.shape != ():
            raise ValueError(
                "should_skip_update_fn must return a bool of shape () first, got "
                f"dtype {skip.dtype} and shape {skip.shape}"
            )
        state = state._replace(skip_state=skip_state)
        plain = MultiSteps(
            self._opt,
            self._every_k,
            self._use_grad_mean,
            accumulator_dtype=self._acc_dtype,
        )

        def do_update(_):
            return plain.update(updates, state, params, **extra_args)

        def do_skip(_):
            # Zeros, as at a micro-step that accumulates; the state as it was.
            return tree_zeros_like(updates), state

        return jax.lax.cond(skip, do_skip, do_update, None)

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the last call to ``update`` stepped the inner optimizer."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a plain :class:`~adamx.GradientTransformation`."""

        def update_fn(updates, state, params=None, **extra_args):
            return self.update(updates, state, params, **extra_args)

        return _like(self._opt, self.init, update_fn)


# ------------------------------------------------------------------ monitoring


class MonitorState(NamedTuple):
    """State of :func:`monitor`."""

    grad_norm: jax.Array  # shape=(), float32: global norm of the last gradients
    update_norm: jax.Array  # shape=(), float32: global norm of the last updates
    skipped_steps: jax.Array  # shape=(), int32: steps whose gradients were not finite
    inner_state: Any  # the wrapped transformation's state


def monitor(inner: GradientTransformation) -> GradientTransformation:
    r"""Record gradient and update norms, and non-finite steps, in the state.

    .. math:: \|g_t\|_2, \quad \|u_t\|_2, \quad
       \#\{t : g_t \text{ not finite}\}

    A training loop reads ``state.grad_norm``, ``state.update_norm`` and
    ``state.skipped_steps`` to log them, without computing the norms again.
    Wrap the outermost transformation (for instance around
    :func:`apply_if_finite`) so the counts cover every step.

    Args:
        inner: the transformation to watch.

    Returns:
        A :class:`~adamx.GradientTransformation` with state :class:`MonitorState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.monitor(adamx.sgd(0.5))
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> float(state.grad_norm), float(state.update_norm)
        (5.0, 2.5)
    """
    check_transformation("inner", inner)

    def init_fn(params):
        return MonitorState(
            grad_norm=jnp.zeros([], jnp.float32),
            update_norm=jnp.zeros([], jnp.float32),
            skipped_steps=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        grad_norm = global_norm(updates).astype(jnp.float32)
        finite = _tree_all_finite(updates)
        new_updates, inner_state = call_update(
            inner, updates, state.inner_state, params, extra_args
        )
        return new_updates, MonitorState(
            grad_norm=grad_norm,
            update_norm=global_norm(new_updates).astype(jnp.float32),
            skipped_steps=state.skipped_steps
            + jnp.logical_not(finite).astype(jnp.int32),
            inner_state=inner_state,
        )

    return _like(inner, init_fn, update_fn)
