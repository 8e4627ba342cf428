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


def _parameter_free_polyak_cases():
    """DoG, DoWG, COCOB, D-Adaptation, Mechanic, L-DoG, Polyak and MoMo."""
    inf = float("inf")
    bad = [
        ("dog", lambda: adamx.dog(eps=-1.0), names("eps", -1.0)),
        ("dog", lambda: adamx.dog(weight_decay=-0.1), names("weight_decay", -0.1)),
        (
            "dowg",
            lambda: adamx.dowg(init_estim_sq_dist=0.0),
            names("init_estim_sq_dist", 0.0),
        ),
        ("dowg", lambda: adamx.dowg(eps=0.0), names("eps", 0.0)),
        ("cocob", lambda: adamx.cocob(alpha=0.0), names("alpha", 0.0)),
        ("cocob", lambda: adamx.scale_by_cocob(eps=-1e-8), names("eps", -1e-8)),
        ("dadapt", lambda: adamx.dadapt_adamw(estim_lr0=0.0), names("estim_lr0", 0.0)),
        (
            "dadapt",
            lambda: adamx.dadapt_adamw(growth_rate=0.5),
            names("growth_rate", 0.5),
        ),
        ("dadapt", lambda: adamx.dadapt_adamw(eps=0.0), names("eps", 0.0)),
        (
            "dadapt",
            lambda: adamx.dadapt_adamw(weight_decay=-0.1),
            names("weight_decay", -0.1),
        ),
        (
            "mechanize",
            lambda: adamx.mechanize(adamx.sgd(0.1), s_init=0.0),
            names("s_init", 0.0),
        ),
        (
            "mechanize",
            lambda: adamx.mechanize(adamx.sgd(0.1), eps=0.0),
            names("eps", 0.0),
        ),
        (
            "mechanize",
            lambda: adamx.mechanize(adamx.sgd(0.1), weight_decay=-1.0),
            names("weight_decay", -1.0),
        ),
        (
            "ldog",
            lambda: adamx.scale_by_distance_over_gradients(reps_rel=0.0),
            names("reps_rel", 0.0),
        ),
        (
            "ldog",
            lambda: adamx.scale_by_distance_over_gradients(global_scale=inf),
            names("global_scale", inf),
        ),
        (
            "polyak",
            lambda: adamx.polyak_sgd(max_learning_rate=-1.0),
            names("max_learning_rate", -1.0),
        ),
        ("polyak", lambda: adamx.polyak_sgd(scaling=-0.5), names("scaling", -0.5)),
        ("polyak", lambda: adamx.scale_by_polyak(eps=-1.0), names("eps", -1.0)),
        ("polyak", lambda: adamx.scale_by_polyak(f_min=NAN), r"\bf_min\b.*NaN"),
        ("momo", lambda: adamx.momo(beta=1.0), names("beta", 1.0)),
        ("momo", lambda: adamx.momo(weight_decay=-0.1), names("weight_decay", -0.1)),
        ("momo", lambda: adamx.momo(lower_bound=inf), names("lower_bound", inf)),
        ("momo", lambda: adamx.momo(-1.0), names("learning_rate", -1.0)),
        ("momo_adam", lambda: adamx.momo_adam(b1=1.0), names("b1", 1.0)),
        ("momo_adam", lambda: adamx.momo_adam(b2=-0.1), names("b2", -0.1)),
        ("momo_adam", lambda: adamx.momo_adam(eps=-1.0), names("eps", -1.0)),
    ]
    cases = [
        case(make, ValueError, pattern, f"{name}-{i}")
        for i, (name, make, pattern) in enumerate(bad)
    ]
    cases += [
        case(
            lambda: adamx.dog(init_step=("bogus", 1.0)),
            ValueError,
            r"init_step must be a pair \(tag, value\).*got \('bogus', 1.0\)",
            "dog-init_step-tag",
        ),
        case(
            lambda: adamx.scale_by_dog(("heuristic", 0.0)),
            ValueError,
            r"init_step\[1\] \(heuristic\) must be in \(0.0, inf\], got 0.0",
            "dog-init_step-value",
        ),
        case(
            lambda: adamx.dadapt_adamw(betas=(1.0, 0.999)),
            ValueError,
            r"betas\[0\] must be in \[0.0, 1.0\), got 1.0",
            "dadapt-betas[0]=1.0",
        ),
        case(
            lambda: adamx.dadapt_adamw(use_bias_correction="yes"),
            TypeError,
            names("use_bias_correction", "yes"),
            "dadapt-use_bias_correction",
        ),
        case(
            lambda: adamx.dadapt_adamw(state_bits=12),
            ValueError,
            names("state_bits", 12),
            "dadapt-state_bits=12",
        ),
        case(
            lambda: adamx.mechanize("adam"),
            TypeError,
            r"base_optimizer must be a GradientTransformation.*got 'adam'",
            "mechanize-base_optimizer",
        ),
        case(
            lambda: adamx.mechanize(adamx.sgd(0.1), num_betas=0),
            ValueError,
            names("num_betas", 0),
            "mechanize-num_betas=0",
        ),
        case(
            lambda: adamx.scale_by_distance_over_gradients(param_dtype=jnp.int32),
            TypeError,
            r"\bparam_dtype\b.*got <class 'jax.numpy.int32'>",
            "ldog-param_dtype",
        ),
        case(
            lambda: adamx.polyak_sgd(variant="sps++"),
            ValueError,
            r"variant must be 'sps' or 'sps\+', got 'sps\+\+'",
            "polyak-variant",
        ),
        case(
            lambda: adamx.momo(adapt_lower_bound="yes"),
            TypeError,
            names("adapt_lower_bound", "yes"),
            "momo-adapt_lower_bound",
        ),
    ]
    return cases


