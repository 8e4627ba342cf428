"""The one table of optimizers that drives the shared checks.

Each entry: a factory of the adamx optimizer (taking storage arguments such as
``state_bits`` where its tags say so), a factory of Optax's twin with the same
hyperparameters (or None), and tags that say which shared checks apply.
Hyperparameters are chosen away from the defaults where that exercises more of
the code (weight decay, Nesterov, momentum, schedules).

Tags:
    optax        Optax has the same optimizer: compared in float64 and float32.
    state_bits   takes ``state_bits`` (32, 16, 8, 4) for its moments.
    elementwise  computes the same numbers on a ``FlatParams`` as on the tree.
    kernel       ``adamx.step`` runs it in place with the native CPU kernel.
    params       ``update`` needs the params.
    mu_dtype     takes ``mu_dtype`` (first-moment dtype).
    nu_dtype     takes ``nu_dtype`` (second-moment dtype, adamx only).
    schedule     its learning rate is a schedule.
    real         defined for real params only: refuses complex ones.
    variant      another configuration of an optimizer the table has: the
                 checks that hold for any optimizer (scan, pmap, sharding,
                 the flat layout, storage) take the others only.
    wrapped      a wrapper or combinator around an optimizer.
    lean         pmap, sharding, lax.scan and the random-tree properties are
                 checked on the other rows only (see LEAN).
    frontier     one of Adam's successors: at 8 bits its state is at most
                 0.4x the float32 state and it ends within 5% of its float32
                 run's loss.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.contrib

import adamx


class Entry(NamedTuple):
    ours: Callable[..., adamx.GradientTransformation]
    theirs: Callable[[], Any] | None
    tags: frozenset[str]

    def __call__(self, **storage: Any) -> tuple[Any, Any]:
        """``(adamx optimizer, Optax twin or None)``; ``storage`` goes to adamx's."""
        return self.ours(**storage), None if self.theirs is None else self.theirs()


def _pair(name: str, tags: str, **kw: Any) -> Entry:
    return Entry(
        lambda **storage: getattr(adamx, name)(**kw, **storage),
        lambda: getattr(optax, name)(**kw),
        frozenset(("optax", *tags.split())),
    )


ADAM = "state_bits elementwise mu_dtype nu_dtype"


def _default_float() -> Any:
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


WD_SCHEDULE = adamx.linear_schedule(0.1, 0.01, 50)
ADEMAMIX = dict(
    alpha=adamx.ademamix_alpha_schedule(5.0, 50),
    b3=adamx.ademamix_beta_schedule(0.9999, 50, beta_start=0.9),
    weight_decay=0.01,
)
# b1 = 0.9: a momentum sum at the default 0.99 changes by about 1% a step, too
# little for 8-bit codes (see docs/api/ademamix.md).
SIMPLIFIED_ADEMAMIX = dict(b1=0.9, alpha=2.0, weight_decay=0.01)

