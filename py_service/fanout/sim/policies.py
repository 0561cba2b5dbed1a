"""Width-choosing policies: fanout and the baselines it is compared against.

Every policy sees only what a caller would: the input size (or none), the cluster load
at decision time, the limits and the score exponents; and learns only from the reports
of its own runs. The truth stays with the simulator and the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import nnls

from fanout.engine import Observation, TaskConfig, TaskModel

F64 = NDArray[np.float64]

# SPEC 5.5: scores within 0.5 % count as a tie, which goes to the smaller width.
TIE_TOLERANCE = 0.005
# The notes' hand-tuned middle width and first parallel probe (SPEC 3, default 5).
HAND_TUNED_WIDTH = 4
PROBE_WIDTH = 5


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a policy knows when asked for a width."""

    run: int
    input_size: float | None
    cluster_load: float
    min_parallelism: int
    max_parallelism: int
    urgency: float = 1.0
    resource_exponent: float = 0.5

    def widths(self) -> F64:
        """Every allowed width, shape (max - min + 1,)."""
        return np.arange(self.min_parallelism, self.max_parallelism + 1, dtype=np.float64)

    def clip(self, s: int) -> int:
        return min(max(s, self.min_parallelism), self.max_parallelism)


class Policy(Protocol):
    """`decide` picks a width; `observe` hears how a run at that width went."""

    def decide(self, context: Context) -> int: ...

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None: ...


@runtime_checkable
class Predictor(Protocol):
    """A policy that can also say how long it expects a run to take (NaN: no idea)."""

    def predict(self, s: int, context: Context) -> float: ...


class PredictingPolicy(Policy, Predictor, Protocol):
    """A policy that also predicts: what the shadow models of the plots must be."""


@dataclass(frozen=True)
class PolicyInfo:
    """Which task the new policy serves and how it is seeded."""

    model_key: str
    seed: int


PolicyFactory = Callable[[PolicyInfo], Policy]


def score(time: F64 | float, s: F64 | float, urgency: float, resource_exponent: float) -> Any:
    """SPEC 5.3 score `T^a * s^b` (elementwise)."""
    return np.power(time, urgency) * np.power(s, resource_exponent)


def argmin_with_ties(widths: F64, scores: F64) -> int:
    """The smallest width whose score is within `TIE_TOLERANCE` of the best (SPEC 5.5)."""
    finite = np.where(np.isfinite(scores), scores, np.inf)
    best = float(finite.min())
    if not math.isfinite(best):
        return int(widths[0])
    good = np.flatnonzero(finite <= best * (1.0 + TIE_TOLERANCE))
    return int(widths[good[0]])


class StaticPolicy:
    """Always the same width (clipped to the limits); `None` means the maximum."""

    def __init__(self, width: int | None) -> None:
        self.width = width

    def decide(self, context: Context) -> int:
        if self.width is None:
            return context.max_parallelism
        return context.clip(self.width)

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        """Static widths learn nothing."""


class _RelativeSize:
    """`gamma` relative to the first reported input size, as fanout computes it."""

    def __init__(self) -> None:
        self.base: float | None = None

    def gamma(self, input_size: float | None) -> float:
        if input_size is None or self.base is None:
            return 1.0
        return input_size / self.base

    def remember(self, input_size: float | None) -> None:
        if self.base is None and input_size is not None:
            self.base = input_size


class NaiveAmdahlPolicy:
    """The notes' step 1: `T(s) = gamma * T1 / s` (p = 1) from the baseline alone."""

    def __init__(self) -> None:
        self.size = _RelativeSize()
        self.baselines: list[float] = []

    def predict(self, s: int, context: Context) -> float:
        if not self.baselines:
            return math.nan
        return self.size.gamma(context.input_size) * float(np.mean(self.baselines)) / s

    def decide(self, context: Context) -> int:
        if not self.baselines:
            return context.clip(1)
        widths = context.widths()
        t1 = self.size.gamma(context.input_size) * float(np.mean(self.baselines))
        scores = score(t1 / widths, widths, context.urgency, context.resource_exponent)
        return argmin_with_ties(widths, scores)

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        self.size.remember(context.input_size)
        if s == 1:
            self.baselines.append(duration / self.size.gamma(context.input_size))


