r"""Polyak step sizes: the step measured from the loss and a lower bound on it.

Polyak's step for a convex :math:`f` with minimum :math:`f^\star` is
:math:`(f(x) - f^\star) / \|\nabla f(x)\|^2`, the step that would reach
:math:`f^\star` if :math:`f` were linear along the gradient. The methods here
take the loss of the current batch through ``update``'s extra keyword
argument ``value``::

    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params, value=loss)

:func:`adamx.chain` and the wrappers pass ``value`` on to the stages that take
it. :func:`polyak_sgd` caps the step (SPS\ :sub:`max`, Loizou et al., 2021);
:func:`momo` and :func:`momo_adam` build the step from a model of the loss
made of momentum averages (Schaipp et al., 2023), capped by the learning
rate. Names, arguments, defaults and state classes are Optax's.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    init_empty_state,
    is_schedule,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import Hyper, _refuse_complex, abs_sq, as_float
from adamx.storage import check_moment_tree, load, real_dtype, store
from adamx.traits import Stage, Traits
from adamx.transforms import learning_rate_stage

__all__ = [
    "MomoAdamState",
    "MomoState",
    "momo",
    "momo_adam",
    "polyak_sgd",
    "scale_by_polyak",
]

_VARIANTS = ("sps", "sps+")
# Optax's threshold below which a squared norm counts as zero (float64's eps).
_TINY = float(np.finfo(np.float64).eps)


def _need_value(name: str, value: Any) -> None:
    # A TypeError, as for any missing argument (and as Optax's).
    if value is None:
        raise TypeError(
            f"{name} needs the loss: call update(grads, state, params, "
            "value=loss), with loss, grads = jax.value_and_grad(loss_fn)(params)"
        )


def _scalar_dtype(params: Any) -> Any:
    """The params' widest real dtype, at least float32."""
    dtypes = [p.dtype for p in jax.tree.leaves(params)]
    return real_dtype(wider_dtype(*dtypes, jnp.float32))


def _sq_norm(tree: Any, dtype: Any) -> jax.Array:
    total = jnp.zeros([], dtype)
    for x in jax.tree.leaves(tree):
        total = total + jnp.sum(abs_sq(x.astype(wider_dtype(x.dtype, dtype))))
    return total


def _loss(value: Any, dtype: Any) -> jax.Array:
    return jnp.asarray(value).astype(dtype)


# ------------------------------------------------------------------ Polyak


