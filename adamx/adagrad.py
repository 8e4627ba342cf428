r"""Per-coordinate steps from accumulated gradient statistics: AdaGrad and its kin.

AdaGrad divides each coordinate's gradient by the root of the sum of its
squares so far. AdaDelta replaces the sum by a moving average and the learning
rate by a moving RMS of past steps; SM3 keeps the sums per row and column of a
tensor (any cover of its entries by slices) instead of per entry; MADGRAD
averages the gradients in the dual, weighted by the steps, and divides by the
cube root of their weighted squares.

Names, arguments, defaults and states are Optax's (``optax.adagrad``,
``optax.adadelta``, ``optax.sm3``, ``optax.contrib.madgrad`` and their
``scale_by_*``); each docstring says where adamx follows the authors instead.
The element-wise sums of AdaGrad and AdaDelta and SM3's momentum take
``state_bits`` (32, 16, 8 or 4, see :mod:`adamx.lowbit`); SM3's per-axis
accumulators stay at full precision (at least float32), being a few vectors
per tensor, and so do MADGRAD's sums, from which it recomputes the params at
every step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    leafwise,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import Hyper, LeafStep, _refuse_complex, abs_sq, moment_transform
from adamx.optimizers import MaskOrFn
from adamx.storage import (
    Moment,
    Storage,
    as_stored_fns,
    check_moment_tree,
    load,
    store,
    store_like,
    update_moments,
)
from adamx.traits import Stage, Traits
from adamx.transforms import (
    ScaleByLearningRateState,
    add_decayed_weights,
    learning_rate_stage,
)

__all__ = [
    "MadgradState",
    "ScaleByAdaDeltaState",
    "ScaleByRssState",
    "ScaleBySM3State",
    "adadelta",
    "adagrad",
    "madgrad",
    "scale_by_adadelta",
    "scale_by_madgrad",
    "scale_by_rss",
    "scale_by_sm3",
    "sm3",
]

# ------------------------------------------------------------------ AdaGrad


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss` (Optax's, which keeps no step count)."""

    sum_of_squares: Any  # like params (real; or codes): G_t, the sum of |g|^2


