"""Run policies through the simulated workflows and score them against the oracle.

Score of a decision (SPEC 5.3): `J(s) = E[T(s)]^a * s^b` with the true expected time.
Regret of a decision: `J(chosen) / J(oracle) - 1`, where the oracle knows the truth,
the input size and the load the task actually shares the cluster with (the widths the
policy gave the other tasks of its stage), and picks the best width for that. For the
totals, the oracle runs every stage at the widths where each task's width is best
given the others' (found by repeated best responses).

All policies face the same input sizes and the same noise for the same width (common
random numbers), so differences come from the choices alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from fanout.sim.policies import (
    FANOUT,
    Context,
    FittedAmdahlPolicy,
    NaiveAmdahlPolicy,
    Policy,
    PolicyInfo,
    PredictingPolicy,
    Predictor,
    registered_policies,
    score,
)
from fanout.sim.scenarios import REFERENCE_INPUT_SIZE, Scenario
from fanout.sim.truth import TaskTruth

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

REGRET_TARGET = 0.05
ROLLING_RUNS = 5
EQUILIBRIUM_ROUNDS = 50
SIZES_STREAM = 1
NOISE_STREAM = 2


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How long and how often each scenario runs, and the score exponents."""

    runs: int = 100
    repetitions: int = 3
    seed: int = 0
    urgency: float = 1.0
    resource_exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.runs < 2:
            raise ValueError(f"runs: must be >= 2, got {self.runs}")
        if self.repetitions < 1:
            raise ValueError(f"repetitions: must be >= 1, got {self.repetitions}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if not self.urgency > 0:
            raise ValueError(f"urgency: must be > 0, got {self.urgency}")
        if not self.resource_exponent >= 0:
            raise ValueError(f"resource_exponent: must be >= 0, got {self.resource_exponent}")


@dataclass
class Trace:
    """Per-decision records, each of shape (repetitions, runs, tasks)."""

    widths: I64
    oracle_widths: I64
    regret: F64
    expected_time: F64
    durations: F64
    decision_load: F64
    gamma: F64
    stage_time: F64  # (repetitions, runs): sum over stages of the slowest task
    pod_seconds: F64  # (repetitions, runs)
    predictions: dict[str, F64] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def empty(cls, repetitions: int, runs: int, tasks: int) -> Trace:
        shape = (repetitions, runs, tasks)
        return cls(
            widths=np.zeros(shape, dtype=np.int64),
            oracle_widths=np.zeros(shape, dtype=np.int64),
            regret=np.zeros(shape),
            expected_time=np.zeros(shape),
            durations=np.zeros(shape),
            decision_load=np.zeros(shape),
            gamma=np.ones(shape),
            stage_time=np.zeros(shape[:2]),
            pod_seconds=np.zeros(shape[:2]),
        )


@dataclass
class OracleRun:
    """The oracle's own widths and totals, shapes (repetitions, runs[, tasks])."""

    widths: I64
    expected_time: F64
    stage_time: F64
    pod_seconds: F64


@dataclass
class ScenarioOutcome:
    scenario: Scenario
    settings: EvalSettings
    traces: dict[str, Trace]
    oracle: OracleRun


def best_width(
    truth: TaskTruth, gamma: float, load: float, *, lo: int, hi: int, a: float, b: float
) -> tuple[int, float]:
    """Brute-force optimum `(s, J(s))` of the true score over `[lo, hi]`."""
    widths = np.arange(lo, hi + 1, dtype=np.float64)
    scores = score(truth.true_time(widths, gamma, load), widths, a, b)
    index = int(np.argmin(scores))
    return int(widths[index]), float(scores[index])


def _equilibrium(
    truths: Sequence[TaskTruth], gamma: float, *, lo: int, hi: int, a: float, b: float
) -> list[int]:
    """Widths at which no task of a stage gains by changing its own width alone."""
    widths = [1] * len(truths)
    for _ in range(EQUILIBRIUM_ROUNDS):
        changed = False
        for j, truth in enumerate(truths):
            others = sum(widths) - widths[j]
            best, _ = best_width(truth, gamma, others, lo=lo, hi=hi, a=a, b=b)
            if best != widths[j]:
                widths[j], changed = best, True
        if not changed:
            break
    return widths


def _sizes(scenario: Scenario, settings: EvalSettings, rep: int) -> F64 | None:
    rng = np.random.default_rng([settings.seed, rep, SIZES_STREAM])
    return scenario.input_sizes(settings.runs, rng)


def _gamma(size: float | None) -> float:
    return 1.0 if size is None else size / REFERENCE_INPUT_SIZE


def run_oracle(scenario: Scenario, settings: EvalSettings) -> OracleRun:
    """The oracle's equilibrium widths for every run."""
    reps, runs, tasks = settings.repetitions, settings.runs, len(scenario.tasks)
    a, b = settings.urgency, settings.resource_exponent
    lo, hi = scenario.min_parallelism, scenario.max_parallelism
    out = OracleRun(
        widths=np.zeros((reps, runs, tasks), dtype=np.int64),
        expected_time=np.zeros((reps, runs, tasks)),
        stage_time=np.zeros((reps, runs)),
        pod_seconds=np.zeros((reps, runs)),
    )
    for rep in range(reps):
        sizes = _sizes(scenario, settings, rep)
        for run in range(runs):
            gamma = _gamma(None if sizes is None else float(sizes[run]))
            offset = 0
            for stage in scenario.stages:
                truths = [scenario.truth_at(task, run, runs) for task in stage]
                widths = _equilibrium(truths, gamma, lo=lo, hi=hi, a=a, b=b)
                total = sum(widths)
                times = [
                    float(t.true_time([w], gamma, total - w)[0])
                    for t, w in zip(truths, widths, strict=True)
                ]
                span = slice(offset, offset + len(stage))
                out.widths[rep, run, span] = widths
                out.expected_time[rep, run, span] = times
                out.stage_time[rep, run] += max(times)
                out.pod_seconds[rep, run] += float(np.dot(widths, times))
                offset += len(stage)
    return out


PolicyBuilder = Callable[[PolicyInfo], Policy]


def run_policy(
    scenario: Scenario,
    settings: EvalSettings,
    build: PolicyBuilder,
    *,
    shadows: dict[str, Callable[[], PredictingPolicy]] | None = None,
) -> Trace:
    """Drive one policy (one instance per model key and repetition) through the runs.

    `shadows` are extra models fed the same reports; their predictions for the chosen
    widths, made before each run, are kept for the predicted-against-actual plots
    (the policy's own, when it predicts, under the key "self").
    """
    # The GP fits are tiny: with a BLAS thread pool per process they spend their time
    # waiting on each other (20-40x slower on a busy two-core machine), so one thread.
    with threadpool_limits(limits=1):
        return _run_policy(scenario, settings, build, shadows or {})


def _run_policy(
    scenario: Scenario,
    settings: EvalSettings,
    build: PolicyBuilder,
    shadows: dict[str, Callable[[], PredictingPolicy]],
) -> Trace:
    reps, runs, tasks = settings.repetitions, settings.runs, len(scenario.tasks)
    a, b = settings.urgency, settings.resource_exponent
    lo, hi = scenario.min_parallelism, scenario.max_parallelism
    trace = Trace.empty(reps, runs, tasks)
    started = time.perf_counter()
    keys = sorted({task.model_key for task in scenario.tasks})
    for rep in range(reps):
        policies = {key: build(PolicyInfo(key, settings.seed * 1000 + rep)) for key in keys}
        watchers = {name: {key: make() for key in keys} for name, make in shadows.items()}
        sizes = _sizes(scenario, settings, rep)
        for run in range(runs):
            size = None if sizes is None else float(sizes[run])
            gamma = _gamma(size)
            offset = 0
            for stage in scenario.stages:
                contexts: list[Context] = []
                widths: list[int] = []
                for j, task in enumerate(stage):
                    context = Context(
                        run=run,
                        input_size=size,
                        cluster_load=float(sum(widths)),
                        min_parallelism=lo,
                        max_parallelism=hi,
                        urgency=a,
                        resource_exponent=b,
                    )
                    policy = policies[task.model_key]
                    s = policy.decide(context)
                    if not lo <= s <= hi:
                        raise ValueError(f"parallelism: policy chose {s} outside [{lo}, {hi}]")
                    cell = (rep, run, offset + j)
                    if isinstance(policy, Predictor):
                        trace.predictions.setdefault("self", np.full((reps, runs, tasks), np.nan))
                        trace.predictions["self"][cell] = policy.predict(s, context)
                    for name, per_key in watchers.items():
                        trace.predictions.setdefault(name, np.full((reps, runs, tasks), np.nan))
                        trace.predictions[name][cell] = per_key[task.model_key].predict(s, context)
                    contexts.append(context)
                    widths.append(s)
                total = sum(widths)
                reports: list[tuple[float, float | None]] = []
                times: list[float] = []
                for j, task in enumerate(stage):
                    s, cell = widths[j], (rep, run, offset + j)
                    truth = scenario.truth_at(task, run, runs)
                    shared = float(total - s)
                    expected = float(truth.true_time([s], gamma, shared)[0])
                    chosen_score = float(score(expected, float(s), a, b))
                    oracle_s, oracle_score = best_width(
                        truth, gamma, shared, lo=lo, hi=hi, a=a, b=b
                    )
                    noise = np.random.default_rng(
                        [settings.seed, rep, NOISE_STREAM, run, offset + j]
                    )
                    reports.append(truth.sample(s, gamma, shared, noise))
                    times.append(expected)
                    trace.widths[cell] = s
                    trace.oracle_widths[cell] = oracle_s
                    trace.regret[cell] = chosen_score / oracle_score - 1.0
                    trace.expected_time[cell] = expected
                    trace.durations[cell] = reports[-1][0]
                    trace.decision_load[cell] = contexts[j].cluster_load
                    trace.gamma[cell] = gamma
                trace.stage_time[rep, run] += max(times)
                trace.pod_seconds[rep, run] += float(np.dot(widths, times))
                for j, task in enumerate(stage):
                    duration, startup = reports[j]
                    policies[task.model_key].observe(widths[j], contexts[j], duration, startup)
                    for per_key in watchers.values():
                        per_key[task.model_key].observe(widths[j], contexts[j], duration, startup)
                offset += len(stage)
    trace.seconds = time.perf_counter() - started
    return trace


def run_scenario(
    scenario: Scenario,
    settings: EvalSettings,
    policy_names: Sequence[str],
    *,
    progress: Callable[[str], None] | None = None,
) -> ScenarioOutcome:
    """Every named policy through one scenario; fanout also feeds the shadow models."""
    registry = registered_policies()
    unknown = [name for name in policy_names if name not in registry]
    if unknown:
        raise ValueError(f"policies: unknown {unknown}; known {sorted(registry)}")
    traces: dict[str, Trace] = {}
    for name in policy_names:
        _, factory = registry[name]
        shadows: dict[str, Callable[[], PredictingPolicy]] = {}
        if name == FANOUT:
            shadows = {"naive": NaiveAmdahlPolicy, "fitted": FittedAmdahlPolicy}
        traces[name] = run_policy(scenario, settings, factory, shadows=shadows)
        if progress is not None:
            mean = float(traces[name].regret.mean())
            progress(
                f"{scenario.name:>16} {name:<14} mean regret {100 * mean:6.2f} %"
                f"  ({traces[name].seconds:.1f} s)"
            )
    return ScenarioOutcome(scenario, settings, traces, run_oracle(scenario, settings))


@dataclass(frozen=True)
class PolicyMetrics:
    """Summary of one policy in one scenario (regrets as fractions)."""

    mean_regret: float
    mean_regret_second_half: float
    total_time: float  # seconds, mean over repetitions
    total_pod_seconds: float
    time_vs_oracle: float  # ratio
    pod_seconds_vs_oracle: float
    runs_to_target: int | None  # 1-based run from which the rolling mean stays < 5 %
    regret_curve: list[float]  # per run, mean over repetitions and tasks
    width_curve: list[float]  # per run, mean width


def runs_to_target(
    curve: Sequence[float], target: float = REGRET_TARGET, window: int = ROLLING_RUNS
) -> int | None:
    """First run (1-based) from which every rolling mean of `window` runs stays below
    `target`; None when the last window is still at or above it."""
    values = np.asarray(curve, dtype=np.float64)
    if len(values) < window:
        return None
    rolling = np.convolve(values, np.ones(window) / window, mode="valid")
    above = np.flatnonzero(rolling >= target)
    if len(above) == 0:
        return 1
    if above[-1] == len(rolling) - 1:
        return None
    return int(above[-1]) + 2


def metrics(trace: Trace, oracle: OracleRun) -> PolicyMetrics:
    runs = trace.regret.shape[1]
    curve = trace.regret.mean(axis=(0, 2))
    total_time = float(trace.stage_time.sum(axis=1).mean())
    total_pod = float(trace.pod_seconds.sum(axis=1).mean())
    oracle_time = float(oracle.stage_time.sum(axis=1).mean())
    oracle_pod = float(oracle.pod_seconds.sum(axis=1).mean())
    return PolicyMetrics(
        mean_regret=float(trace.regret.mean()),
        mean_regret_second_half=float(trace.regret[:, runs // 2 :].mean()),
        total_time=total_time,
        total_pod_seconds=total_pod,
        time_vs_oracle=total_time / oracle_time,
        pod_seconds_vs_oracle=total_pod / oracle_pod,
        runs_to_target=runs_to_target(curve.tolist()),
        regret_curve=[float(v) for v in curve],
        width_curve=[float(v) for v in trace.widths.mean(axis=(0, 2))],
    )


def static_totals(scenario: Scenario, settings: EvalSettings) -> tuple[I64, F64, F64]:
    """Totals if every task always ran at one width: `(widths, time, pod_seconds)`,
    each shape (m,), means over repetitions; the curve behind the Pareto plots."""
    lo, hi = scenario.min_parallelism, scenario.max_parallelism
    widths = np.arange(lo, hi + 1, dtype=np.int64)
    s = widths.astype(np.float64)
    total_time = np.zeros(len(widths))
    total_pods = np.zeros(len(widths))
    for rep in range(settings.repetitions):
        sizes = _sizes(scenario, settings, rep)
        for run in range(settings.runs):
            gamma = _gamma(None if sizes is None else float(sizes[run]))
            for stage in scenario.stages:
                others = (len(stage) - 1) * s
                times = np.array(
                    [
                        scenario.truth_at(t, run, settings.runs).true_time(s, gamma, others)
                        for t in stage
                    ]
                )
                total_time += times.max(axis=0)
                total_pods += (times * s).sum(axis=0)
    return widths, total_time / settings.repetitions, total_pods / settings.repetitions
