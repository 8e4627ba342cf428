r"""The moment skeleton: an adaptive transformation is its state and its math.

Adam, AMSGrad, RMSProp, Lion, momentum: each keeps a few moments per param and
updates them element by element. :func:`moment_transform` builds such a
transformation from

* its state, a ``NamedTuple`` whose first field is ``count`` (when it counts
  steps) and whose other fields are the moments;
* the moments, as :class:`~adamx.storage.Moment` entries (name, sign, which
  dtype argument stores it), and a :class:`~adamx.storage.Storage` parsed
  from the factory's ``state_bits`` and dtype arguments;
* its body: the formula for one leaf, as the paper writes it.

The body receives the gradient and the old moments in the computation's dtype
(at least float32, so that ``eps`` and squared gradients stay representable)
and a :class:`LeafStep` holding the hyperparameters as arrays of that dtype;
it returns the update and the new moments. Everything else comes from the
skeleton: the state's structure and storage (32, 16, 8 or 4 bits), checks of
the trees, the step count, leaf-by-leaf application, hyperparameter arithmetic
that is bitwise the same for Python floats and for values injected into the
state by :func:`adamx.inject_hyperparams`, complex params (second moments of
:math:`|g|^2`, stored real), and the transformation's traits (element-wise for
32 and 16 bits, per leaf for block codes; its :class:`~adamx.traits.Stage`
for the in-place kernels). Adam's body is six lines::

    def body(x, g, m, v):
        m = x.stored.mu((1 - b1) * g + b1 * m)
        v = x.stored.nu((1 - b2) * abs_sq(g) + b2 * v)
        ...
        return m_hat / (jnp.sqrt(v_hat) + eps), m, v
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp

from adamx.base import (
    GradientTransformation,
    leafwise,
    safe_increment,
    wider_dtype,
)
from adamx.lowbit import is_quantized
from adamx.storage import (
    Moment,
    Storage,
    as_stored_fns,
    cast,
    check_moment_tree,
    moment_dtype_of,
    real_dtype,
    store_like,
    update_moments,
)
from adamx.traits import Stage, Traits

__all__ = [
    "Hyper",
    "LeafStep",
    "abs_sq",
    "as_float",
    "at_least_float32",
    "bias_correction",
    "debias",
    "moment_transform",
    "promoted",
]


class Hyper:
    """Hyperparameters as arrays of a computation's dtype, made once per update.

    Arithmetic on hyperparameters (``1 - b1``, ``b1 ** t``) then happens in that
    dtype whether a value is a Python float or an array held in the state by
    :func:`adamx.inject_hyperparams`, so both give bitwise the same updates.

    Example:
        >>> import jax.numpy as jnp
        >>> from adamx.moments import Hyper
        >>> Hyper(b1=0.9)(jnp.float32).b1
        Array(0.9, dtype=float32)
    """

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._by_dtype: dict[Any, SimpleNamespace] = {}
        self._derived: dict[Any, Any] = {}

    def derived(self, dtype: Any, fn: Callable[[Hyper, Any], Any]) -> Any:
        """``fn(self, dtype)``, computed once per dtype and update.

        Scalars that every leaf needs (``1 - b1``, the bias corrections) are
        then emitted once, not once per leaf: less to trace and compile.
        """
        key = jnp.dtype(dtype)
        if key not in self._derived:
            self._derived[key] = fn(self, key)
        return self._derived[key]

    def __call__(self, dtype: Any) -> SimpleNamespace:
        key = jnp.dtype(dtype)
        if key not in self._by_dtype:
            names = list(self._values)
            arrays = tuple(jnp.asarray(self._values[n]).astype(key) for n in names)
            self._by_dtype[key] = SimpleNamespace(
                **dict(zip(names, arrays, strict=True))
            )
        return self._by_dtype[key]


class LeafStep:
    """What a moment body sees of one leaf's step, besides its arrays.

    Attributes:
        h: the hyperparameters, as arrays of the leaf's (real) computation dtype.
        c: the scalars the transformation derives from them once per update
            (bias corrections and the like), or ``None``.
        count: the step count :math:`t \\ge 1` of this step, int32 (``None``
            for a transformation that keeps no count).
        hyper: the :class:`Hyper` itself, for values in another dtype.
        dtype: the computation dtype of signed moments (complex for complex
            params); second moments are computed in its real dtype.
        stored: per moment name, a function rounding a fresh value to the
            moment's storage (bfloat16 state: the update is computed from the
            moment as it will be stored).
        storage_dtype: per moment name, the dtype it is stored in.
    """

    def __init__(
        self,
        hyper: Hyper,
        dtype: Any,
        count: jax.Array,
        derived: Callable[[Hyper, Any, jax.Array], Any] | None,
        stored: dict[str, Callable[[jax.Array], jax.Array]],
        storage_dtype: dict[str, Any],
    ) -> None:
        real = real_dtype(dtype)
        self.hyper = hyper
        self.dtype = dtype
        self.count = count
        self.h = hyper(real)
        self.c: Any = None
        if derived is not None:
            self.c = hyper.derived(real, lambda hy, d: derived(hy, d, count))
        self.stored = SimpleNamespace(**stored)
        self.storage_dtype = SimpleNamespace(**storage_dtype)


def at_least_float32(g_dtype: Any, stored: Sequence[Any]) -> Any:
    """The Adam family's computation dtype: the gradient's, at least float32."""
    del stored
    return wider_dtype(g_dtype, jnp.float32)


def promoted(g_dtype: Any, stored: Sequence[Any]) -> Any:
    """The dtype that holds the gradient and the stored moments (momentum)."""
    return wider_dtype(g_dtype, *stored)


def as_float(count: jax.Array) -> jax.Array:
    """A step count in the default float dtype, for powers like :math:`\\beta^t`."""
    return jnp.asarray(count).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def debias(x: jax.Array, decay: jax.Array, count: jax.Array) -> jax.Array:
    """:math:`x / (1 - \\beta^t)`, in ``x``'s dtype."""
    return x / (1 - decay ** as_float(count).astype(decay.dtype))