def _sign_optimistic_noise_cases():
    """signSGD, Signum, Rprop, the optimistic gradients and gradient noise."""
    bad = [
        ("signum-beta", lambda v: adamx.signum(1e-2, beta=v), "beta", 1.0),
        ("sign_sgd-learning_rate", adamx.sign_sgd, "learning_rate", -0.1),
        ("rprop-learning_rate", adamx.rprop, "learning_rate", -0.1),
        ("rprop-eta_minus", lambda v: adamx.rprop(1e-2, eta_minus=v), "eta_minus", 1.0),
        ("rprop-eta_plus", lambda v: adamx.rprop(1e-2, eta_plus=v), "eta_plus", 0.9),
        (
            "scale_by_rprop-min_step_size",
            lambda v: adamx.scale_by_rprop(1e-2, min_step_size=v),
            "min_step_size",
            -1e-6,
        ),
        (
            "scale_by_rprop-max_below_min",
            lambda v: adamx.scale_by_rprop(1e-2, min_step_size=0.1, max_step_size=v),
            "max_step_size",
            0.01,
        ),
        (
            "optimistic_gradient_descent-alpha",
            lambda v: adamx.optimistic_gradient_descent(1e-2, alpha=v),
            "alpha",
            float("inf"),
        ),
        (
            "optimistic_adam_v2-b1",
            lambda v: adamx.optimistic_adam_v2(1e-2, b1=v),
            "b1",
            1.0,
        ),
        (
            "optimistic_adam-optimism",
            lambda v: adamx.optimistic_adam(1e-2, optimism=v),
            "optimism",
            float("inf"),
        ),
        ("add_noise-eta", lambda v: adamx.add_noise(v, 0.55, key=0), "eta", -0.01),
        (
            "noisy_sgd-gamma",
            lambda v: adamx.noisy_sgd(1e-2, gamma=v, key=0),
            "gamma",
            -1.0,
        ),
    ]
    cases = [
        case(lambda make=make, v=v: make(v), ValueError, names(arg, v), case_id)
        for case_id, make, arg, v in bad
    ]
    cases += [
        case(
            lambda: adamx.optimistic_gradient_descent(1e-2, beta=lambda t: 1.0),
            TypeError,
            r"\bbeta\b.*must be a real number",
            "optimistic_gradient_descent-beta-schedule",
        ),
        case(
            lambda: adamx.optimistic_adam(adamx.linear_schedule(1.0, 0.0, 10)),
            ValueError,
            r"optimistic_adam takes a number as learning_rate.*optimistic_adam_v2",
            "optimistic_adam-schedule",
        ),
        case(
            lambda: adamx.noisy_sgd(1e-2, key="0"),
            TypeError,
            names("key", "0"),
            "noisy_sgd-key-string",
        ),
        case(
            lambda: adamx.add_noise(0.01, 0.55, key=1, seed=2),
            ValueError,
            r"one of key and seed.*key=1.*seed=2",
            "add_noise-key-and-seed",
        ),
        case(
            lambda: adamx.signum(1e-2, state_bits=8, accumulator_dtype=jnp.bfloat16),
            ValueError,
            r"state_bits=8.*accumulator_dtype",
            "signum-state_bits-and-accumulator_dtype",
        ),
        case(
            lambda: adamx.rprop(1e-2, state_bits=12),
            ValueError,
            names("state_bits", 12),
            "rprop-state_bits",
        ),
    ]
    return cases


