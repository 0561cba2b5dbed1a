"""Figures carried over from the research notes, and the ground truth fitted to them.

Source of every measured number below: `seed-method-notes.txt` (Tables 1, 3, 4 and 6)
and its transcription `seed-measurements.json`, genome workflow, chunk size 80,000,
each value the mean of three runs. They are copied here because the project never
reads the method folder at run time.

The fitted constants are least-squares fits (in log time) of the simulator's time law
(`fanout.sim.truth`) to those tables; `fit_individuals` and `fit_frequency` redo the
fits, and a test checks that the constants still match them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

F64 = NDArray[np.float64]

# Table 1: baseline runs of the whole workflow, seconds per stage at s = 1.
NOTES_INDIVIDUALS_BASELINE_RUNS = (295.0, 291.0, 290.0)
# Table 3: the individuals stage at width s (stage time = slowest piece).
NOTES_INDIVIDUALS_WIDTHS = (1, 2, 4, 6, 8)
NOTES_INDIVIDUALS_TIMES = (292.0, 150.0, 83.0, 65.0, 55.0)
# Table 4: baseline runs of the simplified frequency DAG (ALL and AFR at s = 1).
NOTES_FREQUENCY_ALL_BASELINE_RUNS = (98.0, 99.0, 105.0)
NOTES_FREQUENCY_AFR_BASELINE_RUNS = (52.0, 54.0, 60.0)
# Table 6: rows (s_all, s_afr, time_all, time_afr); AFR stands for every light population.
NOTES_FREQUENCY_TABLE_6 = (
    (1, 1, 101.0, 55.0),
    (2, 1, 72.0, 64.0),
    (2, 2, 76.0, 57.0),
    (3, 1, 60.0, 66.0),
    (3, 2, 65.0, 60.0),
    (3, 3, 67.0, 50.0),
    (4, 1, 54.0, 69.0),
    (4, 2, 46.0, 50.0),
    (4, 3, 50.0, 42.0),
    (4, 4, 48.0, 37.0),
)

# Fit of Table 3 with start-up 0 and no straggler spread (neither is identifiable from
# five widths; the per-pod term explains the flattening alone), T(1) pinned to 292 s.
INDIVIDUALS_T1 = 292.0
INDIVIDUALS_P = 0.982
INDIVIDUALS_PER_POD_SECONDS = 1.832

# Fit of Table 6 with the law `work * ((1-p) + p/s) * max(1, pods/K)^theta`, pods being
# both tasks' widths. K and the work are not separately identifiable when every row runs
# at least two pods, so K is pinned to 2: the two-pod baseline runs uncontended.
FREQUENCY_CAPACITY_PODS = 2.0
FREQUENCY_CONTENTION_EXPONENT = 0.069
FREQUENCY_ALL_WORK_SECONDS = 110.5
FREQUENCY_ALL_P = 0.751
FREQUENCY_LIGHT_WORK_SECONDS = 63.1
FREQUENCY_LIGHT_P = 0.497

# Run-to-run spread: the pooled relative standard deviation of the three baseline
# series (Tables 1 and 4), used as every scenario's multiplicative noise.
RUN_NOISE = 0.049


@dataclass(frozen=True)
class IndividualsFit:
    """Fitted individuals law; `rms_log_error` is over Table 3."""

    p: float
    per_pod_seconds: float
    rms_log_error: float


@dataclass(frozen=True)
class FrequencyFit:
    """Fitted frequency law; `rms_log_error` is over the 20 times of Table 6."""

    all_work_seconds: float
    all_p: float
    light_work_seconds: float
    light_p: float
    contention_exponent: float
    rms_log_error: float


def individuals_law(widths: F64, p: float, per_pod_seconds: float) -> F64:
    """Stage time, shape like `widths`, with `T(1) = INDIVIDUALS_T1`."""
    work = INDIVIDUALS_T1 - per_pod_seconds
    return per_pod_seconds * widths + work * ((1.0 - p) + p / widths)


def fit_individuals() -> IndividualsFit:
    """Least squares in log time of `individuals_law` against Table 3."""
    widths = np.asarray(NOTES_INDIVIDUALS_WIDTHS, dtype=np.float64)
    times = np.asarray(NOTES_INDIVIDUALS_TIMES, dtype=np.float64)

    def residuals(x: F64) -> F64:
        return np.log(individuals_law(widths, float(x[0]), float(x[1])) / times)

    fit = least_squares(residuals, np.array([0.9, 1.0]), bounds=([0.0, 0.0], [1.0, 50.0]))
    return IndividualsFit(
        p=float(fit.x[0]),
        per_pod_seconds=float(fit.x[1]),
        rms_log_error=float(np.sqrt(np.mean(fit.fun**2))),
    )


def frequency_law(own: F64, other: F64, work: float, p: float, contention_exponent: float) -> F64:
    """One task's time at width `own` beside a task at width `other`, shape (n,)."""
    pods = own + other
    slowdown = np.maximum(1.0, pods / FREQUENCY_CAPACITY_PODS) ** contention_exponent
    return work * ((1.0 - p) + p / own) * slowdown


def fit_frequency() -> FrequencyFit:
    """Least squares in log time of `frequency_law` against Table 6."""
    table = np.asarray(NOTES_FREQUENCY_TABLE_6, dtype=np.float64)
    s_all, s_afr, t_all, t_afr = table.T

    def residuals(x: F64) -> F64:
        w_all, p_all, w_light, p_light, theta = (float(v) for v in x)
        return np.concatenate(
            (
                np.log(frequency_law(s_all, s_afr, w_all, p_all, theta) / t_all),
                np.log(frequency_law(s_afr, s_all, w_light, p_light, theta) / t_afr),
            )
        )

    fit = least_squares(
        residuals,
        np.array([100.0, 0.6, 55.0, 0.6, 0.3]),
        bounds=([1.0, 0.0, 1.0, 0.0, 0.0], [1000.0, 1.0, 1000.0, 1.0, 3.0]),
    )
    w_all, p_all, w_light, p_light, theta = (float(v) for v in fit.x)
    return FrequencyFit(
        all_work_seconds=w_all,
        all_p=p_all,
        light_work_seconds=w_light,
        light_p=p_light,
        contention_exponent=theta,
        rms_log_error=float(np.sqrt(np.mean(fit.fun**2))),
    )


def pooled_run_noise() -> float:
    """Root mean square of the relative spreads of the three baseline series."""
    series = (
        NOTES_INDIVIDUALS_BASELINE_RUNS,
        NOTES_FREQUENCY_ALL_BASELINE_RUNS,
        NOTES_FREQUENCY_AFR_BASELINE_RUNS,
    )
    relative = [np.std(s, ddof=1) / np.mean(s) for s in series]
    return float(np.sqrt(np.mean(np.square(relative))))
