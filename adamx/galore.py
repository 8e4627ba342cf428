r"""GaLore: an optimizer run on low-rank projections of the matrices' gradients.

Zhao et al. (2024) observe that the gradient of a weight matrix is close to
low rank. GaLore projects it onto its top :math:`r` singular vectors, taken
again from a fresh SVD every ``update_proj_gap`` steps, runs Adam (or any
gradient transformation that does not read the params) on the
:math:`r`-dimensional projection, and maps the result back: the moments of
an :math:`m \times n` matrix take :math:`r \min(m, n)` numbers each instead of
:math:`mn`, while every entry of the matrix still learns.

Names, arguments, defaults and float64 numbers are
``optax.contrib.galore``'s; ``proj_type`` adds the authors' other sides of
projection (their default ``"std"`` among them), and ``state_bits`` stores the
projected Adam moments in 16, 8 or 4 bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.adaptive import scale_by_adam
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain, check_transformation
from adamx.moments import Hyper, _refuse_complex
from adamx.storage import moment_dtype_of
from adamx.traits import Stage, Traits
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "galore",
    "scale_by_galore",
]

#: The sides of projection, by the authors' names (``proj_type``).
PROJ_TYPES = ("reverse_std", "std", "left", "right")


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a leaf make the matrix GaLore projects.

    The reduction axes (a layer's inputs) become the matrix's rows and the
    output axes its columns, so that an attention kernel of shape
    ``(embed, heads, head_dim)`` is the ``embed x (heads * head_dim)`` matrix
    with ``reduction_axis=0, output_axis=(1, 2)``. Every axis must be in one
    of the two; axes may be negative.

    Attributes:
        reduction_axis: an axis or a sequence of axes.
        output_axis: an axis or a sequence of axes.

    Example:
        >>> import adamx
        >>> adamx.GaLoreDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
        GaLoreDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


DimensionNumbersOrFn = GaLoreDimensionNumbers | Any | Callable[[Any], Any] | None


class GaLoreState(NamedTuple):
    """State of :func:`scale_by_galore`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    # The base optimizer's state, built for the projected gradients: (r, n) or
    # (m, r) per projected matrix, the param's own shape for the other leaves.
    base_optimizer_state: Any
    # Per leaf, the params' dtype (the default float for integer ones): (k, r)
    # with orthonormal columns, k the projected side (m or n) of the matrix;
    # (0, 0) for a leaf not projected.
    projector: Any


class _Plan(NamedTuple):
    """How one leaf is projected: its matrix, side and rank."""

    perm: tuple[int, ...]  # reduction axes, then output axes
    permuted: tuple[int, ...]  # the leaf's shape in that order
    rows: int  # m: the product of the reduction axes' sizes
    cols: int  # n: the product of the output axes' sizes
    left: bool  # project the columns (P^T G) rather than the rows (G Q)
    rank: int  # min(rank, m, n)

    def matrix(self, x: jax.Array) -> jax.Array:
        return jnp.transpose(x, self.perm).reshape(self.rows, self.cols)

    def restore(self, y: jax.Array) -> jax.Array:
        return y.reshape(self.permuted).transpose(tuple(np.argsort(self.perm)))

    @property
    def projector_shape(self) -> tuple[int, int]:
        return (self.rows if self.left else self.cols, self.rank)

    @property
    def projected_shape(self) -> tuple[int, int]:
        return (self.rank, self.cols) if self.left else (self.rows, self.rank)


# ------------------------------------------------------------------ arguments


def _check_axes(name: str, axes: Any) -> None:
    ok_int = lambda a: isinstance(a, (int, np.integer)) and not isinstance(a, bool)  # noqa: E731
    if ok_int(axes):
        return
    if isinstance(axes, (tuple, list)) and axes and all(ok_int(a) for a in axes):
        return
    raise TypeError(
        f"{name} must be an axis or a non-empty sequence of axes, got {axes!r}"
    )


def _check_dims(name: str, dims: Any) -> None:
    if dims is None or callable(dims):
        return
    if isinstance(dims, GaLoreDimensionNumbers):
        _check_axes(f"{name}.reduction_axis", dims.reduction_axis)
        _check_axes(f"{name}.output_axis", dims.output_axis)
        return
    is_dims = lambda x: x is None or isinstance(x, GaLoreDimensionNumbers)  # noqa: E731
    for leaf in jax.tree.leaves(dims, is_leaf=is_dims):
        if leaf is None:
            continue
        if not isinstance(leaf, GaLoreDimensionNumbers):
            raise TypeError(
                f"{name} must be a GaLoreDimensionNumbers, a tree of them (None "
                "for a leaf not projected) or a function of the params returning "
                f"one, got {leaf!r} in it"
            )
        _check_dims(name, leaf)


