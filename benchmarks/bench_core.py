"""Rust core against numpy/scikit-learn on the request path (issue 2 figures).

Each figure is a speed-up: the median time of the numpy reference (tests/reference.py)
or of sklearn, divided by the median time of `fanout._core`, over at least 5 repeats of
enough inner loops to last a few milliseconds.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from fanout import _core

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import reference as ref  # the reference lives with the tests

F64 = NDArray[np.float64]
REPEATS = 9
# Inner loops per repeat: about 20 ms of the slower side.
BUDGET_NS = 20e6
# The fitted input-size exponent of a typical task; k != 1 makes gamma^k a real power.
K = 1.3


def compare_ns(reference: Callable[[], object], rust: Callable[[], object]) -> tuple[float, float]:
    """Median time per call in nanoseconds of `reference` and of `rust`.

    The two alternate repeat by repeat, so load from other processes on this shared
    machine hits both alike instead of skewing whichever ran during a busy spell.
    """
    inner = []
    for call in (reference, rust):
        call()  # warm caches, the rayon pool, lazily imported modules
        start = time.perf_counter_ns()
        call()
        once = max(time.perf_counter_ns() - start, 1)
        inner.append(max(1, int(BUDGET_NS // once)))
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEATS):
        for call, loops, times in zip((reference, rust), inner, samples, strict=True):
            start = time.perf_counter_ns()
            for _ in range(loops):
                call()
            times.append((time.perf_counter_ns() - start) / loops)
    return float(np.median(samples[0])), float(np.median(samples[1]))


def decision_inputs(rows: int, *, unit_gamma: bool) -> tuple[F64, F64, F64]:
    rng = np.random.default_rng(rows)
    s = rng.integers(1, 65, rows).astype(np.float64)
    gamma = np.ones(rows) if unit_gamma else rng.uniform(0.5, 2.0, rows)
    sd = rng.uniform(0.0, 5.0, rows)
    return s, gamma, sd


def decision_speedup(rows: int, *, unit_gamma: bool) -> tuple[float, float, float]:
    """(numpy ns, rust ns, ratio) for amdahl_time + choose at a = 1, b = 0.5."""
    s, gamma, sd = decision_inputs(rows, unit_gamma=unit_gamma)
    model = {"t1": 300.0, "p": 0.93, "c": 5.0, "k": K}

    def numpy_decision() -> object:
        mean = ref.amdahl_time(s, gamma, **model)
        return ref.choose(s, mean, sd)

    def rust_decision() -> object:
        mean = _core.amdahl_time(s, gamma, **model)
        return _core.choose(s, mean, sd)

    assert numpy_decision()[0] == rust_decision()[0]  # type: ignore[index]
    numpy_ns, rust_ns = compare_ns(numpy_decision, rust_decision)
    return numpy_ns, rust_ns, numpy_ns / rust_ns


def fitted_gp(width: int) -> tuple[Any, dict[str, Any]]:
    """sklearn's residual GP on a random window of `width` runs, and its state."""
    rng = np.random.default_rng(0)
    s = rng.integers(1, 33, width).astype(np.float64)
    gamma = np.exp(rng.uniform(-1, 1, width))
    load = rng.uniform(0, 60, width)
    residual = 5 * np.sin(np.log(s)) + 0.1 * load + rng.normal(0, 1, width)
    features = np.column_stack((np.log(s), np.log(gamma), np.log1p(load)))
    x_mean, x_scale = features.mean(axis=0), features.std(axis=0)
    gpr = GaussianProcessRegressor(
        ConstantKernel() * RBF([1.0, 1.0, 1.0], (1e-2, 1e2)) + WhiteKernel(),
        normalize_y=True,
        n_restarts_optimizer=2,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gpr.fit((features - x_mean) / x_scale, residual)
    params = gpr.kernel_.get_params()
    state = {
        "x_train": np.ascontiguousarray(gpr.X_train_),
        "alpha": np.ravel(gpr.alpha_),
        "chol": np.ascontiguousarray(gpr.L_),
        "constant": float(params["k1__k1__constant_value"]),
        "length_scales": np.asarray(params["k1__k2__length_scale"], dtype=np.float64),
        "noise": float(params["k2__noise_level"]),
        "x_mean": x_mean,
        "x_scale": x_scale,
        "y_mean": float(np.ravel(gpr._y_train_mean)[0]),
        "y_scale": float(np.ravel(gpr._y_train_std)[0]),
    }
    return gpr, state


def gp_speedup(gpr: Any, state: dict[str, Any], rows: int) -> tuple[float, float, float]:
    """(sklearn ns, rust ns, ratio) for the posterior (mean, sd) of `rows` candidates."""
    rng = np.random.default_rng(rows)
    s = rng.integers(1, 65, rows).astype(np.float64)
    gamma = rng.uniform(0.5, 2.0, rows)
    load = rng.uniform(0.0, 100.0, rows)
    posterior = _core.GpPosterior(**state)

    def sklearn_predict() -> object:
        features = np.column_stack((np.log(s), np.log(gamma), np.log1p(load)))
        return gpr.predict((features - state["x_mean"]) / state["x_scale"], return_std=True)

    def rust_predict() -> object:
        return posterior.predict(s, gamma, load)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's clipped-variance notice
        sklearn_ns, rust_ns = compare_ns(sklearn_predict, rust_predict)
    return sklearn_ns, rust_ns, sklearn_ns / rust_ns


def run() -> dict[str, float]:
    """Print the table and return the named speed-ups."""
    figures: dict[str, float] = {}
    lines = []
    for label, rows in (("64", 64), ("1e6", 1_000_000)):
        for unit_gamma, suffix in ((False, ""), (True, "_gamma1")):
            slow, fast, ratio = decision_speedup(rows, unit_gamma=unit_gamma)
            key = f"rust_vs_numpy_{label}{suffix}"
            figures[key] = ratio
            what = f"amdahl_time+choose, {rows} rows, " + ("gamma=1" if unit_gamma else f"k={K}")
            lines.append((key, what, slow, fast, ratio))
    gpr, state = fitted_gp(50)
    for label, rows in (("64", 64), ("1e5", 100_000)):
        slow, fast, ratio = gp_speedup(gpr, state, rows)
        key = f"gp_rust_vs_sklearn_{label}"
        figures[key] = ratio
        lines.append((key, f"GP predict (mean, sd), W=50, {rows} candidates", slow, fast, ratio))
    print(f"{'figure':<28} {'workload':<46} {'reference':>12} {'rust':>12} {'speed-up':>9}")
    for key, what, slow, fast, ratio in lines:
        print(f"{key:<28} {what:<46} {slow / 1e3:>9.1f} us {fast / 1e3:>9.1f} us {ratio:>8.1f}x")
    return figures


if __name__ == "__main__":
    run()
