"""Tests for adamx.schedules and adamx.joined_schedules: agreement with Optax,
closed forms, bad input."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import joined_schedules, schedules

# The schedules of one curve each, and those made of phases.
PLAIN_NAMES = [
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
]
JOINED_NAMES = [
    "cosine_onecycle_schedule",
    "join_schedules",
    "linear_onecycle_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
PUBLIC_NAMES = sorted(PLAIN_NAMES + JOINED_NAMES)

# adamx's schedules, from both modules, under the names the builders below use.
ADAMX = SimpleNamespace(
    **{name: getattr(schedules, name) for name in PLAIN_NAMES},
    **{name: getattr(joined_schedules, name) for name in JOINED_NAMES},
)

# Every step from 0 past the end of each case below, plus far-away steps.
STEPS = [*range(0, 45), 100, 1_000, 123_456, 10**6]

_SGDR_CYCLES = [
    dict(init_value=0.0, peak_value=1.0, warmup_steps=3, decay_steps=10),
    dict(init_value=0.1, peak_value=0.5, warmup_steps=0, decay_steps=7, end_value=0.05),
    dict(init_value=0.0, peak_value=0.2, warmup_steps=2, decay_steps=9, exponent=2.0),
]


def _signed(module: ModuleType | SimpleNamespace) -> dict[str, bool]:
    return {"signed": True} if module is ADAMX else {}


# (id, builder): the builder gets adamx's schedules (ADAMX) or optax and builds
# the schedule with the function of the same name and arguments.
CASES: list[tuple[str, Callable[[Any], Callable[[Any], Any]]]] = [
    ("constant", lambda m: m.constant_schedule(0.3)),
    # Negative values: adamx asks for signed=True, Optax for nothing.
    ("constant_negative", lambda m: m.constant_schedule(-2.5, **_signed(m))),
    ("linear", lambda m: m.linear_schedule(1.0, 0.1, 10)),
    ("linear_begin", lambda m: m.linear_schedule(0.0, 2.0, 7, transition_begin=5)),
    ("linear_zero_steps", lambda m: m.linear_schedule(0.7, 0.1, 0, 3)),
    ("linear_increasing", lambda m: m.linear_schedule(-1.0, 3.0, 13, 1, **_signed(m))),
    ("polynomial_2", lambda m: m.polynomial_schedule(1.0, 0.01, 2, 20)),
    ("polynomial_half", lambda m: m.polynomial_schedule(0.5, 0.0, 0.5, 9, 4)),
    ("polynomial_zero_power", lambda m: m.polynomial_schedule(0.5, 0.2, 0.0, 9)),
    ("polynomial_zero_steps", lambda m: m.polynomial_schedule(0.5, 0.2, 3.0, 0)),
    ("cosine", lambda m: m.cosine_decay_schedule(1.0, 20)),
    ("cosine_alpha", lambda m: m.cosine_decay_schedule(0.3, 17, alpha=0.25)),
    ("cosine_exponent", lambda m: m.cosine_decay_schedule(2.0, 11, 0.1, exponent=3.0)),
    ("cosine_small_exponent", lambda m: m.cosine_decay_schedule(1.0, 9, 0.0, 0.3)),
    ("cosine_alpha_one", lambda m: m.cosine_decay_schedule(2.0, 5, 1.0)),
    ("cosine_one_step", lambda m: m.cosine_decay_schedule(2.0, 1)),
    ("warmup_cosine", lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, 5, 30)),
    (
        "warmup_cosine_full",
        lambda m: m.warmup_cosine_decay_schedule(0.1, 2.0, 7, 25, 0.2, 1.5),
    ),
    ("warmup_cosine_no_warmup", lambda m: m.warmup_cosine_decay_schedule(0.5, 1, 0, 9)),
    (
        "warmup_cosine_rising_end",
        lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, 4, 12, end_value=1.5),
    ),
    ("warmup_cosine_zero_peak", lambda m: m.warmup_cosine_decay_schedule(1.0, 0, 3, 8)),
    ("warmup_constant", lambda m: m.warmup_constant_schedule(0.0, 1.0, 8)),
    ("warmup_constant_down", lambda m: m.warmup_constant_schedule(1.0, 0.25, 3)),
    (
        "warmup_exponential",
        lambda m: m.warmup_exponential_decay_schedule(0.0, 1.0, 5, 3, 0.5),
    ),
    (
        "warmup_exponential_full",
        lambda m: m.warmup_exponential_decay_schedule(
            0.1, 2.0, 4, 3, 0.7, 2, True, 0.3
        ),
    ),
    (
        "warmup_exponential_no_warmup",
        lambda m: m.warmup_exponential_decay_schedule(0.5, 1.0, 0, 4, 0.8),
    ),
    (
        "warmup_exponential_ceiling",
        lambda m: m.warmup_exponential_decay_schedule(
            0.0, 0.2, 3, 2, 1.5, end_value=1.0
        ),
    ),
    (
        "warmup_exponential_falling_warmup",
        lambda m: m.warmup_exponential_decay_schedule(
            2.0, 1.0, 6, 5, 0.9, transition_begin=3
        ),
    ),
    ("exponential", lambda m: m.exponential_decay(1.0, 5, 0.5)),
    ("exponential_begin", lambda m: m.exponential_decay(2.0, 3, 0.9, 4)),
    ("exponential_staircase", lambda m: m.exponential_decay(1.0, 4, 0.1, 2, True)),
    (
        "exponential_floor",
        lambda m: m.exponential_decay(1.0, 2, 0.5, 1, False, end_value=0.05),
    ),
    (
        "exponential_ceiling",
        lambda m: m.exponential_decay(0.1, 3, 2.0, 0, True, end_value=1.5),
    ),
    ("exponential_rate_one", lambda m: m.exponential_decay(0.4, 3, 1.0, 0, False, 0.4)),
    ("piecewise_constant_none", lambda m: m.piecewise_constant_schedule(0.5)),
    (
        "piecewise_constant",
        lambda m: m.piecewise_constant_schedule(1.0, {10: 0.1, 3: 0.5, 20: 2.0}),
    ),
    (
        "piecewise_constant_zero",
        lambda m: m.piecewise_constant_schedule(0.2, {0: 0.5, 5: 0.0}),
    ),
    (
        "piecewise_linear",
        lambda m: m.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 9: 0.5}),
    ),
    (
        "piecewise_cosine",
        lambda m: m.piecewise_interpolate_schedule(
            "cosine", 0.3, {0: 2.0, 6: 0.25, 7: 4.0, 20: 0.0}
        ),
    ),
    (
        "piecewise_linear_none",
        lambda m: m.piecewise_interpolate_schedule("linear", 2.0),
    ),
    ("linear_onecycle", lambda m: m.linear_onecycle_schedule(40, 1.0)),
    (
        "linear_onecycle_args",
        lambda m: m.linear_onecycle_schedule(23, 0.5, 0.1, 0.5, 10.0, 100.0),
    ),
    ("linear_onecycle_short", lambda m: m.linear_onecycle_schedule(2, 3.0)),
    ("cosine_onecycle", lambda m: m.cosine_onecycle_schedule(40, 1.0)),
    (
        "cosine_onecycle_args",
        lambda m: m.cosine_onecycle_schedule(17, 0.5, 0.6, 5.0, 20.0),
    ),
    ("cosine_onecycle_short", lambda m: m.cosine_onecycle_schedule(1, 3.0)),
    (
        "join",
        lambda m: m.join_schedules(
            [
                m.linear_schedule(0.0, 1.0, 5),
                m.constant_schedule(1.0),
                m.cosine_decay_schedule(1.0, 10, 0.1),
            ],
            [5, 12],
        ),
    ),
    (
        "join_at_zero",
        lambda m: m.join_schedules(
            [m.constant_schedule(9.0), m.exponential_decay(1.0, 2, 0.5)], [0]
        ),
    ),
    ("join_single", lambda m: m.join_schedules([m.linear_schedule(1.0, 0.0, 6)], [])),
    ("sgdr", lambda m: m.sgdr_schedule(_SGDR_CYCLES)),
    ("sgdr_single", lambda m: m.sgdr_schedule(_SGDR_CYCLES[:1])),
]
CASE_IDS = [case_id for case_id, _ in CASES]
BUILDERS = [builder for _, builder in CASES]

# Optax returns strongly typed arrays from these; adamx keeps Python-scalar
# arguments weakly typed everywhere, so a bf16 update scaled by the value stays
# bf16.
STRONG_IN_OPTAX = (
    "piecewise_none",
    "piecewise_linear",
    "piecewise_cosine",
    "linear_onecycle",
    "cosine_onecycle",
)


# The ``x64`` fixture (float64 for the test, restored after) is in conftest.py,
# which also makes dtype promotion strict for the whole suite.


def _reference(fn: Callable[[Any], Any], step: int) -> jax.Array:
    """Optax's value; some Optax schedules need standard dtype promotion."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.asarray(fn(step))


