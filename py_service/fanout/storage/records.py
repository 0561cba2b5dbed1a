"""Immutable values the registry hands out and takes in."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Row

from fanout.storage.errors import InvalidFieldError
from fanout.storage.models import (
    LEASE_ID_LENGTH,
    NAME_LENGTH,
    OUTCOMES,
    JsonDict,
    LeaseRow,
    ObservationRow,
    TaskRow,
)

Outcome = Literal["succeeded", "failed"]


@dataclass(frozen=True, kw_only=True)
class TaskRecord:
    """A task (model key) as stored.

    `config` and `state` are the documents as loaded or as validated on save (fresh
    objects each time, see `check_json_document`); treat them as read-only.
    """

    id: int
    namespace: str
    name: str
    config: JsonDict
    state: JsonDict
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: TaskRow) -> TaskRecord:
        return cls(
            id=row.id,
            namespace=row.namespace,
            name=row.name,
            config=row.config,
            state=row.state,
            version=row.version,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True, kw_only=True)
class NewObservation:
    """One execution report, checked field by field before it reaches the database."""

    execution_id: str
    workflow: str
    task: str
    parallelism: int
    cluster_load: float
    duration_seconds: float
    outcome: Outcome = "succeeded"
    input_size: float | None = None
    startup_seconds: float | None = None
    recommendation_id: str | None = None
    created_at: datetime | None = field(default=None)  # None: the time of insertion

    def __post_init__(self) -> None:
        check_name("execution_id", self.execution_id)
        # Empty: origin unknown (a report naming only its recommendation, whose model
        # key is shared by several workflow tasks).
        check_name("workflow", self.workflow, allow_empty=True)
        check_name("task", self.task, allow_empty=True)
        if self.recommendation_id is not None:
            check_lease_id("recommendation_id", self.recommendation_id)
        check_parallelism("parallelism", self.parallelism)
        check_number("cluster_load", self.cluster_load, minimum=0.0, inclusive=True)
        check_number("duration_seconds", self.duration_seconds, minimum=0.0, inclusive=False)
        if self.input_size is not None:
            check_number("input_size", self.input_size, minimum=0.0, inclusive=False)
        if self.startup_seconds is not None:
            check_number("startup_seconds", self.startup_seconds, minimum=0.0, inclusive=True)
        if self.outcome not in OUTCOMES:
            raise InvalidFieldError("outcome", f"must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.created_at is not None:
            check_aware("created_at", self.created_at)


@dataclass(frozen=True, kw_only=True)
class ObservationRecord:
    """A stored observation; `seq` grows with commit order within a task."""

    seq: int
    task_id: int
    execution_id: str
    workflow: str
    task: str
    recommendation_id: str | None
    parallelism: int
    input_size: float | None
    cluster_load: float
    duration_seconds: float
    startup_seconds: float | None
    outcome: Outcome
    created_at: datetime

    @classmethod
    def from_row(cls, row: ObservationRow | Row[Any]) -> ObservationRecord:
        outcome: Outcome = "succeeded" if row.outcome == "succeeded" else "failed"
        return cls(
            seq=row.seq,
            task_id=row.task_id,
            execution_id=row.execution_id,
            workflow=row.workflow,
            task=row.task,
            recommendation_id=row.recommendation_id,
            parallelism=row.parallelism,
            input_size=row.input_size,
            cluster_load=row.cluster_load,
            duration_seconds=row.duration_seconds,
            startup_seconds=row.startup_seconds,
            outcome=outcome,
            created_at=row.created_at,
        )


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """A recommendation in flight, with what was known when it was made."""

    id: str
    task_id: int
    parallelism: int
    cluster_load: float
    input_size: float | None
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    workflow: str | None = None
    task: str | None = None

    @classmethod
    def from_row(cls, row: LeaseRow) -> LeaseRecord:
        return cls(
            id=row.id,
            task_id=row.task_id,
            parallelism=row.parallelism,
            cluster_load=row.cluster_load,
            input_size=row.input_size,
            workflow=row.workflow,
            task=row.task,
            created_at=row.created_at,
            expires_at=row.expires_at,
            closed_at=row.closed_at,
        )

    def is_open(self, now: datetime) -> bool:
        """Whether the lease still counts towards the cluster load at `now`."""
        return self.closed_at is None and self.expires_at > now


def check_name(field_name: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidFieldError(field_name, f"must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidFieldError(field_name, "must not be empty")
    if len(value) > NAME_LENGTH:
        raise InvalidFieldError(field_name, f"longer than {NAME_LENGTH} characters")
    if "\x00" in value:
        raise InvalidFieldError(field_name, "contains a NUL character")
    return value


def check_lease_id(field_name: str, value: object) -> str:
    text = check_name(field_name, value)
    if len(text) > LEASE_ID_LENGTH:
        raise InvalidFieldError(field_name, f"longer than {LEASE_ID_LENGTH} characters")
    return text


def check_parallelism(field_name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFieldError(field_name, f"must be an integer, got {value!r}")
    if value < 1:
        raise InvalidFieldError(field_name, f"must be >= 1, got {value}")
    if value > 2**31 - 1:
        raise InvalidFieldError(field_name, f"too large: {value}")
    return value


def check_number(field_name: str, value: object, *, minimum: float, inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFieldError(field_name, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidFieldError(field_name, f"must be finite, got {value!r}")
    if number < minimum or (number == minimum and not inclusive):
        relation = ">=" if inclusive else ">"
        raise InvalidFieldError(field_name, f"must be {relation} {minimum:g}, got {value!r}")
    return number


def check_aware(field_name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidFieldError(field_name, f"must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidFieldError(field_name, "must be timezone-aware")
    return value


def check_json_document(field_name: str, value: object) -> JsonDict:
    """A private deep copy of `value` once it is known to be a plain JSON object."""
    document: JsonDict = json.loads(json_text(field_name, value))
    return document


def json_text(field_name: str, value: object) -> str:
    """`value` as JSON text, once it is known to be a plain JSON object."""
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise InvalidFieldError(field_name, f"must be a JSON object (dict), got {kind}")
    try:
        # allow_nan=False: NaN is not JSON; JSONB would refuse it and SQLite would keep
        # text no other reader accepts.
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidFieldError(field_name, f"not plain JSON: {exc}") from exc
    if "\\u0000" in text:
        raise InvalidFieldError(field_name, "contains a NUL character (PostgreSQL refuses it)")
    return text


@dataclass(frozen=True)
class LoadReading:
    """The registry's cluster load at one moment: the sum of `parallelism` over open,
    unexpired leases, and when the first of those expires (None when none is open)."""

    total: int
    first_expiry: datetime | None


@dataclass(frozen=True, kw_only=True)
class ReportWrite:
    """What `Registry.report_at_version` wrote: the task's new version and whether the
    report closed its lease."""

    version: int
    updated_at: datetime
    lease_closed: bool
