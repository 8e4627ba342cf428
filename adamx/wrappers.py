r"""Wrappers that change how a transformation runs, not what it computes.

``inject_hyperparams`` moves hyperparameters into the state, where they can be
read and changed between steps without recompiling. ``apply_if_finite`` skips
steps with non-finite gradients; ``dynamic_loss_scaling`` does the same for
float16 training with a scaled loss; ``MultiSteps`` accumulates gradients over
micro-steps; ``monitor`` records gradient and update norms in the state.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    OptState,
    is_schedule,
    safe_increment,
    tree_zeros_like,
)
from adamx.combine import call_update, check_transformation
from adamx.traits import Traits, traits_of
from adamx.transforms import ScaleByLearningRateState, global_norm

__all__ = [
    "ApplyIfFiniteState",
    "DynamicLossScaleState",
    "InjectHyperparamsState",
    "MonitorState",
    "MultiSteps",
    "MultiStepsState",
    "apply_if_finite",
    "dynamic_loss_scaling",
    "get_learning_rate",
    "inject_hyperparams",
    "loss_scale",
    "monitor",
    "set_hyperparams",
]


def _like(inner: Any, init: Any, update: Any) -> GradientTransformation:
    """A wrapper of ``inner``: element-wise (or per leaf) as ``inner`` is.

    Its stages are not ``inner``'s: a wrapper changes how they run (values
    from the state, skipped or accumulated steps), which no kernel knows.
    """
    return GradientTransformation(
        init,
        update,
        Traits(elementwise=traits_of(inner).elementwise),
        derived=True,
    )


def _tree_all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# ------------------------------------------------------------------ hyperparameters


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    hyperparams: dict[str, jax.Array]  # name -> shape=() value used at the last step
    inner_state: Any  # the wrapped optimizer's state


def _union_members(hint: Any) -> set[Any]:
    """The types a (possibly nested) union annotation admits."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_union_members(a) for a in typing.get_args(hint)))
    return {hint}


def _is_real_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        dtype = jnp.asarray(value).dtype
        return np.ndim(value) == 0 and (
            jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        )
    return isinstance(value, (int, float))


def _role(hint: Any, value: Any) -> str:
    """``"schedule"``, ``"number"`` or ``"static"``: what an argument becomes.

    Decided from the parameter's type (``hint``, resolved from the factory's
    annotations; ``None`` where it has none): a parameter that takes floats
    (``float``, ``ArrayLike``, ``ScalarOrSchedule``) is a hyperparameter, a
    number or a schedule of one; ``int``, ``bool``, dtypes, ``state_bits``,
    masks and other callables stay static. Without an annotation, as in
    Optax: numbers are hyperparameters and callables schedules.
    """
    if hint is not None and float not in _union_members(hint):
        return "static"
    if is_schedule(value):
        return "schedule"
    return "number" if _is_real_number(value) else "static"


def _type_hints(
    factory: Callable[..., Any], signature: inspect.Signature
) -> dict[str, Any]:
    """The factory's resolved annotations (a ``functools.partial``'s function's).

    Where one annotation cannot be resolved (a forward reference to a name
    the factory's module does not define), each is taken on its own, so that
    the others still decide; the unresolved one is left out.
    """
    while isinstance(factory, functools.partial):
        factory = factory.func
    try:
        return typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001 - resolved one by one below
        pass
    namespace = getattr(factory, "__globals__", {})
    hints = {}
    for name, param in signature.parameters.items():
        hint = param.annotation
        if hint is inspect.Parameter.empty:
            continue
        if isinstance(hint, str):
            try:
                hint = eval(hint, namespace)  # noqa: S307 - as get_type_hints does
            except Exception:  # noqa: BLE001 - this one decides by value
                continue
        hints[name] = hint
    return hints


def _name(factory: Callable[..., Any]) -> str:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return getattr(factory, "__name__", None) or repr(factory)


