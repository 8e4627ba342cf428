r"""The table of in-place kernels: which optimizers :func:`adamx.step` runs natively.

A kernel entry recognises an optimizer by the stages it declares
(:class:`~adamx.traits.Stage`, from its traits), never by the position of a
stage in a chain: ``adamx.adamw(lr, weight_decay=wd)`` and
``chain(scale_by_adam(), add_decayed_weights(wd), scale_by_learning_rate(lr))``
declare the same stages and take the same kernel, whether the params are a tree
or a :class:`~adamx.FlatParams`. An entry gives:

* ``plan(stages)``: a :class:`Plan` (where its moments and schedules' states
  are) if it computes those stages, else ``None``;
* ``call_for(g, p, *moments)``: the :class:`Call` that updates one leaf, or
  ``None`` for a leaf it does not take (the chain updates that one);
* ``scalars(plan, old_state, new_state)``: the per-step scalars the calls read,
  computed as the chain computes them;
* ``platform`` and ``available()``: where its calls run, and whether they can
  (a native library built, say).

:data:`KERNELS` is the table; :func:`find` returns the first available entry
whose plan matches. The step's leaves are handed to that entry's calls when it
is lowered for the entry's platform, and to the chain on any other. A new
kernel (another optimizer, or a build of this one for another platform) is an
entry appended to the table, with its calls registered with XLA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from adamx import lowbit
from adamx.base import explicit_sharding
from adamx.native import native_available
from adamx.traits import Stage, state_at

__all__ = ["KERNELS", "ADAM", "Call", "Kernel", "Plan", "find"]


class Call(NamedTuple):
    """One FFI call's shape: ``run(leaves, scalars, decay)`` for up to ``per_call``
    leaves at once, each leaf ``(g, p, *moments)`` -> ``(p, *moments)``."""

    run: Callable[[list[tuple], jax.Array, bool], list[tuple]]
    per_call: int


class Plan(NamedTuple):
    """Where a matched optimizer keeps what the kernel reads and writes."""

    kernel: Kernel
    moments: tuple  # path of the stage whose state holds the per-param moments
    fields: tuple[str, ...]  # the moments' fields in that state
    stages: tuple[Stage, ...]  # the matched stages, in order


class Kernel(Protocol):
    """An entry of the kernel table."""

    name: str
    platform: str

    def available(self) -> bool: ...

    def plan(self, stages: Sequence[Stage]) -> Plan | None: ...

    def call_for(self, g: Any, p: Any, *moments: Any) -> Call | None: ...

    def scalars(
        self, plan: Plan, old_state: Any, new_state: Any
    ) -> tuple[jax.Array, bool]: ...


# ------------------------------------------------------------------ Adam, AdamW


def _aliases(leaves: int, fixed: int, per_leaf: int) -> dict[int, int]:
    """Each leaf's operands after g aliased with its results, in order."""
    return {
        fixed + i * per_leaf + k: i * (per_leaf - 1) + k - 1
        for i in range(leaves)
        for k in range(1, per_leaf)
    }


def _adam_32bit(
    leaves: list[tuple[jax.Array, jax.Array, jax.Array, jax.Array]],
    scalars: jax.Array,
    decay: bool,
) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    # Leaves go in with their own shapes: the kernel reads them as row-major
    # runs of elements, and a reshape here would make XLA copy the donated
    # buffers of a leaf of rank 2 or more instead of updating them in place.
    results = [
        jax.ShapeDtypeStruct(x.shape, x.dtype) for leaf in leaves for x in leaf[1:]
    ]
    new = jax.ffi.ffi_call(
        ADAM.target_32, results, input_output_aliases=_aliases(len(leaves), 1, 4)
    )(scalars, *[x for leaf in leaves for x in leaf], decay=decay)
    return [(new[3 * i], new[3 * i + 1], new[3 * i + 2]) for i in range(len(leaves))]


def _adam_8bit(
    leaves: list[
        tuple[jax.Array, jax.Array, lowbit.QuantizedArray, lowbit.QuantizedArray]
    ],
    scalars: jax.Array,
    decay: bool,
) -> list[tuple[jax.Array, lowbit.QuantizedArray, lowbit.QuantizedArray]]:
    values, encoders = _maps_8bit()
    operands, results = [], []
    for g, p, m, v in leaves:
        like = (p, m.codes, m.absmax, v.codes, v.absmax)
        operands += [g, *like]
        results += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in like]
    new = jax.ffi.ffi_call(
        ADAM.target_8, results, input_output_aliases=_aliases(len(leaves), 3, 6)
    )(scalars, values, encoders, *operands, decay=decay)
    out = []
    for i, (_, _, m, v) in enumerate(leaves):
        p, m_codes, m_absmax, v_codes, v_absmax = new[5 * i : 5 * i + 5]
        out.append(
            (
                p,
                lowbit.QuantizedArray(m_codes, m_absmax, m.format),
                lowbit.QuantizedArray(v_codes, v_absmax, v.format),
            )
        )
    return out


