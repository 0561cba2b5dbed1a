"""Baselines and the fanout policy, each on a case with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fanout.sim.policies import (
    Context,
    ErnestPolicy,
    FanoutPolicy,
    FittedAmdahlPolicy,
    NaiveAmdahlPolicy,
    StaticPolicy,
    TpePolicy,
    argmin_with_ties,
    ernest_design,
    register_policy,
    registered_policies,
)


def context(
    *,
    size: float | None = None,
    lo: int = 1,
    hi: int = 64,
    a: float = 1.0,
    b: float = 0.5,
    load: float = 0.0,
) -> Context:
    return Context(
        run=0,
        input_size=size,
        cluster_load=load,
        min_parallelism=lo,
        max_parallelism=hi,
        urgency=a,
        resource_exponent=b,
    )


def amdahl(s: float, *, t1: float, p: float, gamma: float = 1.0) -> float:
    return gamma * t1 * ((1 - p) + p / s)


def test_static_widths_are_clipped_to_the_limits() -> None:
    assert StaticPolicy(1).decide(context(lo=2, hi=10)) == 2
    assert StaticPolicy(4).decide(context(hi=3)) == 3
    assert StaticPolicy(4).decide(context()) == 4
    assert StaticPolicy(None).decide(context(hi=17)) == 17


def test_ties_go_to_the_smaller_width() -> None:
    widths = np.array([1.0, 2.0, 3.0])
    assert argmin_with_ties(widths, np.array([10.0, 9.99, 9.98])) == 1
    assert argmin_with_ties(widths, np.array([10.0, 9.0, 8.0])) == 3


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    # Score (T1/s)^a * s^b = T1^a * s^(b-a): falls with s when b < a, rises when b > a.
    [(1.0, 0.5, 32), (2.0, 0.5, 32), (1.0, 1.5, 1), (0.5, 1.0, 1)],
)
def test_naive_amdahl_choice_equals_the_analytic_one(a: float, b: float, expected: int) -> None:
    policy = NaiveAmdahlPolicy()
    ctx = context(hi=32, a=a, b=b)
    assert policy.decide(ctx) == 1  # baseline first
    policy.observe(1, ctx, 120.0, None)
    assert policy.decide(ctx) == expected
    assert policy.predict(4, ctx) == pytest.approx(30.0)


def test_fitted_amdahl_recovers_p_and_picks_the_analytic_width() -> None:
    t1, p = 100.0, 0.8
    policy = FittedAmdahlPolicy()
    ctx = context()
    assert policy.decide(ctx) == 1
    policy.observe(1, ctx, amdahl(1, t1=t1, p=p), None)
    assert policy.decide(ctx) == 5  # the probe
    policy.observe(5, ctx, amdahl(5, t1=t1, p=p), None)
    assert policy.p == pytest.approx(p)
    # T_A * sqrt(s) is minimal at s* = p / (1 - p) = 4, inside [1, ceil(1.5 s*)].
    assert policy.decide(ctx) == 4
    assert policy.predict(4, ctx) == pytest.approx(amdahl(4, t1=t1, p=p))


def test_fitted_amdahl_uses_measured_startup_and_the_moving_average() -> None:
    policy = FittedAmdahlPolicy(alpha=0.5)
    ctx = context()
    policy.observe(1, ctx, 110.0, 10.0)  # T1 = 100 after the start-up
    policy.observe(5, ctx, 10.0 + amdahl(5, t1=100.0, p=0.6), 10.0)
    policy.observe(5, ctx, 10.0 + amdahl(5, t1=100.0, p=0.8), 10.0)
    assert policy.p == pytest.approx(0.5 * 0.6 + 0.5 * 0.8)


def test_fitted_amdahl_gets_stuck_at_one_when_p_is_zero() -> None:
    policy = FittedAmdahlPolicy()
    ctx = context()
    policy.observe(1, ctx, 100.0, None)
    policy.observe(5, ctx, 120.0, None)  # slower than serial: p clipped to 0
    assert policy.p == 0.0
    assert policy.decide(ctx) == 1


def test_ernest_recovers_known_coefficients() -> None:
    truth = np.array([3.0, 50.0, 2.0, 0.5])
    policy = ErnestPolicy()
    for s, size in [(1, 100.0), (2, 150.0), (4, 100.0), (8, 200.0), (16, 100.0), (32, 300.0)]:
        ctx = context(size=size)
        gamma = size / 100.0
        duration = truth @ np.array([1.0, gamma / s, math.log(s), s])
        policy.observe(s, ctx, float(duration), None)
    assert policy.coefficients is not None
    assert np.allclose(policy.coefficients, truth, rtol=1e-6)


def test_ernest_runs_its_design_then_picks_the_best_predicted_width() -> None:
    truth = np.array([2.0, 100.0, 0.0, 1.0])
    policy = ErnestPolicy(design_points=5)
    ctx = context(hi=40)
    design = ernest_design(ctx.widths(), 5)
    seen = []
    for _ in range(5):
        s = policy.decide(ctx)
        seen.append(s)
        policy.observe(s, ctx, float(truth @ [1.0, 1.0 / s, math.log(s), s]), None)
    assert seen == design
    widths = ctx.widths()
    score = (truth[0] + truth[1] / widths + truth[3] * widths) * np.sqrt(widths)
    assert policy.decide(ctx) == int(widths[np.argmin(score)])


def test_ernest_design_is_informative_and_cheap() -> None:
    candidates = np.arange(1, 65, dtype=np.float64)
    design = ernest_design(candidates, 5)
    assert design == sorted(design)
    assert design[0] == 1
    assert len(set(design)) >= 4  # enough distinct widths to identify four coefficients
    assert all(1 <= s <= 64 for s in design)
    # Weighting by cost keeps it well below the widest widths a plain design would run.
    assert sum(design) < 32
    features = np.column_stack(
        [np.ones(5), 1.0 / np.array(design), np.log(design), np.array(design, dtype=float)]
    )
    assert np.linalg.matrix_rank(features) == 4


def test_tpe_finds_the_optimum_of_a_tiny_search_space() -> None:
    policy = TpePolicy(seed=3)
    ctx = context(hi=5)
    # Durations chosen so that the score T * sqrt(s) is 10 + (s - 3)^2: best at s = 3.
    chosen = []
    for _ in range(35):
        s = policy.decide(ctx)
        chosen.append(s)
        policy.observe(s, ctx, (10.0 + (s - 3) ** 2) / math.sqrt(s), None)
    assert policy.study.best_trial.params["s"] == 3
    # After its random start-up trials TPE samples the optimum more than any other width.
    guided = chosen[10:]
    assert max(range(1, 6), key=guided.count) == 3


def test_tpe_is_deterministic_for_a_seed() -> None:
    def widths(seed: int) -> list[int]:
        policy = TpePolicy(seed=seed)
        ctx = context(hi=16)
        out = []
        for _ in range(15):
            s = policy.decide(ctx)
            policy.observe(s, ctx, 100.0 / s + s, None)
            out.append(s)
        return out

    assert widths(7) == widths(7)
    assert widths(7) != widths(8)


def test_tpe_rejects_a_report_it_did_not_ask_for() -> None:
    policy = TpePolicy(seed=0)
    with pytest.raises(ValueError, match=r"^s: "):
        policy.observe(3, context(), 10.0, None)


def test_fanout_policy_goes_through_baseline_and_probe() -> None:
    policy = FanoutPolicy(seed=0)
    ctx = context()
    assert policy.decide(ctx) == 1
    assert math.isnan(policy.predict(1, ctx))
    policy.observe(1, ctx, amdahl(1, t1=200.0, p=0.9), None)
    assert policy.decide(ctx) == 5
    policy.observe(5, ctx, amdahl(5, t1=200.0, p=0.9), None)
    s = policy.decide(ctx)
    assert 1 <= s <= 64
    assert policy.predict(5, ctx) == pytest.approx(amdahl(5, t1=200.0, p=0.9), rel=0.05)


def test_registering_a_policy_twice_is_refused() -> None:
    name = next(iter(registered_policies()))
    with pytest.raises(ValueError, match=r"^policy: "):
        register_policy(name, "again", lambda info: StaticPolicy(1))
