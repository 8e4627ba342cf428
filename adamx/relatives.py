r"""Adam's relatives that change its moments: Yogi, Adan, NovoGrad.

Yogi moves the second moment towards :math:`g^2` by a step of fixed size
instead of a fixed fraction of the gap, so it grows no faster than the
gradients warrant. Adan adds a moving average of the gradients' differences,
a Nesterov look-ahead without a second gradient. NovoGrad keeps one second
moment per layer and folds it, with the weight decay, into the momentum.

Names, arguments, defaults and states are Optax's (``optax.yogi``,
``optax.adan``, ``optax.novograd`` and their ``scale_by_*``); each docstring
says where adamx follows the authors instead. The element-wise moments take
``state_bits`` (32, 16, 8 or 4, see :mod:`adamx.lowbit`); NovoGrad's one
number per layer stays at full precision (at least float32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.adaptive import MU, ScaleByAdamState
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    leafwise,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import Hyper, LeafStep, abs_sq, debias, moment_transform
from adamx.storage import (
    Moment,
    Storage,
    as_stored_fns,
    check_moment_tree,
    real_dtype,
    store_like,
    update_moments,
)
from adamx.traits import Stage, Traits
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "ScaleByAdanState",
    "ScaleByNovogradState",
    "adan",
    "novograd",
    "scale_by_adan",
    "scale_by_novograd",
    "scale_by_yogi",
    "yogi",
]

# --------------------------------------------------------------------- Yogi


def scale_by_yogi(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-3,
    eps_root: jax.typing.ArrayLike = 0.0,
    initial_accumulator_value: jax.typing.ArrayLike = 1e-6,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by Yogi's moments: Adam's, with an additive second-moment update.

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= v_{t-1} - (1 - \beta_2) \operatorname{sign}(v_{t-1} - |g_t|^2)
            |g_t|^2 \\
        u_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t) +
            \bar\epsilon} + \epsilon}
        \end{aligned}

    from :math:`m_0 = v_0` = ``initial_accumulator_value``. Adam's
    :math:`v_t - v_{t-1} = (1 - \beta_2)(|g_t|^2 - v_{t-1})` can grow
    :math:`v` by a large part of itself at one step, and so shrink the
    effective rate sharply; Yogi's change has the size
    :math:`(1 - \beta_2)|g_t|^2` whichever way it goes. As in Optax, both
    moments start at the initial value (the paper's :math:`v_0 = 10^{-6}`)
    and are debiased as Adam's are.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, outside the root (the paper's
            :math:`10^{-3}`).
        eps_root: :math:`\bar\epsilon \ge 0`, inside the root.
        initial_accumulator_value: :math:`m_0 = v_0 \ge 0`.
        state_bits: how :math:`m` and :math:`v` are stored: 32 (the params'
            dtype), 16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`~adamx.ScaleByAdamState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_yogi(eps=0.0, initial_accumulator_value=0.0)
        >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> print(u)  # the first step: the sign, as Adam's
        [ 1. -1.]

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, 2018, "Adaptive Methods for
        Nonconvex Optimization", https://papers.nips.cc/paper/2018/hash/90365351ccc7437a1309dc64e4db32a3-Abstract.html
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    storage = Storage.parse(state_bits)

    def body(x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array) -> tuple:
        h = x.h
        m = x.stored.mu((1 - h.b1) * g + h.b1 * m)
        g2 = abs_sq(g)
        v = x.stored.nu(v - (1 - h.b2) * jnp.sign(v - g2) * g2)
        m_hat, v_hat = debias(m, h.b1, x.count), debias(v, h.b2, x.count)
        return m_hat / (jnp.sqrt(v_hat + h.eps_root) + h.eps), m, v

    return moment_transform(
        ScaleByAdamState,
        [
            Moment("mu", initial=initial_accumulator_value),
            Moment("nu", signed=False, initial=initial_accumulator_value),
        ],
        storage,
        body,
        name="scale_by_yogi",
        hyperparams={"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root},
    )


def yogi(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-3,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Yogi (Zaheer et al., 2018): Adam whose second moment changes additively.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \frac{\hat m_t}{\sqrt{\hat v_t} +
        \epsilon}, \qquad
        v_t = v_{t-1} - (1 - \beta_2) \operatorname{sign}(v_{t-1} - g_t^2) g_t^2

    with :math:`\hat m_t, \hat v_t` debiased as Adam's (see
    :func:`scale_by_yogi`, with both moments starting at :math:`10^{-6}`).

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        state_bits: how the moments are stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.yogi(learning_rate=0.1)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2f}")
        8.78

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, 2018, "Adaptive Methods for
        Nonconvex Optimization", https://papers.nips.cc/paper/2018/hash/90365351ccc7437a1309dc64e4db32a3-Abstract.html
    """
    return chain(
        scale_by_yogi(b1, b2, eps, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )


# --------------------------------------------------------------------- Adan


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan`, in Optax's order (the count last)."""

    m: Any  # like params (or codes): moving average of g
    v: Any  # like params (or codes): moving average of g_t - g_{t-1}
    n: Any  # like params (real; or codes): moving average of |g + b2 (g - g_prev)|^2
    g: Any  # like params (or codes): the previous gradient
    t: jax.Array  # shape=(), int32: steps taken so far


class _AdanMoments(NamedTuple):
    """:class:`ScaleByAdanState` with the count first, for the moment skeleton."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    m: Any
    v: Any
    n: Any
    g: Any


def scale_by_adan(
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by Adan's moments: the gradients', their differences', and a
    look-ahead second moment.

    With :math:`\Delta_t = g_t - g_{t-1}` (and :math:`\Delta_1 = 0`):

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) \Delta_t \\
        n_t &= \beta_3 n_{t-1} + (1 - \beta_3) |g_t + \beta_2 \Delta_t|^2 \\
        u_t &= \frac{\hat m_t + \beta_2 \hat v_t}{\sqrt{\hat n_t + \bar\epsilon}
            + \epsilon}
        \end{aligned}

    with each moment debiased by :math:`1 - \beta_i^t`. The betas are the
    authors' code's (the decays, 0.98, 0.92, 0.99), which are one minus the
    paper's; the paper's :math:`1 - \beta_2` factor of :math:`\Delta_t` is
    then this :math:`\beta_2`, as the authors' code has it. Optax 0.2.8
    multiplies :math:`\Delta_t` and :math:`\hat v_t` by :math:`1 - \beta_2`
    (0.08 where the authors take 0.92); adamx follows the authors, so the two
    agree only at :math:`\beta_2 = 0.5`.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, decay of the gradients' average.
        b2: :math:`\beta_2 \in [0, 1)`, decay of the differences' average.
        b3: :math:`\beta_3 \in [0, 1)`, decay of the second moment.
        eps: :math:`\epsilon \ge 0`, outside the root.
        eps_root: :math:`\bar\epsilon \ge 0`, inside the root.
        state_bits: how the moments and the previous gradient are stored: 32
            (the params' dtype), 16 (bfloat16), 8 or 4 (block-wise quantized,
            see :mod:`adamx.lowbit`). At the default :math:`\beta_1 = 0.98`
            the first moment changes by 2% a step, less than an 8-bit code
            resolves, and 8-bit runs fall behind (on the shared quadratic test
            problem 1.3x the float32 run's final loss); at
            :math:`\beta_1 = 0.9` they end within 1% of it.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByAdanState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_adan()
        >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
        >>> print(u.round(4))  # the first step: no difference yet, Adam's sign
        [ 1. -1.]

    References:
        Xie, Zhou, Li, Lin & Yan, 2022, "Adan: Adaptive Nesterov Momentum
        Algorithm for Faster Optimizing Deep Models",
        https://arxiv.org/abs/2208.06677; reference code
        https://github.com/sail-sg/Adan
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_decay("b3", b3)
    storage = Storage.parse(state_bits)

    def body(
        x: LeafStep, g: jax.Array, m: jax.Array, v: jax.Array, n: jax.Array, prev: Any
    ) -> tuple:
        h, t = x.h, x.count
        first = t == 1  # no previous gradient: the difference is 0
        diff = g - prev
        m = x.stored.m((1 - h.b1) * g + h.b1 * m)
        v = x.stored.v(jnp.where(first, v, (1 - h.b2) * diff + h.b2 * v))
        ahead = jnp.where(first, g, g + h.b2 * diff)
        # One product, as a lerp: XLA's fused multiply-adds then round it
        # alike whether b3 is a constant or an injected value.
        n = x.stored.n(n + (1 - h.b3) * (abs_sq(ahead) - n))
        m_hat, v_hat = debias(m, h.b1, t), debias(v, h.b2, t)
        n_hat = debias(n, h.b3, t)
        u = (m_hat + h.b2 * v_hat) / (jnp.sqrt(n_hat + h.eps_root) + h.eps)
        return u, m, v, n, x.stored.g(g)

    moments = moment_transform(
        _AdanMoments,
        [Moment("m"), Moment("v"), Moment("n", signed=False), Moment("g")],
        storage,
        body,
        name="scale_by_adan",
        hyperparams={"b1": b1, "b2": b2, "b3": b3, "eps": eps, "eps_root": eps_root},
    )

    def init_fn(params: Any) -> ScaleByAdanState:
        s = moments.init(params)
        return ScaleByAdanState(s.m, s.v, s.n, s.g, s.count)

    def update_fn(
        updates: Any, state: ScaleByAdanState, params: Any = None
    ) -> tuple[Any, ScaleByAdanState]:
        del params
        inner = _AdanMoments(state.t, state.m, state.v, state.n, state.g)
        u, s = moments.update(updates, inner)
        return u, ScaleByAdanState(s.m, s.v, s.n, s.g, s.count)

    return GradientTransformation(init_fn, update_fn, moments.traits)


def adan(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.98,
    b2: jax.typing.ArrayLike = 0.92,
    b3: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Adan (Xie et al., 2022): adaptive Nesterov momentum.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(\frac{\hat m_t + \beta_2
        \hat v_t}{\sqrt{\hat n_t + \bar\epsilon} + \epsilon}
        + \lambda \theta_{t-1}\right)

    with the moments of :func:`scale_by_adan`, which follows the authors'
    code (see there for where Optax differs). The weight decay is decoupled
    and scaled by the rate: the authors' ``no_prox=True``; their default
    divides the stepped params by :math:`1 + \alpha_t \lambda` instead, the
    same to first order in :math:`\alpha_t \lambda`. Names and defaults are
    Optax's (the authors' ``eps_root`` is 0).

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        b3: :math:`\beta_3 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        mask: which params decay: a tree of bools or a function of the params
            returning one; ``None`` decays all.
        state_bits: how the moments are stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs the params.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.adan(learning_rate=0.1)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2f}")
        8.76

    References:
        Xie, Zhou, Li, Lin & Yan, 2022, "Adan: Adaptive Nesterov Momentum
        Algorithm for Faster Optimizing Deep Models",
        https://arxiv.org/abs/2208.06677
    """
    return chain(
        scale_by_adan(b1, b2, b3, eps, eps_root, state_bits=state_bits),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )


# ----------------------------------------------------------------- NovoGrad


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd` (Optax's)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    mu: Any  # like params (or mu_dtype, or codes): the momentum m
    nu: Any  # per param shape=(), its real dtype, at least float32: v, per layer


def scale_by_novograd(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.25,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mu_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Scale by NovoGrad's moments: one second moment per layer (per leaf).

    .. math::
        \begin{aligned}
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) \|g_t\|^2, \qquad
        v_1 = \|g_1\|^2 \\
        m_t &= \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t + \bar\epsilon} +
        \epsilon} + \lambda \theta_{t-1}, \qquad m_1 = \frac{g_1}{\sqrt{v_1 +
        \bar\epsilon} + \epsilon} + \lambda \theta_0 \\
        u_t &= m_t
        \end{aligned}

    with the norm over each leaf. The momentum sums the normalized gradients
    without a :math:`1 - \beta_1` factor, as the paper's Algorithm 1 does, so
    its steps are up to :math:`1 / (1 - \beta_1)` times the rate. As in Optax,
    :math:`\epsilon` also guards the first step, where the paper divides by
    :math:`\sqrt{v_1}` alone. ``update`` needs the params where
    ``weight_decay`` is not 0.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params' dtype.
        state_bits: how :math:`m` is stored: 32 (as ``mu_dtype`` says), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).
            :math:`v`, one number per leaf, stays at full precision.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByNovogradState`; it works leaf by leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_novograd(b1=0.5, eps=0.0)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.array([3.0, 4.0]), state)
        >>> print(u, state.nu)  # g / ||g||, and ||g||^2
        [0.6 0.8] 25.0
        >>> print(tx.update(jnp.array([3.0, 4.0]), state)[0])
        [0.90000004 1.2       ]

    References:
        Ginsburg et al., 2019, "Stochastic Gradient Methods with Layer-wise
        Adaptive Moments for Training of Deep Networks",
        https://arxiv.org/abs/1905.11286
    """
    checks.check_adam_args(b1, b2, eps, eps_root)
    checks.check_nonnegative("weight_decay", weight_decay)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)
    decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)
    hyper_values = {
        "b1": b1,
        "b2": b2,
        "eps": eps,
        "eps_root": eps_root,
        "weight_decay": weight_decay,
    }

    def init_fn(params: Any) -> ScaleByNovogradState:
        def per_layer(p: Any) -> jax.Array:
            return jnp.zeros([], real_dtype(wider_dtype(p.dtype, jnp.float32)))

        return ScaleByNovogradState(
            count=jnp.zeros([], jnp.int32),
            mu=storage.init(MU, params),
            nu=jax.tree.map(per_layer, params),
        )

    def update_fn(
        updates: Any, state: ScaleByNovogradState, params: Any = None
    ) -> tuple[Any, ScaleByNovogradState]:
        if decays:
            require_params("scale_by_novograd's weight decay", params)
            check_moment_tree(updates, params, "params")
        check_moment_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)
        first = count == 1
        hyper = Hyper(**hyper_values)

        def leaf(g: jax.Array, m_stored: Any, v: jax.Array, p: Any) -> tuple:
            ct = wider_dtype(g.dtype, jnp.float32)
            rt = real_dtype(ct)
            h = hyper(rt)
            g_ = g.astype(ct)
            sq = jnp.sum(abs_sq(g_))
            v = jnp.where(first, sq, (1 - h.b2) * sq + h.b2 * v.astype(rt))
            step = g_ / (jnp.sqrt(v + h.eps_root) + h.eps)
            if decays:
                step = step + h.weight_decay * p.astype(ct)
            b1 = jnp.where(first, jnp.zeros_like(h.b1), h.b1)
            (as_stored,) = as_stored_fns(m_stored)

            def momentum(s: jax.Array, m: jax.Array) -> tuple:
                m = as_stored(b1 * m + s)
                return m, m

            u, m = update_moments(momentum, [ct], step, m_stored)
            return u.astype(g.dtype), store_like(m, m_stored), v

        stepped = updates if params is None else params
        u, mu, nu = leafwise(leaf, 3, updates, state.mu, state.nu, stepped)
        nu = jax.tree.map(lambda new, old: new.astype(old.dtype), nu, state.nu)
        return u, ScaleByNovogradState(count, mu, nu)

    stage = Stage("scale_by_novograd", {**hyper_values, "storage": storage})
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.25,
    eps: jax.typing.ArrayLike = 1e-6,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""NovoGrad (Ginsburg et al., 2019): layer-wise second moments.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t m_t, \qquad
        m_t = \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t} + \epsilon}
        + \lambda \theta_{t-1}, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) \|g_t\|^2

    with one :math:`v` per leaf (see :func:`scale_by_novograd`), so the
    state is about one number per param, half of Adam's.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\bar\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        state_bits: how :math:`m` is stored: 32, 16 (bfloat16), 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs the params
        where ``weight_decay`` is not 0.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda x: jnp.sum(x**2)
        >>> tx = adamx.novograd(learning_rate=0.1)
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> print(f"{f(params):.2f}")
        5.97

    References:
        Ginsburg et al., 2019, "Stochastic Gradient Methods with Layer-wise
        Adaptive Moments for Training of Deep Networks",
        https://arxiv.org/abs/1905.11286; Li et al., 2019, "Jasper: An
        End-to-End Convolutional Neural Acoustic Model",
        https://arxiv.org/abs/1904.03288
    """
    return chain(
        scale_by_novograd(b1, b2, eps, eps_root, weight_decay, state_bits=state_bits),
        learning_rate_stage(learning_rate),
    )
