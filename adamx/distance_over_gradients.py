r"""Distance over gradients: DoG, DoWG and layer-wise DoG.

These parameter-free methods measure, as they train, the scale a learning
rate would have to be tuned to: **DoG** and **DoWG** (Ivgi et al., 2023;
Khaled et al., 2023) step by the largest distance travelled from the start
over the root of a sum of squared gradient norms;
:func:`scale_by_distance_over_gradients` is DoG per leaf (the paper's
layer-wise L-DoG). :mod:`adamx.parameter_free` holds the methods that bet or
adapt instead (COCOB, D-Adaptation, Mechanic).

Names, arguments, defaults and state classes are Optax's (``optax`` and
``optax.contrib``). Each docstring says which reference code it follows where
the authors' and Optax's differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    identity,
    require_params,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import Hyper, _refuse_complex, abs_sq
from adamx.storage import check_moment_tree, real_dtype
from adamx.traits import Stage, Traits
from adamx.transforms import add_decayed_weights, learning_rate_stage

__all__ = [
    "DoGState",
    "DoWGState",
    "ScaleByDistanceOverGradientsState",
    "dog",
    "dowg",
    "scale_by_distance_over_gradients",
    "scale_by_dog",
    "scale_by_dowg",
]

_INIT_STEP_TAGS = ("distance", "learning_rate", "heuristic")


# ------------------------------------------------------------------ helpers


def _scalar_dtype(params: Any) -> Any:
    """The dtype of a method's scalars: the params' widest real dtype, at least
    float32 (Optax takes the narrowest, so bfloat16 params get bfloat16 sums)."""
    dtypes = [p.dtype for p in jax.tree.leaves(params)]
    return real_dtype(wider_dtype(*dtypes, jnp.float32))


def _sq_norm(tree: Any, dtype: Any) -> jax.Array:
    r""":math:`\sum_i |x_i|^2` over every leaf, each leaf summed in at least
    ``dtype`` and the leaves added in tree order, as Optax adds them."""
    total = jnp.zeros([], dtype)
    for x in jax.tree.leaves(tree):
        total = total + jnp.sum(abs_sq(x.astype(wider_dtype(x.dtype, dtype))))
    return total


def _sq_dist(a: Any, b: Any, dtype: Any) -> jax.Array:
    r""":math:`\|a - b\|^2` over the whole tree, in at least ``dtype``."""

    def diff(x: jax.Array, y: jax.Array) -> jax.Array:
        ct = wider_dtype(x.dtype, y.dtype, dtype)
        return x.astype(ct) - y.astype(ct)

    return _sq_norm(jax.tree.map(diff, a, b), dtype)


def _scaled(rate: jax.Array, updates: Any) -> Any:
    """Every update times the scalar ``rate``, in each update's dtype."""

    def leaf(g: jax.Array) -> jax.Array:
        ct = wider_dtype(g.dtype, rate.dtype)
        return (rate.astype(ct) * g.astype(ct)).astype(g.dtype)

    return jax.tree.map(leaf, updates)


def _copy(tree: Any) -> Any:
    # A buffer of its own: a donated state must not hold the params twice.
    return jax.tree.map(jnp.copy, tree)


# ---------------------------------------------------------------- DoG


class DoGState(NamedTuple):
    """State of :func:`scale_by_dog` (Optax's ``DoGState``, its fields)."""

    is_init_step: jax.Array  # shape=(), bool: no update taken yet
    init_params: Any  # x_0, like params: the params at the first update
    max_dist: jax.Array  # shape=(), float32 (float64 for float64 params): r̄_t
    sum_sq_norm_grads: jax.Array  # shape=(), like max_dist: G_t


def _check_init_step(init_step: Any) -> tuple[str, Any]:
    if (
        not isinstance(init_step, (tuple, list))
        or len(init_step) != 2
        or init_step[0] not in _INIT_STEP_TAGS
    ):
        raise ValueError(
            "init_step must be a pair (tag, value) with tag one of 'distance', "
            f"'learning_rate', 'heuristic', got {init_step!r}"
        )
    tag, value = init_step
    checks.check_range(f"init_step[1] ({tag})", value, 0.0, np.inf, low_open=True)
    return tag, value


