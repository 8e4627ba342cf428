"""The optimizers in the race, each built the way a user would build it.

Every contender is a factory ``build(learning_rate, workload)`` returning the
optimizer for ``workload``'s budget ``workload.steps``, a default grid of peak
learning rates for the sweep, and the params its validation loss is measured at
(the trained params, or a schedule-free optimizer's evaluation point).

The learning rate follows one schedule for all but the schedule-free
contenders: a linear warmup from 0 over the first ``WARMUP_FRACTION`` of the
budget to the peak rate, then a cosine decay to ``END_FRACTION`` of the peak at
the last step (:func:`adamx.warmup_cosine_decay_schedule`). The schedule-free
ones take the peak rate as a constant with the same warmup and no decay.

Weight decay is fixed per family, decoupled (multiplied by the learning rate,
applied to every leaf):

- AdamW family (``adamw``, ``adamw_8bit``, ``cautious_adamw``, ``optax_adamw``,
  ``ademamix``, ``soap``, ``mars``, ``muon``, ``optax_muon`` on both their parts,
  and both ``schedule_free_adamw``): 0.1.
- Lion: 1.0, ten times AdamW's, as its rates are about ten times smaller
  (Chen et al., 2023), which keeps the product of rate and decay alike.
- Adam, ADOPT and SGD with Nesterov momentum: none (they have no decoupled decay).

Muon trains the workload's hidden matrices (``workload.hidden``) and AdamW
everything else, with Moonshot's update RMS matching (``consistent_rms=0.2``)
so that one learning rate, on an AdamW-like scale, serves both parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import optax.contrib

import adamx

WARMUP_FRACTION = 0.1
END_FRACTION = 0.1

ADAMW_DECAY = 0.1
LION_DECAY = 1.0
MUON_RMS = 0.2


class Contender(NamedTuple):
    """One optimizer of the race."""

    build: Callable[[float, Any], Any]  # (peak learning rate, workload) -> optimizer
    grid: tuple[float, ...]  # default peak learning rates of the sweep
    weight_decay: float = ADAMW_DECAY  # decoupled decay, 0.0 for none
    library: str = "adamx"  # "adamx" or "optax"
    # (opt_state, params) -> the params to evaluate
    eval_params: Callable[[Any, Any], Any] = lambda opt_state, params: params
    schedule: str = "warmup-cosine"  # or "schedule-free"


def warmup_steps(workload: Any) -> int:
    """The warmup of ``workload``'s budget, at least one step."""
    return max(1, round(WARMUP_FRACTION * workload.steps))


def schedule(learning_rate: float, workload: Any) -> Callable[[Any], Any]:
    """Warmup then cosine decay over ``workload.steps`` to a tenth of the peak."""
    return adamx.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps(workload),
        decay_steps=workload.steps,
        end_value=END_FRACTION * learning_rate,
    )


def log_grid(low: float, points: int = 4, factor: float = 10**0.5) -> tuple[float, ...]:
    """``points`` rates from ``low`` up, each ``factor`` (half a decade) apart."""
    return tuple(float(f"{low * factor**k:.3g}") for k in range(points))


def muon_dimension_numbers(workload: Any, module: Any) -> Callable[[Any], Any]:
    """Muon's dimension numbers for the hidden leaves, ``None`` (AdamW) elsewhere.

    A hidden leaf ``W`` maps ``x @ W``: its last axis is the output, the others
    the input (a convolution's kernel ``(h, w, in, out)`` included).
    """

    def numbers(params: Any) -> Any:
        def leaf(hidden: bool, p: Any) -> Any:
            if not hidden:
                return None
            return module.MuonDimensionNumbers(
                reduction_axis=tuple(range(np.ndim(p) - 1)), output_axis=np.ndim(p) - 1
            )

        return jax.tree.map(leaf, workload.hidden(params), params)

    return numbers


def _adamw(lr, w, **kwargs):
    return adamx.adamw(schedule(lr, w), weight_decay=ADAMW_DECAY, **kwargs)


