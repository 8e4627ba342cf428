r"""Parameter-free methods that bet or adapt: the run sets its own step size.

Each method here measures, as it trains, the scale a learning rate would have
to be tuned to:

* **COCOB** (Orabona & Tommasi, 2017) bets each coordinate's "wealth" on the
  sign of its gradient's sum, without a step size at all.
* **D-Adaptation** (Defazio & Mishchenko, 2023) runs AdamW with the step
  scaled by a growing lower bound :math:`d` on the distance to a solution
  (:mod:`adamx.prodigy` holds its successor, Prodigy).
* **Mechanic** (Cutkosky et al., 2023) wraps any optimizer and learns the
  scale of its updates.

DoG, DoWG and layer-wise DoG, which step by a distance over gradient norms,
are in :mod:`adamx.distance_over_gradients`.

Names, arguments, defaults and state classes are Optax's (``optax`` and
``optax.contrib``). Each docstring says which reference code it follows where
the authors' and Optax's differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    is_schedule,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import call_update, chain, check_transformation
from adamx.distance_over_gradients import _copy, _scalar_dtype, _sq_norm
from adamx.moments import Hyper, _refuse_complex, as_float
from adamx.storage import Moment, Storage, check_moment_tree, load, store
from adamx.traits import Stage, Traits, traits_of
from adamx.transforms import (
    add_decayed_weights,
    learning_rate_stage,
    scale_by_learning_rate,
)

__all__ = [
    "COCOBState",
    "DAdaptAdamWState",
    "MechanicState",
    "cocob",
    "dadapt_adamw",
    "mechanize",
    "scale_by_cocob",
]


# --------------------------------------------------------------- COCOB


class COCOBState(NamedTuple):
    """State of :func:`scale_by_cocob` (Optax's ``COCOBState``, its fields)."""

    init_particles: Any  # w_1, like params: the params given to init
    # The sums below like params, in at least float32.
    cumulative_gradients: Any  # θ_t = -Σ g
    scale: Any  # L_t = max(ε, max |g|)
    subgradients: Any  # G_t = Σ |g|
    reward: Any  # R_t >= 0


def scale_by_cocob(
    alpha: jax.typing.ArrayLike = 100.0, eps: jax.typing.ArrayLike = 1e-8
) -> GradientTransformation:
    r"""COCOB-Backprop's update: each coordinate bets on its gradients' sum.

    Per coordinate, with :math:`w_1` the params given to ``init`` and
    :math:`L_0 = \epsilon`, :math:`G_0 = R_0 = \theta_0 = 0`:

    .. math::
        \begin{aligned}
        L_t &= \max(L_{t-1}, |g_t|), \qquad G_t = G_{t-1} + |g_t|, \qquad
        \theta_t = \theta_{t-1} - g_t \\
        R_t &= \max\big(R_{t-1} - g_t (w_t - w_1), 0\big) \\
        w_{t+1} &= w_1 + \frac{\theta_t}{L_t \max(G_t + L_t, \alpha L_t)}
        (L_t + R_t), \qquad u_t = w_{t+1} - w_t
        \end{aligned}

    Algorithm 2 of the paper as the authors' TensorFlow code runs it: with
    :math:`L_0 = \epsilon` (the paper's 0 divides 0 by 0 while a coordinate's
    gradients are 0), and the step taken as the change of the bet,
    :math:`u_t = b_t - b_{t-1}` with :math:`b_t = w_{t+1} - w_1` computed
    from the sums, which also gives the reward's :math:`w_t - w_1`.
    ``optax.contrib.cocob`` (and the authors' later PyTorch package) reads
    :math:`w_t - w_1` from the params instead and steps to
    :math:`w_1 + b_t - w_t`: the same numbers in exact arithmetic while only
    this update moves the params, but each step then carries the rounding
    of the params' size, and a step another transformation masks or skips
    is taken back at the next one. ``init_particles`` keeps :math:`w_1`, as
    Optax's state does. The update is the whole step, not a direction to
    scale: a learning rate before this stage scales the gradients, which
    COCOB's step hardly depends on. Complex params are
    refused: the method compares and bets real numbers. Its state holds
    running sums whose increments fall below the resolution of 16- or 8-bit
    codes as they grow, so it is kept in the params' dtype, at least float32
    (Optax keeps half-precision params' sums in their dtype, where
    :math:`\epsilon = 10^{-8}` is 0 in float16).

    Args:
        alpha: :math:`\alpha > 0`, which caps the fraction bet at first
            (the paper's 100).
        eps: :math:`\epsilon > 0`, the first :math:`L`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state :class:`COCOBState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_cocob(alpha=4.0, eps=1.0)
        >>> params = jnp.array([0.0])
        >>> u, state = tx.update(jnp.array([2.0]), tx.init(params), params)
        >>> print(u)  # θ = -2, L = 2, G = 2: -2 / (2 max(4, 8)) * 2
        [-0.25]

    References:
        Orabona & Tommasi, 2017, "Training Deep Networks without Learning
        Rates Through Coin Betting", https://arxiv.org/abs/1705.07795;
        reference code https://github.com/bremen79/cocob
    """
    checks.check_range("alpha", alpha, 0.0, np.inf, low_open=True)
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    hyper_values = {"alpha": alpha, "eps": eps}

    def init_fn(params):
        _refuse_complex("scale_by_cocob", params)
        hyper = Hyper(**hyper_values)

        def zeros(p):
            return jnp.zeros_like(p, dtype=wider_dtype(p.dtype, jnp.float32))

        def first_scale(p):
            dtype = wider_dtype(p.dtype, jnp.float32)
            return jnp.full_like(p, hyper(dtype).eps, dtype=dtype)

        return COCOBState(
            init_particles=_copy(params),
            cumulative_gradients=jax.tree.map(zeros, params),
            scale=jax.tree.map(first_scale, params),
            subgradients=jax.tree.map(zeros, params),
            reward=jax.tree.map(zeros, params),
        )

    def update_fn(updates, state, params=None):
        del params  # w_t - w_1 is the last bet, read from the sums
        check_moment_tree(updates, state.scale, "state.scale")
        hyper = Hyper(**hyper_values)

        def bet(h, theta, big_l, big_g, reward):
            """w_{t+1} - w_1, from the sums after step t."""
            scale = big_l * jnp.maximum(big_g + big_l, h.alpha * big_l)
            return theta / scale * (big_l + reward)

        def leaf(g, theta, big_l, big_g, reward):
            ct = wider_dtype(g.dtype, theta.dtype)
            h = hyper(ct)
            g = g.astype(ct)
            theta, big_l = theta.astype(ct), big_l.astype(ct)
            big_g, reward = big_g.astype(ct), reward.astype(ct)
            before = bet(h, theta, big_l, big_g, reward)  # w_t - w_1
            big_l = jnp.maximum(big_l, jnp.abs(g))
            big_g = big_g + jnp.abs(g)
            reward = jnp.maximum(reward - g * before, 0)
            theta = theta - g
            return bet(h, theta, big_l, big_g, reward) - before, (
                theta,
                big_l,
                big_g,
                reward,
            )

        flat, treedef = jax.tree.flatten(updates)
        names = ("cumulative_gradients", "scale", "subgradients", "reward")
        fields = [treedef.flatten_up_to(getattr(state, n)) for n in names]
        results = [leaf(*args) for args in zip(flat, *fields, strict=True)]
        out = [u.astype(g.dtype) for (u, _), g in zip(results, flat, strict=True)]
        sums = {
            n: treedef.unflatten(
                [r[1][i].astype(x.dtype) for r, x in zip(results, f, strict=True)]
            )
            for i, (n, f) in enumerate(zip(names, fields, strict=True))
        }
        return treedef.unflatten(out), state._replace(**sums)

    stage = Stage("scale_by_cocob", hyper_values)
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: jax.typing.ArrayLike = 100.0,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    r"""COCOB-Backprop: coin betting in place of a step size (Orabona &
    Tommasi, 2017).

    .. math::
        w_{t+1} = w_1 + \frac{\theta_t}{L_t \max(G_t + L_t, \alpha L_t)}
        (L_t + R_t), \qquad \theta_t = -\sum_{k \le t} \tilde g_k, \quad
        \tilde g_k = c_k (g_k + \lambda w_k)

    per coordinate, with :math:`L_t` the largest :math:`|\tilde g|` so far,
    :math:`G_t` the sum of :math:`|\tilde g|` and :math:`R_t` the reward of
    the bets (see :func:`scale_by_cocob`); :math:`\lambda` is an L2 decay and
    :math:`c_k` the learning rate, which scales the gradients COCOB sees (as
    Optax has it), not its step. Names, arguments and defaults are
    ``optax.contrib.cocob``'s.

    Args:
        learning_rate: :math:`c_k`, a number or a schedule, a factor on the
            gradients.
        alpha: :math:`\alpha > 0`.
        eps: :math:`\epsilon > 0`, the first :math:`L`.
        weight_decay: :math:`\lambda \ge 0`.
        mask: the leaves to decay; ``None`` decays all.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(jnp.abs(p - 1.0))
        >>> tx = adamx.cocob()
        >>> params = jnp.zeros(3)
        >>> state = tx.init(params)
        >>> for _ in range(200):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(f(params) < 0.3)
        True

    References:
        Orabona & Tommasi, 2017, "Training Deep Networks without Learning
        Rates Through Coin Betting", https://arxiv.org/abs/1705.07795
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )


# ------------------------------------------------------------ D-Adaptation


class DAdaptAdamWState(NamedTuple):
    """State of :func:`dadapt_adamw`: Optax's fields, then the steps taken."""

    exp_avg: Any  # like params (or codes): m, EMA of d λ b g
    exp_avg_sq: Any  # like params (or codes): v, EMA of g^2
    grad_sum: Any  # like params (or codes): s, EMA of d λ b g with decay √β2
    estim_lr: jax.Array  # shape=(), float32 (float64 params: float64): d_k
    numerator_weighted: jax.Array  # shape=(), like estim_lr: d's numerator
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: updates so far
    steps: jax.Array  # shape=(), int32: steps taken (k), for bias correction


_EXP_AVG = Moment("exp_avg")
_EXP_AVG_SQ = Moment("exp_avg_sq", signed=False)
_GRAD_SUM = Moment("grad_sum")


def _scale_by_dadapt_adamw(
    learning_rate: ScalarOrSchedule,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike],
    eps: jax.typing.ArrayLike,
    estim_lr0: jax.typing.ArrayLike,
    weight_decay: jax.typing.ArrayLike,
    use_bias_correction: bool,
    decouple: bool,
    growth_rate: jax.typing.ArrayLike,
    state_bits: int | None,
) -> GradientTransformation:
    """D-Adapted AdamW's step divided by the learning rate (see dadapt_adamw):
    the learning rate enters the moments, and the chain's last stage scales
    the step by it, as every adamx optimizer's does."""
    b1, b2 = betas
    storage = Storage.parse(state_bits)
    scheduled = is_schedule(learning_rate)
    hyper_values = {
        "b1": b1,
        "b2": b2,
        "eps": eps,
        "d0": estim_lr0,
        "wd": weight_decay,
        "growth": growth_rate,
    }

    def init_fn(params):
        _refuse_complex("dadapt_adamw", params)
        sd = _scalar_dtype(params)
        return DAdaptAdamWState(
            exp_avg=storage.init(_EXP_AVG, params),
            exp_avg_sq=storage.init(_EXP_AVG_SQ, params),
            grad_sum=storage.init(_GRAD_SUM, params),
            estim_lr=Hyper(**hyper_values)(sd).d0,
            numerator_weighted=jnp.zeros([], sd),
            count=jnp.zeros([], jnp.int32),
            steps=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None):
        require_params("dadapt_adamw", params)
        check_moment_tree(updates, state.exp_avg, "state.exp_avg")
        check_moment_tree(updates, params, "params")
        sd = state.estim_lr.dtype
        hyper = Hyper(**hyper_values)
        h = hyper(sd)
        rate: Any = learning_rate
        lr = jnp.asarray(rate(state.count) if scheduled else rate).astype(sd)
        d = state.estim_lr
        sb2 = jnp.sqrt(h.b2)
        if use_bias_correction:
            k1 = as_float(state.steps + 1).astype(sd)
            bc = jnp.sqrt(1 - h.b2**k1) / (1 - h.b1**k1)
        else:
            bc = jnp.ones([], sd)
        dlr = d * lr * bc
        active = lr > 0

        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        names = ("exp_avg", "exp_avg_sq", "grad_sum")
        fields = [treedef.flatten_up_to(getattr(state, n)) for n in names]

        def accumulate(g, p, m_stored, v_stored, s_stored):
            ct = wider_dtype(g.dtype, sd)
            hc = hyper(ct)
            g, x = g.astype(ct), p.astype(ct)
            if not decouple:
                g = g + hc.wd * x  # L2: the decay joins the gradient
            dlr_c, sb2_c = dlr.astype(ct), sb2.astype(ct)
            m_old, v_old = load(m_stored, ct), load(v_stored, ct)
            s_old = load(s_stored, ct)
            dot = jnp.sum(g * (s_old / (jnp.sqrt(v_old) + hc.eps)))
            m = hc.b1 * m_old + (1 - hc.b1) * dlr_c * g
            v = hc.b2 * v_old + (1 - hc.b2) * g * g
            s = sb2_c * s_old + (1 - sb2_c) * dlr_c * g
            # A learning rate of 0 leaves the moments as they are.
            m = jnp.where(active, m, m_old)
            v = jnp.where(active, v, v_old)
            s = jnp.where(active, s, s_old)
            return x, m, v, s, dot.astype(sd), jnp.sum(jnp.abs(s)).astype(sd)

        firsts = [
            accumulate(g, p, *f)
            for g, p, *f in zip(g_leaves, p_leaves, *fields, strict=True)
        ]
        acum = sum((o[4] for o in firsts), jnp.zeros([], sd))
        l1 = sum((o[5] for o in firsts), jnp.zeros([], sd))
        l1 = jnp.where(active, l1, 0)
        # No gradient yet (or a rate of 0): the authors take no step.
        stepped = l1 > 0
        numerator = sb2 * state.numerator_weighted + (1 - sb2) * dlr * acum
        d_hat = numerator / ((1 - sb2) * jnp.where(stepped, l1, 1))
        d_new = jnp.maximum(d, jnp.minimum(d_hat, d * h.growth))
        d_new = jnp.where(stepped, d_new, d)
        numerator = jnp.where(stepped, numerator, state.numerator_weighted)
        safe_lr = jnp.where(active, lr, 1)

        def direction(g0, x, m, v):
            ct = x.dtype
            hc = hyper(ct)
            u = m / (jnp.sqrt(v) + hc.eps) / safe_lr.astype(ct)
            if decouple:
                u = u + hc.wd * (d * bc).astype(ct) * x
            return jnp.where(stepped, u, jnp.zeros_like(u)).astype(g0.dtype)

        out = [
            direction(g0, x, m, v)
            for g0, (x, m, v, *_) in zip(g_leaves, firsts, strict=True)
        ]

        def stored(i):
            return treedef.unflatten(
                [store(o[i], old) for o, old in zip(firsts, fields[i - 1], strict=True)]
            )

        new_state = DAdaptAdamWState(
            exp_avg=stored(1),
            exp_avg_sq=stored(2),
            grad_sum=stored(3),
            estim_lr=d_new,
            numerator_weighted=numerator,
            count=safe_increment(state.count),
            steps=jnp.where(stepped, safe_increment(state.steps), state.steps),
        )
        return treedef.unflatten(out), new_state

    stage = Stage(
        "scale_by_dadapt_adamw",
        {
            **hyper_values,
            "learning_rate": learning_rate,
            "use_bias_correction": use_bias_correction,
            "decouple": decouple,
            "storage": storage,
        },
    )
    return GradientTransformation(
        init_fn, update_fn, Traits(storage.elementwise, (stage,))
    )


