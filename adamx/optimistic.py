r"""Optimistic gradients: a step that anticipates the next gradient.

Optimistic gradient descent steps along :math:`(\alpha + \beta) g_t - \beta
g_{t-1}`: the current gradient plus :math:`\beta` times its last change, a
cheap stand-in for the extra gradient of extragradient methods. In min-max
games (GANs, saddle points), where plain gradient descent circles or
diverges, it converges at the last iterate. Optimistic Adam applies the same
correction to Adam's steps. Names, arguments and defaults are Optax's.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.adaptive import scale_by_adam
from adamx.base import GradientTransformation, ScalarOrSchedule, is_schedule, leafwise
from adamx.combine import chain
from adamx.lowbit import is_quantized
from adamx.moments import Hyper, at_least_float32
from adamx.storage import (
    Moment,
    Storage,
    check_moment_tree,
    real_dtype,
    store_like,
    update_moments,
)
from adamx.traits import Stage, Traits
from adamx.transforms import learning_rate_stage, scale_by_learning_rate

__all__ = [
    "ScaleByOptimisticGradientState",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "scale_by_optimistic_gradient",
]


class ScaleByOptimisticGradientState(NamedTuple):
    """State of :func:`scale_by_optimistic_gradient`."""

    is_initial_step: jax.Array  # shape=(), bool: no gradient seen yet
    previous_gradient: Any  # like params (or codes): the last step's input


PREVIOUS_GRADIENT = Moment("previous_gradient")


def scale_by_optimistic_gradient(
    alpha: jax.typing.ArrayLike = 1.0,
    beta: jax.typing.ArrayLike = 1.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""The generalized optimistic gradient: the gradient plus its last change.

    .. math::
        u_t = (\alpha + \beta)\, g_t - \beta\, g_{t-1}
        = \alpha\, g_t + \beta\, (g_t - g_{t-1})

    with :math:`g_{t-1} = g_t` at the first step (there is no previous
    gradient; Optax has done the same since 0.2.4), so the first update is
    :math:`\alpha g_1`. :math:`g` is whatever this stage receives: the
    gradient in :func:`optimistic_gradient_descent`, Adam's step in
    :func:`optimistic_adam_v2`.

    Args:
        alpha: :math:`\alpha`, the weight of the gradient.
        beta: :math:`\beta`, the weight of its change (negative momentum).
        state_bits: how :math:`g_{t-1}` is stored: 32 (the params' dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByOptimisticGradientState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_optimistic_gradient(alpha=1.0, beta=0.5)
        >>> state = tx.init(jnp.zeros(2))
        >>> for g in ([1.0, 2.0], [3.0, 2.0]):
        ...     u, state = tx.update(jnp.array(g), state)
        ...     print(u)
        [1. 2.]
        [4. 2.]

    References:
        Mokhtari et al., 2020, "A Unified Analysis of Extra-gradient and
        Optimistic Gradient Methods for Saddle Point Problems: Proximal Point
        Approach", https://arxiv.org/abs/1901.08511

        Daskalakis et al., 2018, "Training GANs with Optimism",
        https://arxiv.org/abs/1711.00141
    """
    checks.check_finite("alpha", alpha)
    checks.check_finite("beta", beta)
    storage = Storage.parse(state_bits)

    def init_fn(params: Any) -> ScaleByOptimisticGradientState:
        return ScaleByOptimisticGradientState(
            is_initial_step=jnp.array(True),
            previous_gradient=storage.init(PREVIOUS_GRADIENT, params),
        )

    def update_fn(
        updates: Any, state: ScaleByOptimisticGradientState, params: Any = None
    ) -> tuple[Any, ScaleByOptimisticGradientState]:
        del params
        check_moment_tree(updates, state.previous_gradient, "state.previous_gradient")
        hyper = Hyper(alpha=alpha, beta=beta)
        first = state.is_initial_step

        def leaf(g: jax.Array, stored: Any) -> tuple:
            ct = at_least_float32(g.dtype, ())
            h = hyper(real_dtype(ct))

            def body(g_: jax.Array, last: jax.Array) -> tuple:
                g_ = g_.astype(ct)
                last = jnp.where(first, g_, last)
                return (h.alpha + h.beta) * g_ - h.beta * last, g_

            u, new = update_moments(body, [ct], g, stored)
            return u.astype(g.dtype), new

        out, new = leafwise(leaf, 2, updates, state.previous_gradient)
        new = jax.tree.map(
            store_like, new, state.previous_gradient, is_leaf=is_quantized
        )
        return out, ScaleByOptimisticGradientState(jnp.array(False), new)

    stage = Stage(
        "scale_by_optimistic_gradient",
        {"alpha": alpha, "beta": beta, "storage": storage},
    )
    return GradientTransformation(
        init_fn, update_fn, Traits(storage.elementwise, (stage,))
    )


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: jax.typing.ArrayLike = 1.0,
    beta: jax.typing.ArrayLike = 1.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Optimistic gradient descent (OGD), for min-max games as well as minimization.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left((\alpha + \beta)\, g_t -
        \beta\, g_{t-1}\right)

    with :math:`g_0 = g_1` (see :func:`scale_by_optimistic_gradient`). With
    :math:`\alpha = \beta = 1` this is the optimistic gradient method of
    Mokhtari et al.; :math:`\beta = 0` is gradient descent.

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        alpha: :math:`\alpha`, a number (Optax's annotation allows a schedule,
            which its arithmetic does not take; adamx refuses one here).
        beta: :math:`\beta`, a number.
        state_bits: how :math:`g_{t-1}` is stored: 32, 16 (bfloat16), 8 or 4
            (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def f(x, y):  # a bilinear game: x minimizes, y maximizes
        ...     return x * y
        >>> tx = adamx.optimistic_gradient_descent(learning_rate=0.1)
        >>> params = (jnp.array(1.0), jnp.array(1.0))
        >>> state = tx.init(params)
        >>> for _ in range(1000):
        ...     gx, gy = jax.grad(f, argnums=(0, 1))(*params)
        ...     updates, state = tx.update((gx, -gy), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{float(jnp.hypot(*params)):.3f}")  # from 1.414; SGD's: 204.7
        0.009

    References:
        Mokhtari et al., 2020, "A Unified Analysis of Extra-gradient and
        Optimistic Gradient Methods for Saddle Point Problems: Proximal Point
        Approach", https://arxiv.org/abs/1901.08511
    """
    return chain(
        scale_by_optimistic_gradient(alpha, beta, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )


def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: jax.typing.ArrayLike = 1.0,
    beta: jax.typing.ArrayLike = 1.0,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-08,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    nesterov: bool = True,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Optimistic Adam: Adam's steps, corrected by their last change.

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
        r_t &= \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon} \\
        \theta_t &= \theta_{t-1} - \eta_t \left((\alpha + \beta)\, r_t -
            \beta\, r_{t-1}\right)
        \end{aligned}

    with :math:`r_0 = r_1`, :math:`\hat m_t` Nesterov's debiased look-ahead
    :math:`\beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 -
    \beta_1^t)` (or, with ``nesterov=False``, :math:`m_t / (1 - \beta_1^t)`)
    and :math:`\hat v_t = v_t / (1 - \beta_2^t)`: the chain of
    :func:`~adamx.scale_by_adam`, :func:`scale_by_optimistic_gradient` and the
    learning rate. This is the interface that Optax recommends over
    :func:`optimistic_adam`: the learning rate here takes a schedule and
    multiplies the whole step, and :math:`\alpha`, :math:`\beta` are the
    optimistic weights. Its state is ``(ScaleByAdamState,
    ScaleByOptimisticGradientState, ScaleByLearningRateState)``.

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        alpha: :math:`\alpha`, the weight of Adam's step.
        beta: :math:`\beta`, the weight of its change.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added outside the square root.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside it.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params'.
        nesterov: use Nesterov's look-ahead (Optax's default here).
        state_bits: how :math:`m`, :math:`v` and :math:`r_{t-1}` are stored:
            32 (as ``mu_dtype`` says), 16 (bfloat16), 8 or 4 (block-wise
            quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def f(x, y):  # a bilinear game: x minimizes, y maximizes
        ...     return x * y
        >>> tx = adamx.optimistic_adam_v2(1.0, alpha=1e-2, beta=1.0)
        >>> params = (jnp.array(1.0), jnp.array(2.0))
        >>> state, update = tx.init(params), jax.jit(tx.update)
        >>> for _ in range(1025):
        ...     gx, gy = jax.grad(f, argnums=(0, 1))(*params)
        ...     updates, state = update((gx, -gy), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{float(jnp.hypot(*params)):.3f}")  # from 2.236
        0.001

    References:
        Daskalakis et al., 2018, "Training GANs with Optimism",
        https://arxiv.org/abs/1711.00141
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, state_bits=state_bits
        ),
        scale_by_optimistic_gradient(alpha, beta, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )


def optimistic_adam(
    learning_rate: jax.typing.ArrayLike,
    optimism: jax.typing.ArrayLike | None = None,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-08,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Optimistic Adam with Optax's first interface: a learning rate and an optimism.

    .. math::
        \theta_t = \theta_{t-1} - \left(\alpha\, r_t + o\, (r_t - r_{t-1})\right)

    with :math:`r_t` Adam's step (see :func:`optimistic_adam_v2`),
    :math:`\alpha` the learning rate and :math:`o` the optimism, which
    defaults to :math:`\alpha` as in Daskalakis et al. It is
    ``optimistic_adam_v2(1.0, alpha=learning_rate, beta=optimism)``: the
    learning rate is the optimistic stage's :math:`\alpha`, and the last stage
    scales by 1, so the learning rate cannot be a schedule. Its state is the
    same tuple as ``optimistic_adam_v2``'s, with a last rate of 1. Optax
    deprecates this interface in favour of ``optimistic_adam_v2``; so does
    adamx, with the same ``DeprecationWarning``.

    Args:
        learning_rate: :math:`\alpha`, a number (a schedule is refused).
        optimism: :math:`o`, a number; ``None`` uses ``learning_rate``.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added outside the square root.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside it.
        mu_dtype: dtype of Adam's first moment.
        nesterov: use Nesterov's look-ahead (Optax's default here).
        state_bits: how the moments and :math:`r_{t-1}` are stored: 32, 16
            (bfloat16), 8 or 4 (block-wise quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import warnings
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     tx = adamx.optimistic_adam(1e-2, 1.0)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.array([3.0]), state)  # r_1 = 1.4737
        >>> print(u.round(4))  # -1e-2 r_1
        [-0.0147]
        >>> u, state = tx.update(jnp.array([-3.0]), state)  # r_2 = -0.5595
        >>> print(u.round(4))  # -(1e-2 r_2 + (r_2 - r_1))
        [2.0388]

    References:
        Daskalakis et al., 2018, "Training GANs with Optimism",
        https://arxiv.org/abs/1711.00141
    """
    warnings.warn(
        "optimistic_adam is deprecated, as in Optax: use `optimistic_adam_v2` "
        "instead, whose learning rate may be a schedule",
        DeprecationWarning,
        stacklevel=2,
    )
    if is_schedule(learning_rate):
        raise ValueError(
            "optimistic_adam takes a number as learning_rate, got the schedule "
            f"{learning_rate!r}: use optimistic_adam_v2(schedule, alpha=1.0, "
            "beta=optimism) for a scheduled rate"
        )
    checks.check_nonnegative("learning_rate", learning_rate)
    if optimism is None:
        optimism = learning_rate
    checks.check_finite("optimism", optimism)
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, state_bits=state_bits
        ),
        scale_by_optimistic_gradient(learning_rate, optimism, state_bits=state_bits),
        scale_by_learning_rate(1.0),
    )
