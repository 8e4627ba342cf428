r"""Cautious optimizers: step only where the update agrees with the gradient.

Liang et al. (2024) mask the entries of an optimizer's update that would move
a parameter up its current gradient, and scale the rest up so that the step
keeps its size. For any momentum method the masked step still decreases the
loss to first order, where the unmasked one may not. :func:`cautious` wraps
any transformation this way; it keeps no state of its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adamx.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    Updates,
    wider_dtype,
)
from adamx.combine import call_update, check_transformation
from adamx.traits import Traits, traits_of

__all__ = ["cautious"]

#: The normalizations ``cautious`` takes.
NORMALIZATIONS = ("mean", "paper")
#: The floor of the mean of the mask in the ``"mean"`` normalization.
MIN_MEAN = 1e-3


def _caution(u: jax.Array, g: jax.Array, normalization: str) -> jax.Array:
    """One leaf: the entries of ``u`` that descend along ``g``, rescaled."""
    ct = wider_dtype(u.dtype, g.dtype, jnp.float32)
    u32, g32 = u.astype(ct), g.astype(ct)
    # The update is added to the params: it agrees with the gradient where it
    # points the other way (for complex numbers, Re(u conj(g)) < 0).
    agree = jnp.real(u32 * jnp.conj(g32)) < 0
    mask = agree.astype(jnp.finfo(ct).dtype)
    if normalization == "mean":
        scale = 1 / jnp.maximum(jnp.mean(mask), MIN_MEAN)
    else:
        scale = mask.size / (jnp.sum(mask) + 1)
    return (u32 * (mask * scale)).astype(u.dtype)


#: Stages whose step does not read the params: before a decoupled weight
#: decay, their update at zero params is the update without the decay.
PARAM_FREE = frozenset(
    {
        "scale_by_adam",
        "scale_by_adamax",
        "scale_by_ademamix",
        "scale_by_adopt",
        "scale_by_amsgrad",
        "scale_by_belief",
        "scale_by_lion",
        "scale_by_radam",
        "scale_by_rms",
        "scale_by_simplified_ademamix",
        "trace",
    }
)


def _decays_apart(tx: GradientTransformation) -> bool:
    """Whether ``tx`` is a params-free step, decoupled weight decay and the
    learning rate (``adamw``, ``lion``, ...)."""
    names = [stage.name for stage in traits_of(tx).stages or ()]
    return (
        len(names) == 3
        and names[0] in PARAM_FREE
        and names[1:] == ["add_decayed_weights", "scale_by_learning_rate"]
    )


def cautious(
    tx: GradientTransformation, *, normalization: str = "mean"
) -> GradientTransformation:
    r"""Mask the entries of ``tx``'s update that move against the gradient.

    With :math:`u_t` the update of ``tx`` (added to the params) and
    :math:`g_t` the gradient, leaf by leaf:

    .. math::
        \phi_t = \mathbb{1}[u_t \odot g_t < 0], \qquad
        u'_t = \frac{\phi_t}{s(\phi_t)} \odot u_t, \qquad
        s(\phi) = \begin{cases}
        \max(\operatorname{mean}(\phi), 10^{-3}) & \text{normalization="mean"} \\
        (\operatorname{nnz}(\phi) + 1) / \dim(\phi) & \text{normalization="paper"}
        \end{cases}

    so :math:`u'_t \odot g_t \le 0` everywhere: no parameter moves up its
    gradient (for complex params, :math:`\operatorname{Re}(u \bar g) < 0`).
    The authors compare the momentum :math:`m_t` with :math:`g_t`; with
    adamx's sign convention that is :math:`u_t \odot g_t < 0`, since
    :math:`u_t = -\alpha_t m_t / (\sqrt{\hat v_t} + \epsilon)` has the sign of
    :math:`-m_t`. ``"mean"`` is the normalization of the authors' C-AdamW
    code since 2025 (and timm's); ``"paper"`` is the paper's
    :math:`\dim(\phi) / (\operatorname{nnz}(\phi) + 1)`, their first code's
    and ``pytorch_optimizer``'s. Both are per leaf, as the reference's are per
    tensor; the first is the default, as the authors found it the better.

    Decoupled weight decay stays outside the mask, as in the authors' C-AdamW:
    where ``tx`` is a step that does not read the params, then
    :func:`~adamx.add_decayed_weights` and its learning rate (``adamw``,
    ``nadamw``, ``adamaxw``, ``lion``, ``ademamix``),
    :math:`u_t = u^{\text{step}}_t - \alpha_t \lambda \theta_{t-1}` and
    only :math:`u^{\text{step}}_t` is masked, so ``cautious(adamw(...))`` is
    C-AdamW. Of any other ``tx`` the whole update is masked, decay included:
    a chain whose stages are hidden (``adamw(..., mask=...)``, whose decay
    sits inside :func:`~adamx.masked`, or an injected optimizer) is such a
    one. The state is ``tx``'s.

    Args:
        tx: any transformation whose updates are added to the params (an
            optimizer with its learning rate, as :func:`adamx.adamw`).
        normalization: ``"mean"`` or ``"paper"``, as above.

    Returns:
        A :class:`~adamx.GradientTransformation` with ``tx``'s state; it works
        leaf by leaf (the mask's mean), so a :class:`~adamx.FlatParams` is
        refused.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.cautious(adamx.sgd(1.0, momentum=0.5))
        >>> state = tx.init(jnp.zeros(4))
        >>> _, state = tx.update(jnp.full(4, 2.0), state)
        >>> u, state = tx.update(jnp.array([1.0, -2.0, 1.0, -0.5]), state)
        >>> print(u.round(4))  # the momentum outweighs -0.5: masked, the rest * 4/3
        [-2.6667  1.3333 -2.6667 -0.    ]

    References:
        Liang et al., 2024, "Cautious Optimizers: Improving Training with One
        Line of Code", https://arxiv.org/abs/2411.16085; code
        https://github.com/kyleliang919/C-Optim
    """
    check_transformation("tx", tx)
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
        )

    apart = _decays_apart(tx)

    def update_fn(updates: Updates, state, params: Params | None = None, **extra_args):
        new, new_state = call_update(tx, updates, state, params, extra_args)
        if not apart or params is None:
            masked = jax.tree.map(
                lambda u, g: _caution(u, g, normalization), new, updates
            )
            return masked, new_state
        # The same update at zero params has no decay in it: the difference
        # is the decay alone (the moments, which do not read the params, are
        # computed once: XLA merges the two identical computations).
        zeros = jax.tree.map(jnp.zeros_like, params)
        bare, _ = call_update(tx, updates, state, zeros, extra_args)

        def leaf(u: jax.Array, b: jax.Array, g: jax.Array) -> jax.Array:
            return (_caution(b, g, normalization) + (u - b)).astype(u.dtype)

        return jax.tree.map(leaf, new, bare, updates), new_state

    inner = traits_of(tx)
    return GradientTransformationExtraArgs(
        tx.init, update_fn, Traits(elementwise=False, layout=inner.layout)
    )
