"""Alembic environment: runs the revisions on the engine handed over by `alembic_config`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from fanout.storage.models import Base

# Any fixed number: the key of the advisory lock that lets one server migrate at a time.
POSTGRES_MIGRATION_LOCK = 0x66616E6F7574  # "fanout"


def run_migrations() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (SQL script) migrations are not supported; give a database")
    engine = context.config.attributes.get("engine")
    if not isinstance(engine, Engine):
        raise RuntimeError("run migrations through fanout.storage.migrations, not alembic's CLI")
    is_sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite can change a table only by copying it.
            render_as_batch=is_sqlite,
            # The SQLite engine issues its own BEGIN, so DDL is transactional there too:
            # a failed migration leaves the previous schema whole.
            transactional_ddl=True,
            compare_type=True,
        )
        with context.begin_transaction():
            if engine.dialect.name == "postgresql":
                # Servers started together with auto-migrate queue here; the revision is
                # read after the lock, so the later ones find nothing left to do.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK}
                )
            context.run_migrations()
        if is_sqlite:
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.rollback()
            if problems:
                raise RuntimeError(f"foreign keys broken by the migration: {problems[:5]}")


run_migrations()