def _assert_close(actual: Any, expected: Any, tol: float = 1e-10) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), tol, tol
    )


def _jit_values(fn: Callable[[Any], Any], steps: list[int]) -> np.ndarray:
    jitted = jax.jit(fn)
    return np.array([jitted(jnp.asarray(t, jnp.int32)) for t in steps])


def test_public_names() -> None:
    assert sorted(schedules.__all__) == PLAIN_NAMES
    assert sorted(joined_schedules.__all__) == JOINED_NAMES
    for name in PUBLIC_NAMES:
        assert callable(getattr(ADAMX, name)), name
        assert getattr(adamx, name) is getattr(ADAMX, name), name


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_signature_matches_optax(name: str) -> None:
    ours = dict(inspect.signature(getattr(ADAMX, name)).parameters)
    theirs = inspect.signature(getattr(optax, name)).parameters
    # adamx's one addition: a keyword-only flag for values that may be negative.
    signed = ours.pop("signed", None)
    if name not in ("join_schedules", "sgdr_schedule"):
        assert signed is not None and signed.kind is signed.KEYWORD_ONLY
        assert signed.default is False
    assert list(ours) == list(theirs)
    for param in ours:
        assert ours[param].default == theirs[param].default, param
        assert ours[param].kind == theirs[param].kind, param