OPTIMIZERS: dict[str, Entry] = {
    "adam": _pair("adam", f"{ADAM} kernel", learning_rate=1e-2),
    "adam_nesterov_eps_root": _pair(
        "adam", f"{ADAM} variant", learning_rate=1e-2, eps_root=1e-8, nesterov=True
    ),
    "adam_schedule": _pair(
        "adam",
        f"{ADAM} kernel schedule",
        learning_rate=adamx.warmup_cosine_decay_schedule(0.0, 5e-2, 4, 40),
    ),
    "adamw": _pair(
        "adamw", f"{ADAM} kernel params", learning_rate=1e-2, weight_decay=0.1
    ),
    "adamw_schedules": _pair(
        "adamw",
        f"{ADAM} kernel params schedule",
        learning_rate=adamx.cosine_decay_schedule(3e-2, 40),
        weight_decay=WD_SCHEDULE,
    ),
    # adamw built by hand: the same stages, so the same kernel.
    "adamw_chain": Entry(
        lambda **storage: adamx.chain(
            adamx.scale_by_adam(**storage),
            adamx.add_decayed_weights(0.1),
            adamx.scale_by_learning_rate(1e-2),
        ),
        lambda: optax.adamw(1e-2, weight_decay=0.1),
        frozenset(
            {"optax", "state_bits", "elementwise", "kernel", "params", "variant"}
        ),
    ),
    "nadam": _pair("nadam", ADAM, learning_rate=1e-2, b1=0.8),
    "nadamw": _pair(
        "nadamw", f"{ADAM} params variant", learning_rate=1e-2, weight_decay=0.05
    ),
    "amsgrad": _pair("amsgrad", "state_bits elementwise mu_dtype", learning_rate=1e-2),
    "adamax": _pair("adamax", "state_bits elementwise", learning_rate=1e-2),
    "adamaxw": _pair(
        "adamaxw",
        "state_bits elementwise params variant",
        learning_rate=1e-2,
        weight_decay=0.1,
    ),
    "radam": _pair("radam", "state_bits elementwise", learning_rate=1e-2),
    "adabelief": _pair("adabelief", "state_bits elementwise", learning_rate=1e-2),
    # ACProp centres its variance on the new mean, as the authors do; Optax's
    # on the previous one (test_acprop.py maps one onto the other). Its moments
    # take 32 or 16 bits: it divides by the stored variance alone, which a
    # block code may round to zero.
    "acprop": Entry(
        lambda: adamx.acprop(1e-2, weight_decay=0.01),
        None,
        frozenset({"elementwise", "params", "frontier"}),
    ),
    # Adam-mini (no Optax twin): one second moment per output neuron of the
    # matrices, per leaf for the vector (the default partition).
    # At 1e-2 the shared quadratic is far from solved after 100 steps, and
    # 8-bit and float32 runs part by up to 20% either way (Adam's too); at 0.1
    # both solve it.
    "adam_mini": Entry(
        lambda **storage: adamx.adam_mini(0.1, weight_decay=0.1, **storage),
        None,
        frozenset({"state_bits", "params", "frontier"}),
    ),
    "adopt": Entry(
        lambda **storage: adamx.adopt(1e-2, **storage),
        lambda: optax.contrib.adopt(1e-2),
        frozenset(
            {"optax", "state_bits", "elementwise", "mu_dtype", "real", "frontier"}
        ),
    ),
    "adopt_nesterov": Entry(
        lambda **storage: adamx.adopt(1e-2, b2=0.99, nesterov=True, **storage),
        lambda: optax.contrib.adopt(1e-2, b2=0.99, nesterov=True),
        frozenset(
            {"optax", "state_bits", "elementwise", "mu_dtype", "real", "variant"}
        ),
    ),
    "adopt_no_clipping": Entry(
        lambda **storage: adamx.adopt(1e-2, use_clipping=False, **storage),
        lambda: optax.contrib.adopt(1e-2, use_clipping=False),
        frozenset({"optax", "elementwise", "mu_dtype", "real", "variant"}),
    ),
    "laprop": Entry(
        lambda **storage: adamx.laprop(1e-2, weight_decay=0.1, **storage),
        None,
        frozenset({"state_bits", "elementwise", "params", "frontier"}),
    ),
    "mars": Entry(
        lambda **storage: adamx.mars(1e-2, weight_decay=0.1, **storage),
        None,
        frozenset({"state_bits", "params", "frontier"}),
    ),
    "stable_adamw": Entry(
        lambda **storage: adamx.stable_adamw(1e-2, **storage),
        None,
        frozenset({"state_bits", "params", "frontier"}),
    ),
    # The paper's warmups of alpha and b3, over the shared checks' runs.
    "ademamix": Entry(
        lambda **storage: adamx.ademamix(1e-2, **ADEMAMIX, **storage),
        lambda: optax.contrib.ademamix(1e-2, **ADEMAMIX),
        frozenset({"optax", "state_bits", "elementwise", "params", "frontier"}),
    ),
    "simplified_ademamix": Entry(
        lambda **storage: adamx.simplified_ademamix(
            1e-3, **SIMPLIFIED_ADEMAMIX, **storage
        ),
        lambda: optax.contrib.simplified_ademamix(1e-3, **SIMPLIFIED_ADEMAMIX),
        frozenset({"optax", "state_bits", "elementwise", "params", "real", "frontier"}),
    ),
    # Schedule-free: Optax's twins equal the authors' without warm-up. Named
    # after their base optimizer (test_wrappers injects adamx.<first word>).
    # Not frontier: z stays at full precision, so 8 bits store 0.63x.
    "adamw_schedule_free": Entry(
        lambda **storage: adamx.schedule_free_adamw(1e-2, weight_decay=0.1, **storage),
        lambda: optax.contrib.schedule_free_adamw(1e-2, weight_decay=0.1),
        frozenset({"optax", "state_bits", "elementwise", "params"}),
    ),
    "sgd_schedule_free": Entry(
        lambda: adamx.schedule_free_sgd(1e-2, weight_decay=0.01),
        lambda: optax.contrib.schedule_free_sgd(1e-2, weight_decay=0.01),
        frozenset({"optax", "elementwise", "params"}),
    ),
    # Muon for the matrices, AdamW for the other leaves.
    "muon": Entry(
        lambda **storage: adamx.muon(1e-2, weight_decay=0.1, **storage),
        lambda: optax.contrib.muon(1e-2, weight_decay=0.1),
        frozenset({"optax", "state_bits", "params", "mu_dtype"}),
    ),
    # Prodigy estimates d from every 11th entry of each leaf (the authors'
    # memory saving: x_0 is kept exact), so it works leaf by leaf; its d_0 is
    # raised so that d reaches the problems' scale in the checks' few steps.
    "prodigy": Entry(
        lambda **storage: adamx.prodigy(
            1e-2, (0.9, 0.99), estim_lr0=0.3, slice_p=11, **storage
        ),
        None,
        frozenset({"state_bits", "params", "real", "frontier"}),
    ),
    # All entries, and Optax's bias correction: Optax's numbers.
    "prodigy_optax": Entry(
        lambda **storage: adamx.prodigy(
            0.5, weight_decay=0.1, use_bias_correction=True, **storage
        ),
        lambda: optax.contrib.prodigy(0.5, weight_decay=0.1),
        frozenset({"optax", "state_bits", "elementwise", "params", "real", "variant"}),
    ),
    # Parameter-free: DoG and DoWG (their first distance raised so that the
    # checks' few steps move the params), COCOB, and D-Adapted AdamW with
    # Optax's bias correction (the authors' numbers: test_parameter_free.py).
    # DoG and DoWG without their L2 decay here: a decayed half-precision
    # gradient is rounded eagerly but not always under jit, and their sum of
    # squared norms, a scalar, shows that (test_distance_over_gradients.py
    # decays).
    "dog": Entry(
        lambda: adamx.dog(1e-2, init_step=("heuristic", 0.1)),
        lambda: optax.contrib.dog(1e-2, init_step=("heuristic", 0.1)),
        frozenset({"optax", "elementwise", "params"}),
    ),
    "dowg": Entry(
        lambda: adamx.dowg(1e-2, init_estim_sq_dist=1.0),
        lambda: optax.contrib.dowg(1e-2, init_estim_sq_dist=1.0),
        frozenset({"optax", "elementwise", "params"}),
    ),
    "cocob": Entry(
        lambda: adamx.cocob(1e-2, alpha=10.0, weight_decay=0.01),
        lambda: optax.contrib.cocob(1e-2, alpha=10.0, weight_decay=0.01),
        frozenset({"optax", "elementwise", "params", "real"}),
    ),
    # Its moments keep Optax's names (exp_avg, ...), which test_storage's
    # reading of moments by name does not know: its state_bits are tested in
    # test_parameter_free.py.
    "dadapt_adamw": Entry(
        lambda: adamx.dadapt_adamw(
            1e-2, estim_lr0=0.3, weight_decay=0.1, use_bias_correction=True
        ),
        lambda: optax.contrib.dadapt_adamw(1e-2, estim_lr0=0.3, weight_decay=0.1),
        frozenset({"optax", "elementwise", "params", "real"}),
    ),
    # Sophia with the Gauss-Newton-Bartlett estimator on the gradients (the
    # shared checks pass no obj_fn; test_sophia.py runs Hutchinson's with
    # one), a refresh every other step, b1 = 0.9 and gamma = 0.1 so that not
    # every entry is clipped.
    "sophia": Entry(
        lambda **storage: adamx.sophia(
            1e-2,
            b1=0.9,
            b2=0.9,
            gamma=0.1,
            update_interval=2,
            hessian_diagonal_fn=(adamx.gauss_newton_bartlett_estimator_diag_hessian()),
            **storage,
        ),
        None,
        frozenset(
            {"state_bits", "elementwise", "params", "mu_dtype", "real", "frontier"}
        ),
    ),
    # SOAP (no Optax twin): a basis refresh every other step, so that the
    # shared checks' few steps cross several. Only dimensions of at most 4 are
    # rotated: in the shared trees their statistics have full rank. Where they
    # do not, an eigenvalue repeats, its eigenvectors are any basis of its
    # space, and a rounding difference (pmean, a sharded sum) picks another.
    "soap": Entry(
        lambda **storage: adamx.soap(
            1e-2, precondition_frequency=2, max_precondition_dim=4, **storage
        ),
        None,
        frozenset({"state_bits", "params", "real"}),
    ),
    # GaLore: Adam on rank-2 projections of the matrix (the 4 x 6 leaf), a
    # fresh SVD every 10 steps. No Optax twin here: Optax's galore reads the
    # dtype of a None leaf and fails on one; test_galore.py compares the two.
    # Its moments take r min(m, n) numbers and its projector, at full
    # precision, r max(m, n): state_bits (tested there) cannot bring the
    # state to 0.4x, and 33 x 131's moments are too few to quantize.
    "galore": Entry(
        lambda **storage: adamx.galore(
            1e-2, rank=2, update_proj_gap=10, scale=0.5, weight_decay=0.1, **storage
        ),
        None,
        frozenset({"params", "real"}),
    ),
    "lamb": _pair("lamb", "state_bits params", learning_rate=1e-2, weight_decay=0.01),
    # LARS with the decay masked to the matrices, a larger trust coefficient
    # than the default 1e-3 (so that 100 steps move the params) and Nesterov.
    # Not frontier: from the zero params of the 8-bit check, its steps (the
    # params' norm times 1e-3) leave the loss where it started.
    "lars": _pair(
        "lars",
        "state_bits params",
        learning_rate=1e-2,
        weight_decay=1e-3,
        weight_decay_mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p),
        trust_coefficient=0.1,
        eps=1e-8,
        momentum=0.8,
        nesterov=True,
    ),
    "fromage": _pair("fromage", "params frontier", learning_rate=1e-2),
    "lion": _pair(
        "lion",
        "state_bits elementwise params mu_dtype",
        learning_rate=1e-3,
        weight_decay=0.1,
    ),
    "sgd": _pair("sgd", "elementwise", learning_rate=1e-2),
    "sgd_momentum": _pair(
        "sgd", "state_bits elementwise", learning_rate=1e-2, momentum=0.9
    ),
    "sgd_nesterov": _pair(
        "sgd",
        "state_bits elementwise variant",
        learning_rate=1e-2,
        momentum=0.9,
        nesterov=True,
    ),
    "rmsprop": _pair("rmsprop", "state_bits elementwise", learning_rate=1e-2),
    # Centred, its moments take 32 or 16 bits only (tested in test_storage).
    "rmsprop_centered_momentum": _pair(
        "rmsprop",
        "elementwise",
        learning_rate=1e-2,
        centered=True,
        momentum=0.5,
        eps_in_sqrt=False,
    ),
    "adafactor": _pair(
        "adafactor", "params", learning_rate=1e-2, min_dim_size_to_factor=4
    ),
    "adafactor_momentum_decay": _pair(
        "adafactor",
        "params variant",
        learning_rate=1e-2,
        momentum=0.9,
        weight_decay_rate=0.01,
    ),
    # Steps from gradient signs (adamx/sign.py).
    "sign_sgd": _pair("sign_sgd", "elementwise", learning_rate=1e-2),
    "signum": _pair(
        "signum", "state_bits elementwise frontier", learning_rate=1e-2, beta=0.8
    ),
    # Optax's rprop returns each step one step late (its first is zero); adamx
    # follows the authors and torch.optim.Rprop, against which, and against
    # Optax's states, tests/test_sign.py checks it.
    "rprop": Entry(
        lambda **storage: adamx.rprop(1e-2, eta_plus=1.1, **storage),
        None,
        # Its state_bits are tested in tests/test_sign.py: the shared 8-bit
        # check compares losses near zero, where Rprop's run ends.
        frozenset({"elementwise", "real"}),
    ),
    # Optimistic gradients (adamx/optimistic.py).
    "optimistic_gradient_descent": _pair(
        "optimistic_gradient_descent",
        "elementwise state_bits",
        learning_rate=1e-2,
        alpha=0.5,
        beta=0.8,
    ),
    "optimistic_adam_v2": _pair(
        "optimistic_adam_v2",
        "state_bits elementwise mu_dtype frontier",
        learning_rate=1e-2,
        alpha=0.8,
        beta=0.5,
    ),
    # The deprecated interface: the rate is the optimistic stage's alpha.
    "optimistic_adam": _pair(
        "optimistic_adam",
        "state_bits elementwise mu_dtype variant",
        learning_rate=1e-2,
        optimism=0.02,
        nesterov=False,
    ),
    # Gradient noise (adamx/noise.py): Optax's draws for the same key.
    "noisy_sgd": _pair("noisy_sgd", "", learning_rate=1e-2, eta=0.01, key=0),
    # AdaGrad and its kin (adamx/adagrad.py), Adam's relatives
    # (adamx/relatives.py). Their state fields are Optax's (sum_of_squares,
    # e_g, m, ...), not the moment names test_storage reads, so only Yogi takes
    # the shared state_bits checks; test_adagrad.py and test_relatives.py run
    # the others at 16, 8 and 4 bits (MADGRAD's sums stay at 32).
    "adagrad": _pair(
        "adagrad",
        "elementwise frontier",
        learning_rate=1e-2,
        initial_accumulator_value=0.01,
    ),
    # Not frontier: its bfloat16 moments (the params' dtype) hold back
    # Kahan-summed bfloat16 params (test_precision), 15% from float32's run.
    "adadelta": _pair(
        "adadelta",
        "elementwise params real",
        learning_rate=1e-2,
        rho=0.8,
        eps=1e-4,
        weight_decay=0.01,
    ),
    "sm3": _pair("sm3", "real frontier", learning_rate=1e-2, momentum=0.5),
    # Optax rounds MADGRAD's lambda_k to float32 under float64 params, adamx
    # does not (the authors' numbers): compared in test_adagrad.py. Not
    # frontier: its sums stay at 32 bits (they give the params themselves).
    "madgrad": Entry(
        lambda: adamx.madgrad(1e-2, weight_decay=0.01),
        None,
        frozenset({"elementwise", "params", "real"}),
    ),
    "yogi": _pair(
        "yogi", "state_bits elementwise frontier", learning_rate=1e-2, b1=0.8
    ),
    # b2 = 0.5, where Optax's 1 - b2 and the authors' b2 (adamx's) agree;
    # b1 = 0.9, which 8-bit codes resolve (see docs/api/relatives.md).
    "adan": _pair(
        "adan",
        "elementwise params frontier",
        learning_rate=1e-2,
        b1=0.9,
        b2=0.5,
        weight_decay=0.01,
    ),
    "novograd": _pair(
        "novograd", "params frontier", learning_rate=1e-2, weight_decay=0.01
    ),
    # Wrappers and combinators around optimizers of the table.
    # Injected floats kept in the default float dtype by both (adamx keeps
    # float32 unless told otherwise, Optax the values' own dtype).
    "inject_hyperparams_adamw": Entry(
        lambda **storage: adamx.inject_hyperparams(
            adamx.adamw, hyperparam_dtype=_default_float()
        )(1e-2, weight_decay=0.1, **storage),
        lambda: optax.inject_hyperparams(
            optax.adamw, hyperparam_dtype=_default_float()
        )(1e-2, weight_decay=0.1),
        frozenset({"optax", "state_bits", "elementwise", "params", "wrapped"}),
    ),
    "clip_then_adam": Entry(
        lambda **storage: adamx.chain(
            adamx.clip_by_global_norm(0.5), adamx.adam(1e-2, **storage)
        ),
        lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2)),
        frozenset({"optax", "state_bits", "elementwise", "wrapped"}),
    ),
    "apply_if_finite_radam": Entry(
        lambda **storage: adamx.apply_if_finite(adamx.radam(1e-2, **storage), 3),
        lambda: optax.apply_if_finite(optax.radam(1e-2), 3),
        frozenset({"optax", "state_bits", "elementwise", "wrapped"}),
    ),
    # Optax's MultiSteps keeps a running mean of the micro-gradients, adamx
    # their sum, divided at the step: the same to rounding, not bit for bit.
    "multi_steps_adam": Entry(
        lambda **storage: adamx.MultiSteps(
            adamx.adam(1e-2, **storage), every_k_schedule=2
        ).gradient_transformation(),
        None,
        frozenset({"state_bits", "elementwise", "wrapped"}),
    ),
    # Mechanic learning the scale of Adam's steps.
    "mechanize_adam": Entry(
        lambda **storage: adamx.mechanize(adamx.adam(1e-2, **storage)),
        lambda: optax.contrib.mechanize(optax.adam(1e-2)),
        frozenset({"optax", "state_bits", "elementwise", "params", "real", "wrapped"}),
    ),
    # C-AdamW: AdamW whose steps against the gradient are masked.
    "cautious_adamw": Entry(
        lambda **storage: adamx.cautious(
            adamx.adamw(1e-2, weight_decay=0.1, **storage)
        ),
        None,
        frozenset({"state_bits", "params", "wrapped", "frontier"}),
    ),
}


def ids(*tags: str, without: tuple[str, ...] = ()) -> list[str]:
    """The entries that carry every one of ``tags`` and none of ``without``."""
    return [
        name
        for name, entry in OPTIMIZERS.items()
        if set(tags) <= entry.tags and not set(without) & entry.tags
    ]


#: What the checks that hold for any optimizer draw from: one entry per
#: optimizer, none of its variants, schedules or wrappers.
CORE = ("wrapped", "schedule", "variant")

# Optax's other optimizers, added for parity: the multi-device checks (pmap,
# sharding), lax.scan and the random-tree properties take the rows above
# them, which share their code paths (moment_transform, chain, the
# wrappers), so that CI stays under its 20 minutes.
LEAN = (
    "acprop",
    "adadelta",
    "adagrad",
    "adan",
    "cocob",
    "dadapt_adamw",
    "dog",
    "dowg",
    "fromage",
    "galore",
    "lars",
    "madgrad",
    "mechanize_adam",
    "noisy_sgd",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "rprop",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
)
for _name in LEAN:
    OPTIMIZERS[_name] = OPTIMIZERS[_name]._replace(
        tags=OPTIMIZERS[_name].tags | {"lean"}
    )