def scale_by_dog(
    init_step: tuple[
        Literal["distance", "learning_rate", "heuristic"], jax.typing.ArrayLike
    ],
    eps: jax.typing.ArrayLike = 1e-8,
) -> GradientTransformation:
    r"""DoG's step size: the distance travelled over the root of the summed
    squared gradient norms.

    .. math::
        \bar r_t = \max\Big(r_\epsilon, \max_{k \le t} \|x_k - x_0\|\Big),
        \qquad G_t = \sum_{k \le t} \|g_k\|^2, \qquad
        u_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t

    with the norms over the whole tree. ``init_step`` sets the first step:
    ``("distance", r)`` takes :math:`r_\epsilon = r`; ``("heuristic",
    \alpha)`` takes :math:`r_\epsilon = \alpha (1 + \|x_0\|)` (the paper's
    advice: :math:`\alpha = 10^{-6}`, or :math:`10^{-4}` with batch norm);
    ``("learning_rate", \eta_0)`` takes :math:`r_\epsilon = 0` and the step
    size :math:`\eta_0` at the first update (which :func:`dog`'s learning
    rate then scales, as in Optax and the authors' JAX code; their PyTorch
    code takes :math:`\eta_0` as it is).

    As the authors' code does (its JAX and PyTorch versions), :math:`x_0` and
    the heuristic's :math:`\|x_0\|` are the params of the first update;
    ``optax.contrib``'s DoG takes them from ``init``, which gives the same
    numbers when ``init`` gets the params that training starts from.

    Args:
        init_step: ``(tag, value)``, the tag one of ``"distance"``,
            ``"learning_rate"``, ``"heuristic"`` and the value > 0.
        eps: :math:`\epsilon \ge 0`, added to :math:`G_t`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state :class:`DoGState`;
        ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_dog(("distance", 0.5), eps=0.0)
        >>> params = jnp.array([1.0, 2.0])
        >>> u, state = tx.update(jnp.array([3.0, 4.0]), tx.init(params), params)
        >>> print(u)  # 0.5 / 5 times g
        [0.3 0.4]

    References:
        Ivgi, Hinder & Carmon, 2023, "DoG is SGD's Best Friend: A
        Parameter-Free Dynamic Step Size Schedule",
        https://arxiv.org/abs/2302.12022; reference code
        https://github.com/formll/dog
    """
    tag, value = _check_init_step(init_step)
    checks.check_nonnegative("eps", eps)
    hyper_values = {"init": value, "eps": eps}

    def r_epsilon(params: Any, dtype: Any) -> jax.Array:
        h = Hyper(**hyper_values)(dtype)
        if tag == "distance":
            return h.init
        if tag == "heuristic":
            return h.init * (1 + jnp.sqrt(_sq_norm(params, dtype)))
        return jnp.zeros([], dtype)

    def init_fn(params):
        sd = _scalar_dtype(params)
        return DoGState(
            is_init_step=jnp.asarray(True),
            init_params=_copy(params),
            max_dist=r_epsilon(params, sd),
            sum_sq_norm_grads=jnp.zeros([], sd),
        )

    def update_fn(updates, state, params=None):
        require_params("scale_by_dog", params)
        check_moment_tree(updates, params, "params")
        sd = state.max_dist.dtype
        h = Hyper(**hyper_values)(sd)
        first = state.is_init_step
        # The first update fixes x_0 (and the heuristic's r_eps) from its params.
        init_params, r_prev = jax.lax.cond(
            first,
            lambda: (params, r_epsilon(params, sd)),
            lambda: (state.init_params, state.max_dist),
        )
        dist = jnp.sqrt(_sq_dist(init_params, params, sd))
        max_dist = jnp.maximum(r_prev, dist)
        sum_sq = state.sum_sq_norm_grads + _sq_norm(updates, sd)
        rate = max_dist / jnp.sqrt(sum_sq + h.eps)
        if tag == "learning_rate":
            rate = jnp.where(first, h.init, rate)
        new_state = DoGState(
            is_init_step=jnp.zeros_like(first),
            init_params=init_params,
            max_dist=max_dist,
            sum_sq_norm_grads=sum_sq,
        )
        return _scaled(rate, updates), new_state

    stage = Stage("scale_by_dog", {**hyper_values, "init_step": tag})
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


def _decay_stage(weight_decay: Any, mask: Any) -> GradientTransformation:
    """Optax's DoG, DoWG: L2 decay added to the gradient, when given one."""
    if weight_decay is None:
        return identity()
    return add_decayed_weights(weight_decay, mask)


