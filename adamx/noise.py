r"""Gradient noise: Gaussian noise added to every update, annealed over steps.

Neelakantan et al. (2015) add :math:`\mathcal N(0, \sigma_t^2)` noise to the
gradients of very deep networks, with a variance that decays as
:math:`\eta / t^\gamma`. The draws follow Optax's key handling exactly: the
key in the state is split once per step, and the sample key once more into
one key per leaf, in the order of ``jax.tree.leaves``. The same key gives
Optax's numbers, draw for draw.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import checks
from adamx.base import (
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    wider_dtype,
)
from adamx.combine import chain
from adamx.moments import as_float
from adamx.traits import Stage, Traits
from adamx.transforms import learning_rate_stage

__all__ = ["AddNoiseState", "add_noise", "noisy_sgd"]


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`."""

    count: jax.Array  # type: ignore[assignment]  # shape=(), int32: steps so far
    # shape=(2,), uint32 (the default implementation's): the data of the key,
    # split at every step; plain integers, which every tool of adamx reads.
    rng_key: jax.Array


def key_data(
    key: Any, seed: Any, name: str = "add_noise"
) -> tuple[Callable[[], jax.Array], Any]:
    """Optax's ``key``/``seed`` handling, checked: a function returning the
    key's data (``jax.random.key_data``) and the key's implementation
    (``None``: JAX's default)."""
    if seed is not None:
        warnings.warn(
            '"seed" is deprecated, as in Optax: pass the seed or key as "key"',
            DeprecationWarning,
            stacklevel=3,
        )
        if key is not None:
            raise ValueError(
                f"pass one of key and seed, not both: got key={key!r} and seed={seed!r}"
            )
        key = seed
    if key is None:
        warnings.warn(
            f"{name} without a key draws from the key of seed 0 in every run: "
            "pass key= (Optax will require it too)",
            UserWarning,
            stacklevel=3,
        )
        key = 0
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed_ = int(key)
        return lambda: jax.random.key_data(jax.random.key(seed_)), None
    dtype = getattr(key, "dtype", None)
    if isinstance(key, (jax.Array, np.ndarray)) and dtype is not None:
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and key.ndim == 0:
            typed = key
            return lambda: jax.random.key_data(typed), jax.random.key_impl(typed)
        if dtype == np.uint32 and key.ndim == 1:
            # A raw key (jax.random.PRNGKey's), which Optax does not take.
            raw = jnp.asarray(key)
            return lambda: raw, None
        if jnp.issubdtype(dtype, jnp.integer) and key.ndim == 0:
            # A seed as an array (as inject_hyperparams passes numbers).
            seed_array = key
            return lambda: jax.random.key_data(jax.random.key(seed_array)), None
    raise TypeError(
        f"key must be an int seed or a PRNG key (jax.random.key), got {key!r}"
    )


