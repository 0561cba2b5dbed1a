"""Plain, immutable values the SDK returns and accepts (no protobuf in its API)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Phase(enum.StrEnum):
    """Learning phase of a task's model (SPEC 3)."""

    BASELINE = "BASELINE"
    PROBE = "PROBE"
    OPTIMIZE = "OPTIMIZE"
    #: Not known: a fallback recommendation, or a server newer than this client.
    UNSPECIFIED = "UNSPECIFIED"


class Strategy(enum.StrEnum):
    """How a decision bounds its candidate widths (SPEC 5, step 1)."""

    COST = "cost"
    EFFICIENCY = "efficiency"


@dataclass(frozen=True)
class TaskRef:
    """Names a task: `namespace`, `workflow`, `task`, and an optional shared model key."""

    namespace: str
    workflow: str
    task: str
    model_key: str | None = None

    @classmethod
    def parse(cls, text: str, *, namespace: str, model_key: str | None = None) -> TaskRef:
        """Reads `"workflow/task"`; raises `ValueError` naming the expected form."""
        workflow, slash, task = text.partition("/")
        if not slash or not workflow or not task or "/" in task:
            raise ValueError(f"task must read WORKFLOW/TASK, got {text!r}")
        return cls(namespace=namespace, workflow=workflow, task=task, model_key=model_key)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.workflow}/{self.task}"


@dataclass(frozen=True)
class Bounds:
    """Candidate range of a decision, both ends included."""

    lower: int
    upper: int


@dataclass(frozen=True)
class Candidate:
    """One scored width; the smallest `score` wins."""

    parallelism: int
    mean_seconds: float
    sd_seconds: float
    score: float


@dataclass(frozen=True)
class Recommendation:
    """A width to run at, with what explains it.

    A fallback recommendation (`fallback=True`, server unreachable) carries only the
    task and the default width; the model fields are `None` and `id` is `None`.
    """

    id: str | None
    task: TaskRef
    parallelism: int
    predicted_seconds: float | None
    sd_seconds: float | None
    phase: Phase
    bounds: Bounds | None
    candidates: tuple[Candidate, ...]
    cluster_load: float | None
    gamma: float | None
    model_version: int | None
    input_size: float | None
    input_size_unknown: bool
    deadline_unreachable: bool
    lease_expires_at: datetime | None
    fallback: bool = False


@dataclass(frozen=True)
class ModelSummary:
    """A task's learned model; `t1_seconds`, `p`, `base_input_size` are `None` until known.

    `refit_pending` is true while the server re-fits the residual GP in the background.
    """

    phase: Phase
    t1_seconds: float | None
    p: float | None
    k: float
    startup_seconds: float
    base_input_size: float | None
    window_size: int
    window_capacity: int
    observations_total: int
    version: int
    drift_detected: bool
    refit_pending: bool = False


@dataclass(frozen=True)
class ReportResult:
    """What a report did: `applied` first time, `duplicate` for a repeated execution id."""

    applied: bool
    duplicate: bool
    model: ModelSummary


@dataclass(frozen=True)
class PredictRow:
    """One point to predict; unset size means `gamma = 1`, unset load the server's count."""

    parallelism: int
    input_size: float | None = None
    cluster_load: float | None = None


@dataclass(frozen=True)
class Prediction:
    """Predicted run time at one point."""

    mean_seconds: float
    sd_seconds: float


@dataclass(frozen=True)
class PredictResult:
    """One prediction per requested row, in order, and the model version that made them."""

    predictions: tuple[Prediction, ...]
    model_version: int


@dataclass(frozen=True)
class TaskConfig:
    """A task's settings; `None` means not set (server default or not yet known)."""

    t1_seconds: float | None = None
    base_input_size: float | None = None
    p: float | None = None
    startup_seconds: float | None = None
    alpha: float | None = None
    window: int | None = None
    probe_parallelism: int | None = None
    min_parallelism: int | None = None
    max_parallelism: int | None = None
    default_urgency: float | None = None
    resource_exponent: float | None = None
    default_strategy: Strategy | None = None
    lease_seconds: float | None = None


@dataclass(frozen=True)
class Task:
    """A task as the server's registry holds it."""

    ref: TaskRef
    model_key: str
    config: TaskConfig
    model: ModelSummary
    created_at: datetime | None = None
    updated_at: datetime | None = None