def test_every_public_name_is_compared() -> None:
    covered = set()
    for builder in BUILDERS:
        code = builder.__code__
        covered.update(n for n in code.co_names if n in PUBLIC_NAMES)
    assert covered == set(PUBLIC_NAMES)


@pytest.mark.parametrize("builder", BUILDERS, ids=CASE_IDS)
def test_matches_optax_in_float64(x64: None, builder: Callable) -> None:
    ours, theirs = builder(ADAMX), builder(optax)
    for t in STEPS:
        value = ours(t)
        _assert_close(value, _reference(theirs, t))
        assert jnp.asarray(value).dtype == jnp.float64, t


@pytest.mark.parametrize("builder", BUILDERS, ids=CASE_IDS)
def test_matches_optax_under_jit_int32_step(x64: None, builder: Callable) -> None:
    # The reference is Optax on Python ints: given an int32 step, some Optax
    # schedules compute in float32 even under x64, where adamx casts the step to
    # the default float dtype.
    ours, theirs = builder(ADAMX), builder(optax)
    expected = np.array([_reference(theirs, t) for t in STEPS], np.float64)
    _assert_close(_jit_values(ours, STEPS), expected)


@pytest.mark.parametrize(("case_id", "builder"), CASES, ids=CASE_IDS)
def test_matches_optax_in_float32(case_id: str, builder: Callable) -> None:
    ours, theirs = builder(ADAMX), builder(optax)
    steps = [t for t in STEPS if t < 2**24]
    for t in steps:
        value, reference = jnp.asarray(ours(t)), _reference(theirs, t)
        _assert_close(value, reference, 1e-6)
        assert value.dtype == reference.dtype == jnp.float32
        if not case_id.startswith(STRONG_IN_OPTAX):
            assert value.weak_type == reference.weak_type, t
    jitted = jax.jit(ours)
    for t in steps:
        value = jitted(jnp.asarray(t, jnp.int32))
        _assert_close(value, _reference(theirs, t), 1e-6)
        assert value.dtype == jnp.float32


@pytest.mark.parametrize("builder", BUILDERS, ids=CASE_IDS)
def test_strict_dtype_promotion(builder: Callable) -> None:
    fn = builder(ADAMX)
    steps = [0, 1, 5, 17, 40, 1_000]
    with jax.numpy_dtype_promotion("standard"):
        expected = _jit_values(fn, steps)
    with jax.numpy_dtype_promotion("strict"):
        _assert_close(_jit_values(fn, steps), expected, 0.0)
        _assert_close([fn(t) for t in steps], expected, 1e-6)


