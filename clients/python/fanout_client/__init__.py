"""Python SDK for fanout, the parallelism advisor for workflow engines.

from fanout_client import Advisor

with Advisor("fanout:50051", namespace="genome-lab") as advisor:
    with advisor.run("genome/individuals", input_size=32) as recommendation:
        run_stage(width=recommendation.parallelism)
"""

from __future__ import annotations

from fanout_client.advisor import Advisor
from fanout_client.aio import AsyncAdvisor
from fanout_client.errors import (
    DeadlineExceededError,
    FanoutError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from fanout_client.models import (
    Bounds,
    Candidate,
    ModelSummary,
    Phase,
    Prediction,
    PredictResult,
    PredictRow,
    Recommendation,
    ReportResult,
    Strategy,
    Task,
    TaskConfig,
    TaskRef,
)

__version__ = "0.1.0"

__all__ = [
    "Advisor",
    "AsyncAdvisor",
    "Bounds",
    "Candidate",
    "DeadlineExceededError",
    "FanoutError",
    "InvalidArgumentError",
    "ModelSummary",
    "NotFoundError",
    "PermissionDeniedError",
    "Phase",
    "PredictResult",
    "PredictRow",
    "Prediction",
    "Recommendation",
    "ReportResult",
    "Strategy",
    "Task",
    "TaskConfig",
    "TaskRef",
    "UnauthenticatedError",
    "UnavailableError",
    "__version__",
]
