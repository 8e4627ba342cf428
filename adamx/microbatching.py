r"""Microbatching: evaluate a function on a large batch one slice at a time.

A gradient of a batch too large for device memory is computed in
:math:`n` microbatches, one after another in a ``lax.fori_loop``, and their
results combined:

.. math::
    F(x) = \operatorname{finalize}\big(c_n\big), \qquad
    c_{i+1} = \operatorname{update}\big(c_i,\, f(x^{(i)}),\, i\big), \qquad
    c_0 = \operatorname{init}

where :math:`x^{(i)}` is the :math:`i`-th microbatch of the batch arguments.
How results combine is an :class:`Accumulator` (or an
:class:`AccumulationType`: ``SUM``, ``MEAN``, ``RUNNING_MEAN``, ``CONCAT``),
one for the whole output or one per subtree of it. :func:`microbatch` is the
general transformation; :func:`micro_vmap` is ``jax.vmap`` in microbatches;
:func:`micro_grad` gives per-example gradients, transformed (clipped, say)
and combined, as differentially private training needs. These are Optax's
``optax.microbatching`` functions, under the same names and arguments.

Microbatch :math:`i` of a batch of :math:`B` rows in microbatches of
:math:`m` holds rows :math:`i, i + n, i + 2n, \dots` (:math:`n = B / m`), as
in Optax: a sharding of the batch axis then lies along each microbatch.
``CONCAT`` puts the rows back in their order.

Where :class:`~adamx.MultiSteps` accumulates gradients over separate calls of
``update``, one per microbatch, these run all microbatches inside one call of
the loss's gradient.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamx import checks

__all__ = [
    "AccumulationType",
    "Accumulator",
    "micro_grad",
    "micro_vmap",
    "microbatch",
    "reshape_batch_axis",
]

Function = Callable[..., Any]


class IndividualOutputs(NamedTuple):
    """The per-example outputs of a :func:`micro_grad` function, beside its gradient."""

    values: Any  # shape=(B,): each example's loss
    metrics: Any  # metrics_fn of each example's gradient, stacked along axis 0
    aux: Any  # each example's auxiliary output of the loss (None without has_aux)


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How the results of the microbatches combine into one.

    Over the results :math:`y_0, \\dots, y_{n-1}` of the microbatches, the
    combined result is ``finalize(c)`` after ``c = init(spec)`` and
    ``c = update(c, y_i, i)`` for each :math:`i` in turn; ``spec`` is the
    shape and dtype of one result (a ``jax.ShapeDtypeStruct`` tree).
    :func:`micro_vmap` also uses ``aggregate``, which reduces a stack of
    per-example results along axis 0 in one go.

    Attributes:
        init: ``spec -> carry``.
        update: ``(carry, value, index) -> carry``.
        finalize: ``carry -> result``.
        aggregate: ``stacked values -> result``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx import microbatching
        >>> biggest = microbatching.Accumulator(
        ...     init=lambda spec: jnp.full(spec.shape, -jnp.inf, spec.dtype),
        ...     update=lambda c, y, i: jnp.maximum(c, y),
        ...     finalize=lambda c: c,
        ...     aggregate=lambda ys: jnp.max(ys, axis=0),
        ... )
        >>> f = microbatching.microbatch(jnp.max, 0, 2, biggest)
        >>> float(f(jnp.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])))
        9.0
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The usual ways to combine microbatch results, by name.

    ``SUM`` adds them; ``MEAN`` adds them and divides by the number of
    microbatches :math:`n`; ``RUNNING_MEAN`` keeps the mean of those run so
    far, :math:`c_{i+1} = c_i \\frac{i}{i+1} + \\frac{y_i}{i+1}` (the mean over
    ``num_real_microbatches`` when the loop stops early, where ``MEAN`` still
    divides by :math:`n`); ``CONCAT`` joins them along axis 0, in the rows'
    original order. ``MEAN`` and ``RUNNING_MEAN`` need floating-point results.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx import microbatching
        >>> f = microbatching.microbatch(
        ...     jnp.mean, 0, 2, microbatching.AccumulationType.MEAN
        ... )
        >>> float(f(jnp.arange(8.0)))
        3.5
    """

    MEAN = enum.auto()
    SUM = enum.auto()
    RUNNING_MEAN = enum.auto()
    CONCAT = enum.auto()


