r"""Optimizers that followed Adam: each its transformation and its chain.

ADOPT, LaProp, MARS and StableAdamW here; AdEMAMix, schedule-free, Prodigy,
Sophia, Adam-mini and cautious updates have modules of their own. Each is
built on the moment skeleton (:mod:`adamx.moments`) or its storage
(:mod:`adamx.storage`), so ``state_bits``, ``inject_hyperparams`` and sharding
come with it; each follows its authors' reference code, and says where Optax
or a port differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.adaptive import MU, NU, ScaleByAdamState, scale_by_adam
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    leafwise,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain, masked, partition
from adamx.moments import Hyper, LeafStep, abs_sq, as_float, moment_transform
from adamx.optimizers import adamw
from adamx.storage import Moment, Storage, load, real_dtype, store
from adamx.traits import Stage, Traits
from adamx.transforms import (
    add_decayed_weights,
    decay_stepped_params,
    learning_rate_stage,
)

__all__ = [
    "LearningRateAverageState",
    "ScaleByMarsState",
    "adopt",
    "adopt_clip_value",
    "laprop",
    "mars",
    "scale_by_adopt",
    "scale_by_laprop",
    "scale_by_mars",
    "scale_by_stable_adam",
    "stable_adamw",
]


def adopt_clip_value(count: jax.Array) -> jax.Array:
    """ADOPT's clipping bound at step :math:`t`, the authors' :math:`t^{1/4}`."""
    return as_float(count) ** 0.25


def scale_by_adopt(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = adopt_clip_value,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""ADOPT: Adam that normalizes the gradient by the previous second moment.

    .. math::
        \begin{aligned}
        v_0 &= |g_0|^2, \qquad u_0 = 0 \\
        \tilde g_t &= \operatorname{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}},
        \epsilon)}, -c_t, c_t\right), \qquad c_t = t^{1/4} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, \tilde g_t, \qquad u_t = m_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2
        \end{aligned}

    for :math:`t \ge 1`, counting the first step as :math:`t = 0`. Dividing by
    :math:`v_{t-1}`, which does not hold :math:`g_t`, is what lets ADOPT converge
    for any :math:`\beta_2`; the first step only measures :math:`v_0`. This is
    the authors' algorithm with their clipping (``clip_lambda``) and, as in
    ``optax.contrib.scale_by_adopt``, the option of Nesterov's look-ahead
    :math:`u_t = \beta_1 m_t + (1 - \beta_1)\, \tilde g_t`, which the paper
    does not have. Complex params are refused: clipping them has no one meaning.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the first moment.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon > 0`, the floor of :math:`\sqrt{v_{t-1}}`.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        nesterov: use the Nesterov look-ahead above.
        use_clipping: clip the normalized gradient to :math:`[-c_t, c_t]`.
        clip_value_fn: :math:`t \mapsto c_t`, from the step count.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (as
            ``mu_dtype`` says), 16 (bfloat16), 8 or 4 (block-wise quantized,
            see :mod:`adamx.lowbit`; these need the clipping, since a code can
            round a small :math:`v_{t-1}` to zero). Not to be combined with
            ``mu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adopt()
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([1.0, -2.0]), state)  # measures v_0
        >>> print(u)
        [0. 0.]
        >>> print(tx.update(jnp.array([1.0, -2.0]), state)[0].round(4))
        [ 0.1 -0.1]

    References:
        Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any
        :math:`\beta_2` with the Optimal Rate", https://arxiv.org/abs/2411.02853;
        reference code https://github.com/iShohei220/adopt
    """
    checks.check_adam_args(b1, b2, eps, 0.0)
    # With eps = 0, a first gradient of zero divides 0 by 0 at the next step.
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    checks.check_bool("nesterov", nesterov)
    checks.check_bool("use_clipping", use_clipping)
    if not callable(clip_value_fn):
        raise TypeError(
            f"clip_value_fn must be a callable of the step count, got {clip_value_fn!r}"
        )
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)
    if storage.quantized and not use_clipping:
        raise ValueError(
            f"state_bits={state_bits} needs use_clipping=True: ADOPT divides by "
            "the stored second moment, and a block code rounds a value far below "
            "its block's largest to zero, so the step would divide by eps alone "
            "and diverge; the clipping bounds it. Use state_bits 16 or 32 to "
            "turn the clipping off."
        )

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h, t = x.h, x.count - 1
        # The first step only measures v_0: b1 = 1 keeps m at 0, b2 = 0 sets v.
        b1_ = jnp.where(t > 0, h.b1, jnp.ones_like(h.b1))
        b2_ = jnp.where(t > 0, h.b2, jnp.zeros_like(h.b2))
        normed = g / jnp.maximum(jnp.sqrt(v), h.eps)
        if use_clipping:
            c = jnp.asarray(clip_value_fn(t)).astype(h.b1.dtype)
            normed = jnp.clip(normed, -c, c)
        m = x.stored.mu((1 - b1_) * normed + b1_ * m)
        v = x.stored.nu((1 - b2_) * abs_sq(g) + b2_ * v)
        u = (1 - b1_) * normed + b1_ * m if nesterov else m
        return u, m, v

    return moment_transform(
        ScaleByAdamState,
        [MU, Moment("nu", signed=False)],
        storage,
        body,
        name="scale_by_adopt",
        hyperparams={"b1": b1, "b2": b2, "eps": eps},
        stage_args={"nesterov": nesterov, "use_clipping": use_clipping},
        # Clipping a complex number has no one meaning (the authors clip its
        # parts, Optax compares complex numbers): refused, not guessed.
        complex_params=False,
    )


