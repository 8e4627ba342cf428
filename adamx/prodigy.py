r"""Prodigy: Adam whose step size :math:`D` is estimated as it trains.

Prodigy (Mishchenko & Defazio, 2023) runs Adam on the gradients scaled by an
estimate :math:`d_k` of the distance :math:`D = \|x_0 - x_*\|` to a solution,
and grows :math:`d_k` from a tiny :math:`d_0` by a weighted ratio of how far
the params moved along the gradients to how large the gradients' weighted
sum is:

.. math::
    \hat d_{k+1} = \frac{\sum_{i \le k} \beta_3^{k-i} \lambda_i d_i^2
    \langle g_i, x_0 - x_i \rangle}{\| s_k \|_1}, \qquad
    s_k = \sum_{i \le k} \beta_3^{k-i} \lambda_i d_i^2 g_i

The sums run over the whole tree, so :math:`d_k` is one scalar for all params.
This module follows the authors' package ``prodigyopt`` (its algorithm,
argument meanings and defaults), under Optax's names where Optax has them
(``optax.contrib.prodigy``), and says where the two differ.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import Hyper, _refuse_complex, as_float
from adamx.storage import Moment, Storage, check_moment_tree, load, store
from adamx.traits import Stage, Traits
from adamx.transforms import learning_rate_stage

__all__ = ["ProdigyState", "prodigy", "scale_by_prodigy"]

_MU = Moment("mu")
_NU = Moment("nu", signed=False)
_GRAD_SUM = Moment("grad_sum")


class ProdigyState(NamedTuple):
    """State of :func:`scale_by_prodigy`.

    Optax's fields, with adamx's names for Adam's moments (``mu`` and ``nu``,
    Optax's ``exp_avg`` and ``exp_avg_sq``), ``count`` first, and the two the
    authors' algorithm adds: the largest estimate and the steps taken.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: updates so far
    mu: Any  # like params (or codes): m, Adam's first moment of d g
    nu: Any  # like params (or codes): v, second moment of d g
    # s, the weighted sum of gradients: like params, or with slice_p > 1 a
    # vector of every slice_p-th entry of each flattened param (or codes)
    grad_sum: Any
    params0: Any  # x_0, the initial params (sliced like grad_sum), params' dtype
    estim_lr: jax.Array  # shape=(), float32 (float64 for float64 params): d_k
    numerator_weighted: jax.Array  # shape=(), like estim_lr: d's numerator
    max_estim_lr: jax.Array  # shape=(), like estim_lr: the largest estimate
    steps: jax.Array  # shape=(), int32: steps taken (k), for bias correction


def _sliced(x: jax.Array, slice_p: int) -> jax.Array:
    """Every ``slice_p``-th entry of the flattened ``x`` (``x`` itself at 1)."""
    return x if slice_p == 1 else x.reshape(-1)[::slice_p]


