r"""Schedule-free learning: no learning-rate decay, the average of the iterates.

:func:`schedule_free` wraps a base optimizer (SGD, or Adam without its first
moment); :func:`schedule_free_adamw` and :func:`schedule_free_sgd` are the
authors' two optimizers. Training steps at :math:`y`, evaluation happens at
:math:`x`, which :func:`schedule_free_eval_params` computes from the state and
the params.

The third sequence, :math:`z`, is kept in the state, as Optax and the
authors keep it; the step reads :math:`z - y` from it and the params, so a
params change made outside the optimizer (a wrapper, a projection) enters the
next step as it does theirs. It is kept in the params' dtype (or
``state_dtype``), whatever ``state_bits`` says: ``state_bits`` stores the base
optimizer's moments (AdamW's second moment). :math:`z` is where the params are
headed: the first step sets :math:`y_1 = z_1` (:math:`c_1 = 1`), so a ``z``
stored in fewer bits than the params rounds the params to its precision, and
later steps add to :math:`z - y` increments of about :math:`1/t` of its size,
which a block code (8 or 4 bits) or bfloat16 would round away once :math:`t`
outgrows its precision. A ``state_dtype`` narrower than the params rounds them
in the same way (as in Optax); keep it at the params' precision.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.adaptive import scale_by_rms
from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    is_schedule,
    leafwise,
    require_params,
    safe_increment,
)
from adamx.combine import call_update, chain, check_transformation
from adamx.lowbit import is_quantized
from adamx.moments import at_least_float32
from adamx.optimizers import sgd
from adamx.storage import (
    Moment,
    Storage,
    cast,
    check_moment_tree,
    load,
    real_dtype,
    store_like,
    update_moments,
)
from adamx.traits import Stage, Traits, traits_of
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "ScheduleFreeState",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]

#: The sequence :math:`z_t`; ``state_dtype`` sets its dtype.
Z = Moment("z", signed=True, dtype="state_dtype")
#: The fields of ``optax.contrib.ScheduleFreeState``, read by duck typing.
_OPTAX_FIELDS = ("b1", "weight_sum", "step_count", "max_lr", "z")


class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    b1: jax.Array  # shape=(), default float: the b1 of the last step
    weight_sum: jax.Array  # shape=(), default float: sum of the averaging weights
    max_lr: jax.Array  # shape=(), default float: largest learning rate so far
    base_optimizer_state: Any  # the base optimizer's state
    z: Any  # like params, in state_dtype (default the params'): z_t


def _scalar_dtype() -> Any:
    """The dtype of the scalar state: float64 under ``jax_enable_x64``."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check_b1(b1: Any) -> None:
    # b1 = 0 makes y = z: x, the point to evaluate, is lost.
    checks.check_range("b1", b1, 0.0, 1.0, low_open=True, high_open=True)


