"""Plain numpy/scipy versions of every `fanout._core` function.

Used only by tests and benchmarks, never by the package: each function is the SPEC
formula written as directly as numpy allows, so a disagreement with the Rust core points
at the core. Arrays are float64 of shape (n,) unless stated otherwise.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import solve_triangular
from scipy.stats import norm

F64 = NDArray[np.float64]

# The core floors a work time t - c at this fraction of t (SPEC 3/4.3-4.5 note).
WORK_FLOOR = 1e-3
# fit_k: a within-s spread of ln gamma below this is rounding noise.
SPREAD_NOISE = 1e-12
# search_bounds treats values within this relative distance of an integer as it.
ROUNDING_SLACK = 1e-9


def work_time(t: F64, c: float) -> F64:
    """`t - c`, floored at `1e-3 * t`."""
    return np.maximum(t - c, WORK_FLOOR * t)


def amdahl_time(s: F64, gamma: F64, *, t1: float, p: float, c: float, k: float) -> F64:
    """SPEC 2: `c + gamma^k * t1 * ((1 - p) + p / s)`."""
    return c + gamma**k * t1 * ((1 - p) + p / s)


def p_current(s: F64, gamma: F64, t: F64, *, t1: float, c: float, k: float) -> F64:
    """SPEC 3/4.5: the parallel fraction each run implies, clipped to [0, 1]."""
    return np.clip(s / (s - 1) * (1 - work_time(t, c) / (gamma**k * t1)), 0.0, 1.0)


def replay_p(p_cur: F64, *, alpha: float) -> float:
    """SPEC 4.5: the moving average replayed from `p_cur[0]`."""
    p = float(p_cur[0])
    for current in p_cur[1:]:
        p = alpha * p + (1 - alpha) * float(current)
    return p


def within_group_sums(s: F64, gamma: F64, t: F64, *, c: float) -> tuple[float, float]:
    """SPEC 4.3: (sum of squared within-s deviations of ln gamma, their covariation)."""
    _, group = np.unique(s, return_inverse=True)
    size = np.bincount(group)
    first = np.zeros(len(size), dtype=np.int64)
    first[group[::-1]] = np.arange(len(s))[::-1]  # each group's first row

    def centred(values: F64) -> F64:
        # Shifted by the group's first value, so identical values centre to exactly 0.
        shift = values[first][group]
        mean = shift + (np.bincount(group, weights=values - shift) / size)[group]
        result: F64 = values - mean
        return result

    dx = centred(np.log(gamma))
    dy = centred(np.log(work_time(t, c)))
    return float(np.sum(dx * dx)), float(np.sum(dx * dy))


def fit_k(s: F64, gamma: F64, t: F64, *, c: float, min_spread: float = 0.05) -> float | None:
    """SPEC 4.3: least-squares k with one intercept per distinct s, clipped to [0, 3]."""
    if len(s) == 0:
        return None
    spread, covariation = within_group_sums(s, gamma, t, c=c)
    if spread < max(min_spread, SPREAD_NOISE):
        return None
    return float(np.clip(covariation / spread, 0.0, 3.0))


def baseline_t1(s: F64, gamma: F64, t: F64, *, c: float, k: float) -> float | None:
    """SPEC 4.4: mean of `(t - c) / gamma^k` over the rows with s == 1."""
    rows = s == 1
    if not rows.any():
        return None
    return float(np.mean(work_time(t[rows], c) / gamma[rows] ** k))


def _ceil(x: float) -> float:
    return math.ceil(x - ROUNDING_SLACK * abs(x))


def _floor(x: float) -> float:
    return math.floor(x + ROUNDING_SLACK * abs(x))


def search_bounds(
    p: float,
    *,
    strategy: str = "cost",
    rule: str = "wide",
    urgency: float = 1.0,
    resource_exponent: float = 0.5,
    eta: float = 0.9,
    min_parallelism: int = 1,
    max_parallelism: int = 64,
) -> tuple[int, int]:
    """SPEC 5.1: the clipped integer search space."""
    a, b = urgency, resource_exponent
    lo: float = 1.0
    hi: float
    if p >= 1:
        hi = math.inf
    elif strategy == "efficiency":
        hi = _ceil(p / (1 - p) * (eta / (1 - eta)))
    else:
        if a <= b:
            target = 1.0
        elif p == 0:
            target = 0.0
        elif b == 0:
            target = math.inf
        else:
            target = (a / b - 1) * (p / (1 - p))
        if math.isinf(target):
            hi = math.inf
        elif rule == "wide":
            hi = _ceil(1.5 * target)
        elif rule == "tight":
            hi = _ceil(1.2 * target)
        else:
            lo, hi = _floor(0.5 * target), _ceil(1.5 * target)
    lo, hi = max(lo, 1.0), max(hi, 1.0)

    def clip(x: float) -> int:
        return int(min(max(x, min_parallelism), max_parallelism))

    return clip(lo), clip(hi)


@functools.cache
def _hermgauss(nodes: int) -> tuple[F64, F64]:
    """numpy's physicists' Gauss-Hermite rule (an eigenproblem; cached)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    return x, w


