"""Database URLs and engines: one place that knows each backend's connection settings."""

from __future__ import annotations

import math
import shlex
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import platformdirs
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from fanout.storage.errors import InvalidFieldError

SUPPORTED_DIALECTS = ("sqlite", "postgresql")
# psycopg2-binary is the declared dependency; psycopg 3 works too when installed.
POSTGRES_DRIVERS = ("psycopg2", "psycopg")

# Execution option read by the SQLite "begin" hook: take the write lock up front.
SQLITE_IMMEDIATE = "fanout_sqlite_immediate"
# SQLAlchemy's default. A burst of more threads than this opens connections beyond it
# and closes them when they are returned: size it to the threads that use the registry.
DEFAULT_POOL_SIZE = 5
# A pooled PostgreSQL connection idle longer than this is pinged before use.
PING_AFTER_IDLE_SECONDS = 0.5
# SQLite's own: the commit that grows the WAL past this many pages copies it back into
# the database file and fsyncs it (measured 7-75 ms here, once in ~250 leases).
DEFAULT_CHECKPOINT_PAGES = 1000
# With checkpoints in the background, writers still checkpoint past this (~40 MB), so
# the WAL stays bounded should the background thread fall behind or be absent.
SAFETY_CHECKPOINT_PAGES = 10_000
_LAST_USED = "fanout_last_used"


def default_database_url(data_dir: Path | None = None) -> str:
    """The SQLite file used when no URL is given: `<user data dir>/registry.sqlite3`."""
    folder = data_dir if data_dir is not None else platformdirs.user_data_path("fanout")
    return URL.create("sqlite", database=str(folder / "registry.sqlite3")).render_as_string()


def parse_database_url(url: str) -> URL:
    """Checks the URL and picks the PostgreSQL driver fanout ships with.

    Plain `postgresql://` (and `postgres://`) mean psycopg2 here, because SQLAlchemy 2.1
    would otherwise pick psycopg 3, which is not a dependency of fanout.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidFieldError("database_url", "must be a non-empty SQLAlchemy URL")
    try:
        parsed = make_url(url.strip())
    except ArgumentError as exc:
        raise InvalidFieldError("database_url", f"not a database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql")
        backend = "postgresql"
    if backend not in SUPPORTED_DIALECTS:
        raise InvalidFieldError(
            "database_url", f"unsupported database {backend!r}; use sqlite or postgresql"
        )
    if backend == "postgresql":
        driver = parsed.get_driver_name() if "+" in parsed.drivername else "psycopg2"
        if driver not in POSTGRES_DRIVERS:
            raise InvalidFieldError(
                "database_url", f"unsupported PostgreSQL driver {driver!r}; use psycopg2"
            )
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    elif parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.query):
        # Every pooled connection would see its own empty in-memory database.
        raise InvalidFieldError("database_url", "in-memory SQLite is not supported; give a file")
    return parsed


def mask_url(url: URL | str) -> str:
    """The URL as text with its password replaced by `***`."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def migrate_command(url: URL | str) -> str:
    """The shell command that brings the schema at `url` up to date (password masked)."""
    return f"fanout migrate --database-url {shlex.quote(mask_url(url))}"


def create_registry_engine(
    url: URL,
    *,
    connect_timeout: float,
    lock_timeout: float,
    pool_size: int = DEFAULT_POOL_SIZE,
    for_migrations: bool = False,
    background_checkpoints: bool = False,
) -> Engine:
    """An engine with the per-backend settings the registry relies on.

    `for_migrations`: no pool, and on SQLite foreign keys off, because batch migrations
    copy and drop tables, and a DROP with foreign keys on would cascade into child rows;
    its transactions take SQLite's write lock at BEGIN, so that servers migrating at
    the same time run one after the other and the later ones find the work done.
    `pool_size`: connections kept open between uses (opened as they are first needed).
    `background_checkpoints`: on SQLite, a writer checkpoints the WAL only once it has
    grown to `SAFETY_CHECKPOINT_PAGES`; the owner runs `Registry.checkpoint` meanwhile.
    """
    pool_args: dict[str, Any] = (
        {"poolclass": NullPool}
        if for_migrations
        # LIFO: the connection just returned is the next one out, so a steady trickle
        # of requests reuses a connection that needs no ping (`_ping_idle_connections`)
        # instead of cycling through every pooled one, each idle past the window.
        else {
            "pool_timeout": max(connect_timeout, lock_timeout),
            "pool_use_lifo": True,
            "pool_size": pool_size,
        }
    )
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(
            url,
            lock_timeout=lock_timeout,
            foreign_keys=not for_migrations,
            checkpoint_pages=(
                SAFETY_CHECKPOINT_PAGES if background_checkpoints else DEFAULT_CHECKPOINT_PAGES
            ),
            pool_args=pool_args,
        )
        if for_migrations:
            return engine.execution_options(**{SQLITE_IMMEDIATE: True})
        return engine
    connect_args = {
        # libpq counts whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, math.ceil(connect_timeout)),
        "application_name": "fanout",
        "options": f"-c lock_timeout={math.ceil(lock_timeout * 1000)}",
        # Notice a server that vanished without closing the socket.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    engine = create_engine(url, connect_args=connect_args, **pool_args)
    if not for_migrations:
        _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection before use only if it sat idle for a while.

    SQLAlchemy's `pool_pre_ping` pings on every checkout: a round trip on every
    transaction, a fifth of a report's and half of a Recommend's. A connection in
    steady use was just seen working (HikariCP's `aliveBypassWindowMs` makes the same
    bet, with the same 500 ms); one that sat idle may be dead (a restarted server),
    and a failed ping makes the pool connect afresh. A server restarted within the
    window fails the next use of such a connection once, as UNAVAILABLE, which
    clients retry.
    """

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is not None and time.monotonic() - last_used < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out another (or a new one).
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


def _sqlite_engine(
    url: URL,
    *,
    lock_timeout: float,
    foreign_keys: bool,
    checkpoint_pages: int,
    pool_args: dict[str, Any],
) -> Engine:
    database = url.database or ""
    if not database.startswith("file:"):
        # On failure, connecting reports a clearer error naming the file.
        with suppress(OSError):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": lock_timeout, "check_same_thread": False}, **pool_args
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transactions out of the sqlite3 module's hands, so that BEGIN is ours
        # (and can be BEGIN IMMEDIATE) and DDL stays transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a crashed or killed process loses nothing committed;
            # only a power loss may roll back the last commits. FULL fsyncs every
            # commit and measured 1.8 ms of each Recommend's 5 ms here.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={math.ceil(lock_timeout * 1000)}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # IMMEDIATE takes the single write lock now, not at the first write, so two
        # read-modify-write transactions cannot both read the old state.
        immediate = connection.get_execution_options().get(SQLITE_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
