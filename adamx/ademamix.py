r"""AdEMAMix and Simplified AdEMAMix: Adam with a second, slower momentum.

AdEMAMix (Pagliardini et al., 2024) adds to Adam's fast moving average of the
gradient a slow one (:math:`\beta_3 = 0.9999`), mixed into the numerator with
weight :math:`\alpha`; Simplified AdEMAMix (Morwani et al., 2025) keeps one
momentum, summed rather than averaged, and mixes in the current gradient.
Both are built on the moment skeleton (:mod:`adamx.moments`), so
``state_bits``, ``inject_hyperparams``, the flat layout and sharding come with
them. Names, arguments and defaults are ``optax.contrib``'s.

The paper warms :math:`\alpha` and :math:`\beta_3` up over the first steps;
:func:`ademamix_alpha_schedule` and :func:`ademamix_beta_schedule` are those
warmups, as schedules to pass for ``alpha`` and ``b3`` (or, for the
simplified method, ``b1``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.base import GradientTransformation, ScalarOrSchedule, Schedule, is_schedule
from adamx.combine import chain
from adamx.moments import Hyper, LeafStep, abs_sq, as_float, moment_transform
from adamx.optimizers import MaskOrFn
from adamx.storage import Moment, Storage
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdemamixState",
    "ademamix",
    "ademamix_alpha_schedule",
    "ademamix_beta_schedule",
    "scale_by_ademamix",
    "scale_by_simplified_ademamix",
    "simplified_ademamix",
]


# ------------------------------------------------------------------ schedules


def _check_warmup_steps(warmup_steps: Any) -> None:
    checks.check_positive_int("warmup_steps", warmup_steps, allow_zero=True)


def ademamix_alpha_schedule(
    alpha: float, warmup_steps: int, alpha_start: float = 0.0
) -> Schedule:
    r"""The paper's warmup of AdEMAMix's :math:`\alpha`: linear, over ``warmup_steps``.

    .. math::
        \alpha_t = \alpha_{start} + \min\!\left(\frac{t}{T_\alpha}, 1\right)
        (\alpha - \alpha_{start})

    at step :math:`t \ge 1`. The schedule takes, as Optax's schedules do, the
    number of steps before this one, :math:`t - 1` (0 at the first update),
    and returns the paper's value at step :math:`t`, as the authors' PyTorch
    code computes it (their Optax code evaluates it at :math:`t - 1`, one step
    earlier).

    Args:
        alpha: :math:`\alpha \ge 0`, the value after the warmup.
        warmup_steps: :math:`T_\alpha \ge 0`, steps to reach it; 0 is no warmup.
        alpha_start: :math:`\alpha_{start} \ge 0`, the value at step 0.

    Returns:
        A schedule: the number of steps taken so far to :math:`\alpha_t`.

    Example:
        >>> import adamx
        >>> schedule = adamx.ademamix_alpha_schedule(8.0, warmup_steps=4)
        >>> [float(schedule(count)) for count in range(5)]
        [2.0, 4.0, 6.0, 8.0, 8.0]

    References:
        Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older", Algorithm 1 and :math:`f_\alpha`, https://arxiv.org/abs/2409.03137
    """
    checks.check_nonnegative("alpha", alpha)
    checks.check_nonnegative("alpha_start", alpha_start)
    _check_warmup_steps(warmup_steps)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        if warmup_steps == 0:
            return jnp.asarray(alpha, as_float(jnp.asarray(count)).dtype)
        a = jnp.minimum((as_float(jnp.asarray(count)) + 1) / warmup_steps, 1.0)
        return (1 - a) * alpha_start + a * alpha

    return schedule


def ademamix_beta_schedule(
    beta: float, warmup_steps: int, beta_start: float
) -> Schedule:
    r"""The paper's warmup of AdEMAMix's :math:`\beta_3`: a linear half-life.

    .. math::
        \beta_t = \min\!\left(\exp\frac{\ln\beta_{start} \ln\beta}
        {(1 - a_t) \ln\beta + a_t \ln\beta_{start}}, \beta\right), \qquad
        a_t = \frac{t}{T_\beta}

    at step :math:`t \ge 1`: the half-life :math:`\ln 0.5 / \ln\beta_t` of the
    moving average grows linearly from :math:`\beta_{start}`'s to
    :math:`\beta`'s, so a slow average (:math:`\beta = 0.9999`) does not start
    by averaging gradients of parameters far from the current ones. The paper
    takes :math:`\beta_{start} = \beta_1`; Simplified AdEMAMix warms its
    :math:`\beta_1` up the same way from 0.9. The schedule takes, as Optax's
    schedules do, the number of steps before this one, :math:`t - 1`, and
    returns the paper's value at step :math:`t`.

    This is the paper's formula (and ``pytorch_optimizer``'s). The authors'
    PyTorch code takes the logarithm of :math:`\beta + 10^{-8}`, which moves
    :math:`\beta_t` by up to :math:`10^{-6}` of its value during the warmup;
    it guards :math:`\beta_{start} = 0`, which the form used here,
    :math:`1/\ln\beta_t = (1 - a_t)/\ln\beta_{start} + a_t/\ln\beta`, takes as
    it is.

    Args:
        beta: :math:`\beta \in [0, 1)`, the value after the warmup.
        warmup_steps: :math:`T_\beta \ge 0`, steps to reach it; 0 is no warmup.
        beta_start: :math:`\beta_{start} \in [0, \beta]`, the value at step 0.

    Returns:
        A schedule: the number of steps taken so far to :math:`\beta_t`.

    Example:
        >>> import adamx
        >>> schedule = adamx.ademamix_beta_schedule(0.999, 3, beta_start=0.9)
        >>> [round(float(schedule(count)), 5) for count in range(4)]
        [0.99706, 0.99851, 0.999, 0.999]

    References:
        Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older", Algorithm 1 and :math:`f_{\beta_3}`,
        https://arxiv.org/abs/2409.03137
    """
    checks.check_decay("beta", beta)
    checks.check_decay("beta_start", beta_start)
    _check_warmup_steps(warmup_steps)
    if float(beta_start) > float(beta):
        raise ValueError(
            f"beta_start must be at most beta={beta!r} (the warmup raises beta), "
            f"got {beta_start!r}"
        )

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = as_float(jnp.asarray(count)) + 1
        end = jnp.asarray(beta, t.dtype)
        if warmup_steps == 0:
            return end
        a = t / warmup_steps
        inverse_log = (1 - a) / jnp.log(jnp.asarray(beta_start, t.dtype)) + a / (
            jnp.log(end)
        )
        return jnp.where(t < warmup_steps, jnp.exp(1 / inverse_log), end)

    return schedule


def _value_at(
    value: Any, name: str, h: SimpleNamespace, count: jax.Array, dtype: Any
) -> jax.Array:
    """A hyperparameter's value at this step: a schedule's at the count of the
    steps before it (Optax's convention), else the number, in ``dtype``."""
    if is_schedule(value):
        return jnp.asarray(value(count - 1)).astype(dtype)
    return getattr(h, name)


def _numbers(**values: Any) -> dict[str, Any]:
    """The values that are numbers (hyperparameters), not schedules."""
    return {k: v for k, v in values.items() if not is_schedule(v)}


def _schedules(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if is_schedule(v)}


def _check_decay_or_schedule(name: str, value: Any) -> None:
    if not is_schedule(value):
        checks.check_decay(name, value)


def _check_alpha(alpha: Any) -> None:
    checks.check_scalar_or_schedule("alpha", alpha)


# ------------------------------------------------------------------ AdEMAMix


class ScaleByAdemamixState(NamedTuple):
    """State of :func:`scale_by_ademamix` (Optax's, without its ``count_m2``,
    which always equals ``count``)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    m1: Any  # like params (or mu_dtype, or codes): fast EMA of the gradient
    m2: Any  # like params (or mu_dtype, or codes): slow EMA of the gradient
    nu: Any  # like params (real; or codes): EMA of |g|^2


M1 = Moment("m1", signed=True, dtype="mu_dtype")
M2 = Moment("m2", signed=True, dtype="mu_dtype")
NU = Moment("nu", signed=False)


def _ademamix_scalars(
    b3: Any, alpha: Any
) -> Callable[[Hyper, Any, jax.Array], SimpleNamespace]:
    def derived(hyper: Hyper, dtype: Any, count: jax.Array) -> SimpleNamespace:
        h = hyper(dtype)
        t = as_float(count).astype(dtype)
        b3_ = _value_at(b3, "b3", h, count, dtype)
        return SimpleNamespace(
            omb1=1 - h.b1,
            omb2=1 - h.b2,
            b3=b3_,
            omb3=1 - b3_,
            alpha=_value_at(alpha, "alpha", h, count, dtype),
            bc1=1 - h.b1**t,
            bc2=1 - h.b2**t,
        )

    return derived


def scale_by_ademamix(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale updates by AdEMAMix's mixture of a fast and a slow momentum.

    .. math::
        \begin{aligned}
        m_{1,t} &= \beta_1 m_{1,t-1} + (1 - \beta_1) g_t \\
        m_{2,t} &= \beta_{3,t} m_{2,t-1} + (1 - \beta_{3,t}) g_t \\
        \nu_t &= \beta_2 \nu_{t-1} + (1 - \beta_2) |g_t|^2 \\
        u_t &= \frac{m_{1,t} / (1 - \beta_1^t) + \alpha_t m_{2,t}}
        {\sqrt{\nu_t / (1 - \beta_2^t) + \bar\epsilon} + \epsilon}
        \end{aligned}

    The slow average :math:`m_2` is not bias-corrected (it is meant to fill
    slowly), and :math:`\epsilon` sits outside the square root of the
    bias-corrected :math:`\nu`: here the authors' PyTorch code, their Optax
    code and ``optax.contrib.scale_by_ademamix`` agree, and so does adamx
    (checked in float64 against Optax and ``pytorch_optimizer.AdEMAMix``).
    ``b3`` and ``alpha`` may be schedules: :math:`\beta_{3,t}` and
    :math:`\alpha_t` are their values at :math:`t - 1`, the number of steps
    before this one, as Optax evaluates them. The paper's warmups are
    :func:`ademamix_beta_schedule` (``beta_start = b1``) and
    :func:`ademamix_alpha_schedule`; they return the paper's value at step
    :math:`t`.

    Where adamx departs from Optax: :math:`\nu` is stored in the params'
    dtype, not in ``mu_dtype`` (the first moments' dtype, as Optax's own
    docstring says; a bfloat16 :math:`\nu` would barely move with
    :math:`1 - \beta_2 = 10^{-3}`), and :math:`m_1, m_2` stay in ``mu_dtype``
    after a step. The state has no ``count_m2``: Optax's always equals its
    ``count``. With ``state_bits`` 16, 8 or 4 all three moments are stored
    so; the slow average changes by :math:`1 - \beta_3` of the distance to
    the gradient per step, less than a bfloat16 or 8-bit code resolves, so
    it moves only when that distance is large (see :mod:`adamx.lowbit`).

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the fast average.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        b3: :math:`\beta_3 \in [0, 1)`, decay of the slow average, or a
            schedule of it.
        alpha: :math:`\alpha \ge 0`, weight of the slow average, or a schedule
            of it.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside the square root.
        mu_dtype: dtype of :math:`m_1` and :math:`m_2`; ``None`` uses the
            params' dtype.
        state_bits: how :math:`m_1`, :math:`m_2` and :math:`\nu` are stored:
            32 (as ``mu_dtype`` says), 16 (bfloat16), 8 or 4 (block-wise
            quantized, see :mod:`adamx.lowbit`). Not to be combined with
            ``mu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdemamixState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_ademamix(alpha=2.0)
        >>> u, state = tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))
        >>> print(u.round(4))  # (1 + 2 * 1e-4) * sign(g)
        [ 1.0002 -1.0002]

    References:
        Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older", https://arxiv.org/abs/2409.03137; reference code
        https://github.com/apple/ml-ademamix
    """
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    _check_decay_or_schedule("b3", b3)
    _check_alpha(alpha)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("eps_root", eps_root)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)
    add_eps_root = not (isinstance(eps_root, (int, float)) and eps_root == 0)

    def body(
        x: LeafStep, g: jax.Array, m1: jax.Array, m2: jax.Array, nu: jax.Array
    ) -> tuple:
        h, c = x.h, x.c
        m1 = x.stored.m1(c.omb1 * g + h.b1 * m1)  # fast EMA
        m2 = x.stored.m2(c.omb3 * g + c.b3 * m2)  # slow EMA, not debiased
        nu = x.stored.nu(c.omb2 * abs_sq(g) + h.b2 * nu)
        nu_hat = nu / c.bc2
        if add_eps_root:
            nu_hat = nu_hat + h.eps_root
        return (m1 / c.bc1 + c.alpha * m2) / (jnp.sqrt(nu_hat) + h.eps), m1, m2, nu

    return moment_transform(
        ScaleByAdemamixState,
        [M1, M2, NU],
        storage,
        body,
        name="scale_by_ademamix",
        hyperparams=_numbers(
            b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=eps_root
        ),
        stage_args=_schedules(b3=b3, alpha=alpha),
        derived=_ademamix_scalars(b3, alpha),
    )