class FittedAmdahlPolicy:
    """The notes' fitted model without the residual GP.

    Baseline at s = 1, probe at s = 5, then `p` by the inverse Amdahl formula folded
    into the notes' moving average (a running value, linear in gamma, as the notes have
    it), the SPEC's cost bounds `[1, ceil(1.5 p/(1-p))]` and the argmin of
    `T_A^a * s^b`.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.size = _RelativeSize()
        self.baselines: list[float] = []
        self.startups: list[float] = []
        self.p: float | None = None

    @property
    def startup(self) -> float:
        return float(np.mean(self.startups)) if self.startups else 0.0

    @property
    def t1(self) -> float | None:
        return float(np.mean(self.baselines)) if self.baselines else None

    def amdahl(self, widths: F64, gamma: float) -> F64:
        """`C + gamma * T1 * ((1-p) + p/s)`, shape like `widths`; NaN before p."""
        t1 = self.t1
        if t1 is None or self.p is None:
            return np.full_like(widths, math.nan)
        return self.startup + gamma * t1 * ((1.0 - self.p) + self.p / widths)

    def predict(self, s: int, context: Context) -> float:
        gamma = self.size.gamma(context.input_size)
        return float(self.amdahl(np.array([float(s)]), gamma)[0])

    def decide(self, context: Context) -> int:
        if self.t1 is None:
            return context.clip(1)
        if self.p is None:
            return context.clip(PROBE_WIDTH)
        if self.p >= 1.0:
            upper = context.max_parallelism
        else:
            # SPEC 5.1 cost rule; with p = 0 the upper bound is still at least 1.
            upper = max(1, math.ceil(1.5 * self.p / (1.0 - self.p)))
        upper = context.clip(upper)
        widths = np.arange(context.min_parallelism, upper + 1, dtype=np.float64)
        times = self.amdahl(widths, self.size.gamma(context.input_size))
        return argmin_with_ties(
            widths, score(times, widths, context.urgency, context.resource_exponent)
        )

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        self.size.remember(context.input_size)
        gamma = self.size.gamma(context.input_size)
        if startup is not None:
            self.startups.append(startup)
        if s == 1:
            self.baselines.append((duration - self.startup) / gamma)
            return
        t1 = self.t1
        if t1 is None:
            return
        p_now = s / (s - 1) * (1.0 - (duration - self.startup) / (gamma * t1))
        p_now = min(max(p_now, 0.0), 1.0)
        self.p = p_now if self.p is None else self.alpha * self.p + (1 - self.alpha) * p_now


def ernest_features(widths: F64, gamma: float) -> F64:
    """Ernest's design matrix `[1, gamma/s, log s, s]`, shape (n, 4)."""
    return np.column_stack((np.ones_like(widths), gamma / widths, np.log(widths), widths))


def ernest_design(candidates: F64, points: int) -> list[int]:
    """Cost-weighted greedy D-optimal choice of `points` widths (repeats allowed).

    Ernest picks training runs by optimal experiment design under a cost budget, the
    cost of a run being proportional to its machines at a fixed input fraction. Each
    step here adds the width with the largest gain in `log det(X'X)` of Ernest's
    features per pod (a tiny ridge keeps the first, rank-deficient steps defined);
    returned ascending so the cheap runs come first.
    """
    features = ernest_features(candidates, 1.0)
    features = features / np.maximum(np.abs(features).max(axis=0), 1e-12)
    gram = 1e-6 * np.eye(features.shape[1])
    chosen: list[int] = []
    for _ in range(points):
        current = np.linalg.slogdet(gram)[1]
        gains = np.array([np.linalg.slogdet(gram + np.outer(row, row))[1] for row in features])
        best = int(np.argmax((gains - current) / candidates))
        chosen.append(best)
        gram += np.outer(features[best], features[best])
    return sorted(int(candidates[i]) for i in chosen)


class ErnestPolicy:
    """Ernest-style model: NNLS of run time on `[1, gamma/s, log s, s]`.

    The first `design_points` runs follow Ernest's cost-weighted experiment design
    over the allowed widths (`ernest_design`); afterwards every decision
    refits on all runs and takes the argmin of the predicted score.
    """

    def __init__(self, design_points: int = 5) -> None:
        self.design_points = design_points
        self.size = _RelativeSize()
        self.rows: list[tuple[float, float, float]] = []  # (s, gamma, duration)
        self.decisions = 0
        self.coefficients: F64 | None = None

    def fit(self) -> F64 | None:
        """Non-negative coefficients, shape (4,), or None before any run."""
        if not self.rows:
            return None
        data = np.asarray(self.rows, dtype=np.float64)
        design = np.column_stack(
            (np.ones(len(data)), data[:, 1] / data[:, 0], np.log(data[:, 0]), data[:, 0])
        )
        coefficients, _ = nnls(design, data[:, 2])
        return np.asarray(coefficients, dtype=np.float64)

    def predict(self, s: int, context: Context) -> float:
        if self.coefficients is None:
            return math.nan
        gamma = self.size.gamma(context.input_size)
        return float(ernest_features(np.array([float(s)]), gamma)[0] @ self.coefficients)

    def decide(self, context: Context) -> int:
        step = self.decisions
        self.decisions += 1
        if step < self.design_points:
            design = ernest_design(context.widths(), self.design_points)
            return design[step]
        if self.coefficients is None:
            return context.clip(1)
        widths = context.widths()
        gamma = self.size.gamma(context.input_size)
        times = np.maximum(ernest_features(widths, gamma) @ self.coefficients, 1e-9)
        return argmin_with_ties(
            widths, score(times, widths, context.urgency, context.resource_exponent)
        )

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        self.size.remember(context.input_size)
        self.rows.append((float(s), self.size.gamma(context.input_size), duration))
        self.coefficients = self.fit()