@pytest.mark.parametrize("builder", BUILDERS, ids=CASE_IDS)
def test_array_of_steps(builder: Callable) -> None:
    fn = builder(ADAMX)
    steps = jnp.arange(50, dtype=jnp.int32)
    expected = np.array([fn(t) for t in range(50)])
    _assert_close(jnp.broadcast_to(fn(steps), steps.shape), expected, 1e-6)
    _assert_close(jax.vmap(fn)(steps), expected, 1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        schedules.polynomial_schedule(1.0, 0.25, 0.2, 1_010),
        schedules.cosine_decay_schedule(1.0, 1_010, 0.25, exponent=0.2),
        joined_schedules.warmup_cosine_decay_schedule(0.0, 1.0, 10, 1_010, 0.25, 0.2),
    ],
    ids=["polynomial", "cosine", "warmup_cosine"],
)
def test_end_value_is_exact_under_jit(fn: Callable[[Any], Any]) -> None:
    # A fraction that rounds to 1 - 2**-53 instead of 1 at the last step would
    # leave 1e-16 ** 0.2 = 6e-4 of the way to go.
    jitted = jax.jit(fn)
    for step in (1_010, 1_011):
        assert float(jitted(jnp.int32(step))) == 0.25
        assert float(fn(step)) == 0.25


def test_steps_beyond_int32_with_python_ints() -> None:
    far = 10**12
    assert float(schedules.linear_schedule(1.0, 0.25, 10)(far)) == 0.25
    assert float(schedules.cosine_decay_schedule(1.0, 10, 0.5)(far)) == 0.5
    pc = schedules.piecewise_constant_schedule(1.0, {2**40: 0.5})
    assert float(pc(2**40 - 1)) == 1.0
    assert float(pc(2**40)) == 0.5
    join = joined_schedules.join_schedules(
        [schedules.constant_schedule(1.0), schedules.constant_schedule(2.0)], [2**35]
    )
    assert float(join(2**35 - 1)) == 1.0
    assert float(join(2**35)) == 2.0


def test_boundary_exact_above_float32_integers() -> None:
    # 2**24 + 1 is not a float32; the comparison must be done on the integer.
    boundary = 2**24 + 1
    fn = jax.jit(schedules.piecewise_constant_schedule(1.0, {boundary: 0.5}))
    assert float(fn(jnp.int32(boundary - 1))) == 1.0
    assert float(fn(jnp.int32(boundary))) == 0.5
    ramp = jax.jit(schedules.linear_schedule(0.0, 1.0, 4, transition_begin=boundary))
    assert float(ramp(jnp.int32(boundary + 1))) == 0.25


# ---------------------------------------------------------------------------
# Closed forms, independent of Optax.


@pytest.mark.parametrize(("init", "alpha"), [(1.0, 0.0), (0.3, 0.2), (2.0, 1.0)])
def test_cosine_decay_midpoint(x64: None, init: float, alpha: float) -> None:
    fn = schedules.cosine_decay_schedule(init, 10, alpha=alpha)
    _assert_close(fn(0), init)
    _assert_close(fn(5), (init + alpha * init) / 2)
    _assert_close(fn(10), alpha * init)
    _assert_close(fn(500), alpha * init)


def test_cosine_decay_exponent(x64: None) -> None:
    fn = schedules.cosine_decay_schedule(1.0, 12, alpha=0.0, exponent=2.0)
    _assert_close(fn(4), (0.5 * (1 + math.cos(math.pi / 3))) ** 2)