def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdEMAMix: AdamW with a mixture of a fast and a slow momentum.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(\frac{\hat m_{1,t}
        + \alpha_t m_{2,t}}{\sqrt{\hat\nu_t + \bar\epsilon} + \epsilon}
        + \lambda\, \theta_{t-1}\right)

    with :math:`\hat m_{1,t}` Adam's debiased fast average, :math:`m_{2,t}` a
    slow one (:math:`\beta_3 = 0.9999`) and :math:`\hat\nu_t` Adam's debiased
    second moment (see :func:`scale_by_ademamix`). The decay
    :math:`\lambda` is multiplied by the learning rate, as in the authors'
    code and Optax. The paper warms :math:`\alpha` and :math:`\beta_3` up:
    pass ``alpha=ademamix_alpha_schedule(alpha, T)`` and
    ``b3=ademamix_beta_schedule(b3, T, beta_start=b1)`` for its
    :math:`T_{\alpha} = T_{\beta_3} = T`, typically the whole run. Names,
    arguments and defaults are ``optax.contrib.ademamix``'s (the authors'
    PyTorch code defaults to :math:`\alpha = 2`).

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        b3: :math:`\beta_3 \in [0, 1)`, or a schedule of it.
        alpha: :math:`\alpha \ge 0`, or a schedule of it.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        mu_dtype: dtype of the two first moments.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params to decay: a tree of bools or a function of the
            params returning one; ``None`` decays all.
        state_bits: how the moments are stored: 32 (as ``mu_dtype`` says), 16
            (bfloat16), 8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.ademamix(learning_rate=0.1, alpha=0.0)  # Adam, then
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(jnp.array([0.5, 0.5]), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print([round(float(p), 4) for p in params])
        [0.8, -2.2]

    References:
        Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older", https://arxiv.org/abs/2409.03137; reference code
        https://github.com/apple/ml-ademamix
    """
    return chain(
        scale_by_ademamix(
            b1, b2, b3, alpha, eps, eps_root, mu_dtype, state_bits=state_bits
        ),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------- Simplified AdEMAMix


class ScaleBySimplifiedAdemamixState(NamedTuple):
    """State of :func:`scale_by_simplified_ademamix` (Optax's ``t``, ``m``,
    ``n``, with ``count`` first as in every adamx state, and ``nu``)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    m: Any  # like params (or codes): the momentum, a discounted sum of gradients
    nu: Any  # like params (or codes): EMA of g^2


def _simplified_scalars(
    b1: Any, alpha: Any
) -> Callable[[Hyper, Any, jax.Array], SimpleNamespace]:
    def derived(hyper: Hyper, dtype: Any, count: jax.Array) -> SimpleNamespace:
        h = hyper(dtype)
        t = as_float(count).astype(dtype)
        return SimpleNamespace(
            b1=_value_at(b1, "b1", h, count, dtype),
            omb2=1 - h.b2,
            alpha=_value_at(alpha, "alpha", h, count, dtype),
            bc2=1 - h.b2**t,
        )

    return derived


def scale_by_simplified_ademamix(
    b1: ScalarOrSchedule = 0.99,
    b2: jax.typing.ArrayLike = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale updates by Simplified AdEMAMix: a momentum sum plus the gradient.

    .. math::
        \begin{aligned}
        m_t &= \beta_{1,t} m_{t-1} + g_t \\
        \nu_t &= \beta_2 \nu_{t-1} + (1 - \beta_2) g_t^2 \\
        u_t &= \frac{m_t + \alpha_t g_t}
        {\sqrt{\nu_t / (1 - \beta_2^t) + \bar\epsilon} + \epsilon}
        \end{aligned}

    The momentum is a sum, not an average (the authors' "theory style"), and
    is not bias-corrected; :math:`\alpha = 0` is Adam with learning rate
    :math:`\eta / (1 - \beta_1)` once the sum has filled. This is the
    authors' code (which writes the denominator as :math:`\sqrt{\nu_t} +
    \epsilon \sqrt{1 - \beta_2^t}` and multiplies by
    :math:`\sqrt{1 - \beta_2^t}`: the same) and
    ``optax.contrib.scale_by_simplified_ademamix``; ``pytorch_optimizer``'s
    ``SimplifiedAdEMAMix`` averages the momentum and divides by
    :math:`\sqrt{1 - \beta_2^t}` instead, and is not followed. ``alpha`` and,
    beyond Optax, ``b1`` may be schedules, evaluated at the number of steps
    before this one; the authors warm :math:`\beta_1` up from 0.9 with
    ``b1=ademamix_beta_schedule(b1, T, beta_start=0.9)``. Their optional
    division of the momentum by its weight sum (``bias_correction1``, off by
    default) is not offered. Complex params are refused: the authors and Optax
    square the gradient (:math:`g^2`, not :math:`|g|^2`), which is not a second
    moment of a complex one.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, discount of the momentum, or a
            schedule of it.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        alpha: :math:`\alpha \ge 0`, weight of the current gradient, or a
            schedule of it.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside the square root.
        state_bits: how :math:`m` and :math:`\nu` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleBySimplifiedAdemamixState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_simplified_ademamix(alpha=1.0)
        >>> u, state = tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))
        >>> print(u.round(4))  # (g + alpha g) / |g|
        [ 2. -2.]

    References:
        Morwani et al., 2025, "Connections between Schedule-Free Optimizers,
        AdEMAMix, and Accelerated SGD Variants",
        https://arxiv.org/abs/2502.02431; reference code
        https://github.com/DepenM/Simplified-AdEMAMix
    """
    _check_decay_or_schedule("b1", b1)
    checks.check_decay("b2", b2)
    _check_alpha(alpha)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("eps_root", eps_root)
    storage = Storage.parse(state_bits)
    add_eps_root = not (isinstance(eps_root, (int, float)) and eps_root == 0)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, nu: jax.Array) -> tuple:
        h, c = x.h, x.c
        m = x.stored.m(c.b1 * m + g)  # a sum, not an average
        nu = x.stored.nu(c.omb2 * abs_sq(g) + h.b2 * nu)
        nu_hat = nu / c.bc2
        if add_eps_root:
            nu_hat = nu_hat + h.eps_root
        return (m + c.alpha * g) / (jnp.sqrt(nu_hat) + h.eps), m, nu

    return moment_transform(
        ScaleBySimplifiedAdemamixState,
        [Moment("m"), NU],
        storage,
        body,
        name="scale_by_simplified_ademamix",
        hyperparams=_numbers(b1=b1, b2=b2, alpha=alpha, eps=eps, eps_root=eps_root),
        stage_args=_schedules(b1=b1, alpha=alpha),
        derived=_simplified_scalars(b1, alpha),
        complex_params=False,
    )


def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.99,
    b2: jax.typing.ArrayLike = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Simplified AdEMAMix: one momentum sum, mixed with the current gradient.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(\frac{m_t + \alpha_t g_t}
        {\sqrt{\hat\nu_t + \bar\epsilon} + \epsilon} + \lambda\,
        \theta_{t-1}\right), \qquad m_t = \beta_1 m_{t-1} + g_t

    with :math:`\hat\nu_t` Adam's debiased second moment (see
    :func:`scale_by_simplified_ademamix`). AdEMAMix's two averages become one
    sum, whose weight :math:`1/(1 - \beta_1)` couples the learning rate to
    :math:`\beta_1`: the authors use :math:`\eta` about 100 times smaller
    than Adam's at :math:`\beta_1 = 0.99`. The decay :math:`\lambda` is
    multiplied by the learning rate, as in the authors' code and Optax.
    Names, arguments and defaults are
    ``optax.contrib.simplified_ademamix``'s.

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`, or a schedule of it.
        b2: :math:`\beta_2 \in [0, 1)`.
        alpha: :math:`\alpha \ge 0`, or a schedule of it.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params to decay: a tree of bools or a function of the
            params returning one; ``None`` decays all.
        state_bits: how the moments are stored: 32 (the params' dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.simplified_ademamix(learning_rate=0.01, b1=0.5)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):  # steps of 1 and 1.5 times the rate
        ...     updates, state = tx.update(jnp.array([0.5, 0.5]), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print([round(float(p), 4) for p in params])
        [0.975, -2.025]

    References:
        Morwani et al., 2025, "Connections between Schedule-Free Optimizers,
        AdEMAMix, and Accelerated SGD Variants",
        https://arxiv.org/abs/2502.02431; reference code
        https://github.com/DepenM/Simplified-AdEMAMix
    """
    return chain(
        scale_by_simplified_ademamix(
            b1, b2, alpha, eps, eps_root, state_bits=state_bits
        ),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )
