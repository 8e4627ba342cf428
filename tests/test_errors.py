"""Bad input is refused early, with the right exception and a message that helps.

Construction-time checks come from tables of (callable, exception, regex), for
hyperparameters, schedules, combinators, wrappers and state dtypes; each regex
asks for the argument's name and the offending value as the message echoes it
(``got <repr>``). Then the functions that read or change a state, the errors
that can only come at ``init`` or ``update`` time, checkpoint paths and
targets, and a check that traced hyperparameters are let through.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optimizer_table import OPTIMIZERS, ids

import adamx

NAN = float("nan")
PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def names(arg, value):
    """A regex for a message that names ``arg`` and echoes ``value``."""
    return rf"\b{re.escape(arg)}\b.*\bgot {re.escape(repr(value))}"


def case(fn, exc, pattern, case_id, marks=()):
    return pytest.param(fn, exc, pattern, id=case_id, marks=marks)


def dtype_id(dtype):
    return dtype if isinstance(dtype, str) else jnp.dtype(dtype).name


def _bad_beta_cases():
    makers = {
        "adam": lambda **kw: adamx.adam(1e-3, **kw),
        "adamw": lambda **kw: adamx.adamw(1e-3, **kw),
        "nadam": lambda **kw: adamx.nadam(1e-3, **kw),
        "radam": lambda **kw: adamx.radam(1e-3, **kw),
        "amsgrad": lambda **kw: adamx.amsgrad(1e-3, **kw),
        "adamax": lambda **kw: adamx.adamax(1e-3, **kw),
        "lion": lambda **kw: adamx.lion(1e-3, **kw),
        "adopt": lambda **kw: adamx.adopt(1e-3, **kw),
        "scale_by_adam": adamx.scale_by_adam,
        "laprop": lambda **kw: adamx.laprop(1e-3, **kw),
        "mars": lambda **kw: adamx.mars(1e-3, **kw),
        "stable_adamw": lambda **kw: adamx.stable_adamw(1e-3, **kw),
        "scale_by_stable_adam": adamx.scale_by_stable_adam,
    }
    return [
        case(
            lambda make=make, arg=arg, value=value: make(**{arg: value}),
            ValueError,
            names(arg, value),
            f"{name}-{arg}={value}",
        )
        for name, make in makers.items()
        for arg in ["b1", "b2"]
        for value in [1.0, -0.1, 1.5]
    ]


def _adam_mini_cases():
    makers = {
        "adam_mini": adamx.adam_mini,
        "scale_by_adam_mini": adamx.scale_by_adam_mini,
    }
    bad = {"b1": [1.0, -0.1], "b2": [1.0, 1.5], "eps": [-1e-8, NAN]}
    cases = [
        case(
            lambda make=make, arg=arg, value=value: make(**{arg: value}),
            ValueError,
            names(arg, value),
            f"{name}-{arg}={value}",
        )
        for name, make in makers.items()
        for arg, values in bad.items()
        for value in values
    ]
    return [
        *cases,
        *[
            case(
                lambda value=value: adamx.adam_mini(weight_decay=value),
                ValueError,
                names("weight_decay", value),
                f"adam_mini-weight_decay={value}",
            )
            for value in [-0.1, NAN]
        ],
        case(
            lambda: adamx.adam_mini(partition=(1, 2)),
            TypeError,
            r"partition must be a callable.*got \(1, 2\)",
            "adam_mini-partition-not-callable",
        ),
        case(
            lambda: adamx.adam_mini_partition(n_heads=0),
            ValueError,
            names("n_heads", 0),
            "adam_mini_partition-n_heads=0",
        ),
        case(
            lambda: adamx.adam_mini_partition(layout="tf"),
            ValueError,
            names("layout", "tf"),
            "adam_mini_partition-layout=tf",
        ),
        # A partition that does not divide a leaf: refused at init, naming it.
        case(
            lambda: adamx.adam_mini(partition=lambda name, shape: (2, 2)).init(
                {"h": {"w": jnp.ones((3, 4))}}
            ),
            ValueError,
            r"\(2, 2\) blocks for params\['h'\]\['w'\] \('h.w'\) of shape \(3, 4\)",
            "adam_mini-partition-not-dividing",
        ),
    ]


def _cautious_cases():
    return [
        case(
            lambda: adamx.cautious(adamx.adamw),
            TypeError,
            r"tx must be a GradientTransformation.*got <function adamw",
            "cautious-non-transformation",
        ),
        case(
            lambda: adamx.cautious(adamx.sgd(0.1), normalization="sum"),
            ValueError,
            names("normalization", "sum"),
            "cautious-normalization=sum",
        ),
    ]


def _ademamix_cases():
    makers = {
        "ademamix": lambda **kw: adamx.ademamix(1e-3, **kw),
        "scale_by_ademamix": adamx.scale_by_ademamix,
        "simplified_ademamix": lambda **kw: adamx.simplified_ademamix(1e-3, **kw),
    }
    bad = {
        "b1": [1.0, -0.1],
        "b2": [1.0, 1.5],
        "b3": [1.0, -0.5],
        "alpha": [-1.0, NAN],
        "eps": [-1e-8],
        "eps_root": [-1.0],
    }
    cases = [
        case(
            lambda make=make, arg=arg, value=value: make(**{arg: value}),
            ValueError,
            names(arg, value) if value == value else rf"\b{arg}\b.*NaN",
            f"{name}-{arg}={value}",
        )
        for name, make in makers.items()
        for arg, values in bad.items()
        if not (name == "simplified_ademamix" and arg == "b3")
        for value in values
    ]
    alpha_schedule = adamx.ademamix_alpha_schedule
    beta_schedule = adamx.ademamix_beta_schedule
    schedules = [
        (lambda: alpha_schedule(5.0, -1), ValueError, "warmup_steps"),
        (lambda: alpha_schedule(5.0, 2.5), TypeError, "warmup_steps"),
        (lambda: alpha_schedule(-5.0, 10), ValueError, "alpha"),
        (lambda: beta_schedule(0.999, -3, 0.9), ValueError, "warmup_steps"),
        (lambda: beta_schedule(0.999, None, 0.9), TypeError, "warmup_steps"),
        (lambda: beta_schedule(1.0, 10, 0.9), ValueError, "beta"),
        (lambda: beta_schedule(0.999, 10, 1.2), ValueError, "beta_start"),
    ]
    for i, (make, exc, arg) in enumerate(schedules):
        cases.append(case(make, exc, rf"\b{arg}\b.*got", f"ademamix-schedule-{i}"))
    cases.append(
        case(
            lambda: adamx.ademamix_beta_schedule(0.99, 10, 0.999),
            ValueError,
            r"beta_start must be at most beta=0.99.*got 0.999",
            "ademamix-schedule-falling",
        )
    )
    cases.append(
        case(
            lambda: adamx.ademamix(1e-3, mu_dtype=jnp.float32, state_bits=8),
            ValueError,
            r"state_bits=8 .* mu_dtype",
            "ademamix-state_bits-and-mu_dtype",
        )
    )
    return cases


def _frontier_cases():
    """LaProp, MARS and StableAdamW: the arguments beyond the betas."""
    makers = {
        "laprop": lambda **kw: adamx.laprop(1e-3, **kw),
        "mars": lambda **kw: adamx.mars(1e-3, **kw),
        "scale_by_mars": adamx.scale_by_mars,
        "stable_adamw": lambda **kw: adamx.stable_adamw(1e-3, **kw),
    }
    bad = {"eps": [-1e-8], "weight_decay": [-0.1], "gamma": [-0.5, NAN]}
    cases = [
        case(
            lambda make=make, arg=arg, value=value: make(**{arg: value}),
            ValueError,
            names(arg, value) if value == value else rf"\b{arg}\b.*NaN",
            f"{name}-{arg}={value}",
        )
        for name, make in makers.items()
        for arg, values in bad.items()
        if arg != "gamma" or "mars" in name
        if arg != "weight_decay" or name != "scale_by_mars"
        for value in values
    ]
    cases += [
        case(
            lambda: adamx.mars(1e-3, optimize_1d=1),
            TypeError,
            names("optimize_1d", 1),
            "mars-optimize_1d=1",
        ),
        case(
            lambda: adamx.laprop("fast"),
            TypeError,
            r"\blearning_rate\b.*'fast'",
            "laprop-learning_rate",
        ),
    ]
    return cases


def _schedule_free_cases():
    makers = {
        "schedule_free_adamw": adamx.schedule_free_adamw,
        "schedule_free_sgd": adamx.schedule_free_sgd,
        "schedule_free": lambda **kw: adamx.schedule_free(adamx.sgd(0.1), 0.1, **kw),
    }
    bad = {
        "b1": [0.0, 1.0, -0.1],
        "weight_lr_power": [-1.0],
        "learning_rate": [-0.1],
        "warmup_steps": [-1],
        "weight_decay": [-0.1],
        "b2": [1.0],
        "eps": [-1e-8],
        "state_dtype": [jnp.int32],
        "state_bits": [12],
    }
    cases = []
    for name, make in makers.items():
        takes = inspect.signature(make).parameters
        for arg, values in bad.items():
            if arg not in takes and name != "schedule_free":
                continue
            if name == "schedule_free" and arg not in ("b1", "weight_lr_power"):
                continue
            for value in values:
                exc = TypeError if arg == "state_dtype" else ValueError
                cases.append(
                    case(
                        lambda make=make, arg=arg, value=value: make(**{arg: value}),
                        exc,
                        names(arg, value) if arg != "state_dtype" else arg,
                        f"{name}-{arg}={value}",
                    )
                )
    cases.append(
        case(
            lambda: adamx.schedule_free_adamw(warmup_steps=2.5),
            TypeError,
            names("warmup_steps", 2.5),
            "schedule_free_adamw-warmup_steps=2.5",
        )
    )
    cases.append(
        case(
            lambda: adamx.schedule_free(object(), 0.1),
            TypeError,
            r"base_optimizer must be a GradientTransformation",
            "schedule_free-base_optimizer",
        )
    )
    return cases


def _prodigy_sophia_cases():
    prodigy = {
        "betas": (0.9,),
        "beta3": 1.0,
        "eps": 0.0,
        "estim_lr0": 0.0,
        "estim_lr_coef": -1.0,
        "weight_decay": -0.1,
        "growth_rate": 0.5,
        "slice_p": 0,
        "learning_rate": -1.0,
        "decouple": 1,
    }
    sophia = {
        "b1": 1.0,
        "b2": -0.1,
        "eps": 0.0,
        "gamma": 0.0,
        "clip_threshold": -1.0,
        "update_interval": 0,
        "weight_decay": -1e-4,
        "hessian_diagonal_fn": 3,
        "use_bias_correction": "yes",
    }
    exc = {"betas": TypeError, "decouple": TypeError}
    exc_s = {"hessian_diagonal_fn": TypeError, "use_bias_correction": TypeError}
    cases = [
        case(
            lambda arg=arg, value=value: adamx.prodigy(**{arg: value}),
            exc.get(arg, ValueError),
            names(arg, value),
            f"prodigy-{arg}={value}",
        )
        for arg, value in prodigy.items()
    ]
    cases += [
        case(
            lambda arg=arg, value=value: adamx.sophia(1e-3, **{arg: value}),
            exc_s.get(arg, ValueError),
            names(arg, value),
            f"sophia-{arg}={value}",
        )
        for arg, value in sophia.items()
    ]
    return [
        *cases,
        case(
            lambda: adamx.prodigy(betas=(1.0, 0.999)),
            ValueError,
            r"betas\[0\] must be in \[0.0, 1.0\), got 1.0",
            "prodigy-betas[0]=1.0",
        ),
        case(
            lambda: adamx.scale_by_prodigy(betas=(0.9, -0.5)),
            ValueError,
            r"betas\[1\] must be in \[0.0, 1.0\), got -0.5",
            "scale_by_prodigy-betas[1]=-0.5",
        ),
        case(
            lambda: adamx.scale_by_sophia(verbose=True),
            ValueError,
            names("print_win_rate_every_n_steps", 0),
            "sophia-verbose-every-0",
        ),
        case(
            lambda: adamx.sophia(1e-3, mu_dtype=jnp.bfloat16, state_bits=8),
            ValueError,
            r"state_bits=8 sets how the moments are stored.*mu_dtype",
            "sophia-mu_dtype-and-state_bits",
        ),
        case(
            lambda: adamx.gauss_newton_bartlett_estimator_diag_hessian(0),
            ValueError,
            names("batch_size", 0),
            "gnb-batch_size=0",
        ),
    ]


CONSTRUCTION = [
    *_bad_beta_cases(),
    *_schedule_free_cases(),
    *_frontier_cases(),
    *_ademamix_cases(),
    *_adam_mini_cases(),
    *_cautious_cases(),
    *_prodigy_sophia_cases(),
    # Storage the formula cannot take.
    case(
        lambda: adamx.adopt(1e-3, use_clipping=False, state_bits=8),
        ValueError,
        r"state_bits=8 needs use_clipping=True",
        "adopt-8bit-unclipped",
    ),
    case(
        lambda: adamx.rmsprop(1e-3, centered=True, state_bits=4),
        ValueError,
        r"scale_by_stddev cannot store its moments in 4 bits",
        "rmsprop-centered-4bit",
    ),
    case(
        lambda: adamx.adopt(1e-3, clip_value_fn=0.5),
        TypeError,
        names("clip_value_fn", 0.5),
        "adopt-clip_value_fn",
    ),
    # NaN and infinity.
    case(lambda: adamx.adam(1e-3, b1=NAN), ValueError, names("b1", NAN), "nan-b1"),
    case(lambda: adamx.adam(1e-3, eps=NAN), ValueError, names("eps", NAN), "nan-eps"),
    case(lambda: adamx.adam(NAN), ValueError, names("learning_rate", NAN), "nan-lr"),
    case(
        lambda: adamx.sgd(np.float32(NAN)),
        ValueError,
        names("learning_rate", np.float32(NAN)),
        "nan-lr-numpy",
    ),
    case(
        lambda: adamx.adam(float("inf")),
        ValueError,
        names("learning_rate", float("inf")),
        "inf-lr",
    ),
    case(
        lambda: adamx.scale(float("inf")),
        ValueError,
        names("step_size", float("inf")),
        "inf-scale",
    ),
    case(
        lambda: adamx.adam(-1e-3),
        ValueError,
        names("learning_rate", -1e-3),
        "negative-lr",
    ),
    # Negative epsilons.
    case(
        lambda: adamx.adam(1e-3, eps=-1e-8), ValueError, names("eps", -1e-8), "adam-eps"
    ),
    case(
        lambda: adamx.scale_by_rms(eps=-1.0), ValueError, names("eps", -1.0), "rms-eps"
    ),
    case(
        lambda: adamx.adam(1e-3, eps_root=-1e-8),
        ValueError,
        names("eps_root", -1e-8),
        "adam-eps_root",
    ),
    case(
        lambda: adamx.scale_by_amsgrad(eps_root=-1.0),
        ValueError,
        names("eps_root", -1.0),
        "amsgrad-eps_root",
    ),
    # Negative weight decay.
    *[
        case(make, ValueError, names("weight_decay", -0.1), f"{name}-weight_decay")
        for name, make in {
            "adamw": lambda: adamx.adamw(1e-3, weight_decay=-0.1),
            "lamb": lambda: adamx.lamb(1e-3, weight_decay=-0.1),
            "lion": lambda: adamx.lion(1e-3, weight_decay=-0.1),
            "add_decayed_weights": lambda: adamx.add_decayed_weights(-0.1),
        }.items()
    ],
    # Negative momentum.
    case(lambda: adamx.trace(-0.9), ValueError, names("decay", -0.9), "trace-decay"),
    case(
        lambda: adamx.sgd(1e-3, momentum=-0.9),
        ValueError,
        names("momentum", -0.9),
        "sgd-momentum",
    ),
    case(
        lambda: adamx.rmsprop(1e-3, momentum=-0.9),
        ValueError,
        names("momentum", -0.9),
        "rmsprop-momentum",
    ),
    # Learning rates of the wrong type.
    case(lambda: adamx.adam("0.1"), TypeError, names("learning_rate", "0.1"), "lr-str"),
    case(
        lambda: adamx.adam([0.1]), TypeError, names("learning_rate", [0.1]), "lr-list"
    ),
    case(lambda: adamx.sgd(True), TypeError, names("learning_rate", True), "lr-bool"),
    case(
        lambda: adamx.adam(np.array([0.1, 0.2])),
        TypeError,
        r"\blearning_rate\b.*\bgot array\(\[0\.1, 0\.2\]\)",
        "lr-vector",
    ),
    case(
        lambda: adamx.adam(None),
        TypeError,
        names("learning_rate", None),
        "adam-lr-None",
    ),
    case(
        lambda: adamx.sgd(None),
        TypeError,
        names("learning_rate", None),
        "sgd-lr-None",
    ),
    case(lambda: adamx.adam(1e-3, b1="0.9"), TypeError, names("b1", "0.9"), "b1-str"),
    # Flags and dtypes.
    case(
        lambda: adamx.sgd(1e-3, nesterov=True),
        ValueError,
        r"nesterov=True.*\bmomentum=None",
        "sgd-nesterov-without-momentum",
    ),
    case(
        lambda: adamx.adam(1e-3, nesterov=1),
        TypeError,
        names("nesterov", 1),
        "nesterov-int",
    ),
    case(
        lambda: adamx.adam(1e-3, mu_dtype=jnp.int32),
        TypeError,
        names("mu_dtype", jnp.int32),
        "mu_dtype-int32",
    ),
    case(
        lambda: adamx.adam(1e-3, nu_dtype=jnp.int32),
        TypeError,
        names("nu_dtype", jnp.int32),
        "nu_dtype-int32",
    ),
    case(
        lambda: adamx.trace(0.9, accumulator_dtype="int8"),
        TypeError,
        names("accumulator_dtype", "int8"),
        "accumulator_dtype-int8",
    ),
    # Combinators.
    case(
        lambda: adamx.chain(adamx.scale(1.0), 3),
        TypeError,
        r"chain argument 1\b.*\bgot 3\b",
        "chain-non-transformation",
    ),
    case(
        lambda: adamx.named_chain(("a", adamx.scale(1.0)), ("a", adamx.clip(1.0))),
        ValueError,
        r"named_chain.*unique.*\['a'\]",
        "named_chain-duplicates",
    ),
    case(
        lambda: adamx.partition({"sgd": adamx.sgd(0.1)}, {"w": "sgd", "b": "frozen"}),
        ValueError,
        r"param_labels.*'frozen'",
        "partition-unknown-label",
    ),
    case(
        lambda: adamx.partition(
            {"sgd": adamx.sgd(0.1)}, lambda p: {"w": "sgd", "b": "frozen"}
        ).init(PARAMS),
        ValueError,
        r"param_labels.*'frozen'",
        "partition-unknown-label-from-fn-at-init",
    ),
    case(
        lambda: adamx.masked(adamx.scale(0.0), {"w": 1, "b": True}),
        TypeError,
        r"mask leaves must be bools, got 1\b",
        "masked-int-leaf",
    ),
    case(
        lambda: adamx.masked(adamx.scale(0.0), {"w": "yes", "b": True}),
        TypeError,
        r"mask leaves must be bools, got 'yes'",
        "masked-str-leaf",
    ),
    # Clipping and thresholds.
    case(lambda: adamx.clip(0.0), ValueError, names("max_delta", 0.0), "clip-0"),
    case(
        lambda: adamx.clip(-1.0), ValueError, names("max_delta", -1.0), "clip-negative"
    ),
    case(
        lambda: adamx.clip_by_global_norm(0.0),
        ValueError,
        names("max_norm", 0.0),
        "clip_by_global_norm-0",
    ),
    case(
        lambda: adamx.clip_by_block_rms(0.0),
        ValueError,
        names("threshold", 0.0),
        "clip_by_block_rms-0",
    ),
    case(
        lambda: adamx.radam(1e-3, threshold=4.0),
        ValueError,
        names("threshold", 4.0),
        "radam-threshold-4",
    ),
    case(
        lambda: adamx.scale_by_radam(threshold=3.0),
        ValueError,
        names("threshold", 3.0),
        "scale_by_radam-threshold-3",
    ),
    case(
        lambda: adamx.adafactor(1e-3, clipping_threshold=0.5),
        ValueError,
        names("clipping_threshold", 0.5),
        "adafactor-clipping_threshold",
    ),
    case(lambda: adamx.ema(1.0), ValueError, names("decay", 1.0), "ema-decay-1"),
    case(
        lambda: adamx.scale_by_schedule(0.1),
        TypeError,
        names("step_size_fn", 0.1),
        "scale_by_schedule-number",
    ),
    # Schedules with lengths that make no sense.
    case(
        lambda: adamx.cosine_decay_schedule(1.0, decay_steps=0),
        ValueError,
        names("decay_steps", 0),
        "cosine-decay_steps-0",
    ),
    case(
        lambda: adamx.cosine_decay_schedule(1.0, decay_steps=10.5),
        TypeError,
        names("decay_steps", 10.5),
        "cosine-decay_steps-float",
    ),
    case(
        lambda: adamx.warmup_cosine_decay_schedule(0.0, 1.0, 10, decay_steps=10),
        ValueError,
        names("decay_steps", 10),
        "warmup_cosine-decay_steps-equal-warmup",
    ),
    case(
        lambda: adamx.warmup_cosine_decay_schedule(0.0, 1.0, 10, decay_steps=5),
        ValueError,
        names("decay_steps", 5),
        "warmup_cosine-decay_steps-below-warmup",
    ),
    case(
        lambda: adamx.warmup_cosine_decay_schedule(0.0, 1.0, -1, decay_steps=5),
        ValueError,
        names("warmup_steps", -1),
        "warmup_cosine-warmup_steps-negative",
    ),
    case(
        lambda: adamx.exponential_decay(1.0, transition_steps=0, decay_rate=0.5),
        ValueError,
        names("transition_steps", 0),
        "exponential_decay-transition_steps-0",
    ),
    case(
        lambda: adamx.linear_schedule(1.0, 0.0, transition_steps=-1),
        ValueError,
        names("transition_steps", -1),
        "linear-transition_steps-negative",
    ),
    case(
        lambda: adamx.warmup_constant_schedule(0.0, 1.0, warmup_steps=0),
        ValueError,
        names("warmup_steps", 0),
        "warmup_constant-warmup_steps-0",
    ),
    case(
        lambda: adamx.linear_onecycle_schedule(0, 1.0),
        ValueError,
        names("transition_steps", 0),
        "linear_onecycle-transition_steps-0",
    ),
]

INJECTED_ADAM = adamx.inject_hyperparams(adamx.adam)

WRAPPERS = [
    # apply_if_finite
    *[
        case(
            lambda value=value: adamx.apply_if_finite(adamx.sgd(0.1), value),
            exc,
            names("max_consecutive_errors", value),
            f"apply_if_finite-max_consecutive_errors={value!r}",
        )
        for value, exc in [(-1, ValueError), (1.5, TypeError), ("3", TypeError)]
    ],
    case(
        lambda: adamx.apply_if_finite(3, 1),
        TypeError,
        names("inner", 3),
        "apply_if_finite-non-transformation",
    ),
    # dynamic_loss_scaling; a bound set by another argument is given with it.
    *[
        case(
            lambda kw={arg: value, **other}: adamx.dynamic_loss_scaling(
                adamx.sgd(0.1), **kw
            ),
            exc,
            names(arg, value),
            f"dynamic_loss_scaling-{arg}={value!r}",
        )
        for arg, value, exc, other in [
            ("backoff_factor", 1.5, ValueError, {}),
            ("backoff_factor", 0.0, ValueError, {}),
            ("growth_factor", 0.5, ValueError, {}),
            ("growth_interval", 0, ValueError, {}),
            ("growth_interval", 2.5, TypeError, {}),
            ("min_scale", 0, ValueError, {}),
            ("initial_scale", 0.5, ValueError, {"min_scale": 1.0}),
            ("initial_scale", NAN, ValueError, {}),
            ("max_scale", 2.0, ValueError, {"initial_scale": 4.0}),
        ]
    ],
    # MultiSteps
    case(
        lambda: adamx.MultiSteps(adamx.sgd(0.1), every_k_schedule=0),
        ValueError,
        names("every_k_schedule", 0),
        "MultiSteps-every_k_schedule-0",
    ),
    case(
        lambda: adamx.MultiSteps(adamx.sgd(0.1), every_k_schedule=2.5),
        TypeError,
        names("every_k_schedule", 2.5),
        "MultiSteps-every_k_schedule-float",
    ),
    case(
        lambda: adamx.MultiSteps("sgd", every_k_schedule=2),
        TypeError,
        names("opt", "sgd"),
        "MultiSteps-non-transformation",
    ),
    case(
        lambda: adamx.MultiSteps(adamx.sgd(0.1), 2, use_grad_mean=1),
        TypeError,
        names("use_grad_mean", 1),
        "MultiSteps-use_grad_mean-int",
    ),
    # monitor: the factory passed where the transformation it makes belongs.
    case(
        lambda: adamx.monitor(adamx.sgd),
        TypeError,
        r"\binner\b.*\bgot <function sgd\b",
        "monitor-factory-not-transformation",
    ),
    case(lambda: adamx.monitor(None), TypeError, names("inner", None), "monitor-None"),
    # inject_hyperparams
    case(
        lambda: adamx.inject_hyperparams(3),
        TypeError,
        names("factory", 3),
        "inject_hyperparams-non-callable",
    ),
    case(
        lambda: adamx.inject_hyperparams(lambda learning_rate: 3)(0.1).init(PARAMS),
        TypeError,
        r"\bfactory\b.*\bgot 3\b",
        "inject_hyperparams-factory-returns-non-transformation",
    ),
    case(
        lambda: adamx.inject_hyperparams(adamx.adam, static_args="bogus")(1e-3),
        ValueError,
        r"\bstatic_args\b.*\['bogus'\].*\badam\b",
        "inject_hyperparams-static_args-unknown",
    ),
    case(
        lambda: adamx.inject_hyperparams(adamx.adam, static_args=3)(1e-3),
        TypeError,
        names("static_args", 3),
        "inject_hyperparams-static_args-int",
    ),
    case(
        lambda: INJECTED_ADAM(1e-3, b1=1.5),
        ValueError,
        names("b1", 1.5),
        "inject_hyperparams-b1",
    ),
    case(
        lambda: INJECTED_ADAM(-1e-3),
        ValueError,
        names("learning_rate", -1e-3),
        "inject_hyperparams-negative-lr",
    ),
    case(
        lambda: INJECTED_ADAM(1e-3, bogus=1),
        TypeError,
        r"inject_hyperparams\(adam\).*\bbogus\b",
        "inject_hyperparams-unknown-keyword",
    ),
]

STATE_DTYPES = [
    *[
        case(
            lambda name=name, value=value: OPTIMIZERS[name].ours(mu_dtype=value),
            TypeError,
            names("mu_dtype", value),
            f"{name}-mu_dtype={dtype_id(value)}",
        )
        for name in ids("mu_dtype")
        for value in ["int8", jnp.int32]
    ],
    *[
        case(
            lambda name=name, value=value: OPTIMIZERS[name].ours(nu_dtype=value),
            TypeError,
            names("nu_dtype", value),
            f"{name}-nu_dtype={dtype_id(value)}",
        )
        for name in ids("nu_dtype")
        for value in ["int8", jnp.int32]
    ],
    case(
        lambda: adamx.adam(1e-3, mu_dtype="not-a-dtype"),
        TypeError,
        names("mu_dtype", "not-a-dtype"),
        "mu_dtype-unknown-name",
    ),
    case(
        lambda: adamx.sgd(1e-3, momentum=0.9, accumulator_dtype=jnp.int32),
        TypeError,
        names("accumulator_dtype", jnp.int32),
        "sgd-accumulator_dtype=int32",
    ),
    case(
        lambda: adamx.ema(0.9, accumulator_dtype=jnp.int32),
        TypeError,
        names("accumulator_dtype", jnp.int32),
        "ema-accumulator_dtype=int32",
    ),
    case(
        lambda: adamx.MultiSteps(adamx.sgd(0.1), 2, accumulator_dtype=jnp.int32),
        TypeError,
        names("accumulator_dtype", jnp.int32),
        "MultiSteps-accumulator_dtype=int32",
    ),
    case(
        lambda: adamx.inject_hyperparams(adamx.adam, hyperparam_dtype=jnp.int32),
        TypeError,
        names("hyperparam_dtype", jnp.int32),
        "inject_hyperparams-hyperparam_dtype=int32",
    ),
    case(
        lambda: adamx.sgd(1e-3, accumulator_dtype=jnp.int32),
        TypeError,
        names("accumulator_dtype", jnp.int32),
        "sgd-without-momentum-accumulator_dtype=int32",
    ),
    case(
        lambda: adamx.adafactor(1e-3, momentum=0.9, dtype_momentum=jnp.int32),
        TypeError,
        names("dtype_momentum", jnp.int32),
        "adafactor-dtype_momentum=int32",
    ),
    case(
        lambda: adamx.adafactor(1e-3, dtype_momentum=jnp.int32),
        TypeError,
        names("dtype_momentum", jnp.int32),
        "adafactor-without-momentum-dtype_momentum=int32",
    ),
]


@pytest.mark.parametrize(
    ("make", "exc", "pattern"), [*CONSTRUCTION, *WRAPPERS, *STATE_DTYPES]
)
def test_bad_arguments_are_refused_at_construction(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


# Functions that read or change an existing state.
STATE_FUNCTIONS = [
    case(
        lambda: adamx.set_hyperparams(INJECTED_ADAM(1e-3).init(PARAMS), lr=1e-4),
        KeyError,
        r"no injected hyperparameter named \['lr'\].*'learning_rate'",
        "set_hyperparams-unknown-name",
    ),
    case(
        lambda: adamx.set_hyperparams(adamx.adam(1e-3).init(PARAMS), learning_rate=0.1),
        ValueError,
        r"no InjectHyperparamsState.*inject_hyperparams",
        "set_hyperparams-without-injection",
    ),
    case(
        lambda: adamx.set_hyperparams(INJECTED_ADAM(1e-3).init(PARAMS), b2=NAN),
        ValueError,
        names("b2", NAN),
        "set_hyperparams-nan",
    ),
    case(
        lambda: adamx.set_hyperparams(
            INJECTED_ADAM(1e-3).init(PARAMS), learning_rate="1e-4"
        ),
        TypeError,
        names("learning_rate", "1e-4"),
        "set_hyperparams-str",
    ),
    case(
        lambda: adamx.set_hyperparams(INJECTED_ADAM(1e-3).init(PARAMS), b1=1.5),
        ValueError,
        names("b1", 1.5),
        "set_hyperparams-b1-out-of-range",
    ),
    case(
        lambda: adamx.get_learning_rate(adamx.scale(0.1).init(PARAMS)),
        ValueError,
        r"no learning rate.*scale_by_learning_rate.*'learning_rate'",
        "get_learning_rate-none-recorded",
    ),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), STATE_FUNCTIONS)
def test_bad_state_or_values_are_refused_by_state_functions(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------ init- and update-time


def assert_prints_both(message, a, b):
    assert str(jax.tree.structure(a)) in message
    assert str(jax.tree.structure(b)) in message


@pytest.mark.parametrize(
    "make",
    [
        lambda mask: adamx.masked(adamx.scale(0.0), mask),
        lambda mask: adamx.adamw(1e-3, mask=mask),
        lambda mask: adamx.add_decayed_weights(0.1, mask=lambda p: mask),
    ],
    ids=["masked", "adamw", "add_decayed_weights-mask-fn"],
)
@pytest.mark.parametrize(
    "mask",
    [{"w": True, "c": False}, {"w": True}, {"w": True, "b": {"x": True}}],
    ids=["wrong-key", "missing-key", "too-deep"],
)
def test_mask_not_matching_params_fails_at_init_printing_both(make, mask):
    tx = make(mask)
    with pytest.raises(ValueError, match="mask") as info:
        tx.init(PARAMS)
    assert_prints_both(str(info.value), mask, PARAMS)


@pytest.mark.parametrize("name", ["adamw", "lamb", "lion", "adafactor"])
def test_optimizers_that_need_params_refuse_to_update_without(name):
    tx = getattr(adamx, name)(1e-3)
    with pytest.raises(ValueError, match=r"\bparams\b"):
        tx.update(PARAMS, tx.init(PARAMS))


@pytest.mark.parametrize(
    "name", ["adam", "adamw", "amsgrad", "lion", "rmsprop", "adafactor", "lamb"]
)
@pytest.mark.parametrize(
    "grads",
    [
        dict(PARAMS, extra=jnp.ones(2)),
        {"w": PARAMS["w"]},
        [PARAMS["w"], PARAMS["b"]],
    ],
    ids=["extra-key", "missing-key", "list"],
)
def test_gradient_tree_not_matching_state_prints_both(name, grads):
    tx = getattr(adamx, name)(1e-3)
    with pytest.raises(ValueError) as info:
        tx.update(grads, tx.init(PARAMS), PARAMS)
    assert_prints_both(str(info.value), grads, PARAMS)


@pytest.mark.parametrize("shape", [(4, 2), (3,)], ids=["incompatible", "broadcast"])
@pytest.mark.parametrize(
    "call",
    [
        lambda grads: adamx.adam(1e-3).update(grads, adamx.adam(1e-3).init(PARAMS)),
        lambda updates: adamx.apply_updates(PARAMS, updates),
    ],
    ids=["adam-update", "apply_updates"],
)
def test_leaf_of_the_wrong_shape_is_named(call, shape):
    with pytest.raises(ValueError, match=rf"\['w'\].*{re.escape(str(shape))}"):
        call(dict(PARAMS, w=jnp.ones(shape)))


# ------------------------------------------------------ checkpoints


def saved(root, tree, name="ckpt"):
    adamx.checkpoint.save(root / name, tree)
    return root / name


def directory(root, name):
    (root / name).mkdir()
    return root / name


def at(path):
    return re.escape(str(path))


def adam_state(w_shape=(4, 3), dtype=jnp.float32):
    params = {"w": jnp.ones(w_shape, dtype), "b": jnp.zeros(3)}
    return adamx.adam(1e-3).init(params)


CHECKPOINTS = [
    case(
        lambda root: adamx.checkpoint.restore(root / "missing", adam_state()),
        FileNotFoundError,
        lambda root: rf"no checkpoint at {at(root / 'missing')}$",
        "restore-missing-path",
    ),
    case(
        lambda root: adamx.checkpoint.restore(directory(root, "empty"), adam_state()),
        FileNotFoundError,
        lambda root: (
            rf"no adamx checkpoint at {at(root / 'empty')}: "
            r"adamx_checkpoint\.json is missing"
        ),
        "restore-not-a-checkpoint",
    ),
    case(
        lambda root: adamx.checkpoint.restore(
            saved(root, adam_state()), adamx.sgd(0.1, momentum=0.9).init(PARAMS)
        ),
        ValueError,
        lambda root: (
            rf"(?s)tree structure of the checkpoint at {at(root / 'ckpt')} "
            r"does not match.*checkpoint: .*ScaleByAdamState.*target: .*TraceState"
        ),
        "restore-other-optimizer",
    ),
    case(
        lambda root: adamx.checkpoint.restore(
            saved(root, adam_state()), adam_state(w_shape=(4, 2))
        ),
        ValueError,
        lambda root: (
            r"leaf \[0\]\.mu\['w'\] does not match the target: the "
            r"checkpoint has shape \(4, 3\).*the target has shape \(4, 2\)"
        ),
        "restore-other-leaf-shape",
    ),
    case(
        lambda root: adamx.checkpoint.restore(
            saved(root, adam_state()), adam_state(dtype=jnp.bfloat16)
        ),
        ValueError,
        lambda root: (
            r"leaf \[0\]\.mu\['w'\] does not match the target: .*dtype "
            r"float32.*dtype bfloat16"
        ),
        "restore-other-leaf-dtype",
    ),
    case(
        lambda root: adamx.checkpoint.restore(saved(root, PARAMS), dict(PARAMS, w="w")),
        TypeError,
        lambda root: r"target leaf \['w'\] must be an array.*got 'w'",
        "restore-into-str-leaf",
    ),
    case(
        lambda root: adamx.checkpoint.save(root / "out", {"step": "ten"}),
        TypeError,
        lambda root: r"leaf \['step'\] must be an array or a Python scalar.*got 'ten'",
        "save-str-leaf",
    ),
    case(
        lambda root: adamx.checkpoint.save(directory(root, "data"), adam_state()),
        FileExistsError,
        lambda root: rf"{at(root / 'data')} exists and is not an adamx checkpoint",
        "save-over-other-directory",
    ),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), CHECKPOINTS)
def test_bad_checkpoint_paths_and_targets_are_refused(tmp_path, call, exc, pattern):
    with pytest.raises(exc, match=pattern(tmp_path)):
        call(tmp_path)


# ------------------------------------------------------ traced values

TRACED = [
    pytest.param(lambda v: adamx.adam(v), 0.1, id="adam-learning_rate"),
    pytest.param(lambda v: adamx.adam(1e-2, b1=v), 0.5, id="adam-b1"),
    pytest.param(lambda v: adamx.adamw(1e-2, weight_decay=v), 0.3, id="adamw-decay"),
    pytest.param(lambda v: adamx.sgd(1e-2, momentum=v), 0.9, id="sgd-momentum"),
    pytest.param(lambda v: adamx.radam(1e-2, threshold=v), 6.0, id="radam-threshold"),
    pytest.param(lambda v: adamx.clip_by_global_norm(v), 0.5, id="clip_by_global_norm"),
    pytest.param(
        lambda v: adamx.sgd(adamx.cosine_decay_schedule(v, 10)),
        0.1,
        id="cosine-init_value",
    ),
]


@pytest.mark.parametrize(("make", "value"), TRACED)
def test_traced_hyperparameters_are_not_rejected(make, value):
    g = jnp.array([0.5, -1.0, 2.0])
    state = make(value).init(g)

    def first_update(v):
        return make(v).update(g, state, g)[0]

    np.testing.assert_allclose(
        jax.jit(first_update)(value), first_update(value), rtol=1e-6
    )