def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    eps: jax.typing.ArrayLike = 1e-8,
    estim_lr0: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    use_bias_correction: bool = False,
    decouple: bool = True,
    growth_rate: jax.typing.ArrayLike = math.inf,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""D-Adapted AdamW: AdamW whose step grows with a lower bound on the
    distance to a solution (Defazio & Mishchenko, 2023).

    With :math:`\lambda_k` the learning rate, :math:`b_k` Adam's bias
    correction :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` (1
    unless ``use_bias_correction``), :math:`\eta_k = d_k \lambda_k b_k` and
    :math:`\hat\beta = \sqrt{\beta_2}`:

    .. math::
        \begin{aligned}
        r_{k+1} &= \hat\beta r_k + (1 - \hat\beta)\, \eta_k
        \Big\langle g_k, \frac{s_k}{\sqrt{v_k} + \epsilon} \Big\rangle, \qquad
        s_{k+1} = \hat\beta s_k + (1 - \hat\beta)\, \eta_k g_k \\
        m_{k+1} &= \beta_1 m_k + (1 - \beta_1)\, \eta_k g_k, \qquad
        v_{k+1} = \beta_2 v_k + (1 - \beta_2)\, g_k^2 \\
        d_{k+1} &= \max\!\Big(d_k, \min\Big(\frac{r_{k+1}}{(1 - \hat\beta)
        \|s_{k+1}\|_1}, \gamma d_k\Big)\Big), \qquad
        x_{k+1} = x_k - \frac{m_{k+1}}{\sqrt{v_{k+1}} + \epsilon} -
        w\, \eta_k x_k
        \end{aligned}

    The inner product and the norm run over the whole tree, so :math:`d` is
    one scalar for all params. ``decouple=False`` adds the decay to the
    gradient instead (:math:`g_k + w x_k`, L2, the authors' default).

    This is the authors' ``dadaptation.DAdaptAdam`` with ``decouple=True``
    (AdamW, as the name says), under ``optax.contrib.dadapt_adamw``'s name,
    arguments and defaults. Where Optax differs, adamx follows the authors:
    Optax always corrects the bias (the authors' default does not;
    ``use_bias_correction=True`` gives Optax's numbers) and has no
    ``growth_rate`` or ``decouple``; and where :math:`\|s\|_1 = 0` (no
    gradient yet, or a learning rate of 0, as a warm-up from 0 starts),
    Optax divides by it and :math:`d` becomes NaN for good, where the authors
    take no step, keep :math:`d` and do not count the step (a learning rate
    of 0 leaves the moments as they are too).

    Args:
        learning_rate: :math:`\lambda_k`, a number or a schedule; leave it at
            1 (a schedule from 1 down to 0, with a warm-up, is the authors'
            advice).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)`.
        eps: :math:`\epsilon > 0`.
        estim_lr0: :math:`d_0 > 0`, the first under-estimate.
        weight_decay: :math:`w \ge 0`.
        use_bias_correction: Adam's bias correction :math:`b_k` (Optax's
            choice; off in the authors' default).
        decouple: decoupled (AdamW) weight decay, else L2.
        growth_rate: :math:`\gamma \ge 1`, the largest factor by which
            :math:`d` grows in a step (``inf``: unbounded).
        state_bits: how :math:`m`, :math:`v` and :math:`s` are stored: 32 (the
            params' dtype), 16 (bfloat16), 8 or 4 (block-wise codes, see
            :mod:`adamx.lowbit`).

    Returns:
        A :class:`~adamx.GradientTransformation` whose first state is a
        :class:`DAdaptAdamWState`; ``update`` needs ``params``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum((p - 3.0) ** 2)
        >>> tx = adamx.dadapt_adamw()
        >>> params = jnp.zeros(3)
        >>> state = tx.init(params)
        >>> for _ in range(100):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(state[0].estim_lr > 0.1)  # d grew from 1e-6 to D's scale
        True

    References:
        Defazio & Mishchenko, 2023, "Learning-Rate-Free Learning by
        D-Adaptation", https://arxiv.org/abs/2301.07733; reference code
        https://github.com/facebookresearch/dadaptation
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    checks.check_decay("betas[0]", betas[0])
    checks.check_decay("betas[1]", betas[1])
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    checks.check_range("estim_lr0", estim_lr0, 0.0, np.inf, low_open=True)
    checks.check_nonnegative("weight_decay", weight_decay)
    checks.check_bool("use_bias_correction", use_bias_correction)
    checks.check_bool("decouple", decouple)
    checks.check_range("growth_rate", growth_rate, 1.0, np.inf)
    return chain(
        _scale_by_dadapt_adamw(
            learning_rate,
            (betas[0], betas[1]),
            eps,
            estim_lr0,
            weight_decay,
            use_bias_correction,
            decouple,
            growth_rate,
            state_bits,
        ),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------------- Mechanic


class MechanicState(NamedTuple):
    """State of :func:`mechanize` (Optax's ``MechanicState``, its fields)."""

    base_optimizer_state: Any  # the base optimizer's state
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: updates so far
    r: jax.Array  # shape=(num_betas,), float32 (float64 params: float64): rewards
    m: jax.Array  # shape=(num_betas,), like r: the largest |h|, decayed
    v: jax.Array  # shape=(num_betas,), like r: sum of h^2, decayed
    s: jax.Array  # shape=(num_betas,), like r: the scales, summed for the step
    x0: Any  # x_ref, like params: the params at the first update


def mechanize(
    base_optimizer: GradientTransformation,
    weight_decay: jax.typing.ArrayLike = 1e-2,
    eps: jax.typing.ArrayLike = 1e-8,
    s_init: jax.typing.ArrayLike = 1e-6,
    num_betas: int = 6,
) -> GradientTransformationExtraArgs:
    r"""Mechanic: learn the scale of a base optimizer's updates as it trains.

    With :math:`u_t` the base optimizer's update, :math:`x_0` the params of
    the first update, :math:`\Delta_t = (x_t - x_0) / (\sum_j s_{t,j} +
    \epsilon)`, :math:`\beta_j = 1 - 10^{-j}` for :math:`j = 1, \dots, n`
    and :math:`\lambda` the weight decay:

    .. math::
        \begin{aligned}
        \tilde g_t &= g_t + \lambda \textstyle\sum_j s_{t,j}
        \frac{\|g_t\|}{\|x_t\| + \epsilon}\, x_t, \qquad
        h_t = -\langle \tilde g_t, \Delta_t \rangle \\
        m_{t+1} &= \max(\beta m_t, |h_t| + \epsilon), \qquad
        v_{t+1} = \beta^2 v_t + h_t^2, \qquad
        r_{t+1} = \beta r_t + \operatorname{clip}(h_t, -m_t, m_t)\, s_t \\
        s_{t+1} &= \frac{\tfrac{s_{\text{init}}}{n} m_{t+1} +
        \max(r_{t+1}, 0)}{\sqrt{v_{t+1}} + \epsilon}, \qquad
        x_{t+1} = x_0 + \textstyle\sum_j s_{t+1,j}\, (\Delta_t + u_t)
        \end{aligned}

    element-wise over the :math:`n` betas, from :math:`s_0 = s_{\text{init}}`
    and :math:`r_0 = m_0 = v_0 = 0`; the update returned is
    :math:`x_{t+1} - x_t`. Norms and the inner product run over the whole
    tree. The base optimizer's learning rate may stay a schedule with any
    peak (1 is the usual): Mechanic learns the factor on it.

    The authors ran the paper's experiments with this version (their code in
    ``optax.contrib.mechanize``, whose name, arguments and numbers these
    are), with the clipping of :math:`h_t` they added after the paper. Their
    PyTorch port (``mechanic-pytorch``) differs: there :math:`s_0 = 0`,
    :math:`m_0 = 10^{-6}`, :math:`m` takes :math:`|h_t|` without
    :math:`\epsilon`, :math:`h_t` is not clipped and :math:`s_{\text{init}}`
    defaults to :math:`10^{-8}`. Complex params are refused.

    Args:
        base_optimizer: the optimizer whose updates are scaled; it receives
            ``update``'s extra keyword arguments.
        weight_decay: :math:`\lambda \ge 0`, Mechanic's own decay, not the
            base optimizer's.
        eps: :math:`\epsilon > 0`.
        s_init: :math:`s_{\text{init}} > 0`, the first scale.
        num_betas: :math:`n \ge 1`, the number of decays
            :math:`1 - 10^{-j}`.

    Returns:
        A :class:`~adamx.GradientTransformationExtraArgs` with state
        :class:`MechanicState`; ``update`` needs ``params``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum((p - 3.0) ** 2)
        >>> tx = adamx.mechanize(adamx.adam(1.0))
        >>> params = jnp.zeros(3)
        >>> state, update = tx.init(params), jax.jit(tx.update)
        >>> for _ in range(100):
        ...     updates, state = update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(f(params) < 0.1 * f(jnp.zeros(3)))
        True

    References:
        Cutkosky, Defazio & Mehta, 2023, "Mechanic: A Learning Rate Tuner",
        https://arxiv.org/abs/2306.00144; reference code
        https://github.com/optimizedlearning/mechanic
    """
    check_transformation("base_optimizer", base_optimizer)
    checks.check_nonnegative("weight_decay", weight_decay)
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    checks.check_range("s_init", s_init, 0.0, np.inf, low_open=True)
    checks.check_positive_int("num_betas", num_betas)
    hyper_values = {"wd": weight_decay, "eps": eps, "s_init": s_init}
    beta_values = np.array([1.0 - 0.1**j for j in range(1, num_betas + 1)])

    def init_fn(params):
        _refuse_complex("mechanize", params)
        sd = _scalar_dtype(params)
        h = Hyper(**hyper_values)(sd)
        zeros = jnp.zeros([num_betas], sd)
        return MechanicState(
            base_optimizer_state=base_optimizer.init(params),
            count=jnp.zeros([], jnp.int32),
            r=zeros,
            m=zeros,
            v=zeros,
            s=jnp.ones([num_betas], sd) * h.s_init,
            x0=_copy(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        require_params("mechanize", params)
        check_moment_tree(updates, params, "params")
        sd = state.s.dtype
        h = Hyper(**hyper_values)(sd)
        base_updates, base_state = call_update(
            base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )
        # Training loops that load pretrained weights after init: x_0 is the
        # params of the first update.
        x0 = jax.lax.cond(state.count == 0, lambda: params, lambda: state.x0)
        s_sum = jnp.sum(state.s)
        grad_norm = jnp.sqrt(_sq_norm(updates, sd))
        param_norm = jnp.sqrt(_sq_norm(params, sd))
        decay = h.wd * s_sum * grad_norm / (param_norm + h.eps)

        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        x0_leaves = treedef.flatten_up_to(x0)
        u_leaves = treedef.flatten_up_to(base_updates)
        inner = jnp.zeros([], sd)
        deltas = []
        for g, x, x_ref, u in zip(g_leaves, p_leaves, x0_leaves, u_leaves, strict=True):
            ct = wider_dtype(g.dtype, x.dtype, sd)
            x = x.astype(ct)
            g = g.astype(ct) + decay.astype(ct) * x
            delta_prev = (x_ref.astype(ct) - x) / (s_sum + h.eps).astype(ct)
            inner = inner + jnp.sum(g * delta_prev).astype(sd)
            deltas.append((delta_prev - u.astype(ct), x, x_ref))
        betas = jnp.asarray(beta_values).astype(sd)
        clipped = jnp.clip(inner, -state.m, state.m)
        m = jnp.maximum(betas * state.m, jnp.abs(inner) + h.eps)
        v = betas**2 * state.v + inner**2
        r = betas * state.r + clipped * state.s
        wealth = (h.s_init / num_betas) * m + jnp.maximum(r, 0)
        s = wealth / (jnp.sqrt(v) + h.eps)
        s_new = jnp.sum(s)

        def step(g0, delta, x, x_ref):
            new = x_ref.astype(delta.dtype) - s_new.astype(delta.dtype) * delta
            return (new - x).astype(g0.dtype)

        out = [step(g0, *rest) for g0, rest in zip(g_leaves, deltas, strict=True)]
        return treedef.unflatten(out), MechanicState(
            base_optimizer_state=base_state,
            count=safe_increment(state.count),
            r=r,
            m=m,
            v=v,
            s=s,
            x0=x0,
        )

    return GradientTransformationExtraArgs(
        init_fn,
        update_fn,
        Traits(elementwise=traits_of(base_optimizer).elementwise),
        derived=True,
    )
