r"""Hyperparameters in the state: read and changed between steps, or scheduled.

:func:`inject_hyperparams` rebuilds a transformation at every step from values
kept in its state, so a training loop can read them and change them without
recompiling; a schedule passed for one is evaluated at the step count.
:func:`inject_stateful_hyperparams` does the same and also takes stateful
schedules (:class:`StatefulSchedule`): objects with their own state, kept in
the optimizer's state beside the values, that may read the extra arguments of
``update`` (a loss, say). :class:`WrappedSchedule` makes a plain schedule one.
:func:`set_hyperparams` and :func:`get_learning_rate` write and read the
values of either kind of state.

Both injectors decide which arguments become hyperparameters in the same way,
from the factory's annotations (see :func:`inject_hyperparams`).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import GradientTransformation, OptState, is_schedule, safe_increment
from adamx.combine import call_update, check_transformation
from adamx.transforms import ScaleByLearningRateState
from adamx.wrappers import _find_states, _like

__all__ = [
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "StatefulSchedule",
    "WrappedSchedule",
    "WrappedScheduleState",
    "get_learning_rate",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "set_hyperparams",
]


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    hyperparams: dict[str, jax.Array]  # name -> shape=() value used at the last step
    inner_state: Any  # the wrapped optimizer's state


class InjectStatefulHyperparamsState(NamedTuple):
    """State of :func:`inject_stateful_hyperparams`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    hyperparams: dict[str, jax.Array]  # name -> shape=() value used at the last step
    hyperparams_states: dict[str, Any]  # name -> its schedule's state, for the next
    inner_state: Any  # the wrapped optimizer's state


# ------------------------------------------------------------------ stateful schedules


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule with a state of its own: ``init``, ``update`` and a call.

    ``init()`` builds the schedule's state; ``schedule(state, **extra_args)``
    is the value at that state; ``update(state, **extra_args)`` the next
    state. The extra arguments are those given to the optimizer's ``update``
    (for instance the loss, as ``value=``), so the value may follow training.
    :func:`inject_stateful_hyperparams` keeps the state in its own; any object
    with these three methods is one (``isinstance`` checks for them).

    Example:
        >>> import adamx
        >>> isinstance(adamx.WrappedSchedule(lambda t: 0.1), adamx.StatefulSchedule)
        True
    """

    def init(self) -> Any:
        """The schedule's first state."""
        ...

    def update(self, state: Any, **extra_args: Any) -> Any:
        """The state after ``state``."""
        ...

    def __call__(self, state: Any, **extra_args: Any) -> jax.typing.ArrayLike:
        """The value at ``state``."""
        ...


class WrappedScheduleState(NamedTuple):
    """State of :class:`WrappedSchedule`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far


class WrappedSchedule:
    r"""A plain schedule as a :class:`StatefulSchedule`: its state is the step count.

    .. math:: v(c) = s(c), \qquad c_0 = 0, \quad c \leftarrow c + 1

    with :math:`s` = ``schedule_fn``. The count saturates at the int32
    maximum rather than wrapping. Extra arguments are accepted and ignored.
    :func:`inject_stateful_hyperparams` wraps every plain schedule it is
    given in one of these.

    Args:
        schedule_fn: a schedule ``step -> value``.

    Example:
        >>> import adamx
        >>> s = adamx.WrappedSchedule(adamx.linear_schedule(1.0, 0.0, 4))
        >>> state = s.init()
        >>> float(s(state)), float(s(s.update(state)))
        (1.0, 0.75)
    """

    def __init__(self, schedule_fn: Callable[[jax.Array], jax.typing.ArrayLike]):
        if not is_schedule(schedule_fn):
            raise TypeError(
                "schedule_fn must be a schedule, a callable step -> value, got "
                f"{schedule_fn!r} of type {type(schedule_fn).__name__}"
            )
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        """The count before the first step: 0."""
        return WrappedScheduleState(count=jnp.zeros([], jnp.int32))

    def update(
        self, state: WrappedScheduleState, **extra_args: Any
    ) -> WrappedScheduleState:
        """The count after one more step."""
        del extra_args
        return WrappedScheduleState(count=safe_increment(state.count))

    def __call__(
        self, state: WrappedScheduleState, **extra_args: Any
    ) -> jax.typing.ArrayLike:
        """The schedule's value at the count in ``state``."""
        del extra_args
        return self.schedule_fn(state.count)

    def __repr__(self) -> str:
        return f"WrappedSchedule({self.schedule_fn!r})"


