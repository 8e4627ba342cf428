r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner.

For a matrix gradient :math:`G`, Shampoo keeps :math:`L = \mathbb{E}[G G^\top]`
and :math:`R = \mathbb{E}[G^\top G]`. SOAP rotates the gradient into their
eigenbases :math:`Q_L, Q_R`, runs Adam there, and rotates the step back:

.. math::
    G' = Q_L^\top G Q_R, \qquad
    u = Q_L \frac{\hat M'}{\sqrt{\hat V'} + \epsilon} Q_R^\top

The eigenbases are refreshed every ``precondition_frequency`` steps by one
step of power iteration and a QR decomposition, and the second moment is
carried over, its entries reordered with the basis. A leaf of any rank gets
one basis per dimension (a dimension larger than ``max_precondition_dim``,
and a vector unless ``precondition_1d``, is left unrotated: there SOAP is
Adam).

This follows the authors' code (nikhilvyas/SOAP), where it and the paper
differ: the first step only measures the preconditioner (it returns a zero
update), the first moment is kept in the params' basis and rotated each step,
and the weight decay multiplies the params after the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks
from adamx.adaptive import MU, NU
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain, masked
from adamx.moments import Hyper, as_float
from adamx.storage import Storage, check_moment_tree, load, store
from adamx.traits import Stage, Traits
from adamx.transforms import decay_stepped_params, learning_rate_stage

__all__ = ["ScaleBySoapState", "scale_by_soap", "soap"]


class ScaleBySoapState(NamedTuple):
    """State of :func:`scale_by_soap`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    mu: Any  # like params (or codes): first moment, in the params' basis
    # (in the eigenbasis where stored in 8 or 4 bits)
    nu: Any  # like params (or codes): second moment, in the eigenbasis
    # Per leaf, a tuple with one (d, d) entry per dimension of size d (None
    # where the dimension is not rotated), float32 unless precondition_dtype:
    stats: Any  # Shampoo's statistics, E[G G^T] along each dimension
    bases: Any  # their eigenbases, columns by decreasing eigenvalue


def _cast_like(new: tuple, old: tuple) -> tuple:
    return tuple(
        None if x is None else x.astype(o.dtype) for x, o in zip(new, old, strict=True)
    )


def _rotated_dims(
    shape: tuple[int, ...], max_dim: int, precondition_1d: bool
) -> tuple[bool, ...]:
    """Which dimensions of a leaf get a basis."""
    if len(shape) == 1 and not precondition_1d:
        return (False,)
    return tuple(0 < d <= max_dim for d in shape)


def _project(x: jax.Array, bases: tuple, back: bool) -> jax.Array:
    """Rotate ``x`` into the bases (``Q^T`` along each rotated dimension), or
    back (``Q``), dimension by dimension as the reference does."""
    for q in bases:
        if q is None:
            x = jnp.moveaxis(x, 0, -1)
        else:
            x = jnp.tensordot(x, q, axes=((0,), (1 if back else 0,)))
    return x


def _statistic(g: jax.Array, axis: int) -> jax.Array:
    """:math:`G G^\\top` along ``axis``: contract every other dimension."""
    others = [a for a in range(g.ndim) if a != axis]
    return jnp.tensordot(g, g, axes=(others, others))


def _eigenbasis(s: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric matrix, by decreasing eigenvalue."""
    eye = jnp.eye(s.shape[0], dtype=s.dtype)
    return jnp.flip(jnp.linalg.eigh(s + 1e-30 * eye)[1], axis=1)


def _refresh(s: jax.Array, q: jax.Array, nu: jax.Array, axis: int) -> tuple:
    """One power-iteration step and a QR decomposition, the columns (and the
    second moment's entries along ``axis``) sorted by estimated eigenvalue."""
    sq = s @ q
    estimated = jnp.sum(q * sq, axis=0)
    order = jnp.argsort(-estimated)
    nu = jnp.take(nu, order, axis=axis)
    q, _ = jnp.linalg.qr(sq[:, order])
    return q, nu