def scale_by_polyak(
    f_min: jax.typing.ArrayLike = 0.0,
    max_learning_rate: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    r"""Scale the updates by Polyak's step size, capped.

    .. math::
        u_t = \min\left(\frac{f(x_t) - f^\star}{\|g_t\|^2 + \epsilon},
        \gamma_{\max}\right) g_t

    with the norm over the whole tree, and :math:`u_t = 0` where
    :math:`\|g_t\|^2 + \epsilon` is below float64's machine epsilon (no
    gradient: no step). ``variant="sps+"`` (Garrigos et al., 2023) takes
    :math:`\max(f(x_t) - f^\star, 0)`, so that an :math:`f^\star` above the
    loss gives no step rather than one up the gradient.

    Args:
        f_min: :math:`f^\star`, a lower bound on the loss (0 for a model that
            can fit its data).
        max_learning_rate: :math:`\gamma_{\max} \ge 0`, the largest step size.
        eps: :math:`\epsilon \ge 0`, added to the squared norm.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with an empty state;
        ``update`` takes the loss as ``value=``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_polyak()
        >>> g = jnp.array([1.0, 2.0])
        >>> print(tx.update(g, tx.init(g), value=2.5)[0])  # 2.5 / 5 times g
        [0.5 1. ]

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, 2021, "Stochastic Polyak
        Step-size for SGD: An Adaptive Learning Rate for Fast Convergence",
        https://arxiv.org/abs/2002.10542; Garrigos, Gower & Schaipp, 2023,
        "Function Value Learning: Adaptive Learning Rates Based on the Polyak
        Stepsize and Function Splitting in ERM", https://arxiv.org/abs/2307.14528
    """
    checks.check_finite("f_min", f_min)
    checks.check_nonnegative("max_learning_rate", max_learning_rate)
    checks.check_nonnegative("eps", eps)
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be 'sps' or 'sps+', got {variant!r}")
    hyper_values = {"f_min": f_min, "max_lr": max_learning_rate, "eps": eps}

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        _need_value("scale_by_polyak", value)
        leaves = jax.tree.leaves(updates)
        sd = real_dtype(wider_dtype(*(g.dtype for g in leaves), jnp.float32))
        h = Hyper(**hyper_values)(sd)
        sq = _sq_norm(updates, sd)
        gap = _loss(value, sd) - h.f_min
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denom = sq + h.eps
        rate = jnp.where(
            denom <= _TINY,
            jnp.zeros([], sd),
            jnp.minimum(gap / jnp.where(denom <= _TINY, 1, denom), h.max_lr),
        )

        def leaf(g):
            ct = wider_dtype(g.dtype, sd)
            return (rate.astype(ct) * g.astype(ct)).astype(g.dtype)

        return jax.tree.map(leaf, updates), state

    stage = Stage("scale_by_polyak", {**hyper_values, "variant": variant})
    return GradientTransformationExtraArgs(
        init_empty_state, update_fn, Traits(True, (stage,))
    )


def polyak_sgd(
    max_learning_rate: jax.typing.ArrayLike = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    r"""SGD with Polyak's step size, capped (SPS\ :sub:`max`).

    .. math::
        x_{t+1} = x_t - s_t \min\left(\frac{f(x_t) - f^\star}{\|g_t\|^2
        + \epsilon}, \gamma_{\max}\right) g_t

    with :math:`s_t` the ``scaling`` (see :func:`scale_by_polyak`). This is
    the formula of ``optax.polyak_sgd``'s documentation, whose name,
    arguments and defaults these are. Optax's code scales the gradient by
    :math:`s_t` before measuring its norm, which gives
    :math:`s_t \min\big((f - f^\star) / (s_t^2 \|g_t\|^2 + \epsilon),
    \gamma_{\max}\big) g_t`: the same step at the default :math:`s_t = 1`,
    and a step that grows as :math:`s_t` shrinks otherwise; adamx follows
    the documented formula, which is Loizou et al.'s with :math:`c = 1/s_t`.

    Args:
        max_learning_rate: :math:`\gamma_{\max} \ge 0`.
        scaling: :math:`s_t`, a number or a schedule, a factor on the step.
        f_min: :math:`f^\star`, a lower bound on the loss.
        eps: :math:`\epsilon \ge 0`.
        variant: ``"sps"`` or ``"sps+"`` (the gap's positive part).

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs`; ``update`` takes the
        loss as ``value=``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.polyak_sgd()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     loss, grads = jax.value_and_grad(f)(params)
        ...     updates, state = tx.update(grads, state, params, value=loss)
        ...     params = adamx.apply_updates(params, updates)
        ...     print(f(params))  # each step halves the distance to 0
        3.5
        0.875
        0.21875

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, 2021, "Stochastic Polyak
        Step-size for SGD: An Adaptive Learning Rate for Fast Convergence",
        https://arxiv.org/abs/2002.10542; Berrada, Zisserman & Kumar, 2020,
        "Training Neural Networks for and by Interpolation",
        https://arxiv.org/abs/1906.05661
    """
    checks.check_scalar_or_schedule("scaling", scaling)
    tx = chain(
        scale_by_polyak(f_min, max_learning_rate, eps, variant),
        learning_rate_stage(scaling),
    )
    return cast(GradientTransformationExtraArgs, tx)  # chain passes value on


# -------------------------------------------------------------------- MoMo


class MomoState(NamedTuple):
    """State of :func:`momo` (Optax's ``MomoState``, its fields)."""

    exp_avg: Any  # like params: d_t, EMA of the gradients
    barf: jax.Array  # shape=(), float32 (float64 params: float64): EMA of f
    gamma: jax.Array  # shape=(), like barf: EMA of <g_t, x_t>
    lb: jax.Array  # shape=(), like barf: the lower bound f*
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: updates so far


class MomoAdamState(NamedTuple):
    """State of :func:`momo_adam` (Optax's ``MomoAdamState``, its fields)."""

    exp_avg: Any  # like params: d_t, EMA of the gradients
    exp_avg_sq: Any  # like params: v_t, EMA of their squares
    barf: jax.Array  # shape=(), float32 (float64 params: float64): EMA of f
    gamma: jax.Array  # shape=(), like barf: EMA of <g_t, x_t>
    lb: jax.Array  # shape=(), like barf: the lower bound f*
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: updates so far


def _check_momo(
    learning_rate: Any, lower_bound: Any, weight_decay: Any, adapt: Any
) -> None:
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_finite("lower_bound", lower_bound)
    checks.check_nonnegative("weight_decay", weight_decay)
    checks.check_bool("adapt_lower_bound", adapt)


def _momo_step(
    h: Any,
    alpha: jax.Array,
    bc1: jax.Array,
    state_lb: jax.Array,
    barf: jax.Array,
    gamma: jax.Array,
    iprod: jax.Array,
    norm: jax.Array,
    adapt: bool,
) -> tuple[jax.Array, jax.Array]:
    r"""MoMo's step size :math:`\tau_t` and its next lower bound, the authors'
    way (``bc1`` is 1 for MoMo, :math:`1 - \beta_1^t` for MoMo-Adam)."""
    c = 1 + alpha * h.wd
    lb = state_lb
    if adapt:
        cap = c * (barf - gamma) + iprod
        lb = jnp.where(
            cap < c * bc1 * lb, jnp.maximum(cap / (2 * bc1 * c), h.lower), lb
        )
    t1 = jnp.maximum(c * (barf - bc1 * lb - gamma) + iprod, 0) / jnp.where(
        norm <= _TINY, 1, norm
    )
    # No momentum yet to step along: no step.
    t1 = jnp.where(norm <= _TINY, 0, t1)
    tau = jnp.minimum(alpha / bc1, t1)
    if adapt:
        new_lb = jnp.maximum((barf + iprod - gamma - tau * norm / 2) / bc1, h.lower)
    else:
        new_lb = state_lb
    return tau, new_lb


def momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: jax.typing.ArrayLike = 0.9,
    lower_bound: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformationExtraArgs:
    r"""MoMo: SGD with momentum and a Polyak step from a model of the loss
    (Schaipp et al., 2023).

    With :math:`\alpha_t` the learning rate, :math:`\lambda` the weight
    decay, :math:`f^\star` the lower bound and averages that start at the
    first values (:math:`\beta` taken as 0 at the first step):

    .. math::
        \begin{aligned}
        d_t &= \beta d_{t-1} + (1 - \beta) g_t, \qquad
        \bar f_t = \beta \bar f_{t-1} + (1 - \beta) f(x_t), \qquad
        \gamma_t = \beta \gamma_{t-1} + (1 - \beta) \langle g_t, x_t \rangle \\
        \tau_t &= \min\left(\alpha_t, \frac{\big((1 + \alpha_t \lambda)
        (\bar f_t - f^\star - \gamma_t) + \langle d_t, x_t \rangle\big)_+}
        {\|d_t\|^2}\right), \qquad
        x_{t+1} = \frac{x_t - \tau_t d_t}{1 + \alpha_t \lambda}
        \end{aligned}

    with the norm and inner products over the whole tree, and no step while
    :math:`d_t = 0`. ``adapt_lower_bound`` estimates :math:`f^\star` as it
    goes (the authors' ``use_fstar``), never below ``lower_bound``.

    This is the authors' ``momo.Momo``, under ``optax.contrib.momo``'s name,
    arguments and defaults. Where Optax differs, adamx follows the authors:
    with weight decay, Optax steps to :math:`x_t / (1 + \alpha_t \lambda) -
    \tau_t d_t`, where the authors' proximal step divides :math:`\tau_t d_t`
    by :math:`1 + \alpha_t \lambda` too. Without weight decay the two are
    the same. Complex params are refused. :math:`d` is kept in the params'
    dtype: the step divides a small difference of inner products with
    :math:`d`, which the rounding of 8-bit codes swamps (on a quadratic they
    stall the loss at 8 times float32's).

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule: the largest
            step size, best chosen large (1).
        beta: :math:`\beta \in [0, 1)`, the averages' decay.
        lower_bound: :math:`f^\star`, a lower bound on the loss (0 for most
            losses).
        weight_decay: :math:`\lambda \ge 0`.
        adapt_lower_bound: estimate :math:`f^\star` on the fly.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`MomoState`; ``update`` needs ``params`` and the loss as
        ``value=``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.momo()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> loss, grads = jax.value_and_grad(f)(params)
        >>> updates, state = tx.update(grads, state, params, value=loss)
        >>> print(f(adamx.apply_updates(params, updates)))  # a Polyak step of 1/4
        3.5

    References:
        Schaipp, Ohana, Eickenberg, Defazio & Gower, 2023, "MoMo: Momentum
        Models for Adaptive Learning Rates", https://arxiv.org/abs/2305.07583;
        reference code https://github.com/fabian-sp/MoMo
    """
    _check_momo(learning_rate, lower_bound, weight_decay, adapt_lower_bound)
    checks.check_decay("beta", beta)
    scheduled = is_schedule(learning_rate)
    hyper_values = {"beta": beta, "lower": lower_bound, "wd": weight_decay}

    def init_fn(params):
        _refuse_complex("momo", params)
        sd = _scalar_dtype(params)
        return MomoState(
            exp_avg=jax.tree.map(jnp.zeros_like, params),
            barf=jnp.zeros([], sd),
            gamma=jnp.zeros([], sd),
            lb=Hyper(**hyper_values)(sd).lower,
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        require_params("momo", params)
        _need_value("momo", value)
        check_moment_tree(updates, state.exp_avg, "state.exp_avg")
        check_moment_tree(updates, params, "params")
        sd = state.barf.dtype
        hyper = Hyper(**hyper_values)
        h = hyper(sd)
        rate: Any = learning_rate
        alpha = jnp.asarray(rate(state.count) if scheduled else rate).astype(sd)
        # The averages start at the first values.
        bt = jnp.where(state.count == 0, jnp.zeros_like(h.beta), h.beta)
        barf = bt * state.barf + (1 - bt) * _loss(value, sd)

        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        d_leaves = treedef.flatten_up_to(state.exp_avg)

        def average(g, p, d_stored):
            ct = wider_dtype(g.dtype, p.dtype, sd)
            g, x = g.astype(ct), p.astype(ct)
            b = bt.astype(ct)
            d = b * load(d_stored, ct) + (1 - b) * g
            sums = (jnp.sum(g * x), jnp.sum(d * x), jnp.sum(d * d))
            return (x, d, *(s.astype(sd) for s in sums))

        firsts = [average(*a) for a in zip(g_leaves, p_leaves, d_leaves, strict=True)]
        zero = jnp.zeros([], sd)
        gx = sum((o[2] for o in firsts), zero)
        iprod = sum((o[3] for o in firsts), zero)
        norm = sum((o[4] for o in firsts), zero)
        gamma = bt * state.gamma + (1 - bt) * gx
        one = jnp.ones([], sd)
        tau, new_lb = _momo_step(
            h, alpha, one, state.lb, barf, gamma, iprod, norm, adapt_lower_bound
        )
        c = 1 + alpha * h.wd

        def step(g0, x, d):
            ct = x.dtype
            u = -(tau.astype(ct) * d + (alpha * h.wd).astype(ct) * x) / c.astype(ct)
            return u.astype(g0.dtype)

        out = [step(g0, o[0], o[1]) for g0, o in zip(g_leaves, firsts, strict=True)]
        exp_avg = treedef.unflatten(
            [store(o[1], old) for o, old in zip(firsts, d_leaves, strict=True)]
        )
        new_state = MomoState(
            exp_avg=exp_avg,
            barf=barf,
            gamma=gamma,
            lb=new_lb,
            count=safe_increment(state.count),
        )
        return treedef.unflatten(out), new_state

    stage = Stage(
        "momo",
        {
            **hyper_values,
            "learning_rate": learning_rate,
            "adapt_lower_bound": adapt_lower_bound,
        },
    )
    return GradientTransformationExtraArgs(init_fn, update_fn, Traits(True, (stage,)))


def momo_adam(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    lower_bound: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformationExtraArgs:
    r"""MoMo-Adam: Adam with a Polyak step from a model of the loss
    (Schaipp et al., 2023).

    With :math:`\alpha_t` the learning rate, :math:`\lambda` the weight
    decay, :math:`f^\star` the lower bound, :math:`\rho_t = 1 - \beta_1^t`
    and averages from 0:

    .. math::
        \begin{aligned}
        d_t &= \beta_1 d_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        D_t = \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        \bar f_t &= \beta_1 \bar f_{t-1} + (1 - \beta_1) f(x_t), \qquad
        \gamma_t = \beta_1 \gamma_{t-1} + (1 - \beta_1)
        \langle g_t, x_t \rangle \\
        \tau_t &= \min\left(\frac{\alpha_t}{\rho_t},
        \frac{\big((1 + \alpha_t \lambda)(\bar f_t - \rho_t f^\star -
        \gamma_t) + \langle d_t, x_t \rangle\big)_+}
        {\langle d_t, d_t / D_t \rangle}\right), \qquad
        x_{t+1} = \frac{x_t - \tau_t d_t / D_t}{1 + \alpha_t \lambda}
        \end{aligned}

    with the inner products over the whole tree, and no step while
    :math:`d_t = 0`. ``adapt_lower_bound`` estimates :math:`f^\star` as it
    goes (the authors' ``use_fstar``), never below ``lower_bound``.

    This is the authors' ``momo.MomoAdam`` with its default proximal weight
    decay (``divide=True``), under ``optax.contrib.momo_adam``'s name,
    arguments and defaults. Where Optax differs, adamx follows the authors:
    with weight decay, Optax steps to :math:`x_t / (1 + \alpha_t \lambda) -
    \tau_t d_t / D_t`, which is neither of the authors' two forms (theirs
    also divides :math:`\tau_t d_t / D_t`, or, with ``divide=False``,
    multiplies :math:`x_t` by :math:`1 - \alpha_t \lambda`). Without weight
    decay the three are the same. Complex params are refused. The moments
    are kept in the params' dtype, as for :func:`momo`.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule: the largest
            step size.
        b1: :math:`\beta_1 \in [0, 1)`, the decay of :math:`d`, :math:`\bar f`
            and :math:`\gamma`.
        b2: :math:`\beta_2 \in [0, 1)`, the decay of :math:`v`.
        eps: :math:`\epsilon \ge 0`, added to :math:`\sqrt{v}`.
        lower_bound: :math:`f^\star`, a lower bound on the loss.
        weight_decay: :math:`\lambda \ge 0`.
        adapt_lower_bound: estimate :math:`f^\star` on the fly.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`MomoAdamState`; ``update`` needs ``params`` and the loss as
        ``value=``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.momo_adam(learning_rate=1.0)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(20):
        ...     loss, grads = jax.value_and_grad(f)(params)
        ...     updates, state = tx.update(grads, state, params, value=loss)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(f(params) < 1.0)  # from 14
        True

    References:
        Schaipp, Ohana, Eickenberg, Defazio & Gower, 2023, "MoMo: Momentum
        Models for Adaptive Learning Rates", https://arxiv.org/abs/2305.07583;
        reference code https://github.com/fabian-sp/MoMo
    """
    _check_momo(learning_rate, lower_bound, weight_decay, adapt_lower_bound)
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    checks.check_nonnegative("eps", eps)
    scheduled = is_schedule(learning_rate)
    hyper_values = {
        "b1": b1,
        "b2": b2,
        "eps": eps,
        "lower": lower_bound,
        "wd": weight_decay,
    }

    def init_fn(params):
        _refuse_complex("momo_adam", params)
        sd = _scalar_dtype(params)
        return MomoAdamState(
            exp_avg=jax.tree.map(jnp.zeros_like, params),
            exp_avg_sq=jax.tree.map(jnp.zeros_like, params),
            barf=jnp.zeros([], sd),
            gamma=jnp.zeros([], sd),
            lb=Hyper(**hyper_values)(sd).lower,
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        require_params("momo_adam", params)
        _need_value("momo_adam", value)
        check_moment_tree(updates, state.exp_avg, "state.exp_avg")
        check_moment_tree(updates, params, "params")
        sd = state.barf.dtype
        hyper = Hyper(**hyper_values)
        h = hyper(sd)
        count = safe_increment(state.count)
        t = as_float(count).astype(sd)
        bc1, bc2 = 1 - h.b1**t, 1 - h.b2**t
        rate: Any = learning_rate
        alpha = jnp.asarray(rate(state.count) if scheduled else rate).astype(sd)
        barf = h.b1 * state.barf + (1 - h.b1) * _loss(value, sd)

        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        d_leaves = treedef.flatten_up_to(state.exp_avg)
        v_leaves = treedef.flatten_up_to(state.exp_avg_sq)

        def average(g, p, d_stored, v_stored):
            ct = wider_dtype(g.dtype, p.dtype, sd)
            hc = hyper(ct)
            g, x = g.astype(ct), p.astype(ct)
            d = hc.b1 * load(d_stored, ct) + (1 - hc.b1) * g
            v = hc.b2 * load(v_stored, ct) + (1 - hc.b2) * g * g
            precond = hc.eps + jnp.sqrt(v / bc2.astype(ct))
            sums = (jnp.sum(g * x), jnp.sum(d * x), jnp.sum(d * (d / precond)))
            return (x, d, v, precond, *(s.astype(sd) for s in sums))

        firsts = [
            average(*a)
            for a in zip(g_leaves, p_leaves, d_leaves, v_leaves, strict=True)
        ]
        zero = jnp.zeros([], sd)
        gx = sum((o[4] for o in firsts), zero)
        iprod = sum((o[5] for o in firsts), zero)
        norm = sum((o[6] for o in firsts), zero)
        gamma = h.b1 * state.gamma + (1 - h.b1) * gx
        tau, new_lb = _momo_step(
            h, alpha, bc1, state.lb, barf, gamma, iprod, norm, adapt_lower_bound
        )
        c = 1 + alpha * h.wd

        def step(g0, x, d, precond):
            ct = x.dtype
            u = -(tau.astype(ct) * d / precond + (alpha * h.wd).astype(ct) * x)
            return (u / c.astype(ct)).astype(g0.dtype)

        out = [
            step(g0, o[0], o[1], o[3]) for g0, o in zip(g_leaves, firsts, strict=True)
        ]

        def stored(i, olds):
            return treedef.unflatten(
                [store(o[i], old) for o, old in zip(firsts, olds, strict=True)]
            )

        new_state = MomoAdamState(
            exp_avg=stored(1, d_leaves),
            exp_avg_sq=stored(2, v_leaves),
            barf=barf,
            gamma=gamma,
            lb=new_lb,
            count=count,
        )
        return treedef.unflatten(out), new_state

    stage = Stage(
        "momo_adam",
        {
            **hyper_values,
            "learning_rate": learning_rate,
            "adapt_lower_bound": adapt_lower_bound,
        },
    )
    return GradientTransformationExtraArgs(init_fn, update_fn, Traits(True, (stage,)))