def abs_sq(g: jax.Array) -> jax.Array:
    """:math:`|g|^2`: ``g**2`` for real ``g``, :math:`g \\bar g` (real) for complex."""
    if jnp.issubdtype(g.dtype, jnp.complexfloating):
        return (g.conj() * g).real
    return g**2


def bias_correction(moment: Any, decay: jax.typing.ArrayLike, count: jax.Array) -> Any:
    r"""Divide an exponential moving average by its bias, leaf by leaf.

    .. math:: \hat{m}_t = \frac{m_t}{1 - \beta^t}

    The moving average of :math:`t` values that starts at zero underestimates
    their mean by the factor :math:`1 - \beta^t`; this undoes it.

    Args:
        moment: a tree of moving averages :math:`m_t`.
        decay: the decay rate :math:`\beta` of the average.
        count: the number of values averaged so far, :math:`t \ge 1`.

    Returns:
        The corrected tree, in the dtypes of ``moment``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> adamx.bias_correction(jnp.array([0.1]), 0.9, jnp.array(1))
        Array([0.99999976], dtype=float32)

    References:
        Kingma & Ba, 2014, "Adam: A Method for Stochastic Optimization", §3,
        https://arxiv.org/abs/1412.6980
    """
    correction = 1 - decay ** as_float(count)
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


Body = Callable[..., tuple]