# ------------------------------------------------------------------ reading a factory


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


class _Call(NamedTuple):
    """One call of an injected factory: its arguments, sorted by what they become."""

    factory: Callable[..., GradientTransformation]
    static: dict[str, Any]  # passed to the factory as given at every step
    numeric: dict[str, Any]  # numbers, kept in the state
    schedules: dict[str, Any]  # schedules (plain or stateful), evaluated each step
    dtype: Any  # dtype of float values in the state; None: float32

    def stored(self, name: str, value: Any) -> jax.Array:
        """``value`` as a strongly typed 0-d array: float, else int32."""
        value = jnp.asarray(value)
        if jnp.issubdtype(value.dtype, jnp.floating) or isinstance(
            self.numeric.get(name, self.schedules.get(name)), float
        ):
            dtype = self.dtype or jnp.float32
        else:
            dtype = jnp.int32
        return jnp.asarray(value, dtype=dtype)

    def build(self, hyperparams: dict[str, Any]) -> GradientTransformation:
        """The factory's transformation with these values."""
        return self.factory(**self.static, **hyperparams)


class _Injector(NamedTuple):
    """A factory read once: its signature, annotations and static names."""

    factory: Callable[..., GradientTransformation]
    name: str
    signature: inspect.Signature
    hints: dict[str, Any]
    static_args: tuple[str, ...]
    dtype: Any

    def split(self, caller: str, args: tuple, kwargs: dict[str, Any]) -> _Call:
        """Bind a call's arguments, defaults included, and sort them."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{caller}({self.name}): {e}") from e
        bound.apply_defaults()
        sorted_args: dict[str, dict[str, Any]] = {
            "schedule": {},
            "number": {},
            "static": {},
        }
        for arg, value in bound.arguments.items():
            if arg in self.static_args:
                role = "static"
            else:
                role = _role(self.hints.get(arg), value)
            sorted_args[role][arg] = value
        return _Call(
            self.factory,
            sorted_args["static"],
            sorted_args["number"],
            sorted_args["schedule"],
            self.dtype,
        )


def _read_factory(
    arg: str,
    factory: Callable[..., GradientTransformation],
    static_args: str | tuple[str, ...],
    hyperparam_dtype: Any,
) -> _Injector:
    """Check an injector's arguments and read the factory (named ``arg``) once."""
    if not callable(factory):
        raise TypeError(
            f"{arg} must be a callable returning a transformation, got {factory!r}"
        )
    if isinstance(static_args, str):
        static_args = (static_args,)
    if not (
        isinstance(static_args, (tuple, list, set, frozenset))
        and all(isinstance(a, str) for a in static_args)
    ):
        raise TypeError(
            f"static_args must be a name or a sequence of names, got {static_args!r}"
        )
    dtype = checks.check_float_dtype("hyperparam_dtype", hyperparam_dtype)
    name = _name(factory)
    signature = inspect.signature(factory)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    unknown = set(static_args) - set(signature.parameters)
    if unknown and not takes_any:
        raise ValueError(
            f"static_args names {sorted(unknown)}, which {name} does not take; "
            f"it takes {list(signature.parameters)}"
        )
    hints = _type_hints(factory, signature)
    return _Injector(factory, name, signature, hints, tuple(static_args), dtype)