def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: tuple[
        Literal["distance", "learning_rate", "heuristic"], jax.typing.ArrayLike
    ] = ("heuristic", 1e-6),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    r"""DoG: SGD whose step size is the distance travelled over the gradients'
    norms (Ivgi et al., 2023).

    .. math::
        x_{t+1} = x_t - c_t\, \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\,
        (g_t + \lambda x_t), \qquad
        \bar r_t = \max\Big(r_\epsilon, \max_{k \le t} \|x_k - x_0\|\Big), \quad
        G_t = \sum_{k \le t} \|g_k + \lambda x_k\|^2

    with :math:`c_t` the learning rate (the paper's :math:`c`; leave it at 1)
    and :math:`\lambda` an L2 decay added to the gradient (the authors'
    ``weight_decay``), so that it enters :math:`G_t` too. See
    :func:`scale_by_dog` for ``init_step`` and :math:`x_0`. The authors
    advise averaging the iterates (:func:`adamx.ema` of the params, or
    their polynomial average). Names, arguments and defaults are
    ``optax.contrib.dog``'s, whose numbers are the authors'.

    Args:
        learning_rate: :math:`c_t`, a number or a schedule.
        init_step: ``(tag, value)`` for the first step: ``"distance"``,
            ``"learning_rate"`` or ``"heuristic"`` (see :func:`scale_by_dog`).
        eps: :math:`\epsilon \ge 0`, added to :math:`G_t`.
        weight_decay: :math:`\lambda \ge 0`, or ``None`` for none.
        mask: the leaves to decay (a tree of bools, or a function of the
            params returning one); ``None`` decays all.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.dog(init_step=("heuristic", 1e-2))
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state, update = tx.init(params), jax.jit(tx.update)
        >>> for _ in range(30):
        ...     updates, state = update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(f(params) < 1.0)
        True

    References:
        Ivgi, Hinder & Carmon, 2023, "DoG is SGD's Best Friend: A
        Parameter-Free Dynamic Step Size Schedule",
        https://arxiv.org/abs/2302.12022
    """
    return chain(
        _decay_stage(weight_decay, mask),
        scale_by_dog(init_step, eps),
        learning_rate_stage(learning_rate),
    )


# ---------------------------------------------------------------- DoWG


class DoWGState(NamedTuple):
    """State of :func:`scale_by_dowg` (Optax's ``DoWGState``, its fields)."""

    init_params: Any  # x_0, like params
    weighted_sq_norm_grads: jax.Array  # shape=(), float32 (float64 params: float64)
    estim_sq_dist: jax.Array  # shape=(), like weighted_sq_norm_grads: r̄_t^2


def scale_by_dowg(
    init_estim_sq_dist: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-4,
) -> GradientTransformation:
    r"""DoWG's step size: DoG's, with each gradient weighted by the distance.

    .. math::
        \bar r_t^2 = \max\big(\bar r_{t-1}^2, \|x_t - x_0\|^2\big), \qquad
        v_t = v_{t-1} + \bar r_t^2 \|g_t\|^2, \qquad
        u_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\, g_t

    from :math:`\bar r_{-1}^2` = ``init_estim_sq_dist`` (``None``:
    :math:`\epsilon`, as Optax has it) and :math:`v_{-1} = 0`, with the norms
    over the whole tree and :math:`x_0` the params given to ``init``. This is
    the paper's Algorithm 1 with Optax's :math:`\epsilon`; the authors
    published no code.

    Args:
        init_estim_sq_dist: :math:`\bar r_{-1}^2 > 0`, a first guess of the
            squared distance to a solution; ``None`` takes ``eps``.
        eps: :math:`\epsilon > 0`, added to :math:`\sqrt{v_t}`.

    Returns:
        A :class:`~adamx.GradientTransformation` with state :class:`DoWGState`;
        ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_dowg(init_estim_sq_dist=4.0)
        >>> params = jnp.array([1.0, 2.0])
        >>> u, state = tx.update(jnp.array([3.0, 4.0]), tx.init(params), params)
        >>> print(u.round(4))  # 4 / (2 * 5 + eps) times g
        [1.2 1.6]

    References:
        Khaled, Mishchenko & Jin, 2023, "DoWG Unleashed: An Efficient
        Universal Parameter-Free Gradient Descent Method",
        https://arxiv.org/abs/2305.16284
    """
    if init_estim_sq_dist is not None:
        checks.check_range(
            "init_estim_sq_dist", init_estim_sq_dist, 0.0, np.inf, low_open=True
        )
    checks.check_range("eps", eps, 0.0, np.inf, low_open=True)
    first = eps if init_estim_sq_dist is None else init_estim_sq_dist
    hyper_values = {"r2": first, "eps": eps}

    def init_fn(params):
        sd = _scalar_dtype(params)
        return DoWGState(
            init_params=_copy(params),
            weighted_sq_norm_grads=jnp.zeros([], sd),
            estim_sq_dist=Hyper(**hyper_values)(sd).r2,
        )

    def update_fn(updates, state, params=None):
        require_params("scale_by_dowg", params)
        check_moment_tree(updates, params, "params")
        sd = state.estim_sq_dist.dtype
        h = Hyper(**hyper_values)(sd)
        r2 = jnp.maximum(state.estim_sq_dist, _sq_dist(state.init_params, params, sd))
        weighted = r2 * _sq_norm(updates, sd) + state.weighted_sq_norm_grads
        rate = r2 / (jnp.sqrt(weighted) + h.eps)
        new_state = state._replace(weighted_sq_norm_grads=weighted, estim_sq_dist=r2)
        return _scaled(rate, updates), new_state

    stage = Stage("scale_by_dowg", hyper_values)
    return GradientTransformation(init_fn, update_fn, Traits(True, (stage,)))