def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Make a base optimizer schedule-free: interpolate, step, average.

    With :math:`u_t` the base optimizer's update (for SGD
    :math:`-\gamma_t \nabla f(y_t)`), at step :math:`t \ge 1`

    .. math::
        \begin{aligned}
        z_{t} &= z_{t-1} + u_t, \qquad
        x_{t} = (1 - c_t)\, x_{t-1} + c_t\, z_{t}, \qquad
        y_{t} = \beta_1 x_{t} + (1 - \beta_1)\, z_{t}, \\
        c_t &= \frac{w_t}{\sum_{i \le t} w_i}, \qquad
        w_t = \left(\max_{i \le t} \gamma_i\right)^{r}
        \end{aligned}

    starting from :math:`x_0 = y_0 = z_0`, the initial params. The params are
    :math:`y`, where gradients are taken; evaluate at :math:`x`
    (:func:`schedule_free_eval_params`). :math:`\gamma_t` is ``learning_rate``
    at step :math:`t` (a schedule is called with :math:`t = 1, 2, \dots`),
    :math:`r` is ``weight_lr_power`` and :math:`\beta_1` is ``b1``. The state
    keeps :math:`z_t`, and the step reads

    .. math::
        y_t = y_{t-1} + c_t\,(z_{t-1} - y_{t-1})
              + \bigl(1 - \beta_1 (1 - c_t)\bigr) u_t,

    the authors' in-place form (their ``lerp`` and ``add``), so it needs the
    params; :math:`x_t = y_t - \frac{1 - \beta_1}{\beta_1} (z_t - y_t)`. The
    base optimizer should have no momentum of its own (Adam with ``b1=0``, plain
    SGD).

    Where the base optimizer has a learning-rate schedule of its own, it is
    called with its own step count, :math:`t - 1`; to evaluate both at the same
    step, as the authors do, give the base ``lambda n: schedule(n + 1)``
    (:func:`schedule_free_adamw` and :func:`schedule_free_sgd` do).

    Args:
        base_optimizer: the optimizer whose updates :math:`u_t` move :math:`z`.
        learning_rate: :math:`\gamma_t`, a number or a schedule; it weighs the
            average (the base optimizer has its own).
        b1: :math:`\beta_1 \in (0, 1)`, the interpolation between :math:`x`
            and :math:`z`.
        weight_lr_power: :math:`r \ge 0`; 0 weighs every step alike.
        state_dtype: dtype of :math:`z` (``None``: the params'). The base
            optimizer's moments are stored as its own arguments say
            (``state_bits``).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScheduleFreeState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.schedule_free(adamx.sgd(0.5), learning_rate=0.5, b1=0.5)
        >>> params = jnp.array([2.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(params, state, params)  # f = p**2 / 2
        ...     params = adamx.apply_updates(params, updates)
        >>> params, adamx.schedule_free_eval_params(state, params)
        (Array([0.625], dtype=float32), Array([0.75], dtype=float32))

    References:
        Defazio et al., 2024, "The Road Less Scheduled",
        https://arxiv.org/abs/2405.15682; reference code
        https://github.com/facebookresearch/schedule_free
    """
    check_transformation("base_optimizer", base_optimizer)
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    _check_b1(b1)
    checks.check_nonnegative("weight_lr_power", weight_lr_power)
    # z is not stored in fewer bits: see the module docstring.
    storage = Storage.parse(32, state_dtype=state_dtype)
    scheduled = is_schedule(learning_rate)

    def init_fn(params: Params) -> ScheduleFreeState:
        sd = _scalar_dtype()
        # Arrays of their own, so that a donated state steps.
        return ScheduleFreeState(
            count=jnp.zeros([], jnp.int32),
            b1=jnp.array(b1).astype(sd),
            weight_sum=jnp.zeros([], sd),
            max_lr=jnp.zeros([], sd),
            base_optimizer_state=base_optimizer.init(params),
            # z_0 = y_0, in the storage's dtype (complex for complex params).
            z=jax.tree.map(
                lambda z, p: jnp.array(p, z.dtype, copy=True),
                storage.init(Z, params),
                params,
            ),
        )

    def update_fn(
        updates: Any,
        state: ScheduleFreeState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Any, ScheduleFreeState]:
        check_moment_tree(updates, state.z, "state.z")
        require_params("schedule_free", params)
        check_moment_tree(params, state.z, "state.z", what="params")
        sd = _scalar_dtype()
        count = safe_increment(state.count)
        rate: Any = learning_rate
        lr = jnp.asarray(rate(count) if scheduled else rate).astype(sd)
        b1_ = jnp.asarray(b1).astype(sd)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr ** jnp.asarray(weight_lr_power).astype(sd)
        weight_sum = state.weight_sum + weight
        # 0 / 0 while the rate is still 0 (warm-up from 0): no averaging yet.
        positive = weight_sum > 0
        c = jnp.where(positive, weight / jnp.where(positive, weight_sum, 1), 0)
        c = jnp.where(jnp.isnan(weight_sum), jnp.nan, c)

        base_updates, base_state = call_update(
            base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )

        def leaf(u: jax.Array, y: jax.Array, z: Any) -> tuple:
            u = jnp.asarray(u)
            ct = at_least_float32(u.dtype, ())
            real = real_dtype(ct)
            c_, b = c.astype(real), b1_.astype(real)

            def body(u_: jax.Array, z_: jax.Array) -> tuple:
                u_ = u_.astype(ct)
                d = z_ - jnp.asarray(y).astype(ct)  # z_{t-1} - y_{t-1}
                step = c_ * d + (1 - b * (1 - c_)) * u_  # y_t - y_{t-1}
                return step, z_ + u_  # z_t

            step, new = update_moments(body, [ct], u, z)
            return cast(step, u.dtype), new

        out, new_z = leafwise(leaf, 2, base_updates, params, state.z)
        new_z = jax.tree.map(store_like, new_z, state.z, is_leaf=is_quantized)
        return out, ScheduleFreeState(
            count=count,
            b1=b1_,
            weight_sum=weight_sum,
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=new_z,
        )

    base = traits_of(base_optimizer)
    flags = (base.elementwise, storage.elementwise)
    elementwise = (
        False if False in flags else (True if all(f is True for f in flags) else None)
    )
    stages = None
    if base.stages is not None:
        stage = Stage(
            "schedule_free",
            {
                "learning_rate": learning_rate,
                "b1": b1,
                "weight_lr_power": weight_lr_power,
                "storage": storage,
            },
        )
        where = ScheduleFreeState._fields.index("base_optimizer_state")
        stages = (stage, *(s._replace(path=(where, *s.path)) for s in base.stages))
    # Per leaf because of its own storage (block codes): it refuses a flat
    # layout itself; per leaf because of the base: the base refuses it.
    return GradientTransformationExtraArgs(
        init_fn,
        update_fn,
        Traits(elementwise=elementwise, stages=stages),
        derived=storage.elementwise is not False,
    )


def _warmup(learning_rate: jax.typing.ArrayLike, warmup_steps: int | None) -> Any:
    r"""The authors' warm-up: :math:`\gamma \min(1, t / T)` at step :math:`t \ge 1`."""
    if not warmup_steps:
        return learning_rate

    def schedule(t: jax.Array) -> Any:
        frac = jnp.minimum(jnp.asarray(t).astype(_scalar_dtype()) / warmup_steps, 1)
        return learning_rate * frac

    return schedule


def _base_rate(rate: ScalarOrSchedule) -> ScalarOrSchedule:
    """The rate for a base optimizer counting from 0: step ``n`` is step ``n + 1``."""
    if not callable(rate):
        return rate
    return lambda n: rate(n + 1)


def _check_warmup(warmup_steps: Any) -> None:
    if warmup_steps is not None:
        checks.check_positive_int("warmup_steps", warmup_steps, allow_zero=True)


def schedule_free_adamw(
    learning_rate: jax.typing.ArrayLike = 0.0025,
    warmup_steps: int | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Schedule-free AdamW (Defazio et al., 2024): AdamW without its momentum.

    :func:`schedule_free` over AdamW with :math:`\beta_1 = 0`: at step
    :math:`t \ge 1`,

    .. math::
        \begin{aligned}
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2, \qquad
        u_t = -\gamma_t \left(\frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
        + \lambda\, y_{t-1}\right), \\
        \gamma_t &= \gamma \min(1, t / T)
        \end{aligned}

    with :math:`g_t` the gradient at the params :math:`y_{t-1}`, :math:`T` the
    warm-up, then :math:`z`, :math:`x`, :math:`y` as :func:`schedule_free`
    says, with weights :math:`w_t = (\max_{i \le t} \gamma_i)^r`. Evaluate at
    :func:`schedule_free_eval_params`.

    This is the authors' ``schedulefree.AdamWScheduleFree`` (with its ``r=0``).
    ``optax.contrib.schedule_free_adamw`` is the same without warm-up; with
    warm-up it scales the AdamW step by the rate of the step before
    (:math:`\gamma_{t-1}`, 0 at the first step), while weighing the average by
    :math:`\gamma_t`; here both use :math:`\gamma_t`, as the authors do.
    ``warmup_steps=0`` is no warm-up, as for the authors (Optax's schedule
    would stay at 0).

    Args:
        learning_rate: :math:`\gamma \ge 0`, the rate after warm-up.
        warmup_steps: :math:`T \ge 0`, the steps of the linear warm-up;
            ``None`` or 0: none.
        b1: :math:`\beta_1 \in (0, 1)`, the interpolation of :math:`y`.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon \ge 0`, added to the root.
        weight_decay: :math:`\lambda \ge 0`, decay of the params, scaled by the
            rate (as in ``torch.optim.AdamW``).
        weight_lr_power: :math:`r \ge 0`.
        state_dtype: dtype of :math:`z` (``None``: the params').
        state_bits: how :math:`v` is stored: 32 (the params' dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).
            :math:`z` stays in ``state_dtype`` (see :mod:`adamx.schedule_free`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScheduleFreeState`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.schedule_free_adamw(1.0)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(adamx.schedule_free_eval_params(state, params)):.3f}")
        1.728

    References:
        Defazio et al., 2024, "The Road Less Scheduled",
        https://arxiv.org/abs/2405.15682; reference code
        https://github.com/facebookresearch/schedule_free
        (``schedulefree/adamw_schedulefree.py``)
    """
    checks.check_nonnegative("learning_rate", learning_rate)
    _check_warmup(warmup_steps)
    _check_b1(b1)
    checks.check_decay("b2", b2)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("weight_decay", weight_decay)
    rate = _warmup(learning_rate, warmup_steps)
    base = chain(
        scale_by_rms(
            decay=b2,
            eps=eps,
            eps_in_sqrt=False,
            bias_correction=True,
            state_bits=state_bits,
        ),
        add_decayed_weights(weight_decay),
        learning_rate_stage(_base_rate(rate)),
    )
    return schedule_free(base, rate, b1, weight_lr_power, state_dtype)


def schedule_free_sgd(
    learning_rate: jax.typing.ArrayLike = 1.0,
    warmup_steps: int | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Schedule-free SGD (Defazio et al., 2024): SGD with averaging for momentum.

    :func:`schedule_free` over SGD: at step :math:`t \ge 1`

    .. math::
        u_t = -\gamma_t \left(g_t + \lambda\, y_{t-1}\right), \qquad
        \gamma_t = \gamma \min(1, t / T)

    with :math:`g_t` the gradient at the params :math:`y_{t-1}`, then
    :math:`z`, :math:`x`, :math:`y` as :func:`schedule_free` says. The weight
    decay is an L2 term added to the gradient, as in the authors'
    ``schedulefree.SGDScheduleFree`` (with its ``r=0``), which this follows;
    as for :func:`schedule_free_adamw`, ``optax.contrib.schedule_free_sgd``
    equals it without warm-up, and with warm-up steps by the rate of the step
    before; here, as for the authors, both use :math:`\gamma_t`.

    Args:
        learning_rate: :math:`\gamma \ge 0`, the rate after warm-up.
        warmup_steps: :math:`T \ge 0`, the steps of the linear warm-up;
            ``None`` or 0: none.
        b1: :math:`\beta_1 \in (0, 1)`, the authors' ``momentum``.
        weight_decay: :math:`\lambda \ge 0`; ``None``: none.
        weight_lr_power: :math:`r \ge 0`.
        state_dtype: dtype of :math:`z` (``None``: the params').

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScheduleFreeState`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.schedule_free_sgd(0.1)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(adamx.schedule_free_eval_params(state, params)):.3f}")
        5.840

    References:
        Defazio et al., 2024, "The Road Less Scheduled",
        https://arxiv.org/abs/2405.15682; reference code
        https://github.com/facebookresearch/schedule_free
        (``schedulefree/sgd_schedulefree.py``)
    """
    checks.check_nonnegative("learning_rate", learning_rate)
    _check_warmup(warmup_steps)
    _check_b1(b1)
    if weight_decay is not None:
        checks.check_nonnegative("weight_decay", weight_decay)
    rate = _warmup(learning_rate, warmup_steps)
    base = sgd(_base_rate(rate))
    if weight_decay is not None:
        base = chain(add_decayed_weights(weight_decay), base)
    return schedule_free(base, rate, b1, weight_lr_power, state_dtype)


def _is_optax_state(node: Any) -> bool:
    fields = getattr(node, "_fields", ())
    return type(node).__name__ == "ScheduleFreeState" and all(
        f in fields for f in _OPTAX_FIELDS
    )


def _find_schedule_free_states(state: Any) -> list:
    found: list = []

    def visit(node: Any) -> None:
        if isinstance(node, ScheduleFreeState) or _is_optax_state(node):
            found.append(node)
            return
        if isinstance(node, (tuple, list)):  # NamedTuples included
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    return found


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    r"""The params to evaluate at: :math:`x_t`, from the state and :math:`y_t`.

    .. math::
        x_t = y_t - \frac{1 - \beta_1}{\beta_1}\,(z_t - y_t)

    The :class:`ScheduleFreeState` is found wherever it sits in ``state``: the
    optimizer's own, or inside a chain or a wrapper (:func:`adamx.inject_hyperparams`,
    :class:`adamx.MultiSteps`, :func:`adamx.sharded`, :func:`adamx.apply_if_finite`,
    and Optax's wrappers, whose states are tuples too). A state of
    ``optax.contrib.schedule_free`` is read as Optax keeps it,
    :math:`x_t = (y_t - (1 - \beta_1) z_t) / \beta_1`.

    Args:
        state: the state of a schedule-free optimizer, or of a wrapper or
            chain holding exactly one.
        params: the params :math:`y_t` the training step returned.

    Returns:
        :math:`x_t`, a tree like ``params`` in its dtypes.

    Raises:
        ValueError: if ``state`` holds no schedule-free state, or several.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.inject_hyperparams(adamx.schedule_free_sgd)(learning_rate=0.5)
        >>> params = jnp.array([2.0])
        >>> state = tx.init(params)
        >>> updates, state = tx.update(params, state, params)
        >>> params = adamx.apply_updates(params, updates)
        >>> params, adamx.schedule_free_eval_params(state, params)
        (Array([1.], dtype=float32), Array([1.], dtype=float32))

    References:
        Defazio et al., 2024, "The Road Less Scheduled",
        https://arxiv.org/abs/2405.15682
    """
    found = _find_schedule_free_states(state)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ValueError(
            f"schedule_free_eval_params needs a state holding one "
            f"ScheduleFreeState (of adamx.schedule_free or "
            f"optax.contrib.schedule_free), found {what} in a state of type "
            f"{type(state).__name__}; pass the state of the schedule-free "
            "optimizer, or of a wrapper around it"
        )
    sf = found[0]
    b1 = jnp.asarray(sf.b1)
    if not isinstance(sf, ScheduleFreeState):  # Optax's: computed as Optax does.
        return jax.tree.map(lambda y, z: (y - (1.0 - b1) * z) / b1, params, sf.z)
    check_moment_tree(params, sf.z, "state.z", what="params")

    def leaf(y: jax.Array, z: Any) -> tuple:
        y = jnp.asarray(y)
        ct = at_least_float32(y.dtype, ())
        b = b1.astype(real_dtype(ct))
        y_ = jnp.asarray(y).astype(ct)
        x = y_ - (1 - b) / b * (load(z, ct) - y_)
        return (cast(x, y.dtype),)

    return leafwise(leaf, 1, params, sf.z)[0]
