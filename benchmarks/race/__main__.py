"""Run the optimizer race from the command line.

    python -m benchmarks.race --workload shakespeare --optimizers adamw,muon \\
        --seeds 3 --json out.json [--quick] [--report docs/race.md]

Both lists take comma-separated names or ``all``. AdamW, the baseline, is always
raced (first). A race killed part way resumes when started again with the same
arguments, from the state file beside the JSON (``out.state.json``); delete that
file to start over.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.race import contenders, report, runner, workloads

WORKLOADS = workloads.NAMES


def names(value: str, known: Sequence[str], what: str) -> list[str]:
    """The comma-separated ``value`` as a list, ``all`` as every known name."""
    chosen = list(known) if value == "all" else [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"{what} must be 'all' or names from {', '.join(known)}; got {value!r}"
        )
    return chosen


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.race", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workload", default="all", help=f"'all' or some of {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--optimizers",
        default="all",
        help=f"'all' or some of {', '.join(contenders.CONTENDERS)}",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds at the best learning rate (default 3)",
    )
    parser.add_argument("--json", default="race.json", help="the results' file")
    parser.add_argument(
        "--quick", action="store_true", help="tiny models and budgets: seconds, for CI"
    )
    parser.add_argument(
        "--report", metavar="MD", help="write the leaderboard and plots into this page"
    )
    parser.add_argument("--state", help="the state file (default: beside the JSON)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        chosen = names(args.workload, WORKLOADS, "--workload")
        optimizers = names(args.optimizers, list(contenders.CONTENDERS), "--optimizers")
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    results = runner.run(
        chosen,
        optimizers,
        seeds=args.seeds,
        json_path=args.json,
        quick=args.quick,
        state_path=args.state,
        progress=not args.no_progress,
    )
    print(f"wrote {args.json}")
    if args.report:
        for png in report.write(results, args.report):
            print(f"wrote {png}")
        print(f"wrote {args.report}")
    return results


if __name__ == "__main__":
    main()
