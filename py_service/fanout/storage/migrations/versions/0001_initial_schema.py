"""Initial schema: tasks, observations, leases.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Types spelled out here rather than imported from the models: a revision must keep
# creating what it created on the day it was written.
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQUENCE_INTEGER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("config", JSON_DOCUMENT, nullable=False),
        sa.Column("state", JSON_DOCUMENT, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("namespace", "name", name=op.f("uq_tasks_namespace_name")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_tasks_version_positive")),
    )
    op.create_table(
        "observations",
        sa.Column("seq", SEQUENCE_INTEGER, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.String(255), nullable=False),
        sa.Column("workflow", sa.String(255), nullable=False),
        sa.Column("task", sa.String(255), nullable=False),
        sa.Column("recommendation_id", sa.String(64), nullable=True),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("input_size", sa.Float(), nullable=True),
        sa.Column("cluster_load", sa.Float(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("startup_seconds", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_observations")),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_observations_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "task_id", "execution_id", name=op.f("uq_observations_task_id_execution_id")
        ),
        sa.CheckConstraint("parallelism >= 1", name=op.f("ck_observations_parallelism_positive")),
        sa.CheckConstraint(
            "input_size IS NULL OR input_size > 0",
            name=op.f("ck_observations_input_size_positive"),
        ),
        sa.CheckConstraint(
            "cluster_load >= 0", name=op.f("ck_observations_cluster_load_nonnegative")
        ),
        sa.CheckConstraint("duration_seconds > 0", name=op.f("ck_observations_duration_positive")),
        sa.CheckConstraint(
            "startup_seconds IS NULL OR startup_seconds >= 0",
            name=op.f("ck_observations_startup_nonnegative"),
        ),
        sa.CheckConstraint(
            "outcome IN ('succeeded', 'failed')", name=op.f("ck_observations_outcome_known")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_observations_task_id_seq"), "observations", ["task_id", "seq"], unique=False
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("cluster_load", sa.Float(), nullable=False),
        sa.Column("input_size", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("closed_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_leases_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.CheckConstraint("parallelism >= 1", name=op.f("ck_leases_parallelism_positive")),
        sa.CheckConstraint(
            "input_size IS NULL OR input_size > 0", name=op.f("ck_leases_input_size_positive")
        ),
        sa.CheckConstraint("cluster_load >= 0", name=op.f("ck_leases_cluster_load_nonnegative")),
    )
    op.create_index(op.f("ix_leases_task_id"), "leases", ["task_id"], unique=False)
    op.create_index(
        op.f("ix_leases_open_expires_at"),
        "leases",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("closed_at IS NULL"),
        sqlite_where=sa.text("closed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_leases_open_expires_at"), table_name="leases")
    op.drop_index(op.f("ix_leases_task_id"), table_name="leases")
    op.drop_table("leases")
    op.drop_index(op.f("ix_observations_task_id_seq"), table_name="observations")
    op.drop_table("observations")
    op.drop_table("tasks")
