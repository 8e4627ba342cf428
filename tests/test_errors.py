"""Bad input is refused early, with the right exception and a message that helps.

Construction-time checks come from one table of (callable, exception, regex);
each regex asks for the argument's name and the offending value as the message
echoes it (``got <repr>``). Then the errors that can only come at ``init`` or
``update`` time, and a check that traced hyperparameters are let through.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx

NAN = float("nan")
PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def names(arg, value):
    """A regex for a message that names ``arg`` and echoes ``value``."""
    return rf"\b{re.escape(arg)}\b.*\bgot {re.escape(repr(value))}"


def case(fn, exc, pattern, case_id, marks=()):
    return pytest.param(fn, exc, pattern, id=case_id, marks=marks)


def _bad_beta_cases():
    makers = {
        "adam": lambda **kw: adamx.adam(1e-3, **kw),
        "adamw": lambda **kw: adamx.adamw(1e-3, **kw),
        "nadam": lambda **kw: adamx.nadam(1e-3, **kw),
        "radam": lambda **kw: adamx.radam(1e-3, **kw),
        "amsgrad": lambda **kw: adamx.amsgrad(1e-3, **kw),
        "adamax": lambda **kw: adamx.adamax(1e-3, **kw),
        "lion": lambda **kw: adamx.lion(1e-3, **kw),
        "scale_by_adam": adamx.scale_by_adam,
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


CONSTRUCTION = [
    *_bad_beta_cases(),
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


@pytest.mark.parametrize(("make", "exc", "pattern"), CONSTRUCTION)
def test_bad_arguments_are_refused_at_construction(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


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
