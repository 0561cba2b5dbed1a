"""SPEC section 7 worked examples, one test each (core-level ones first; the model-level
examples are added below them)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fanout import _core

F64 = NDArray[np.float64]


def _a(*values: float) -> F64:
    return np.array(values, dtype=np.float64)


def individuals_p0() -> float:
    """The individuals stage's first estimate: T1 = 292, one run at s = 4 taking 82 s."""
    return float(_core.p_current(_a(4), _a(1), _a(82), t1=292.0, c=0.0, k=1.0)[0])


def test_individuals_first_estimate_of_p() -> None:
    assert round(individuals_p0(), 3) == 0.959


def test_individuals_amdahl_times() -> None:
    times = _core.amdahl_time(
        _a(2, 4, 6, 8), np.ones(4), t1=292.0, p=individuals_p0(), c=0.0, k=1.0
    )
    assert list(np.round(times, 1)) == [152.0, 82.0, 58.7, 47.0]


def test_individuals_cost_target_and_capped_decision() -> None:
    p = individuals_p0()
    assert round(p / (1 - p), 1) == 23.3
    # The wide rule's bound is ceil(1.5 * 23.33...) = 35: the target's value, exactly.
    assert _core.search_bounds(p, max_parallelism=1000) == (1, 35)
    lo, hi = _core.search_bounds(p, max_parallelism=8)
    assert (lo, hi) == (1, 8)
    widths = np.arange(float(lo), float(hi) + 1)
    mean = _core.amdahl_time(widths, np.ones(len(widths)), t1=292.0, p=p, c=0.0, k=1.0)
    index, scores, met = _core.choose(widths, mean, np.zeros(len(widths)))
    assert (int(widths[index]), met) == (8, True)
    assert np.all(np.diff(scores) < 0)  # still falling at the cap


def test_individuals_efficiency_bound() -> None:
    p = individuals_p0()
    assert round(p / (1 - p) * 0.9 / 0.1) == 210
    assert _core.search_bounds(p, strategy="efficiency", max_parallelism=1000) == (1, 210)


def test_frequency_first_estimate_and_times() -> None:
    p0 = float(_core.p_current(_a(4), _a(1), _a(55), t1=101.0, c=0.0, k=1.0)[0])
    assert round(p0, 2) == 0.61
    times = _core.amdahl_time(_a(2, 3, 4), np.ones(3), t1=101.0, p=p0, c=0.0, k=1.0)
    assert list(np.round(times)) == [70.0, 60.0, 55.0]


def test_frequency_model_times() -> None:
    times = _core.amdahl_time(_a(2, 3, 4), np.ones(3), t1=55.0, p=0.58, c=0.0, k=1.0)
    assert list(np.round(times)) == [39.0, 34.0, 31.0]
