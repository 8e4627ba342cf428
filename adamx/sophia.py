r"""Sophia: momentum divided by a diagonal Hessian estimate, clipped per entry.

Sophia (Liu et al., 2023) keeps a moving average :math:`h` of an estimate of
the Hessian's diagonal, refreshed every few steps, and steps by the momentum
divided by it, clipped entry by entry so that a flat or negative-curvature
direction moves at most the learning rate:

.. math::
    \theta_{t} = \theta_{t-1} - \eta_t \operatorname{clip}\!\left(
    \frac{m_t}{\max(\gamma h_t, \epsilon)}, 1\right)

The estimate is a transformation of its own (``hessian_diagonal_fn``), fed
what it needs through ``update``'s extra keyword arguments: Hutchinson's
estimator (:func:`hutchinson_estimator_diag_hessian`, Optax's default) takes
the objective as ``obj_fn``; the Gauss-Newton-Bartlett estimator
(:func:`gauss_newton_bartlett_estimator_diag_hessian`, the authors' SophiaG)
squares a gradient at labels sampled from the model. Names, arguments and
defaults are ``optax.contrib.sophia``'s; the numbers are the authors'
(``SophiaG``, packaged as ``sophia_opt``), and each docstring says where
Optax's differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.adaptive import MU, NU
from adamx.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    require_params,
    safe_increment,
    wider_dtype,
)
from adamx.combine import call_update, chain, check_transformation
from adamx.moments import Hyper, _refuse_complex, as_float
from adamx.storage import Storage, check_moment_tree, load, store
from adamx.traits import Stage, Traits, chained, traits_of
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "HutchinsonState",
    "SophiaState",
    "gauss_newton_bartlett_estimator_diag_hessian",
    "hutchinson_estimator_diag_hessian",
    "scale_by_sophia",
    "sophia",
]


class HutchinsonState(NamedTuple):
    """State of :func:`hutchinson_estimator_diag_hessian`."""

    key: jax.Array  # a PRNG key, split at each estimate


def hutchinson_estimator_diag_hessian(
    random_seed: jax.Array | None = None,
) -> GradientTransformation:
    r"""Hutchinson's estimate of the Hessian's diagonal, for :func:`sophia`.

    .. math:: \hat h = u \odot (\nabla^2 f(\theta)\, u), \qquad
        u_i \in \{-1, 1\} \text{ uniformly}

    unbiased (:math:`\mathbb{E}[\hat h] = \operatorname{diag} \nabla^2 f`),
    from one Hessian-vector product (forward over reverse mode). ``update``
    needs ``params`` and ``obj_fn``, the objective :math:`f` as a function of
    the params alone; it ignores the updates. The signs are drawn as Optax's
    are (one key per leaf, split from the state's), so the same key gives the
    same estimate.

    Args:
        random_seed: the first PRNG key; ``None``: ``jax.random.PRNGKey(0)``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`HutchinsonState`; ``update(updates, state, params, obj_fn=f)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> est = adamx.hutchinson_estimator_diag_hessian()
        >>> params = jnp.array([1.0, 2.0])
        >>> f = lambda p: jnp.sum(jnp.array([3.0, 0.5]) * p**2)
        >>> h, _ = est.update(params, est.init(params), params, obj_fn=f)
        >>> print(h)  # exact for a diagonal Hessian: u_i^2 = 1
        [6. 1.]

    References:
        Hutchinson, 1989, "A Stochastic Estimator of the Trace of the
        Influence Matrix for Laplacian Smoothing Splines",
        https://doi.org/10.1080/03610918908812806
    """

    def init_fn(params):
        del params
        key = random_seed if random_seed is not None else jax.random.PRNGKey(0)
        return HutchinsonState(key=key)

    def update_fn(updates, state, params=None, obj_fn=None, **extra_args):
        del updates, extra_args
        require_params("hutchinson_estimator_diag_hessian", params)
        if obj_fn is None:
            raise ValueError(
                "hutchinson_estimator_diag_hessian needs the objective: pass "
                "obj_fn=(params -> loss) to update (through sophia's update)"
            )
        key, subkey = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(subkey, treedef.num_leaves)
        signs = treedef.unflatten(
            [
                jax.random.rademacher(k, jnp.shape(p), jnp.float32).astype(p.dtype)
                for k, p in zip(keys, leaves, strict=True)
            ]
        )
        hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
        return jax.tree.map(lambda h, u: h * u, hvp, signs), HutchinsonState(key)

    # Its random signs depend on how the params are laid out: it declares
    # nothing, so that a flat layout is allowed but not claimed to agree.
    return GradientTransformation(init_fn, update_fn)


def gauss_newton_bartlett_estimator_diag_hessian(
    batch_size: int = 1,
) -> GradientTransformation:
    r"""The Gauss-Newton-Bartlett estimate of the Hessian's diagonal (SophiaG).

    .. math:: \hat h = B\, \hat g \odot \hat g

    with :math:`\hat g` the mean gradient over a batch of :math:`B` examples of
    the loss at labels sampled from the model's own predictions (for a
    softmax output, :math:`\mathbb{E}[\hat h]` is the Gauss-Newton matrix's
    diagonal). ``update`` takes it as ``sampled_grads``; without it, the
    updates themselves are squared (labels from the data: the empirical
    Fisher's diagonal). The authors' ``SophiaG.update_hessian`` squares the
    gradient it finds and multiplies by :math:`B` in the step (``rho * bs``);
    here :math:`B` is in :math:`\hat h`, so ``gamma`` is their ``rho``.

    Args:
        batch_size: :math:`B \ge 1`, the examples (tokens) averaged in
            :math:`\hat g`.

    Returns:
        A :class:`~adamx.GradientTransformation` keeping no state;
        ``update(updates, state, params, sampled_grads=g_hat)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> est = adamx.gauss_newton_bartlett_estimator_diag_hessian(4)
        >>> g = jnp.array([0.5, -1.0])
        >>> est.update(g, est.init(g), sampled_grads=g)[0]
        Array([1., 4.], dtype=float32)

    References:
        Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order
        Optimizer for Language Model Pre-training", §2.3,
        https://arxiv.org/abs/2305.14342; code
        https://github.com/Liuhong99/Sophia
    """
    checks.check_positive_int("batch_size", batch_size)

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, sampled_grads=None, **extra_args):
        del params, extra_args
        g = updates if sampled_grads is None else sampled_grads
        check_moment_tree(updates, g, "sampled_grads")
        return jax.tree.map(lambda x: batch_size * x * x, g), state

    stage = Stage(
        "gauss_newton_bartlett_estimator_diag_hessian", {"batch_size": batch_size}
    )
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


class SophiaState(NamedTuple):
    """State of :func:`scale_by_sophia` (Optax's fields)."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    mu: Any  # like params (or codes), mu_dtype: the momentum m
    nu: Any  # like params (or codes): h, the moving average of the estimates
    hessian_fn_state: Any  # the state of hessian_diagonal_fn


def scale_by_sophia(
    b1: jax.typing.ArrayLike = 0.965,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    gamma: jax.typing.ArrayLike = 0.01,
    clip_threshold: jax.typing.ArrayLike | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: GradientTransformation = hutchinson_estimator_diag_hessian(),  # noqa: B008
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    use_bias_correction: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Sophia's direction: momentum over the Hessian estimate, clipped.

    .. math::
        \begin{aligned}
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        u_t = \operatorname{clip}\!\left(\frac{m_t}{\max(\gamma h_{t-1},
        \epsilon)}, -c, c\right) \\
        h_t &= \beta_2 h_{t-1} + (1 - \beta_2) \hat h(\theta_{t-1})
        \quad \text{if } (t - 1) \bmod k = 0, \text{ else } h_t = h_{t-1}
        \end{aligned}

    with :math:`\hat h` from ``hessian_diagonal_fn`` at the params the step
    starts from (the first step's estimate is used from the second step on;
    until then :math:`h = 0` and every entry is clipped), and
    :math:`m_t / (1 - \beta_1^t)` in place of :math:`m_t` with
    ``use_bias_correction``. Extra keyword arguments of ``update`` go to
    ``hessian_diagonal_fn`` (``obj_fn`` for Hutchinson's estimator).

    This is the authors' SophiaG. Where ``optax.contrib.scale_by_sophia``
    differs, adamx follows the authors: Optax corrects the momentum's bias
    (``use_bias_correction=True`` does too). The denominator is the paper's
    and Optax's :math:`\max(\gamma h, \epsilon)`; the authors' code adds
    :math:`10^{-15}` instead, the same to :math:`\epsilon` where
    :math:`h \ge 0`, as their estimator's always is (pass ``eps=1e-15`` for
    their numbers), but Hutchinson's estimate can be negative, and a
    negative denominator would step uphill. The paper's
    :math:`\rho` times the batch size :math:`B` (the authors' ``rho * bs``)
    is :math:`\gamma` here when the estimator's :math:`\hat h` leaves out
    :math:`B`; :func:`gauss_newton_bartlett_estimator_diag_hessian` puts it
    in, so that ``gamma`` is their ``rho``. When :math:`\hat h` is taken is
    the training loop's choice in the authors' code (theirs refreshes
    :math:`h` after steps :math:`k - 1, 2k - 1, \dots`); here it is Optax's.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, the momentum's decay.
        b2: :math:`\beta_2 \in [0, 1)`, the decay of :math:`h` per refresh.
        eps: :math:`\epsilon > 0`, the floor of :math:`\gamma h`.
        gamma: :math:`\gamma > 0` (the paper's :math:`\rho`).
        clip_threshold: :math:`c > 0`; ``None``: no clipping.
        update_interval: :math:`k \ge 1`, steps between estimates.
        hessian_diagonal_fn: the estimator of :math:`\operatorname{diag}
            \nabla^2 f`, a transformation of the gradients, params and extra
            arguments.
        mu_dtype: dtype of :math:`m`; ``None``: the params'.
        verbose: print the share of entries not clipped (the authors' "win
            rate", best between 0.1 and 0.5).
        print_win_rate_every_n_steps: how often, in steps (>= 1 if
            ``verbose``).
        use_bias_correction: divide :math:`m_t` by :math:`1 - \beta_1^t`
            (Optax's choice).
        state_bits: how :math:`m` and :math:`h` are stored: 32 (as
            ``mu_dtype`` says), 16 (bfloat16), 8 or 4 (block-wise codes, see
            :mod:`adamx.lowbit`). Not to be combined with ``mu_dtype``.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`SophiaState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_sophia(b1=0.0)
        >>> params = jnp.array([1.0, -2.0])
        >>> f = lambda p: jnp.sum(jnp.array([100.0, 1.0]) * p**2)
        >>> state = tx.init(params)
        >>> u, state = tx.update(2 * params, state, params, obj_fn=f)
        >>> print(u)  # h = 0 at first: every entry clipped
        [ 1. -1.]
        >>> print(tx.update(2 * params, state, params, obj_fn=f)[0])
        [ 1. -1.]

    References:
        Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order
        Optimizer for Language Model Pre-training",
        https://arxiv.org/abs/2305.14342; code
        https://github.com/Liuhong99/Sophia
    """
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True, high_open=True)
    checks.check_range("gamma", gamma, 0.0, np.inf, low_open=True, high_open=True)
    if clip_threshold is not None:
        checks.check_range("clip_threshold", clip_threshold, 0.0, np.inf, low_open=True)
    checks.check_positive_int("update_interval", update_interval)
    check_transformation("hessian_diagonal_fn", hessian_diagonal_fn)
    checks.check_bool("verbose", verbose)
    checks.check_positive_int(
        "print_win_rate_every_n_steps",
        print_win_rate_every_n_steps,
        allow_zero=not verbose,
    )
    checks.check_bool("use_bias_correction", use_bias_correction)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)
    values: dict[str, Any] = {"b1": b1, "b2": b2, "eps": eps, "gamma": gamma}
    if clip_threshold is not None:
        values["clip"] = clip_threshold

    def init_fn(params):
        _refuse_complex("scale_by_sophia", params)
        return SophiaState(
            count=jnp.zeros([], jnp.int32),
            mu=storage.init(MU, params),
            nu=storage.init(NU._replace(dtype=None), params),
            hessian_fn_state=hessian_diagonal_fn.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        require_params("scale_by_sophia", params)
        check_moment_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)
        hyper = Hyper(**values)
        g_leaves, treedef = jax.tree.flatten(updates)
        mus = treedef.flatten_up_to(state.mu)
        nus = treedef.flatten_up_to(state.nu)

        def leaf(g, m_stored, v_stored):
            ct = wider_dtype(g.dtype, jnp.float32)
            h = hyper(ct)
            m = (1 - h.b1) * g.astype(ct) + h.b1 * load(m_stored, ct)
            m_hat = m
            if use_bias_correction:
                m_hat = m / (1 - h.b1 ** as_float(count).astype(ct))
            u = m_hat / jnp.maximum(h.gamma * load(v_stored, ct), h.eps)
            if clip_threshold is not None:
                u = jnp.clip(u, -h.clip, h.clip)
            return u, store(m, m_stored)

        out = [leaf(*a) for a in zip(g_leaves, mus, nus, strict=True)]
        u = treedef.unflatten([o[0] for o in out])
        if verbose and clip_threshold is not None:
            sizes = sum(x.size for x in jax.tree.leaves(u))
            kept = sum(
                jnp.sum(jnp.abs(x) < hyper(x.dtype).clip) for x in jax.tree.leaves(u)
            )
            jax.lax.cond(
                count % print_win_rate_every_n_steps == 0,
                lambda: jax.debug.print(
                    "Sophia optimizer win rate: {}", kept / max(sizes, 1)
                ),
                lambda: None,
            )

        def refresh(hessian_state, nu_stored):
            estimate, hessian_state = call_update(
                hessian_diagonal_fn, updates, hessian_state, params, extra_args
            )
            est = treedef.flatten_up_to(estimate)

            def ema(e, v_stored):
                ct = wider_dtype(e.dtype, jnp.float32)
                h = hyper(ct)
                v = (1 - h.b2) * e.astype(ct) + h.b2 * load(v_stored, ct)
                return store(v, v_stored)

            new = [ema(e, v) for e, v in zip(est, nus, strict=True)]
            return hessian_state, treedef.unflatten(new)

        hessian_state, nu = jax.lax.cond(
            state.count % update_interval == 0,
            refresh,
            lambda hs, n: (hs, n),
            state.hessian_fn_state,
            state.nu,
        )
        u = jax.tree.map(lambda x, g: x.astype(g.dtype), u, updates)
        mu = treedef.unflatten([o[1] for o in out])
        return u, SophiaState(count, mu, nu, hessian_state)

    stage = Stage(
        "scale_by_sophia",
        {
            **values,
            "clip_threshold": clip_threshold,
            "update_interval": update_interval,
            "use_bias_correction": use_bias_correction,
            "storage": storage,
        },
    )
    own = Traits(storage.elementwise, (stage,))
    estimator = traits_of(hessian_diagonal_fn)
    elementwise = chained([(0, own), ("hessian", estimator)]).elementwise
    return GradientTransformationExtraArgs(
        init_fn, update_fn, Traits(elementwise, (stage,))
    )


def sophia(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.965,
    b2: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 1e-4,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    gamma: jax.typing.ArrayLike = 0.01,
    clip_threshold: jax.typing.ArrayLike | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: GradientTransformation = hutchinson_estimator_diag_hessian(),  # noqa: B008
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    use_bias_correction: bool = False,
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Sophia: a clipped diagonal-Newton step with decoupled weight decay.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(\operatorname{clip}\!\left(
        \frac{m_t}{\max(\gamma h_{t-1}, \epsilon)}, -c, c\right)
        + \lambda \theta_{t-1}\right)

    (see :func:`scale_by_sophia`). The weight decay multiplies the params
    before the step, :math:`\theta \leftarrow (1 - \eta_t \lambda)\theta`, as
    the authors' SophiaG does and Optax's chain computes. Names, arguments,
    order and defaults are ``optax.contrib.sophia``'s, plus
    ``use_bias_correction`` and ``state_bits``; the numbers are the authors'
    (no bias correction; Optax's with ``use_bias_correction=True``).
    ``update`` passes its extra keyword arguments to ``hessian_diagonal_fn``:
    ``tx.update(grads, state, params, obj_fn=lambda p: loss(p, batch))``.

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        b1: :math:`\beta_1`, the momentum's decay.
        b2: :math:`\beta_2`, the decay of :math:`h` per refresh.
        eps: :math:`\epsilon > 0`.
        weight_decay: :math:`\lambda \ge 0`.
        weight_decay_mask: which leaves decay (a tree of bools, or a function
            of the params).
        gamma: :math:`\gamma > 0`.
        clip_threshold: :math:`c`, or ``None``.
        update_interval: steps between Hessian estimates.
        hessian_diagonal_fn: the estimator (Hutchinson's by default).
        mu_dtype: dtype of the momentum.
        verbose: print the win rate.
        print_win_rate_every_n_steps: how often.
        use_bias_correction: correct the momentum's bias (Optax's choice).
        state_bits: how :math:`m` and :math:`h` are stored: 32, 16, 8 or 4.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``
        and what ``hessian_diagonal_fn`` needs.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def loss(p):
        ...     return jnp.sum(jnp.array([100.0, 1.0]) * p**2)
        >>> tx = adamx.sophia(0.5, b1=0.5, b2=0.5, weight_decay=0.0, gamma=1.0,
        ...                   update_interval=1)
        >>> @jax.jit
        ... def step(params, state):
        ...     grads = jax.grad(loss)(params)
        ...     updates, state = tx.update(grads, state, params, obj_fn=loss)
        ...     return adamx.apply_updates(params, updates), state
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(30):
        ...     params, state = step(params, state)
        >>> bool(jnp.abs(params).max() < 1e-3)  # from a condition number of 100
        True

    References:
        Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order
        Optimizer for Language Model Pre-training",
        https://arxiv.org/abs/2305.14342; code
        https://github.com/Liuhong99/Sophia
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_nonnegative("weight_decay", weight_decay)
    return chain(
        scale_by_sophia(
            b1,
            b2,
            eps,
            gamma,
            clip_threshold,
            update_interval,
            hessian_diagonal_fn,
            mu_dtype,
            verbose,
            print_win_rate_every_n_steps,
            use_bias_correction=use_bias_correction,
            state_bits=state_bits,
        ),
        add_decayed_weights(weight_decay, weight_decay_mask),
        learning_rate_stage(learning_rate),
    )
