"""The oracle, the regret bookkeeping and the determinism of whole evaluations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fanout.sim.evaluate import (
    EvalSettings,
    best_width,
    metrics,
    run_oracle,
    run_policy,
    run_scenario,
    runs_to_target,
    static_totals,
)
from fanout.sim.policies import Context, PolicyInfo, StaticPolicy
from fanout.sim.scenarios import Scenario, SimTask, all_scenarios
from fanout.sim.truth import TaskTruth

QUICK = EvalSettings(runs=6, repetitions=2, seed=4)


def brute_force(truth: TaskTruth, gamma: float, load: float, hi: int, a: float, b: float) -> int:
    scores = [truth.true_time([s], gamma, load)[0] ** a * s**b for s in range(1, hi + 1)]
    return 1 + min(range(hi), key=scores.__getitem__)


@pytest.mark.parametrize(
    "truth",
    [
        TaskTruth(work_seconds=100.0, p=0.8),
        TaskTruth(work_seconds=300.0, p=0.97, per_pod_seconds=2.0, startup_seconds=5.0),
        TaskTruth(work_seconds=600.0, p=0.97, straggler_sigma=0.5),
        TaskTruth(work_seconds=60.0, p=0.5, capacity_pods=2.0, contention_exponent=0.3),
    ],
)
@pytest.mark.parametrize(("gamma", "load", "a", "b"), [(1.0, 0.0, 1.0, 0.5), (3.0, 6.0, 2.0, 0.5)])
def test_oracle_matches_brute_force(
    truth: TaskTruth, gamma: float, load: float, a: float, b: float
) -> None:
    s, score = best_width(truth, gamma, load, lo=1, hi=64, a=a, b=b)
    assert s == brute_force(truth, gamma, load, 64, a, b)
    assert score == pytest.approx(truth.true_time([s], gamma, load)[0] ** a * s**b)


def test_oracle_on_pure_amdahl_is_the_analytic_optimum() -> None:
    # T * sqrt(s) with T = T1 ((1-p) + p/s) is minimal at s* = p / (1 - p) (SPEC 5.1).
    for p, expected in ((0.8, 4), (0.9, 9), (0.3, 1)):
        s, _ = best_width(TaskTruth(work_seconds=50.0, p=p), 1.0, 0.0, lo=1, hi=64, a=1.0, b=0.5)
        assert s == expected
    s, _ = best_width(TaskTruth(work_seconds=50.0, p=0.999), 1.0, 0.0, lo=1, hi=16, a=1.0, b=0.5)
    assert s == 16
    s, _ = best_width(TaskTruth(work_seconds=50.0, p=0.3), 1.0, 0.0, lo=3, hi=16, a=1.0, b=0.5)
    assert s == 3


class TruthPolicy:
    """Cheats: knows the truth and the load it will share, so it never regrets."""

    def __init__(self, truth: TaskTruth, shared: float) -> None:
        self.truth = truth
        self.shared = shared

    def decide(self, context: Context) -> int:
        s, _ = best_width(
            self.truth,
            1.0,
            self.shared,
            lo=context.min_parallelism,
            hi=context.max_parallelism,
            a=context.urgency,
            b=context.resource_exponent,
        )
        return s

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        """Knows everything already."""


def test_regret_is_zero_for_the_oracle_choice_and_positive_otherwise() -> None:
    scenario = all_scenarios()["individuals"]
    truth = scenario.tasks[0].truth
    perfect = run_policy(scenario, QUICK, lambda info: TruthPolicy(truth, 0.0))
    assert np.all(perfect.regret == 0.0)
    assert np.array_equal(perfect.widths, perfect.oracle_widths)
    serial = run_policy(scenario, QUICK, lambda info: StaticPolicy(1))
    expected = 292.0 / (truth.true_time([7])[0] * math.sqrt(7)) - 1.0
    assert np.allclose(serial.regret, expected)
    assert np.all(serial.oracle_widths == 7)


def test_oracle_totals_are_best_responses_in_a_contended_stage() -> None:
    scenario = all_scenarios()["frequency"]
    oracle = run_oracle(scenario, QUICK)
    widths = oracle.widths[0, 0]
    for j, task in enumerate(scenario.tasks):
        others = float(widths.sum() - widths[j])
        best, _ = best_width(task.truth, 1.0, others, lo=1, hi=64, a=1.0, b=0.5)
        assert widths[j] == best
    # Totals: the stage time is the slowest task, pod-seconds sum s * T over tasks.
    times = oracle.expected_time[0, 0]
    assert oracle.stage_time[0, 0] == pytest.approx(times.max())
    assert oracle.pod_seconds[0, 0] == pytest.approx(float(np.dot(widths, times)))


def test_loads_seen_at_decision_and_shared_during_the_run() -> None:
    scenario = all_scenarios()["frequency"]
    trace = run_policy(scenario, QUICK, lambda info: StaticPolicy(3))
    # Each task sees the widths already granted in its stage (SPEC 6 leases).
    assert np.array_equal(trace.decision_load[0, 0], 3.0 * np.arange(6))


def test_runs_to_target() -> None:
    assert runs_to_target([0.0] * 10) == 1
    assert runs_to_target([1.0] * 3 + [0.0] * 10) == 4
    assert runs_to_target([0.0] * 10 + [1.0]) is None
    # One bad run counts through the rolling mean of five: 0.2 / 5 < 5 % <= 0.3 / 5.
    assert runs_to_target([0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) == 1
    assert runs_to_target([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) == 2
    assert runs_to_target([0.0, 0.0]) is None  # too short for one window


def test_metrics_compare_with_the_oracle() -> None:
    scenario = all_scenarios()["nearly_serial"]
    oracle = run_oracle(scenario, QUICK)
    best = metrics(run_policy(scenario, QUICK, lambda info: StaticPolicy(1)), oracle)
    assert best.mean_regret == 0.0
    assert best.time_vs_oracle == pytest.approx(1.0)
    assert best.pod_seconds_vs_oracle == pytest.approx(1.0)
    assert best.runs_to_target == 1
    wide = metrics(run_policy(scenario, QUICK, lambda info: StaticPolicy(8)), oracle)
    assert wide.mean_regret > 0.5
    assert wide.pod_seconds_vs_oracle > 4.0
    assert wide.runs_to_target is None
    assert len(wide.regret_curve) == QUICK.runs


def test_static_totals_agree_with_static_policy_runs() -> None:
    scenario = all_scenarios()["growing_input"]
    widths, times, pods = static_totals(scenario, QUICK)
    trace = run_policy(scenario, QUICK, lambda info: StaticPolicy(6))
    i = int(np.flatnonzero(widths == 6)[0])
    assert times[i] == pytest.approx(trace.stage_time.sum(axis=1).mean())
    assert pods[i] == pytest.approx(trace.pod_seconds.sum(axis=1).mean())


def test_same_seed_gives_identical_results_and_another_seed_does_not() -> None:
    scenario = all_scenarios()["growing_input"]
    names = ["fanout", "ernest", "tpe", "fitted-amdahl"]
    first = run_scenario(scenario, QUICK, names)
    second = run_scenario(scenario, QUICK, names)
    for name in names:
        for field in ("widths", "regret", "durations", "expected_time"):
            assert np.array_equal(
                getattr(first.traces[name], field), getattr(second.traces[name], field)
            ), (name, field)
    other = run_scenario(scenario, EvalSettings(runs=6, repetitions=2, seed=5), names)
    assert not np.array_equal(first.traces["tpe"].durations, other.traces["tpe"].durations)


def test_common_random_numbers_across_policies() -> None:
    scenario = all_scenarios()["stragglers"]
    a = run_policy(scenario, QUICK, lambda info: StaticPolicy(4))
    b = run_policy(scenario, QUICK, lambda info: StaticPolicy(4))
    assert np.array_equal(a.durations, b.durations)
    c = run_policy(scenario, QUICK, lambda info: StaticPolicy(5))
    assert not np.array_equal(a.durations, c.durations)


def test_out_of_range_choice_is_an_error_naming_the_field() -> None:
    scenario = Scenario(
        name="tiny",
        title="tiny",
        description="",
        stages=((SimTask("t", "t", TaskTruth(work_seconds=10.0, p=0.5)),),),
        max_parallelism=4,
    )

    class Rogue(StaticPolicy):
        def decide(self, context: Context) -> int:
            return 9

    with pytest.raises(ValueError, match=r"^parallelism: "):
        run_policy(scenario, QUICK, lambda info: Rogue(1))


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("runs", {"runs": 1}), ("repetitions", {"repetitions": 0}), ("urgency", {"urgency": 0.0})],
)
def test_bad_settings_name_the_field(field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        EvalSettings(**kwargs)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^policies: "):
        run_scenario(all_scenarios()["individuals"], QUICK, ["no-such-policy"])


def test_policy_info_gives_each_repetition_its_own_seed() -> None:
    seeds: list[int] = []

    def build(info: PolicyInfo) -> StaticPolicy:
        seeds.append(info.seed)
        return StaticPolicy(1)

    run_policy(all_scenarios()["individuals"], QUICK, build)
    assert len(set(seeds)) == QUICK.repetitions
