r"""Copies kept across steps: slow weights, targets, averages and snapshots.

``lookahead`` runs an optimizer on fast weights and pulls a slow copy towards
them every few steps; ``incremental_update`` (Polyak averaging) and
``periodic_update`` (a target network) maintain another copy of the params in
a training loop; ``snapshot`` records a measurement of the updates in the
state, and ``measure_with_ema`` its moving average. The names, arguments and
numbers are Optax's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    ArrayTree,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    check_same_shapes,
    require_params,
)
from adamx.combine import call_update, chain, check_transformation, stateless
from adamx.traits import Traits, traits_of
from adamx.transforms import ema

__all__ = [
    "LookaheadParams",
    "LookaheadState",
    "SnapshotState",
    "incremental_update",
    "lookahead",
    "measure_with_ema",
    "periodic_update",
    "snapshot",
]


def _check_period(name: str, value: Any) -> None:
    """A number of steps >= 1: a Python or NumPy int, or an integer scalar array.

    A traced value (injected, or an argument of a jitted function) is let through.
    """
    if isinstance(value, jax.core.Tracer):
        return
    is_array = isinstance(value, (jax.Array, np.ndarray))
    if is_array and value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
        if value.item() < 1:
            raise ValueError(f"{name} must be > 0, got {value!r}")
        return
    checks.check_positive_int(name, value)


def _cast(scalar: Any, like: jax.Array) -> Any:
    """``scalar`` in ``like``'s dtype when that is inexact, so that the
    arithmetic keeps the leaf's dtype (and runs under strict promotion)."""
    if jnp.issubdtype(like.dtype, jnp.inexact):
        return jnp.asarray(scalar).astype(like.dtype)
    return scalar


# ------------------------------------------------------------------ lookahead


class LookaheadParams(NamedTuple):
    """The fast and slow params of :func:`lookahead`.

    Gradients are taken at ``fast``; ``slow`` are the weights to evaluate and
    keep, the ones the paper finds to generalize better.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> params = adamx.LookaheadParams.init_synced(jnp.ones(2))
        >>> params.fast is params.slow
        True

    References:
        Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step
        back", https://arxiv.org/abs/1907.08610
    """

    fast: Params  # the params the fast optimizer steps; take gradients here
    slow: Params  # the slow weights, pulled towards fast every sync_period steps

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Fast and slow params both equal to ``params``, as at the start.

        Args:
            params: the initial params.

        Returns:
            ``LookaheadParams(fast=params, slow=params)``.
        """
        return cls(fast=params, slow=params)


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`."""

    fast_state: OptState  # the fast optimizer's state
    steps_since_sync: jax.Array  # shape=(), int32: fast steps since the last sync


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: jax.typing.ArrayLike,
    slow_step_size: jax.typing.ArrayLike,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead: k steps of an optimizer forward, then one step back.

    The fast optimizer :math:`A` takes :math:`k` steps from the slow weights
    :math:`\phi`; the slow weights then move a fraction :math:`\alpha` of the
    way to where the fast ones arrived, and the fast ones restart from there:

    .. math::
        \theta_{t,0} = \phi_{t-1}, \qquad
        \theta_{t,i} = \theta_{t,i-1} + A(g(\theta_{t,i-1})), \quad
        i = 1, \dots, k, \\
        \phi_t = \phi_{t-1} + \alpha\, (\theta_{t,k} - \phi_{t-1}).

    Each call of ``update`` is one fast step; its updates hold both sets of
    weights (a :class:`LookaheadParams`), and on every :math:`k`-th step they
    also carry out the synchronization, so ``apply_updates(params, updates)``
    gives the next pair. Apply them unchanged, or the two sets drift apart.
    The fast optimizer's state carries over a synchronization, as in the
    authors' code (its default ``pullback_momentum="none"``); ``reset_state``
    restarts it instead (their ``"reset"``).

    Args:
        fast_optimizer: the inner optimizer :math:`A`.
        sync_period: :math:`k \ge 1`, the fast steps between synchronizations.
        slow_step_size: :math:`\alpha \in [0, 1]`, how far the slow weights
            move towards the fast ones.
        reset_state: re-initialize the fast optimizer's state at each
            synchronization.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`LookaheadState`. Its ``update`` takes the gradients at
        ``params.fast`` and ``params`` as a :class:`LookaheadParams`, and
        returns updates of the same kind. ``init`` takes a
        :class:`LookaheadParams` (plain params are taken as the fast ones,
        with a warning).

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.lookahead(adamx.sgd(0.1), sync_period=2, slow_step_size=0.5)
        >>> params = adamx.LookaheadParams.init_synced(jnp.array([1.0]))
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params.fast)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> params.slow  # halfway from 1.0 to 0.64
        Array([0.82], dtype=float32)

    References:
        Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step
        back", https://arxiv.org/abs/1907.08610 (authors' code:
        https://github.com/michaelrzhang/lookahead)
    """
    check_transformation("fast_optimizer", fast_optimizer)
    _check_period("sync_period", sync_period)
    checks.check_range("slow_step_size", slow_step_size, 0.0, 1.0)
    checks.check_bool("reset_state", reset_state)
    alpha = slow_step_size

    def init_fn(params):
        fast = getattr(params, "fast", None)
        if fast is None:
            warnings.warn(
                "lookahead's init got params without a `fast` field; taking them "
                "as the fast params. Pass LookaheadParams.init_synced(params), "
                "which update needs.",
                stacklevel=2,
            )
            fast = params
        return LookaheadState(
            fast_state=fast_optimizer.init(fast),
            steps_since_sync=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, **extra_args):
        require_params("lookahead", params)
        if not (hasattr(params, "fast") and hasattr(params, "slow")):
            raise TypeError(
                "lookahead's update needs params as LookaheadParams(fast, slow) "
                "(LookaheadParams.init_synced(params) makes them), got params of "
                f"type {type(params).__name__}"
            )
        updates, fast_state = call_update(
            fast_optimizer, updates, state.fast_state, params.fast, extra_args
        )
        steps = state.steps_since_sync
        period = jnp.asarray(sync_period).astype(steps.dtype)
        sync = steps == period - 1

        # The last fast step lands on fast + u; at a sync the slow weights move
        # alpha of the way there, and the fast weights follow them.
        diff = jax.tree.map(
            lambda f, u, s: f + u - s, params.fast, updates, params.slow
        )
        slow_updates = jax.tree.map(
            lambda d, s: jnp.where(sync, _cast(alpha, d) * d, 0).astype(s.dtype),
            diff,
            params.slow,
        )
        fast_updates = jax.tree.map(
            lambda u, d: jnp.where(sync, u - _cast(1.0 - alpha, d) * d, u).astype(
                u.dtype
            ),
            updates,
            diff,
        )
        # In the class of the params (Optax's LookaheadParams too), so that
        # apply_updates sees two trees of one structure.
        if hasattr(params, "_replace"):
            new_updates = params._replace(fast=fast_updates, slow=slow_updates)
        else:
            new_updates = LookaheadParams(fast=fast_updates, slow=slow_updates)
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(
                lambda current, init: jnp.where(sync, init, current),
                fast_state,
                fresh,
            )
        return new_updates, LookaheadState(
            fast_state=fast_state,
            steps_since_sync=(steps + 1) % period,
        )

    traits = Traits(elementwise=traits_of(fast_optimizer).elementwise)
    return GradientTransformation(init_fn, update_fn, traits, derived=True)


# ------------------------------------------------------------------ measurements


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`."""

    measurement: dict[str, Any]  # {measure_name: measure(updates)}, its tree