def add_noise(
    eta: jax.typing.ArrayLike,
    gamma: jax.typing.ArrayLike,
    key: jax.typing.ArrayLike | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Add annealed Gaussian noise to the updates.

    .. math::
        u_t = g_t + \sigma_t\, \xi_t, \qquad
        \sigma_t^2 = \frac{\eta}{t^\gamma}, \qquad
        \xi_t \sim \mathcal N(0, I)

    counting steps from :math:`t = 1`. For complex updates :math:`\xi_t` is
    complex normal, each part of variance :math:`1/2` (``jax.random.normal``'s
    convention, as in Optax). The draws are Optax's for the same key, in each
    update's dtype; they are scaled and added in at least float32 and rounded
    once, so bfloat16 updates get Optax's numbers to within a rounding (Optax
    adds in bfloat16).

    The state holds the key's data (``jax.random.key_data``, uint32) where
    Optax's holds the typed key: plain integers, which checkpoints, sharding
    and byte counts take like any other array. On a flat buffer
    (:class:`~adamx.FlatParams`) the draws differ from the tree's (one key per
    leaf), equally right but not the same numbers, so this transformation
    declares nothing element-wise.

    Args:
        eta: :math:`\eta \ge 0`, the variance at the first step.
        gamma: :math:`\gamma \ge 0`, the decay exponent of the variance.
        key: an int seed or a PRNG key (``jax.random.key``; a raw ``uint32``
            key is taken too). ``None`` uses seed 0, with a warning, as Optax
            does.
        seed: deprecated (as in Optax): the seed, if ``key`` is not given.

    Returns:
        A :class:`~adamx.GradientTransformation` with state
        :class:`AddNoiseState`.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.add_noise(eta=0.01, gamma=0.55, key=jax.random.key(0))
        >>> g = jnp.zeros(10000)
        >>> u, state = tx.update(g, tx.init(g))
        >>> print(f"{float(u.std()):.2f}")  # sigma_1 = sqrt(0.01)
        0.10

    References:
        Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning for
        Very Deep Networks", https://arxiv.org/abs/1511.06807
    """
    checks.check_nonnegative("eta", eta)
    checks.check_nonnegative("gamma", gamma)
    make_key_data, impl = key_data(key, seed)

    def init_fn(params: Any) -> AddNoiseState:
        del params
        return AddNoiseState(count=jnp.zeros([], jnp.int32), rng_key=make_key_data())

    def update_fn(
        updates: Any, state: AddNoiseState, params: Any = None
    ) -> tuple[Any, AddNoiseState]:
        del params
        count = safe_increment(state.count)
        # sigma as Optax computes it: in the default float dtype.
        sigma = jnp.sqrt(eta / as_float(count) ** gamma)
        typed = jax.random.wrap_key_data(state.rng_key, impl=impl)
        rng_key, sample_key = jax.random.split(typed)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))

        def leaf(g: jax.Array, k: jax.Array) -> jax.Array:
            noise = jax.random.normal(
                k, g.shape, g.dtype, out_sharding=jax.typeof(g).sharding
            )
            ct = wider_dtype(g.dtype, jnp.float32)
            return (g.astype(ct) + sigma.astype(ct) * noise.astype(ct)).astype(g.dtype)

        noisy = [leaf(g, keys[i]) for i, g in enumerate(leaves)]
        return treedef.unflatten(noisy), AddNoiseState(
            count=count, rng_key=jax.random.key_data(rng_key)
        )

    stage = Stage("add_noise", {"eta": eta, "gamma": gamma})
    return GradientTransformation(init_fn, update_fn, Traits(None, (stage,)))


def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: jax.typing.ArrayLike = 0.01,
    gamma: jax.typing.ArrayLike = 0.55,
    key: jax.typing.ArrayLike | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""SGD with annealed Gaussian noise added to the gradients.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \left(g_t + \mathcal N(0,
        \sigma_t^2)\right), \qquad \sigma_t^2 = \frac{\eta}{t^\gamma}

    counting steps from :math:`t = 1` (Optax's docstring writes
    :math:`(1 + t)^\gamma` counting from 0: the same numbers). It is
    :func:`add_noise` then the learning rate; the same key gives Optax's
    numbers draw for draw.

    Args:
        learning_rate: :math:`\alpha_t`, a number or a schedule.
        eta: :math:`\eta \ge 0`, the noise variance at the first step.
        gamma: :math:`\gamma \ge 0`, the decay exponent of the variance.
        key: an int seed or a PRNG key; ``None`` uses seed 0, with a warning.
        seed: deprecated (as in Optax): the seed, if ``key`` is not given.

    Returns:
        A :class:`~adamx.GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.noisy_sgd(learning_rate=0.1, eta=0.0, key=0)  # no noise
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, _ = tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)
        >>> print(adamx.apply_updates(params, updates))
        [ 0.9 -2.1]

    References:
        Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning for
        Very Deep Networks", https://arxiv.org/abs/1511.06807
    """
    return chain(
        add_noise(eta, gamma, key, seed=seed), learning_rate_stage(learning_rate)
    )
