"""Alembic migrations shipped inside the package, run without an alembic.ini.

`fanout migrate` calls `upgrade`; the registry calls `current_revision` and
`head_revision` to refuse a stale schema.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from fanout.storage.database import create_registry_engine, parse_database_url

MIGRATIONS_DIR = Path(__file__).resolve().parent
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_LOCK_TIMEOUT = 60.0

# Alembic keeps the running migration in module-level state (`alembic.context`), so two
# threads of one process must not migrate at once; across processes the database's own
# locks take over (see env.py).
_ALEMBIC_LOCK = threading.Lock()

__all__ = [
    "current_revision",
    "downgrade",
    "head_revision",
    "revisions",
    "upgrade",
]


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic configuration pointing at this folder; `env.py` reads the engine from it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an object, not a config option: URLs may hold '%', which
    # configparser would try to interpolate.
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The revision this version of fanout needs."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError("no Alembic revision shipped with fanout")
    return head


def revisions() -> list[str]:
    """Every shipped revision, oldest first (base excluded)."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def is_known_revision(revision: str) -> bool:
    return revision in revisions()


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty database."""
    engine = _migration_engine(url)
    try:
        return current_revision_of(engine)
    finally:
        engine.dispose()


def current_revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        connection.rollback()
    return revision


def upgrade(url: str, revision: str = "head") -> None:
    """Migrates the database at `url` up to `revision` (default: the newest)."""
    engine = _migration_engine(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Migrates the database at `url` down to `revision` ("base" empties it)."""
    engine = _migration_engine(url)
    try:
        with _ALEMBIC_LOCK:
            command.downgrade(alembic_config(engine), revision)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Like `upgrade`, on an engine made with `for_migrations=True`."""
    with _ALEMBIC_LOCK:
        command.upgrade(alembic_config(engine), revision)


def _migration_engine(url: str) -> Engine:
    return create_registry_engine(
        parse_database_url(url),
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        lock_timeout=DEFAULT_LOCK_TIMEOUT,
        for_migrations=True,
    )
