"""Leases remember which workflow task asked, so a report by recommendation id can
record where the run came from even when several tasks share one model key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("workflow", sa.String(255), nullable=True))
        batch.add_column(sa.Column("task", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("task")
        batch.drop_column("workflow")