def inject_hyperparams(
    factory: Callable[..., GradientTransformation],
    static_args: str | tuple[str, ...] = (),
    hyperparam_dtype: Any | None = None,
) -> Callable[..., GradientTransformation]:
    r"""Keep an optimizer's numeric hyperparameters in its state.

    ``inject_hyperparams(adamx.adam)(learning_rate=1e-3)`` behaves like
    ``adamx.adam(1e-3)``, but ``state.hyperparams["learning_rate"]`` holds the
    rate, and a new value put there is used from the next step on, without
    recompiling. A schedule argument is evaluated each step:

    .. math:: h_t = s(t), \qquad (u_t, S_t) = f(h_t)(g_t, S_{t-1})

    and its current value is readable in ``state.hyperparams``. Each update is
    bitwise equal to the plain optimizer's in float32, given the same inputs:
    the transforms do their arithmetic on hyperparameters in the dtype of the
    computation whether the value is a Python float or an array. (Compiled
    into one program with the rest of a training step, the plain optimizer's
    hyperparameters are constants that XLA may fold into neighbouring
    arithmetic; that can move the last bit of a step.)

    Which arguments become hyperparameters is decided from the factory's
    signature, by the types its annotations resolve to: a parameter that takes
    a float (``float``, ``jax.typing.ArrayLike``, ``ScalarOrSchedule``) is
    one, given a number or a schedule of one (defaults the call leaves out
    included); everything else stays static: ``int`` and ``bool`` parameters,
    dtypes, ``state_bits``, masks, and callables that are not schedules, as do
    ``None`` values and the names in ``static_args``. A factory without
    annotations is read as Optax reads every factory: numbers are
    hyperparameters, callables schedules. Values are stored as strongly typed
    0-d arrays of ``hyperparam_dtype`` (default: float32 for floats, int32 for
    ints).

    To change a value between steps, use :func:`set_hyperparams`, which keeps
    the stored dtype: putting a Python float straight into the dict changes
    the array's type and makes ``jax.jit`` trace the step again.

    Args:
        factory: a function returning a :class:`~adamx.GradientTransformation`,
            such as :func:`adamx.adam`.
        static_args: names of numeric arguments to keep out of the state.
        hyperparam_dtype: dtype of float hyperparameters in the state.

    Returns:
        A function with the factory's arguments that returns a
        :class:`~adamx.GradientTransformation` with state
        :class:`InjectHyperparamsState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.inject_hyperparams(adamx.sgd)(learning_rate=0.1)
        >>> state = tx.init(jnp.zeros(2))
        >>> state = adamx.set_hyperparams(state, learning_rate=0.5)
        >>> tx.update(jnp.ones(2), state)[0]
        Array([-0.5, -0.5], dtype=float32)
    """
    if not callable(factory):
        raise TypeError(
            f"factory must be a callable returning a transformation, got {factory!r}"
        )
    if isinstance(static_args, str):
        static_args = (static_args,)
    if not (
        isinstance(static_args, (tuple, list))
        and all(isinstance(a, str) for a in static_args)
    ):
        raise TypeError(
            f"static_args must be a name or a sequence of names, got {static_args!r}"
        )
    hyperparam_dtype = checks.check_float_dtype("hyperparam_dtype", hyperparam_dtype)
    name = _name(factory)
    signature = inspect.signature(factory)
    hints = _type_hints(factory, signature)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    unknown = set(static_args) - set(signature.parameters)
    if unknown and not takes_any:
        raise ValueError(
            f"static_args names {sorted(unknown)}, which {name} does not take; "
            f"it takes {list(signature.parameters)}"
        )

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"inject_hyperparams({name}): {e}") from e
        bound.apply_defaults()
        values = dict(bound.arguments)
        schedules: dict[str, Any] = {}
        numeric: dict[str, Any] = {}
        static: dict[str, Any] = {}
        for arg, value in values.items():
            role = "static" if arg in static_args else _role(hints.get(arg), value)
            {"schedule": schedules, "number": numeric, "static": static}[role][arg] = (
                value
            )
        # Built once as the first step builds it: this checks every value (a
        # schedule's at step 0) at construction.
        first = {k: f(jnp.zeros([], jnp.int32)) for k, f in schedules.items()}
        built = factory(**static, **numeric, **first)
        check_transformation(f"the result of factory {name}", built)

        def as_stored(name: str, value: Any) -> jax.Array:
            value = jnp.asarray(value)
            if jnp.issubdtype(value.dtype, jnp.floating) or isinstance(
                numeric.get(name, schedules.get(name)), float
            ):
                dtype = hyperparam_dtype or jnp.float32
            else:
                dtype = jnp.int32
            return jnp.asarray(value, dtype=dtype)

        def current(count: jax.Array, hyperparams: dict) -> dict:
            out = dict(hyperparams)
            for name, schedule in schedules.items():
                out[name] = as_stored(name, schedule(count))
            return out

        def build(hyperparams: dict) -> GradientTransformation:
            return factory(**static, **hyperparams)

        def init_fn(params):
            count = jnp.zeros([], jnp.int32)
            hyperparams = {k: as_stored(k, v) for k, v in numeric.items()}
            hyperparams = current(count, hyperparams)
            return InjectHyperparamsState(
                count=count,
                hyperparams=hyperparams,
                inner_state=build(hyperparams).init(params),
            )

        def update_fn(updates, state, params=None, **extra_args):
            hyperparams = current(state.count, state.hyperparams)
            inner = build(hyperparams)
            updates, inner_state = call_update(
                inner, updates, state.inner_state, params, extra_args
            )
            return updates, InjectHyperparamsState(
                count=safe_increment(state.count),
                hyperparams=hyperparams,
                inner_state=inner_state,
            )

        return _like(built, init_fn, update_fn)

    wrapped.__name__ = name
    wrapped.__doc__ = factory.__doc__
    return wrapped


def _find_states(state: Any, kind: type) -> list:
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


# Ranges of the common hyperparameters, checked by set_hyperparams as the
# factories check them at construction.
_DECAYS = ("b1", "b2", "decay")
_NONNEGATIVE = ("learning_rate", "eps", "eps_root", "weight_decay", "momentum")


