"""The task model: phases, learning, decisions, persistence (SPEC sections 3-5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fanout.engine import ConfigError, Observation, Phase, StateError, TaskConfig, TaskModel


def true_time(
    s: int, gamma: float = 1.0, *, t1: float, p: float, c: float, k: float = 1.0
) -> float:
    return float(c + gamma**k * t1 * ((1 - p) + p / s))


def run_task(
    model: TaskModel,
    runs: int,
    *,
    t1: float,
    p: float,
    c: float,
    k: float = 1.0,
    noise: float = 0.05,
    sizes: tuple[float, float] | None = None,
    seed: int = 1,
) -> list[int]:
    """Drive a synthetic Amdahl task; returns the widths chosen."""
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(runs):
        size = None if sizes is None else float(rng.uniform(*sizes))
        gamma = 1.0 if size is None else size / 100.0
        decision = model.decide(input_size=size)
        s = decision.parallelism
        chosen.append(s)
        duration = true_time(s, gamma, t1=t1, p=p, c=c, k=k) * (1 + noise * rng.standard_normal())
        startup = c * (1 + 0.1 * rng.standard_normal()) if c > 0 else None
        model.observe(
            Observation(
                parallelism=s, duration_seconds=duration, input_size=size, startup_seconds=startup
            )
        )
    return chosen


def test_phases_follow_the_spec() -> None:
    model = TaskModel(TaskConfig(max_parallelism=16))
    first = model.decide()
    assert (first.phase, first.parallelism) == (Phase.BASELINE, 1)
    assert math.isnan(first.mean_seconds)
    model.observe(Observation(parallelism=1, duration_seconds=292.0))
    probe = model.decide()
    assert (probe.phase, probe.parallelism) == (Phase.PROBE, 5)
    model.observe(Observation(parallelism=5, duration_seconds=70.0))
    decision = model.decide()
    assert decision.phase is Phase.OPTIMIZE
    assert decision.bounds[0] <= decision.parallelism <= decision.bounds[1]
    assert len(decision.candidate_s) == decision.bounds[1] - decision.bounds[0] + 1
    # The smallest s within 0.5 % of the best score wins (SPEC 5.5).
    best = decision.candidate_score.min()
    ties = decision.candidate_s[decision.candidate_score <= best * 1.005]
    assert decision.parallelism == int(ties.min())


def test_probe_is_clipped_into_the_callers_limits() -> None:
    model = TaskModel(TaskConfig(t1_seconds=100.0))
    assert model.decide(max_parallelism=3).parallelism == 3
    assert model.decide(max_parallelism=1).parallelism == 1


def test_spec_example_individuals_through_the_model() -> None:
    """SPEC 7: T1 = 292 and s = 4 in 82 s give p0 = 0.959 and, capped at 8, s = 8."""
    model = TaskModel(TaskConfig(t1_seconds=292.0, max_parallelism=8))
    model.observe(Observation(parallelism=4, duration_seconds=82.0))
    assert model.state.p == pytest.approx(0.959, abs=5e-4)
    decision = model.decide()
    assert decision.parallelism == 8
    assert decision.bounds == (1, 8)


def test_learning_reaches_the_optimum_with_startup_and_noise() -> None:
    """After 30 reports the choice scores within 5 % of the true optimum."""
    t1, p, c = 300.0, 0.95, 20.0
    model = TaskModel(TaskConfig(max_parallelism=64))
    run_task(model, 30, t1=t1, p=p, c=c)
    s = model.decide().parallelism
    widths = np.arange(1, 65)
    scores = np.array([true_time(int(w), t1=t1, p=p, c=c) * math.sqrt(w) for w in widths])
    chosen_score = true_time(s, t1=t1, p=p, c=c) * math.sqrt(s)
    assert chosen_score <= 1.05 * scores.min(), (s, int(widths[np.argmin(scores)]))
    assert model.state.c == pytest.approx(c, rel=0.1)


def test_input_size_exponent_converges() -> None:
    model = TaskModel(TaskConfig(max_parallelism=32))
    run_task(model, 40, t1=120.0, p=0.9, c=0.0, k=1.5, sizes=(50.0, 400.0), seed=3)
    assert model.state.k == pytest.approx(1.5, abs=0.15)


def test_restored_model_decides_identically() -> None:
    model = TaskModel(TaskConfig(max_parallelism=32, seed=7))
    run_task(model, 12, t1=200.0, p=0.9, c=5.0, sizes=(50.0, 200.0))
    stored = json.loads(json.dumps(model.state_dict()))
    config = json.loads(json.dumps(model.config.to_dict()))
    restored = TaskModel.from_dicts(config, stored)
    for size, load in ((80.0, 0.0), (150.0, 12.0), (None, 3.0)):
        a = model.decide(input_size=size, cluster_load=load, urgency=2.0)
        b = restored.decide(input_size=size, cluster_load=load, urgency=2.0)
        assert a.parallelism == b.parallelism
        np.testing.assert_array_equal(a.candidate_mean, b.candidate_mean)
        np.testing.assert_array_equal(a.candidate_sd, b.candidate_sd)
        np.testing.assert_array_equal(a.candidate_score, b.candidate_score)
    assert model.state_dict() == restored.state_dict()


def test_background_refit_timing_does_not_change_what_is_learned() -> None:
    """Serial replay with refits equals lazy refits (the server refits off the path)."""
    eager = TaskModel(TaskConfig(max_parallelism=16))
    lazy = TaskModel(TaskConfig(max_parallelism=16))
    rng = np.random.default_rng(5)
    for i in range(15):
        s = [1, 5, 3, 8, 4][i % 5]
        obs = Observation(
            parallelism=s,
            duration_seconds=true_time(s, t1=100.0, p=0.8, c=0.0)
            * (1 + 0.05 * rng.standard_normal()),
            cluster_load=float(i % 4),
        )
        eager.observe(obs, refit=True)
        lazy.observe(obs, refit=False)
        assert lazy.summary()["refit_pending"] and not eager.summary()["refit_pending"]
        if i % 3 == 0:
            lazy.refit()
    lazy.refit()
    assert lazy.state_dict() == eager.state_dict()


def test_reprobe_after_ten_decisions_at_one() -> None:
    """A serial-looking task is probed at s = 2 after 10, then 20 decisions at 1."""
    model = TaskModel(TaskConfig(t1_seconds=100.0, p=0.0))
    phases = [model.decide() for _ in range(32)]
    widths = [d.parallelism for d in phases]
    assert widths[:10] == [1] * 10
    assert (widths[10], phases[10].phase) == (2, Phase.PROBE)
    assert widths[11:31] == [1] * 20
    assert widths[31] == 2
    assert model.decide(min_parallelism=3).parallelism >= 3


def test_plan_is_decide_without_side_effects() -> None:
    model = TaskModel(TaskConfig(t1_seconds=100.0, p=0.0))
    for _ in range(12):
        before = model.state_dict()
        planned, counters = model.plan()
        assert model.state_dict() == before
        decided = model.decide()
        assert decided.parallelism == planned.parallelism
        assert (model.state.ones_streak, model.state.reprobe_wait) == counters


def test_a_refit_is_adopted_only_at_its_version() -> None:
    model = TaskModel(TaskConfig(max_parallelism=16))
    for s, t in ((1, 100.0), (4, 30.0), (2, 55.0)):
        model.observe(Observation(parallelism=s, duration_seconds=t), refit=False)
    refitted = model.clone()
    refitted.refit()
    model.adopt_refit(refitted)
    assert not model.needs_refit and model.state.gp_theta == refitted.state.gp_theta
    model.observe(Observation(parallelism=8, duration_seconds=20.0), refit=False)
    with pytest.raises(ValueError, match="version"):
        model.adopt_refit(refitted)


def test_reprobe_skipped_when_limits_exclude_two() -> None:
    model = TaskModel(TaskConfig(t1_seconds=100.0, p=0.0))
    widths = [model.decide(max_parallelism=1).parallelism for _ in range(15)]
    assert widths == [1] * 15


def test_drift_cuts_the_window() -> None:
    """The task got twice as slow: three baseline runs in a row miss high (SPEC 4.0)."""
    model = TaskModel(TaskConfig(max_parallelism=16))
    run_task(model, 20, t1=100.0, p=0.9, c=0.0, noise=0.02)
    assert len(model.state.window) == 20
    assert not model.state.last_drift
    drifts = [
        model.observe(Observation(parallelism=1, duration_seconds=200.0 + i)) for i in range(3)
    ]
    assert drifts == [False, False, True]
    assert len(model.state.window) == 3
    assert model.state.last_drift
    assert model.state.t1 == pytest.approx(201.0)


def test_deadline_filters_and_flags() -> None:
    model = TaskModel(TaskConfig(t1_seconds=100.0, p=0.9, max_parallelism=32))
    relaxed = model.decide()
    tight = model.decide(deadline_seconds=25.0)
    assert tight.parallelism > relaxed.parallelism
    assert tight.candidate_mean[tight.candidate_s == tight.parallelism][0] <= 25.0
    impossible = model.decide(deadline_seconds=1.0)
    assert impossible.deadline_unreachable
    assert impossible.parallelism == int(
        impossible.candidate_s[np.argmin(impossible.candidate_mean)]
    )


def test_unknown_input_size_is_flagged() -> None:
    model = TaskModel(TaskConfig(t1_seconds=100.0, p=0.9, base_input_size=10.0))
    assert model.decide().input_size_unknown
    known = model.decide(input_size=20.0)
    assert not known.input_size_unknown
    assert known.gamma == 2.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window", 1),
        ("alpha", 0.0),
        ("alpha", 1.5),
        ("max_parallelism", 0),
        ("eta", 1.0),
        ("strategy", "fast"),
        ("t1_seconds", -1.0),
        ("p", 1.2),
        ("urgency", math.nan),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        TaskConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field


def test_bad_observation_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        Observation(parallelism=2, duration_seconds=math.inf)
    assert info.value.field == "duration_seconds"
    with pytest.raises(ConfigError) as info:
        Observation(parallelism=0, duration_seconds=1.0)
    assert info.value.field == "parallelism"


def test_corrupt_state_is_refused() -> None:
    model = TaskModel()
    model.observe(Observation(parallelism=1, duration_seconds=10.0))
    state = model.state_dict()
    for corrupt in (
        {**state, "p": 7.0},
        {**state, "window": [["x"]]},
        {"schema": 99},
        {**state, "__reduce__": "os.system"} | {"schema": None},
    ):
        with pytest.raises(StateError):
            TaskModel.from_dicts(model.config.to_dict(), corrupt)
