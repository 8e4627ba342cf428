r"""Steps from the signs of gradients: signSGD, Signum and Rprop.

Each step here is :math:`\pm` a step size per param, whatever the gradient's
magnitude: signSGD takes the sign of the gradient, Signum the sign of its
moving average, Rprop adapts a step size per param from whether successive
gradients agree in sign. Names, arguments and defaults are Optax's. Signum's
average and Rprop's step sizes are element-wise moments, so both take
``state_bits``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    is_concrete,
)
from adamx.combine import chain
from adamx.moments import LeafStep, moment_transform, promoted
from adamx.storage import Moment, Storage
from adamx.traits import Stage, Traits
from adamx.transforms import ema, learning_rate_stage, scale

__all__ = [
    "ScaleByRpropState",
    "rprop",
    "scale_by_rprop",
    "scale_by_sign",
    "sign_sgd",
    "signum",
]


def scale_by_sign() -> GradientTransformation:
    r"""Replace each update by its sign.

    .. math:: u_t = \operatorname{sign}(g_t)

    element by element: :math:`-1`, :math:`0` or :math:`1` for real updates,
    and :math:`g / |g|` (0 at 0) for complex ones, as ``jnp.sign`` and Optax
    take it.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_sign()
        >>> print(tx.update(jnp.array([0.3, 0.0, -2.0]), tx.init(None))[0])
        [ 1.  0. -1.]

    References:
        Bernstein et al., 2018, "signSGD: Compressed Optimisation for
        Non-Convex Problems", https://arxiv.org/abs/1802.04434
    """

    def init_fn(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Any, state: EmptyState, params: Any = None
    ) -> tuple[Any, EmptyState]:
        del params
        return jax.tree.map(jnp.sign, updates), state

    stage = Stage("scale_by_sign", {})
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    r"""signSGD: gradient descent along the signs of the gradient.

    .. math:: \theta_t = \theta_{t-1} - \alpha_t \operatorname{sign}(g_t)

    element by element (see :func:`scale_by_sign`). Each param moves by the
    learning rate, whatever its gradient's size; only the signs would need to
    be communicated between workers.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.sign_sgd(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> updates, state = tx.update(jnp.array([5.0, -0.01]), state, params)
        >>> print(adamx.apply_updates(params, updates))
        [ 0.9 -1.9]

    References:
        Bernstein et al., 2018, "signSGD: Compressed Optimisation for
        Non-Convex Problems", https://arxiv.org/abs/1802.04434

        Balles et al., 2020, "The Geometry of Sign Gradient Descent",
        https://arxiv.org/abs/2002.08056
    """
    return chain(scale_by_sign(), learning_rate_stage(learning_rate))


def signum(
    learning_rate: ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 0.9,
    accumulator_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Signum: signSGD on a moving average of the gradients.

    .. math::
        m_t = \beta\, m_{t-1} + (1 - \beta)\, g_t, \qquad
        \theta_t = \theta_{t-1} - \alpha_t \operatorname{sign}(m_t)

    with :math:`m_0 = 0`. The average is not debiased: its sign is the same.
    The state is :func:`~adamx.ema`'s (without debiasing), then the sign's and
    the learning rate's, as in ``optax.signum``.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        beta: :math:`\beta \in [0, 1)`, the decay of the average.
        accumulator_dtype: dtype of :math:`m`; ``None`` uses the params'.
        state_bits: how :math:`m` is stored: 32 (as ``accumulator_dtype``
            says), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`). Not to be combined with ``accumulator_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.signum(learning_rate=0.1, beta=0.5)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for g in ([1.0, 1.0], [-3.0, -0.5]):  # m: [0.5, 0.5], [-1.25, 0]
        ...     updates, state = tx.update(jnp.array(g), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(params)
        [ 1. -2.1]

    References:
        Bernstein et al., 2018, "signSGD: Compressed Optimisation for
        Non-Convex Problems", https://arxiv.org/abs/1802.04434

        Zhao et al., 2024, "Deconstructing What Makes a Good Optimizer for
        Language Models", https://arxiv.org/abs/2407.07972
    """
    # Checked here so that the message names signum's argument, not ema's.
    checks.check_decay("beta", beta)
    return chain(
        ema(
            beta,
            debias=False,
            accumulator_dtype=accumulator_dtype,
            state_bits=state_bits,
        ),
        scale_by_sign(),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------------------- Rprop


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`."""

    step_sizes: Any  # like params (or codes): the step size of each param, > 0
    prev_updates: Any  # like params (or codes): the last step, 0 after a sign flip


def scale_by_rprop(
    learning_rate: jax.typing.ArrayLike,
    eta_minus: jax.typing.ArrayLike = 0.5,
    eta_plus: jax.typing.ArrayLike = 1.2,
    min_step_size: jax.typing.ArrayLike = 1e-6,
    max_step_size: jax.typing.ArrayLike = 50.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Rprop's step: a step size per param, grown or shrunk by the gradient's sign.

    .. math::
        \begin{aligned}
        s_t &= g_t\, u_{t-1}, \qquad \Delta_0 = \alpha, \quad u_0 = 0 \\
        \Delta_t &= \begin{cases}
            \min(\eta^+ \Delta_{t-1}, \Delta_{\max}) & s_t > 0 \\
            \max(\eta^- \Delta_{t-1}, \Delta_{\min}) & s_t < 0 \\
            \Delta_{t-1} & s_t = 0 \end{cases} \\
        u_t &= \begin{cases} 0 & s_t < 0 \\
            \Delta_t \operatorname{sign}(g_t) & \text{otherwise} \end{cases}
        \end{aligned}

    element by element; the update is :math:`u_t`, which :func:`rprop` negates.
    After a change of sign the param stays where it is and the next step does
    not adapt its step size (:math:`u_t = 0`): the iRprop\ :sup:`-` variant of
    Igel & Hüsken, which ``torch.optim.Rprop`` runs. Optax's
    ``scale_by_rprop`` keeps the same state but returns the previous step's
    :math:`u_{t-1}` (zero on the first step), one step late; adamx returns
    :math:`u_t`, as the authors and PyTorch do, so its states equal Optax's
    and its updates are PyTorch's.

    Complex params are refused: the cases compare :math:`s_t` with 0.

    Args:
        learning_rate: :math:`\alpha \ge 0`, the initial step size.
        eta_minus: :math:`\eta^- \in (0, 1)`, the factor after a change of sign.
        eta_plus: :math:`\eta^+ > 1`, the factor while the sign stays.
        min_step_size: :math:`\Delta_{\min} \ge 0`.
        max_step_size: :math:`\Delta_{\max} \ge \Delta_{\min}`.
        state_bits: how :math:`\Delta` and :math:`u` are stored: 32 (the
            params' dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByRpropState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_rprop(learning_rate=0.1)
        >>> state = tx.init(jnp.zeros(2))
        >>> for g in ([1.0, 1.0], [1.0, -1.0], [1.0, -1.0]):
        ...     u, state = tx.update(jnp.array(g), state)
        ...     print(u.round(4))
        [0.1 0.1]
        [0.12 0.  ]
        [ 0.144 -0.05 ]

    References:
        Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
        Backpropagation Learning: The RPROP Algorithm",
        https://doi.org/10.1109/ICNN.1993.298623

        Igel & Hüsken, 2003, "Empirical evaluation of the improved Rprop
        learning algorithms", https://doi.org/10.1016/S0925-2312(01)00700-7
    """
    checks.check_nonnegative("learning_rate", learning_rate)
    checks.check_range("eta_minus", eta_minus, 0.0, 1.0, low_open=True, high_open=True)
    checks.check_range("eta_plus", eta_plus, 1.0, np.inf, low_open=True)
    checks.check_nonnegative("min_step_size", min_step_size)
    checks.check_nonnegative("max_step_size", max_step_size)
    bounds = (min_step_size, max_step_size)
    if all(map(is_concrete, bounds)) and np.less(max_step_size, min_step_size):
        raise ValueError(
            f"max_step_size must be >= min_step_size={min_step_size!r}, "
            f"got {max_step_size!r}"
        )
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, step: jax.Array, last: jax.Array) -> tuple:
        h = x.h
        s = g * last
        grown = jnp.where(s > 0, h.eta_plus, h.eta_minus) * step
        step = x.stored.step_sizes(
            jnp.where(s == 0, step, jnp.clip(grown, h.min_step_size, h.max_step_size))
        )
        u = x.stored.prev_updates(jnp.where(s < 0, 0, step * jnp.sign(g)))
        return u, step, u

    return moment_transform(
        ScaleByRpropState,
        [
            Moment("step_sizes", signed=False, initial=learning_rate),
            Moment("prev_updates"),
        ],
        storage,
        body,
        name="scale_by_rprop",
        hyperparams={
            "eta_minus": eta_minus,
            "eta_plus": eta_plus,
            "min_step_size": min_step_size,
            "max_step_size": max_step_size,
        },
        stage_args={"learning_rate": learning_rate},
        compute_dtype=promoted,
        counted=False,
        complex_params=False,
    )


def rprop(
    learning_rate: jax.typing.ArrayLike,
    eta_minus: jax.typing.ArrayLike = 0.5,
    eta_plus: jax.typing.ArrayLike = 1.2,
    min_step_size: jax.typing.ArrayLike = 1e-6,
    max_step_size: jax.typing.ArrayLike = 50.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Rprop: resilient backpropagation, a step size per param set by signs.

    .. math::
        \theta_t = \theta_{t-1} - u_t, \qquad
        u_t = \Delta_t \operatorname{sign}(g_t) \ (0 \text{ after a change of sign})

    where each :math:`\Delta_t` grows by :math:`\eta^+` while its gradient
    keeps its sign and shrinks by :math:`\eta^-` when it changes (see
    :func:`~adamx.scale_by_rprop`). This is iRprop\ :sup:`-`, as
    ``torch.optim.Rprop`` runs it; Optax's ``rprop`` applies each step one
    step late (its first step is zero), which adamx does not copy.

    Args:
        learning_rate: :math:`\alpha \ge 0`, the initial step size (a number:
            the step sizes adapt themselves).
        eta_minus: :math:`\eta^- \in (0, 1)`.
        eta_plus: :math:`\eta^+ > 1`.
        min_step_size: the smallest step size.
        max_step_size: the largest step size.
        state_bits: how the step sizes and last steps are stored: 32, 16
            (bfloat16), 8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.rprop(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     updates, state = tx.update(jnp.array([1.0, -1.0]), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(params)
        [ 0.78 -1.78]

    References:
        Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
        Backpropagation Learning: The RPROP Algorithm",
        https://doi.org/10.1109/ICNN.1993.298623

        Igel & Hüsken, 2003, "Empirical evaluation of the improved Rprop
        learning algorithms", https://doi.org/10.1016/S0925-2312(01)00700-7
    """
    return chain(
        scale_by_rprop(
            learning_rate,
            eta_minus,
            eta_plus,
            min_step_size,
            max_step_size,
            state_bits=state_bits,
        ),
        scale(-1.0),
    )