@functools.cache
def _maps_8bit() -> tuple[np.ndarray, np.ndarray]:
    """The 8-bit maps' values (2, 256) and encoders' constants, for the kernel."""
    maps = [lowbit.map_8bit(signed) for signed in (True, False)]
    values = np.stack([cmap.values for cmap in maps])
    encoders = np.stack(
        [
            np.concatenate(
                [cmap.thresholds, [cmap.zero_cut, cmap.one_cut, cmap.bin_scale]]
            ).astype(np.float32)
            for cmap in maps
        ]
    )
    return values, encoders


# XLA's compile time grows with a call's operands: its fusion pass checks each
# operand against each of the call's in-place pairs, so calls stay small. The
# 8-bit call's chunks cost more, so each waits less on its last one in larger
# calls (docs/performance.md has the measurements behind both sizes).
ADAM_32BIT = Call(_adam_32bit, per_call=16)
ADAM_8BIT = Call(_adam_8bit, per_call=32)
_ADAM_SHAPES = {
    ("scale_by_adam", "scale_by_learning_rate"),
    ("scale_by_adam", "add_decayed_weights", "scale_by_learning_rate"),
}


class _Adam:
    """Adam and AdamW: ``scale_by_adam`` (plain, bias-corrected, 32- or 8-bit
    moments), optionally ``add_decayed_weights`` unmasked, then
    ``scale_by_learning_rate``."""

    name = "adam"
    platform = "cpu"
    # The kernel's block size, which 8-bit moments must have.
    block = 256
    target_32 = "adamx_adam_step"
    target_8 = "adamx_adam_8bit_step"

    def available(self) -> bool:
        return native_available()

    def plan(self, stages: Sequence[Stage]) -> Plan | None:
        stages = tuple(stages)
        if tuple(s.name for s in stages) not in _ADAM_SHAPES:
            return None
        adam, rate = stages[0].args, stages[-1].args
        if adam["nesterov"] or not adam["bias_correction"]:
            return None
        if adam["storage"].bits not in (32, 8) or not rate["flip_sign"]:
            return None
        return Plan(self, stages[0].path, ("mu", "nu"), stages)

    def call_for(self, g: Any, p: Any, m: Any, v: Any) -> Call | None:
        # Empty leaves have nothing to update.
        if g.size == 0 or not (g.dtype == p.dtype == jnp.float32):
            return None
        if self._is_8bit(m) and self._is_8bit(v) and explicit_sharding(g) is None:
            return ADAM_8BIT
        quantized = lowbit.is_quantized(m) or lowbit.is_quantized(v)
        if not quantized and m.dtype == v.dtype == jnp.float32:
            return ADAM_32BIT
        return None

    def _is_8bit(self, m: Any) -> bool:
        return lowbit.is_quantized(m) and (m.bits, m.block_size) == (8, self.block)

    def scalars(
        self, plan: Plan, old_state: Any, new_state: Any
    ) -> tuple[jax.Array, bool]:
        """The kernel's scalars, computed as the chain computes them."""

        def f32(x: Any) -> jax.Array:
            return jnp.asarray(x).astype(jnp.float32)

        adam, rate = plan.stages[0], plan.stages[-1]
        b1, b2, eps, eps_root = (
            f32(adam.args[k]) for k in ("b1", "b2", "eps", "eps_root")
        )
        t = state_at(new_state, adam.path).count.astype(jnp.float32)
        wd: Any = None
        decay = False
        if len(plan.stages) == 3:
            stage = plan.stages[1]
            wd = stage.args["weight_decay"]
            if callable(wd):
                # add_decayed_weights' state counts its own steps.
                decay, wd = True, wd(state_at(old_state, stage.path).count)
            else:
                decay = not (isinstance(wd, (int, float)) and wd == 0.0)
        lr = state_at(new_state, rate.path).rate
        scalars = jnp.stack(
            [
                1 - b1,
                b1,
                1 - b2,
                b2,
                1 / (1 - b1**t),
                1 / (1 - b2**t),
                eps,
                eps_root,
                f32(0.0 if wd is None else wd),
                # The chain scales by -lr after adding the decay term.
                -lr.astype(jnp.float32),
            ]
        )
        return scalars, decay


ADAM = _Adam()

#: The table: :func:`find` tries the entries in order.
KERNELS: list[Kernel] = [ADAM]


def find(stages: Sequence[Stage] | None) -> Plan | None:
    """The plan of the first available kernel that computes ``stages``, or None.

    Args:
        stages: an optimizer's declared stages (``traits_of(tx).stages``);
            ``None`` (opaque) matches nothing.

    Returns:
        A :class:`Plan`, or ``None``.

    Example:
        >>> import adamx
        >>> from adamx.kernels import find
        >>> tx = adamx.chain(adamx.scale_by_adam(), adamx.scale_by_learning_rate(1e-3))
        >>> find(adamx.traits_of(tx).stages).kernel.name
        'adam'
        >>> find(adamx.traits_of(adamx.lamb(1e-3)).stages) is None
        True
    """
    if stages is None:
        return None
    for kernel in KERNELS:
        plan = kernel.plan(stages)
        if plan is not None and kernel.available():
            return plan
    return None