# ------------------------------------------------------------------ injectors


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
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
    bitwise equal to the plain optimizer's in float32, given the same inputs,
    when run op by op: the transforms do their arithmetic on hyperparameters in
    the dtype of the computation whether the value is a Python float or an
    array. (Compiled, alone or with the rest of a training step, the plain
    optimizer's hyperparameters are constants that XLA may fold into
    neighbouring arithmetic, in ways that depend on its code generation; that
    can move the last bit of a step. The test suite finds the compiled steps
    bitwise equal too on its problems, with XLA's default flags.)

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
    ints; Optax's default is the params' widest float dtype, which rounds a
    learning rate to bfloat16 for bfloat16 params).

    To change a value between steps, use :func:`set_hyperparams`, which keeps
    the stored dtype: putting a Python float straight into the dict changes
    the array's type and makes ``jax.jit`` trace the step again.

    Optax's ``inject_hyperparams`` also takes stateful schedules and keeps
    their states, in an ``InjectStatefulHyperparamsState``; here that is
    :func:`inject_stateful_hyperparams`, and a stateful schedule given to
    this one is refused.

    Args:
        inner_factory: a function returning a :class:`~adamx.GradientTransformation`,
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
    injector = _read_factory(
        "inner_factory", inner_factory, static_args, hyperparam_dtype
    )

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        call = injector.split("inject_hyperparams", args, kwargs)
        for arg, schedule in call.schedules.items():
            if isinstance(schedule, StatefulSchedule):
                raise TypeError(
                    f"{arg} is a stateful schedule ({schedule!r}); inject it "
                    "with adamx.inject_stateful_hyperparams, which keeps its state"
                )
        # Built once as the first step builds it: this checks every value (a
        # schedule's at step 0) at construction.
        first = {k: f(jnp.zeros([], jnp.int32)) for k, f in call.schedules.items()}
        built = call.build({**call.numeric, **first})
        check_transformation(f"the result of factory {injector.name}", built)

        def current(count: jax.Array, hyperparams: dict) -> dict:
            out = dict(hyperparams)
            for name, schedule in call.schedules.items():
                out[name] = call.stored(name, schedule(count))
            return out

        def init_fn(params):
            count = jnp.zeros([], jnp.int32)
            hyperparams = {k: call.stored(k, v) for k, v in call.numeric.items()}
            hyperparams = current(count, hyperparams)
            return InjectHyperparamsState(
                count=count,
                hyperparams=hyperparams,
                inner_state=call.build(hyperparams).init(params),
            )

        def update_fn(updates, state, params=None, **extra_args):
            hyperparams = current(state.count, state.hyperparams)
            updates, inner_state = call_update(
                call.build(hyperparams), updates, state.inner_state, params, extra_args
            )
            return updates, InjectHyperparamsState(
                count=safe_increment(state.count),
                hyperparams=hyperparams,
                inner_state=inner_state,
            )

        return _like(built, init_fn, update_fn)

    wrapped.__name__ = injector.name
    wrapped.__doc__ = inner_factory.__doc__
    return wrapped


