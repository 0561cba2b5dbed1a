"""The simulated cluster: the time law, its calibration to the notes, the scenarios."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fanout.sim import calibration as cal
from fanout.sim.evaluate import EvalSettings, run_policy
from fanout.sim.policies import PolicyInfo, StaticPolicy
from fanout.sim.scenarios import (
    REFERENCE_INPUT_SIZE,
    Drift,
    InputGrowth,
    Scenario,
    SimTask,
    all_scenarios,
)
from fanout.sim.truth import TaskTruth, expected_slowest_piece


def test_expected_slowest_piece_matches_sampling() -> None:
    rng = np.random.default_rng(3)
    sigma = 0.5
    pieces = rng.lognormal(-0.5 * sigma**2, sigma, size=(200_000, 8))
    sampled = pieces.max(axis=1).mean()
    assert expected_slowest_piece([8], sigma)[0] == pytest.approx(sampled, rel=0.01)
    assert expected_slowest_piece([1], sigma)[0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(expected_slowest_piece(np.arange(1, 40), sigma)) > 0)
    assert np.array_equal(expected_slowest_piece([3, 7], 0.0), [1.0, 1.0])


def test_expected_slowest_piece_rejects_fractional_widths() -> None:
    with pytest.raises(ValueError, match="whole numbers"):
        expected_slowest_piece([2.5], 0.3)


def test_true_time_is_the_mean_of_sampled_runs() -> None:
    truth = TaskTruth(
        work_seconds=100.0,
        p=0.9,
        k=1.5,
        startup_seconds=5.0,
        per_pod_seconds=1.0,
        straggler_sigma=0.4,
        noise=0.05,
        capacity_pods=4.0,
        contention_exponent=0.3,
    )
    rng = np.random.default_rng(0)
    for s, gamma, load in ((1, 1.0, 0.0), (6, 2.0, 3.0), (16, 0.5, 10.0)):
        runs = np.array([truth.sample(s, gamma, load, rng)[0] for _ in range(6000)])
        expected = truth.true_time([s], gamma, load)[0]
        assert runs.mean() == pytest.approx(expected, rel=0.01)


def test_true_time_follows_the_stated_law_without_noise_terms() -> None:
    truth = TaskTruth(work_seconds=200.0, p=0.75, k=2.0, startup_seconds=3.0, per_pod_seconds=0.5)
    s = np.array([1.0, 2.0, 8.0])
    expected = 3.0 + 0.5 * s + 1.5**2 * 200.0 * (0.25 + 0.75 / s)
    assert np.allclose(truth.true_time(s, 1.5), expected)


def test_measured_startup_is_reported_only_when_there_is_one() -> None:
    rng = np.random.default_rng(1)
    assert TaskTruth(work_seconds=10.0, p=0.5).sample(2, 1.0, 0.0, rng)[1] is None
    _, startup = TaskTruth(work_seconds=10.0, p=0.5, startup_seconds=4.0).sample(2, 1.0, 0.0, rng)
    assert startup is not None
    assert startup == pytest.approx(4.0, rel=0.3)


def test_contention_starts_beyond_capacity() -> None:
    truth = TaskTruth(work_seconds=100.0, p=0.5, capacity_pods=4.0, contention_exponent=0.5)
    alone = truth.true_time([2], 1.0, 0.0)[0]
    assert truth.true_time([2], 1.0, 2.0)[0] == pytest.approx(alone)
    assert truth.true_time([2], 1.0, 14.0)[0] == pytest.approx(alone * 2.0)


@pytest.mark.parametrize(
    ("field", "value"), [("p", 1.5), ("work_seconds", 0.0), ("noise", -0.1), ("capacity_pods", 0.0)]
)
def test_bad_truth_names_the_field(field: str, value: float) -> None:
    params: dict[str, float] = {"work_seconds": 10.0, "p": 0.5, field: value}
    with pytest.raises(ValueError, match=field):
        TaskTruth(**params)


def _pair_stage(neighbour_width: int) -> tuple[float, float]:
    """Expected times of a task at s = 2 beside a neighbour at `neighbour_width`."""
    truth = TaskTruth(
        work_seconds=100.0, p=0.8, noise=0.0, capacity_pods=4.0, contention_exponent=0.5
    )
    scenario = Scenario(
        name="pair",
        title="pair",
        description="two tasks at once",
        stages=((SimTask("a", "a", truth), SimTask("b", "b", truth)),),
    )

    def build(info: PolicyInfo) -> StaticPolicy:
        return StaticPolicy(2 if info.model_key == "a" else neighbour_width)

    trace = run_policy(scenario, EvalSettings(runs=3, repetitions=1), build)
    assert np.all(trace.widths[0, :, 0] == 2)
    return float(trace.expected_time[0, 0, 0]), float(trace.durations[0, 0, 0])


def test_a_wider_neighbour_slows_a_concurrent_task() -> None:
    quiet_expected, quiet_actual = _pair_stage(1)
    busy_expected, busy_actual = _pair_stage(14)
    assert busy_expected == pytest.approx(quiet_expected * 2.0)  # 16 pods on 4: sqrt(4)
    assert busy_actual > 1.9 * quiet_actual


def test_drift_slows_the_cluster_from_its_run_on() -> None:
    scenario = all_scenarios()["drift"]
    assert scenario.drift is not None
    task = scenario.tasks[0]
    runs = 50
    first = scenario.drift.first_run(runs)
    before = scenario.truth_at(task, first - 1, runs).true_time([4])[0]
    after = scenario.truth_at(task, first, runs).true_time([4])[0]
    assert after > 1.4 * before
    assert Drift(at_fraction=0.5, work_factor=2.0, overhead_factor=1.0).first_run(10) == 5


def test_input_sizes_grow_and_are_reproducible() -> None:
    scenario = all_scenarios()["growing_input"]
    sizes = scenario.input_sizes(40, np.random.default_rng(5))
    again = scenario.input_sizes(40, np.random.default_rng(5))
    assert sizes is not None
    assert again is not None
    assert np.array_equal(sizes, again)
    assert sizes[-10:].mean() > 2.0 * sizes[:10].mean()
    steady = InputGrowth(start=1.0, end=4.0, jitter=0.0).sizes(5, np.random.default_rng(0))
    assert np.allclose(steady, REFERENCE_INPUT_SIZE * np.array([1.0, 2**0.5, 2.0, 2**1.5, 4.0]))
    assert all_scenarios()["individuals"].input_sizes(40, np.random.default_rng(5)) is None


def test_calibration_constants_match_a_fresh_fit_of_the_notes_tables() -> None:
    individuals = cal.fit_individuals()
    assert individuals.p == pytest.approx(cal.INDIVIDUALS_P, abs=5e-4)
    assert individuals.per_pod_seconds == pytest.approx(cal.INDIVIDUALS_PER_POD_SECONDS, abs=5e-3)
    assert individuals.rms_log_error < 0.02
    frequency = cal.fit_frequency()
    assert frequency.all_p == pytest.approx(cal.FREQUENCY_ALL_P, abs=5e-3)
    assert frequency.light_p == pytest.approx(cal.FREQUENCY_LIGHT_P, abs=5e-3)
    assert frequency.all_work_seconds == pytest.approx(cal.FREQUENCY_ALL_WORK_SECONDS, abs=0.5)
    assert frequency.light_work_seconds == pytest.approx(cal.FREQUENCY_LIGHT_WORK_SECONDS, abs=0.5)
    assert frequency.contention_exponent == pytest.approx(
        cal.FREQUENCY_CONTENTION_EXPONENT, abs=5e-3
    )
    assert frequency.rms_log_error < 0.1
    assert cal.pooled_run_noise() == pytest.approx(cal.RUN_NOISE, abs=5e-4)


def test_individuals_scenario_reproduces_table_3() -> None:
    truth = all_scenarios()["individuals"].tasks[0].truth
    widths = np.asarray(cal.NOTES_INDIVIDUALS_WIDTHS)
    simulated = truth.true_time(widths)
    measured = np.asarray(cal.NOTES_INDIVIDUALS_TIMES)
    assert np.allclose(simulated, measured, rtol=0.03)


def test_frequency_scenario_shows_the_noisy_neighbour_effect() -> None:
    scenario = all_scenarios()["frequency"]
    light = next(t for t in scenario.tasks if t.model_key == "frequency_light").truth
    # Table 6: frequency_AFR at s = 1 slows as frequency_ALL widens from 1 to 4 pods.
    times = [light.true_time([1], 1.0, float(s_all))[0] for s_all in (1, 2, 3, 4)]
    assert all(later > earlier for earlier, later in itertools.pairwise(times))
    assert {t.model_key for t in scenario.tasks} == {"frequency_ALL", "frequency_light"}


def test_every_scenario_has_a_sane_oracle_width() -> None:
    for scenario in all_scenarios().values():
        for task in scenario.tasks:
            widths = np.arange(scenario.min_parallelism, scenario.max_parallelism + 1)
            times = task.truth.true_time(widths)
            assert np.all(np.isfinite(times))
            assert np.all(times > 0)
    parallel = all_scenarios()["highly_parallel"]
    truth = parallel.tasks[0].truth
    widths = np.arange(1, parallel.max_parallelism + 1)
    scores = truth.true_time(widths) * np.sqrt(widths)
    assert int(widths[np.argmin(scores)]) == parallel.max_parallelism
    serial = all_scenarios()["nearly_serial"].tasks[0].truth
    assert int(np.argmin(serial.true_time(np.arange(1, 65)) * np.sqrt(np.arange(1, 65)))) == 0
    assert math.isinf(all_scenarios()["individuals"].tasks[0].truth.capacity_pods)
