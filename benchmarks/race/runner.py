"""Run the race: a learning-rate sweep per optimizer, then seeds at the best rate.

For each workload, every optimizer (AdamW first, the baseline) is trained

1. at each peak learning rate of its grid for the short budget
   ``workload.sweep_steps`` with seed ``SWEEP_SEED`` (0); the rate with the
   lowest final validation loss wins (a diverged run counts as infinite loss);
2. at that rate for the full budget ``workload.steps`` with each of the seeds
   1, 2, ..., n, measuring the validation loss every ``workload.eval_every``
   steps (and at steps 0 and ``steps``).

A seed fixes the model's initial params and the order of the training batches,
so two optimizers with the same seed start alike and see the same data. The
seeds run interleaved: round by round, one seed of each optimizer, in an order
drawn afresh for each round (seeded), as ``benchmarks/step.py`` times its
implementations, so that a slower or busier minute of the machine falls on all
optimizers alike.

The optimizer is built inside the jitted step from its peak learning rate,
passed as a traced scalar, so that one compilation serves every rate of the
sweep and every seed; it is the optimizer a user builds from that rate.

The target of a workload is the baseline's mean final validation loss; a run
reaches it at the first evaluation whose loss is at or below it. Wall seconds
count the training steps only: each step (the batch's transfer and the jitted
step, params and optimizer state donated, waited for) is timed, and the
compilation before the first step, the making of batches on the host and the
validation are left out. The step time is the median of those per-step times.

Final losses are compared with the baseline's by Welch's two-sided t-test
(unequal variances), with ``scipy.stats`` if it is installed and otherwise the
NumPy implementation below.

Resuming: each finished training run (one optimizer, rate, seed and budget) is
a unit, written to the state file (``<json>.state.json`` next to the JSON) as
soon as it ends, by an atomic replace. A run of the race skips the units the
state file already holds, so a killed race started again with the same
arguments picks up where it stopped. Training is deterministic, so the JSON it
writes equals an uninterrupted race's except the wall-clock fields
(:data:`WALL_CLOCK_FIELDS`), which then come from more than one process
(``timing.sessions`` says how many).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

import adamx
from benchmarks.race import contenders
from benchmarks.step import shuffled_rounds

SWEEP_SEED = 0
SCHEMA = "adamx-race/1"

#: Keys whose values come from the clock; a resumed race differs only in these.
WALL_CLOCK_FIELDS = frozenset(
    {
        "seconds",
        "seconds_to_target",
        "seconds_to_target_median",
        "step_ms",
        "step_ms_median",
        "timing",
    }
)


def without_wall_clock(results: Any) -> Any:
    """``results`` less the wall-clock fields at every level: what a resumed race
    reproduces exactly."""
    if isinstance(results, dict):
        return {
            k: without_wall_clock(v)
            for k, v in results.items()
            if k not in WALL_CLOCK_FIELDS
        }
    if isinstance(results, list):
        return [without_wall_clock(v) for v in results]
    return results


# ---------------------------------------------------------------- one training run


def make_step(workload: Any, optimizer: str, steps: int) -> Callable[..., Any]:
    """The jitted training step of ``optimizer`` on ``workload``, over ``steps``.

    ``step(params, model_state, opt_state, batch, learning_rate)`` returns the
    new params, model state and optimizer state (the first three donated) and
    the training loss. The optimizer is built inside from the peak learning
    rate it is given, a traced scalar, so one compilation serves every rate of
    the sweep and every seed.
    """
    contender = contenders.get(optimizer)
    budget = workload._replace(steps=steps)  # the schedule spans this budget

    def step(params, model_state, opt_state, batch, learning_rate):
        tx = contender.build(learning_rate, budget)
        grad_fn = jax.value_and_grad(workload.loss, has_aux=True)
        (loss, model_state), grads = grad_fn(params, model_state, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return adamx.apply_updates(params, updates), model_state, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def train(
    workload: Any,
    optimizer: str,
    learning_rate: float,
    seed: int,
    steps: int,
    *,
    compiled: dict[Any, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``workload`` with one optimizer for ``steps`` steps; its curve.

    Args:
        workload: a ``workloads.Workload``.
        optimizer: a contender's name.
        learning_rate: the peak learning rate.
        seed: the seed of the initial params and of the batches.
        steps: the budget.
        compiled: compiled steps to reuse and add to, by workload, optimizer,
            budget and shapes (``None``: compile afresh).
        progress: show a progress bar over the steps.

    Returns:
        A dict with the evaluated ``steps``, the training ``seconds`` before
        each, the validation losses ``val_loss``, ``final_val_loss`` (``None``
        if the loss stopped being finite: the run then ends there),
        ``diverged`` and ``step_ms``, the median time of one step.
    """
    contender = contenders.get(optimizer)
    params, model_state = workload.init(seed)
    opt_state = contender.build(learning_rate, workload._replace(steps=steps)).init(
        params
    )
    batch = jax.device_put(workload.train_batch(seed, 0))
    lr = np.float32(learning_rate)
    args = (params, model_state, opt_state, batch, lr)
    key = (workload.name, optimizer, steps, str(jax.eval_shape(lambda: args)))
    compiled = {} if compiled is None else compiled
    if key not in compiled:  # compiled ahead, so that no step times a compilation
        compiled[key] = make_step(workload, optimizer, steps).lower(*args).compile()
    step = compiled[key]
    eval_params = jax.jit(contender.eval_params)

    def evaluate() -> float:
        return float(workload.val_loss(eval_params(opt_state, params), model_state))

    curve: dict[str, list] = {"steps": [0], "seconds": [0.0], "val_loss": [evaluate()]}
    times: list[float] = []
    diverged = not math.isfinite(curve["val_loss"][0])
    bar = tqdm(
        range(1, steps + 1),
        f"{optimizer} lr={learning_rate:g} seed={seed}",
        leave=False,
        disable=not progress,
    )
    for i in bar:
        if diverged:
            break
        host_batch = workload.train_batch(seed, i - 1) if i > 1 else batch
        start = time.perf_counter()
        params, model_state, opt_state, _ = step(
            params, model_state, opt_state, jax.device_put(host_batch), lr
        )
        jax.block_until_ready((params, model_state, opt_state))
        times.append(time.perf_counter() - start)
        if i % workload.eval_every == 0 or i == steps:
            loss = evaluate()
            curve["steps"].append(i)
            curve["seconds"].append(sum(times))
            curve["val_loss"].append(loss if math.isfinite(loss) else None)
            diverged = not math.isfinite(loss)
    bar.close()
    return {
        **curve,
        "final_val_loss": None if diverged else curve["val_loss"][-1],
        "diverged": diverged,
        "step_ms": statistics.median(times) * 1e3 if times else None,
    }