# ------------------------------------------------------------------ accumulators


def _leafwise(acc: Accumulator) -> Accumulator:
    """An accumulator of arrays applied to every leaf of a tree of results."""
    return Accumulator(
        init=lambda spec: jax.tree.map(acc.init, spec),
        update=lambda carry, value, i: jax.tree.map(
            lambda c, v: acc.update(c, v, i), carry, value
        ),
        finalize=lambda carry: jax.tree.map(acc.finalize, carry),
        aggregate=lambda values: jax.tree.map(acc.aggregate, values),
    )


def _require_floats(name: str, init: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def checked(spec: Any) -> Any:
        if not jnp.issubdtype(spec.dtype, jnp.floating):
            raise ValueError(
                f"AccumulationType.{name} needs floating-point results, got one of "
                f"dtype {spec.dtype}"
            )
        return init(spec)

    return checked


def _sum() -> Accumulator:
    return _leafwise(
        Accumulator(
            init=jnp.zeros_like,
            update=lambda c, y, i: c + y,
            finalize=lambda c: c,
            aggregate=functools.partial(jnp.sum, axis=0),
        )
    )


def _mean(n: int) -> Accumulator:
    return _leafwise(
        Accumulator(
            init=_require_floats("MEAN", jnp.zeros_like),
            update=lambda c, y, i: c + y,
            finalize=lambda c: c / n,
            aggregate=functools.partial(jnp.mean, axis=0),
        )
    )


def _running_mean() -> Accumulator:
    def update(c: jax.Array, y: jax.Array, i: Any) -> jax.Array:
        kept = (i / (i + 1)).astype(c.dtype)  # the weight of the i results so far
        return c * kept + y * (1 - kept)

    return _leafwise(
        Accumulator(
            init=_require_floats("RUNNING_MEAN", jnp.zeros_like),
            update=update,
            finalize=lambda c: c,
            aggregate=functools.partial(jnp.mean, axis=0),
        )
    )


def _concat(n: int) -> Accumulator:
    def init(spec: Any) -> jax.Array:
        return jnp.zeros((n, *spec.shape), spec.dtype)

    def finalize(c: jax.Array) -> jax.Array:
        # Row j of microbatch i is row i + n * j of the batch.
        return jnp.swapaxes(c, 0, 1).reshape(-1, *c.shape[2:])

    return _leafwise(
        Accumulator(
            init=init,
            update=lambda c, y, i: c.at[i].set(y),
            finalize=finalize,
            aggregate=lambda ys: ys,
        )
    )


def _check_accumulator(accumulator: Any) -> None:
    leaves = jax.tree.leaves(accumulator)
    bad = [a for a in leaves if not isinstance(a, (Accumulator, AccumulationType))]
    if bad or not leaves:
        raise TypeError(
            "accumulator must be an Accumulator, an AccumulationType, or a tree of "
            f"them (a prefix of the function's output), got {accumulator!r}"
        )


def _combined(accumulator: Any, n: int) -> Accumulator:
    """One accumulator for a whole output, from a tree of accumulators."""

    def resolve(acc: Accumulator | AccumulationType) -> Accumulator:
        if isinstance(acc, Accumulator):
            return acc
        return {
            AccumulationType.SUM: _sum,
            AccumulationType.MEAN: lambda: _mean(n),
            AccumulationType.RUNNING_MEAN: _running_mean,
            AccumulationType.CONCAT: lambda: _concat(n),
        }[acc]()

    accs = jax.tree.map(resolve, accumulator)

    def each(method: str) -> Callable[..., Any]:
        def run(*trees: Any) -> Any:
            return jax.tree.map(
                lambda acc, *parts: getattr(acc, method)(*parts), accs, *trees
            )

        return run

    def update(carry: Any, value: Any, index: Any) -> Any:
        return jax.tree.map(
            lambda acc, c, v: acc.update(c, v, index), accs, carry, value
        )

    return Accumulator(each("init"), update, each("finalize"), each("aggregate"))


# ------------------------------------------------------------------ batches


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    r"""Split each leaf's batch axis into (microbatches, rows per microbatch).

    A leaf whose axis ``axis`` has :math:`B = n m` rows gets, at that place,
    the two axes :math:`(n, m)`, :math:`m` = ``microbatch_size``, with

    .. math:: y[\dots, i, j, \dots] = x[\dots, i + n j, \dots]

    so microbatch :math:`i` holds rows :math:`i, i + n, \dots`: strided, as
    Optax's column-major reshape makes it, so that a sharding of the batch
    axis lies along each microbatch.

    Args:
        tree: a tree of arrays, each with a batch axis at ``axis``.
        microbatch_size: :math:`m`, the rows per microbatch; it must divide
            each leaf's batch axis.
        axis: the batch axis.

    Returns:
        The tree of reshaped arrays.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx import microbatching
        >>> microbatching.reshape_batch_axis(jnp.arange(6), 3)
        Array([[0, 2, 4],
               [1, 3, 5]], dtype=int32)
    """

    def split(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        ax = axis % x.ndim if x.ndim else axis
        rows = x.shape[ax]
        if rows % microbatch_size:
            raise ValueError(
                f"the batch axis {axis} has {rows} rows, which microbatch_size="
                f"{microbatch_size} does not divide"
            )
        n = rows // microbatch_size
        y = x.reshape(*x.shape[:ax], microbatch_size, n, *x.shape[ax + 1 :])
        return jnp.swapaxes(y, ax, ax + 1)

    return jax.tree.map(split, tree)


def _as_tuple(name: str, value: Any, kind: type) -> tuple:
    items = (value,) if isinstance(value, kind) else value
    if not isinstance(items, (tuple, list)) or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in items
    ):
        raise TypeError(
            f"{name} must be a {kind.__name__} or a sequence of them, got {value!r}"
        )
    return tuple(items)


def _check_num_real(num_real_microbatches: Any) -> None:
    if num_real_microbatches is None or isinstance(num_real_microbatches, jax.Array):
        return
    checks.check_positive_int(
        "num_real_microbatches", num_real_microbatches, allow_zero=True
    )


def microbatch(
    fun: Function,
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    r"""``fun`` on a batch, evaluated one microbatch at a time and combined.

    .. math::
        F(x) = \operatorname{finalize}(c_n), \qquad
        c_{i+1} = \operatorname{update}\big(c_i, f(x^{(i)}), i\big)

    over the :math:`n = B / m` microbatches :math:`x^{(i)}` of the batch
    arguments (:math:`B` rows, :math:`m` = ``microbatch_size``), in a
    ``lax.fori_loop``, so only one microbatch's intermediate values are in
    memory at a time. With ``SUM``, :math:`F(x) = \sum_i f(x^{(i)})`: the
    gradient of a sum of per-example losses, say. The other arguments are
    passed to every call as they are.

    Args:
        fun: the function, of a batch.
        argnums: the positions of the arguments with a batch axis.
        microbatch_size: :math:`m`, rows per microbatch; it must divide the
            batch. ``None`` returns ``fun`` itself.
        accumulator: how results combine: an :class:`Accumulator`, an
            :class:`AccumulationType`, or a tree of them that is a prefix of
            ``fun``'s output, one per subtree.
        argnames: the names of keyword arguments with a batch axis.
        in_axes: the batch axis of each argument, in the order ``argnums``
            then ``argnames``; one int for all.
        num_real_microbatches: stop after this many microbatches (an int or
            a traced one, for batches of varying size without recompiling);
            ``None`` runs all :math:`n`.

    Returns:
        A function with ``fun``'s arguments.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx import microbatching
        >>> fun = lambda x: (x + 1, jnp.sum(3 * x))
        >>> both = (microbatching.AccumulationType.CONCAT,
        ...         microbatching.AccumulationType.SUM)
        >>> microbatching.microbatch(fun, 0, 2, both)(jnp.array([1, 2, 3, 4]))
        (Array([2, 3, 4, 5], dtype=int32), Array(30, dtype=int32))

    References:
        Optax's ``optax.microbatching.microbatch``,
        https://optax.readthedocs.io/en/latest/api/microbatching.html
    """
    if not callable(fun):
        raise TypeError(f"fun must be a function, got {fun!r}")
    if microbatch_size is None:
        return fun
    checks.check_positive_int("microbatch_size", microbatch_size)
    argnums = _as_tuple("argnums", argnums, int)
    argnames = _as_tuple("argnames", argnames, str)
    n_batched = len(argnums) + len(argnames)
    if isinstance(in_axes, int) and not isinstance(in_axes, bool):
        in_axes = (in_axes,) * n_batched
    in_axes = _as_tuple("in_axes", in_axes, int)
    if len(in_axes) != n_batched:
        raise ValueError(
            f"in_axes must have one axis per batch argument ({n_batched}: "
            f"argnums={argnums}, argnames={argnames}), got {in_axes}"
        )
    _check_accumulator(accumulator)
    _check_num_real(num_real_microbatches)
    axes_of_args = in_axes[: len(argnums)]
    axes_of_kwargs = in_axes[len(argnums) :]

    def microbatched(*given_args: Any, **given_kwargs: Any) -> Any:
        args, kwargs = list(given_args), dict(given_kwargs)
        batch = [args[i] for i in argnums] + [kwargs[k] for k in argnames]
        sizes = {
            jnp.shape(x)[ax]
            for ax, tree in zip(in_axes, batch, strict=True)
            for x in jax.tree.leaves(tree)
        }
        if len(sizes) > 1:
            raise ValueError(
                "the batch arguments must have batch axes of one size, got "
                f"{sorted(sizes)}"
            )
        if not sizes:
            raise ValueError("the batch arguments hold no arrays")
        (batch_size,) = sizes
        if batch_size % microbatch_size:
            raise ValueError(
                f"the batch size {batch_size} must be divisible by microbatch_size="
                f"{microbatch_size}"
            )
        n = batch_size // microbatch_size
        for i, ax in zip(argnums, axes_of_args, strict=True):
            args[i] = reshape_batch_axis(args[i], microbatch_size, ax)
        for k, ax in zip(argnames, axes_of_kwargs, strict=True):
            kwargs[k] = reshape_batch_axis(kwargs[k], microbatch_size, ax)
        acc = _combined(accumulator, n)

        def on_microbatch(index: Any) -> Any:
            def take(tree: Any, ax: int) -> Any:
                return jax.tree.map(lambda x: jnp.take(x, index, axis=ax), tree)

            call_args, call_kwargs = list(args), dict(kwargs)
            for i, ax in zip(argnums, axes_of_args, strict=True):
                call_args[i] = take(args[i], ax)
            for k, ax in zip(argnames, axes_of_kwargs, strict=True):
                call_kwargs[k] = take(kwargs[k], ax)
            return fun(*call_args, **call_kwargs)

        def body(index: Any, carry: Any) -> Any:
            return acc.update(carry, on_microbatch(index), index)

        stop = n if num_real_microbatches is None else num_real_microbatches
        carry = acc.init(jax.eval_shape(on_microbatch, 0))
        return acc.finalize(jax.lax.fori_loop(0, stop, body, carry))

    return microbatched


def micro_vmap(
    fun: Function,
    in_axes: int | Sequence[int | None] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: Callable[..., Function] = jax.vmap,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.CONCAT,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    r"""``jax.vmap`` run in microbatches: ``fun`` mapped over a batch, in slices.

    .. math:: F(x) = \operatorname{acc}\big(f(x_0), \dots, f(x_{B-1})\big)

    Each microbatch of :math:`m` = ``microbatch_size`` examples is mapped by
    ``vmap_fn`` and reduced by the accumulator's ``aggregate``; microbatches
    are combined as in :func:`microbatch`. With ``CONCAT`` (the default)
    this is ``jax.vmap(fun, in_axes)``, in less memory; ``SUM`` or ``MEAN``
    reduce over the batch without keeping every example's output.

    Args:
        fun: the function of one example.
        in_axes: the batch axis of each positional argument (``None`` for
            one without); one int for all. Keyword arguments are mapped over
            axis 0.
        out_axes: must be 0, as in Optax.
        microbatch_size: examples per microbatch; ``None`` maps the whole
            batch at once.
        vmap_fn: a function with ``jax.vmap``'s signature, to map with.
        accumulator: what to do with the mapped outputs, as in
            :func:`microbatch`.
        num_real_microbatches: stop after this many microbatches.

    Returns:
        A function of batches.

    Raises:
        NotImplementedError: for ``out_axes`` other than 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx import microbatching
        >>> microbatching.micro_vmap(lambda x: x**2, microbatch_size=4)(jnp.arange(8))
        Array([ 0,  1,  4,  9, 16, 25, 36, 49], dtype=int32)

    References:
        Optax's ``optax.microbatching.micro_vmap``,
        https://optax.readthedocs.io/en/latest/api/microbatching.html
    """
    if not callable(fun):
        raise TypeError(f"fun must be a function, got {fun!r}")
    if out_axes != 0:
        raise NotImplementedError(f"out_axes must be 0, got {out_axes!r}")
    if not callable(vmap_fn):
        raise TypeError(f"vmap_fn must be a function like jax.vmap, got {vmap_fn!r}")
    _check_accumulator(accumulator)
    if isinstance(in_axes, int) and not isinstance(in_axes, bool):
        in_axes = (in_axes,)
    if not isinstance(in_axes, (tuple, list)) or not all(
        a is None or (isinstance(a, int) and not isinstance(a, bool)) for a in in_axes
    ):
        raise TypeError(
            f"in_axes must be an int or a sequence of ints and Nones, got {in_axes!r}"
        )
    in_axes = tuple(in_axes)

    # Keyword arguments travel through microbatch as one, "kwargs", sliced
    # along axis 0, the axis jax.vmap maps them over.
    def mapped_and_reduced(*args: Any, kwargs: dict[str, Any]) -> Any:
        out = vmap_fn(fun, in_axes, out_axes)(*args, **kwargs)
        size = jax.tree.leaves(out)[0].shape[0]
        return _combined(accumulator, size).aggregate(out)

    run = microbatch(
        mapped_and_reduced,
        argnums=tuple(i for i, ax in enumerate(in_axes) if ax is not None),
        argnames="kwargs",
        microbatch_size=microbatch_size,
        accumulator=accumulator,
        in_axes=(*(ax for ax in in_axes if ax is not None), 0),
        num_real_microbatches=num_real_microbatches,
    )

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return run(*args, kwargs=kwargs)

    return wrapped


def micro_grad(
    fun: Function,
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.SUM,
    transform_fn: Callable[[Any], Any] = lambda x: x,
    metrics_fn: Callable[[Any], Any] = lambda x: None,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    r"""Per-example gradients, transformed and combined over the batch.

    .. math::
        G = \operatorname{acc}_{b}\, T\big(\nabla_\theta f(\theta, x_b)\big),
        \qquad \text{aux}_b = \big(f(\theta, x_b),\,
        M(\nabla_\theta f(\theta, x_b)),\, \text{aux of } f\big)

    with :math:`T` = ``transform_fn`` (per-example clipping, or
    :math:`g \mapsto (g, g^2)` for moments), :math:`M` = ``metrics_fn`` and
    ``acc`` the accumulator (a sum by default), computed by
    :func:`micro_vmap` in microbatches. The function returns ``(G, aux)``:
    the combined gradient first, then the per-example values, metrics and
    ``fun``'s own auxiliary output as a named tuple ``(values, metrics,
    aux)``.

    Args:
        fun: the loss, ``fun(params, batch, ...)``; of a batch of one example
            when ``keep_batch_dim``, else of a single example.
        has_aux: whether ``fun`` returns ``(value, aux)``.
        argnums: the arguments to differentiate.
        batch_argnums: the arguments with a batch axis (axis 0).
        keep_batch_dim: give ``fun`` each example with a batch axis of 1.
        microbatch_size: examples per microbatch; ``None``: all at once.
        accumulator: how the transformed gradients combine.
        transform_fn: :math:`T`, applied to each example's gradient.
        metrics_fn: :math:`M`, a small summary of each example's gradient,
            returned per example.
        num_real_microbatches: stop after this many microbatches.

    Returns:
        A function with ``fun``'s arguments returning ``(G, aux)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx import microbatching
        >>> def loss(params, features, targets):
        ...     return 0.5 * jnp.mean((features @ params - targets) ** 2)
        >>> grad_fn = microbatching.micro_grad(
        ...     loss, batch_argnums=(1, 2),
        ...     accumulator=microbatching.AccumulationType.MEAN,
        ...     transform_fn=lambda g: (g, g**2))
        >>> (g, g2), aux = grad_fn(jnp.zeros(1), jnp.ones((4, 1)),
        ...                        jnp.array([0.0, 2.0, 4.0, 6.0]))
        >>> g, g2
        (Array([-3.], dtype=float32), Array([14.], dtype=float32))
        >>> aux.values
        Array([ 0.,  2.,  8., 18.], dtype=float32)

    References:
        Optax's ``optax.microbatching.micro_grad``,
        https://optax.readthedocs.io/en/latest/api/microbatching.html;
        Li et al., 2025, "Scaling up per-example gradient computation",
        https://arxiv.org/abs/2510.00236
    """
    if not callable(fun):
        raise TypeError(f"fun must be a function, got {fun!r}")
    checks.check_bool("has_aux", has_aux)
    checks.check_bool("keep_batch_dim", keep_batch_dim)
    batch_argnums = _as_tuple("batch_argnums", batch_argnums, int)
    if not batch_argnums:
        raise ValueError("batch_argnums must name at least one argument, got ()")
    for name, f in (("transform_fn", transform_fn), ("metrics_fn", metrics_fn)):
        if not callable(f):
            raise TypeError(f"{name} must be a function, got {f!r}")
    with_aux = fun if has_aux else (lambda *a, **k: (fun(*a, **k), None))
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def per_example(*args: Any, **kwargs: Any) -> tuple[Any, IndividualOutputs]:
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(value, metrics_fn(grad), aux)

    in_axes: list[int | None] = [None] * (max(batch_argnums) + 1)
    for i in batch_argnums:
        in_axes[i] = 0
    mapped = micro_vmap(
        per_example,
        in_axes=in_axes,
        accumulator=(accumulator, AccumulationType.CONCAT),
        microbatch_size=microbatch_size,
        num_real_microbatches=num_real_microbatches,
    )
    if not keep_batch_dim:
        return mapped

    def with_batch_axis(*args: Any, **kwargs: Any) -> Any:
        args_ = list(args)
        for i in batch_argnums:
            args_[i] = jax.tree.map(lambda x: jnp.expand_dims(x, 1), args[i])
        return mapped(*args_, **kwargs)

    return with_batch_axis
