r"""Adaptive moment transformations: Adam and its family, Lion, RMSProp.

Each is its state and its formula for one leaf; :func:`adamx.moments.moment_transform`
supplies the rest: storage (``state_bits`` 32, 16, 8 or 4, ``mu_dtype``,
``nu_dtype``), the step count, tree checks, complex params and the traits the
framework reads.

The arithmetic runs in at least float32: with float16 or bfloat16 gradients the
moments are read, updated and combined in float32 and only stored (and
returned) in the low-precision dtype. This keeps ``eps`` representable (1e-8
is zero in float16) so half-precision params with zero gradients get zero
updates, not NaN. Complex params get second moments of :math:`|g|^2`, as in
Optax.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import GradientTransformation, safe_increment
from adamx.moments import (
    Hyper,
    LeafStep,
    abs_sq,
    as_float,
    debias,
    moment_transform,
    promoted,
)
from adamx.storage import Moment, Storage, real_dtype

__all__ = [
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByRmsState",
    "ScaleByStddevState",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_lion",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_stddev",
]

# The moments of the Adam family: a signed first moment, stored as mu_dtype
# says, and a second moment of |g|^2, as nu_dtype says.
MU = Moment("mu", signed=True, dtype="mu_dtype")
NU = Moment("nu", signed=False, dtype="nu_dtype")


def _nesterov_estimate(x: LeafStep, m: jax.Array, g: jax.Array) -> jax.Array:
    r"""Dozat's :math:`\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1)
    g_t / (1 - \beta_1^t)`."""
    b1 = x.h.b1
    return b1 * debias(m, b1, safe_increment(x.count)) + (1 - b1) * debias(
        g, b1, x.count
    )


class ScaleByAdamState(NamedTuple):
    """State of scale_by_adam, scale_by_adamax and scale_by_radam (as in Optax)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or mu_dtype, or codes): first moment m
    nu: Any  # like params (or nu_dtype, or codes): second moment v (adamax: u)


def _adam_scalars(hyper: Hyper, dtype: Any, count: jax.Array) -> SimpleNamespace:
    """Adam's per-update scalars: one each per dtype, whatever the leaves."""
    h = hyper(dtype)
    t = as_float(count).astype(dtype)
    return SimpleNamespace(
        omb1=1 - h.b1,
        omb2=1 - h.b2,
        bc1=1 - h.b1**t,
        bc2=1 - h.b2**t,
        # Nesterov's look-ahead term divides by 1 - b1^(t+1).
        bc1_next=1 - h.b1 ** as_float(safe_increment(count)).astype(dtype),
    )


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    bias_correction: bool = True,
    nu_dtype: Any | None = None,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale updates by Adam's moment estimates.

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad
        \hat v_t = v_t / (1 - \beta_2^t) \\
        u_t &= \hat m_t / \left(\sqrt{\hat v_t + \bar\epsilon} + \epsilon\right)
        \end{aligned}

    With ``nesterov=True``, :math:`\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1})
    + (1 - \beta_1) g_t / (1 - \beta_1^t)` (Dozat, 2016). :math:`\epsilon` sits
    outside the square root as in Algorithm 1 of the paper and in
    ``torch.optim.Adam``; :math:`\bar\epsilon` (``eps_root``) inside it.

    With ``state_bits`` 8 or 4, :math:`m_{t-1}` and :math:`v_{t-1}` are read
    from block-wise codes, the step runs as above in float32, and
    :math:`m_t, v_t` are quantized again (:mod:`adamx.lowbit`): about 2 or 1
    bytes of state per param instead of 8.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the first moment.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside the square root.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        nesterov: use Dozat's Nesterov form of :math:`\hat m_t`.
        bias_correction: divide the moments by :math:`1 - \beta^t`; when False,
            :math:`\hat m_t = m_t` and :math:`\hat v_t = v_t`.
        nu_dtype: dtype of :math:`v`; ``None`` uses the params' dtype.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (as
            ``mu_dtype``/``nu_dtype`` say), 16 (bfloat16), 8 or 4 (block-wise
            quantized, see :mod:`adamx.lowbit`). The update is computed in
            float32 either way. Not to be combined with ``mu_dtype`` or
            ``nu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adam()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization",
        https://arxiv.org/abs/1412.6980

        Dozat, 2016, "Incorporating Nesterov Momentum into Adam",
        https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_bool("nesterov", nesterov)
    checks.check_bool("bias_correction", bias_correction)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    # eps_root = 0 (a Python literal) adds nothing: it is not emitted.
    add_eps_root = not (isinstance(eps_root, (int, float)) and eps_root == 0)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h, c = x.h, x.c
        m = x.stored.mu(c.omb1 * g + h.b1 * m)
        v = x.stored.nu(c.omb2 * abs_sq(g) + h.b2 * v)
        if not bias_correction:
            m_hat = h.b1 * m + c.omb1 * g if nesterov else m
            v_hat = v
        else:
            m_hat = (
                h.b1 * (m / c.bc1_next) + c.omb1 * (g / c.bc1)
                if nesterov
                else m / c.bc1
            )
            v_hat = v / c.bc2
        if add_eps_root:
            v_hat = v_hat + h.eps_root
        return m_hat / (jnp.sqrt(v_hat) + h.eps), m, v

    return moment_transform(
        ScaleByAdamState,
        [MU, NU],
        storage,
        body,
        name="scale_by_adam",
        hyperparams={"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
        stage_args={"nesterov": nesterov, "bias_correction": bias_correction},
        derived=_adam_scalars,
    )


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or mu_dtype, or codes): first moment m
    nu: Any  # like params (or codes): second moment v
    nu_max: Any  # like params (or codes): running maximum of the corrected v


def scale_by_amsgrad(
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
    r"""Adam with a running maximum of the second moment.

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2 \\
        \hat v^{\max}_t &= \max(\hat v^{\max}_{t-1},\, v_t / (1 - \beta_2^t)) \\
        u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{\hat v^{\max}_t + \bar\epsilon}
        + \epsilon}
        \end{aligned}

    The maximum is taken over bias-corrected :math:`v_t`, as in Optax;
    ``torch.optim.Adam(amsgrad=True)`` takes it over raw :math:`v_t` and
    corrects afterwards, and the paper has no bias correction.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added inside the square root.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        bias_correction_mu: divide :math:`m_t` by :math:`1 - \beta_1^t`.
        bias_correction_nu: divide :math:`v_t` by :math:`1 - \beta_2^t`.
        state_bits: how :math:`m`, :math:`v` and :math:`\hat v^{\max}` are
            stored: 32, 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`; the maximum is then non-decreasing up to the
            quantization error). Not to be combined with ``mu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAmsgradState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_amsgrad()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)

    References:
        Reddi et al., 2018, "On the Convergence of Adam and Beyond",
        https://openreview.net/forum?id=ryQu7f-RZ
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_bool("bias_correction_mu", bias_correction_mu)
    checks.check_bool("bias_correction_nu", bias_correction_nu)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array, v_max) -> tuple:
        h = x.h
        m = x.stored.mu((1 - h.b1) * g + h.b1 * m)
        v = x.stored.nu((1 - h.b2) * abs_sq(g) + h.b2 * v)
        m_hat = debias(m, h.b1, x.count) if bias_correction_mu else m
        v_hat = debias(v, h.b2, x.count) if bias_correction_nu else v
        v_max = x.stored.nu_max(jnp.maximum(v_max, v_hat))
        return m_hat / (jnp.sqrt(v_max + h.eps_root) + h.eps), m, v, v_max

    return moment_transform(
        ScaleByAmsgradState,
        [MU, Moment("nu", signed=False), Moment("nu_max", signed=False)],
        storage,
        body,
        name="scale_by_amsgrad",
        hyperparams={"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
        stage_args={
            "bias_correction_mu": bias_correction_mu,
            "bias_correction_nu": bias_correction_nu,
        },
    )


def scale_by_adamax(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adam with the infinity norm in place of the second moment (AdaMax).

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \max(\beta_2 v_{t-1},\, |g_t| + \epsilon) \\
        u_t &= \frac{m_t}{(1 - \beta_1^t)\, v_t}
        \end{aligned}

    Kingma & Ba (2014, §7.1) write :math:`\max(\beta_2 v_{t-1}, |g_t|)` and
    need no :math:`\epsilon`; here (as in Optax) :math:`\epsilon` is added to
    :math:`|g_t|` so that a zero gradient never divides by zero.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState` (``nu`` holds :math:`v_t`).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adamax()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -1.], dtype=float32)

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization", §7.1,
        https://arxiv.org/abs/1412.6980
    """
    checks.check_adam_args(b1, b2, eps, 0.0)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h = x.h
        m = x.stored.mu((1 - h.b1) * g + h.b1 * m)
        v = x.stored.nu(jnp.maximum(jnp.abs(g) + h.eps, h.b2 * v))
        return debias(m, h.b1, x.count) / v, m, v

    return moment_transform(
        ScaleByAdamState,
        [Moment("mu"), Moment("nu", signed=False)],
        storage,
        body,
        name="scale_by_adamax",
        hyperparams={"b1": b1, "b2": b2, "eps": eps},
    )


def _radam_scalars(hyper: Hyper, dtype: Any, count: jax.Array) -> SimpleNamespace:
    """The rectification :math:`r_t` and whether it applies, from the step count."""
    t = as_float(count)
    h = hyper(t.dtype)
    ro_inf = 2.0 / (1.0 - h.b2) - 1.0
    b2t = h.b2**t
    ro = ro_inf - 2 * t * b2t / (1 - b2t)
    # Clamped so the square root is finite on the branch that jnp.where drops.
    ro_safe = jnp.maximum(ro, 4.0 + 1e-3)
    r = jnp.sqrt(
        (ro_safe - 4.0)
        * (ro_safe - 2.0)
        * ro_inf
        / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro_safe)
    )
    return SimpleNamespace(r=r.astype(dtype), rectify=ro >= h.threshold)


def scale_by_radam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Rectified Adam.

    .. math::
        \begin{aligned}
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
        {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        u_t &= \begin{cases} r_t\, \hat m_t / (\sqrt{\hat v_t + \bar\epsilon}
        + \epsilon) & \rho_t \ge \rho_{\text{th}} \\ \hat m_t & \text{otherwise}
        \end{cases}
        \end{aligned}

    with :math:`\hat m_t, \hat v_t` as in :func:`scale_by_adam`. The paper
    switches at :math:`\rho_t > 4`; the default threshold here is 5, as in
    Optax and ``torch.optim.RAdam``.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        threshold: :math:`\rho_{\text{th}}`, the rectification threshold (> 4).
        nesterov: use Dozat's Nesterov form of :math:`\hat m_t`.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_radam()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1., -2.], dtype=float32)

    References:
        Liu et al., 2019, "On the Variance of the Adaptive Learning Rate and
        Beyond", https://arxiv.org/abs/1908.03265
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_range("threshold", threshold, 4.0, np.inf, low_open=True)
    checks.check_bool("nesterov", nesterov)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h, c = x.h, x.c
        m = x.stored.mu((1 - h.b1) * g + h.b1 * m)
        v = x.stored.nu((1 - h.b2) * abs_sq(g) + h.b2 * v)
        m_hat = _nesterov_estimate(x, m, g) if nesterov else debias(m, h.b1, x.count)
        v_hat = debias(v, h.b2, x.count)
        rectified = c.r * m_hat / (jnp.sqrt(v_hat + h.eps_root) + h.eps)
        return jnp.where(c.rectify, rectified, m_hat), m, v

    return moment_transform(
        ScaleByAdamState,
        [Moment("mu"), Moment("nu", signed=False)],
        storage,
        body,
        name="scale_by_radam",
        hyperparams={
            "b1": b1,
            "b2": b2,
            "eps": eps,
            "eps_root": eps_root,
            "threshold": threshold,
        },
        stage_args={"nesterov": nesterov},
        derived=_radam_scalars,
    )


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or codes): first moment m
    nu: Any  # like params (or codes): second moment of the prediction error, s


def scale_by_belief(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-16,
    eps_root: jax.typing.ArrayLike = 1e-16,
    *,
    nesterov: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaBelief: scale by the belief in the gradient.

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2)|g_t - m_t|^2 + \bar\epsilon \\
        u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{s_t / (1 - \beta_2^t)} + \epsilon}
        \end{aligned}

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, added to the denominator.
        eps_root: :math:`\bar\epsilon \ge 0`, added to :math:`s_t` each step.
        nesterov: use Dozat's Nesterov form of :math:`\hat m_t`.
        state_bits: how :math:`m` and :math:`s` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByBeliefState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_belief()
        >>> tx.update(jnp.array([1.0, -2.0]), tx.init(jnp.zeros(2)))[0]
        Array([ 1.1111112, -1.1111112], dtype=float32)

    References:
        Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the
        Belief in Observed Gradients", https://arxiv.org/abs/2010.07468
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_bool("nesterov", nesterov)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, s: jax.Array) -> tuple:
        h = x.h
        m = x.stored.mu((1 - h.b1) * g + h.b1 * m)
        s = x.stored.nu((1 - h.b2) * abs_sq(g - m) + h.b2 * s + h.eps_root)
        m_hat = _nesterov_estimate(x, m, g) if nesterov else debias(m, h.b1, x.count)
        return m_hat / (jnp.sqrt(debias(s, h.b2, x.count)) + h.eps), m, s

    return moment_transform(
        ScaleByBeliefState,
        [Moment("mu"), Moment("nu", signed=False)],
        storage,
        body,
        name="scale_by_belief",
        hyperparams={"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
        stage_args={"nesterov": nesterov},
    )


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or mu_dtype, or codes): momentum m


def scale_by_lion(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: Any | None = None,
    *,
    mode: str = "hard",
    smooth_beta: float = 1.0,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Lion: the sign of an interpolated momentum.

    .. math::
        u_t = \sigma(\beta_1 m_{t-1} + (1 - \beta_1) g_t), \qquad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    where :math:`\sigma` is the sign (``mode="hard"``, the paper's),
    :math:`\tanh(\beta_s x)` (``"smooth"``) or :math:`x` clipped to
    :math:`[-1, 1]` (``"refined"``), as Optax's ``mode`` chooses.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, interpolation for the update.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the momentum.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        mode: ``"hard"``, ``"smooth"`` or ``"refined"``: the function
            :math:`\sigma` above.
        smooth_beta: :math:`\beta_s > 0`, the slope of ``"smooth"``.
        state_bits: how :math:`m` is stored: 32 (as ``mu_dtype`` says), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByLionState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_lion()
        >>> tx.update(jnp.array([0.3, -2.0, 0.0]), tx.init(jnp.zeros(3)))[0]
        Array([ 1., -1.,  0.], dtype=float32)

    References:
        Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
        https://arxiv.org/abs/2302.06675
    """
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    if mode not in ("hard", "smooth", "refined"):
        raise ValueError(f'mode must be "hard", "smooth" or "refined", got {mode!r}')
    checks.check_range("smooth_beta", smooth_beta, 0.0, math.inf, low_open=True)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)

    def sigma(x: jax.Array) -> jax.Array:
        if mode == "smooth":
            return jnp.tanh(smooth_beta * x)
        if mode == "refined":
            return jnp.where(jnp.abs(x) < 1.0, x, jnp.sign(x))
        return jnp.sign(x)

    def body(x: LeafStep, g: jax.Array, m: jax.Array) -> tuple:
        h = x.h
        u = sigma((1.0 - h.b1) * g + h.b1 * m)
        return u, (1 - h.b2) * g + h.b2 * m

    return moment_transform(
        ScaleByLionState,
        [MU],
        storage,
        body,
        name="scale_by_lion",
        hyperparams={"b1": b1, "b2": b2},
        stage_args={"mode": mode, "smooth_beta": smooth_beta},
        compute_dtype=promoted,
    )


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    nu: Any  # like params (or codes): moving average of |g|^2


def _check_rms_args(
    decay: Any, eps: Any, initial_scale: Any, eps_in_sqrt: Any, bias_correction: Any
) -> None:
    checks.check_decay("decay", decay)
    checks.check_nonnegative("eps", eps)
    checks.check_nonnegative("initial_scale", initial_scale)
    checks.check_bool("eps_in_sqrt", eps_in_sqrt)
    checks.check_bool("bias_correction", bias_correction)


def _rms_scale(x: LeafStep, var: jax.Array, eps_in_sqrt: bool) -> jax.Array:
    if eps_in_sqrt:
        return jax.lax.rsqrt(var + x.h.eps)
    return 1 / (jnp.sqrt(var) + x.h.eps)


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by the root of a moving average of squared gradients (RMSProp).

    .. math::
        v_t = \rho\, v_{t-1} + (1 - \rho) |g_t|^2, \qquad
        u_t = \begin{cases} g_t / \sqrt{v_t + \epsilon} & \text{eps\_in\_sqrt}
        \\ g_t / (\sqrt{v_t} + \epsilon) & \text{otherwise} \end{cases}

    ``torch.optim.RMSprop`` puts :math:`\epsilon` outside the root
    (``eps_in_sqrt=False``); the default here follows Optax.

    Args:
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        initial_scale: :math:`v_0` (PyTorch uses 0, TF1 used 1).
        eps_in_sqrt: where :math:`\epsilon` goes (see above).
        bias_correction: divide :math:`v_t` by :math:`1 - \rho^t`.
        state_bits: how :math:`v` is stored: 32 (the params' dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByRmsState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_rms(decay=0.75, eps=0.0)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([2.], dtype=float32)

    References:
        Hinton, 2012, "Neural Networks for Machine Learning", lecture 6e,
        https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf
    """
    _check_rms_args(decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, v: jax.Array) -> tuple:
        h = x.h
        v = x.stored.nu((1 - h.decay) * abs_sq(g) + h.decay * v)
        v_hat = debias(v, h.decay, x.count) if bias_correction else v
        return _rms_scale(x, v_hat, eps_in_sqrt) * g, v

    return moment_transform(
        ScaleByRmsState,
        [Moment("nu", signed=False, initial=initial_scale)],
        storage,
        body,
        name="scale_by_rms",
        hyperparams={"decay": decay, "eps": eps},
        stage_args={"eps_in_sqrt": eps_in_sqrt, "bias_correction": bias_correction},
    )


class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_stddev`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or codes): moving average of g
    nu: Any  # like params (or codes): moving average of |g|^2


def scale_by_stddev(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by a moving estimate of the gradients' standard deviation.

    The centred RMSProp of Graves (2013):

    .. math::
        m_t = \rho m_{t-1} + (1 - \rho) g_t, \quad
        v_t = \rho v_{t-1} + (1 - \rho) |g_t|^2, \quad
        u_t = g_t / \sqrt{v_t - |m_t|^2 + \epsilon}

    Where :math:`m` and :math:`v` are stored narrower than they are computed
    (``state_bits=16``, or bfloat16 params), they are rounded apart, and
    :math:`v_t - |m_t|^2` is taken as at least 0; 8 and 4 bits are refused,
    since block codes leave the difference of the two moments noise.

    Args:
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        initial_scale: :math:`v_0`.
        eps_in_sqrt: put :math:`\epsilon` inside the root (else outside).
        bias_correction: divide :math:`m_t, v_t` by :math:`1 - \rho^t`.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (the params'
            dtype) or 16 (bfloat16).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByStddevState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_stddev(decay=0.75, eps=0.0)
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([2.309401], dtype=float32)

    References:
        Graves, 2013, "Generating Sequences With Recurrent Neural Networks",
        §4, https://arxiv.org/abs/1308.0850
    """
    _check_rms_args(decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    storage = Storage.parse(state_bits)
    if storage.quantized:
        raise ValueError(
            f"scale_by_stddev cannot store its moments in {state_bits} bits: the "
            "centred variance v - |m|^2 is a difference of the two, and block "
            "codes, which round each by up to a few percent, leave it noise "
            "where the variance is small against |m|^2 (the step then divides "
            "by eps and diverges). Use state_bits 16 or 32, or rmsprop without "
            "centered=True."
        )

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h = x.h
        # v >= |m|^2 holds for the moving averages, not for each rounded to a
        # narrower dtype on its own: there the variance is kept from going
        # below zero.
        clamp = (x.storage_dtype.mu, x.storage_dtype.nu) != (
            x.dtype,
            real_dtype(x.dtype),
        )
        m = x.stored.mu((1 - h.decay) * g + h.decay * m)
        v = x.stored.nu((1 - h.decay) * abs_sq(g) + h.decay * v)
        m_hat = debias(m, h.decay, x.count) if bias_correction else m
        v_hat = debias(v, h.decay, x.count) if bias_correction else v
        var = v_hat - abs_sq(m_hat)
        if clamp:
            var = jnp.maximum(var, 0)
        return _rms_scale(x, var, eps_in_sqrt) * g, m, v

    return moment_transform(
        ScaleByStddevState,
        [Moment("mu"), Moment("nu", signed=False, initial=initial_scale)],
        storage,
        body,
        name="scale_by_stddev",
        hyperparams={"decay": decay, "eps": eps},
        stage_args={"eps_in_sqrt": eps_in_sqrt, "bias_correction": bias_correction},
    )