# ------------------------------------------------------------------- significance


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's two-sided t-test of equal means, unequal variances.

    .. math::
        t = \\frac{\\bar a - \\bar b}{\\sqrt{s_a^2/n_a + s_b^2/n_b}}, \\qquad
        \\nu = \\frac{(s_a^2/n_a + s_b^2/n_b)^2}
        {\\frac{(s_a^2/n_a)^2}{n_a - 1} + \\frac{(s_b^2/n_b)^2}{n_b - 1}}

    and :math:`p = P(|T_\\nu| \\ge |t|)`. With ``scipy`` installed its
    ``ttest_ind(equal_var=False)`` computes them; otherwise :func:`welch_numpy`.

    Returns:
        ``{"t", "dof", "p", "implementation"}``; ``t``, ``dof`` and ``p`` are
        ``None`` with fewer than two values on a side. Where both samples have
        no spread, ``p`` is 1 for equal means and 0 otherwise (``t``, ``dof``
        ``None``).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    none = {"t": None, "dof": None, "p": None}
    if len(a) < 2 or len(b) < 2:
        return {**none, "implementation": None}
    if a.var() == 0 and b.var() == 0:
        p = 1.0 if a.mean() == b.mean() else 0.0
        return {**none, "p": p, "implementation": "exact (no spread)"}
    try:
        from scipy import stats
    except ImportError:
        return {**welch_numpy(a, b), "implementation": "numpy"}
    r = stats.ttest_ind(a, b, equal_var=False)
    return {
        "t": finite_or_none(r.statistic),
        "dof": finite_or_none(r.df),
        "p": finite_or_none(r.pvalue),
        "implementation": "scipy.stats.ttest_ind(equal_var=False)",
    }


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float, or ``None`` where it is not finite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def welch_numpy(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Welch's test in NumPy: ``t``, ``dof`` and the two-sided ``p``."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return {"t": float(t), "dof": float(dof), "p": student_t_two_sided(t, dof)}


def student_t_two_sided(t: float, dof: float) -> float:
    """:math:`P(|T_\\nu| \\ge |t|) = I_{\\nu / (\\nu + t^2)}(\\nu/2, 1/2)`."""
    return betainc(dof / 2, 0.5, dof / (dof + t * t))


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function :math:`I_x(a, b)`.

    By its continued fraction, evaluated with the modified Lentz method
    (Press et al., "Numerical Recipes", 3rd ed., section 6.4).
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
        + a * math.log(x)
        + b * math.log1p(-x)
    )
    tiny = 1e-300

    def clamp(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even terms
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd
        ):
            d = 1.0 / clamp(1.0 + numerator * d)
            c = clamp(1.0 + numerator / c)
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


