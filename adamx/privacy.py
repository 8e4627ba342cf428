r"""Differentially private SGD: per-example clipping and Gaussian noise.

Abadi et al. (2016) bound how much one example can move the params: each
example's gradient is clipped to a norm :math:`C`
(:func:`adamx.per_example_global_norm_clip`), the clipped gradients are
summed, Gaussian noise of standard deviation :math:`\sigma C` is added and the
sum is divided by the batch size. These transformations take per-example
gradients, every leaf with the batch axis first (``jax.vmap`` of
``jax.grad``), and must come first in a chain. Gradient accumulation
(:class:`adamx.MultiSteps`, :func:`adamx.apply_every`) would average already
noised means, which is not the same mechanism.

The draws follow Optax's key handling: the key in the state is split at every
step into the next key and one key per leaf, in the order of
``jax.tree.leaves``, so the same key gives Optax's numbers, draw for draw.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    identity,
    wider_dtype,
)
from adamx.combine import chain
from adamx.layerwise import per_example_global_norm_clip
from adamx.moments import Hyper
from adamx.noise import key_data
from adamx.traits import Stage, Traits
from adamx.transforms import learning_rate_stage, trace

__all__ = [
    "DifferentiallyPrivateAggregateState",
    "differentially_private_aggregate",
    "dpsgd",
]


class DifferentiallyPrivateAggregateState(NamedTuple):
    """State of :func:`differentially_private_aggregate`."""

    # shape=(2,), uint32 (the default implementation's): the data of the key,
    # split at every step; plain integers, which every tool of adamx reads.
    rng_key: jax.Array


def differentially_private_aggregate(
    l2_norm_clip: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Clip per-example gradients, sum them, add Gaussian noise, average.

    .. math::
        \bar g = \frac{1}{B} \left( \sum_{b=1}^{B} g_b \min\!\left(1,
        \frac{C}{\|g_b\|_2}\right) + \sigma C\, \xi \right), \qquad
        \xi \sim \mathcal N(0, I)

    where :math:`g_b` is example :math:`b`'s gradient (its slice of every
    leaf, clipped as one vector by :func:`adamx.per_example_global_norm_clip`)
    and :math:`B` the batch size, the leading axis of the first leaf. The
    noise is drawn in each leaf's dtype from Optax's keys (see the module
    docstring); it is scaled and added in at least float32 and rounded once.
    The output has no batch axis: the next stages see a gradient shaped like
    the params.

    The state holds the key's data (``jax.random.key_data``, uint32) where
    Optax's holds the typed key: plain integers, which checkpoints, sharding
    and byte counts take like any other array.

    Args:
        l2_norm_clip: :math:`C \ge 0`, the largest norm of one example's
            gradient.
        noise_multiplier: :math:`\sigma \ge 0`, the noise's standard deviation
            in units of :math:`C`.
        key: an int seed or a PRNG key (``jax.random.key``; a raw ``uint32``
            key is taken too). ``None`` uses seed 0, with a warning, as Optax
            does.
        seed: deprecated (as in Optax): the seed, if ``key`` is not given.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`DifferentiallyPrivateAggregateState`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.differentially_private_aggregate(1.0, 0.0, key=0)
        >>> per_example = jnp.array([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
        >>> u, _ = tx.update(per_example, tx.init(jnp.zeros(2)))
        >>> print(u)  # ((0.6, 0.8) + (0.3, 0.4)) / 2
        [0.45 0.6 ]

    References:
        Abadi et al., 2016, "Deep Learning with Differential Privacy",
        https://arxiv.org/abs/1607.00133
    """
    checks.check_nonnegative("l2_norm_clip", l2_norm_clip)
    checks.check_nonnegative("noise_multiplier", noise_multiplier)
    make_key_data, impl = key_data(key, seed, "differentially_private_aggregate")

    def init_fn(params: Any) -> DifferentiallyPrivateAggregateState:
        del params
        return DifferentiallyPrivateAggregateState(rng_key=make_key_data())

    def update_fn(
        updates: Any, state: DifferentiallyPrivateAggregateState, params: Any = None
    ) -> tuple[Any, DifferentiallyPrivateAggregateState]:
        del params
        summed, _ = per_example_global_norm_clip(updates, l2_norm_clip)
        leaves, treedef = jax.tree.flatten(summed)
        batch_size = np.shape(jax.tree.leaves(updates)[0])[0]
        typed = jax.random.wrap_key_data(state.rng_key, impl=impl)
        rng_key, *keys = jax.random.split(typed, len(leaves) + 1)
        hyper = Hyper(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier)

        def leaf(g: jax.Array, k: jax.Array) -> jax.Array:
            noise = jax.random.normal(k, g.shape, g.dtype)
            ct = wider_dtype(g.dtype, jnp.float32)
            h = hyper(ct)
            std = h.l2_norm_clip * h.noise_multiplier
            return ((g.astype(ct) + std * noise.astype(ct)) / batch_size).astype(
                g.dtype
            )

        noised = [leaf(g, k) for g, k in zip(leaves, keys, strict=True)]
        new_state = DifferentiallyPrivateAggregateState(jax.random.key_data(rng_key))
        return treedef.unflatten(noised), new_state

    stage = Stage(
        "differentially_private_aggregate",
        {"l2_norm_clip": l2_norm_clip, "noise_multiplier": noise_multiplier},
    )
    return GradientTransformation(init_fn, update_fn, Traits(False, (stage,)))


def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: jax.typing.ArrayLike,
    noise_multiplier: jax.typing.ArrayLike,
    seed: int,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""DP-SGD (Abadi et al., 2016): SGD on clipped, noised per-example gradients.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t\, m_t, \qquad
        m_t = \bar g_t + \mu\, m_{t-1}

    with :math:`\bar g_t` of :func:`differentially_private_aggregate` (the
    clipped per-example gradients, summed, noised with standard deviation
    :math:`\sigma C` and divided by the batch size) and, with a ``momentum``
    :math:`\mu`, heavy-ball or Nesterov momentum (:func:`adamx.trace`);
    without, :math:`m_t = \bar g_t`. ``update`` takes per-example gradients,
    each leaf with the batch axis first. Names, arguments and defaults are
    ``optax.contrib.dpsgd``'s, and the same ``seed`` draws Optax's noise.

    Args:
        learning_rate: :math:`\eta_t`, a number or a schedule.
        l2_norm_clip: :math:`C \ge 0`, the largest norm of one example's
            gradient.
        noise_multiplier: :math:`\sigma \ge 0`, the noise's standard deviation
            in units of :math:`C`.
        seed: the seed of the noise's PRNG key (``jax.random.key(seed)``).
        momentum: :math:`\mu \in [0, 1)`, or ``None`` for no momentum.
        nesterov: Nesterov's momentum in place of heavy ball.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> def loss(w, x):
        ...     return jnp.sum((w - x) ** 2)
        >>> tx = adamx.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=0.0, seed=0)
        >>> w, xs = jnp.zeros(2), jnp.array([[1.0, 1.0], [-3.0, 4.0]])
        >>> g = jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, xs)
        >>> u, _ = tx.update(g, tx.init(w), w)
        >>> print([round(float(v), 4) for v in u])  # clipped, averaged, times -0.1
        [0.0054, 0.0754]

    References:
        Abadi et al., 2016, "Deep Learning with Differential Privacy",
        https://arxiv.org/abs/1607.00133
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if momentum is not None:
        checks.check_decay("momentum", momentum)
    checks.check_bool("nesterov", nesterov)
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
        trace(decay=momentum, nesterov=nesterov)
        if momentum is not None
        else identity(),
        learning_rate_stage(learning_rate),
    )