def scale_by_rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by the root of the sum of all squared gradients so far (AdaGrad).

    .. math::
        G_t = G_{t-1} + |g_t|^2, \qquad
        u_t = \begin{cases} g_t / \sqrt{G_t + \epsilon} & G_t > 0 \\
        0 & G_t = 0 \end{cases}

    from :math:`G_0` = ``initial_accumulator_value``, element by element.
    :math:`\epsilon` sits inside the root, as in Optax; Duchi et al. add
    :math:`\delta` to :math:`\sqrt{G_t}` (as ``torch.optim.Adagrad`` does),
    which differs only while :math:`G_t` is of the order of :math:`\epsilon`.

    Args:
        initial_accumulator_value: :math:`G_0 \ge 0`.
        eps: :math:`\epsilon \ge 0`.
        state_bits: how :math:`G` is stored: 32 (the params' real dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByRssState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([3.0, 0.0]), state)
        >>> print(u)  # the sign where a gradient was seen, 0 where none was
        [1. 0.]
        >>> print(tx.update(jnp.array([4.0, 0.0]), state)[0])  # 4 / sqrt(9 + 16)
        [0.8 0. ]

    References:
        Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
        Learning and Stochastic Optimization",
        https://jmlr.org/papers/v12/duchi11a.html
    """
    checks.check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    checks.check_nonnegative("eps", eps)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, s: jax.Array) -> tuple:
        s = x.stored.sum_of_squares(s + abs_sq(g))
        scale = jnp.where(s > 0, jax.lax.rsqrt(s + x.h.eps), 0)
        return scale * g, s

    return moment_transform(
        ScaleByRssState,
        [Moment("sum_of_squares", signed=False, initial=initial_accumulator_value)],
        storage,
        body,
        name="scale_by_rss",
        hyperparams={"eps": eps},
        counted=False,
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaGrad (Duchi et al., 2011): a step per coordinate, shrinking as it sums.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \frac{g_t}{\sqrt{G_t + \epsilon}},
        \qquad G_t = G_0 + \sum_{i \le t} |g_i|^2

    (see :func:`scale_by_rss`). Coordinates that have seen large gradients
    take small steps; since :math:`G_t` only grows, every step shrinks in
    time, which suits convex and sparse problems more than long training runs.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        initial_accumulator_value: :math:`G_0 \ge 0`.
        eps: :math:`\epsilon \ge 0`, inside the root.
        state_bits: how :math:`G` is stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.adagrad(learning_rate=1.0)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2E}")
        3.85E-01

    References:
        Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
        Learning and Stochastic Optimization",
        https://jmlr.org/papers/v12/duchi11a.html
    """
    return chain(
        scale_by_rss(initial_accumulator_value, eps, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------------------ AdaDelta


class ScaleByAdaDeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta` (Optax's, which keeps no step count)."""

    e_g: Any  # like params (real; or codes): E[g^2], moving average of |g|^2
    e_x: Any  # like params (real; or codes): E[dx^2], moving average of |u|^2


def scale_by_adadelta(
    rho: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by AdaDelta's ratio of the steps' RMS to the gradients' RMS.

    .. math::
        \begin{aligned}
        E[g^2]_t &= \rho E[g^2]_{t-1} + (1 - \rho) g_t^2 \\
        u_t &= \frac{\sqrt{E[\Delta x^2]_{t-1} + \epsilon}}
            {\sqrt{E[g^2]_t + \epsilon}}\, g_t \\
        E[\Delta x^2]_t &= \rho E[\Delta x^2]_{t-1} + (1 - \rho) u_t^2
        \end{aligned}

    from zero averages: Zeiler's Algorithm 1, where :math:`-u_t` is the step
    :math:`\Delta x_t`. The ratio has the units of the params, so no learning
    rate is needed; :math:`\epsilon` starts the steps (at
    :math:`\sqrt{\epsilon}` over the gradient's RMS) and must be positive.
    Complex params are refused, as Optax does.

    Args:
        rho: :math:`\rho \in [0, 1)`, decay of both averages.
        eps: :math:`\epsilon > 0`.
        state_bits: how both averages are stored: 32 (the params' dtype), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdaDeltaState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adadelta(rho=0.0, eps=1e-4)
        >>> u, _ = tx.update(jnp.array([1e-2, 0.0]), tx.init(jnp.zeros(2)))
        >>> print(u.round(6))  # sqrt(1e-4) / sqrt(1e-4 + 1e-4) * 1e-2
        [0.007071 0.      ]

    References:
        Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method",
        https://arxiv.org/abs/1212.5701
    """
    checks.check_decay("rho", rho)
    # With eps = 0 the first step, and so every later one, would be zero.
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, e_g: jax.Array, e_x: jax.Array) -> tuple:
        h = x.h
        e_g = x.stored.e_g((1 - h.rho) * g**2 + h.rho * e_g)
        u = jnp.sqrt(e_x + h.eps) / jnp.sqrt(e_g + h.eps) * g
        e_x = x.stored.e_x((1 - h.rho) * u**2 + h.rho * e_x)
        return u, e_g, e_x

    return moment_transform(
        ScaleByAdaDeltaState,
        [Moment("e_g", signed=False), Moment("e_x", signed=False)],
        storage,
        body,
        name="scale_by_adadelta",
        hyperparams={"rho": rho, "eps": eps},
        counted=False,
        complex_params=False,
    )


def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""AdaDelta (Zeiler, 2012): steps scaled by the RMS of past steps.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t
        \frac{\sqrt{E[\Delta x^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}
        \tilde g_t, \qquad \tilde g_t = g_t + \lambda_t \theta_{t-1}

    (see :func:`scale_by_adadelta`), the weight decay added to the gradient
    before the averages see it, as in Optax. ``learning_rate=None`` is the
    paper's method, :math:`\alpha_t = 1`; Optax's ``adadelta`` then leaves the
    update's sign as it is, so that applying it climbs the loss: adamx steps
    down it, as the paper does.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule; ``None`` is 1.
        rho: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        weight_decay: :math:`\lambda_t \ge 0`, a number or a schedule.
        weight_decay_mask: which params decay: a tree of bools or a function
            of the params returning one; ``None`` decays all.
        state_bits: how the averages are stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs the params.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.adadelta(learning_rate=10.0)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2E}")
        1.21E+01

    References:
        Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method",
        https://arxiv.org/abs/1212.5701
    """
    rate = 1.0 if learning_rate is None else learning_rate
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps, state_bits=state_bits),
        learning_rate_stage(rate),
    )


# ----------------------------------------------------------------------- SM3


class ScaleBySM3State(NamedTuple):
    """State of :func:`scale_by_sm3`, in Optax's order."""

    # Per param a list: for rank >= 2, one vector per axis (its length), the
    # largest accumulated |g|^2 over the other axes; for rank 0 and 1, one
    # array like the param (AdaGrad's sum). The params' dtype, at least float32.
    mu: Any
    nu: Any  # like params (or codes): the momentum of the scaled gradients


def _sm3_accumulators(p: Any) -> list[jax.Array]:
    dtype = wider_dtype(p.dtype, jnp.float32)
    if p.ndim < 2:
        return [jnp.zeros_like(p, dtype=dtype)]  # where p is, if sharded
    return [jnp.zeros((n,), dtype) for n in p.shape]


def scale_by_sm3(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by SM3's accumulators: AdaGrad with one sum per row and column.

    For a tensor of rank :math:`k \ge 2`, with :math:`\mu^{(r)}` its
    accumulator along axis :math:`r` (a vector of that axis' length):

    .. math::
        \begin{aligned}
        \nu_t(i) &= c\, g_t(i)^2 + \beta_2 \min_r \mu^{(r)}_{t-1}(i_r),
        \qquad c = \begin{cases} 1 & \beta_2 = 1 \\ 1 - \beta_2 &
        \text{otherwise} \end{cases} \\
        \mu^{(r)}_t(j) &= \max_{i : i_r = j} \nu_t(i) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) \frac{g_t}{\sqrt{\nu_t +
        \epsilon}}, \qquad u_t = m_t
        \end{aligned}

    where :math:`g / \sqrt{\nu + \epsilon}` is 0 where :math:`\nu = 0`. This
    is the paper's SM3-II with the cover of a tensor by its slices along each
    axis, and momentum on the scaled gradients as in the authors' code; so
    the second-moment state is :math:`\sum_r n_r` numbers for a tensor of
    :math:`\prod_r n_r`. Tensors of rank 0 and 1 keep one sum per entry, as
    the authors' code does (AdaGrad; Optax's ``scale_by_sm3`` fails on
    scalars). Complex params are refused, as Optax does.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the momentum.
        b2: :math:`\beta_2 \in [0, 1]`, decay of the accumulators (1: sums,
            the paper's method).
        eps: :math:`\epsilon \ge 0`.
        state_bits: how the momentum :math:`m` is stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`). The accumulators stay at full precision.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleBySM3State`; it works leaf by leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_sm3(b1=0.0, eps=0.0)
        >>> state = tx.init(jnp.zeros((2, 2)))
        >>> u, state = tx.update(jnp.array([[3.0, 1.0], [1.0, 2.0]]), state)
        >>> print(state.mu[0], state.mu[1])  # row and column maxima of g^2
        [9. 4.] [9. 4.]
        >>> print(tx.update(jnp.ones((2, 2)), state)[0].round(4))  # 1 / sqrt(1 + min)
        [[0.3162 0.4472]
         [0.4472 0.4472]]

    References:
        Anil, Gupta, Koren & Singer, 2019, "Memory-Efficient Adaptive
        Optimization", https://arxiv.org/abs/1901.11150; reference code
        https://github.com/google-research/google-research/tree/master/sm3
    """
    checks.check_decay("b1", b1)
    checks.check_range("b2", b2, 0.0, 1.0)
    checks.check_nonnegative("eps", eps)
    storage = Storage.parse(state_bits)
    momentum = Moment("nu")
    hyper_values = {"b1": b1, "b2": b2, "eps": eps}

    def init_fn(params: Any) -> ScaleBySM3State:
        _refuse_complex("scale_by_sm3", params)
        return ScaleBySM3State(
            jax.tree.map(_sm3_accumulators, params), storage.init(momentum, params)
        )

    def update_fn(
        updates: Any, state: ScaleBySM3State, params: Any = None
    ) -> tuple[Any, ScaleBySM3State]:
        del params
        check_moment_tree(updates, state.nu, "state.nu")
        hyper = Hyper(**hyper_values)

        def leaf(g_in: jax.Array, mu: list, m_stored: Any) -> tuple:
            ct = wider_dtype(g_in.dtype, jnp.float32)
            h = hyper(ct)
            g = g_in.astype(ct)
            if g.ndim < 2:
                past = mu[0].astype(ct)
            else:
                rank = g.ndim
                shaped = [
                    a.astype(ct).reshape([1] * r + [-1] + [1] * (rank - r - 1))
                    for r, a in enumerate(mu)
                ]
                past = shaped[0]
                for a in shaped[1:]:
                    past = jnp.minimum(past, a)
            c = jnp.where(h.b2 == 1, jnp.ones_like(h.b2), 1 - h.b2)
            nu = c * g**2 + h.b2 * past
            scaled = g * jnp.where(nu > 0, jax.lax.rsqrt(nu + h.eps), 0)
            (as_stored,) = as_stored_fns(m_stored)

            def step(s: jax.Array, m: jax.Array) -> tuple:
                # One product, as a lerp: XLA's fused multiply-adds then round
                # it alike whether b1 is a constant or an injected value.
                m = as_stored(m + (1 - h.b1) * (s - m))
                return m, m

            u, m = update_moments(step, [ct], scaled, m_stored)
            if g.ndim < 2:
                new_mu = [nu]
            else:
                new_mu = [
                    jnp.max(nu, axis=[a for a in range(g.ndim) if a != r], initial=0)
                    for r in range(g.ndim)
                ]
            new_mu = [n.astype(a.dtype) for n, a in zip(new_mu, mu, strict=True)]
            return u.astype(g_in.dtype), new_mu, store_like(m, m_stored)

        u, mu, nu = leafwise(leaf, 3, updates, state.mu, state.nu)
        return u, ScaleBySM3State(mu, nu)

    stage = Stage("scale_by_sm3", {**hyper_values, "storage": storage})
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def sm3(
    learning_rate: ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.9,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""SM3 (Anil et al., 2019): AdaGrad's adaptivity in sublinear memory.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t m_t, \qquad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) \frac{g_t}{\sqrt{\nu_t}}

    with :math:`\nu_t(i)` the smallest of the running maxima of the summed
    squared gradients over the rows, columns, ... through entry :math:`i`
    (see :func:`scale_by_sm3`, with :math:`\beta_2 = 1` and
    :math:`\epsilon = 10^{-8}`). A matrix of :math:`n \times k` params keeps
    :math:`n + k` accumulators where AdaGrad keeps :math:`nk`.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule (Optax's takes
            a number only).
        momentum: :math:`\beta_1 \in [0, 1)`.
        state_bits: how the momentum is stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.sm3(learning_rate=0.1)
        >>> params = jnp.array([[1.0, 2.0], [3.0, 4.0]])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2f}")
        28.18

    References:
        Anil, Gupta, Koren & Singer, 2019, "Memory-Efficient Adaptive
        Optimization", https://arxiv.org/abs/1901.11150
    """
    checks.check_decay("momentum", momentum)  # named as the caller named it
    return chain(
        scale_by_sm3(momentum, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------------------- MADGRAD


class MadgradState(NamedTuple):
    """State of :func:`scale_by_madgrad` (Optax's)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far (k)
    grad_sum_sq: Any  # like params (or codes): G_k, sum of lambda_i g_i^2
    s: Any  # like params (or codes): s_k, sum of lambda_i g_i
    x0: Any  # like params, in their dtype: the params at the first step


def scale_by_madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    eps: float = 1e-6,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""MADGRAD's step: dual averaging with a cube-root AdaGrad scale and momentum.

    At step :math:`k = 0, 1, \dots`, with :math:`\lambda_k = (\alpha_k +
    \epsilon) \sqrt{k + 1}`:

    .. math::
        \begin{aligned}
        G_{k+1} &= G_k + \lambda_k g_k^2, \qquad
        s_{k+1} = s_k + \lambda_k g_k \\
        z_{k+1} &= x_0 - \frac{s_{k+1}}{G_{k+1}^{1/3} + \epsilon} \\
        x_{k+1} &= \beta x_k + (1 - \beta) z_{k+1}, \qquad
        u_k = x_{k+1} - x_k
        \end{aligned}

    The update is the whole step, learning rate included (no
    :func:`~adamx.scale_by_learning_rate` follows), and needs the params.
    This is the authors' algorithm and code (``facebookresearch/madgrad``,
    with momentum, where they too keep :math:`x_0`). Where the params are
    float64, :math:`\lambda_k` is computed in float64, as the authors' code
    does; Optax's rounds it to float32, which moves a float64 run by about
    :math:`10^{-8}` relative. Complex params are refused.

    Args:
        learning_rate: :math:`\alpha_k`, a number or a schedule.
        momentum: :math:`\beta \in [0, 1)`.
        eps: :math:`\epsilon > 0`, added to the rate and to the cube root.
        state_bits: 32 only (:math:`G`, :math:`s` and :math:`x_0` in the
            params' dtype). Narrower storage is refused: the params are
            recomputed from the sums at every step, so a rounding of
            :math:`s` is an error in the params, not in one step (on the
            shared quadratic test problem, bfloat16 sums end 3x above the
            float32 run's loss, 8-bit ones 200x).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`MadgradState`; its ``update`` needs the params.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_madgrad(learning_rate=1.0, momentum=0.0, eps=1e-12)
        >>> params = jnp.array([1.0, -1.0])
        >>> u, _ = tx.update(jnp.array([8.0, 1.0]), tx.init(params), params)
        >>> print(u.round(4))  # -s / G^(1/3) = -g / |g|^(2/3)
        [-2. -1.]

    References:
        Defazio & Jelassi, 2021, "Adaptivity without Compromise: A
        Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic
        Optimization", https://arxiv.org/abs/2101.11075; reference code
        https://github.com/facebookresearch/madgrad
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_decay("momentum", momentum)
    # With eps = 0, an entry whose gradients have all been zero divides 0 by 0.
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    storage = Storage.parse(state_bits)
    if storage.bits not in (32, None):
        raise ValueError(
            "scale_by_madgrad keeps its sums at full precision: state_bits must "
            f"be 32, got {state_bits!r}. MADGRAD recomputes the params from the "
            "sum of its gradients at every step (dual averaging), so rounding "
            "the sum to a narrower storage moves the params themselves, by a "
            "fraction of the distance travelled, and the run stalls far from "
            "where the float32 one ends."
        )
    sum_sq, sums = Moment("grad_sum_sq", signed=False), Moment("s")
    is_schedule = callable(learning_rate)
    rate_hyper = {} if is_schedule else {"learning_rate": learning_rate}
    hyper_values = {"momentum": momentum, "eps": eps, **rate_hyper}

    def init_fn(params: Any) -> MadgradState:
        _refuse_complex("scale_by_madgrad", params)
        return MadgradState(
            count=jnp.zeros([], jnp.int32),
            grad_sum_sq=storage.init(sum_sq, params),
            s=storage.init(sums, params),
            # Its own buffer: a donated state must not hold the params twice.
            x0=jax.tree.map(jnp.copy, params),
        )

    def update_fn(
        updates: Any, state: MadgradState, params: Any = None
    ) -> tuple[Any, MadgradState]:
        require_params("scale_by_madgrad", params)
        check_moment_tree(updates, state.s, "state.s")
        check_moment_tree(updates, params, "params")
        hyper = Hyper(**hyper_values)
        k = state.count
        rate = learning_rate(k) if callable(learning_rate) else None

        def leaf(g: jax.Array, p: jax.Array, G: Any, s: Any, x0: jax.Array) -> tuple:
            ct = wider_dtype(g.dtype, jnp.float32)
            h = hyper(ct)
            lr = h.learning_rate if rate is None else jnp.asarray(rate).astype(ct)
            lamb = (lr + h.eps) * jnp.sqrt(safe_increment(k).astype(ct))
            round_G, round_s = as_stored_fns(G, s)
            g_ = g.astype(ct)
            G_new = round_G(load(G, ct) + lamb * g_**2)
            s_new = round_s(load(s, ct) + lamb * g_)
            z = x0.astype(ct) - s_new / (jnp.cbrt(G_new) + h.eps)
            u = (1 - h.momentum) * (z - p.astype(ct))
            return u.astype(g.dtype), store(G_new, G), store(s_new, s)

        u, G, s = leafwise(
            leaf, 3, updates, params, state.grad_sum_sq, state.s, state.x0
        )
        return u, MadgradState(safe_increment(k), G, s, state.x0)

    stage = Stage(
        "scale_by_madgrad",
        {**hyper_values, "learning_rate": learning_rate, "storage": storage},
    )
    return GradientTransformation(
        init_fn, update_fn, Traits(storage.elementwise, (stage,))
    )


def _rate_record(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Keep the learning rate a step used, for :func:`~adamx.get_learning_rate`,
    where an earlier stage applied it: the updates pass unchanged."""

    def init_fn(params: Any) -> ScaleByLearningRateState:
        del params
        count = jnp.zeros([], jnp.int32)
        return ScaleByLearningRateState(count, _rate_at(learning_rate, count))

    def update_fn(
        updates: Any, state: ScaleByLearningRateState, params: Any = None
    ) -> tuple[Any, ScaleByLearningRateState]:
        del params
        rate = _rate_at(learning_rate, state.step)
        return updates, ScaleByLearningRateState(safe_increment(state.step), rate)

    stage = Stage("record_learning_rate", {"learning_rate": learning_rate})
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


def _rate_at(learning_rate: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    value = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(value, jnp.float32)


def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    eps: float = 1e-6,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""MADGRAD (Defazio & Jelassi, 2021): momentumized dual averaging.

    .. math::
        x_{k+1} = \beta x_k + (1 - \beta)\left(x_0 -
        \frac{\sum_{i \le k} \lambda_i \tilde g_i}
        {(\sum_{i \le k} \lambda_i \tilde g_i^2)^{1/3} + \epsilon}\right),
        \qquad \tilde g_k = g_k + \lambda\, x_k

    with :math:`\lambda_k = (\alpha_k + \epsilon)\sqrt{k + 1}` (see
    :func:`scale_by_madgrad`). The weight decay joins the gradient (L2, the
    authors' default ``decouple_decay=False``), as in Optax. Names and
    defaults are ``optax.contrib.madgrad``'s, which are the authors'.

    Args:
        learning_rate: :math:`\alpha_k`, a number or a schedule.
        momentum: :math:`\beta \in [0, 1)`.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        eps: :math:`\epsilon > 0`.
        state_bits: 32 only (see :func:`scale_by_madgrad`).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs the params.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.madgrad(learning_rate=0.1)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2f}")
        9.71

    References:
        Defazio & Jelassi, 2021, "Adaptivity without Compromise: A
        Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic
        Optimization", https://arxiv.org/abs/2101.11075
    """
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate, momentum, eps, state_bits=state_bits),
        _rate_record(learning_rate),
    )