def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: jax.typing.ArrayLike | None = None,
    eps: jax.typing.ArrayLike = 1e-4,
    weight_decay: jax.typing.ArrayLike | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    r"""DoWG: distance over weighted gradients (Khaled et al., 2023).

    .. math::
        x_{t+1} = x_t - c_t\, \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\,
        (g_t + \lambda x_t), \qquad
        v_t = \sum_{k \le t} \bar r_k^2 \|g_k + \lambda x_k\|^2

    with :math:`\bar r_t` the largest distance from :math:`x_0` so far (see
    :func:`scale_by_dowg`), :math:`c_t` the learning rate and :math:`\lambda`
    an L2 decay added to the gradient. Names, arguments and defaults are
    ``optax.contrib.dowg``'s.

    Args:
        learning_rate: :math:`c_t`, a number or a schedule; 1 is the method.
        init_estim_sq_dist: a first guess of the squared distance to a
            solution; ``None`` takes ``eps``.
        eps: :math:`\epsilon > 0`.
        weight_decay: :math:`\lambda \ge 0`, or ``None`` for none.
        mask: the leaves to decay; ``None`` decays all.

    Returns:
        A :class:`~adamx.GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> f = lambda p: jnp.sum(p**2)
        >>> tx = adamx.dowg()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(30):
        ...     updates, state = tx.update(jax.grad(f)(params), state, params)
        ...     params = adamx.apply_updates(params, updates)
        >>> bool(f(params) < 1.0)
        True

    References:
        Khaled, Mishchenko & Jin, 2023, "DoWG Unleashed: An Efficient
        Universal Parameter-Free Gradient Descent Method",
        https://arxiv.org/abs/2305.16284
    """
    return chain(
        _decay_stage(weight_decay, mask),
        scale_by_dowg(init_estim_sq_dist, eps),
        learning_rate_stage(learning_rate),
    )


# ------------------------------------------------------------- L-DoG


class ScaleByDistanceOverGradientsState(NamedTuple):
    """State of :func:`scale_by_distance_over_gradients` (Optax's fields)."""

    max_dist: Any  # per leaf shape=(), float32 (float64 params: float64): r̄
    grad_sum_of_squares: Any  # per leaf shape=(), like max_dist: G
    init_params: Any  # x_0, like params, in param_dtype