def test_warmup_cosine_closed_form(x64: None) -> None:
    init, peak, end, warmup, total = 0.1, 1.0, 0.2, 4, 24
    fn = joined_schedules.warmup_cosine_decay_schedule(init, peak, warmup, total, end)
    _assert_close(fn(0), init)
    _assert_close(fn(2), (init + peak) / 2)
    _assert_close(fn(warmup), peak)
    _assert_close(fn(warmup + (total - warmup) // 2), (peak + end) / 2)
    _assert_close(fn(total), end)
    _assert_close(fn(10 * total), end)


def test_polynomial_closed_form(x64: None) -> None:
    fn = schedules.polynomial_schedule(3.0, 1.0, power=3, transition_steps=8)
    for t in range(12):
        _assert_close(fn(t), 1.0 + 2.0 * (1 - min(t, 8) / 8) ** 3)


def test_exponential_closed_form(x64: None) -> None:
    fn = schedules.exponential_decay(2.0, 4, 0.5, transition_begin=3)
    for t in range(20):
        _assert_close(fn(t), 2.0 * 0.5 ** (max(t - 3, 0) / 4))
    stairs = schedules.exponential_decay(
        2.0, 4, 0.5, transition_begin=3, staircase=True
    )
    for t in range(20):
        _assert_close(stairs(t), 2.0 * 0.5 ** (max(t - 3, 0) // 4))


def test_warmup_exponential_closed_form(x64: None) -> None:
    init, peak, warmup, steps, rate, begin, end = 0.2, 1.0, 4, 3, 0.5, 2, 0.1
    fn = joined_schedules.warmup_exponential_decay_schedule(
        init, peak, warmup, steps, rate, begin, end_value=end
    )
    for t in range(30):
        if t < warmup:
            expected = init + (peak - init) * t / warmup
        else:
            expected = max(peak * rate ** (max(t - warmup - begin, 0) / steps), end)
        _assert_close(fn(t), expected)


def test_piecewise_constant_closed_form() -> None:
    fn = schedules.piecewise_constant_schedule(8.0, {3: 0.5, 6: 0.25})
    assert [float(fn(t)) for t in range(8)] == [8, 8, 8, 4, 4, 4, 1, 1]


def test_onecycle_phases(x64: None) -> None:
    fn = joined_schedules.linear_onecycle_schedule(100, 2.0, 0.3, 0.8, 4.0, 10.0)
    _assert_close(fn(0), 0.5)
    _assert_close(fn(30), 2.0)
    _assert_close(fn(80), 0.5)
    _assert_close(fn(100), 0.05)
    _assert_close(fn(55), 1.25)
    cos = joined_schedules.cosine_onecycle_schedule(100, 2.0, 0.3, 4.0, 10.0)
    _assert_close(cos(15), (0.5 + 2.0) / 2)
    _assert_close(cos(30), 2.0)
    _assert_close(cos(65), (2.0 + 0.05) / 2)
    _assert_close(cos(100), 0.05)


def test_sgdr_restarts(x64: None) -> None:
    cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=6)
    fn = joined_schedules.sgdr_schedule([cycle, cycle, cycle])
    first = [float(fn(t)) for t in range(6)]
    for k in (1, 2):
        _assert_close([fn(6 * k + t) for t in range(6)], first)


# ---------------------------------------------------------------------------
# Traced arguments are let through.


def test_traced_values_are_accepted() -> None:
    def build_and_eval(init: jax.Array, rate: jax.Array, peak: jax.Array) -> Any:
        fns = [
            schedules.constant_schedule(init),
            schedules.linear_schedule(init, 0.0, 10),
            schedules.polynomial_schedule(init, 0.0, rate, 10),
            schedules.cosine_decay_schedule(init, 10, alpha=rate),
            schedules.exponential_decay(init, 3, rate, end_value=init / 4),
            schedules.exponential_decay(init, 3, 1 / rate, end_value=init * 4),
            joined_schedules.warmup_cosine_decay_schedule(
                0.0, peak, 3, 10, end_value=init
            ),
            joined_schedules.warmup_exponential_decay_schedule(
                0.0, peak, 3, 4, rate, end_value=init / 4
            ),
            schedules.piecewise_constant_schedule(init, {3: 1.0}),
            joined_schedules.linear_onecycle_schedule(20, peak),
        ]
        return jnp.stack([jnp.asarray(fn(7), jnp.float32) for fn in fns])

    args = (jnp.float32(0.8), jnp.float32(0.5), jnp.float32(2.0))
    traced = jax.jit(build_and_eval)(*args)
    eager = build_and_eval(*args)
    _assert_close(traced, eager, 1e-6)


# ---------------------------------------------------------------------------
# Bad input is refused when the schedule is built.

NAN = float("nan")
INF = math.inf


def _one(count: Any) -> float:
    del count
    return 1.0


CYCLE = _SGDR_CYCLES[0]

# (factory, positional args, keyword args, error, pattern the message must match)
# fmt: off
NEGATIVE = "must be >= 0, got -1.0: a learning rate, weight decay or momentum"
BAD_INPUTS: list[tuple[str, tuple, dict, type[Exception], str]] = [
    # A negative value, where a learning rate is asked for.
    ("constant_schedule", (-1.0,), {}, ValueError, f"value {NEGATIVE}"),
    ("linear_schedule", (-1.0, 0.0, 5), {}, ValueError, f"init_value {NEGATIVE}"),
    ("polynomial_schedule", (1.0, -1.0, 2, 5), {}, ValueError,
     f"end_value {NEGATIVE}"),
    ("cosine_decay_schedule", (-1.0, 5), {}, ValueError, f"init_value {NEGATIVE}"),
    ("exponential_decay", (1.0, 5, 0.5), {"end_value": -1.0}, ValueError,
     f"end_value {NEGATIVE}"),
    ("warmup_constant_schedule", (0.0, -1.0, 5), {}, ValueError,
     f"peak_value {NEGATIVE}"),
    ("warmup_cosine_decay_schedule", (0.0, -1.0, 10, 100), {}, ValueError,
     f"peak_value {NEGATIVE}"),
    ("piecewise_constant_schedule", (-1.0, {5: 0.5}), {}, ValueError,
     f"init_value {NEGATIVE}"),
    ("piecewise_interpolate_schedule", ("linear", -1.0, {5: 0.5}), {}, ValueError,
     f"init_value {NEGATIVE}"),
    ("linear_onecycle_schedule", (10, -1.0), {}, ValueError, f"peak_value {NEGATIVE}"),
    ("cosine_onecycle_schedule", (10, -1.0), {}, ValueError, f"peak_value {NEGATIVE}"),
    ("sgdr_schedule", ([dict(init_value=0.0, peak_value=-1.0, warmup_steps=1,
                             decay_steps=3)],), {}, ValueError,
     rf"cosine_kwargs\[0\]: peak_value {NEGATIVE}"),
    ("constant_schedule", (1.0,), {"signed": 1}, TypeError, "signed must be a bool"),
    ("constant_schedule", (NAN,), {}, ValueError, "value must not be NaN"),
    ("constant_schedule", (INF,), {}, ValueError, "value must be finite, got inf"),
    ("constant_schedule", ("0.1",), {}, TypeError, "value must be a real number"),
    ("polynomial_schedule", (NAN, 0, 1, 5), {}, ValueError, "init_value"),
    ("polynomial_schedule", (1, NAN, 1, 5), {}, ValueError, "end_value"),
    ("polynomial_schedule", (1, 0, -1, 5), {}, ValueError, "power must be .*got -1"),
    ("polynomial_schedule", (1, 0, NAN, 5), {}, ValueError, "power"),
    ("polynomial_schedule", (1, 0, 1, -5), {}, ValueError,
     "transition_steps must be >= 0, got -5"),
    ("polynomial_schedule", (1, 0, 1, 5.0), {}, TypeError, "transition_steps"),
    ("linear_schedule", (1.0, 0.0, 5, -1), {}, ValueError,
     "transition_begin must be >= 0, got -1"),
    ("linear_schedule", (1.0, 0.0, -1), {}, ValueError, "transition_steps"),
    ("cosine_decay_schedule", (1.0, 0), {}, ValueError,
     "decay_steps must be > 0, got 0"),
    ("cosine_decay_schedule", (1.0, 10.0), {}, TypeError, "decay_steps"),
    ("cosine_decay_schedule", (1.0, 5, 1.5), {}, ValueError,
     r"alpha must be in \[0.0, 1.0\], got 1.5"),
    ("cosine_decay_schedule", (1.0, 5, -0.1), {}, ValueError, "alpha"),
    ("cosine_decay_schedule", (1.0, 5, 0.0, -1.0), {}, ValueError, "exponent"),
    ("cosine_decay_schedule", (NAN, 5), {}, ValueError, "init_value"),
    ("warmup_cosine_decay_schedule", (0, 1, 10, 10), {}, ValueError,
     "decay_steps must be > warmup_steps=10 .*got 10"),
    ("warmup_cosine_decay_schedule", (0, 1, -1, 10), {}, ValueError, "warmup_steps"),
    ("warmup_cosine_decay_schedule", (0, 1, 0, 0), {}, ValueError, "decay_steps"),
    ("warmup_cosine_decay_schedule", (NAN, 1, 1, 10), {}, ValueError, "init_value"),
    ("warmup_cosine_decay_schedule", (0, NAN, 1, 10), {}, ValueError, "peak_value"),
    ("warmup_cosine_decay_schedule", (0, 1, 1, 10, NAN), {}, ValueError, "end_value"),
    ("warmup_cosine_decay_schedule", (0, 0, 1, 10, 0.1), {}, ValueError,
     "end_value must be 0 when peak_value is 0, got 0.1"),
    ("warmup_cosine_decay_schedule", (0, 1, 1, 10, 0, -2), {}, ValueError,
     "exponent"),
    ("warmup_constant_schedule", (0.0, 1.0, 0), {}, ValueError,
     "warmup_steps must be > 0, got 0"),
    ("warmup_constant_schedule", (0.0, NAN, 5), {}, ValueError, "peak_value"),
    ("warmup_constant_schedule", (NAN, 1.0, 5), {}, ValueError, "init_value"),
    ("exponential_decay", (1.0, 0, 0.5), {}, ValueError,
     "transition_steps must be > 0, got 0"),
    ("exponential_decay", (1.0, 5, 0.0), {}, ValueError,
     r"decay_rate must be in \(0.0, inf\), got 0.0"),
    ("exponential_decay", (1.0, 5, -0.5), {}, ValueError, "decay_rate"),
    ("exponential_decay", (1.0, 5, NAN), {}, ValueError, "decay_rate"),
    ("exponential_decay", (1.0, 5, 0.5, -2), {}, ValueError, "transition_begin"),
    ("exponential_decay", (1.0, 5, 0.5), {"staircase": "yes"}, TypeError,
     "staircase"),
    ("exponential_decay", (1.0, 5, 0.5), {"end_value": NAN}, ValueError,
     "end_value"),
    ("exponential_decay", (1.0, 5, 0.5), {"end_value": 2.0}, ValueError,
     "end_value must be <= init_value=1.0 .*got 2.0"),
    ("exponential_decay", (1.0, 5, 2.0), {"end_value": 0.5}, ValueError,
     "end_value must be >= init_value=1.0 .*got 0.5"),
    ("exponential_decay", (NAN, 5, 0.5), {}, ValueError, "init_value"),
    ("warmup_exponential_decay_schedule", (-1.0, 1.0, 5, 3, 0.5), {}, ValueError,
     f"init_value {NEGATIVE}"),
    ("warmup_exponential_decay_schedule", (0.0, -1.0, 5, 3, 0.5), {}, ValueError,
     f"peak_value {NEGATIVE}"),
    ("warmup_exponential_decay_schedule", (0.0, NAN, 5, 3, 0.5), {}, ValueError,
     "peak_value must not be NaN"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, -1, 3, 0.5), {}, ValueError,
     "warmup_steps must be >= 0, got -1"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 2.5, 3, 0.5), {}, TypeError,
     "warmup_steps"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 5, 0, 0.5), {}, ValueError,
     "transition_steps must be > 0, got 0"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 5, 3, 0.0), {}, ValueError,
     r"decay_rate must be in \(0.0, inf\), got 0.0"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 5, 3, 0.5, -1), {}, ValueError,
     "transition_begin must be >= 0, got -1"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 5, 3, 0.5),
     {"staircase": "yes"}, TypeError, "staircase"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 5, 3, 0.5),
     {"end_value": 2.0}, ValueError,
     "end_value must be <= peak_value=1.0 .*got 2.0"),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 5, 3, 2.0),
     {"end_value": 0.5}, ValueError,
     "end_value must be >= peak_value=1.0 .*got 0.5"),
    ("piecewise_constant_schedule", (1.0, {5: -0.1}), {}, ValueError,
     r"boundaries_and_scales\[5\] must be .*got -0.1"),
    ("piecewise_constant_schedule", (1.0, {5: NAN}), {}, ValueError,
     "boundaries_and_scales"),
    ("piecewise_constant_schedule", (1.0, {-5: 0.1}), {}, ValueError,
     "boundaries_and_scales key must be >= 0, got -5"),
    ("piecewise_constant_schedule", (1.0, {5.5: 0.1}), {}, TypeError,
     "boundaries_and_scales key"),
    ("piecewise_constant_schedule", (1.0, [(5, 0.1)]), {}, TypeError,
     "boundaries_and_scales must be a dict"),
    ("piecewise_constant_schedule", (NAN,), {}, ValueError, "init_value"),
    ("piecewise_interpolate_schedule", ("quadratic", 1.0), {}, ValueError,
     "interpolate_type must be 'linear' or 'cosine', got 'quadratic'"),
    ("piecewise_interpolate_schedule", ("cosine", 1.0, {3: -1}), {}, ValueError,
     "boundaries_and_scales"),
    ("piecewise_interpolate_schedule", ("linear", 1.0, {-3: 1}), {}, ValueError,
     "boundaries_and_scales key"),
    ("piecewise_interpolate_schedule", ("linear", NAN), {}, ValueError,
     "init_value"),
    ("join_schedules", ([_one, 0.1], [3]), {}, TypeError,
     r"schedules\[1\] must be a callable"),
    ("join_schedules", ([], []), {}, ValueError, "schedules must hold"),
    ("join_schedules", (_one, []), {}, TypeError, "schedules must be a sequence"),
    ("join_schedules", ([_one], [3]), {}, ValueError,
     r"boundaries must have len\(schedules\) - 1 = 0 entries, got 1"),
    ("join_schedules", ([_one, _one, _one], [3]), {}, ValueError, "boundaries"),
    ("join_schedules", ([_one, _one, _one], [5, 3]), {}, ValueError,
     r"boundaries must be strictly increasing, got \[5, 3\]"),
    ("join_schedules", ([_one, _one, _one], [3, 3]), {}, ValueError,
     "boundaries must be strictly increasing"),
    ("join_schedules", ([_one, _one], [-1]), {}, ValueError,
     r"boundaries\[0\] must be >= 0"),
    ("join_schedules", ([_one, _one], [2.5]), {}, TypeError, r"boundaries\[0\]"),
    ("linear_onecycle_schedule", (0, 1.0), {}, ValueError,
     "transition_steps must be > 0, got 0"),
    ("linear_onecycle_schedule", (10, 1.0, 0.0), {}, ValueError,
     r"pct_start must be in \(0.0, 1.0\), got 0.0"),
    ("linear_onecycle_schedule", (10, 1.0, 1.0), {}, ValueError, "pct_start"),
    ("linear_onecycle_schedule", (10, 1.0, 0.5, 0.4), {}, ValueError,
     r"pct_final must be in \(pct_start=0.5, 1\), got 0.4"),
    ("linear_onecycle_schedule", (10, 1.0, 0.5, 1.0), {}, ValueError, "pct_final"),
    ("linear_onecycle_schedule", (1, 1.0), {}, ValueError,
     "transition_steps=1 is too short"),
    ("linear_onecycle_schedule", (10, 1.0), {"div_factor": 0.0}, ValueError,
     "div_factor"),
    ("linear_onecycle_schedule", (10, 1.0), {"final_div_factor": -1.0}, ValueError,
     "final_div_factor"),
    ("linear_onecycle_schedule", (10, NAN), {}, ValueError, "peak_value"),
    ("cosine_onecycle_schedule", (0, 1.0), {}, ValueError, "transition_steps"),
    ("cosine_onecycle_schedule", (10, 1.0, 1.2), {}, ValueError, "pct_start"),
    ("cosine_onecycle_schedule", (10, 1.0), {"div_factor": 0.0}, ValueError,
     "div_factor"),
    ("cosine_onecycle_schedule", (10, 1.0), {"final_div_factor": INF}, ValueError,
     "final_div_factor"),
    ("cosine_onecycle_schedule", (10, NAN), {}, ValueError, "peak_value"),
    ("sgdr_schedule", ([],), {}, ValueError, "cosine_kwargs must hold"),
    ("sgdr_schedule", (CYCLE,), {}, TypeError, "cosine_kwargs must be a sequence"),
    ("sgdr_schedule", ([CYCLE, 3],), {}, TypeError,
     r"cosine_kwargs\[1\] must be a dict"),
    ("sgdr_schedule", ([CYCLE, dict(CYCLE, decay_steps=2)],), {}, ValueError,
     r"cosine_kwargs\[1\]: decay_steps must be > warmup_steps=3"),
    ("sgdr_schedule", ([dict(CYCLE, alpha=0.5)],), {}, TypeError,
     r"cosine_kwargs\[0\]: .*alpha"),
]
# fmt: on


