"""`fanout simulate`: run the evaluation, print the regret table, write the results.

Writes `results.json` and the PNG plots into `--out`, and the markdown report to
`--report` (default `<out>/results.md`). The repository's `docs/results.md` is made by
`fanout simulate --out docs/results --report docs/results.md`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fanout.sim.evaluate import EvalSettings, ScenarioOutcome, run_scenario
from fanout.sim.policies import BASELINES, FANOUT, registered_policies
from fanout.sim.report import Evaluation, markdown_report, results_document, text_table
from fanout.sim.scenarios import all_scenarios

DEFAULT_RUNS = 100
DEFAULT_REPETITIONS = 5
QUICK_RUNS = 12
QUICK_REPETITIONS = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout simulate",
        description="Compare fanout with baselines and an oracle on simulated workflows.",
    )
    scenarios = list(all_scenarios())
    parser.add_argument(
        "--scenarios",
        nargs="+",
        metavar="NAME",
        choices=scenarios,
        default=scenarios,
        help=f"scenarios to run (default all: {', '.join(scenarios)})",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        metavar="NAME",
        default=None,
        help="policies to run (default: fanout and every baseline)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help=f"workflow runs per scenario (default {DEFAULT_RUNS})",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help=f"independent repetitions (default {DEFAULT_REPETITIONS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--urgency", type=float, default=1.0, help="score exponent a")
    parser.add_argument("--resource-exponent", type=float, default=0.5, help="score exponent b")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("fanout-simulation"),
        help="folder for results.json and the plots",
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="markdown report path (default <out>/results.md)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"short smoke run ({QUICK_RUNS} runs, {QUICK_REPETITIONS} repetition) "
        "unless --runs/--repetitions say otherwise",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fanout simulate`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    policies: list[str] = args.policies or [FANOUT, *BASELINES]
    known = registered_policies()
    unknown = [p for p in policies if p not in known]
    if unknown:
        print(
            f"fanout simulate: --policies: unknown {unknown}; known {sorted(known)}",
            file=sys.stderr,
        )
        return 2
    runs = args.runs if args.runs is not None else (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    repetitions = (
        args.repetitions
        if args.repetitions is not None
        else (QUICK_REPETITIONS if args.quick else DEFAULT_REPETITIONS)
    )
    try:
        settings = EvalSettings(
            runs=runs,
            repetitions=repetitions,
            seed=args.seed,
            urgency=args.urgency,
            resource_exponent=args.resource_exponent,
        )
    except ValueError as exc:
        print(f"fanout simulate: {exc}", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    scenarios = all_scenarios()
    outcomes: dict[str, ScenarioOutcome] = {
        name: run_scenario(scenarios[name], settings, policies, progress=progress)
        for name in args.scenarios
    }
    command = "fanout simulate " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    evaluation = Evaluation.from_outcomes(settings, outcomes, command.strip())

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report_path: Path = args.report or out / "results.md"
    plots = {}
    if not args.no_plots:
        # matplotlib is imported only when plotting.
        from fanout.sim.plots import write_all

        plots = write_all(evaluation, out)
    (out / "results.json").write_text(
        json.dumps(results_document(evaluation), indent=1) + "\n", encoding="utf-8"
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(markdown_report(evaluation, plots, report_path), encoding="utf-8")

    print("Mean regret over all runs (%)")
    print(text_table(evaluation))
    print()
    print("Mean regret over the second half (%)")
    print(text_table(evaluation, "mean_regret_second_half"))
    goal = evaluation.goal()
    if goal is not None:
        print()
        print(
            f"fanout {100 * goal.fanout_mean_regret:.1f} % (goal <= {100 * goal.target:.0f} %: "
            f"{'met' if goal.target_met else 'not met'}); best baseline "
            f"{goal.best_baseline} {100 * goal.best_baseline_mean_regret:.1f} %; largest gap "
            f"{100 * goal.worst_gap_to_best_baseline:+.1f} points ({goal.worst_scenario})"
        )
    print(
        f"\nwrote {out / 'results.json'}, {report_path} and {len(plots)} plots "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