def scale_by_distance_over_gradients(
    reps_rel: jax.typing.ArrayLike = 1e-6,
    eps: jax.typing.ArrayLike = 1e-8,
    param_dtype: Any = jnp.float32,
    global_scale: jax.typing.ArrayLike = 1.0,
) -> GradientTransformation:
    r"""Layer-wise DoG (L-DoG): DoG's step size for each leaf on its own.

    For each leaf :math:`x^{(i)}` and its gradient :math:`g^{(i)}`:

    .. math::
        \bar r^{(i)}_t = \max\Big(\rho\, (1 + \|x^{(i)}_0\|),
        \max_{k \le t} \|x^{(i)}_k - x^{(i)}_0\|\Big), \qquad
        G^{(i)}_t = \sum_{k \le t} \|g^{(i)}_k\|^2, \qquad
        u^{(i)}_t = s\, \frac{\bar r^{(i)}_t}{\sqrt{G^{(i)}_t + \epsilon}}\,
        g^{(i)}_t

    with :math:`\rho` = ``reps_rel`` and :math:`s` = ``global_scale``: the
    authors' ``LDoG`` (``dog.LDoG``, its first step and :math:`\epsilon`),
    with :math:`x_0` the params given to ``init``, stored in ``param_dtype``
    (Optax's choice: float32 halves a float64 copy). Optax keeps :math:`G` as
    a vector of one element, which turns a scalar leaf's update into a
    vector; adamx keeps a scalar. Complex params are refused (Optax squares
    them without their conjugate).

    Args:
        reps_rel: :math:`\rho > 0`, the first step's distance relative to
            :math:`1 + \|x_0\|` (the authors: :math:`10^{-6}`, :math:`10^{-4}`
            with batch norm).
        eps: :math:`\epsilon \ge 0`, added to :math:`G`.
        param_dtype: the dtype :math:`x_0` is kept in.
        global_scale: :math:`s`, a factor on every update (1, or -1 for the
            descent direction).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`ScaleByDistanceOverGradientsState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.scale_by_distance_over_gradients(reps_rel=0.1, eps=0.0)
        >>> params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
        >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([2.0])}
        >>> u, _ = tx.update(grads, tx.init(params), params)
        >>> print(u["a"], u["b"])  # 0.1 * 6 / 1 and 0.1 * 1 / 2 times g
        [0.6 0. ] [0.1]

    References:
        Ivgi, Hinder & Carmon, 2023, "DoG is SGD's Best Friend: A
        Parameter-Free Dynamic Step Size Schedule",
        https://arxiv.org/abs/2302.12022; reference code
        https://github.com/formll/dog
    """
    checks.check_range("reps_rel", reps_rel, 0.0, np.inf, low_open=True)
    checks.check_nonnegative("eps", eps)
    x0_dtype = checks.check_float_dtype("param_dtype", param_dtype)
    if x0_dtype is None:
        raise TypeError(f"param_dtype must be a floating dtype, got {param_dtype!r}")
    checks.check_finite("global_scale", global_scale)
    hyper_values = {"reps_rel": reps_rel, "eps": eps, "scale": global_scale}

    def leaf_dtype(p: Any) -> Any:
        return wider_dtype(p.dtype, jnp.float32)

    def init_fn(params):
        _refuse_complex("scale_by_distance_over_gradients", params)
        hyper = Hyper(**hyper_values)

        def first_dist(p):
            sd = leaf_dtype(p)
            norm = jnp.sqrt(jnp.sum(jnp.asarray(p).astype(sd) ** 2))
            return hyper(sd).reps_rel * (1 + norm)

        return ScaleByDistanceOverGradientsState(
            max_dist=jax.tree.map(first_dist, params),
            grad_sum_of_squares=jax.tree.map(
                lambda p: jnp.zeros([], leaf_dtype(p)), params
            ),
            # Its own buffer (a copy even in the params' dtype).
            init_params=jax.tree.map(lambda p: jnp.array(p, dtype=x0_dtype), params),
        )

    def update_fn(updates, state, params=None):
        require_params("scale_by_distance_over_gradients", params)
        check_moment_tree(updates, params, "params")
        hyper = Hyper(**hyper_values)

        def leaf(g, x, x0, d, g_sos):
            sd = d.dtype
            h = hyper(sd)
            ct = wider_dtype(x.dtype, x0.dtype, sd)
            dist = jnp.sqrt(jnp.sum((x.astype(ct) - x0.astype(ct)) ** 2)).astype(sd)
            d = jnp.maximum(d, dist)
            g_sos = g_sos + jnp.sum(g.astype(wider_dtype(g.dtype, sd)) ** 2)
            rate = h.scale * (d / jnp.sqrt(g_sos + h.eps))
            return _scaled(rate, g), d, g_sos

        flat, treedef = jax.tree.flatten(updates)
        results = [
            leaf(*args)
            for args in zip(
                flat,
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(state.init_params),
                treedef.flatten_up_to(state.max_dist),
                treedef.flatten_up_to(state.grad_sum_of_squares),
                strict=True,
            )
        ]
        out, max_dist, g_sos = (
            treedef.unflatten([r[i] for r in results]) for i in range(3)
        )
        return out, ScaleByDistanceOverGradientsState(
            max_dist, g_sos, state.init_params
        )

    stage = Stage(
        "scale_by_distance_over_gradients",
        {**hyper_values, "param_dtype": x0_dtype},
    )
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))