def _normalized(axes: Sequence[int] | int, ndim: int, where: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{where}: axis {a} is out of range for {ndim} dimensions")
    return tuple(int(a) % ndim for a in axes)


def _plan(
    path: str,
    shape: tuple[int, ...],
    dims: GaLoreDimensionNumbers,
    rank: int,
    side: str,
) -> _Plan:
    """The projection of one leaf, its dimension numbers checked against it."""
    where = f"weight_dimension_numbers {dims} for params{path} of shape {shape}"
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"{where}: GaLore projects matrices, of 2 or more axes")
    red = _normalized(dims.reduction_axis, ndim, where)
    out = _normalized(dims.output_axis, ndim, where)
    perm = red + out
    if len(set(perm)) != len(perm) or len(perm) != ndim:
        raise ValueError(
            f"{where}: every axis must be a reduction or an output axis, exactly once"
        )
    rows = math.prod(shape[a] for a in red)
    cols = math.prod(shape[a] for a in out)
    left = {
        "reverse_std": rows >= cols,
        "std": rows < cols,
        "left": True,
        "right": False,
    }[side]
    permuted = tuple(shape[a] for a in perm)
    return _Plan(perm, permuted, rows, cols, left, min(rank, rows, cols))


def _plans(spec: DimensionNumbersOrFn, tree: Any, rank: int, side: str) -> list:
    """Per leaf of ``tree`` (in ``jax.tree.leaves`` order): its plan, or None."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    shapes = [tuple(np.shape(x)) for _, x in with_path]
    if spec is None:
        dims: list = [GaLoreDimensionNumbers() if len(s) == 2 else None for s in shapes]
    elif isinstance(spec, GaLoreDimensionNumbers):
        dims = [spec if len(s) >= 2 else None for s in shapes]
    else:
        given = spec(tree) if callable(spec) else spec
        if given is None:
            dims = [None] * len(shapes)
        else:
            try:
                dims = treedef.flatten_up_to(given)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    "weight_dimension_numbers must have the params' structure, "
                    f"with a GaLoreDimensionNumbers or None per leaf; got {given!r} "
                    f"for params of structure {treedef}"
                ) from e
            _check_dims("weight_dimension_numbers", given)
    return [
        None if d is None else _plan(p, s, d, rank, side)
        for p, s, d in zip(paths, shapes, dims, strict=True)
    ]


# ------------------------------------------------------------------ transform


def _fresh_projector(m: jax.Array, plan: _Plan, dtype: Any) -> jax.Array:
    """The top singular vectors of ``m`` on the plan's side, from a float32 SVD."""
    u, _, vh = jnp.linalg.svd(m.astype(jnp.float32), full_matrices=False)
    p = u[:, : plan.rank] if plan.left else vh[: plan.rank].T
    return p.astype(dtype)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: jax.typing.ArrayLike = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_dimension_numbers: DimensionNumbersOrFn = None,
    *,
    proj_type: str = "reverse_std",
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""Run an optimizer on low-rank projections of each matrix's gradient.

    For a matrix gradient :math:`G_t \in \mathbb{R}^{m \times n}` and
    :math:`r' = \min(r, m, n)`, projected on the left (:math:`P_t` of shape
    :math:`m \times r'`) or on the right (:math:`Q_t` of shape :math:`n \times
    r'`):

    .. math::
        \begin{aligned}
        U \Sigma V^\top &= \operatorname{svd}(G_t), \qquad
        P_t = U_{:, :r'}, \quad Q_t = V_{:, :r'}
        \qquad \text{when } t \equiv 0 \pmod T \\
        R_t &= P_t^\top G_t \quad \text{or} \quad R_t = G_t Q_t \\
        N_t, s_t &= \rho(R_t, s_{t-1}) \\
        u_t &= \alpha\, P_t N_t \quad \text{or} \quad u_t = \alpha\, N_t Q_t^\top
        \end{aligned}

    counting steps from :math:`t = 0`, with :math:`P_t = P_{t-1}` between
    refreshes and :math:`\rho` the base optimizer (Adam's
    :func:`~adamx.scale_by_adam` by default), whose state :math:`s` has the
    projection's shape and is carried across refreshes, as in the authors'
    code. Leaves that are not projected (by default every leaf that is not
    2-D) get :math:`u_t = \rho(g_t)`.

    Which side is projected is ``proj_type``, by the authors' names:
    ``"reverse_std"``, Optax's rule (the default here, so that the numbers are
    ``optax.contrib.scale_by_galore``'s), projects the longer side, so the
    moments take :math:`r' \min(m, n)` numbers and the projector
    :math:`r' \max(m, n)`; the authors' own default ``"std"`` projects the
    shorter side, the layout of the paper's memory count (a projector of
    :math:`r' \min(m, n)`, moments of :math:`r' \max(m, n)`), where quantizing
    the moments saves the most; ``"left"`` and ``"right"`` fix the side. The
    authors' two-sided ``"full"`` and their Tucker projection of tensors are
    not offered: :class:`GaLoreDimensionNumbers` reshapes a tensor into a
    matrix instead, as in Optax. The SVD runs in float32 whatever the params'
    dtype, and the projector is kept in the params' dtype, as in the authors'
    code and Optax; the projections are computed in at least float32.
    Complex params are refused (Optax's SVD would drop their imaginary part).

    Args:
        rank: :math:`r \ge 1`, the rank of the projection (a matrix with a
            shorter side keeps all of it).
        update_proj_gap: :math:`T \ge 1`, the steps between two SVDs.
        scale: :math:`\alpha`, multiplies the projected-back updates.
        base_optimizer: :math:`\rho`, a transformation that does not read the
            params (its ``update`` gets none), run on the projections;
            ``None`` for :func:`~adamx.scale_by_adam` with its defaults.
        weight_dimension_numbers: ``None`` projects the 2-D leaves; a
            :class:`GaLoreDimensionNumbers` projects every leaf of 2 or more
            axes as it says; a tree of them like the params (``None`` for a
            leaf not projected), or a function of the params returning one,
            chooses leaf by leaf.
        proj_type: the side projected, as above: ``"reverse_std"``,
            ``"std"``, ``"left"`` or ``"right"``.
        state_bits: how the default base optimizer's moments are stored: 32,
            16 (bfloat16), 8 or 4 (block-wise quantized, see
            :mod:`adamx.lowbit`; leaves of fewer than 4096 numbers stay
            float32). With a ``base_optimizer`` of your own, give it its own.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`GaLoreState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_galore(rank=1)
        >>> g = {"w": jnp.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
        >>> u, state = tx.update(g, tx.init(g))
        >>> print(state.projector["w"].shape, jnp.abs(u["w"]).round(3))
        (3, 1) [[1. 0. 0.]
         [0. 0. 0.]]

    References:
        Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient
        Low-Rank Projection", https://arxiv.org/abs/2403.03507; reference code
        https://github.com/jiaweizzhao/GaLore
    """
    checks.check_positive_int("rank", rank)
    checks.check_positive_int("update_proj_gap", update_proj_gap)
    checks.check_finite("scale", scale)
    _check_dims("weight_dimension_numbers", weight_dimension_numbers)
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"proj_type must be one of {PROJ_TYPES}, got {proj_type!r}")
    if base_optimizer is None:
        base = scale_by_adam(state_bits=state_bits)
    else:
        check_transformation("base_optimizer", base_optimizer)
        if state_bits is not None:
            raise ValueError(
                "state_bits sets the storage of the default base optimizer; with a "
                f"base_optimizer of your own, pass it to that one, got {state_bits!r}"
            )
        base = base_optimizer

    def init_fn(params: Any) -> GaLoreState:
        _refuse_complex("scale_by_galore", params)
        leaves, treedef = jax.tree.flatten(params)
        count = jnp.zeros([], jnp.int32)
        if not leaves:
            return GaLoreState(count, base.init(params), params)
        plans = _plans(weight_dimension_numbers, params, rank, proj_type)
        projectors, proxies = [], []
        for p, plan in zip(leaves, plans, strict=True):
            # An integer param's projector would round to integers: floats.
            dtype = moment_dtype_of(p)
            if plan is None:
                projectors.append(jnp.zeros((0, 0), dtype))
                proxies.append(jnp.zeros_like(p, dtype=dtype))
            else:
                projectors.append(jnp.zeros(plan.projector_shape, dtype))
                proxies.append(jnp.zeros(plan.projected_shape, dtype))
        return GaLoreState(
            count,
            base.init(treedef.unflatten(proxies)),
            treedef.unflatten(projectors),
        )

    def update_fn(
        updates: Any, state: GaLoreState, params: Any = None
    ) -> tuple[Any, GaLoreState]:
        del params
        leaves, treedef = jax.tree.flatten(updates)
        plans = _plans(weight_dimension_numbers, updates, rank, proj_type)
        old = treedef.flatten_up_to(state.projector)
        refresh = state.count % update_proj_gap == 0
        hyper = Hyper(scale=scale)

        projectors, projected = [], []
        for g, p, plan in zip(leaves, old, plans, strict=True):
            if plan is None:
                projectors.append(p)
                projected.append(g)
                continue
            ct = wider_dtype(g.dtype, jnp.float32)
            m = plan.matrix(g)
            p = jax.lax.cond(
                refresh,
                lambda m=m, plan=plan, dtype=p.dtype: _fresh_projector(m, plan, dtype),
                lambda p=p: p,
            )
            pc, mc = p.astype(ct), m.astype(ct)
            r = _matmul(pc.T, mc) if plan.left else _matmul(mc, pc)
            projectors.append(p)
            projected.append(r.astype(g.dtype))

        steps, base_state = base.update(
            treedef.unflatten(projected), state.base_optimizer_state, None
        )
        out = []
        for g, n, p, plan in zip(
            leaves, treedef.flatten_up_to(steps), projectors, plans, strict=True
        ):
            if plan is None:
                out.append(n)
                continue
            ct = wider_dtype(g.dtype, jnp.float32)
            pc, nc = p.astype(ct), n.astype(ct)
            full = _matmul(pc, nc) if plan.left else _matmul(nc, pc.T)
            out.append((hyper(ct).scale * plan.restore(full)).astype(g.dtype))

        new_state = GaLoreState(
            safe_increment(state.count), base_state, treedef.unflatten(projectors)
        )
        return treedef.unflatten(out), new_state

    stage = Stage(
        "scale_by_galore",
        {
            "rank": rank,
            "update_proj_gap": update_proj_gap,
            "scale": scale,
            "base_optimizer": base_optimizer,
            "weight_dimension_numbers": weight_dimension_numbers,
            "proj_type": proj_type,
            "state_bits": state_bits,
        },
    )
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: jax.typing.ArrayLike = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    weight_dimension_numbers: DimensionNumbersOrFn = None,
    *,
    proj_type: str = "reverse_std",
    state_bits: int | None = None,
) -> GradientTransformation:
    r"""GaLore (Zhao et al., 2024): Adam on low-rank projections of the gradients.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(u_t + \lambda\, \theta_{t-1}\right)

    with :math:`u_t` of :func:`scale_by_galore`: for each matrix, Adam's step
    computed on the projection of its gradient onto :math:`r` singular
    vectors refreshed every ``update_proj_gap`` steps, mapped back and scaled
    by :math:`\alpha`. Names, arguments, defaults and numbers are
    ``optax.contrib.galore``'s. The decoupled weight decay acts on the whole
    params, before the step, as in :func:`adamx.adamw` and Optax; the
    authors' AdamW decays the stepped params,
    :math:`(\theta_{t-1} - \eta_t u_t)(1 - \eta_t \lambda)`, which differs by
    :math:`\eta_t^2 \lambda u_t`. A base optimizer that reads the params
    (``adamw``, ``lamb``) cannot run on the projections: use ``weight_decay``.

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        rank: :math:`r \ge 1`, the rank of the projection.
        update_proj_gap: steps between two SVDs of the gradient.
        scale: :math:`\alpha`, multiplies the projected-back updates.
        base_optimizer: the transformation run on the projections (it must
            not read the params); ``None`` for :func:`~adamx.scale_by_adam`.
            If it applies a learning rate, pass ``learning_rate=1.0``.
        weight_decay: :math:`\lambda \ge 0`, decoupled weight decay.
        mask: a tree of bools like the params, or a function of the params
            returning one, selecting the leaves to decay.
        weight_dimension_numbers: which leaves are projected, and as which
            matrix (see :func:`scale_by_galore`).
        proj_type: the side projected: ``"reverse_std"`` (Optax's rule),
            ``"std"`` (the authors' default), ``"left"`` or ``"right"``.
        state_bits: how the default base optimizer's moments are stored: 32,
            16 (bfloat16), 8 or 4 (block-wise quantized).

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def f(p):
        ...     return jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
        >>> tx = adamx.galore(learning_rate=0.01, rank=16)
        >>> params = {"w": jnp.ones((100, 100)), "b": jnp.ones((100,))}
        >>> @jax.jit
        ... def step(params, state):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     return adamx.apply_updates(params, updates), state
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     params, state = step(params, state)
        >>> print(f"{float(f(params)):.1f}")
        9990.6

    References:
        Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient
        Low-Rank Projection", https://arxiv.org/abs/2403.03507; Optax's
        https://optax.readthedocs.io/en/latest/api/contrib.html
    """
    return chain(
        scale_by_galore(
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            base_optimizer=base_optimizer,
            weight_dimension_numbers=weight_dimension_numbers,
            proj_type=proj_type,
            state_bits=state_bits,
        ),
        add_decayed_weights(weight_decay, mask),
        learning_rate_stage(learning_rate),
    )
