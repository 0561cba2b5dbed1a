"""Prediction and decision math of fanout, implemented in Rust (crate `core_rs`).

Every function validates its arguments first and raises `ValueError` naming the
offending argument (e.g. ``s[3] must be >= 1, got 0.5``); nothing is computed on bad
input. Array arguments are 1-d float64 of equal length ``n`` unless stated otherwise;
outputs are new arrays. Long batches release the GIL and use all cores.
"""

from typing import Self, final

import numpy as np
from numpy.typing import NDArray

# Stub-only aliases: (n,) and (n, m) float64 arrays.
_F64Array = NDArray[np.float64]
_F64Array2 = NDArray[np.float64]

__all__ = [
    "GpPosterior",
    "amdahl_time",
    "baseline_t1",
    "choose",
    "encode_candidates",
    "expected_score",
    "fit_k",
    "normal_quantile",
    "p_current",
    "replay_p",
    "search_bounds",
]

def amdahl_time(
    s: _F64Array, gamma: _F64Array, *, t1: float, p: float, c: float, k: float
) -> _F64Array:
    """Amdahl time ``c + gamma**k * t1 * ((1 - p) + p / s)`` per row (SPEC 2).

    s : shape (n,), >= 1.  gamma : shape (n,), > 0.
    t1 > 0, p in [0, 1], c >= 0, k in [0, 3].  Returns shape (n,).
    """

def p_current(
    s: _F64Array, gamma: _F64Array, t: _F64Array, *, t1: float, c: float, k: float
) -> _F64Array:
    """Parallel fraction implied by each run (SPEC 3, 4.5), shape (n,).

    ``s / (s - 1) * (1 - (t - c) / (gamma**k * t1))`` clipped to [0, 1], with ``t - c``
    floored at ``1e-3 * t``. Needs s > 1 (a run at s = 1 says nothing about p); t > 0.
    """

def replay_p(p_cur: _F64Array, *, alpha: float) -> float:
    """Moving average ``p <- alpha * p + (1 - alpha) * p_cur[i]`` from ``p_cur[0]`` (SPEC 4.5).

    p_cur : shape (n,), n >= 1, values in [0, 1].  alpha in (0, 1].
    """

def fit_k(
    s: _F64Array, gamma: _F64Array, t: _F64Array, *, c: float, min_spread: float = 0.05
) -> float | None:
    """Least-squares ``k`` of ``ln(t - c) = k ln(gamma) + a_(s)`` (SPEC 4.3).

    One free intercept per distinct s. Clipped to [0, 3]; None when the within-s sum of
    squared deviations of ``ln gamma`` is below ``min_spread`` (or below 1e-12, which is
    rounding noise). ``t - c`` is
    floored at ``1e-3 * t``.
    """

def baseline_t1(
    s: _F64Array, gamma: _F64Array, t: _F64Array, *, c: float, k: float
) -> float | None:
    """Mean of ``(t - c) / gamma**k`` over rows with s == 1 (SPEC 4.4); None without any.

    ``t - c`` is floored at ``1e-3 * t``.
    """

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
    """Integer search space ``(lo, hi)`` of the decision (SPEC 5.1).

    strategy "cost": target ``s* = (a/b - 1) * p/(1-p)`` (a = urgency, b =
    resource_exponent; 1 when a <= b), rule "wide" ``[1, ceil(1.5 s*)]``, "tight"
    ``[1, ceil(1.2 s*)]``, "centered" ``[floor(0.5 s*), ceil(1.5 s*)]``.
    strategy "efficiency": ``[1, ceil(p/(1-p) * eta/(1-eta))]``. p >= 1 (or b = 0) is
    unbounded. Then clipped into ``[min_parallelism, max_parallelism]``. Values within
    1e-9 relative of an integer round to that integer.
    """

