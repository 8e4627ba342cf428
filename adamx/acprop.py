r"""ACProp: AdaBelief's centred second moment, applied one step late.

ACProp (Zhuang et al., 2021) divides the gradient by the square root of the
moving variance of the gradient around its mean, as AdaBelief does, but by the
variance of the steps *before* this one: the denominator holds no trace of
:math:`g_t`, which is what the paper's convergence proof needs (the
"asynchronous" update). Built on the moment skeleton (:mod:`adamx.moments`),
so ``state_bits`` (32 or 16), ``inject_hyperparams`` and sharding come with
it; names, arguments and defaults are ``optax.contrib``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.adaptive import MU, ScaleByBeliefState
from adamx.base import GradientTransformation, ScalarOrSchedule
from adamx.combine import chain
from adamx.moments import LeafStep, abs_sq, as_float, moment_transform
from adamx.storage import Moment, Storage
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = ["acprop", "scale_by_acprop"]


def scale_by_acprop(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""ACProp's step: the gradient over the previous steps' centred RMS.

    .. math::
        \begin{aligned}
        u_t &= \frac{g_t}{\sqrt{s_{t-1} / (1 - \beta_2^{t-1})} + \epsilon}
            \quad (t \ge 2), \qquad u_1 = \frac{g_1}{1 + \epsilon} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2) |g_t - m_t|^2 + \bar\epsilon
        \end{aligned}

    counting steps from :math:`t = 1`, with :math:`m_0 = s_0 = 0`. The first
    step has no variance to divide by and passes the gradient through. The
    first moment only centres the variance; the step itself is the gradient's
    (the authors' ``momentum_update=False``, their default).

    This is the paper's algorithm and the authors' code, which centre the
    variance on the new mean :math:`m_t`. ``optax.contrib.scale_by_acprop``
    (0.2.8) centres it on the previous one, :math:`|g_t - m_{t-1}|^2`, against
    its own documented rule; adamx follows the authors. Where the authors'
    code departs from the paper, adamx follows the paper (and Optax): their
    defaults add RAdam's rectification (``rectify=True``, an SGD-with-momentum
    step while the variance estimate is young), and they add :math:`\epsilon`
    both inside and outside the square root, where here :math:`\bar\epsilon`
    is added to :math:`s_t` and :math:`\epsilon` outside the root. Complex
    params get :math:`|g_t - m_t|^2`, stored real.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the mean :math:`m`.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the centred variance :math:`s`.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added to :math:`s_t` each step;
            keep it above zero to differentiate through the step.
        state_bits: how :math:`m` and :math:`s` are stored: 32 (the params'
            dtype) or 16 (bfloat16). Block codes (8 or 4) are refused: the
            step divides by :math:`s_{t-1}` alone, which a code may round to
            zero.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`~adamx.ScaleByBeliefState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_acprop()
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([1.0, -2.0]), state)
        >>> print(u)  # no variance yet: the gradient itself
        [ 1. -2.]
        >>> print(state.nu)  # (1 - b2) |g - m_1|^2 = 0.001 (0.9 g)^2
        [0.00081 0.00324]

    References:
        Zhuang et al., 2021, "Momentum Centering and Asynchronous Update for
        Adaptive Gradient Methods", https://arxiv.org/abs/2110.05454;
        reference code https://github.com/juntang-zhuang/ACProp-Optimizer
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    storage = Storage.parse(state_bits)
    if storage.quantized:
        raise ValueError(
            f"scale_by_acprop cannot store its moments in {state_bits} bits: it "
            "divides the gradient by the stored variance alone, which holds no "
            "trace of this gradient, and a block code rounds a variance far below "
            "its block's largest to zero (8 bits; the step then divides by eps "
            "and diverges) or up to a sixteenth of it (4 bits; the step stalls). "
            "Use state_bits 16 or 32."
        )

    def body(x: LeafStep, g: jax.Array, m: jax.Array, s: jax.Array) -> tuple:
        h = x.h
        before = as_float(x.count - 1).astype(h.b2.dtype)  # steps behind s_{t-1}
        first = before == 0
        # 1 - b2^0 = 0 on the first step, where s_0 = 0 is not used.
        correction = jnp.where(first, jnp.ones_like(h.b2), 1 - h.b2**before)
        s_hat = jnp.where(first, jnp.ones_like(s), s / correction)
        u = g / (jnp.sqrt(s_hat) + h.eps)
        m = x.stored.mu((1 - h.b1) * g + h.b1 * m)
        s = x.stored.nu((1 - h.b2) * abs_sq(g - m) + h.b2 * s + h.eps_root)
        return u, m, s

    return moment_transform(
        ScaleByBeliefState,
        [MU, Moment("nu", signed=False)],
        storage,
        body,
        name="scale_by_acprop",
        hyperparams={"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
    )


def acprop(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""ACProp (Zhuang et al., 2021): momentum centring and asynchronous update.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(\frac{g_t}{\sqrt{s_{t-1} /
        (1 - \beta_2^{t-1})} + \epsilon} + \lambda \theta_{t-1}\right)

    with :math:`s_t` the moving average of :math:`|g_t - m_t|^2` around the
    gradients' moving mean :math:`m_t` (see :func:`~adamx.scale_by_acprop`,
    also for where Optax's numbers differ), and the gradient itself on the
    first step. The weight decay is decoupled and scaled by the rate, as in
    the authors' code (``weight_decouple=True``). Names, arguments and
    defaults are ``optax.contrib.acprop``'s.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added to :math:`s_t` each step.
        weight_decay: :math:`\lambda \ge 0`.
        mask: which params decay: a tree of bools or a function of the params
            returning one.
        state_bits: how the moments are stored: 32 or 16 (bfloat16).

    Returns:
        A :class:`~adamx.GradientTransformation`; its ``update`` needs the
        params where ``weight_decay`` is not 0.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.acprop(learning_rate=0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for g in ([0.5, 0.5], [0.3, 0.7]):
        ...     updates, state = tx.update(jnp.array(g), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(params.round(4))  # second step: 0.1 g_2 / sqrt(s_1 / 0.001)
        [ 0.8833 -2.2056]

    References:
        Zhuang et al., 2021, "Momentum Centering and Asynchronous Update for
        Adaptive Gradient Methods", https://arxiv.org/abs/2110.05454;
        reference code https://github.com/juntang-zhuang/ACProp-Optimizer
    """
    checks.check_nonnegative("weight_decay", weight_decay)
    return chain(
        scale_by_acprop(b1, b2, eps, eps_root, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )
