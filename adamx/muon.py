r"""Muon: momentum orthogonalized by Newton-Schulz, for the matrices of a model.

Muon keeps a momentum per matrix and steps along its orthogonal polar factor
:math:`UV^\top` (of :math:`M = U \Sigma V^\top`), approximated by a few
Newton-Schulz iterations, an odd matrix polynomial

.. math:: X \leftarrow a X + (b\, X X^\top + c\, (X X^\top)^2)\, X

that drives every singular value of the normalized :math:`X` towards one.
:func:`muon` runs it on the 2-D leaves (or those its dimension numbers name)
and AdamW on the rest, as ``optax.contrib.muon`` does, with the same arguments
and numbers.

What adamx adds: the momentum stored in 16, 8 or 4 bits (``state_bits``);
same-shape matrices (every layer of a transformer) orthogonalized as one
batched computation; the matmuls optionally in bfloat16 with float32
accumulation (``ns_dtype``); and under :func:`adamx.sharded` each device
orthogonalizes whole matrices of its own, without a collective inside the
iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.adaptive import MU
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    init_empty_state,
    wider_dtype,
)
from adamx.combine import MaskedNode, chain, partition
from adamx.moments import Hyper, LeafStep, abs_sq, as_float, moment_transform
from adamx.optimizers import adamw
from adamx.sharding import by_matrix, like_state, matrix_work, matrix_workers
from adamx.storage import Storage, real_dtype
from adamx.traits import Stage, Traits
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "NS_COEFFS",
    "MuonDimensionNumbers",
    "ScaleByMuonState",
    "muon",
    "orthogonalize_via_newton_schulz",
    "scale_by_muon",
    "scale_by_shape",
]

#: Newton-Schulz coefficient presets, by name: one ``(a, b, c)`` for every
#: step, or one per step.
#:
#: * ``"standard"``: Keller Jordan's quintic, tuned for the largest slope at
#:   zero (singular values land in about [0.7, 1.2]);
#:   https://kellerjordan.github.io/posts/muon/
#: * ``"dion"``: five per-step quintics of Ahn et al., 2025, "Dion:
#:   Distributed Orthonormalized Updates", https://arxiv.org/abs/2504.05295
#:   (Optax's ``"dion"`` preset);
#: * ``"polar_express"``: Amsel et al., 2025, "The Polar Express: Optimal
#:   Matrix Sign Methods and Their Application to the Muon Algorithm",
#:   https://arxiv.org/abs/2505.16932, five minimax-optimal steps (safety
#:   factor 2e-2, cushion 2) as the NanoGPT speedrun's ``train_gpt.py`` uses
#:   them, https://github.com/KellerJordan/modded-nanogpt
NS_COEFFS: dict[str, tuple] = {
    "standard": (3.4445, -4.7750, 2.0315),
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
    "polar_express": (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    ),
}

_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")

Preconditioning = Literal["frobenius", "spectral", "aol", "schatten"]


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf make the matrix Muon orthogonalizes.

    For :math:`y = x W`, the reduction axes (the input's, ``fan_in``) become the
    matrix's rows and the output axes (``fan_out``) its columns; every other
    axis is a batch axis, each of its entries a matrix of its own (stacked
    layers, a convolution's spatial taps). Axes may be negative.

    Attributes:
        reduction_axis: an axis or a sequence of axes.
        output_axis: an axis or a sequence of axes.

    Example:
        >>> import adamx
        >>> conv = adamx.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
        >>> conv.output_axis
        3
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


DimensionNumbersOrFn = MuonDimensionNumbers | Any | Callable[[Any], Any] | None
Triple = tuple[float, float, float]
NsCoeffs = Triple | tuple[Triple, ...] | str


# ------------------------------------------------------------------ arguments


def _coefficients(ns_coeffs: Any, ns_steps: Any) -> np.ndarray:
    """The coefficients as a float64 array, ``(3,)`` or ``(n, 3)``, checked."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_COEFFS:
            raise ValueError(
                f"ns_coeffs must be a preset name {sorted(NS_COEFFS)} or "
                f"coefficients, got {ns_coeffs!r}"
            )
        ns_coeffs = NS_COEFFS[ns_coeffs]
    checks.check_positive_int("ns_steps", ns_steps)
    try:
        c = np.asarray(ns_coeffs, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            "ns_coeffs must be three numbers (a, b, c) or one such triple per "
            f"step, got {ns_coeffs!r}"
        ) from e
    if c.ndim not in (1, 2) or c.shape[-1] != 3 or c.size == 0:
        raise ValueError(
            "ns_coeffs must be three numbers (a, b, c) or one such triple per "
            f"step, shape (3,) or (n, 3); got shape {c.shape}: {ns_coeffs!r}"
        )
    if not np.all(np.isfinite(c)):
        raise ValueError(f"ns_coeffs must be finite, got {ns_coeffs!r}")
    if c.ndim == 2 and c.shape[0] > ns_steps:
        raise ValueError(
            f"ns_coeffs gives {c.shape[0]} per-step triples, more than "
            f"ns_steps={ns_steps}: with per-step coefficients the iteration "
            "runs one step per triple, and ns_steps must be at least their "
            "number (as in Optax)"
        )
    return c


def _check_preconditioning(pre: Any) -> None:
    if pre not in _PRECONDITIONINGS:
        raise ValueError(
            f"preconditioning must be one of {list(_PRECONDITIONINGS)}, got {pre!r}"
        )


def _check_ns_dtype(ns_dtype: Any) -> Any:
    dt = checks.check_float_dtype("ns_dtype", ns_dtype)
    if dt is not None and jnp.dtype(ns_dtype).itemsize > 4:
        raise ValueError(
            "ns_dtype sets the matmuls' input precision below the computation's "
            f"(bfloat16, float16 or float32), got {ns_dtype!r}"
        )
    return dt


def _check_dims_spec(name: str, spec: Any) -> None:
    """A spec that is not a function: its dimension numbers' axes are ints."""
    if spec is None or callable(spec):
        return
    for d in jax.tree.leaves(spec, is_leaf=_is_dims):
        if not _is_dims(d):
            raise TypeError(
                f"{name} must hold MuonDimensionNumbers (or None), got {d!r}"
            )
        for axes in (d.reduction_axis, d.output_axis):
            items = axes if isinstance(axes, Sequence) else (axes,)
            if not items or not all(
                isinstance(a, int | np.integer) and not isinstance(a, bool)
                for a in items
            ):
                raise TypeError(
                    f"{name}: the axes of {d!r} must be ints or non-empty "
                    "sequences of ints"
                )


# ------------------------------------------------------- dimension numbers


def _is_dims(x: Any) -> bool:
    return isinstance(x, MuonDimensionNumbers)


class _Repeat(NamedTuple):
    """One spec entry covering ``n`` leaves of a subtree (not a pytree)."""

    dims: MuonDimensionNumbers | None
    n: int


def _dims_per_leaf(spec: DimensionNumbersOrFn, tree: Any) -> list[Any]:
    """The dimension numbers of each leaf of ``tree`` (None: not given).

    ``spec`` is one :class:`MuonDimensionNumbers` for every leaf, a tree of
    them (or ``None`` entries) with ``tree``'s structure or a prefix of it, or
    a function of ``tree`` returning either.
    """
    if callable(spec) and not _is_dims(spec):
        spec = spec(tree)
    n = len(jax.tree.leaves(tree))
    if spec is None or _is_dims(spec):
        return [spec] * n

    def is_entry(x: Any) -> bool:
        return x is None or _is_dims(x) or isinstance(x, MaskedNode)

    def expand(d: Any, sub: Any) -> _Repeat:
        return _Repeat(
            None if isinstance(d, MaskedNode) else d, len(jax.tree.leaves(sub))
        )

    try:
        repeats = jax.tree.map(expand, spec, tree, is_leaf=is_entry)
    except ValueError as e:
        raise ValueError(
            "the weight dimension numbers must be a tree like the params (or a "
            f"prefix of it).\n  params: {jax.tree.structure(tree)}\n  "
            f"dimension numbers: {jax.tree.structure(spec, is_leaf=is_entry)}"
        ) from e
    out: list[Any] = []
    for r in jax.tree.leaves(repeats, is_leaf=lambda x: isinstance(x, _Repeat)):
        out.extend([r.dims] * r.n)
    return out


class _Matrices(NamedTuple):
    """How one leaf becomes a stack of matrices ``(b, m, n)``, ``m <= n``."""

    perm: tuple[int, ...]  # batch axes, then reduction axes, then output axes
    batch: int
    fan_in: int
    fan_out: int
    unflat: tuple[int, ...]  # the permuted shape

    @property
    def transposed(self) -> bool:
        # The Gram matrix X X^T is the smaller one when rows <= columns.
        return self.fan_in > self.fan_out

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.fan_in, self.fan_out
        return (n, m) if self.transposed else (m, n)

    def stack(self, x: jax.Array) -> jax.Array:
        x = x.transpose(self.perm).reshape(self.batch, self.fan_in, self.fan_out)
        return jnp.swapaxes(x, -1, -2) if self.transposed else x

    def unstack(self, x: jax.Array) -> jax.Array:
        if self.transposed:
            x = jnp.swapaxes(x, -1, -2)
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return x.reshape(self.unflat).transpose(inverse)


def _axes(axes: Sequence[int] | int, ndim: int, what: str, where: str) -> tuple:
    items = tuple(axes) if isinstance(axes, Sequence) else (axes,)
    for a in items:
        if not -ndim <= a < ndim:
            raise ValueError(f"{where}: {what} {a} is out of range for rank {ndim}")
    return tuple(int(a) % ndim for a in items)


def _matrices(shape: tuple[int, ...], dims: Any, where: str) -> _Matrices:
    """The plan for a leaf of ``shape``; ``where`` names it in errors."""
    ndim = len(shape)
    if dims is None:
        if ndim != 2:
            raise ValueError(
                f"{where} has shape {shape}: Muon orthogonalizes matrices, and "
                "without dimension numbers a leaf must be 2-D. Give it "
                "MuonDimensionNumbers (weight_dimension_numbers), or leave it "
                "to another optimizer (muon sends leaves that are not 2-D to AdamW)"
            )
        dims = MuonDimensionNumbers()
    reduction = _axes(dims.reduction_axis, ndim, "reduction axis", f"{where} {shape}")
    output = _axes(dims.output_axis, ndim, "output axis", f"{where} {shape}")
    if set(reduction) & set(output) or len(set(reduction)) < len(reduction):
        raise ValueError(
            f"{where} {shape}: reduction axes {reduction} and output axes "
            f"{output} must be distinct"
        )
    batch_axes = tuple(a for a in range(ndim) if a not in reduction + output)
    perm = batch_axes + reduction + output
    return _Matrices(
        perm=perm,
        batch=math.prod(shape[a] for a in batch_axes),
        fan_in=math.prod(shape[a] for a in reduction),
        fan_out=math.prod(shape[a] for a in output),
        unflat=tuple(shape[a] for a in perm),
    )