def _lbfgs_linesearch_cases():
    backtracking = {
        "max_backtracking_steps": -1,
        "slope_rtol": 1.0,
        "decrease_factor": 1.0,
        "increase_factor": 0.0,
        "max_learning_rate": 0.0,
        "atol": -1e-3,
        "rtol": NAN,
        "store_grad": "yes",
    }
    zoom = {
        "max_linesearch_steps": 0,
        "max_learning_rate": -1.0,
        "tol": -1.0,
        "increase_factor": -1.0,
        "slope_rtol": -0.1,
        "curv_rtol": -0.5,
        "approx_dec_rtol": -1e-6,
        "stepsize_precision": NAN,
        "initial_guess_strategy": "two",
        "verbose": 1,
    }
    lbfgs = {"memory_size": 0, "scale_init_precond": "no", "learning_rate": -1.0}
    type_errors = {"store_grad", "verbose", "scale_init_precond"}

    def cases(name, make, bad):
        return [
            case(
                lambda arg=arg, value=value: make(**{arg: value}),
                TypeError if arg in type_errors else ValueError,
                names(arg, value),
                f"{name}-{arg}={value}",
            )
            for arg, value in bad.items()
        ]

    return [
        *cases(
            "backtracking",
            lambda **kw: adamx.scale_by_backtracking_linesearch(
                **{"max_backtracking_steps": 5, **kw}
            ),
            backtracking,
        ),
        *cases(
            "zoom",
            lambda **kw: adamx.scale_by_zoom_linesearch(
                **{"max_linesearch_steps": 5, **kw}
            ),
            zoom,
        ),
        *cases("lbfgs", adamx.lbfgs, lbfgs),
        case(
            lambda: adamx.scale_by_lbfgs(memory_size=2.5),
            TypeError,
            names("memory_size", 2.5),
            "scale_by_lbfgs-memory_size=2.5",
        ),
        case(
            lambda: adamx.lbfgs(linesearch=3),
            TypeError,
            r"linesearch.*GradientTransformation.*got 3",
            "lbfgs-linesearch=3",
        ),
    ]


def _layerwise_cases():
    grads = [jnp.ones((2, 3))]
    bad = [
        (
            "lars",
            lambda **kw: adamx.lars(**{"learning_rate": 0.1, **kw}),
            {
                "learning_rate": -1.0,
                "weight_decay": -0.1,
                "trust_coefficient": -1.0,
                "eps": NAN,
                "momentum": -0.1,
            },
        ),
        (
            "fromage",
            lambda **kw: adamx.fromage(**{"learning_rate": 0.1, **kw}),
            {"learning_rate": NAN, "min_norm": -1e-6},
        ),
        (
            "scale_by_param_block_norm",
            adamx.scale_by_param_block_norm,
            {"min_scale": -1e-3},
        ),
        (
            "normalize_by_update_norm",
            adamx.normalize_by_update_norm,
            {"scale_factor": float("inf"), "eps": -1e-6},
        ),
        (
            "adaptive_grad_clip",
            lambda **kw: adamx.adaptive_grad_clip(**{"clipping": 0.1, **kw}),
            {"clipping": -0.1, "eps": NAN},
        ),
        (
            "per_example_global_norm_clip",
            lambda **kw: adamx.per_example_global_norm_clip(grads, **kw),
            {"l2_norm_clip": -1.0},
        ),
        (
            "per_example_layer_norm_clip",
            lambda **kw: adamx.per_example_layer_norm_clip(grads, **kw),
            {"global_l2_norm_clip": NAN},
        ),
    ]
    cases = [
        case(
            lambda make=make, arg=arg, value=value: make(**{arg: value}),
            ValueError,
            names(arg, value),
            f"{name}-{arg}={value}",
        )
        for name, make, values in bad
        for arg, value in values.items()
    ]
    return [
        *cases,
        case(
            lambda: adamx.lars(0.1, nesterov="yes"),
            TypeError,
            names("nesterov", "yes"),
            "lars-nesterov=yes",
        ),
        case(
            lambda: adamx.lars(0.1, state_bits=7),
            ValueError,
            names("state_bits", 7),
            "lars-state_bits=7",
        ),
        case(
            lambda: adamx.lars(0.1, trust_ratio_mask={"w": 1}),
            TypeError,
            r"mask leaves must be bools, got 1",
            "lars-trust_ratio_mask-int",
        ),
        case(
            lambda: adamx.adaptive_grad_clip(0.1, axis=1.5),
            TypeError,
            names("axis", 1.5),
            "adaptive_grad_clip-axis=1.5",
        ),
        case(
            lambda: adamx.adaptive_grad_clip(0.1, axis=(0, 0)),
            ValueError,
            names("axis", (0, 0)),
            "adaptive_grad_clip-axis-repeated",
        ),
        case(
            lambda: adamx.per_example_layer_norm_clip(grads, 1.0, uniform="no"),
            TypeError,
            names("uniform", "no"),
            "per_example_layer_norm_clip-uniform=no",
        ),
    ]