def expected_score(
    s: _F64Array,
    mean: _F64Array,
    sd: _F64Array,
    *,
    urgency: float = 1.0,
    resource_exponent: float = 0.5,
    nodes: int = 32,
) -> _F64Array:
    """Score ``J = E[P**a] * s**b`` per candidate (SPEC 5.3).

    ``P ~ Normal(mean, sd**2)`` with negative values clamped to 0.

    s : shape (n,), >= 1.  mean : shape (n,).  sd : shape (n,), >= 0.
    a = urgency > 0, b = resource_exponent >= 0. a == 1 is exact (``max(mean, 0)``);
    otherwise Gauss-Hermite quadrature with ``nodes`` (1..256) nodes, the physicists'
    rule of ``numpy.polynomial.hermite.hermgauss`` at ``mean + sqrt(2) * sd * x``.
    Returns shape (n,).
    """

def choose(
    s: _F64Array,
    mean: _F64Array,
    sd: _F64Array,
    *,
    urgency: float = 1.0,
    resource_exponent: float = 0.5,
    deadline: float | None = None,
    confidence: float = 0.9,
    tie_tolerance: float = 0.005,
    nodes: int = 32,
) -> tuple[int, _F64Array, bool]:
    """Pick a candidate (SPEC 5.3-5.5); returns ``(index, scores, deadline_met)``.

    Scores as `expected_score`. With a deadline, only rows with
    ``mean + z * sd <= deadline`` (z the Normal quantile of ``confidence``) are kept; if
    none is, the row with the smallest mean is chosen and ``deadline_met`` is False.
    Among kept rows: the smallest s whose score is <= ``min * (1 + tie_tolerance)``.
    s need not be sorted; ``index`` points into the input, scores has shape (n,).
    """

def encode_candidates(
    s: _F64Array,
    mean: _F64Array,
    sd: _F64Array,
    score: _F64Array,
    *,
    field: int,
    row_fields: tuple[int, int, int, int],
) -> bytes:
    """The rows as protobuf wire bytes of the repeated message field ``field``.

    ``row_fields`` are the row message's field numbers ``(parallelism, mean, sd,
    score)``: an int32 and three doubles. The bytes equal protobuf's own serialization
    of those messages. s holds whole numbers in [0, 2**31 - 1].
    """

def normal_quantile(q: float) -> float:
    """Standard Normal quantile ``z`` with ``Phi(z) = q``, q in (0, 1) (Wichura, AS 241)."""

@final
class GpPosterior:
    """Serve-time posterior of a residual GP fitted by scikit-learn (SPEC 2).

    Kernel ``ConstantKernel * RBF(3 length scales) + WhiteKernel``, ``normalize_y=True``;
    features ``(log s, log gamma, log1p load)`` standardised with ``x_mean``/``x_scale``.
    """

    # pyo3 builds the object in __new__ (there is no separate __init__ at run time).
    def __new__(
        cls,
        *,
        x_train: _F64Array2,
        alpha: _F64Array,
        chol: _F64Array2,
        constant: float,
        length_scales: _F64Array,
        noise: float,
        x_mean: _F64Array,
        x_scale: _F64Array,
        y_mean: float,
        y_scale: float,
    ) -> Self:
        """Build from a fitted regressor's state.

        x_train : shape (n, 3), standardised features as sklearn saw them (``X_train_``).
        alpha : shape (n,), ``alpha_``.  chol : shape (n, n), lower factor ``L_``.
        constant, length_scales (3,), noise : fitted kernel parameters.
        x_mean, x_scale : shape (3,), the feature standardisation (x_scale > 0).
        y_mean, y_scale : sklearn's target normalisation (y_scale > 0).
        """

    @property
    def n_train(self) -> int:
        """Number of training rows n."""

    def predict(
        self, s: _F64Array, gamma: _F64Array, load: _F64Array
    ) -> tuple[_F64Array, _F64Array]:
        """Residual ``(mean, sd)`` in seconds for raw candidates, shape (m,) each.

        s >= 1, gamma > 0, load >= 0, each shape (m,). Equals sklearn's
        ``predict(features, return_std=True)``.
        """
