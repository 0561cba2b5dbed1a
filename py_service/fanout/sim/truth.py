"""Ground-truth run-time law of a simulated task.

One execution at width `s`, relative input size `gamma` and `load` pods of other work
on the cluster takes

    T = C + (q * s + gamma^k * W * ((1 - p) + p / s * X_max)) * slowdown(s + load)
    slowdown(pods) = max(1, pods / K)^theta

times a mean-one multiplicative noise, where `C` is the start-up overhead, `q` the
per-pod overhead, `W` the work at `s = 1` on an idle cluster and `X_max` the slowest of
`s` mean-one lognormal piece durations (the stage ends with its slowest piece).
`true_time` is the exact expectation of `T`, which the oracle minimises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

F64 = NDArray[np.float64]

# Quadrature grid for E[max of s lognormals]; +-9 standard normals hold all the mass
# of the maximum for any width the simulator allows.
_Z = np.linspace(-9.0, 9.0, 4001)
_PHI = np.exp(-0.5 * _Z**2) / math.sqrt(2.0 * math.pi)
_CDF = ndtr(_Z)


@lru_cache(maxsize=64)
def _max_table(sigma: float, size: int) -> F64:
    """`E[max of s iid mean-one lognormal(sigma)]` for s = 1..size, shape (size,)."""
    widths = np.arange(1, size + 1, dtype=np.float64)[:, None]
    piece = np.exp(sigma * _Z - 0.5 * sigma**2)
    # Density of the maximum of s standard normals: s * phi(z) * Phi(z)^(s-1).
    density = widths * _PHI * np.power(_CDF, widths - 1.0)
    table = np.asarray(np.trapezoid(piece * density, _Z, axis=1), dtype=np.float64)
    table.setflags(write=False)
    return table


def expected_slowest_piece(widths: ArrayLike, sigma: float) -> F64:
    """Expected slowest of `s` mean-one lognormal pieces, same shape as `widths`."""
    s = np.asarray(widths, dtype=np.float64)
    if sigma == 0.0:
        return np.ones_like(s)
    whole = np.rint(s).astype(np.int64)
    if s.size and (whole.min() < 1 or not np.array_equal(whole, s)):
        raise ValueError("widths must be whole numbers >= 1")
    size = 1 << max(6, int(whole.max(initial=1) - 1).bit_length())
    return _max_table(float(sigma), size)[whole - 1]


@dataclass(frozen=True, kw_only=True)
class TaskTruth:
    """Parameters of the law above; `capacity_pods = inf` means no contention."""

    work_seconds: float
    p: float
    k: float = 1.0
    startup_seconds: float = 0.0
    per_pod_seconds: float = 0.0
    straggler_sigma: float = 0.0
    noise: float = 0.05
    capacity_pods: float = math.inf
    contention_exponent: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "work_seconds": self.work_seconds > 0,
            "p": 0.0 <= self.p <= 1.0,
            "k": self.k >= 0,
            "startup_seconds": self.startup_seconds >= 0,
            "per_pod_seconds": self.per_pod_seconds >= 0,
            "straggler_sigma": self.straggler_sigma >= 0,
            "noise": self.noise >= 0,
            "capacity_pods": self.capacity_pods > 0,
            "contention_exponent": self.contention_exponent >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: out of range ({getattr(self, name)!r})")

    def slowdown(self, pods: ArrayLike) -> F64:
        """Contention factor for `pods` running at once (own plus others')."""
        total = np.asarray(pods, dtype=np.float64)
        if math.isinf(self.capacity_pods) or self.contention_exponent == 0.0:
            return np.ones_like(total)
        return np.maximum(1.0, total / self.capacity_pods) ** self.contention_exponent

    def true_time(self, s: ArrayLike, gamma: float = 1.0, load: ArrayLike = 0.0) -> F64:
        """Expected run time in seconds, shape like `s` (whole widths >= 1); `load` is a
        number or an array broadcasting with `s`."""
        widths = np.asarray(s, dtype=np.float64)
        work = gamma**self.k * self.work_seconds
        pieces = (1.0 - self.p) + self.p / widths * expected_slowest_piece(
            widths, self.straggler_sigma
        )
        busy = self.per_pod_seconds * widths + work * pieces
        slowdown = self.slowdown(widths + np.asarray(load, dtype=np.float64))
        return np.asarray(self.startup_seconds + busy * slowdown, dtype=np.float64)

    def sample(
        self, s: int, gamma: float, load: float, rng: np.random.Generator
    ) -> tuple[float, float | None]:
        """One run: `(duration, measured start-up or None)`, mean `true_time`."""
        noise = _mean_one_factor(rng, self.noise)
        startup = self.startup_seconds * _mean_one_factor(rng, self.noise)
        sigma = self.straggler_sigma
        slowest = float(rng.lognormal(-0.5 * sigma**2, sigma, size=s).max()) if sigma > 0 else 1.0
        work = gamma**self.k * self.work_seconds * ((1.0 - self.p) + self.p / s * slowest)
        busy = (self.per_pod_seconds * s + work) * float(self.slowdown(s + load))
        duration = startup + busy * noise
        return duration, (startup if self.startup_seconds > 0 else None)

    def slowed(self, *, work_factor: float, overhead_factor: float) -> TaskTruth:
        """The same task on a slower cluster (drift)."""
        return replace(
            self,
            work_seconds=self.work_seconds * work_factor,
            startup_seconds=self.startup_seconds * overhead_factor,
            per_pod_seconds=self.per_pod_seconds * overhead_factor,
        )


def _mean_one_factor(rng: np.random.Generator, sigma: float) -> float:
    """A lognormal draw with mean 1 and log-spread `sigma` (1 when sigma is 0)."""
    return float(rng.lognormal(-0.5 * sigma**2, sigma)) if sigma > 0 else 1.0