class TpePolicy:
    """Optuna's TPE sampler tuning `s` as a black box on the observed score."""

    def __init__(self, seed: int) -> None:
        import optuna  # optional dependency: imported when the policy is used

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        self.pending: list[tuple[int, Any]] = []

    def decide(self, context: Context) -> int:
        trial = self.study.ask()
        s = int(trial.suggest_int("s", context.min_parallelism, context.max_parallelism, log=True))
        self.pending.append((s, trial))
        return s

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        # Reports of one shared model may come back in any order; match by width.
        index = next((i for i, (width, _) in enumerate(self.pending) if width == s), None)
        if index is None:
            raise ValueError(f"s: no pending TPE trial at width {s}")
        _, trial = self.pending.pop(index)
        value = float(score(duration, float(s), context.urgency, context.resource_exponent))
        self.study.tell(trial, value)


class FanoutPolicy:
    """fanout's own engine, in process: one `TaskModel` per model key."""

    def __init__(self, seed: int, config: TaskConfig | None = None) -> None:
        self.model = TaskModel(config or TaskConfig(seed=seed))

    def decide(self, context: Context) -> int:
        decision = self.model.decide(
            input_size=context.input_size,
            cluster_load=context.cluster_load,
            urgency=context.urgency,
            resource_exponent=context.resource_exponent,
            min_parallelism=context.min_parallelism,
            max_parallelism=context.max_parallelism,
        )
        return int(decision.parallelism)

    def predict(self, s: int, context: Context) -> float:
        """The model's mean for width `s` before this run is reported (NaN early on)."""
        gamma, _ = self.model.gamma_of(context.input_size)
        mean, _ = self.model.predict(
            np.array([float(s)]), np.array([gamma]), np.array([context.cluster_load])
        )
        return float(mean[0])

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        self.model.observe(
            Observation(
                parallelism=s,
                duration_seconds=duration,
                input_size=context.input_size,
                cluster_load=context.cluster_load,
                startup_seconds=startup,
            )
        )


_REGISTRY: dict[str, tuple[str, PolicyFactory]] = {}


def register_policy(name: str, label: str, factory: PolicyFactory) -> None:
    """Add a policy to the evaluation (e.g. fanout through the real server via the SDK).

    The factory gets the model key and a seed and returns one policy per model key.
    """
    if name in _REGISTRY:
        raise ValueError(f"policy: {name!r} is already registered")
    _REGISTRY[name] = (label, factory)


def registered_policies() -> dict[str, tuple[str, PolicyFactory]]:
    """Name -> (label, factory), in registration order."""
    return dict(_REGISTRY)


FANOUT = "fanout"
BASELINES = (
    "static-1",
    "static-4",
    "static-max",
    "naive-amdahl",
    "fitted-amdahl",
    "ernest",
    "tpe",
)

register_policy(FANOUT, "fanout (in-process)", lambda info: FanoutPolicy(seed=info.seed))
register_policy("static-1", "static s=1", lambda info: StaticPolicy(1))
register_policy("static-4", "static s=4 (notes)", lambda info: StaticPolicy(HAND_TUNED_WIDTH))
register_policy("static-max", "static s=max", lambda info: StaticPolicy(None))
register_policy("naive-amdahl", "naive Amdahl p=1", lambda info: NaiveAmdahlPolicy())
register_policy("fitted-amdahl", "fitted Amdahl, no GP", lambda info: FittedAmdahlPolicy())
register_policy("ernest", "Ernest (NNLS)", lambda info: ErnestPolicy())
register_policy("tpe", "Optuna TPE", lambda info: TpePolicy(seed=info.seed))


def _server_policy(info: PolicyInfo) -> Policy:
    # Imported on use: it needs the SDK and starts a server child.
    from fanout.sim.server_policy import ServerPolicy

    return ServerPolicy(info)


register_policy("fanout-server", "fanout (through the server)", _server_policy)