def scale_by_soap(
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.95,
    shampoo_beta: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    precondition_frequency: int = 10,
    max_precondition_dim: int = 10000,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    state_bits: int | None = None,
    precondition_dtype: Any | None = None,
) -> GradientTransformation:
    r"""SOAP's direction: Adam run in the eigenbasis of Shampoo's preconditioner.

    For each leaf, with :math:`Q_d` the basis of dimension :math:`d` and
    :math:`\mathcal{Q}(X) = X \times_1 Q_1^\top \cdots \times_k Q_k^\top`
    (:math:`\mathcal{Q}^{-1}` with :math:`Q_d`), from the second step
    (:math:`s = t - 1`):

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) \mathcal{Q}(g_t)^2

    .. math::
        u_t = \frac{\sqrt{1 - \beta_2^s}}{1 - \beta_1^s}\,
        \mathcal{Q}^{-1}\!\left(\frac{\mathcal{Q}(m_t)}{\sqrt{v_t} + \epsilon}\right)

    then the statistics :math:`S_d \leftarrow \beta_s S_d + (1 - \beta_s)
    G_{(d)} G_{(d)}^\top` (:math:`\beta_s` = ``shampoo_beta``), and every
    ``precondition_frequency`` steps :math:`Q_d \leftarrow \operatorname{qr}(S_d
    Q_d)`, its columns ordered by the estimated eigenvalues
    :math:`\operatorname{diag}(Q_d^\top S_d Q_d)` and :math:`v`'s entries with
    them. The first step sets :math:`S_d` from :math:`g_1` and :math:`Q_d` to
    its eigenvectors, and returns zeros. A dimension over
    ``max_precondition_dim``, or a vector without ``precondition_1d``, is not
    rotated.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        shampoo_beta: :math:`\beta_s \in [0, 1)`; ``None`` uses ``b2``.
        eps: :math:`\epsilon \ge 0`.
        precondition_frequency: steps between basis refreshes (>= 1).
        max_precondition_dim: the largest dimension rotated (>= 1).
        precondition_1d: rotate vectors too.
        normalize_grads: divide :math:`u_t` by its RMS (the authors' option).
        correct_bias: the bias-correction factor above (else 1).
        state_bits: how :math:`m` and :math:`v` are stored: 32, 16 (bfloat16),
            8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).
        precondition_dtype: the dtype of :math:`S_d` and :math:`Q_d`; ``None``:
            the params' dtype, at least float32. Computed in at least float32.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleBySoapState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_soap()
        >>> g = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
        >>> u, state = tx.update(g, tx.init(g))  # the first step measures
        >>> float(jnp.abs(u["w"]).max())
        0.0
        >>> u, state = tx.update(g, state)
        >>> u["w"].shape
        (2, 2)

    References:
        Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using
        Adam", https://arxiv.org/abs/2409.11321; code:
        https://github.com/nikhilvyas/SOAP

        Gupta et al., 2018, "Shampoo: Preconditioned Stochastic Tensor
        Optimization", https://arxiv.org/abs/1802.09568
    """
    checks.check_decay("b1", b1)
    checks.check_decay("b2", b2)
    if shampoo_beta is not None:
        checks.check_decay("shampoo_beta", shampoo_beta)
    checks.check_nonnegative("eps", eps)
    checks.check_positive_int("precondition_frequency", precondition_frequency)
    checks.check_positive_int("max_precondition_dim", max_precondition_dim)
    for name, flag in (
        ("precondition_1d", precondition_1d),
        ("normalize_grads", normalize_grads),
        ("correct_bias", correct_bias),
    ):
        checks.check_bool(name, flag)
    pdtype = checks.check_float_dtype("precondition_dtype", precondition_dtype)
    storage = Storage.parse(state_bits)
    sbeta = b2 if shampoo_beta is None else shampoo_beta
    # Block codes round each entry against its block's largest. Kept in the
    # params' basis (the authors' choice), the first moment's rounding error
    # would rotate into directions of near-zero variance and be divided by
    # their near-zero second moment; kept in the eigenbasis, an entry and its
    # second moment are small together, as in Adam. Linear, so the same step.
    rotated_momentum = storage.quantized

    def precond_dtype(p: Any) -> Any:
        return pdtype if pdtype is not None else wider_dtype(p.dtype, jnp.float32)

    def init_fn(params):
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            if jnp.issubdtype(p.dtype, jnp.complexfloating):
                raise TypeError(
                    "scale_by_soap is defined for real params; params"
                    f"{jax.tree_util.keystr(path)} is {p.dtype}"
                )

        def matrices(p):
            dims = _rotated_dims(tuple(p.shape), max_precondition_dim, precondition_1d)
            dt = precond_dtype(p)
            shape = tuple(p.shape)
            return tuple(
                jnp.zeros((n, n), dt) if rotated else None
                for n, rotated in zip(shape, dims, strict=True)
            )

        stats = jax.tree.map(matrices, params)
        return ScaleBySoapState(
            count=jnp.zeros([], jnp.int32),
            mu=storage.init(MU, params),
            nu=storage.init(NU, params),
            stats=stats,
            # Their own buffers: a donated state must not hold one twice.
            bases=jax.tree.map(jnp.zeros_like, stats),
        )

    def update_fn(updates, state, params=None):
        del params
        check_moment_tree(updates, state.mu, "state.mu")
        count = safe_increment(state.count)
        hyper = Hyper(b1=b1, b2=b2, sbeta=sbeta, eps=eps)
        g_leaves, treedef = jax.tree.flatten(updates)
        mus = treedef.flatten_up_to(state.mu)
        nus = treedef.flatten_up_to(state.nu)
        stats = treedef.flatten_up_to(state.stats)
        bases = treedef.flatten_up_to(state.bases)
        out = [
            _leaf(g, m, v, s, q, count, hyper)
            for g, m, v, s, q in zip(g_leaves, mus, nus, stats, bases, strict=True)
        ]
        new = [treedef.unflatten([o[i] for o in out]) for i in range(5)]
        return new[0], ScaleBySoapState(count, *new[1:])

    def _leaf(g, m_stored, v_stored, s_stored, q_stored, count, hyper):
        ct = wider_dtype(g.dtype, jnp.float32)
        h = hyper(ct)
        g32 = g.astype(ct)
        rotated = [s is not None for s in s_stored]

        def statistics(s_old):
            # S_d <- beta_s S_d + (1 - beta_s) G_(d) G_(d)^T, as torch's lerp.
            out = []
            for axis, s in enumerate(s_old):
                if s is None:
                    out.append(None)
                    continue
                s = s.astype(ct)
                out.append(s + (1 - h.sbeta) * (_statistic(g32, axis) - s))
            return tuple(out)

        def first(m, v, s, q):
            s = statistics(s)
            q = tuple(None if x is None else _eigenbasis(x) for x in s)
            return jnp.zeros_like(g32), m, v, s, q

        def later(m, v, s, q):
            gr = _project(g32, q, back=False)
            v = v + (1 - h.b2) * (gr * gr - v)
            if rotated_momentum:
                m = m + (1 - h.b1) * (gr - m)
                numerator = m
            else:
                m = m + (1 - h.b1) * (g32 - m)
                numerator = _project(m, q, back=False)
            direction = _project(numerator / (jnp.sqrt(v) + h.eps), q, back=True)
            if normalize_grads:
                rms = jnp.sqrt(jnp.mean(direction * direction))
                direction = direction / (1e-30 + rms)
            if correct_bias:
                steps = as_float(count - 1).astype(ct)
                direction = direction * (jnp.sqrt(1 - h.b2**steps) / (1 - h.b1**steps))
            s = statistics(s)

            def refresh(q, v, m):
                if rotated_momentum:
                    m = _project(m, q, back=True)
                q = list(q)
                for axis, x in enumerate(s):
                    if x is not None:
                        q[axis], v = _refresh(x, q[axis], v, axis)
                q = tuple(q)
                if rotated_momentum:
                    m = _project(m, q, back=False)
                return q, v, m

            due = (count - 1) % precondition_frequency == 0
            q, v, m = jax.lax.cond(due, refresh, lambda q, v, m: (q, v, m), q, v, m)
            return direction, m, v, s, q

        m = load(m_stored, ct)
        v = load(v_stored, ct)
        s = tuple(None if x is None else x.astype(ct) for x in s_stored)
        q = tuple(None if x is None else x.astype(ct) for x in q_stored)
        if not any(rotated):
            q = tuple(None for _ in rotated)
        u, m, v, s, q = jax.lax.cond(count == 1, first, later, m, v, s, q)
        return (
            u.astype(g.dtype),
            store(m, m_stored),
            store(v, v_stored),
            _cast_like(s, s_stored),
            _cast_like(q, q_stored),
        )

    stage = Stage(
        "scale_by_soap",
        {
            "b1": b1,
            "b2": b2,
            "shampoo_beta": sbeta,
            "eps": eps,
            "precondition_frequency": precondition_frequency,
            "max_precondition_dim": max_precondition_dim,
            "precondition_1d": precondition_1d,
            "normalize_grads": normalize_grads,
            "correct_bias": correct_bias,
            "storage": storage,
        },
    )
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def soap(
    learning_rate: ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.95,
    shampoo_beta: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.01,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    precondition_frequency: int = 10,
    max_precondition_dim: int = 10000,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    state_bits: int | None = None,
    precondition_dtype: Any | None = None,
) -> GradientTransformation:
    r"""SOAP: Adam in Shampoo's eigenbasis, with decoupled weight decay.

    .. math::
        \theta'_t = \theta_{t-1} - \alpha_t u_t, \qquad
        \theta_t = (1 - \alpha_t \lambda)\, \theta'_t

    with :math:`u_t` from :func:`scale_by_soap` (zero at the first step, which
    only measures the preconditioner; the decay starts at the second). The
    decay multiplies the stepped params, as the authors' code does, not
    :math:`\theta_{t-1}` as :func:`adamx.adamw`'s.

    The defaults are the authors': :math:`\beta_1 = \beta_2 = 0.95`, weight
    decay 0.01, a basis refresh every 10 steps. Bases cost :math:`d^2` per
    dimension :math:`d` of each leaf (two :math:`d \times d` matrices: the
    statistics and the basis); ``max_precondition_dim`` bounds them.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        shampoo_beta: the statistics' decay; ``None`` uses ``b2``.
        eps: :math:`\epsilon \ge 0`.
        weight_decay: :math:`\lambda \ge 0`.
        mask: which leaves decay (a tree of bools or a function of the params).
        precondition_frequency: steps between basis refreshes.
        max_precondition_dim: the largest dimension rotated.
        precondition_1d: rotate vectors too.
        normalize_grads: divide the direction by its RMS.
        correct_bias: Adam's bias correction.
        state_bits: how the Adam moments are stored: 32, 16, 8 or 4.
        precondition_dtype: dtype of the statistics and bases (e.g. bfloat16).

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.soap(3e-3)
        >>> params = {"w": jnp.eye(3)}
        >>> state = tx.init(params)
        >>> u, state = tx.update({"w": jnp.ones((3, 3))}, state, params)
        >>> float(jnp.abs(u["w"]).max())  # the first step measures
        0.0

    References:
        Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using
        Adam", https://arxiv.org/abs/2409.11321; code:
        https://github.com/nikhilvyas/SOAP
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    checks.check_nonnegative("weight_decay", weight_decay)
    decay = decay_stepped_params(learning_rate, weight_decay, skip_first=True)
    return chain(
        scale_by_soap(
            b1,
            b2,
            shampoo_beta,
            eps,
            precondition_frequency=precondition_frequency,
            max_precondition_dim=max_precondition_dim,
            precondition_1d=precondition_1d,
            normalize_grads=normalize_grads,
            correct_bias=correct_bias,
            state_bits=state_bits,
            precondition_dtype=precondition_dtype,
        ),
        learning_rate_stage(learning_rate),
        decay if mask is None else masked(decay, mask),
    )
