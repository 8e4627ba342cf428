"""The one table of optimizers that drives the shared checks.

Each entry: an id, a factory ``() -> (adamx transformation, optax transformation)``
with the same hyperparameters. Hyperparameters are chosen away from the defaults
where that exercises more of the code (weight decay, Nesterov, momentum).
"""

import optax

import adamx


def _pair(name, **kw):
    return lambda: (getattr(adamx, name)(**kw), getattr(optax, name)(**kw))


OPTIMIZERS = {
    "adam": _pair("adam", learning_rate=1e-2),
    "adam_nesterov_eps_root": _pair(
        "adam", learning_rate=1e-2, eps_root=1e-8, nesterov=True
    ),
    "adamw": _pair("adamw", learning_rate=1e-2, weight_decay=0.1),
    "nadam": _pair("nadam", learning_rate=1e-2, b1=0.8),
    "nadamw": _pair("nadamw", learning_rate=1e-2, weight_decay=0.05),
    "amsgrad": _pair("amsgrad", learning_rate=1e-2),
    "adamax": _pair("adamax", learning_rate=1e-2),
    "adamaxw": _pair("adamaxw", learning_rate=1e-2, weight_decay=0.1),
    "radam": _pair("radam", learning_rate=1e-2),
    "adabelief": _pair("adabelief", learning_rate=1e-2),
    "lamb": _pair("lamb", learning_rate=1e-2, weight_decay=0.01),
    "lion": _pair("lion", learning_rate=1e-3, weight_decay=0.1),
    "sgd": _pair("sgd", learning_rate=1e-2),
    "sgd_momentum": _pair("sgd", learning_rate=1e-2, momentum=0.9),
    "sgd_nesterov": _pair("sgd", learning_rate=1e-2, momentum=0.9, nesterov=True),
    "rmsprop": _pair("rmsprop", learning_rate=1e-2),
    "rmsprop_centered_momentum": _pair(
        "rmsprop", learning_rate=1e-2, centered=True, momentum=0.5, eps_in_sqrt=False
    ),
    "adafactor": _pair("adafactor", learning_rate=1e-2, min_dim_size_to_factor=4),
    "adafactor_momentum_decay": _pair(
        "adafactor", learning_rate=1e-2, momentum=0.9, weight_decay_rate=0.01
    ),
}

# Optimizers with a mu_dtype argument (first-moment dtype).
MU_DTYPE = ["adam", "adamw", "nadam", "nadamw", "amsgrad", "lion"]
# Optimizers with an adamx-only nu_dtype argument (second-moment dtype).
NU_DTYPE = ["adam", "adamw", "nadam", "nadamw"]