def _plans(spec: DimensionNumbersOrFn, tree: Any) -> list[_Matrices | None]:
    """One plan per leaf of ``tree``; checks that the spec fits every leaf."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    dims = _dims_per_leaf(spec, tree)
    return [
        _matrices(tuple(x.shape), d, f"params{jax.tree_util.keystr(path)}")
        for (path, x), d in zip(flat, dims, strict=True)
    ]


# ------------------------------------------------------------ Newton-Schulz


def _mm(x: jax.Array, y: jax.Array, low: Any) -> jax.Array:
    """``x @ y``, its inputs rounded to ``low`` (if any), accumulated as ``x``."""
    if low is None:
        return jnp.matmul(x, y)
    return jnp.matmul(x.astype(low), y.astype(low), preferred_element_type=x.dtype)


def _gram(x: jax.Array, low: Any) -> jax.Array:
    """``x @ x^H`` for each matrix of a stack, accumulated as ``x``.

    One contraction over both operands' last axes rather than a product with a
    transpose: XLA's CPU backend runs the bfloat16 form of the latter at about
    half the speed.
    """
    y = x.conj()
    if low is None:
        return jnp.einsum("...ij,...kj->...ik", x, y)
    return jnp.einsum(
        "...ij,...kj->...ik",
        x.astype(low),
        y.astype(low),
        preferred_element_type=x.dtype,
    )


def _fro(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(abs_sq(x), axis=(-2, -1), keepdims=True))


def _newton_schulz(
    x: jax.Array, coeffs: jax.Array, steps: int, pre: str, eps: jax.Array, low: Any
) -> jax.Array:
    """Newton-Schulz on a stack ``(B, m, n)`` with ``m <= n``, each matrix apart.

    ``coeffs`` is ``(3,)`` (the same every step) or ``(k, 3)`` (``k`` steps).
    """
    real = real_dtype(x.dtype)
    if pre == "frobenius":
        x = x / (_fro(x) + eps).astype(x.dtype)
    elif pre == "spectral":
        norm = jnp.linalg.norm(x, ord=2, axis=(-2, -1), keepdims=True)
        x = x / (norm.astype(real) + eps).astype(x.dtype)
    per_step = coeffs.ndim == 2
    for i in range(coeffs.shape[0] if per_step else steps):
        a0, b0, c0 = (coeffs[i] if per_step else coeffs)[:3]
        a = _gram(x, low)
        if i == 0 and pre == "aol":
            # Almost-orthogonal-layer rescaling: each row by the inverse root of
            # its Gram row's absolute sum bounds the spectrum by one.
            rows = jnp.sum(jnp.abs(a), axis=-1)
            s = jax.lax.rsqrt(jnp.maximum(rows, eps))[..., None].astype(x.dtype)
            x, a = x * s, a * s * jnp.swapaxes(s, -1, -2)
        elif i == 0 and pre == "schatten":
            # The Schatten-4 norm, ||X X^H||_F^(1/2), bounds the spectral norm
            # more tightly than the Frobenius norm.
            s = jax.lax.rsqrt(jnp.maximum(_fro(a), eps)).astype(x.dtype)
            x, a = x * s, a * s * s
        b = b0 * a + c0 * _mm(a, a, low)
        x = a0 * x + _mm(b, x, low)
    return x


def _compute_dtype(dtype: Any) -> Any:
    return wider_dtype(dtype, jnp.float32)


def _orthogonalize(
    xs: list[jax.Array],
    plans: list[_Matrices],
    coeffs: jax.Array,
    steps: int,
    pre: str,
    eps: Any,
    low: Any,
) -> list[jax.Array]:
    """Orthogonalize every matrix of ``xs``, same-shape ones as one batch.

    Under :func:`adamx.sharded` the batches are padded to a multiple of the
    devices and split by whole matrices: each device iterates on its own.
    """

    def work(xs: list[jax.Array], coeffs: jax.Array, eps: jax.Array) -> list:
        return _orthogonalize_here(xs, plans, coeffs, steps, pre, eps, low)

    return matrix_work(work, xs, jnp.asarray(coeffs), jnp.asarray(eps))


def _orthogonalize_here(
    xs: list[jax.Array],
    plans: list[_Matrices],
    coeffs: jax.Array,
    steps: int,
    pre: str,
    eps: Any,
    low: Any,
) -> list[jax.Array]:
    groups: dict[tuple, list[int]] = {}
    out: list[Any] = [x if x.size == 0 else None for x in xs]
    for i, (x, plan) in enumerate(zip(xs, plans, strict=True)):
        if x.size == 0:
            continue
        key = (*plan.shape, jnp.dtype(_compute_dtype(x.dtype)))
        if low is not None and jnp.iscomplexobj(x):
            raise TypeError(
                f"ns_dtype={jnp.dtype(low).name} rounds the iteration's inputs to "
                "a real dtype; complex params need ns_dtype=None"
            )
        groups.setdefault(key, []).append(i)
    workers = matrix_workers()
    for (_, _, ct), members in groups.items():
        parts = [plans[i].stack(xs[i].astype(ct)) for i in members]
        sizes = [p.shape[0] for p in parts]
        total = sum(sizes)
        pad = -total % workers
        if pad:
            parts.append(jnp.zeros((pad, *parts[0].shape[1:]), ct))
        stack = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        result = _newton_schulz(
            by_matrix(stack),
            coeffs.astype(real_dtype(ct)),
            steps,
            pre,
            jnp.asarray(eps, real_dtype(ct)),
            low,
        )
        start = 0
        for i, size in zip(members, sizes, strict=True):
            piece = plans[i].unstack(result[start : start + size])
            out[i] = like_state(piece).astype(xs[i].dtype)
            start += size
    return out


def orthogonalize_via_newton_schulz(
    x: jax.Array,
    ns_coeffs: NsCoeffs,
    ns_steps: int = 5,
    preconditioning: Preconditioning = "frobenius",
    eps: jax.typing.ArrayLike = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
    *,
    ns_dtype: Any | None = None,
) -> jax.Array:
    r"""Approximate the orthogonal polar factor of a matrix by Newton-Schulz.

    With :math:`X_0 = G / (\|G\|_F + \epsilon)` (for ``"frobenius"``), each
    step applies the odd quintic

    .. math::
        X_{k+1} = a X_k + \left(b\, A_k + c\, A_k^2\right) X_k, \qquad
        A_k = X_k X_k^\top,

    which maps each singular value :math:`\sigma` of :math:`X_k` to
    :math:`a\sigma + b\sigma^3 + c\sigma^5`, leaving the singular vectors
    alone. Keller Jordan's coefficients (the default preset) push every
    :math:`\sigma \in (0, 1]` into about [0.7, 1.2] in five steps, rather than
    to exactly one: :math:`U S' V^\top` instead of :math:`U V^\top`, which
    trains as well and takes fewer steps. A wide matrix is iterated on as is,
    a tall one transposed, so :math:`A_k` is the smaller Gram matrix.

    Args:
        x: a matrix, or an array whose ``dimension_numbers`` say which axes
            make the matrix (the others are batch axes).
        ns_coeffs: ``(a, b, c)`` for every step, ``(n, 3)`` for one per step,
            or a preset name of :data:`NS_COEFFS`.
        ns_steps: the number of steps (with per-step coefficients, at least
            their number; one step runs per triple).
        preconditioning: how :math:`X_0` is scaled: ``"frobenius"`` (by the
            Frobenius norm), ``"spectral"`` (by the largest singular value,
            an SVD), ``"aol"`` (row scaling by the Gram matrix's absolute row
            sums, in the first step) or ``"schatten"`` (by the Schatten-4
            norm, in the first step).
        eps: added to the norm (``"frobenius"``, ``"spectral"``), or the floor
            of the rescalings (``"aol"``, ``"schatten"``).
        dimension_numbers: the matrix axes of ``x``; ``None`` for a 2-D ``x``.
        ns_dtype: the dtype the matmuls' inputs are rounded to (e.g. bfloat16);
            products accumulate in float32 (or ``x``'s wider dtype). ``None``
            computes in ``x``'s dtype, at least float32.

    Returns:
        The orthogonalized array, shaped and typed like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> q = adamx.orthogonalize_via_newton_schulz(
        ...     jnp.array([[3.0, 0.0], [0.0, 0.5]]), "dion")
        >>> jnp.round(jnp.diag(q), 1)
        Array([1., 1.], dtype=float32)

    References:
        Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural
        networks", https://kellerjordan.github.io/posts/muon/

        Boissin et al., 2025, "Turbo-Muon: Accelerating Orthogonality-Based
        Optimization with Pre-Conditioning", https://arxiv.org/abs/2512.04632

        Grishina et al., 2025, "Accelerating Newton-Schulz Iteration for
        Orthogonalization via Chebyshev-type Polynomials",
        https://arxiv.org/abs/2506.10935
    """
    coeffs = _coefficients(ns_coeffs, ns_steps)
    pre = preconditioning
    _check_preconditioning(pre)
    checks.check_nonnegative("eps", eps)
    low = _check_ns_dtype(ns_dtype)
    if dimension_numbers is not None and not _is_dims(dimension_numbers):
        raise TypeError(
            "dimension_numbers must be MuonDimensionNumbers or None, got "
            f"{dimension_numbers!r}"
        )
    x = jnp.asarray(x)
    plan = _matrices(tuple(x.shape), dimension_numbers, "x")
    return _orthogonalize([x], [plan], jnp.asarray(coeffs), ns_steps, pre, eps, low)[0]


# ------------------------------------------------------------- transforms


class ScaleByMuonState(NamedTuple):
    """State of :func:`scale_by_muon`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps taken so far
    mu: Any  # like params (or codes): momentum of the gradients
    ns_coeffs: jax.Array  # shape=(3,) or (n, 3), float: Newton-Schulz coefficients


class _MomentumState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    mu: Any  # like params (or codes)


def _momentum_corrections(hyper: Hyper, dtype: Any, count: jax.Array) -> Any:
    beta = hyper(dtype).beta
    t = as_float(count).astype(dtype)
    return SimpleNamespace(now=1 - beta**t, next=1 - beta ** (t + 1))


def scale_by_muon(
    ns_coeffs: NsCoeffs = NS_COEFFS["standard"],
    ns_steps: int = 5,
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    weight_dimension_numbers: DimensionNumbersOrFn = None,
    state_bits: int | None = None,
    ns_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Muon's direction: the momentum's orthogonal polar factor, per matrix.

    .. math::
        m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
        \hat m_t = \begin{cases}
            \beta \frac{m_t}{1 - \beta^{t+1}} + (1 - \beta) \frac{g_t}{1 - \beta^t}
                & \text{nesterov} \\
            \frac{m_t}{1 - \beta^t} & \text{otherwise}
        \end{cases}, \qquad
        u_t = \operatorname{NS}(\hat m_t)

    with :math:`\operatorname{NS}` the Newton-Schulz iteration of
    :func:`orthogonalize_via_newton_schulz`, and with ``adaptive`` also
    :math:`u_t \leftarrow \langle \hat m_t, u_t \rangle\, u_t` (the dual norm
    of the momentum, Bernstein & Newhouse). This is ``optax.contrib.scale_by_muon``'s
    definition (bias-corrected; Keller Jordan's and ``torch.optim.Muon``'s
    momentum is not, which changes only the Nesterov mix, as the iteration
    first normalizes).

    Same-shape matrices are orthogonalized as one batch. Every leaf must be a
    matrix, or have dimension numbers that make one; :func:`muon` routes the
    others to AdamW.

    Args:
        ns_coeffs: ``(a, b, c)``, ``(n, 3)`` per-step triples, or a preset name
            of :data:`NS_COEFFS`.
        ns_steps: Newton-Schulz steps (>= 1; with per-step coefficients, at
            least their number).
        beta: :math:`\beta \in [0, 1)`, the momentum's decay.
        eps: :math:`\epsilon \ge 0` of the iteration's normalization.
        mu_dtype: dtype of :math:`m`; ``None`` uses the params'.
        nesterov: use the Nesterov mix above.
        adaptive: scale by the dual norm, as above.
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or
            ``"schatten"`` (see :func:`orthogonalize_via_newton_schulz`).
        weight_dimension_numbers: :class:`MuonDimensionNumbers` for every leaf,
            a tree of them like the params (or a prefix), or a function of the
            params returning one; ``None`` means every leaf is 2-D ``(fan_in,
            fan_out)``. Checked against each leaf at ``init``.
        state_bits: how :math:`m` is stored: 32 (as ``mu_dtype`` says), 16
            (bfloat16), 8 or 4 (block-wise quantized, see :mod:`adamx.lowbit`).
        ns_dtype: the dtype of the iteration's matmul inputs (``jnp.bfloat16``
            as the reference Muon); products accumulate in float32. ``None``:
            the momentum's dtype, at least float32.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByMuonState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_muon()
        >>> g = {"w": jnp.array([[1.0, 2.0], [2.0, 1.0]])}
        >>> u, _ = tx.update(g, tx.init(g))
        >>> (jnp.linalg.svd(u["w"], compute_uv=False) > 0.6).all()
        Array(True, dtype=bool)

    References:
        Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural
        networks", https://kellerjordan.github.io/posts/muon/

        Bernstein & Newhouse, 2024, "Old Optimizer, New Norm: An Anthology",
        https://arxiv.org/abs/2409.20325

        Liu et al., 2025, "Muon is Scalable for LLM Training",
        https://arxiv.org/abs/2502.16982
    """
    coeffs = _coefficients(ns_coeffs, ns_steps)
    checks.check_decay("beta", beta)
    checks.check_nonnegative("eps", eps)
    checks.check_bool("nesterov", nesterov)
    checks.check_bool("adaptive", adaptive)
    _check_preconditioning(preconditioning)
    _check_dims_spec("weight_dimension_numbers", weight_dimension_numbers)
    low = _check_ns_dtype(ns_dtype)
    storage = Storage.parse(state_bits, mu_dtype=mu_dtype)

    def body(x: LeafStep, g: jax.Array, m: jax.Array) -> tuple:
        h, c = x.h, x.c
        m = x.stored.mu((1 - h.beta) * g + h.beta * m)
        if nesterov:
            return h.beta * (m / c.next) + (1 - h.beta) * (g / c.now), m
        return m / c.now, m

    momentum = moment_transform(
        _MomentumState,
        [MU],
        storage,
        body,
        name="scale_by_muon",
        hyperparams={"beta": beta},
        derived=_momentum_corrections,
    )

    def init_fn(params):
        _plans(weight_dimension_numbers, params)
        inner = momentum.init(params)
        return ScaleByMuonState(inner.count, inner.mu, jnp.asarray(coeffs))

    def update_fn(updates, state, params=None):
        del params
        plans = _plans(weight_dimension_numbers, updates)
        m_hat, inner = momentum.update(updates, _MomentumState(state.count, state.mu))
        leaves, treedef = jax.tree.flatten(m_hat)
        ortho = _orthogonalize(
            leaves, plans, state.ns_coeffs, ns_steps, preconditioning, eps, low
        )
        if adaptive:
            ortho = [
                jnp.sum(m.conj() * o) * o for m, o in zip(leaves, ortho, strict=True)
            ]
        new = state._replace(count=inner.count, mu=inner.mu)
        return treedef.unflatten(ortho), new

    stage = Stage(
        "scale_by_muon",
        {
            "ns_coeffs": ns_coeffs,
            "ns_steps": ns_steps,
            "beta": beta,
            "eps": eps,
            "nesterov": nesterov,
            "adaptive": adaptive,
            "preconditioning": preconditioning,
            "ns_dtype": low,
            "storage": storage,
        },
    )
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def scale_by_shape(
    weight_dimension_numbers: DimensionNumbersOrFn = None,
    consistent_rms: jax.typing.ArrayLike | None = None,
) -> GradientTransformation:
    r"""Scale each matrix's update by a factor of its shape, for width transfer.

    .. math::
        u \leftarrow \sqrt{\max(1, n_\text{out} / n_\text{in})}\; u
        \quad\text{or, with } \rho = \texttt{consistent\_rms}, \quad
        u \leftarrow \rho \sqrt{\max(n_\text{in}, n_\text{out})}\; u

    The first is Keller Jordan's (the same learning rate across widths); the
    second makes an orthogonalized update's RMS :math:`\rho` whatever the
    shape, as AdamW's is (Liu et al. recommend :math:`\rho = 0.2`).

    Args:
        weight_dimension_numbers: as in :func:`scale_by_muon`: which axes make
            :math:`n_\text{in}` and :math:`n_\text{out}`.
        consistent_rms: :math:`\rho`, or ``None`` for the first rule.

    Returns:
        A stateless :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_shape()
        >>> tx.update({"w": jnp.ones((2, 8))}, tx.init(None))[0]["w"][0, 0]
        Array(2., dtype=float32)

    References:
        Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural
        networks", https://kellerjordan.github.io/posts/muon/

        Liu et al., 2025, "Muon is Scalable for LLM Training",
        https://arxiv.org/abs/2502.16982
    """
    _check_dims_spec("weight_dimension_numbers", weight_dimension_numbers)
    if consistent_rms is not None:
        checks.check_nonnegative("consistent_rms", consistent_rms)

    def update_fn(updates, state, params=None):
        del params
        plans = _plans(weight_dimension_numbers, updates)
        leaves, treedef = jax.tree.flatten(updates)
        out = []
        for u, plan in zip(leaves, plans, strict=True):
            fan_in, fan_out = plan.fan_in, plan.fan_out
            if u.size == 0:
                factor = 1.0
            elif consistent_rms is None:
                factor = jnp.sqrt(jnp.maximum(1, fan_out / fan_in))
            else:
                factor = jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms
            out.append(u * jnp.asarray(factor).astype(u.dtype))
        return treedef.unflatten(out), state

    return GradientTransformation(init_empty_state, update_fn, Traits(False))


# ------------------------------------------------------------- optimizer


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: NsCoeffs = NS_COEFFS["standard"],
    ns_steps: int = 5,
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.999,
    adam_eps_root: jax.typing.ArrayLike = 0.0,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: DimensionNumbersOrFn = None,
    consistent_rms: jax.typing.ArrayLike | None = None,
    state_bits: int | None = None,
    ns_dtype: Any | None = None,
) -> GradientTransformation:
    r"""Muon for the matrices, AdamW for the rest.

    For each matrix :math:`W` (a 2-D leaf, or one that
    ``muon_weight_dimension_numbers`` names),

    .. math::
        W_t = W_{t-1} - \alpha_t \left(s\, \operatorname{NS}(\hat m_t)
        + \lambda W_{t-1}\right)

    with :math:`\hat m_t` and :math:`\operatorname{NS}` as in
    :func:`scale_by_muon` and :math:`s` the shape factor of
    :func:`scale_by_shape`; every other leaf (biases, norms' scales, and any
    leaf given ``None`` dimension numbers) follows :func:`adamx.adamw` with the
    ``adam_*`` arguments, Muon's ``eps``, ``mu_dtype`` and ``nesterov``. This is
    ``optax.contrib.muon``, with its arguments, defaults and numbers (checked in
    float64 to 1e-10), plus ``state_bits`` (both optimizers' moments) and
    ``ns_dtype``.

    Keep embeddings and the output head out of Muon (``None`` dimension
    numbers, or AdamW by routing): the reference Muon trains hidden matrices
    only. The docs' guide "Muon for the matrices" shows a Flax model routed.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        ns_coeffs: as in :func:`scale_by_muon`.
        ns_steps: as in :func:`scale_by_muon`.
        beta: Muon's momentum decay.
        eps: Muon's normalization :math:`\epsilon`, and AdamW's.
        weight_decay: :math:`\lambda \ge 0` for the Muon leaves, multiplied by
            the learning rate.
        weight_decay_mask: which Muon leaves decay (a tree of bools or a
            function of the params returning one).
        mu_dtype: dtype of both optimizers' first moments.
        nesterov: Nesterov momentum, for both.
        adaptive: as in :func:`scale_by_muon`.
        preconditioning: as in :func:`scale_by_muon`.
        adam_b1: AdamW's :math:`\beta_1`.
        adam_b2: AdamW's :math:`\beta_2`.
        adam_eps_root: AdamW's :math:`\bar\epsilon`.
        adam_weight_decay: AdamW's weight decay.
        adam_learning_rate: AdamW's learning rate; ``None`` uses
            ``learning_rate``.
        muon_weight_dimension_numbers: a tree like the params (or a prefix)
            of :class:`MuonDimensionNumbers`, ``None`` entries for AdamW's
            leaves, or a function of the params returning one; ``None``: Muon
            for every 2-D leaf.
        consistent_rms: as in :func:`scale_by_shape`.
        state_bits: how both optimizers' moments are stored: 32, 16, 8 or 4.
        ns_dtype: as in :func:`scale_by_muon`.

    Returns:
        A :class:`~adamx.GradientTransformation` (a :func:`~adamx.partition`
        into ``"muon"`` and ``"adam"``).

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> params = {"w": jnp.eye(4), "b": jnp.zeros(4)}
        >>> tx = adamx.muon(0.02)
        >>> grads = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
        >>> u, _ = tx.update(grads, tx.init(params), params)
        >>> u["b"]
        Array([-0.02, -0.02, -0.02, -0.02], dtype=float32)

    References:
        Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural
        networks", https://kellerjordan.github.io/posts/muon/

        Liu et al., 2025, "Muon is Scalable for LLM Training",
        https://arxiv.org/abs/2502.16982

        Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization",
        https://arxiv.org/abs/1711.05101
    """
    checks.check_scalar_or_schedule("learning_rate", learning_rate)
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    spec = muon_weight_dimension_numbers
    _check_dims_spec("muon_weight_dimension_numbers", spec)

    def per_leaf(params: Any) -> list[Any]:
        if spec is None:
            # The default: Muon for every matrix, AdamW for the rest.
            return [
                MuonDimensionNumbers() if jnp.ndim(x) == 2 else None
                for x in jax.tree.leaves(params)
            ]
        return _dims_per_leaf(spec, params)

    def labels(params: Any) -> Any:
        leaves, treedef = jax.tree.flatten(params)
        dims = per_leaf(params)
        return treedef.unflatten(["adam" if d is None else "muon" for d in dims])

    def muon_dims(updates: Any) -> Any:
        # Called on the Muon group only (the others are MaskedNode), so every
        # leaf here is one of Muon's.
        if spec is None:
            return MuonDimensionNumbers()
        return spec(updates) if callable(spec) and not _is_dims(spec) else spec

    return partition(
        {
            "muon": chain(
                scale_by_muon(
                    ns_coeffs,
                    ns_steps,
                    beta,
                    eps,
                    mu_dtype,
                    nesterov=nesterov,
                    adaptive=adaptive,
                    preconditioning=preconditioning,
                    weight_dimension_numbers=muon_dims,
                    state_bits=state_bits,
                    ns_dtype=ns_dtype,
                ),
                scale_by_shape(muon_dims, consistent_rms),
                add_decayed_weights(weight_decay, weight_decay_mask),
                learning_rate_stage(learning_rate),
            ),
            "adam": adamw(
                adam_learning_rate,
                adam_b1,
                adam_b2,
                eps,
                adam_eps_root,
                mu_dtype,
                adam_weight_decay,
                nesterov=nesterov,
                state_bits=state_bits,
            ),
        },
        labels,
    )
