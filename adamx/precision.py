r"""Low-precision params that keep the updates smaller than their spacing.

A bfloat16 param has 8 significant bits: an update below half its spacing
rounds away, and a long run of small steps (a low learning rate, the end of a
schedule) leaves the param where it was. Two wrappers keep those updates:

* :func:`kahan_summation` keeps, per param, the part of each update that
  rounding lost, and adds it back at the next step.
* :func:`stochastic_rounding` rounds the new params up or down at random,
  with the probabilities that make the rounding exact in expectation.

Both wrap a whole optimizer and act on bfloat16 and float16 leaves; wider
leaves pass through. ``docs/memory.md`` has their measured cost and accuracy.

References:
    Kahan, 1965, "Further remarks on reducing truncation errors",
    https://doi.org/10.1145/363707.363723

    Zamirai et al., 2020, "Revisiting BFloat16 Training",
    https://arxiv.org/abs/2010.06192
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx.base import GradientTransformation, require_params, wider_dtype
from adamx.combine import MaskedNode, call_update, check_transformation
from adamx.traits import Traits, traits_of

__all__ = [
    "KahanSummationState",
    "StochasticRoundingState",
    "kahan_summation",
    "stochastic_round",
    "stochastic_rounding",
]


def _is_low_precision(p: Any) -> bool:
    dtype = getattr(p, "dtype", None)
    return (
        dtype is not None
        and jnp.issubdtype(dtype, jnp.floating)
        and jnp.dtype(dtype).itemsize < 4
    )


class KahanSummationState(NamedTuple):
    """State of :func:`kahan_summation`."""

    inner_state: Any  # the wrapped optimizer's state
    compensation: Any  # like params (low-precision leaves), MaskedNode elsewhere


def kahan_summation(
    inner: GradientTransformation, compensation_dtype: Any | None = None
) -> GradientTransformation:
    r"""Compensated (Kahan) summation of the updates into low-precision params.

    .. math::
        \begin{aligned}
        y_t &= u_t + c_{t-1} \\
        \theta_t &= \operatorname{round}(\theta_{t-1} + y_t) \\
        c_t &= y_t - (\theta_t - \theta_{t-1})
        \end{aligned}

    :math:`u_t` is the inner optimizer's update and :math:`\operatorname{round}`
    the rounding to the params' dtype. An update below half the spacing of the
    params is not lost but kept in :math:`c` until enough of it has gathered.
    This runs for bfloat16 and float16 leaves; wider ones pass through.

    The returned updates are :math:`\theta_t - \theta_{t-1}` in float32, so
    :func:`adamx.apply_updates` lands exactly on :math:`\theta_t`; wrap the whole
    optimizer, with nothing after it. The compensation is stored by default in
    the params' dtype, as in optimi: it is at most half a unit in the last place
    of :math:`\theta`, so in bfloat16 it carries 8 more significant bits below
    the param's last one, 16 in all, for 2 bytes per param instead of the 4 of
    float32 params (``compensation_dtype=jnp.float32`` keeps 24 more, for 4).

    Args:
        inner: the optimizer whose updates are summed.
        compensation_dtype: dtype of :math:`c`; ``None`` uses each param's.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`KahanSummationState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.precision import kahan_summation
        >>> params = jnp.ones(2, jnp.bfloat16)
        >>> tx = kahan_summation(adamx.sgd(1e-3))
        >>> state = tx.init(params)
        >>> for _ in range(100):  # each step is 1e-3, a quarter of a bf16 spacing
        ...     u, state = tx.update(-jnp.ones(2, jnp.bfloat16), state, params)
        ...     params = adamx.apply_updates(params, u)
        >>> params
        Array([1.10156, 1.10156], dtype=bfloat16)

    References:
        Kahan, 1965, "Further remarks on reducing truncation errors",
        https://doi.org/10.1145/363707.363723

        optimi, "Low Precision Training with Kahan Summation",
        https://optimi.benjaminwarner.dev/kahan_summation/
    """
    check_transformation("inner", inner)
    if compensation_dtype is not None:
        compensation_dtype = jnp.dtype(compensation_dtype)
        if not jnp.issubdtype(compensation_dtype, jnp.floating):
            raise TypeError(
                f"compensation_dtype must be a floating dtype, got "
                f"{compensation_dtype!r}"
            )

    def init_fn(params):
        def leaf(p):
            if not _is_low_precision(p):
                return MaskedNode()
            return jnp.zeros_like(p, dtype=compensation_dtype or p.dtype)

        return KahanSummationState(inner.init(params), jax.tree.map(leaf, params))

    def update_fn(updates, state, params=None, **extra_args):
        require_params("kahan_summation", params)
        updates, inner_state = call_update(
            inner, updates, state.inner_state, params, extra_args
        )
        p_leaves, treedef = jax.tree.flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        c_leaves = treedef.flatten_up_to(state.compensation)
        new_u, new_c = [], []
        for p, u, c in zip(p_leaves, u_leaves, c_leaves, strict=True):
            if isinstance(c, MaskedNode):
                new_u.append(u)
                new_c.append(c)
                continue
            ct = wider_dtype(p.dtype, u.dtype, c.dtype, jnp.float32)
            p_ = p.astype(ct)
            y = u.astype(ct) + c.astype(ct)
            # Both are values of p's dtype, so their difference in float32 is
            # exact and p + delta gives back the rounded sum.
            delta = (p_ + y).astype(p.dtype).astype(ct) - p_
            new_u.append(delta)
            new_c.append((y - delta).astype(c.dtype))
        return treedef.unflatten(new_u), KahanSummationState(
            inner_state, treedef.unflatten(new_c)
        )

    # Element-wise where the inner optimizer is: the compensation is per element.
    return GradientTransformation(
        init_fn,
        update_fn,
        Traits(elementwise=traits_of(inner).elementwise),
        derived=True,
    )


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`."""

    inner_state: Any  # the wrapped optimizer's state
    key: jax.Array  # shape=(), typed PRNG key: split once per step


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    r"""Round ``x`` to ``dtype`` up or down at random, exactly in expectation.

    .. math::
        \operatorname{sr}(x) = \begin{cases} \lceil x \rceil & \text{with
        probability } (x - \lfloor x \rfloor) / (\lceil x \rceil - \lfloor x
        \rfloor) \\ \lfloor x \rfloor & \text{otherwise} \end{cases}, \qquad
        \mathbb{E}[\operatorname{sr}(x)] = x

    where :math:`\lfloor x \rfloor, \lceil x \rceil` are the neighbours of
    :math:`x` in ``dtype``. For bfloat16, the upper half of a float32, 16
    random bits are added to the lower half before it is cut off, so the
    probabilities are exact to :math:`2^{-16}` of a spacing.

    Args:
        x: values in float32 (or a wider float).
        dtype: the low-precision float dtype to round to.
        key: a PRNG key.

    Returns:
        ``x`` rounded, in ``dtype``.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from adamx.precision import stochastic_round
        >>> x = jnp.full(100_000, 1.0 + 2.0**-9)  # a quarter of the way up
        >>> r = stochastic_round(x, jnp.bfloat16, jax.random.key(0))
        >>> sorted(set(r.tolist())), round(float(r.astype(jnp.float32).mean()), 4)
        ([1.0, 1.0078125], 1.002)
    """
    dtype = jnp.dtype(dtype)
    x = jnp.asarray(x).astype(jnp.float32)
    if dtype == jnp.bfloat16:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        noise = jax.random.bits(key, x.shape, jnp.uint32) >> 16
        # Adding to the magnitude's bits rounds the magnitude up with the right
        # probability, for either sign; inf stays inf.
        finite = jnp.isfinite(x)
        bits = jnp.where(finite, bits + noise, bits) & jnp.uint32(0xFFFF0000)
        return jax.lax.bitcast_convert_type(bits, jnp.float32).astype(dtype)
    nearest = x.astype(dtype)
    near = nearest.astype(jnp.float32)
    other = jnp.nextafter(
        nearest, jnp.where(near > x, -jnp.inf, jnp.inf).astype(dtype)
    ).astype(jnp.float32)
    low, high = jnp.minimum(near, other), jnp.maximum(near, other)
    gap = high - low
    up = jnp.where(gap > 0, (x - low) / jnp.where(gap > 0, gap, 1), 0)
    draw = jax.random.uniform(key, x.shape, jnp.float32)
    out = jnp.where(near == x, near, jnp.where(draw < up, high, low))
    return jnp.where(jnp.isfinite(x), out, x).astype(dtype)