def _adagrad_relatives_cases():
    """adagrad.py and relatives.py: AdaGrad, AdaDelta, SM3, MADGRAD, Yogi,
    Adan, NovoGrad."""
    bad = {
        "adagrad": (
            lambda **kw: adamx.adagrad(1e-2, **kw),
            {"initial_accumulator_value": -0.1, "eps": -1e-7, "state_bits": 12},
        ),
        "scale_by_rss": (adamx.scale_by_rss, {"initial_accumulator_value": NAN}),
        "adadelta": (
            adamx.adadelta,
            {"rho": 1.0, "eps": 0.0, "weight_decay": -0.1, "learning_rate": -1.0},
        ),
        "scale_by_adadelta": (adamx.scale_by_adadelta, {"rho": -0.1}),
        "sm3": (lambda **kw: adamx.sm3(1e-2, **kw), {"momentum": 1.0}),
        "scale_by_sm3": (adamx.scale_by_sm3, {"b1": 1.0, "b2": 1.5, "eps": -1.0}),
        "madgrad": (
            lambda **kw: adamx.madgrad(1e-2, **kw),
            {"momentum": 1.0, "eps": 0.0, "weight_decay": -0.1},
        ),
        "scale_by_madgrad": (
            lambda **kw: adamx.scale_by_madgrad(**{"learning_rate": 1e-2, **kw}),
            {"learning_rate": -1.0, "momentum": -0.5},
        ),
        "yogi": (lambda **kw: adamx.yogi(1e-2, **kw), {"b1": 1.0, "eps": -1e-3}),
        "scale_by_yogi": (
            adamx.scale_by_yogi,
            {"b2": 1.0, "eps_root": -1.0, "initial_accumulator_value": -1e-6},
        ),
        "adan": (
            lambda **kw: adamx.adan(1e-2, **kw),
            {"b3": 1.0, "b2": -0.1, "eps_root": -1e-8, "weight_decay": -0.1},
        ),
        "novograd": (
            lambda **kw: adamx.novograd(1e-2, **kw),
            {"b2": 1.0, "eps": -1e-6, "weight_decay": -0.1},
        ),
    }
    cases = [
        case(
            lambda make=make, arg=arg, value=value: make(**{arg: value}),
            ValueError,
            names(arg, value) if value == value else rf"\b{arg}\b.*NaN",
            f"{name}-{arg}={value}",
        )
        for name, (make, values) in bad.items()
        for arg, value in values.items()
    ]
    return [
        *cases,
        case(
            lambda: adamx.madgrad(1e-2, state_bits=8),
            ValueError,
            r"scale_by_madgrad keeps its sums at full precision: state_bits "
            r"must be 32, got 8",
            "madgrad-8bit",
        ),
        case(
            lambda: adamx.adagrad("fast"),
            TypeError,
            r"\blearning_rate\b.*'fast'",
            "adagrad-learning_rate",
        ),
        case(
            lambda: adamx.scale_by_novograd(mu_dtype=jnp.int32),
            TypeError,
            r"\bmu_dtype\b.*int32",
            "scale_by_novograd-mu_dtype-int32",
        ),
        case(
            lambda: adamx.scale_by_novograd(mu_dtype=jnp.bfloat16, state_bits=8),
            ValueError,
            r"state_bits=8 sets how the moments are stored.*mu_dtype",
            "scale_by_novograd-mu_dtype-and-state_bits",
        ),
    ]


