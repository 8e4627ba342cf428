r"""Optimizers that followed Adam: each its transformation and its chain.

ADOPT here; AdEMAMix, schedule-free, MARS and the other successors as they
land. Each is built on the moment skeleton (:mod:`adamx.moments`), so
``state_bits``, ``inject_hyperparams``, the flat layout and sharding come with
it; each follows its authors' reference code, and says where Optax differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.adaptive import MU, ScaleByAdamState
from adamx.base import GradientTransformation, ScalarOrSchedule
from adamx.combine import chain
from adamx.moments import LeafStep, abs_sq, as_float, moment_transform
from adamx.storage import Moment, Storage
from adamx.transforms import learning_rate_stage

__all__ = ["adopt", "adopt_clip_value", "scale_by_adopt"]


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
