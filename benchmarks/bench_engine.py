"""Engine figures: a whole `decide()` and a GP retrain at W = 50 (issue 2 targets)."""

from __future__ import annotations

import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fanout.engine import Observation, TaskConfig, TaskModel


def warm_model(window: int = 50, seed: int = 0) -> TaskModel:
    """A task in OPTIMIZE with a full window of varied runs."""
    rng = np.random.default_rng(seed)
    model = TaskModel(TaskConfig(window=window, max_parallelism=64))
    for i in range(window):
        s = 1 if i == 0 else int(rng.integers(1, 48))
        size = float(rng.uniform(50, 200))
        load = float(rng.integers(0, 30))
        t = 5 + (size / 100) * 300 * (0.01 + 0.99 / s) * (1 + 0.05 * rng.standard_normal())
        model.observe(
            Observation(parallelism=s, duration_seconds=t, input_size=size, cluster_load=load),
            refit=False,
        )
    model.refit()
    return model


def _median_us(fn: object, *, repeats: int, inner: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - start) / inner / 1e3)
    return samples


def run() -> dict[str, float]:
    with threadpool_limits(1):
        model = warm_model()
        decision = model.decide(input_size=120.0, cluster_load=10.0)
        n_candidates = len(decision.candidate_s)
        decide = _median_us(
            lambda: model.decide(input_size=120.0, cluster_load=10.0, max_parallelism=64),
            repeats=7,
            inner=200,
        )
        # Each retrain follows a new report, as on the server: the window has moved.
        retrain = []
        for i in range(9):
            moved = model.clone()
            moved.observe(
                Observation(parallelism=8 + i, duration_seconds=52.0 + i, input_size=120.0),
                refit=False,
            )
            start = time.perf_counter_ns()
            moved.refit()
            retrain.append((time.perf_counter_ns() - start) / 1e6)
    figures = {
        "decide_us_median": statistics.median(decide),
        "retrain_ms_median": statistics.median(retrain),
    }
    print(f"{'engine (W = 50)':<40} {'median':>12}")
    print(f"{f'decide(), {n_candidates} candidates':<40} {figures['decide_us_median']:>9.1f} us")
    print(f"{'GP retrain (3 optimiser starts)':<40} {figures['retrain_ms_median']:>9.1f} ms")
    return figures