def _check_measure(measure: Any) -> None:
    if not callable(measure):
        raise TypeError(
            "measure must be a callable of the updates that returns the "
            f"measurement, got {measure!r}"
        )


def snapshot(
    measure_name: str, measure: Callable[[Updates], ArrayTree]
) -> GradientTransformation:
    r"""Record a measurement of the updates in the state; pass them on unchanged.

    .. math:: u_t = g_t, \qquad S_t = \{\text{name}: m(g_t)\}

    Placed in a chain, it sees the updates as the stages before it left them,
    so a training loop can log, say, the norm before clipping without
    computing it again. Read it with ``optax.tree.get(state, measure_name)``
    or by walking the state to the :class:`SnapshotState`. ``init`` records
    :math:`m` of the params, so the state keeps its structure from the start.

    Args:
        measure_name: the key of the measurement in the state.
        measure: :math:`m`, a function of the updates that returns a tree of
            arrays.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`SnapshotState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.chain(
        ...     adamx.snapshot("norm", adamx.global_norm),
        ...     adamx.clip_by_global_norm(1.0),
        ... )
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> state[0].measurement["norm"]
        Array(5., dtype=float32)

    References:
        Optax's ``snapshot``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    if not isinstance(measure_name, str):
        raise TypeError(f"measure_name must be a str, got {measure_name!r}")
    _check_measure(measure)

    def init_fn(params):
        return SnapshotState({measure_name: measure(params)})

    def update_fn(updates, state, params=None, **extra_args):
        del state, params, extra_args
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init_fn, update_fn)


def _as_inexact(tree: ArrayTree) -> ArrayTree:
    """Each leaf as an array; booleans and integers in the default float dtype."""

    def leaf(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return x
        return x.astype(jax.dtypes.canonicalize_dtype(jnp.float64))

    return jax.tree.map(leaf, tree)


def measure_with_ema(
    measure: Callable[[Updates], ArrayTree],
    decay: jax.typing.ArrayLike,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
) -> GradientTransformation:
    r"""The exponential moving average of a measurement of the updates.

    .. math::
        m_t = \beta\, m_{t-1} + (1 - \beta)\, f(g_t), \qquad
        u_t = \begin{cases} m_t / (1 - \beta^t) & \text{debias} \\ m_t &
        \text{otherwise} \end{cases}

    Its output is the average, not updates to apply: it is meant for
    ``optax.monitor``, which records each measurement's output in its state,
    or for a loop that logs it. It is :func:`adamx.ema` of :math:`f(g_t)`,
    its state sized by :math:`f` of the params. A boolean or integer
    measurement (such as ``norm > threshold``) is averaged in the default
    float dtype, which its state has from ``init`` on (Optax's starts as the
    measurement's dtype and turns float at the first update; the numbers
    agree).

    Args:
        measure: :math:`f`, a function of the updates that returns a tree of
            arrays.
        decay: :math:`\beta \in [0, 1)`.
        debias: divide by :math:`1 - \beta^t`.
        accumulator_dtype: dtype of :math:`m`; ``None`` uses the
            measurement's.

    Returns:
        A :class:`~adamx.GradientTransformation` whose state is
        ``(EmptyState(), EmaState(count, ema))``, as Optax's is.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.measure_with_ema(adamx.global_norm, decay=0.5, debias=False)
        >>> state = tx.init(jnp.zeros(2))
        >>> avg, state = tx.update(jnp.array([3.0, 4.0]), state)
        >>> avg
        Array(2.5, dtype=float32)

    References:
        Optax's ``measure_with_ema``,
        https://optax.readthedocs.io/en/latest/api/transformations.html
    """
    _check_measure(measure)
    average = ema(decay, debias, accumulator_dtype)

    def init_fn(params):
        return average.init(_as_inexact(measure(params)))

    measured = GradientTransformation(init_fn, average.update)
    return chain(stateless(lambda updates, _: _as_inexact(measure(updates))), measured)


# ------------------------------------------------------------------ copies of params


def incremental_update(
    new_tensors: Params,
    old_tensors: Params,
    step_size: jax.typing.ArrayLike,
) -> Params:
    r"""Move a moving average of the params towards their latest value (Polyak).

    .. math:: \bar\theta_t = \tau\, \theta_t + (1 - \tau)\, \bar\theta_{t-1}

    Called once per step in the training loop, it keeps an exponential moving
    average of the params, the weights to evaluate (or an RL target network's,
    updated softly). ``None`` leaves stay ``None``; each leaf keeps the
    average's dtype.

    Args:
        new_tensors: :math:`\theta_t`, the latest params.
        old_tensors: :math:`\bar\theta_{t-1}`, the average so far.
        step_size: :math:`\tau \in [0, 1]`, the weight of the latest params.

    Returns:
        :math:`\bar\theta_t`, with the structure of ``old_tensors``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.incremental_update(jnp.array([1.0]), jnp.array([0.0]), 0.1)
        Array([0.1], dtype=float32)

    References:
        Polyak & Juditsky, 1992, "Acceleration of stochastic approximation by
        averaging", https://epubs.siam.org/doi/10.1137/0330046
    """
    checks.check_range("step_size", step_size, 0.0, 1.0)
    check_same_shapes("new_tensors", new_tensors, "old_tensors", old_tensors)
    tau = step_size

    def average(new: Any, old: Any) -> Any:
        if new is None:
            return None
        new, old = jnp.asarray(new), jnp.asarray(old)
        out = _cast(tau, old) * new.astype(old.dtype) + _cast(1.0 - tau, old) * old
        return out.astype(old.dtype)

    return jax.tree.map(average, new_tensors, old_tensors, is_leaf=lambda x: x is None)


def periodic_update(
    new_tensors: Params,
    old_tensors: Params,
    steps: jax.typing.ArrayLike,
    update_period: jax.typing.ArrayLike,
) -> Params:
    r"""Replace a copy of the params by their latest value every few steps.

    .. math:: \bar\theta_t = \begin{cases} \theta_t & t \bmod K = 0 \\
       \bar\theta_{t-1} & \text{otherwise} \end{cases}

    The hard-updated target network of DQN, or the slow copy some
    self-supervised methods compare against. Jittable: ``steps`` may be
    traced, and the choice is made on the device.

    Args:
        new_tensors: :math:`\theta_t`, the latest params.
        old_tensors: :math:`\bar\theta_{t-1}`, the copy; same structure,
            shapes and dtypes.
        steps: :math:`t`, the number of updates of the online params.
        update_period: :math:`K \ge 1`.

    Returns:
        :math:`\bar\theta_t`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.periodic_update(jnp.array([1.0]), jnp.array([0.0]), 10, 5)
        Array([1.], dtype=float32)

    References:
        Mnih et al., 2015, "Human-level control through deep reinforcement
        learning", https://www.nature.com/articles/nature14236

        Grill et al., 2020, "Bootstrap Your Own Latent",
        https://arxiv.org/abs/2006.07733
    """
    _check_period("update_period", update_period)
    check_same_shapes("new_tensors", new_tensors, "old_tensors", old_tensors)
    steps = jnp.asarray(steps)
    period = jnp.asarray(update_period).astype(steps.dtype)
    return jax.lax.cond(steps % period == 0, lambda: new_tensors, lambda: old_tensors)