def _muon(module):
    def build(lr, w):
        return module.muon(
            schedule(lr, w),
            weight_decay=ADAMW_DECAY,
            adam_weight_decay=ADAMW_DECAY,
            consistent_rms=MUON_RMS,
            muon_weight_dimension_numbers=muon_dimension_numbers(w, module),
        )

    return build


def _schedule_free(module):
    def build(lr, w):
        return module.schedule_free_adamw(
            lr, warmup_steps=warmup_steps(w), weight_decay=ADAMW_DECAY
        )

    return build


ADAMW_GRID = log_grid(3e-4, 6)  # 3e-4 ... 9.5e-2, around Adam's usual 1e-3 to 3e-3
SCHEDULE_FREE_GRID = log_grid(1e-3, 6)  # schedule-free takes higher rates

CONTENDERS: dict[str, Contender] = {
    "adamw": Contender(_adamw, ADAMW_GRID),
    "adamw_8bit": Contender(lambda lr, w: _adamw(lr, w, state_bits=8), ADAMW_GRID),
    "adam": Contender(lambda lr, w: adamx.adam(schedule(lr, w)), ADAMW_GRID, 0.0),
    "lion": Contender(
        lambda lr, w: adamx.lion(schedule(lr, w), weight_decay=LION_DECAY),
        log_grid(3e-5, 6),
        LION_DECAY,
    ),
    "sgd": Contender(
        lambda lr, w: adamx.sgd(schedule(lr, w), momentum=0.9, nesterov=True),
        log_grid(1e-2),
        0.0,
    ),
    "muon": Contender(_muon(adamx), ADAMW_GRID),
    # Dimensions over 1024 (the CNN's 3136-wide dense input) stay unrotated:
    # a 3136 x 3136 eigenbasis makes each step 8x slower than the cap.
    "soap": Contender(
        lambda lr, w: adamx.soap(
            schedule(lr, w), weight_decay=ADAMW_DECAY, max_precondition_dim=1024
        ),
        ADAMW_GRID,
    ),
    "schedule_free_adamw": Contender(
        _schedule_free(adamx),
        SCHEDULE_FREE_GRID,
        eval_params=adamx.schedule_free_eval_params,
        schedule="schedule-free",
    ),
    "adopt": Contender(lambda lr, w: adamx.adopt(schedule(lr, w)), ADAMW_GRID, 0.0),
    "ademamix": Contender(
        lambda lr, w: adamx.ademamix(schedule(lr, w), weight_decay=ADAMW_DECAY),
        ADAMW_GRID,
    ),
    "mars": Contender(
        lambda lr, w: adamx.mars(
            schedule(lr, w), weight_decay=ADAMW_DECAY, adam_weight_decay=ADAMW_DECAY
        ),
        ADAMW_GRID,
    ),
    "cautious_adamw": Contender(
        lambda lr, w: adamx.cautious(_adamw(lr, w)), ADAMW_GRID
    ),
    "optax_adamw": Contender(
        lambda lr, w: optax.adamw(schedule(lr, w), weight_decay=ADAMW_DECAY),
        ADAMW_GRID,
        library="optax",
    ),
    "optax_muon": Contender(_muon(optax.contrib), ADAMW_GRID, library="optax"),
    "optax_schedule_free_adamw": Contender(
        _schedule_free(optax.contrib),
        SCHEDULE_FREE_GRID,
        library="optax",
        eval_params=optax.contrib.schedule_free_eval_params,
        schedule="schedule-free",
    ),
}

#: The contender every other one is measured against; it runs first.
BASELINE = "adamw"


def get(name: str) -> Contender:
    """The contender called ``name``, or a ``ValueError`` listing the names."""
    if name not in CONTENDERS:
        raise ValueError(f"optimizer must be one of {sorted(CONTENDERS)}, got {name!r}")
    return CONTENDERS[name]