# ------------------------------------------------------------------------ the state


class State:
    """The finished units, kept in a JSON file rewritten atomically after each."""

    def __init__(self, path: Path):
        self.path = path
        self.session = uuid.uuid4().hex[:12]
        self.units: dict[str, dict[str, Any]] = {}
        if path.exists():
            self.units = json.loads(path.read_text())["units"]

    def __contains__(self, key: str) -> bool:
        return key in self.units

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.units[key]

    def add(self, key: str, result: dict[str, Any]) -> None:
        self.units[key] = {**result, "session": self.session}
        write_json(self.path, {"schema": SCHEMA + "-state", "units": self.units})


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically: to a temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def state_path_for(json_path: Path) -> Path:
    """Where the state of the race writing ``json_path`` is kept."""
    return json_path.with_name(json_path.stem + ".state.json")


def unit_key(
    workload: str, quick: bool, optimizer: str, lr: float, seed: int, steps: int
) -> str:
    """The state file's name for one training run."""
    mode = "quick" if quick else "full"
    return f"{workload}/{mode}/{optimizer}/lr={lr!r}/seed={seed}/steps={steps}"


# ------------------------------------------------------------------------- the race


def order_optimizers(optimizers: Iterable[str]) -> list[str]:
    """The optimizers, each once, checked, with the baseline first (added if absent)."""
    names = list(dict.fromkeys(optimizers))
    for name in names:
        contenders.get(name)
    return [contenders.BASELINE] + [n for n in names if n != contenders.BASELINE]


def interleaved(optimizers: list[str], seeds: list[int]) -> list[tuple[int, str]]:
    """(seed, optimizer) pairs: a round per seed, in ``shuffled_rounds``' orders."""
    rounds = shuffled_rounds(optimizers, len(seeds))
    return [(seed, name) for seed in seeds for name in next(rounds)]


def best_learning_rate(sweep: list[dict[str, Any]]) -> float:
    """The rate with the lowest final loss; diverged runs lose; ties go to the first."""

    def loss(row: dict[str, Any]) -> float:
        return math.inf if row["final_val_loss"] is None else row["final_val_loss"]

    return min(sweep, key=loss)["lr"]