def stochastic_rounding(
    inner: GradientTransformation, seed: int | jax.Array = 0
) -> GradientTransformation:
    r"""Round the new low-precision params stochastically instead of to nearest.

    .. math::
        \theta_t = \operatorname{sr}(\theta_{t-1} + u_t), \qquad
        \mathbb{E}[\theta_t \mid \theta_{t-1}] = \theta_{t-1} + u_t

    :math:`u_t` is the inner optimizer's update, computed and added in float32,
    and :math:`\operatorname{sr}` is :func:`stochastic_round` to the params'
    dtype. An update far below the spacing of the params moves a param by one
    spacing with a probability in proportion, so none is lost on average. This
    runs for bfloat16 and float16 leaves; wider ones pass through.

    The key is kept in the state and split once per step (and folded with the
    leaf's index), so a run is determined by ``seed``. The returned updates are
    :math:`\theta_t - \theta_{t-1}` in float32, so :func:`adamx.apply_updates`
    lands exactly on :math:`\theta_t`; wrap the whole optimizer.

    Args:
        inner: the optimizer whose updates are rounded.
        seed: an int, or a PRNG key (typed or raw ``uint32``).

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`StochasticRoundingState`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> from adamx.precision import stochastic_rounding
        >>> params = jnp.ones(1000, jnp.bfloat16)
        >>> tx = stochastic_rounding(adamx.sgd(1e-3), seed=0)
        >>> state = tx.init(params)
        >>> for _ in range(100):
        ...     u, state = tx.update(-jnp.ones(1000, jnp.bfloat16), state, params)
        ...     params = adamx.apply_updates(params, u)
        >>> round(float(params.astype(jnp.float32).mean()), 2)
        1.1

    References:
        Zamirai et al., 2020, "Revisiting BFloat16 Training",
        https://arxiv.org/abs/2010.06192
    """
    check_transformation("inner", inner)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        make_key = lambda: jax.random.key(int(seed))  # noqa: E731
    elif isinstance(seed, jax.Array | np.ndarray) and (
        jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
        or seed.dtype == np.uint32
    ):
        key = seed
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(jnp.asarray(key))
        make_key = lambda: key  # noqa: E731
    else:
        raise TypeError(f"seed must be an int or a PRNG key, got {seed!r}")

    def init_fn(params):
        return StochasticRoundingState(inner.init(params), make_key())

    def update_fn(updates, state, params=None, **extra_args):
        require_params("stochastic_rounding", params)
        updates, inner_state = call_update(
            inner, updates, state.inner_state, params, extra_args
        )
        key, step_key = jax.random.split(state.key)
        p_leaves, treedef = jax.tree.flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        new_u = []
        for i, (p, u) in enumerate(zip(p_leaves, u_leaves, strict=True)):
            if not _is_low_precision(p) or u is None:
                new_u.append(u)
                continue
            ct = wider_dtype(p.dtype, u.dtype, jnp.float32)
            p_ = p.astype(ct)
            rounded = stochastic_round(
                p_ + u.astype(ct), p.dtype, jax.random.fold_in(step_key, i)
            )
            new_u.append(rounded.astype(ct) - p_)
        return treedef.unflatten(new_u), StochasticRoundingState(inner_state, key)

    # Declares nothing: on a flat buffer its random draws would differ from
    # the tree's (a key per leaf), equally right but not the same numbers.
    return GradientTransformation(init_fn, update_fn)
