"""Per-task configuration: the SPEC's tunables with their defaults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

STRATEGIES = ("cost", "efficiency")
BOUND_RULES = ("wide", "tight", "centered")


class ConfigError(ValueError):
    """A configuration or request value is out of range; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


def _finite(
    field: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ConfigError(field, f"must be {bound} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(field, f"must be <= {high}, got {value!r}")


def _whole(field: str, value: int, *, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(field, f"must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(field, f"must be >= {low}{upper}, got {value}")


MAX_PARALLELISM_CAP = 100_000
MAX_WINDOW = 1_000
# Ranges of the quantities the model takes logs, powers and squares of (SPEC 2, 4): wider
# than any real workload, narrow enough that no intermediate over- or underflows.
MIN_SECONDS, MAX_SECONDS = 1e-6, 1e9  # a microsecond to about 31 years
MIN_SIZE, MAX_SIZE = 1e-9, 1e18
MAX_LOAD = 1e9


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """What a task is told rather than what it learns (SPEC sections 2-5 defaults).

    `t1_seconds`, `base_input_size` and `p` seed the model when the caller already
    knows them; `startup_seconds` is `C` until measured start-up times arrive.
    """

    window: int = 50
    alpha: float = 0.3
    probe_parallelism: int = 5
    min_parallelism: int = 1
    max_parallelism: int = 64
    urgency: float = 1.0
    resource_exponent: float = 0.5
    strategy: str = "cost"
    bound_rule: str = "wide"
    eta: float = 0.9
    confidence: float = 0.9
    startup_seconds: float = 0.0
    t1_seconds: float | None = None
    base_input_size: float | None = None
    p: float | None = None
    reprobe_after: int = 10
    lease_seconds: float = 3600.0
    gp_restarts: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field out of range."""
        _whole("window", self.window, low=2, high=MAX_WINDOW)
        _finite("alpha", self.alpha, low=0.0, high=1.0, low_open=True)
        _whole("probe_parallelism", self.probe_parallelism, low=2, high=MAX_PARALLELISM_CAP)
        _whole("min_parallelism", self.min_parallelism, low=1, high=MAX_PARALLELISM_CAP)
        _whole("max_parallelism", self.max_parallelism, low=1, high=MAX_PARALLELISM_CAP)
        if self.min_parallelism > self.max_parallelism:
            raise ConfigError(
                "min_parallelism",
                f"must be <= max_parallelism ({self.max_parallelism}), got {self.min_parallelism}",
            )
        _finite("urgency", self.urgency, low=0.0, high=10.0, low_open=True)
        _finite("resource_exponent", self.resource_exponent, low=0.0, high=10.0)
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.bound_rule not in BOUND_RULES:
            raise ConfigError(
                "bound_rule", f"must be one of {BOUND_RULES}, got {self.bound_rule!r}"
            )
        _finite("eta", self.eta, low=0.0, high=1.0, low_open=True)
        if self.eta >= 1.0:
            raise ConfigError("eta", f"must be < 1, got {self.eta}")
        _finite("confidence", self.confidence, low=0.0, high=1.0, low_open=True)
        if self.confidence >= 1.0:
            raise ConfigError("confidence", f"must be < 1, got {self.confidence}")
        _finite("startup_seconds", self.startup_seconds, low=0.0, high=MAX_SECONDS)
        if self.t1_seconds is not None:
            _finite("t1_seconds", self.t1_seconds, low=MIN_SECONDS, high=MAX_SECONDS)
        if self.base_input_size is not None:
            _finite("base_input_size", self.base_input_size, low=MIN_SIZE, high=MAX_SIZE)
        if self.p is not None:
            _finite("p", self.p, low=0.0, high=1.0)
        _whole("reprobe_after", self.reprobe_after, low=1)
        _finite("lease_seconds", self.lease_seconds, low=1.0, high=7 * 24 * 3600.0)
        _whole("gp_restarts", self.gp_restarts, low=0, high=20)
        _whole("seed", self.seed, low=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the registry."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskConfig:
        """Build from stored JSON; unknown keys are an error so typos never pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], "unknown configuration key")
        return cls(**dict(data))

    def updated(self, **changes: Any) -> TaskConfig:
        """A copy with `changes` applied and validated."""
        return replace(self, **changes)