def adopt(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = adopt_clip_value,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""ADOPT: Adam that converges with any :math:`\beta_2` (Taniguchi et al., 2024).

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t m_t, \qquad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, \operatorname{clip}\!\left(
        \frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, -t^{1/4}, t^{1/4}\right)

    with :math:`v_t` the moving average of :math:`|g_t|^2` and no step at
    :math:`t = 0`, where only :math:`v_0 = |g_0|^2` is measured (see
    :func:`~adamx.scale_by_adopt`). Names, arguments and defaults are
    ``optax.contrib.adopt``'s, which follows the authors' reference code.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`, the floor of :math:`\sqrt{v_{t-1}}`.
        mu_dtype: dtype of the first moment.
        nesterov: use a Nesterov look-ahead (not in the paper).
        use_clipping: clip the normalized gradient (the authors' default).
        clip_value_fn: the clipping bound as a function of the step count.
        state_bits: how the moments are stored: 32 (as ``mu_dtype`` says), 16
            (bfloat16), 8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adopt(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(jnp.array([0.5, 0.5]), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print([round(float(p), 4) for p in params])
        [0.99, -2.01]

    References:
        Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any
        :math:`\beta_2` with the Optimal Rate", https://arxiv.org/abs/2411.02853
    """
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
            state_bits=state_bits,
        ),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------------------ LaProp


class LearningRateAverageState(NamedTuple):
    """State of the learning-rate average in :func:`scale_by_laprop`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    average: jax.Array  # shape=(), the default float dtype: EMA of the rates


def _rate_at(learning_rate: Any, count: jax.Array, h: Any) -> Any:
    """:math:`\\alpha_t` at the step counted ``count`` (from 1)."""
    if callable(learning_rate):
        return jnp.asarray(learning_rate(count - 1))
    return h.learning_rate


def _learning_rate_average(
    learning_rate: ScalarOrSchedule, b1: jax.typing.ArrayLike
) -> GradientTransformation:
    r"""Divide by :math:`\bar\alpha_t = \beta_1 \bar\alpha_{t-1} + (1 - \beta_1)
    \alpha_t`, the momentum's weights summed: LaProp's bias correction."""

    def init_fn(params: Any) -> LearningRateAverageState:
        del params
        return LearningRateAverageState(
            jnp.zeros([], jnp.int32), jnp.zeros([], jnp.result_type(float))
        )

    def update_fn(
        updates: Any, state: LearningRateAverageState, params: Any = None
    ) -> tuple[Any, LearningRateAverageState]:
        del params
        count = safe_increment(state.count)
        dtype = state.average.dtype
        rate_hyper = {} if callable(learning_rate) else {"learning_rate": learning_rate}
        h = Hyper(b1=b1, **rate_hyper)(dtype)
        rate = _rate_at(learning_rate, count, h).astype(dtype)
        average = h.b1 * state.average + (1 - h.b1) * rate
        # With no rate yet (all zero) the momentum is zero too: divide by one.
        safe = jnp.where(average == 0, jnp.ones_like(average), average)

        def leaf(u: jax.Array) -> jax.Array:
            return (u / safe.astype(real_dtype(u.dtype))).astype(u.dtype)

        return jax.tree.map(leaf, updates), LearningRateAverageState(count, average)

    return GradientTransformation(init_fn, update_fn, Traits(True))


def scale_by_laprop(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-15,
    *,
    learning_rate: ScalarOrSchedule = 1.0,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""LaProp: momentum over the gradient already divided by its RMS.

    .. math::
        \begin{aligned}
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, \alpha_t\,
            \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} \\
        \bar\alpha_t &= \beta_1 \bar\alpha_{t-1} + (1 - \beta_1) \alpha_t,
        \qquad u_t = m_t / \bar\alpha_t
        \end{aligned}

    Adam averages gradients and divides the average; LaProp divides each
    gradient first and averages the results, so momentum and adaptivity are
    separate (and :math:`\beta_1 > \beta_2` is allowed). As in the authors'
    code, the momentum weighs each step by its learning rate
    :math:`\alpha_t`, and its bias correction is the same average of the rates
    alone: with a constant rate :math:`u_t = m_t / (\alpha (1 - \beta_1^t))`,
    and when the rate changes, steps taken at a larger rate keep a larger
    weight. So this transformation needs the learning rate; the optimizer
    then multiplies by :math:`\alpha_t` (see :func:`laprop`). The authors'
    ``centered`` and ``amsgrad`` options are not offered.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the momentum.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon \ge 0`, added to the RMS.
        learning_rate: :math:`\alpha_t`, a number or a schedule, the weights
            of the momentum (the same as the optimizer's).
        state_bits: how :math:`m` and :math:`v` are stored: 32, 16 (bfloat16),
            8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; its state is the moments'
        :class:`ScaleByAdamState` and a :class:`LearningRateAverageState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_laprop()
        >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> print(u)  # the first step: the sign, as Adam's
        [ 1. -1.]

    References:
        Ziyin, Wang & Ueda, 2020, "LaProp: Separating Momentum and Adaptivity
        in Adam", https://arxiv.org/abs/2002.04839; reference code
        https://github.com/Z-T-WANG/LaProp-Optimizer
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_adam_args(b1, b2, eps, 0.0)
    storage = Storage.parse(state_bits)
    lr_hyper = {} if callable(learning_rate) else {"learning_rate": learning_rate}

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h = x.h
        t = as_float(x.count).astype(h.b2.dtype)
        v = x.stored.nu(h.b2 * v + (1 - h.b2) * abs_sq(g))
        normed = g / (jnp.sqrt(v / (1 - h.b2**t)) + h.eps)
        rate = _rate_at(learning_rate, x.count, h).astype(h.b1.dtype)
        m = x.stored.mu(h.b1 * m + (1 - h.b1) * rate * normed)
        return m, m, v

    moments = moment_transform(
        ScaleByAdamState,
        [MU, NU],
        storage,
        body,
        name="scale_by_laprop",
        hyperparams={"b1": b1, "b2": b2, "eps": eps, **lr_hyper},
    )
    return chain(moments, _learning_rate_average(learning_rate, b1))


def laprop(
    learning_rate: ScalarOrSchedule = 4e-4,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-15,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""LaProp (Ziyin et al., 2020): Adam with momentum over normalized gradients.

    .. math::
        \theta_t = (\theta_{t-1} - \alpha_t u_t)(1 - \alpha_t \lambda)

    with :math:`u_t` of :func:`scale_by_laprop`. Defaults are the authors'.
    Weight decay acts on the stepped params, as in the authors' code, but
    scaled by the learning rate, as ``pytorch-optimizer``'s port and every
    adamx ``weight_decay`` do: the authors' code subtracts
    :math:`\lambda \theta` unscaled, so that a schedule must decay it apart
    (their ``weight_decay`` equals this one times the rate).

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        mask: a tree of bools (or a function of the params returning one)
            saying which params decay.
        state_bits: how the moments are stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation` (with weight decay, its
        ``update`` needs the params).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.laprop(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), state, params)
        >>> print(adamx.apply_updates(params, updates))
        [ 0.9 -2.1]

    References:
        Ziyin, Wang & Ueda, 2020, "LaProp: Separating Momentum and Adaptivity
        in Adam", https://arxiv.org/abs/2002.04839
    """
    checks.check_nonnegative("weight_decay", weight_decay)
    parts = [
        scale_by_laprop(
            b1, b2, eps, learning_rate=learning_rate, state_bits=state_bits
        ),
        learning_rate_stage(learning_rate),
    ]
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        decay = decay_stepped_params(learning_rate, weight_decay)
        parts.append(decay if mask is None else masked(decay, mask))
    return chain(*parts)


# -------------------------------------------------------------------- MARS


class ScaleByMarsState(NamedTuple):
    """State of the variance reduction in :func:`scale_by_mars`."""

    last_grad: Any  # like params (or codes): the previous step's gradient


LAST_GRAD = Moment("last_grad", signed=True)


def _variance_reduced(
    b1: jax.typing.ArrayLike, gamma: jax.typing.ArrayLike, storage: Storage
) -> GradientTransformation:
    r""":math:`c_t = g_t + \gamma \frac{\beta_1}{1 - \beta_1}(g_t - g_{t-1})`,
    scaled to norm 1 per leaf where its norm exceeds 1."""

    def init_fn(params: Any) -> ScaleByMarsState:
        return ScaleByMarsState(storage.init(LAST_GRAD, params))

    def update_fn(
        updates: Any, state: ScaleByMarsState, params: Any = None
    ) -> tuple[Any, ScaleByMarsState]:
        del params
        hyper = Hyper(b1=b1, gamma=gamma)

        def leaf(g: jax.Array, last: Any) -> tuple[jax.Array, Any]:
            ct = wider_dtype(g.dtype, jnp.float32)
            h = hyper(real_dtype(ct))
            g32 = g.astype(ct)
            c = (g32 - load(last, ct)) * (h.gamma * (h.b1 / (1 - h.b1))) + g32
            norm = jnp.sqrt(jnp.sum(abs_sq(c)))
            c = c / jnp.maximum(norm, 1).astype(ct)
            return c.astype(g.dtype), store(g32, last)

        corrected, last = leafwise(leaf, 2, updates, state.last_grad)
        return corrected, ScaleByMarsState(last)

    stage = Stage("mars_variance_reduction", {"b1": b1, "gamma": gamma})
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def scale_by_mars(
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    gamma: jax.typing.ArrayLike = 0.025,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""MARS-AdamW: Adam's moments of a variance-reduced gradient.

    .. math::
        \begin{aligned}
        c_t &= g_t + \gamma \frac{\beta_1}{1 - \beta_1}
            \left(g_t - g_{t-1}\right), \qquad
        c_t \leftarrow c_t / \max(1, \|c_t\|) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) c_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) |c_t|^2 \\
        u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)}
            + \epsilon}
        \end{aligned}

    with :math:`g_0 = 0` and the norm taken per leaf. This is the authors'
    approximate MARS (``is_approx=True``, their default): the correction uses
    the previous step's gradient, not the previous params' gradient on this
    step's batch, so it costs no second gradient. The state is the last
    gradient (:class:`ScaleByMarsState`) and Adam's moments
    (:class:`ScaleByAdamState`); ``state_bits`` stores all three.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the first moment.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon \ge 0`.
        gamma: :math:`\gamma \ge 0`, the strength of the correction (0: Adam
            with the clipped gradient).
        state_bits: how the last gradient and the moments are stored: 32, 16
            (bfloat16), 8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_mars()
        >>> u, _ = tx.update(jnp.array([0.3, -0.4]), tx.init(jnp.zeros(2)))
        >>> print(u.round(4))  # the first step of Adam: the signs
        [ 1. -1.]

    References:
        Yuan et al., 2024, "MARS: Unleashing the Power of Variance Reduction
        for Training Large Models", https://arxiv.org/abs/2411.10438;
        reference code https://github.com/AGI-Arena/MARS
    """
    checks.check_adam_args(b1, b2, eps, 0.0)
    checks.check_nonnegative("gamma", gamma)
    storage = Storage.parse(state_bits)
    return chain(
        _variance_reduced(b1, gamma, storage),
        scale_by_adam(b1, b2, eps, state_bits=state_bits),
    )


def mars(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    gamma: jax.typing.ArrayLike = 0.025,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    optimize_1d: bool = False,
    adam_learning_rate: ScalarOrSchedule | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_weight_decay: jax.typing.ArrayLike = 0.1,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""MARS-AdamW (Yuan et al., 2024) for the matrices, AdamW for the rest.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t (u_t + \lambda \theta_{t-1})

    with :math:`u_t` of :func:`scale_by_mars` on every 2-D leaf, and AdamW with
    ``adam_b1``, ``adam_b2``, ``adam_weight_decay`` and the same ``eps`` on the
    others, as the authors' code does; ``optimize_1d=True`` gives every leaf
    to MARS, with ``weight_decay``. Defaults are the authors'. Where adamx
    differs from their code: ``adam_learning_rate`` defaults to
    ``learning_rate`` (theirs is ``lr_1d = 3e-3`` apart from ``lr``, the same
    at the defaults, and follows ``lr``'s schedule as the ratio
    ``lr_1d / lr``); ``pytorch-optimizer``'s port gives MARS every leaf of
    two or more dimensions, the authors' code (followed here) 2-D ones only.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, for both parts.
        weight_decay: :math:`\lambda \ge 0`, decoupled, for MARS' leaves.
        gamma: :math:`\gamma \ge 0`, the strength of the correction.
        mask: which of MARS' leaves decay: a tree of bools or a function of
            the params returning one.
        optimize_1d: MARS for every leaf, not only matrices.
        adam_learning_rate: AdamW's rate; ``None`` uses ``learning_rate``.
        adam_b1: AdamW's :math:`\beta_1`.
        adam_b2: AdamW's :math:`\beta_2`.
        adam_weight_decay: AdamW's weight decay.
        state_bits: how every moment (and the last gradient) is stored: 32,
            16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation` (a :func:`~adamx.partition`
        into ``"mars"`` and ``"adam"``); its ``update`` needs the params where
        any weight decay is on.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
        >>> tx = adamx.mars(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> grads = {"w": jnp.full((2, 2), 0.1), "b": jnp.ones(2)}
        >>> updates, state = tx.update(grads, state, params)
        >>> print(updates["w"].round(3))
        [[-0.1 -0.1]
         [-0.1 -0.1]]

    References:
        Yuan et al., 2024, "MARS: Unleashing the Power of Variance Reduction
        for Training Large Models", https://arxiv.org/abs/2411.10438
    """
    checks.check_bool("optimize_1d", optimize_1d)
    checks.check_nonnegative("weight_decay", weight_decay)
    adam_rate = learning_rate if adam_learning_rate is None else adam_learning_rate
    mars_part = chain(
        scale_by_mars(b1, b2, eps, gamma, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )
    if optimize_1d:
        return mars_part

    def labels(params: Any) -> Any:
        return jax.tree.map(lambda p: "mars" if jnp.ndim(p) == 2 else "adam", params)

    return partition(
        {
            "mars": mars_part,
            "adam": adamw(
                adam_rate,
                adam_b1,
                adam_b2,
                eps,
                weight_decay=adam_weight_decay,
                state_bits=state_bits,
            ),
        },
        labels,
    )


# ------------------------------------------------------------- StableAdamW


def scale_by_stable_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""StableAdamW's step: Adam's, clipped by Adafactor's update RMS, per leaf.

    .. math::
        \begin{aligned}
        \hat\beta_{i,t} &= \beta_i \frac{1 - \beta_i^{t-1}}{1 - \beta_i^t},
        \qquad
        \hat m_t = \hat\beta_{1,t} \hat m_{t-1} + (1 - \hat\beta_{1,t}) g_t,
        \qquad
        \hat v_t = \hat\beta_{2,t} \hat v_{t-1} + (1 - \hat\beta_{2,t}) |g_t|^2 \\
        \rho_t &= \sqrt{\operatorname{mean}\!\left(|g_t|^2 /
            \max(\hat v_t, \epsilon^2)\right)}, \qquad
        u_t = \frac{1}{\max(1, \rho_t)} \left(\frac{\hat m_t}{\sqrt{\hat v_t}
            + \epsilon} + \lambda \theta_{t-1}\right)
        \end{aligned}

    The debiased betas make :math:`\hat m_t, \hat v_t` Adam's bias-corrected
    moments. Where a leaf's gradient is large against its second moment (a
    loss spike), :math:`\rho_t > 1` shrinks the step, as Adafactor's update
    clipping does, without a global clipping threshold. The weight decay sits
    inside the clipping (the rate it is scaled by is the clipped one), which
    is why this transformation takes it; its ``update`` needs the params when
    ``weight_decay`` is not 0. Follows ``torch-optimi``'s ``StableAdamW``
    (``decouple_lr=False``).

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`, decoupled.
        mask: a tree of bools (or a function of the params returning one)
            saying which params decay.
        state_bits: how the moments are stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState` (the debiased moments).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_stable_adam()
        >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> print(u.round(4))  # rho = 1 on the first step: Adam's signs
        [ 1. -1.]

    References:
        Wortsman et al., 2023, "Stable and low-precision training for
        large-scale vision-language models", https://arxiv.org/abs/2304.13013;
        ``torch-optimi``, https://optimi.benjaminwarner.dev/optimizers/stableadamw/
    """
    checks.check_adam_args(b1, b2, eps, 0.0)
    checks.check_nonnegative("weight_decay", weight_decay)
    storage = Storage.parse(state_bits)
    decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)

    def debiased(b: jax.Array, t: jax.Array) -> jax.Array:
        return (b**t - b) / (b**t - 1)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h = x.h
        t = as_float(x.count).astype(h.b1.dtype)
        b1_, b2_ = debiased(h.b1, t), debiased(h.b2, t)
        m = x.stored.mu(m + (1 - b1_) * (g - m))
        v = x.stored.nu(b2_ * v + (1 - b2_) * abs_sq(g))
        return m / (jnp.sqrt(v) + h.eps), m, v

    moments = moment_transform(
        ScaleByAdamState,
        [MU, NU],
        storage,
        body,
        name="scale_by_stable_adam",
        hyperparams={"b1": b1, "b2": b2, "eps": eps},
    )

    def update_fn(
        updates: Any, state: ScaleByAdamState, params: Any = None
    ) -> tuple[Any, ScaleByAdamState]:
        if decays:
            require_params("scale_by_stable_adam's weight decay", params)
        steps, new_state = moments.update(updates, state)
        if decays:
            decay = add_decayed_weights(weight_decay, mask)
            steps, _ = decay.update(steps, decay.init(params), params)
        hyper = Hyper(b2=b2, eps=eps)
        t = as_float(new_state.count)

        def leaf(g: jax.Array, v_old: Any, u: jax.Array) -> tuple[jax.Array]:
            # The RMS is taken of the new second moment as computed, before it
            # is stored: block codes round a small v to zero.
            wide = wider_dtype(g.dtype, jnp.float32)
            ct = real_dtype(wide)
            h = hyper(ct)
            b2_ = debiased(h.b2, t.astype(ct))
            g2 = abs_sq(g.astype(wide))
            v = b2_ * load(v_old, ct) + (1 - b2_) * g2
            rms = jnp.sqrt(jnp.mean(g2 / jnp.maximum(v, h.eps**2)))
            scaled = u.astype(wide) / jnp.maximum(rms, 1).astype(wide)
            return (scaled.astype(u.dtype),)

        (out,) = leafwise(leaf, 1, updates, state.nu, steps)
        return out, new_state

    stage = Stage(
        "scale_by_stable_adam",
        {
            "b1": b1,
            "b2": b2,
            "eps": eps,
            "weight_decay": weight_decay,
            "storage": storage,
        },
    )
    return GradientTransformation(moments.init, update_fn, Traits(False, (stage,)))


def stable_adamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 1e-2,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""StableAdamW (Wortsman et al., 2023): AdamW with per-leaf update clipping.

    .. math::
        \theta_t = \theta_{t-1} - \frac{\alpha_t}{\max(1, \rho_t)}
        \left(\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
        + \lambda \theta_{t-1}\right)

    with :math:`\rho_t` the RMS of :math:`g_t / \sqrt{\hat v_t}` over the leaf
    (see :func:`scale_by_stable_adam`). Defaults are ``torch-optimi``'s
    ``StableAdamW``, which this equals; its ``decouple_lr`` (weight decay not
    scaled by the rate) is not offered.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        mask: a tree of bools (or a function of the params returning one)
            saying which params decay.
        state_bits: how the moments are stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation` whose ``update`` needs the
        params (unless ``weight_decay=0``).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.stable_adamw(learning_rate=0.1, weight_decay=0.0)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, _ = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.9 -2.1]

    References:
        Wortsman et al., 2023, "Stable and low-precision training for
        large-scale vision-language models", https://arxiv.org/abs/2304.13013
    """
    return chain(
        scale_by_stable_adam(b1, b2, eps, weight_decay, mask, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )
