"""Tables of the registry (SQLAlchemy 2 declarative models).

The schema itself is created and changed only by the Alembic revisions in
`fanout.storage.migrations`; a test compares those revisions with these models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

# Stable constraint names, so that later migrations can address them on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LENGTH = 255
LEASE_ID_LENGTH = 64
OUTCOMES = ("succeeded", "failed")

JsonDict = dict[str, Any]

# JSONB on PostgreSQL (indexable, compact); SQLite stores the JSON text.
JSON_DOCUMENT: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

# SQLite has no 64-bit serial type: only INTEGER PRIMARY KEY autoincrements there.
SEQUENCE_INTEGER: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    SQLite keeps no zone, so values are stored as naive UTC and marked UTC on the way
    back; naive values are refused on the way in rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskRow(Base):
    """One model key: its configuration and the engine's learned state."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("namespace", "name"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(NAME_LENGTH))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    config: Mapped[JsonDict] = mapped_column(JSON_DOCUMENT)
    state: Mapped[JsonDict] = mapped_column(JSON_DOCUMENT)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ObservationRow(Base):
    """One reported execution; `seq` orders a task's observations by commit."""

    __tablename__ = "observations"
    __table_args__ = (
        UniqueConstraint("task_id", "execution_id"),
        Index(None, "task_id", "seq"),
        CheckConstraint("parallelism >= 1", name="parallelism_positive"),
        CheckConstraint("input_size IS NULL OR input_size > 0", name="input_size_positive"),
        CheckConstraint("cluster_load >= 0", name="cluster_load_nonnegative"),
        CheckConstraint("duration_seconds > 0", name="duration_positive"),
        CheckConstraint(
            "startup_seconds IS NULL OR startup_seconds >= 0", name="startup_nonnegative"
        ),
        CheckConstraint("outcome IN ('succeeded', 'failed')", name="outcome_known"),
        # AUTOINCREMENT: SQLite must not hand out a deleted seq again (ResetTask).
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(SEQUENCE_INTEGER, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    execution_id: Mapped[str] = mapped_column(String(NAME_LENGTH))
    workflow: Mapped[str] = mapped_column(String(NAME_LENGTH))
    task: Mapped[str] = mapped_column(String(NAME_LENGTH))
    recommendation_id: Mapped[str | None] = mapped_column(String(LEASE_ID_LENGTH))
    parallelism: Mapped[int] = mapped_column(Integer)
    input_size: Mapped[float | None] = mapped_column(Float)
    cluster_load: Mapped[float] = mapped_column(Float)
    duration_seconds: Mapped[float] = mapped_column(Float)
    startup_seconds: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LeaseRow(Base):
    """A recommendation in flight; open, unexpired leases make up the cluster load."""

    __tablename__ = "leases"
    __table_args__ = (
        # Partial index: cluster_load() sums only open leases, which stay few.
        Index(
            "ix_leases_open_expires_at",
            "expires_at",
            postgresql_where=text("closed_at IS NULL"),
            sqlite_where=text("closed_at IS NULL"),
        ),
        Index(None, "task_id"),
        CheckConstraint("parallelism >= 1", name="parallelism_positive"),
        CheckConstraint("input_size IS NULL OR input_size > 0", name="input_size_positive"),
        CheckConstraint("cluster_load >= 0", name="cluster_load_nonnegative"),
    )

    id: Mapped[str] = mapped_column(String(LEASE_ID_LENGTH), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    parallelism: Mapped[int] = mapped_column(Integer)
    cluster_load: Mapped[float] = mapped_column(Float)
    input_size: Mapped[float | None] = mapped_column(Float)
    # Which workflow task asked (revision 0002; NULL on older leases).
    workflow: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    task: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