@pytest.mark.parametrize(
    ("factory", "args", "kwargs", "error", "match"),
    BAD_INPUTS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(BAD_INPUTS)],
)
def test_bad_input_is_refused(
    factory: str, args: tuple, kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        getattr(ADAMX, factory)(*args, **kwargs)


def test_every_factory_refuses_something() -> None:
    refused = {case[0] for case in BAD_INPUTS}
    assert refused == set(PUBLIC_NAMES)


def test_zero_lengths_that_optax_documents_still_work() -> None:
    # Optax defines transition_steps=0 as "hold init_value" and warmup_steps=0
    # as "no warm-up"; both are kept.
    assert float(schedules.linear_schedule(0.7, 0.1, 0)(100)) == pytest.approx(0.7)
    fn = joined_schedules.warmup_cosine_decay_schedule(0.0, 1.0, 0, 10)
    assert float(fn(0)) == 1.0


def test_cosine_decay_takes_decay_steps_past_int32_under_jit():
    # As Optax's test_with_giant_int_steps: a traced int32 step, and a length
    # no int32 holds.
    schedule = adamx.cosine_decay_schedule(1000.0, decay_steps=int(1e10), alpha=0.0)
    want = 1000.0 * 0.5 * (1 + np.cos(np.pi * 0.1))
    np.testing.assert_allclose(jax.jit(schedule)(int(1e9)), want, rtol=1e-6)
    np.testing.assert_allclose(schedule(int(1e9)), want, rtol=1e-6)