def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | tuple[str, ...] = (),
    hyperparam_dtype: Any | None = None,
) -> Callable[..., GradientTransformation]:
    r"""Keep hyperparameters in the state, driven by schedules that have state too.

    As :func:`inject_hyperparams`, and a schedule argument may also be a
    :class:`StatefulSchedule` :math:`\sigma` with state :math:`z`:

    .. math::
        h_t = \sigma(z_t;\, a_t), \qquad z_{t+1} = \sigma.\mathrm{update}(z_t;\, a_t),
        \qquad (u_t, S_t) = f(h_t)(g_t, S_{t-1})

    with :math:`z_0` = ``sigma.init()`` and :math:`a_t` the extra keyword
    arguments of the step's ``update`` call (a loss as ``value=``, say), which
    reach the schedule as they reach the optimizer. A plain schedule
    :math:`s` is wrapped in a :class:`WrappedSchedule`, so it gives
    :math:`h_t = s(t)` as under :func:`inject_hyperparams`. Each schedule's
    state sits in ``state.hyperparams_states`` under its argument's name, so
    it is saved and restored with the rest of the state (by
    :func:`adamx.checkpoint.save`, say) and a restored run goes on where it
    stopped. The value a schedule gave at the last step is in
    ``state.hyperparams``; numbers there may be changed with
    :func:`set_hyperparams`, while scheduled ones are computed again at each
    step.

    Arguments are read and stored as :func:`inject_hyperparams` reads and
    stores them (the same machinery). Optax marks this name deprecated in
    favour of its ``inject_hyperparams``, which there returns this state;
    here :func:`inject_hyperparams` keeps the smaller
    :class:`InjectHyperparamsState`, so this is the injector for stateful
    schedules and warns of nothing. Float values are stored as float32 unless
    ``hyperparam_dtype`` says otherwise, where Optax uses the params' widest
    float dtype.

    Args:
        inner_factory: a function returning a
            :class:`~adamx.GradientTransformation`, such as :func:`adamx.adam`.
        static_args: names of numeric arguments to keep out of the state.
        hyperparam_dtype: dtype of float hyperparameters in the state.

    Returns:
        A function with the factory's arguments that returns a
        :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`InjectStatefulHyperparamsState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> class HalveOnPlateau:  # a stateful schedule: halve when the loss rises
        ...     def init(self):
        ...         return (jnp.float32(0.1), jnp.float32(jnp.inf))
        ...     def update(self, state, value=jnp.inf, **extra_args):
        ...         rate, best = state
        ...         return (jnp.where(value > best, rate / 2, rate),
        ...                 jnp.minimum(best, value))
        ...     def __call__(self, state, **extra_args):
        ...         return state[0]
        >>> tx = adamx.inject_stateful_hyperparams(adamx.sgd)(HalveOnPlateau())
        >>> state = tx.init(jnp.zeros(2))
        >>> for loss in (3.0, 2.0, 2.5, 1.0):
        ...     _, state = tx.update(jnp.ones(2), state, value=loss)
        >>> float(state.hyperparams["learning_rate"])
        0.05

    References:
        Optax's ``optax.inject_stateful_hyperparams``,
        https://optax.readthedocs.io/en/latest/api/optimizer_schedules.html
    """
    injector = _read_factory(
        "inner_factory", inner_factory, static_args, hyperparam_dtype
    )

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        call = injector.split("inject_stateful_hyperparams", args, kwargs)
        schedules = {
            k: f if isinstance(f, StatefulSchedule) else WrappedSchedule(f)
            for k, f in call.schedules.items()
        }

        def first_values(states: dict[str, Any]) -> dict[str, jax.Array]:
            return {k: call.stored(k, f(states[k])) for k, f in schedules.items()}

        # Built once with the values of the first step, as given, to check them.
        first = {k: f(f.init()) for k, f in schedules.items()}
        built = call.build({**call.numeric, **first})
        check_transformation(f"the result of factory {injector.name}", built)

        def init_fn(params):
            states = {k: f.init() for k, f in schedules.items()}
            values = {k: call.stored(k, v) for k, v in call.numeric.items()}
            values.update(first_values(states))
            return InjectStatefulHyperparamsState(
                count=jnp.zeros([], jnp.int32),
                hyperparams=values,
                hyperparams_states=states,
                inner_state=call.build(values).init(params),
            )

        def update_fn(updates, state, params=None, **extra_args):
            old = state.hyperparams_states
            values = dict(state.hyperparams)
            for k, f in schedules.items():
                values[k] = call.stored(k, f(old[k], **extra_args))
            states = {k: f.update(old[k], **extra_args) for k, f in schedules.items()}
            updates, inner_state = call_update(
                call.build(values), updates, state.inner_state, params, extra_args
            )
            return updates, InjectStatefulHyperparamsState(
                count=safe_increment(state.count),
                hyperparams=values,
                hyperparams_states=states,
                inner_state=inner_state,
            )

        return _like(built, init_fn, update_fn)

    wrapped.__name__ = injector.name
    wrapped.__doc__ = inner_factory.__doc__
    return wrapped


# ------------------------------------------------------------------ reading and writing

_INJECTED = (InjectHyperparamsState, InjectStatefulHyperparamsState)

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

    Finds every :class:`InjectHyperparamsState` and
    :class:`InjectStatefulHyperparamsState` in ``state`` (so it works on a
    chain or a wrapper around an injected optimizer) and replaces the named
    values. Each new value is cast to the dtype already stored, so a jitted
    step does not trace again. Values are checked as at construction (b1, b2
    and decay in [0, 1); learning rate, eps, weight decay and momentum >= 0;
    anything else finite). A name that no injected optimizer has raises
    ``KeyError``. A scheduled value is computed again at the next step, so
    setting it changes nothing.

    Args:
        state: an optimizer state containing an injected one.
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
    targets = _find_states(state, _INJECTED)
    if not targets:
        raise ValueError(
            "state holds no InjectHyperparamsState or InjectStatefulHyperparamsState: "
            "wrap the optimizer with adamx.inject_hyperparams first"
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
        if isinstance(node, _INJECTED):
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
    :func:`inject_hyperparams` and :func:`inject_stateful_hyperparams`
    states; no rebuilding of the schedule is needed. Before the first step it
    is the rate the first step will use.

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
        return found[0].rate
    for injected in _find_states(state, _INJECTED):
        if "learning_rate" in injected.hyperparams:
            return jnp.asarray(injected.hyperparams["learning_rate"], jnp.float32)
    raise ValueError(
        "this state records no learning rate: it has no scale_by_learning_rate "
        "stage and no injected 'learning_rate'"
    )