def _acprop_sam_plateau_cases():
    """ACProp's arguments and storage, SAM's optimizers and period, and
    reduce_on_plateau's factor, tolerances and counts."""
    acprop_bad = {"b1": [1.0, -0.1], "b2": [1.5], "eps": [-1e-8], "eps_root": [NAN]}
    cases = [
        case(
            lambda arg=arg, value=value: adamx.acprop(1e-3, **{arg: value}),
            ValueError,
            names(arg, value) if value == value else rf"\b{arg}\b.*NaN",
            f"acprop-{arg}={value}",
        )
        for arg, values in acprop_bad.items()
        for value in values
    ]
    cases += [
        case(
            lambda: adamx.acprop(1e-3, weight_decay=-0.1),
            ValueError,
            names("weight_decay", -0.1),
            "acprop-weight_decay",
        ),
        case(
            lambda: adamx.acprop("fast"),
            TypeError,
            r"\blearning_rate\b.*'fast'",
            "acprop-learning_rate",
        ),
        *[
            case(
                lambda bits=bits: adamx.scale_by_acprop(state_bits=bits),
                ValueError,
                rf"scale_by_acprop cannot store its moments in {bits} bits",
                f"scale_by_acprop-{bits}bit",
            )
            for bits in (8, 4)
        ],
        case(
            lambda: adamx.sam(adamx.sgd(0.1), "sgd"),
            TypeError,
            names("adv_optimizer", "sgd"),
            "sam-adv_optimizer",
        ),
        case(
            lambda: adamx.sam(None, adamx.sgd(0.1)),
            TypeError,
            names("optimizer", None),
            "sam-optimizer",
        ),
        *[
            case(
                lambda value=value: adamx.sam(
                    adamx.sgd(0.1), adamx.sgd(0.1), sync_period=value
                ),
                exc,
                names("sync_period", value),
                f"sam-sync_period={value}",
            )
            for value, exc in [(0, ValueError), (2.0, TypeError)]
        ],
        case(
            lambda: adamx.sam(adamx.sgd(0.1), adamx.sgd(0.1), opaque_mode=1),
            TypeError,
            names("opaque_mode", 1),
            "sam-opaque_mode",
        ),
        case(
            lambda: adamx.sam(adamx.sgd(0.1), adamx.sgd(0.1), batch_axis_name=0),
            TypeError,
            names("batch_axis_name", 0),
            "sam-batch_axis_name",
        ),
    ]
    plateau_bad = [
        ("factor", 1.0, ValueError),
        ("factor", 0.0, ValueError),
        ("rtol", 1.5, ValueError),
        ("atol", -1e-3, ValueError),
        ("patience", 0, ValueError),
        ("patience", 2.5, TypeError),
        ("cooldown", -1, ValueError),
        ("accumulation_size", 0, ValueError),
        ("min_scale", -0.1, ValueError),
    ]
    cases += [
        case(
            lambda arg=arg, value=value: adamx.reduce_on_plateau(**{arg: value}),
            exc,
            names(arg, value),
            f"reduce_on_plateau-{arg}={value}",
        )
        for arg, value, exc in plateau_bad
    ]
    cases.append(
        case(
            lambda: adamx.reduce_on_plateau(rtol=0.0, atol=0.0),
            ValueError,
            r"\brtol\b.*\batol\b.*got rtol=0\.0 and atol=0\.0",
            "reduce_on_plateau-rtol-and-atol-0",
        )
    )
    return cases


def _galore_privacy_cases():
    """GaLore and DP-SGD."""
    g_dims = adamx.GaLoreDimensionNumbers
    bad = [
        ("galore-rank", lambda v: adamx.galore(1e-2, rank=v), "rank", 0),
        (
            "galore-gap",
            lambda v: adamx.galore(1e-2, update_proj_gap=v),
            "update_proj_gap",
            -1,
        ),
        ("galore-scale", lambda v: adamx.galore(1e-2, scale=v), "scale", float("inf")),
        ("galore-scale-nan", lambda v: adamx.scale_by_galore(scale=v), "scale", NAN),
        ("galore-learning_rate", adamx.galore, "learning_rate", -0.1),
        (
            "galore-weight_decay",
            lambda v: adamx.galore(1e-2, weight_decay=v),
            "weight_decay",
            -0.1,
        ),
        (
            "galore-proj_type",
            lambda v: adamx.galore(1e-2, proj_type=v),
            "proj_type",
            "full",
        ),
        (
            "galore-state_bits",
            lambda v: adamx.galore(1e-2, state_bits=v),
            "state_bits",
            7,
        ),
        (
            "galore-state_bits-with-base",
            lambda v: adamx.galore(
                1e-2, base_optimizer=adamx.scale_by_lion(), state_bits=v
            ),
            "state_bits",
            8,
        ),
        (
            "dpsgd-l2_norm_clip",
            lambda v: adamx.dpsgd(1e-2, v, 1.0, 0),
            "l2_norm_clip",
            -1.0,
        ),
        (
            "dpsgd-noise_multiplier",
            lambda v: adamx.dpsgd(1e-2, 1.0, v, 0),
            "noise_multiplier",
            NAN,
        ),
        (
            "dpsgd-momentum",
            lambda v: adamx.dpsgd(1e-2, 1.0, 1.0, 0, momentum=v),
            "momentum",
            1.5,
        ),
        (
            "differentially_private_aggregate-noise_multiplier",
            lambda v: adamx.differentially_private_aggregate(1.0, v, key=0),
            "noise_multiplier",
            -0.5,
        ),
    ]
    types = [
        ("galore-rank-float", lambda v: adamx.galore(1e-2, rank=v), "rank", 2.5),
        ("galore-rank-bool", lambda v: adamx.scale_by_galore(rank=v), "rank", True),
        (
            "galore-base_optimizer",
            lambda v: adamx.galore(1e-2, base_optimizer=v),
            "base_optimizer",
            "adam",
        ),
        (
            "galore-dims-axis",
            lambda v: adamx.galore(1e-2, weight_dimension_numbers=g_dims(v, 1)),
            "weight_dimension_numbers.reduction_axis",
            0.5,
        ),
        (
            "galore-dims-tree",
            lambda v: adamx.galore(1e-2, weight_dimension_numbers={"w": v}),
            "weight_dimension_numbers",
            "rows",
        ),
        ("dpsgd-seed", lambda v: adamx.dpsgd(1e-2, 1.0, 1.0, v), "seed", 1.5),
        (
            "dpsgd-nesterov",
            lambda v: adamx.dpsgd(1e-2, 1.0, 1.0, 0, momentum=0.9, nesterov=v),
            "nesterov",
            "yes",
        ),
        (
            "differentially_private_aggregate-key",
            lambda v: adamx.differentially_private_aggregate(1.0, 1.0, key=v),
            "key",
            "abc",
        ),
    ]
    return [
        *[
            case(lambda make=make, v=v: make(v), ValueError, names(arg, v), cid)
            for cid, make, arg, v in bad
        ],
        *[
            case(lambda make=make, v=v: make(v), TypeError, names(arg, v), cid)
            for cid, make, arg, v in types
        ],
        case(
            lambda: adamx.differentially_private_aggregate(1.0, 1.0, key=0, seed=1),
            ValueError,
            r"one of key and seed.*key=0 and seed=1",
            "differentially_private_aggregate-key-and-seed",
        ),
    ]