def expected_score(
    s: F64,
    mean: F64,
    sd: F64,
    *,
    urgency: float = 1.0,
    resource_exponent: float = 0.5,
    nodes: int = 32,
) -> F64:
    """SPEC 5.3: `E[max(P, 0)^a] * s^b`, `P ~ Normal(mean, sd^2)`, by numpy's hermgauss."""
    a, b = urgency, resource_exponent
    if a == 1:
        expected = np.maximum(mean, 0.0)
    else:
        x, w = _hermgauss(nodes)
        points = mean[:, None] + np.sqrt(2.0) * sd[:, None] * x[None, :]
        expected = (np.maximum(points, 0.0) ** a) @ (w / np.sqrt(np.pi))
        expected = np.where(sd == 0, np.maximum(mean, 0.0) ** a, expected)
    result: F64 = expected * s**b
    return result


def choose(
    s: F64,
    mean: F64,
    sd: F64,
    *,
    urgency: float = 1.0,
    resource_exponent: float = 0.5,
    deadline: float | None = None,
    confidence: float = 0.9,
    tie_tolerance: float = 0.005,
    nodes: int = 32,
) -> tuple[int, F64, bool]:
    """SPEC 5.3-5.5: (row chosen, scores, deadline met)."""
    scores = expected_score(
        s, mean, sd, urgency=urgency, resource_exponent=resource_exponent, nodes=nodes
    )
    keep = None if deadline is None else mean + norm.ppf(confidence) * sd <= deadline
    index, met = select(s, mean, scores, keep, tie_tolerance=tie_tolerance)
    return index, scores, met


def select(
    s: F64, mean: F64, scores: F64, keep: NDArray[np.bool_] | None, *, tie_tolerance: float
) -> tuple[int, bool]:
    """SPEC 5.4-5.5 on given scores: (row chosen, whether any row was kept).

    Among kept rows (all when `keep` is None) the smallest s within `tie_tolerance` of
    the best score (earliest row on equal s); with none kept, the smallest mean (then s,
    then row).
    """
    if keep is None:
        near = scores <= scores.min() * (1 + tie_tolerance)
        return int(np.argmin(np.where(near, s, np.inf))), True
    if not keep.any():
        fastest = mean == mean.min()
        return int(np.argmin(np.where(fastest, s, np.inf))), False
    best = scores.min(where=keep, initial=np.inf)
    near = keep & (scores <= best * (1 + tie_tolerance))
    return int(np.argmin(np.where(near, s, np.inf))), True


def normal_quantile(q: float) -> float:
    """The standard Normal quantile (scipy's)."""
    return float(norm.ppf(q))


def gp_predict(
    *,
    x_train: F64,
    alpha: F64,
    chol: F64,
    constant: float,
    length_scales: F64,
    noise: float,
    x_mean: F64,
    x_scale: F64,
    y_mean: float,
    y_scale: float,
    s: F64,
    gamma: F64,
    load: F64,
) -> tuple[F64, F64]:
    """The GpPosterior formula: residual (mean, sd) for raw candidates, shape (m,) each.

    x_train is (n, 3); chol the (n, n) lower Cholesky factor.
    """
    features = (np.column_stack((np.log(s), np.log(gamma), np.log1p(load))) - x_mean) / x_scale
    scaled = features / length_scales
    train = x_train / length_scales
    distance = ((scaled[:, None, :] - train[None, :, :]) ** 2).sum(axis=2)
    cross = constant * np.exp(-0.5 * distance)
    mean = y_scale * (cross @ alpha) + y_mean
    v = solve_triangular(chol, cross.T, lower=True)
    variance = np.maximum(constant + noise - np.einsum("ij,ij->j", v, v), 0.0)
    return mean, np.sqrt(variance * y_scale**2)