def _check_new_value(name: str, value: Any) -> None:
    if name in _DECAYS:
        checks.check_decay(name, value)
    elif name in _NONNEGATIVE:
        checks.check_nonnegative(name, value)
    else:
        checks.check_finite(name, value)


def set_hyperparams(state: OptState, **values: Any) -> OptState:
    """Return ``state`` with new hyperparameter values, keeping their stored dtypes.

    Finds every :class:`InjectHyperparamsState` in ``state`` (so it works on a
    chain or a wrapper around an injected optimizer) and replaces the named
    values. Each new value is cast to the dtype already stored, so a jitted
    step does not trace again. Values are checked as at construction (b1, b2
    and decay in [0, 1); learning rate, eps, weight decay and momentum >= 0;
    anything else finite). A name that no injected optimizer has raises
    ``KeyError``.

    Args:
        state: an optimizer state containing an :class:`InjectHyperparamsState`.
        **values: new values, e.g. ``learning_rate=1e-4``.

    Returns:
        The new state; ``state`` itself is not modified.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.inject_hyperparams(adamx.adam)(learning_rate=1e-3)
        >>> state = adamx.set_hyperparams(tx.init(jnp.zeros(2)), learning_rate=1e-4)
        >>> state.hyperparams["learning_rate"]
        Array(1.e-04, dtype=float32)
    """
    targets = _find_states(state, InjectHyperparamsState)
    if not targets:
        raise ValueError(
            "state holds no InjectHyperparamsState: wrap the optimizer "
            "with adamx.inject_hyperparams first"
        )
    known = set().union(*(t.hyperparams for t in targets))
    missing = set(values) - known
    if missing:
        raise KeyError(
            f"no injected hyperparameter named {sorted(missing)}; the state has "
            f"{sorted(known)}"
        )
    for name, value in values.items():
        _check_new_value(name, value)

    def replace(node: Any) -> Any:
        if isinstance(node, InjectHyperparamsState):
            hp = dict(node.hyperparams)
            for k, v in values.items():
                if k in hp:
                    hp[k] = jnp.asarray(v, dtype=hp[k].dtype)
            return node._replace(hyperparams=hp, inner_state=replace(node.inner_state))
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(replace(c) for c in node))
        if isinstance(node, tuple):
            return tuple(replace(c) for c in node)
        if isinstance(node, dict):
            return {k: replace(c) for k, c in node.items()}
        return node

    return replace(state)


def get_learning_rate(state: OptState) -> jax.Array:
    """The learning rate an optimizer used at its last step, read from its state.

    Works for every adamx optimizer (their last stage,
    :func:`~adamx.scale_by_learning_rate`, records it) and for
    :func:`inject_hyperparams` states; no rebuilding of the schedule is needed.
    Before the first step it is the rate the first step will use.

    Args:
        state: an optimizer state.

    Returns:
        A scalar float32 array.

    Raises:
        ValueError: if the state records no learning rate.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adamw(adamx.linear_schedule(1.0, 0.0, transition_steps=10))
        >>> params = jnp.zeros(2)
        >>> state = tx.init(params)
        >>> _, state = tx.update(jnp.ones(2), state, params)
        >>> _, state = tx.update(jnp.ones(2), state, params)
        >>> float(adamx.get_learning_rate(state))
        0.9
    """
    found = _find_states(state, ScaleByLearningRateState)
    if found:
        return found[0].learning_rate
    for injected in _find_states(state, InjectHyperparamsState):
        if "learning_rate" in injected.hyperparams:
            return jnp.asarray(injected.hyperparams["learning_rate"], jnp.float32)
    raise ValueError(
        "this state records no learning rate: it has no scale_by_learning_rate "
        "stage and no injected 'learning_rate'"
    )


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

    Args:
        opt: the inner optimizer.
        every_k_schedule: :math:`k`, an int >= 1 or a function of the number
            of real steps taken that returns one.
        use_grad_mean: average the micro-gradients (else sum them).
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
        accumulator_dtype: Any | None = None,
    ) -> None:
        check_transformation("opt", opt)
        if not callable(every_k_schedule):
            checks.check_positive_int("every_k_schedule", every_k_schedule)
        checks.check_bool("use_grad_mean", use_grad_mean)
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
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            inner_opt_state=self._opt.init(params),
            acc_grads=tree_zeros_like(params, self._acc_dtype),
        )

    def update(
        self,
        updates: Any,
        state: MultiStepsState,
        params: Any = None,
        **extra_args: Any,
    ) -> tuple[Any, MultiStepsState]:
        """Accumulate ``updates``; on the k-th call, step the inner optimizer."""
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
            )

        def do_accumulate(_):
            return jax.tree.map(jnp.zeros_like, updates), MultiStepsState(
                mini_step=state.mini_step + 1,
                gradient_step=state.gradient_step,
                inner_opt_state=state.inner_opt_state,
                acc_grads=acc,
            )

        return jax.lax.cond(last, do_step, do_accumulate, None)

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