def scale_by_prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    beta3: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    estim_lr0: jax.typing.ArrayLike = 1e-6,
    estim_lr_coef: jax.typing.ArrayLike = 1.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    safeguard_warmup: bool = False,
    *,
    use_bias_correction: bool = False,
    decouple: bool = True,
    growth_rate: jax.typing.ArrayLike = math.inf,
    slice_p: int = 1,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Prodigy's direction: Adam on :math:`d_k g`, with :math:`d_k` estimated.

    With :math:`\lambda_k` the learning rate, :math:`b_k` the bias correction
    :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` (1 unless
    ``use_bias_correction``), :math:`\eta_k = d_k \lambda_k b_k`, and
    :math:`\bar x` every ``slice_p``-th entry of :math:`x`:

    .. math::
        \begin{aligned}
        m_{k+1} &= \beta_1 m_k + (1 - \beta_1) d_k g_k, \qquad
        v_{k+1} = \beta_2 v_k + (1 - \beta_2) d_k^2 g_k^2 \\
        r_{k+1} &= \beta_3 r_k + \tfrac{d_k}{d_0} \eta_k
        \langle \bar g_k, \bar x_0 - \bar x_k \rangle, \qquad
        s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0} \eta_k \bar g_k \\
        \hat d_{k+1} &= c\, \frac{r_{k+1}}{\|s_{k+1}\|_1}, \qquad
        d^{\max}_{k+1} = \max(d^{\max}_k, \hat d_{k+1}), \qquad
        d_{k+1} = \min(d^{\max}_{k+1}, \gamma\, d'_k) \\
        u_k &= d_k b_k \left( \frac{m_{k+1}}{\sqrt{v_{k+1}} + d_{k+1}
        \epsilon} + w\, x_k \right)
        \end{aligned}

    where :math:`d'_k = \max(d_k, \hat d_{k+1})` while :math:`d_k = d_0`
    (the first estimate is not held back by :math:`\gamma`), else
    :math:`d_k`; ``safeguard_warmup`` uses :math:`d_k` in place of
    :math:`\eta_k` in :math:`s`. The step is :math:`-\lambda_k u_k`
    (:func:`prodigy` chains the learning rate); the learning rate enters
    :math:`d`'s estimate too, which is why this transformation takes it.
    With ``decouple=False`` the weight decay is added to the gradient
    instead (:math:`g_k + w x_k`, L2).

    This is the authors' ``prodigyopt.Prodigy``. Where ``optax.contrib.prodigy``
    differs, adamx follows the authors: Optax always corrects the bias (the
    authors' default is not to: ``use_bias_correction``), has no
    ``growth_rate``, ``decouple`` or ``slice_p``, and where
    :math:`\|s\|_1 = 0` (no gradient yet, or a learning rate of 0) Optax
    divides by it, where the authors take no step, keep :math:`d`, and do not
    count the step (a learning rate of 0 leaves the moments unchanged too).

    Args:
        learning_rate: :math:`\lambda_k`, a number or a schedule of the update
            count; 1 is the authors' advice, with a schedule that decays it.
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)`.
        beta3: :math:`\beta_3 \in [0, 1)`, the decay of :math:`r` and
            :math:`s`; ``None`` is :math:`\sqrt{\beta_2}`.
        eps: :math:`\epsilon > 0`, scaled by :math:`d`.
        estim_lr0: :math:`d_0 > 0`, the first under-estimate of :math:`D`.
        estim_lr_coef: :math:`c > 0` (the authors' ``d_coef``).
        weight_decay: :math:`w \ge 0`.
        safeguard_warmup: leave :math:`\lambda_k` out of :math:`s`, for
            warm-up schedules that start near 0.
        use_bias_correction: Adam's bias correction :math:`b_k`.
        decouple: decoupled (AdamW) weight decay, else L2.
        growth_rate: :math:`\gamma \ge 1`, the largest factor by which
            :math:`d` grows in a step (``inf``: unbounded).
        slice_p: estimate :math:`d` from every ``slice_p``-th entry of each
            param only (the authors' memory saving; 1: all entries). Above 1,
            :math:`s` and :math:`x_0` are that much smaller, and the
            transformation works leaf by leaf.
        state_bits: how :math:`m`, :math:`v` and :math:`s` are stored: 32 (the
            params' dtype), 16 (bfloat16), 8 or 4 (block-wise codes, see
            :mod:`adamx.lowbit`). :math:`s` enters only :math:`\|s\|_1`, where
            codes' rounding errors average out. :math:`x_0` stays in the
            params' dtype, whatever ``state_bits`` says: :math:`d`'s numerator
            is the small difference :math:`x_0 - x_k`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ProdigyState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_prodigy()
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> u, state = tx.update(jnp.array([0.5, -0.5]), state, params)
        >>> print(u)  # d_0 m / (sqrt(v) + d_1 eps): d_0 sqrt(10) sign(g)
        [ 3.1622965e-06 -3.1622965e-06]
        >>> float(state.estim_lr)  # x_0 - x_0 = 0: d stays d_0
        1e-06

    References:
        Mishchenko & Defazio, 2023, "Prodigy: An Expeditiously Adaptive
        Parameter-Free Learner", https://arxiv.org/abs/2306.06101; reference
        code https://github.com/konstmish/prodigy
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = betas
    checks.check_decay("betas[0]", b1)
    checks.check_decay("betas[1]", b2)
    if beta3 is not None:
        checks.check_decay("beta3", beta3)
    b3 = b2**0.5 if beta3 is None else beta3
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    checks.check_range("estim_lr0", estim_lr0, 0.0, np.inf, low_open=True)
    checks.check_range(
        "estim_lr_coef", estim_lr_coef, 0.0, np.inf, low_open=True, high_open=True
    )
    checks.check_nonnegative("weight_decay", weight_decay)
    checks.check_bool("safeguard_warmup", safeguard_warmup)
    checks.check_bool("use_bias_correction", use_bias_correction)
    checks.check_bool("decouple", decouple)
    checks.check_range("growth_rate", growth_rate, 1.0, np.inf)
    checks.check_positive_int("slice_p", slice_p)
    storage = Storage.parse(state_bits)
    is_schedule = callable(learning_rate)
    no_momentum = isinstance(b1, (int, float)) and b1 == 0
    hyper_values = {
        "b1": b1,
        "b2": b2,
        "b3": b3,
        "eps": eps,
        "d0": estim_lr0,
        "coef": estim_lr_coef,
        "wd": weight_decay,
        "growth": growth_rate,
    }

    def init_fn(params):
        _refuse_complex("scale_by_prodigy", params)
        leaves = jax.tree.leaves(params)
        sd = wider_dtype(*(p.dtype for p in leaves), jnp.float32)
        sliced = jax.tree.map(lambda p: _sliced(jnp.asarray(p), slice_p), params)
        d0 = jnp.asarray(estim_lr0).astype(sd)
        return ProdigyState(
            count=jnp.zeros([], jnp.int32),
            mu=storage.init(_MU, params),
            nu=storage.init(_NU, params),
            grad_sum=storage.init(_GRAD_SUM, sliced),
            # Its own buffer: a donated state must not hold the params twice.
            params0=jax.tree.map(jnp.copy, sliced),
            estim_lr=d0,
            numerator_weighted=jnp.zeros([], sd),
            max_estim_lr=d0,
            steps=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None):
        require_params("scale_by_prodigy", params)
        check_moment_tree(updates, state.mu, "state.mu")
        check_moment_tree(updates, params, "params")
        sd = state.estim_lr.dtype
        hyper = Hyper(**hyper_values)
        h = hyper(sd)
        lr = learning_rate(state.count) if is_schedule else learning_rate
        lr = jnp.asarray(lr).astype(sd)
        d = state.estim_lr
        if use_bias_correction:
            k1 = as_float(state.steps + 1).astype(sd)
            bc = jnp.sqrt(1 - h.b2**k1) / (1 - h.b1**k1)
        else:
            bc = jnp.ones([], sd)
        dlr = d * lr * bc
        ratio = d / h.d0
        s_scale = ratio * (d if safeguard_warmup else dlr)
        active = lr > 0

        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        fields = [
            treedef.flatten_up_to(getattr(state, name))
            for name in ("mu", "nu", "grad_sum", "params0")
        ]

        def accumulate(g, p, m_stored, v_stored, s_stored, p0):
            ct = wider_dtype(g.dtype, sd)
            hc = hyper(ct)
            g = g.astype(ct)
            x = p.astype(ct)
            if not decouple:
                g = g + hc.wd * x  # L2: the decay joins the gradient
            dc, s_c = d.astype(ct), s_scale.astype(ct)
            g_bar = _sliced(g, slice_p)
            dot = jnp.sum(g_bar * (p0.astype(ct) - _sliced(x, slice_p)))
            m_old, v_old = load(m_stored, ct), load(v_stored, ct)
            s_old = load(s_stored, ct)
            m = hc.b1 * m_old + dc * (1 - hc.b1) * g
            v = hc.b2 * v_old + dc * dc * (1 - hc.b2) * g * g
            s = hc.b3 * s_old + s_c * g_bar
            m = jnp.where(active, m, m_old)
            v = jnp.where(active, v, v_old)
            s = jnp.where(active, s, s_old)
            return g, x, m, v, s, dot.astype(sd), jnp.sum(jnp.abs(s)).astype(sd)

        firsts = [
            accumulate(g, p, *f)
            for g, p, *f in zip(g_leaves, p_leaves, *fields, strict=True)
        ]
        delta = sum((ratio * dlr * o[5] for o in firsts), jnp.zeros([], sd))
        denom = sum((o[6] for o in firsts), jnp.zeros([], sd))
        denom = jnp.where(active, denom, 0)
        stepped = denom > 0
        numerator = h.b3 * state.numerator_weighted + delta
        d_hat = h.coef * numerator / jnp.where(stepped, denom, 1)
        d_new = jnp.where(d == h.d0, jnp.maximum(d, d_hat), d)
        d_max = jnp.maximum(state.max_estim_lr, d_hat)
        d_new = jnp.minimum(d_max, d_new * h.growth)
        d_new = jnp.where(stepped, d_new, d)
        d_max = jnp.where(stepped, d_max, state.max_estim_lr)
        numerator = jnp.where(stepped, numerator, state.numerator_weighted)

        def direction(g, x, m, v):
            ct = g.dtype
            hc = hyper(ct)
            scale = (d * bc).astype(ct)
            denominator = jnp.sqrt(v) + d_new.astype(ct) * hc.eps
            if no_momentum:  # the authors keep no m: their step is d_{k+1} g
                u = d_new.astype(ct) * g / denominator
            else:
                u = m / denominator
            if decouple:
                u = u + hc.wd * x
            return jnp.where(stepped, scale * u, jnp.zeros_like(u))

        out = [
            direction(g, x, m, v).astype(g0.dtype)
            for (g, x, m, v, *_), g0 in zip(firsts, g_leaves, strict=True)
        ]

        def stored(i, name):
            olds = fields[["mu", "nu", "grad_sum"].index(name)]
            return treedef.unflatten(
                [store(o[i], old) for o, old in zip(firsts, olds, strict=True)]
            )

        new_state = ProdigyState(
            count=safe_increment(state.count),
            mu=stored(2, "mu"),
            nu=stored(3, "nu"),
            grad_sum=stored(4, "grad_sum"),
            params0=state.params0,
            estim_lr=d_new,
            numerator_weighted=numerator,
            max_estim_lr=d_max,
            steps=jnp.where(stepped, safe_increment(state.steps), state.steps),
        )
        return treedef.unflatten(out), new_state

    stage = Stage(
        "scale_by_prodigy",
        {
            **hyper_values,
            "learning_rate": learning_rate,
            "safeguard_warmup": safeguard_warmup,
            "use_bias_correction": use_bias_correction,
            "decouple": decouple,
            "slice_p": slice_p,
            "storage": storage,
        },
    )
    elementwise = storage.elementwise
    if elementwise is not None:
        # Its sums run over the whole tree, as a global norm's do; a slice of
        # every leaf is not a slice of a flat buffer.
        elementwise = elementwise and slice_p == 1
    return GradientTransformationExtraArgs(
        init_fn, update_fn, Traits(elementwise, (stage,))
    )


def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    beta3: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    estim_lr0: jax.typing.ArrayLike = 1e-6,
    estim_lr_coef: jax.typing.ArrayLike = 1.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    safeguard_warmup: bool = False,
    *,
    use_bias_correction: bool = False,
    decouple: bool = True,
    growth_rate: jax.typing.ArrayLike = math.inf,
    slice_p: int = 1,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Prodigy: AdamW whose learning rate estimates itself (Mishchenko & Defazio).

    .. math::
        x_{k+1} = x_k - \lambda_k d_k b_k \left( \frac{m_{k+1}}
        {\sqrt{v_{k+1}} + d_{k+1} \epsilon} + w\, x_k \right)

    with :math:`m, v` Adam's moments of :math:`d_k g_k` and :math:`d_k` the
    estimate of the distance to a solution (see :func:`scale_by_prodigy`).
    Names, arguments, order and defaults are ``optax.contrib.prodigy``'s, plus
    the authors' ``use_bias_correction``, ``decouple``, ``growth_rate`` and
    ``slice_p``; the numbers are the authors' (``prodigyopt.Prodigy``), which
    differ from Optax's in that Optax always corrects the bias.
    ``use_bias_correction=True`` gives Optax's.

    Args:
        learning_rate: :math:`\lambda_k`; leave it at 1 (a schedule from 1 to
            0 is the authors' advice).
        betas: :math:`(\beta_1, \beta_2)`.
        beta3: the decay of :math:`d`'s sums; ``None``: :math:`\sqrt{\beta_2}`.
        eps: :math:`\epsilon > 0`.
        estim_lr0: :math:`d_0 > 0`.
        estim_lr_coef: the factor on :math:`d`'s estimate (the authors'
            ``d_coef``).
        weight_decay: :math:`w \ge 0`.
        safeguard_warmup: leave the learning rate out of :math:`d`'s
            denominator.
        use_bias_correction: Adam's bias correction (Optax's choice).
        decouple: decoupled weight decay (else L2).
        growth_rate: the largest growth of :math:`d` per step.
        slice_p: estimate :math:`d` from every ``slice_p``-th entry.
        state_bits: how the moments and :math:`s` are stored: 32, 16, 8, 4.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.prodigy()
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(50):
        ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(state[0].estim_lr > 0.1)  # d grew from 1e-6 to D's scale
        True

    References:
        Mishchenko & Defazio, 2023, "Prodigy: An Expeditiously Adaptive
        Parameter-Free Learner", https://arxiv.org/abs/2306.06101; reference
        code https://github.com/konstmish/prodigy
    """
    return chain(
        scale_by_prodigy(
            learning_rate,
            betas,
            beta3,
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
            use_bias_correction=use_bias_correction,
            decouple=decouple,
            growth_rate=growth_rate,
            slice_p=slice_p,
            state_bits=state_bits,
        ),
        learning_rate_stage(learning_rate),
    )
