r"""Ready-made optimizers, each a :func:`~adamx.chain` of transformations.

Names, argument names, argument order and defaults follow Optax's functions of
the same name, so code migrates by changing the import. Where an optimizer's
definition differs from PyTorch's or from its paper, its docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.adaptive import (
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_lion,
    scale_by_radam,
    scale_by_rms,
    scale_by_stddev,
)
from adamx.base import GradientTransformation, ScalarOrSchedule, identity
from adamx.combine import chain
from adamx.storage import Storage
from adamx.transforms import (
    add_decayed_weights,
    clip_by_block_rms,
    ema,
    learning_rate_stage,
    scale,
    scale_by_factored_rms,
    scale_by_learning_rate,
    scale_by_param_block_rms,
    scale_by_trust_ratio,
    trace,
)

__all__ = [
    "adabelief",
    "adafactor",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "amsgrad",
    "lamb",
    "lion",
    "nadam",
    "nadamw",
    "radam",
    "rmsprop",
    "sgd",
]

MaskOrFn = Any | Callable[[Any], Any] | None


def adam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2014).

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \alpha_t \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{v_t / (1 - \beta_2^t) + \bar\epsilon} + \epsilon}
        \end{aligned}

    This is Algorithm 1 of the paper and ``torch.optim.Adam`` (``eps`` outside
    the square root); ``eps_root`` has no PyTorch counterpart.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, outside the square root.
        eps_root: :math:`\bar\epsilon \ge 0`, inside the square root.
        mu_dtype: dtype of the first moment; ``None`` uses the params' dtype.
        nesterov: use Nesterov momentum (this is then :func:`nadam`).
        nu_dtype: dtype of the second moment; ``None`` uses the params' dtype.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adam(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.9 -2.1]

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization",
        https://arxiv.org/abs/1412.6980
    """
    return chain(
        scale_by_adam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
            state_bits=state_bits,
        ),
        learning_rate_stage(learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""NAdam: Adam with Nesterov momentum (Dozat, 2016).

    .. math::
        \hat m_t = \frac{\beta_1 m_t}{1 - \beta_1^{t+1}}
        + \frac{(1 - \beta_1) g_t}{1 - \beta_1^t}, \qquad
        \theta_t = \theta_{t-1} - \alpha_t \frac{\hat m_t}
        {\sqrt{v_t / (1 - \beta_2^t) + \bar\epsilon} + \epsilon}

    with :math:`m_t, v_t` as in :func:`adam`. ``torch.optim.NAdam`` differs: it
    multiplies :math:`\beta_1` by a momentum-decay schedule
    (``momentum_decay=4e-3``), which this form leaves out, as Optax does.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        mu_dtype: dtype of the first moment.
        nesterov: kept for Optax compatibility; False gives plain :func:`adam`.
        nu_dtype: dtype of the second moment.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.nadam(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.8526 -2.1474]

    References:
        Dozat, 2016, "Incorporating Nesterov Momentum into Adam",
        https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    return adam(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        state_bits=state_bits,
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(\frac{\hat m_t}
        {\sqrt{\hat v_t + \bar\epsilon} + \epsilon} + \lambda\, \theta_{t-1}\right)

    with :math:`\hat m_t, \hat v_t` as in :func:`adam`. The decay is multiplied
    by the learning rate, as in ``torch.optim.AdamW``, whereas the paper
    multiplies :math:`\lambda` by the schedule multiplier only.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        mu_dtype: dtype of the first moment.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params to decay: a tree of bools or a function of the
            params returning one; ``None`` decays all.
        nesterov: use Nesterov momentum (this is then :func:`nadamw`).
        nu_dtype: dtype of the second moment.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adamw(learning_rate=0.1, weight_decay=0.5)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.84999996 -2.        ]

    References:
        Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
        https://arxiv.org/abs/1711.05101

        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization",
        https://arxiv.org/abs/1412.6980
    """
    return chain(
        scale_by_adam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            nesterov=nesterov,
            nu_dtype=nu_dtype,
            state_bits=state_bits,
        ),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""NAdamW: :func:`nadam` with decoupled weight decay.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(\frac{\hat m_t}
        {\sqrt{\hat v_t + \bar\epsilon} + \epsilon} + \lambda\, \theta_{t-1}\right)

    with Nesterov's :math:`\hat m_t` from :func:`nadam`. As in :func:`adamw`,
    the decay is multiplied by the learning rate; PyTorch's
    ``NAdam(decoupled_weight_decay=True)`` also adds a momentum-decay schedule.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        mu_dtype: dtype of the first moment.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params to decay.
        nesterov: kept for Optax compatibility; False gives :func:`adamw`.
        nu_dtype: dtype of the second moment.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.nadamw(learning_rate=0.1, weight_decay=0.5)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.80259997 -2.0474    ]

    References:
        Dozat, 2016, "Incorporating Nesterov Momentum into Adam",
        https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ

        Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
        https://arxiv.org/abs/1711.05101
    """
    return adamw(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        weight_decay,
        mask,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        state_bits=state_bits,
    )


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AMSGrad: Adam with a non-decreasing second moment (Reddi et al., 2018).

    .. math::
        \hat v^{\max}_t = \max\!\left(\hat v^{\max}_{t-1}, \frac{v_t}{1 -
        \beta_2^t}\right), \qquad
        \theta_t = \theta_{t-1} - \alpha_t \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{\hat v^{\max}_t + \bar\epsilon} + \epsilon}

    The maximum is over bias-corrected :math:`v_t`, as in Optax, whereas
    ``torch.optim.Adam(amsgrad=True)`` takes it over raw :math:`v_t` and
    corrects afterwards.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        mu_dtype: dtype of the first moment.
        bias_correction_mu: bias-correct the first moment.
        bias_correction_nu: bias-correct the second moment before the max.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.amsgrad(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.9 -2.1]

    References:
        Reddi et al., 2018, "On the Convergence of Adam and Beyond",
        https://openreview.net/forum?id=ryQu7f-RZ
    """
    return chain(
        scale_by_amsgrad(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            bias_correction_mu,
            bias_correction_nu,
            state_bits=state_bits,
        ),
        learning_rate_stage(learning_rate),
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaMax: Adam with the infinity norm (Kingma & Ba, 2014, §7.1).

    .. math::
        v_t = \max(\beta_2 v_{t-1}, |g_t| + \epsilon), \qquad
        \theta_t = \theta_{t-1} - \alpha_t \frac{m_t}{(1 - \beta_1^t)\, v_t}

    As in ``torch.optim.Adamax``, :math:`\epsilon` is added to :math:`|g_t|`;
    the paper has no :math:`\epsilon`.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adamax(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.9 -2.1]

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization", §7.1,
        https://arxiv.org/abs/1412.6980
    """
    return chain(
        scale_by_adamax(b1, b2, eps, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaMax with decoupled weight decay.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(\frac{m_t}{(1 - \beta_1^t)\,
        v_t} + \lambda\, \theta_{t-1}\right)

    with :math:`m_t, v_t` as in :func:`adamax`; the decay is multiplied by the
    learning rate, as in :func:`adamw`.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params to decay.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adamaxw(learning_rate=0.1, weight_decay=0.5)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.84999996 -2.        ]

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization", §7.1,
        https://arxiv.org/abs/1412.6980

        Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
        https://arxiv.org/abs/1711.05101
    """
    return chain(
        scale_by_adamax(b1, b2, eps, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2019).

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \begin{cases}
        r_t\, \hat m_t / (\sqrt{\hat v_t + \bar\epsilon} + \epsilon) &
        \rho_t \ge \rho_{\text{th}} \\ \hat m_t & \text{otherwise} \end{cases}

    with :math:`\rho_t, r_t` as in :func:`~adamx.scale_by_radam`.
    ``torch.optim.RAdam`` adds :math:`\epsilon` to :math:`\sqrt{v_t}` before
    bias correction rather than to :math:`\sqrt{\hat v_t}`.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        threshold: :math:`\rho_{\text{th}} > 4`.
        nesterov: use Nesterov momentum.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.radam(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.95 -2.05]

    References:
        Liu et al., 2019, "On the Variance of the Adaptive Learning Rate and
        Beyond", https://arxiv.org/abs/1908.03265
    """
    return chain(
        scale_by_radam(
            b1, b2, eps, eps_root, threshold, nesterov=nesterov, state_bits=state_bits
        ),
        learning_rate_stage(learning_rate),
    )


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaBelief (Zhuang et al., 2020).

    .. math::
        s_t = \beta_2 s_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \bar\epsilon, \qquad
        \theta_t = \theta_{t-1} - \alpha_t \frac{m_t / (1 - \beta_1^t)}
        {\sqrt{s_t / (1 - \beta_2^t)} + \epsilon}

    The defaults (``eps=eps_root=1e-16``) follow Optax; the paper's reference
    code uses ``eps=1e-16`` inside :math:`s_t` as well.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        nesterov: use Nesterov momentum.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adabelief(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.8889 -2.1111]

    References:
        Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the
        Belief in Observed Gradients", https://arxiv.org/abs/2010.07468
    """
    return chain(
        scale_by_belief(
            b1, b2, eps, eps_root, nesterov=nesterov, state_bits=state_bits
        ),
        learning_rate_stage(learning_rate),
    )


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""LAMB: layer-wise adaptive moments (You et al., 2019).

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon} +
        \lambda\, \theta_{t-1}, \qquad
        \theta^{(i)}_t = \theta^{(i)}_{t-1} - \alpha_t
        \frac{\|\theta^{(i)}_{t-1}\|}{\|r^{(i)}_t\|}\, r^{(i)}_t

    per leaf :math:`i`, with ratio 1 where either norm is zero. The paper's
    scaling function :math:`\phi` is the identity here.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        mask: which params to decay.
        state_bits: how the moments are stored: 32 (as the dtype arguments
            say), 16 (bfloat16), 8 or 4 (block-wise quantized, about 2 or 1
            bytes per param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.lamb(learning_rate=0.1)
        >>> params = jnp.array([3.0, -4.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 2.6464 -4.3536]

    References:
        You et al., 2019, "Large Batch Optimization for Deep Learning: Training
        BERT in 76 minutes", https://arxiv.org/abs/1904.00962
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        learning_rate_stage(learning_rate),
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Lion: evolved sign momentum (Chen et al., 2023).

    .. math::
        \begin{aligned}
        \theta_t &= \theta_{t-1} - \alpha_t \left(\operatorname{sign}(\beta_1
        m_{t-1} + (1 - \beta_1) g_t) + \lambda\, \theta_{t-1}\right) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t
        \end{aligned}

    This is the paper's Algorithm 2, decay multiplied by the learning rate.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule (typically 3-10x
            smaller than Adam's).
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        mu_dtype: dtype of the momentum.
        weight_decay: :math:`\lambda \ge 0`.
        mask: which params to decay.
        state_bits: how the momentum is stored: 32 (as ``mu_dtype`` says), 16
            (bfloat16), 8 or 4 (block-wise quantized, about 1 or 0.5 bytes per
            param; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.lion(learning_rate=0.1, weight_decay=0.0)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, -0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.9 -1.9]

    References:
        Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
        https://arxiv.org/abs/2302.06675
    """
    return chain(
        scale_by_lion(b1, b2, mu_dtype, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent, with optional (Nesterov) momentum.

    .. math::
        m_t = g_t + \mu m_{t-1}, \qquad
        \theta_t = \theta_{t-1} - \alpha_t \begin{cases} g_t + \mu m_t &
        \text{nesterov} \\ m_t & \text{otherwise} \end{cases}

    This is ``torch.optim.SGD`` with ``dampening=0`` (Sutskever et al.'s
    Nesterov form rewritten in terms of the gradient at the current params);
    ``weight_decay`` there is an L2 term, here :func:`add_decayed_weights`.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        momentum: :math:`\mu \ge 0`; ``None`` for plain SGD.
        nesterov: use Nesterov momentum (needs ``momentum``).
        accumulator_dtype: dtype of the momentum buffer.
        state_bits: how the momentum buffer is stored: 32 (as
            ``accumulator_dtype`` says), 16 (bfloat16), 8 or 4 (block-wise
            quantized; see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.sgd(learning_rate=0.1, momentum=0.9)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.95 -2.05]

    References:
        Sutskever et al., 2013, "On the importance of initialization and
        momentum in deep learning",
        https://proceedings.mlr.press/v28/sutskever13.html
    """
    checks.check_bool("nesterov", nesterov)
    if nesterov and momentum is None:
        raise ValueError("nesterov=True needs a momentum, got momentum=None")
    if momentum is not None:
        checks.check_nonnegative("momentum", momentum)
    # Checked even without momentum: a wrong storage is a mistake either way.
    Storage.parse(state_bits, accumulator_dtype=accumulator_dtype)
    stage = (
        identity()
        if momentum is None
        else trace(
            momentum,
            nesterov=nesterov,
            accumulator_dtype=accumulator_dtype,
            state_bits=state_bits,
        )
    )
    return chain(stage, learning_rate_stage(learning_rate))


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""RMSProp (Hinton, 2012), optionally centred (Graves, 2013).

    .. math::
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \qquad
        \theta_t = \theta_{t-1} - \alpha_t\, g_t / \sqrt{v_t + \epsilon}

    With ``centered=True`` the denominator uses :math:`v_t - m_t^2`;
    ``momentum`` adds :func:`~adamx.trace` after the learning rate.
    ``torch.optim.RMSprop`` puts :math:`\epsilon` outside the root: pass
    ``eps_in_sqrt=False`` to match it.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        initial_scale: :math:`v_0`.
        eps_in_sqrt: put :math:`\epsilon` inside the root.
        centered: divide by the estimated standard deviation.
        momentum: :math:`\mu \ge 0`, or ``None`` for none.
        nesterov: use Nesterov momentum.
        bias_correction: bias-correct the moving averages.
        state_bits: how the moving averages (and the momentum buffer) are
            stored: 32 (the params' dtype), 16 (bfloat16), 8 or 4 (block-wise
            quantized; see :mod:`adamx.lowbit`; not with ``centered=True``,
            see :func:`~adamx.scale_by_stddev`).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.rmsprop(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.6838 -2.3162]

    References:
        Hinton, 2012, "Neural Networks for Machine Learning", lecture 6e,
        https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf

        Graves, 2013, "Generating Sequences With Recurrent Neural Networks",
        https://arxiv.org/abs/1308.0850
    """
    checks.check_bool("centered", centered)
    checks.check_bool("nesterov", nesterov)
    if nesterov and momentum is None:
        raise ValueError("nesterov=True needs a momentum, got momentum=None")
    if momentum is not None:
        checks.check_nonnegative("momentum", momentum)
    scaler = scale_by_stddev if centered else scale_by_rms
    return chain(
        scaler(
            decay,
            eps,
            initial_scale,
            eps_in_sqrt,
            bias_correction,
            state_bits=state_bits,
        ),
        learning_rate_stage(learning_rate),
        identity()
        if momentum is None
        else trace(momentum, nesterov=nesterov, state_bits=state_bits),
    )


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: jax.typing.ArrayLike = 0.8,
    decay_offset: jax.typing.ArrayLike = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: jax.typing.ArrayLike | None = 1.0,
    momentum: jax.typing.ArrayLike | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: jax.typing.ArrayLike = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""Adafactor: sublinear-memory adaptive steps (Shazeer & Stern, 2018).

    .. math::
        \begin{aligned}
        u_t &= \frac{g_t}{\sqrt{\hat V_t}} \cdot \frac{1}{\max(1,
        \operatorname{rms}(\cdot)/d)} \cdot \alpha_t \max(\operatorname{rms}
        (\theta_{t-1}), 10^{-3}) \\
        \theta_t &= \theta_{t-1} - u_t
        \end{aligned}

    where :math:`\hat V_t` is the factored second moment of
    :func:`~adamx.scale_by_factored_rms` and :math:`d` the clipping threshold.

    Args:
        learning_rate: :math:`\alpha_t`, or ``None`` for the relative step only.
        min_dim_size_to_factor: smallest dim size that is factored.
        decay_rate: exponent of the decay schedule :math:`1 - (t+1)^{-c}`.
        decay_offset: subtracted from the step count.
        multiply_by_parameter_scale: scale by the params' RMS.
        clipping_threshold: :math:`d \ge 1`, or ``None`` for no clipping.
        momentum: EMA decay of the updates, or ``None`` for none.
        dtype_momentum: dtype of the momentum buffer.
        weight_decay_rate: decay added to the update, or ``None``.
        eps: added to :math:`g_t^2`.
        factored: factor the second moment of matrices.
        weight_decay_mask: which params to decay.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adafactor(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates).round(4))
        [ 0.8419 -2.1581]

    References:
        Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with
        Sublinear Memory Cost", https://arxiv.org/abs/1804.04235
    """
    if clipping_threshold is not None:
        checks.check_range("clipping_threshold", clipping_threshold, 1.0)
    checks.check_bool("multiply_by_parameter_scale", multiply_by_parameter_scale)
    if momentum is not None:
        checks.check_decay("momentum", momentum)
    # Checked here, under the caller's name for it, even without momentum.
    dtype_momentum = checks.check_moment_dtype("dtype_momentum", dtype_momentum)
    stages = [
        scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps
        )
    ]
    if clipping_threshold is not None:
        stages.append(clip_by_block_rms(clipping_threshold))
    if multiply_by_parameter_scale:
        stages.append(scale_by_param_block_rms())
    # The learning rate comes after the parameter scale (Optax has them the other
    # way round; the product is the same): XLA reorders products with constant
    # factors, and this order keeps a Python-float rate and an injected one
    # bitwise equal.
    if learning_rate is not None:
        stages.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if momentum is not None:
        stages.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        stages.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    stages.append(scale(-1))
    return chain(*stages)