def moment_transform(
    state: type,
    moments: Sequence[Moment],
    storage: Storage,
    body: Body,
    *,
    name: str,
    hyperparams: Mapping[str, Any],
    stage_args: Mapping[str, Any] | None = None,
    derived: Callable[[Hyper, Any, jax.Array], Any] | None = None,
    compute_dtype: Callable[[Any, Sequence[Any]], Any] = at_least_float32,
    counted: bool = True,
    complex_params: bool = True,
) -> GradientTransformation:
    """Build an element-wise transformation that keeps per-param moments.

    Args:
        state: the state class: ``count`` first when ``counted``, then one
            field per moment, in the order of ``moments``.
        moments: the moments it keeps.
        storage: how they are stored (:meth:`Storage.parse` of the factory's
            arguments).
        body: ``body(x, g, *moments) -> (update, *new_moments)`` for one leaf,
            with ``x`` a :class:`LeafStep`; ``g`` and the moments come in the
            computation dtype, and the update goes back to the gradient's
            (the default float dtype for an integer or Python-number one).
        name: the factory's name, for its :class:`~adamx.traits.Stage`.
        hyperparams: the numbers the body reads as ``x.h.<name>``.
        stage_args: what else defines the computation (flags), declared with
            the hyperparameters and storage in its stage.
        derived: ``(hyper, dtype, count) -> namespace`` of scalars computed
            once per update and dtype, read as ``x.c``.
        compute_dtype: ``(gradient dtype, stored dtypes) -> dtype``.
        counted: whether the state has a ``count`` of steps.
        complex_params: whether the formula is defined for complex params;
            when not, ``init`` refuses them, naming the transformation.

    Returns:
        The :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> from typing import Any, NamedTuple
        >>> from adamx.moments import moment_transform
        >>> from adamx.storage import Moment, Storage
        >>> class EmaState(NamedTuple):
        ...     count: Any
        ...     m: Any
        >>> def body(x, g, m):
        ...     m = (1 - x.h.d) * g + x.h.d * m
        ...     return m, m
        >>> tx = moment_transform(EmaState, [Moment("m")], Storage.parse(), body,
        ...                       name="ema", hyperparams={"d": 0.5})
        >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]
        Array([1.], dtype=float32)
    """
    names = [m.name for m in moments]
    first = names[0]
    stage = Stage(name, {**hyperparams, **(stage_args or {}), "storage": storage})

    def init_fn(params):
        if not complex_params:
            _refuse_complex(name, params)
        values = {m.name: storage.init(m, params) for m in moments}
        if counted:
            return state(count=jnp.zeros([], jnp.int32), **values)
        return state(**values)

    def update_fn(updates, old, params=None):
        del params
        check_moment_tree(updates, getattr(old, first), f"state.{first}")
        count = safe_increment(old.count) if counted else None
        hyper = Hyper(**hyperparams)

        def leaf(g, *stored):
            # A Python number or an integer gradient is computed, and its
            # update returned, in the moments' float dtype.
            g = jnp.asarray(g)
            g = g.astype(moment_dtype_of(g))
            ct = compute_dtype(g.dtype, [m.dtype for m in stored])
            x = LeafStep(
                hyper,
                ct,
                count,
                derived,
                dict(zip(names, as_stored_fns(*stored), strict=True)),
                {n: jnp.dtype(m.dtype) for n, m in zip(names, stored, strict=True)},
            )
            dtypes = [ct if m.signed else real_dtype(ct) for m in moments]

            def run(g, *loaded):
                u, *new = body(x, g.astype(ct), *loaded)
                return (cast(u, g.dtype), *new)

            return update_moments(run, dtypes, g, *stored)

        out = leafwise(
            leaf, 1 + len(moments), updates, *(getattr(old, n) for n in names)
        )
        new = {
            n: jax.tree.map(store_like, t, getattr(old, n), is_leaf=is_quantized)
            for n, t in zip(names, out[1:], strict=True)
        }
        if counted:
            new["count"] = count
        return out[0], old._replace(**new)

    traits = Traits(elementwise=storage.elementwise, stages=(stage,))
    return GradientTransformation(init_fn, update_fn, traits)


def _refuse_complex(name: str, params: Any) -> None:
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.issubdtype(getattr(p, "dtype", None) or float, jnp.complexfloating):
            raise TypeError(
                f"{name} is defined for real params; params"
                f"{jax.tree_util.keystr(path)} is {p.dtype}. Split it into its "
                "real and imaginary parts, or use an optimizer that takes "
                "complex params (the Adam family does)."
            )