def run(
    workload_names: Sequence[str],
    optimizers: Sequence[str],
    *,
    seeds: int = 3,
    json_path: str | os.PathLike,
    quick: bool = False,
    grids: dict[str, Sequence[float]] | None = None,
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
    on_unit: Callable[[str, dict[str, Any]], None] | None = None,
    get_workload: Callable[..., Any] | None = None,
    compiled: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """Race ``optimizers`` on each workload; write and return the results.

    Args:
        workload_names: names for ``workloads.get``.
        optimizers: contender names; the baseline (AdamW) is added and runs first.
        seeds: how many seeds at the best rate (seeds 1 to ``seeds``), at least 3
            for the significance test to mean much.
        json_path: where the results go.
        quick: the workloads' quick versions (tiny models, a few steps).
        grids: learning-rate grids to use instead of the contenders' defaults.
        state_path: the state file; ``None``: ``<json stem>.state.json`` beside it.
        progress: show tqdm progress bars.
        on_unit: called with each unit's key and result once it is saved.
        get_workload: ``(name, quick=) -> Workload``; ``None``: ``workloads.get``.
        compiled: compiled steps to share with other races of this process
            (``None``: this race's own).

    Returns:
        The results, as written to ``json_path``.
    """
    if get_workload is None:
        from benchmarks.race import workloads

        get_workload = workloads.get
    json_path = Path(json_path)
    state = State(Path(state_path) if state_path else state_path_for(json_path))
    names = order_optimizers(optimizers)
    seed_list = list(range(1, seeds + 1))
    grids = {n: tuple((grids or {}).get(n, contenders.get(n).grid)) for n in names}
    for n, grid in grids.items():
        if len(grid) < 4:
            raise ValueError(f"the grid of {n} needs at least 4 rates, got {grid}")
    started = time.perf_counter()
    compiled = {} if compiled is None else compiled
    keys: list[str] = []  # this race's units

    results: dict[str, Any] = {}
    for workload_name in workload_names:
        workload = get_workload(workload_name, quick=quick)
        total = sum(len(grids[n]) for n in names) + len(names) * len(seed_list)
        bar = tqdm(total=total, desc=workload_name, unit="run", disable=not progress)
        options = {
            "quick": quick,
            "compiled": compiled,
            "progress": progress,
            "on_unit": on_unit,
            "bar": bar,
        }
        sweeps = [
            (n, lr, SWEEP_SEED, workload.sweep_steps) for n in names for lr in grids[n]
        ]
        keys += run_units(sweeps, workload, state, **options)
        best = {
            n: best_learning_rate(sweep(state, workload, quick, n, grids[n]))
            for n in names
        }
        seeds_at_best = [
            (n, best[n], seed, workload.steps)
            for seed, n in interleaved(names, seed_list)
        ]
        keys += run_units(seeds_at_best, workload, state, **options)
        bar.close()
        results[workload_name] = summarize(
            workload, quick, names, grids, best, seed_list, state
        )
    sessions = {state[key]["session"] for key in keys}

    out = {
        "schema": SCHEMA,
        "config": {
            "workloads": list(workload_names),
            "optimizers": names,
            "baseline": contenders.BASELINE,
            "seeds": seed_list,
            "sweep_seed": SWEEP_SEED,
            "quick": quick,
            "warmup_fraction": contenders.WARMUP_FRACTION,
            "end_fraction": contenders.END_FRACTION,
        },
        "significance_test": (
            "Welch's two-sided t-test (unequal variances) of each optimizer's final "
            f"validation losses against {contenders.BASELINE}'s, over the seeds"
        ),
        "wall_clock_fields": sorted(WALL_CLOCK_FIELDS),
        "timing": {
            "sessions": len(sessions),
            "seconds_this_session": time.perf_counter() - started,
            "device": jax.devices()[0].device_kind,
            "platform": platform.platform(),
            "jax": jax.__version__,
        },
        "workloads": results,
    }
    write_json(json_path, out)
    return out


def run_units(
    units: list[tuple[str, float, int, int]],
    workload: Any,
    state: State,
    *,
    quick: bool,
    compiled: dict[Any, Any],
    progress: bool,
    on_unit: Callable[[str, dict[str, Any]], None] | None,
    bar: Any,
) -> list[str]:
    """Train each ``(optimizer, lr, seed, steps)`` the state lacks; all their keys."""
    keys = []
    for name, lr, seed, steps in units:
        key = unit_key(workload.name, quick, name, lr, seed, steps)
        if key not in state:
            bar.set_postfix_str(f"{name} lr={lr:g} seed={seed}")
            result = train(
                workload, name, lr, seed, steps, compiled=compiled, progress=progress
            )
            state.add(key, result)
            if on_unit is not None:
                on_unit(key, state[key])
        bar.update()
        keys.append(key)
    return keys


def summarize(
    workload: Any,
    quick: bool,
    names: list[str],
    grids: dict[str, tuple[float, ...]],
    best: dict[str, float],
    seeds: list[int],
    state: State,
) -> dict[str, Any]:
    """One workload's results from the state's units."""

    steps = workload.steps

    def runs(n: str) -> list[dict[str, Any]]:
        keys = [unit_key(workload.name, quick, n, best[n], s, steps) for s in seeds]
        return [
            {"seed": s, **{k: v for k, v in state[key].items() if k != "session"}}
            for s, key in zip(seeds, keys, strict=True)
        ]

    baseline = [r["final_val_loss"] for r in runs(contenders.BASELINE)]
    target = None if None in baseline else float(np.mean(baseline))
    params, _ = jax.eval_shape(lambda: workload.init(0))
    optimizers = {}
    for n in names:
        c = contenders.get(n)
        sweep_rows = sweep(state, workload, quick, n, grids[n])
        rows = [with_target(dict(r), target) for r in runs(n)]
        finals = [r["final_val_loss"] for r in rows]
        finite = [f for f in finals if f is not None]
        tx = c.build(best[n], workload)
        optimizers[n] = {
            "library": c.library,
            "schedule": c.schedule,
            "weight_decay": c.weight_decay,
            "lr_grid": list(grids[n]),
            "sweep": sweep_rows,
            "best_lr": best[n],
            "best_lr_at_edge": best[n] in (min(grids[n]), max(grids[n])),
            "state_bytes": adamx.state_nbytes(jax.eval_shape(tx.init, params)),
            "runs": rows,
            "final_val_loss_mean": float(np.mean(finite)) if finite else None,
            "final_val_loss_std": float(np.std(finite, ddof=1))
            if len(finite) > 1
            else None,
            "diverged_runs": len(finals) - len(finite),
            "reached_target": sum(r["steps_to_target"] is not None for r in rows),
            "steps_to_target_median": median_or_none(
                [r["steps_to_target"] for r in rows]
            ),
            "seconds_to_target_median": median_or_none(
                [r["seconds_to_target"] for r in rows]
            ),
            "step_ms_median": statistics.median(r["step_ms"] for r in rows),
            "vs_baseline": None
            if n == contenders.BASELINE or None in finals or None in baseline
            else {
                **welch_t_test(finals, baseline),
                "mean_difference": float(np.mean(finals) - np.mean(baseline)),
            },
        }
    return {
        "steps": workload.steps,
        "sweep_steps": workload.sweep_steps,
        "eval_every": workload.eval_every,
        "params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
        "target": target,
        "optimizers": optimizers,
    }


def sweep(
    state: State, workload: Any, quick: bool, optimizer: str, grid: Sequence[float]
) -> list[dict[str, Any]]:
    """The sweep of ``optimizer``: a ``{"lr", "final_val_loss"}`` for each rate."""
    rows = []
    for lr in grid:
        key = unit_key(
            workload.name, quick, optimizer, lr, SWEEP_SEED, workload.sweep_steps
        )
        rows.append({"lr": lr, "final_val_loss": state[key]["final_val_loss"]})
    return rows


def with_target(run: dict[str, Any], target: float | None) -> dict[str, Any]:
    """``run`` with the step and seconds of its first evaluation at or below target."""
    run["steps_to_target"] = run["seconds_to_target"] = None
    if target is not None:
        for step, seconds, loss in zip(
            run["steps"], run["seconds"], run["val_loss"], strict=True
        ):
            if loss is not None and loss <= target:
                run["steps_to_target"], run["seconds_to_target"] = step, seconds
                break
    return run


def median_or_none(values: list[float | None]) -> float | None:
    """The median, counting ``None`` (never reached) as infinite; ``None`` if so."""
    m = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(m) else float(m)