CONSTRUCTION = [
    *_bad_beta_cases(),
    *_acprop_sam_plateau_cases(),
    *_lbfgs_linesearch_cases(),
    *_schedule_free_cases(),
    *_frontier_cases(),
    *_ademamix_cases(),
    *_adam_mini_cases(),
    *_cautious_cases(),
    *_prodigy_sophia_cases(),
    *_parameter_free_polyak_cases(),
    *_adagrad_relatives_cases(),
    *_layerwise_cases(),
    *_sign_optimistic_noise_cases(),
    *_galore_privacy_cases(),
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
    case(
        lambda: adamx.warmup_exponential_decay_schedule(0.0, 1.0, 5, 0, 0.5),
        ValueError,
        names("transition_steps", 0),
        "warmup_exponential_decay-transition_steps-0",
    ),
    case(
        lambda: adamx.warmup_exponential_decay_schedule(0.0, 1.0, 5, 3, 0.5, -1),
        ValueError,
        names("transition_begin", -1),
        "warmup_exponential_decay-transition_begin-negative",
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
    case(
        lambda: adamx.MultiSteps(adamx.sgd(0.1), 2, should_skip_update_fn=3),
        TypeError,
        names("should_skip_update_fn", 3),
        "MultiSteps-should_skip_update_fn-int",
    ),
    # control: apply_every, conditionally_*, freeze, selective_transform, ...
    case(lambda: adamx.apply_every(0), ValueError, names("k", 0), "apply_every-0"),
    case(lambda: adamx.apply_every(1.5), TypeError, names("k", 1.5), "apply_every-1.5"),
    case(
        lambda: adamx.conditionally_mask("adam", lambda t: t > 0),
        TypeError,
        names("inner", "adam"),
        "conditionally_mask-non-transformation",
    ),
    case(
        lambda: adamx.conditionally_transform(adamx.sgd(0.1), 3),
        TypeError,
        names("should_transform_fn", 3),
        "conditionally_transform-should_transform_fn-int",
    ),
    case(
        lambda: adamx.conditionally_mask(adamx.sgd(0.1), bool, forward_extra_args=1),
        TypeError,
        names("forward_extra_args", 1),
        "conditionally_mask-forward_extra_args-int",
    ),
    case(
        lambda: adamx.freeze({"w": 1, "b": True}),
        TypeError,
        names("mask", 1),
        "freeze-mask-int-leaf",
    ),
    case(
        lambda: adamx.selective_transform("adam", freeze_mask=True),
        TypeError,
        names("optimizer", "adam"),
        "selective_transform-non-transformation",
    ),
    case(
        lambda: adamx.selective_transform(adamx.sgd(0.1), freeze_mask={"w": "yes"}),
        TypeError,
        names("freeze_mask", "yes"),
        "selective_transform-freeze_mask-str-leaf",
    ),
    case(
        lambda: adamx.scale_gradient(jnp.ones(2), "half"),
        TypeError,
        names("scale", "half"),
        "scale_gradient-scale-str",
    ),
    case(
        lambda: adamx.scale_gradient(jnp.ones(2), NAN),
        ValueError,
        names("scale", NAN),
        "scale_gradient-scale-nan",
    ),
    case(
        lambda: adamx.skip_large_updates(jnp.ones(2), 0, None, "big"),
        TypeError,
        names("max_squared_norm", "big"),
        "skip_large_updates-max_squared_norm-str",
    ),
    # monitor: the factory passed where the transformation it makes belongs.
    case(
        lambda: adamx.monitor(adamx.sgd),
        TypeError,
        r"\binner\b.*\bgot <function sgd\b",
        "monitor-factory-not-transformation",
    ),
    case(lambda: adamx.monitor(None), TypeError, names("inner", None), "monitor-None"),
    # lookahead, snapshot, measure_with_ema, and the copies of the params
    *[
        case(
            lambda kw={**{"sync_period": 2, "slow_step_size": 0.5}, arg: value}: (
                adamx.lookahead(adamx.sgd(0.1), **kw)
            ),
            exc,
            names(arg, value),
            f"lookahead-{arg}={value!r}",
        )
        for arg, value, exc in [
            ("sync_period", 0, ValueError),
            ("sync_period", 2.5, TypeError),
            ("sync_period", jnp.array(-1), ValueError),
            ("slow_step_size", 1.5, ValueError),
            ("slow_step_size", -0.1, ValueError),
            ("slow_step_size", NAN, ValueError),
            ("reset_state", 1, TypeError),
        ]
    ],
    case(
        lambda: adamx.lookahead(adamx.sgd, 2, 0.5),
        TypeError,
        r"\bfast_optimizer\b.*\bgot <function sgd\b",
        "lookahead-factory-not-transformation",
    ),
    case(
        lambda: adamx.snapshot(3, adamx.global_norm),
        TypeError,
        names("measure_name", 3),
        "snapshot-measure_name",
    ),
    case(
        lambda: adamx.snapshot("norm", 3),
        TypeError,
        names("measure", 3),
        "snapshot-measure",
    ),
    case(
        lambda: adamx.measure_with_ema(None, 0.9),
        TypeError,
        names("measure", None),
        "measure_with_ema-measure",
    ),
    case(
        lambda: adamx.measure_with_ema(adamx.global_norm, 1.5),
        ValueError,
        names("decay", 1.5),
        "measure_with_ema-decay",
    ),
    case(
        lambda: adamx.incremental_update(PARAMS, PARAMS, 1.5),
        ValueError,
        names("step_size", 1.5),
        "incremental_update-step_size",
    ),
    case(
        lambda: adamx.periodic_update(PARAMS, PARAMS, 3, 0),
        ValueError,
        names("update_period", 0),
        "periodic_update-update_period",
    ),
    # stateless, stateless_with_tree_map, with_extra_args_support
    case(lambda: adamx.stateless(3), TypeError, names("f", 3), "stateless-f"),
    case(
        lambda: adamx.stateless_with_tree_map(None),
        TypeError,
        names("f", None),
        "stateless_with_tree_map-f",
    ),
    case(
        lambda: adamx.with_extra_args_support(adamx.sgd),
        TypeError,
        r"\btx\b.*\bgot <function sgd\b",
        "with_extra_args_support-factory",
    ),
    # inject_hyperparams
    case(
        lambda: adamx.inject_hyperparams(3),
        TypeError,
        names("inner_factory", 3),
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
    # inject_stateful_hyperparams, WrappedSchedule
    case(
        lambda: adamx.inject_stateful_hyperparams(3),
        TypeError,
        names("inner_factory", 3),
        "inject_stateful_hyperparams-non-callable",
    ),
    case(
        lambda: adamx.inject_stateful_hyperparams(adamx.adam, static_args="bogus"),
        ValueError,
        r"\bstatic_args\b.*\['bogus'\].*\badam\b",
        "inject_stateful_hyperparams-static_args-unknown",
    ),
    case(
        lambda: adamx.inject_stateful_hyperparams(adamx.adam, hyperparam_dtype="int8"),
        TypeError,
        names("hyperparam_dtype", "int8"),
        "inject_stateful_hyperparams-hyperparam_dtype-int8",
    ),
    case(
        lambda: adamx.inject_stateful_hyperparams(adamx.adam)(1e-3, b1=1.5),
        ValueError,
        names("b1", 1.5),
        "inject_stateful_hyperparams-b1",
    ),
    case(
        lambda: adamx.inject_stateful_hyperparams(adamx.sgd)(
            adamx.WrappedSchedule(lambda t: -0.1)
        ),
        ValueError,
        names("learning_rate", -0.1),
        "inject_stateful_hyperparams-negative-scheduled-lr",
    ),
    case(
        lambda: INJECTED_ADAM(adamx.WrappedSchedule(lambda t: 0.1)),
        TypeError,
        r"\blearning_rate\b.*stateful schedule.*inject_stateful_hyperparams",
        "inject_hyperparams-stateful-schedule",
    ),
    case(
        lambda: adamx.WrappedSchedule(0.1),
        TypeError,
        names("schedule_fn", 0.1),
        "WrappedSchedule-number",
    ),
    # flatten
    case(lambda: adamx.flatten(3), TypeError, names("inner", 3), "flatten-int"),
    # microbatching
    case(
        lambda: adamx.microbatch(jnp.sum, 0, 0),
        ValueError,
        names("microbatch_size", 0),
        "microbatch-microbatch_size-0",
    ),
    case(
        lambda: adamx.microbatch(jnp.sum, 0, 2.5),
        TypeError,
        names("microbatch_size", 2.5),
        "microbatch-microbatch_size-float",
    ),
    case(
        lambda: adamx.microbatch(jnp.sum, "x", 2),
        TypeError,
        names("argnums", "x"),
        "microbatch-argnums-str",
    ),
    case(
        lambda: adamx.microbatch(jnp.sum, 0, 2, "sum"),
        TypeError,
        names("accumulator", "sum"),
        "microbatch-accumulator-str",
    ),
    case(
        lambda: adamx.microbatch(jnp.sum, (0, 1), 2, in_axes=(0,)),
        ValueError,
        r"\bin_axes\b.*\bgot \(0,\)",
        "microbatch-in_axes-count",
    ),
    case(
        lambda: adamx.microbatch(jnp.sum, 0, 2, num_real_microbatches=-1),
        ValueError,
        names("num_real_microbatches", -1),
        "microbatch-num_real_microbatches-negative",
    ),
    case(
        lambda: adamx.microbatch(jnp.sum, 0, 2)(jnp.ones(5)),
        ValueError,
        r"batch size 5 must be divisible by microbatch_size=2",
        "microbatch-indivisible-batch",
    ),
    case(
        lambda: adamx.microbatching.micro_vmap(jnp.sum, out_axes=1),
        NotImplementedError,
        names("out_axes", 1),
        "micro_vmap-out_axes",
    ),
    case(
        lambda: adamx.microbatching.micro_grad(jnp.sum, has_aux=1),
        TypeError,
        names("has_aux", 1),
        "micro_grad-has_aux-int",
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
    case(
        lambda: adamx.tree.get(
            adamx.chain(adamx.scale_by_adam(), adamx.scale_by_adam()).init(PARAMS),
            "count",
        ),
        KeyError,
        r"multiple values for 'count', at \['\[0\]ScaleByAdamState.count', "
        r"'\[1\]ScaleByAdamState.count'\]; pass a filtering",
        "tree.get-several-matches",
    ),
    case(
        lambda: adamx.tree.set(adamx.adam(1e-3).init(PARAMS), cuont=0),
        KeyError,
        r"no values matching 'cuont'",
        "tree.set-unknown-name",
    ),
    case(
        lambda: adamx.tree.norm(PARAMS, ord=3),
        ValueError,
        names("ord", 3),
        "tree.norm-ord",
    ),
    case(
        lambda: adamx.tree.dtype(PARAMS, "widest"),
        ValueError,
        names("mixed_dtype_handler", "widest"),
        "tree.dtype-handler",
    ),
    case(
        lambda: adamx.tree.vdot({"a": jnp.ones(2)}, {"a": jnp.ones(3)}),
        ValueError,
        r"vdot needs leaves of one shape, got \(2,\) and \(3,\)",
        "tree.vdot-shapes",
    ),
    case(
        lambda: adamx.safe_increment(jnp.array(True)),
        ValueError,
        r"count must have an integer or floating dtype, got bool",
        "safe_increment-bool",
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
        lambda v: adamx.rprop(1e-2, min_step_size=v, max_step_size=2 * v),
        1e-3,
        id="rprop-step_size_bounds",
    ),
    pytest.param(lambda v: adamx.signum(1e-2, beta=v), 0.5, id="signum-beta"),
    pytest.param(
        lambda v: adamx.optimistic_gradient_descent(1e-2, beta=v), 0.5, id="ogd-beta"
    ),
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
