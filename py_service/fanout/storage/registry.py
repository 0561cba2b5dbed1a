"""The registry: tasks, their observations and the leases that make up the cluster load.

Every database access goes through `Registry._session`, the only place that commits or
rolls back, except the two writes of the serving fast path, which run on the driver's
connection (`_on_driver`): `open_lease_at_version`, the write of a `Recommend`, and
`report_at_version`, the write of a report on a model the server holds at the current
version; each is one self-committing statement on PostgreSQL, prepared once per
connection (`fanout.storage.prepared`). Raw driver errors never leave this module: they
become the errors of `fanout.storage.errors`.

Retries are left to the caller: `task_transaction` runs the caller's code, which may
have done things outside the database, so rerunning it here would not be safe. On
PostgreSQL a serialization failure or deadlock surfaces as `TransactionConflictError`
with nothing committed. (One task per transaction under `SELECT ... FOR UPDATE` at READ
COMMITTED does not produce them in the registry's own use.)
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from fanout.storage import migrations
from fanout.storage.database import (
    DEFAULT_POOL_SIZE,
    SQLITE_IMMEDIATE,
    create_registry_engine,
    mask_url,
    migrate_command,
    parse_database_url,
)
from fanout.storage.errors import (
    DuplicateExecutionError,
    InvalidFieldError,
    InvalidPageToken,
    RegistryError,
    RegistryUnavailableError,
    StaleSchemaError,
    TaskNotFoundError,
    TransactionConflictError,
)
from fanout.storage.models import JsonDict, LeaseRow, ObservationRow, TaskRow, UtcDateTime
from fanout.storage.prepared import PreparedStatement, PreparedStatements
from fanout.storage.records import (
    LeaseRecord,
    LoadReading,
    NewObservation,
    ObservationRecord,
    ReportWrite,
    TaskRecord,
    check_aware,
    check_json_document,
    check_lease_id,
    check_name,
    check_number,
    check_parallelism,
    json_text,
)

_T = TypeVar("_T")

MAX_PAGE_SIZE = 1000
DEFAULT_LOCK_TIMEOUT = 30.0

# SQLSTATEs: 40001 serialization_failure, 40P01 deadlock_detected,
# 55P03 lock_not_available (lock_timeout hit), 42P01 undefined_table, 23505
# unique_violation.
_CONFLICT_STATES = frozenset({"40001", "40P01"})
_BUSY_STATES = frozenset({"55P03"})
_MISSING_TABLE_STATES = frozenset({"42P01"})
_UNIQUE_VIOLATION = "23505"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """Persistent store of tasks, observations and leases, shared by every server."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        pool_size: int = DEFAULT_POOL_SIZE,
        background_checkpoints: bool = False,
    ) -> None:
        """`lock_timeout`: seconds to wait for a task's write lock before giving up;
        `pool_size`: connections kept open, best the number of threads using the
        registry at once (more open and close a connection each time);
        `background_checkpoints`: the owner calls `checkpoint` from a thread of its
        own, so that SQLite's writes rarely copy the WAL back themselves."""
        self._url: URL = parse_database_url(url)
        check_number("connect_timeout", connect_timeout, minimum=0.0, inclusive=False)
        check_number("lock_timeout", lock_timeout, minimum=0.0, inclusive=False)
        _check_positive_int("pool_size", pool_size)
        self.url: str = self._url.render_as_string(hide_password=False)
        # For logs and messages: the URL with its password replaced by `***`.
        self.safe_url: str = mask_url(self._url)
        self.dialect: str = self._url.get_backend_name()
        self._connect_timeout = connect_timeout
        self.pool_size = pool_size
        self._lock_timeout = lock_timeout
        self._engine: Engine = create_registry_engine(
            self._url,
            connect_timeout=connect_timeout,
            lock_timeout=lock_timeout,
            pool_size=pool_size,
            background_checkpoints=background_checkpoints,
        )
        self._lease_sql = _open_lease_at_version_sql(self.dialect)
        self._observation_insert = _observation_insert(self._insert)
        dialect = self._engine.dialect
        self._report_statements = _report_at_version_sql(self.dialect)
        # Prepared on PostgreSQL only; SQLite's driver keeps its own statement cache.
        self._lease_prepared = PreparedStatement(self._lease_sql)
        self._report_prepared = PreparedStatement(self._report_statements[0])
        self._prepared = PreparedStatements(enabled=self.dialect == "postgresql")
        self._bind_time: Callable[[datetime], Any] = (
            UtcDateTime().bind_processor(dialect) or _unchanged
        )
        # SQLite allows one writer at a time, and a writer that finds the file locked
        # sleeps in SQLite's busy handler (1, 2, 5, 10 ... ms). Threads of this process
        # queue on a lock instead and wake the moment the writer before them is done.
        self._sqlite_writer = threading.Lock() if self.dialect == "sqlite" else None
        # SQLite allows one writer: write transactions take its lock at BEGIN.
        self._write_engine: Engine = (
            self._engine.execution_options(**{SQLITE_IMMEDIATE: True})
            if self.dialect == "sqlite"
            else self._engine
        )

    def __repr__(self) -> str:
        return f"Registry({self.safe_url!r})"

    # -- schema ---------------------------------------------------------------------

    def ensure_schema(self, *, upgrade: bool) -> None:
        """Checks the schema is at the shipped head; migrates it there when `upgrade`.

        Raises `StaleSchemaError` (naming `fanout migrate`) when the schema is behind
        and `upgrade` is False, or when the database is ahead of this fanout.
        """
        head = migrations.head_revision()
        engine = create_registry_engine(
            self._url,
            connect_timeout=self._connect_timeout,
            lock_timeout=max(self._lock_timeout, migrations.DEFAULT_LOCK_TIMEOUT),
            for_migrations=True,
        )
        try:
            with self._translate_errors():
                current = migrations.current_revision_of(engine)
                if current == head:
                    return
                if current is not None and not migrations.is_known_revision(current):
                    raise StaleSchemaError(
                        f"the registry at {self.safe_url} is at schema revision "
                        f"{current!r}, newer than this fanout knows (it needs {head!r}); "
                        "upgrade fanout",
                        current=current,
                        head=head,
                    )
                if not upgrade:
                    found = "empty" if current is None else f"at revision {current!r}"
                    raise StaleSchemaError(
                        f"the registry schema at {self.safe_url} is {found}, this "
                        f"fanout needs revision {head!r}; run: {migrate_command(self._url)}",
                        current=current,
                        head=head,
                    )
                migrations.upgrade_engine(engine, "head")
        finally:
            engine.dispose()

    def dispose(self) -> None:
        """Closes every pooled connection; the registry reconnects if used again."""
        self._engine.dispose()

    # -- reads ----------------------------------------------------------------------

    def get_task(self, namespace: str, name: str) -> TaskRecord | None:
        check_name("namespace", namespace)
        check_name("name", name)
        with self._session() as session:
            row = session.scalars(_task_query(namespace, name)).one_or_none()
            return None if row is None else TaskRecord.from_row(row)

    def get_task_by_id(self, task_id: int) -> TaskRecord | None:
        _check_task_id(task_id)
        with self._session() as session:
            row = session.get(TaskRow, task_id)
            return None if row is None else TaskRecord.from_row(row)

    def list_tasks(
        self, *, namespace: str | None, page_size: int, page_token: str | None
    ) -> tuple[list[TaskRecord], str | None]:
        """One page of tasks ordered by (namespace, name), and the next page's token.

        The token is opaque to callers and tied to the `namespace` filter it was issued
        for; anything else raises `InvalidPageToken`.
        """
        if namespace is not None:
            check_name("namespace", namespace)
        if isinstance(page_size, bool) or not isinstance(page_size, int):
            raise InvalidFieldError("page_size", f"must be an integer, got {page_size!r}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidFieldError("page_size", f"must be in [1, {MAX_PAGE_SIZE}]")
        query = select(TaskRow).order_by(TaskRow.namespace, TaskRow.name).limit(page_size + 1)
        if namespace is not None:
            query = query.where(TaskRow.namespace == namespace)
        if page_token:
            after_namespace, after_name = _decode_page_token(page_token, namespace)
            query = query.where(
                or_(
                    TaskRow.namespace > after_namespace,
                    and_(TaskRow.namespace == after_namespace, TaskRow.name > after_name),
                )
            )
        with self._session() as session:
            rows = list(session.scalars(query))
        page = [TaskRecord.from_row(row) for row in rows[:page_size]]
        next_token = None
        if len(rows) > page_size:
            last = page[-1]
            next_token = _encode_page_token(namespace, last.namespace, last.name)
        return page, next_token

    def get_lease(self, lease_id: str) -> LeaseRecord | None:
        check_lease_id("lease_id", lease_id)
        with self._session() as session:
            row = session.get(LeaseRow, lease_id)
            return None if row is None else LeaseRecord.from_row(row)

    def cluster_load(self, *, now: datetime | None = None) -> int:
        """Sum of `parallelism` over open, unexpired leases of the whole registry (SPEC 6)."""
        return self.read_load(now=now).total

    def read_load(self, *, now: datetime | None = None) -> LoadReading:
        """`cluster_load` with the moment it next drops by itself (the first expiry)."""
        with self._session() as session:
            return _read_load(session, now)

    def checkpoint(self) -> None:
        """On SQLite, copies the write-ahead log back into the database file as far as
        readers allow, without waiting for them or for writers; nothing on PostgreSQL.
        """
        if self.dialect != "sqlite":
            return
        # On the driver: SQLAlchemy would open a transaction, and a connection inside
        # one cannot checkpoint.
        statement = "PRAGMA wal_checkpoint(PASSIVE)"
        self._on_driver(statement, {}, lambda cursor, _info: cursor.execute(statement))

    def open_lease_at_version(
        self,
        task_id: int,
        version: int,
        lease_id: str,
        *,
        parallelism: int,
        cluster_load: float,
        input_size: float | None,
        expires_at: datetime,
        workflow: str | None = None,
        task: str | None = None,
    ) -> LeaseRecord | None:
        """Opens a lease only while the task is still at `version` and returns it; None
        when the task moved on or is gone. One statement and no task lock: a
        recommendation from a model that is still current needs nothing else."""
        values = _lease_values(
            lease_id,
            parallelism=parallelism,
            cluster_load=cluster_load,
            input_size=input_size,
            expires_at=expires_at,
            workflow=workflow,
            task=task,
        )
        values.update(task_id=_check_task_id(task_id), version=int(version))
        binds = values | {
            "created_at": self._bind_time(values["created_at"]),
            "expires_at": self._bind_time(values["expires_at"]),
        }

        def insert(cursor: Any, connection_info: dict[Any, Any]) -> bool:
            self._prepared.execute(cursor, connection_info, self._lease_prepared, binds)
            return int(cursor.rowcount) == 1

        # On SQLite the statement commits by itself (the driver runs in autocommit).
        with self._writer():
            if not self._on_driver(self._lease_sql, binds, insert):
                return None
        del values["version"]
        return LeaseRecord(closed_at=None, **values)

    def report_at_version(
        self,
        task_id: int,
        version: int,
        observation: NewObservation,
        *,
        state: JsonDict,
        lease_id: str | None,
        now: datetime,
    ) -> ReportWrite | None:
        """Stores a succeeded run, the state it leads to, and closes its lease, only
        while the task is still at `version` and the execution id is new; None, with
        nothing written, otherwise (the caller then takes the task's lock). `now` is
        when the lease closes.

        The write of a report whose model this server holds at the current version: one
        statement on PostgreSQL, one short transaction on SQLite.
        """
        if not isinstance(observation, NewObservation) or observation.outcome != "succeeded":
            raise InvalidFieldError("observation", "must be a succeeded NewObservation")
        if lease_id is not None:
            check_lease_id("lease_id", lease_id)
        updated_at = utc_now()
        binds = _observation_values(observation, now=updated_at)
        binds.update(
            task_id=_check_task_id(task_id),
            version=int(version),
            state=json_text("state", state),
            lease_id=lease_id,
            now=check_aware("now", now),
            updated_at=updated_at,
        )
        for name in ("created_at", "now", "updated_at"):
            binds[name] = self._bind_time(binds[name])
        with self._writer():
            write = self._report_postgresql if self.dialect == "postgresql" else self._report_sqlite
            found = self._on_driver(
                self._report_statements, binds, lambda cursor, info: write(cursor, info, binds)
            )
        if found is None:
            return None
        new_version, closed = found
        return ReportWrite(version=new_version, updated_at=updated_at, lease_closed=closed)

    def _report_postgresql(
        self, cursor: Any, connection_info: dict[Any, Any], binds: dict[str, Any]
    ) -> tuple[int, bool] | None:
        # Autocommit: the statement is its own transaction, so nothing is half-written.
        try:
            self._prepared.execute(cursor, connection_info, self._report_prepared, binds)
        except self._engine.dialect.loaded_dbapi.IntegrityError as exc:
            # The same execution id committed by a transaction this one waited for
            # (a failed run, which keeps the version): its NOT EXISTS saw the older
            # snapshot. The locked path answers the duplicate.
            if _sqlstate(exc) == _UNIQUE_VIOLATION:
                return None
            raise
        new_version, closed = cursor.fetchone()
        return None if new_version is None else (int(new_version), closed == 1)

    def _report_sqlite(
        self, cursor: Any, _connection_info: dict[Any, Any], binds: dict[str, Any]
    ) -> tuple[int, bool] | None:
        update_task, insert_observation, close_lease = self._report_statements
        cursor.execute("BEGIN IMMEDIATE")
        try:
            cursor.execute(update_task, binds)
            if cursor.rowcount != 1:
                cursor.execute("ROLLBACK")
                return None
            cursor.execute(insert_observation, binds)
            cursor.execute(close_lease, binds)
            closed = cursor.rowcount == 1
            cursor.execute("COMMIT")
        except BaseException:
            with suppress(Exception):
                cursor.execute("ROLLBACK")
            raise
        return int(binds["version"]) + 1, closed

    def _on_driver(
        self,
        statement: str | tuple[str, ...],
        binds: dict[str, Any],
        work: Callable[[Any, dict[Any, Any]], _T],
    ) -> _T:
        """Runs `work(cursor, connection_info)` on a pooled connection's driver cursor
        in autocommit mode; `connection_info` lives as long as the driver's connection.
        `statement` and `binds` only name what failed in errors.

        SQLAlchemy's execution machinery cost three times the statements themselves
        on the two writes every request makes; raw driver errors get the same
        translation as those SQLAlchemy wraps.
        """
        dbapi_error = self._engine.dialect.loaded_dbapi.Error
        connection = None
        try:
            with self._translate_errors():
                connection = self._engine.raw_connection()
                driver = connection.dbapi_connection
                # On PostgreSQL autocommit saves the COMMIT round trip (SQLite's
                # driver is in autocommit already).
                autocommit = self.dialect == "postgresql"
                if autocommit:
                    driver.autocommit = True  # type: ignore[union-attr]
                try:
                    cursor = connection.cursor()
                    try:
                        return work(cursor, connection.info)
                    finally:
                        cursor.close()
                finally:
                    if autocommit:
                        driver.autocommit = False  # type: ignore[union-attr]
        except dbapi_error as exc:
            if connection is not None and self._engine.dialect.is_disconnect(
                exc, connection.dbapi_connection, None
            ):
                connection.invalidate(exc)
            text = statement if isinstance(statement, str) else ";\n".join(statement)
            wrapped = DBAPIError.instance(
                text, binds, exc, dbapi_error, dialect=self._engine.dialect
            )
            raise self._translate(wrapped) from exc
        finally:
            if connection is not None:
                connection.close()

    def purge_leases(self, *, before: datetime, limit: int | None = None) -> int:
        """Deletes leases closed or expired before `before`, at most `limit` of them in
        one transaction; returns how many."""
        moment = check_aware("before", before)
        finished = or_(LeaseRow.closed_at < moment, LeaseRow.expires_at < moment)
        if limit is None:
            statement = delete(LeaseRow).where(finished)
        else:
            _check_positive_int("limit", limit)
            batch = select(LeaseRow.id).where(finished).limit(limit).scalar_subquery()
            statement = delete(LeaseRow).where(LeaseRow.id.in_(batch))
        with self._session(write=True) as session:
            return _rowcount(session.execute(statement))

    def observations(
        self, task_id: int, *, limit: int | None = None, succeeded_only: bool = True
    ) -> list[ObservationRecord]:
        """The task's observations, oldest first; with `limit`, only the newest `limit`."""
        query = _observations_query(task_id, limit=limit, succeeded_only=succeeded_only)
        with self._session() as session:
            rows = list(session.scalars(query))
        return [ObservationRecord.from_row(row) for row in reversed(rows)]

    def count_observations(
        self, task_id: int | None = None, *, succeeded_only: bool = False
    ) -> int:
        """Observations of one task (or of every task when `task_id` is None)."""
        query = select(func.count()).select_from(ObservationRow)
        if task_id is not None:
            query = query.where(ObservationRow.task_id == _check_task_id(task_id))
        if succeeded_only:
            query = query.where(ObservationRow.outcome == "succeeded")
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def count_tasks(self, *, namespace: str | None = None) -> int:
        query = select(func.count()).select_from(TaskRow)
        if namespace is not None:
            query = query.where(TaskRow.namespace == check_name("namespace", namespace))
        with self._session() as session:
            return int(session.scalar(query) or 0)

    # -- the write path ---------------------------------------------------------------

    @contextmanager
    def task_transaction(
        self, namespace: str, name: str, *, create_config: JsonDict | None = None
    ) -> Iterator[TaskTransaction]:
        """One transaction holding the task's write lock until the block ends.

        Creates the task (empty state, version 1) when it is missing and
        `create_config` is given; otherwise a missing task raises `TaskNotFoundError`.
        Commits when the block ends normally, rolls back when it raises.
        """
        check_name("namespace", namespace)
        check_name("name", name)
        config = None if create_config is None else check_json_document("config", create_config)
        with self._session(write=True) as session:
            with self._translate_errors():
                row, created = self._lock_task(session, namespace, name, config)
            transaction = TaskTransaction(self, session, row, created=created)
            try:
                yield transaction
            finally:
                transaction._closed = True

    def _lock_task(
        self, session: Session, namespace: str, name: str, config: JsonDict | None
    ) -> tuple[TaskRow, bool]:
        # FOR UPDATE is a no-op on SQLite, where BEGIN IMMEDIATE already holds the lock.
        key = {"namespace": namespace, "name": name}
        row = session.scalars(_LOCK_TASK, key).one_or_none()
        if row is not None:
            return row, False
        if config is None:
            raise TaskNotFoundError(namespace, name)
        now = utc_now()
        # ON CONFLICT DO NOTHING: a concurrent creator wins quietly and we lock its row.
        inserted = session.execute(
            self._insert(TaskRow)
            .values(
                namespace=namespace,
                name=name,
                config=config,
                state={},
                version=1,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["namespace", "name"])
        )
        created = _rowcount(inserted) == 1
        row = session.scalars(_LOCK_TASK, key).one()
        return row, created

    def _insert(self, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
        if self.dialect == "postgresql":
            return postgresql.insert(model)
        return sqlite.insert(model)

    # -- the transaction scope ----------------------------------------------------------

    def _writer(self, *, write: bool = True) -> AbstractContextManager[object]:
        """Held around every write on SQLite (see `__init__`); nothing on PostgreSQL."""
        if self._sqlite_writer is None or not write:
            return nullcontext()
        return self._queued_writer(self._sqlite_writer)

    @contextmanager
    def _queued_writer(self, lock: threading.Lock) -> Iterator[None]:
        if not lock.acquire(timeout=self._lock_timeout):
            raise RegistryUnavailableError(
                f"registry at {self.safe_url} is busy: no write turn within "
                f"{self._lock_timeout:g} s"
            )
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """The one transaction scope: commits on success, rolls back on any exception."""
        with self._writer(write=write), self._transaction(write=write) as session:
            yield session

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Session]:
        session = Session(
            self._write_engine if write else self._engine,
            expire_on_commit=False,
            autoflush=False,
        )
        try:
            with self._translate_errors():
                session.begin()
            try:
                yield session
            except SQLAlchemyError as exc:
                # Only database errors: the caller's own exceptions pass unchanged.
                raise self._translate(exc) from exc
            with self._translate_errors():
                session.commit()
        except BaseException:
            _rollback_quietly(session)
            raise
        finally:
            _close_quietly(session)

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except RegistryError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> RegistryError:
        where = self.safe_url
        original = exc.orig if isinstance(exc, DBAPIError) else exc
        state = _sqlstate(original)
        detail = _first_line(original)
        if state in _CONFLICT_STATES:
            return TransactionConflictError(f"transaction aborted by {where}: {detail}")
        if state in _BUSY_STATES or "database is locked" in detail:
            return RegistryUnavailableError(f"registry at {where} is busy: {detail}")
        if state in _MISSING_TABLE_STATES or "no such table" in detail:
            return StaleSchemaError(
                f"the registry at {where} has no schema ({detail}); run: "
                f"{migrate_command(self._url)}",
                current=None,
                head=None,
            )
        if isinstance(exc, IntegrityError):
            return RegistryError(f"constraint violated in the registry at {where}: {detail}")
        if isinstance(
            exc,
            OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError | OSError,
        ) or _is_driver_connection_error(original):
            return RegistryUnavailableError(f"registry at {where} unavailable: {detail}")
        return RegistryError(f"registry at {where} failed: {detail}")


class TaskTransaction:
    """The write operations allowed while one task's lock is held.

    Valid only inside its `task_transaction` block.
    """

    def __init__(
        self, registry: Registry, session: Session, row: TaskRow, *, created: bool
    ) -> None:
        self._registry = registry
        self._session = session
        self._row = row
        self._closed = False
        self.record: TaskRecord = TaskRecord.from_row(row)
        self.created: bool = created

    def find_observation(self, execution_id: str) -> ObservationRecord | None:
        check_name("execution_id", execution_id)
        self._check_open()
        query = select(ObservationRow).where(
            ObservationRow.task_id == self.record.id,
            ObservationRow.execution_id == execution_id,
        )
        with self._registry._translate_errors():
            row = self._session.scalars(query).one_or_none()
        return None if row is None else ObservationRecord.from_row(row)

    def add_observation(self, observation: NewObservation) -> ObservationRecord:
        """Stores one report; a repeated execution id raises `DuplicateExecutionError`.

        ON CONFLICT DO NOTHING instead of catching IntegrityError: on PostgreSQL a failed
        INSERT would abort the whole transaction.
        """
        if not isinstance(observation, NewObservation):
            raise InvalidFieldError("observation", "must be a NewObservation")
        self._check_open()
        values = _observation_values(observation, now=utc_now())
        values["task_id"] = self.record.id
        with self._registry._translate_errors():
            row = self._session.execute(self._registry._observation_insert, values).one_or_none()
        if row is None:
            raise DuplicateExecutionError(observation.execution_id)
        return ObservationRecord.from_row(row)

    def observations(
        self, *, limit: int | None, succeeded_only: bool = True
    ) -> list[ObservationRecord]:
        """This task's observations as this transaction sees them, oldest first."""
        self._check_open()
        query = _observations_query(self.record.id, limit=limit, succeeded_only=succeeded_only)
        with self._registry._translate_errors():
            rows = list(self._session.scalars(query))
        return [ObservationRecord.from_row(row) for row in reversed(rows)]

    def delete_observations(self) -> int:
        """Forgets the task's history (ResetTask with forget_history); returns the count."""
        self._check_open()
        statement = delete(ObservationRow).where(ObservationRow.task_id == self.record.id)
        with self._registry._translate_errors():
            return _rowcount(self._session.execute(statement))

    def cluster_load(self, *, now: datetime | None = None) -> int:
        """`Registry.cluster_load` inside this transaction (one round trip fewer)."""
        self._check_open()
        with self._registry._translate_errors():
            return _read_load(self._session, now).total

    def open_lease(
        self,
        lease_id: str,
        *,
        parallelism: int,
        cluster_load: float,
        input_size: float | None,
        expires_at: datetime,
        workflow: str | None = None,
        task: str | None = None,
    ) -> LeaseRecord:
        """Records a recommendation in flight for this task (SPEC section 6); `workflow`
        and `task` name the workflow task that asked (several may share one model)."""
        values = _lease_values(
            lease_id,
            parallelism=parallelism,
            cluster_load=cluster_load,
            input_size=input_size,
            expires_at=expires_at,
            workflow=workflow,
            task=task,
        )
        self._check_open()
        statement = (
            self._registry._insert(LeaseRow)
            .values(task_id=self.record.id, closed_at=None, **values)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(LeaseRow)
        )
        with self._registry._translate_errors():
            row = self._session.scalars(statement).one_or_none()
        if row is None:
            raise InvalidFieldError("lease_id", f"{lease_id!r} is already in use")
        return LeaseRecord.from_row(row)

    def close_lease(self, lease_id: str, *, now: datetime) -> bool:
        """Closes a lease of any task; False when it is unknown or already closed."""
        check_lease_id("lease_id", lease_id)
        check_aware("now", now)
        self._check_open()
        with self._registry._translate_errors():
            closing = self._session.execute(_CLOSE_LEASE, {"lease_id": lease_id, "now": now})
            return _rowcount(closing) == 1

    def save(self, *, config: JsonDict | None = None, state: JsonDict | None = None) -> TaskRecord:
        """Writes what is given and bumps the version by one; returns the task as saved."""
        new_config = None if config is None else check_json_document("config", config)
        new_state = None if state is None else check_json_document("state", state)
        self._check_open()
        if new_config is not None:
            self._row.config = new_config
        if new_state is not None:
            self._row.state = new_state
        self._row.version += 1
        self._row.updated_at = utc_now()
        with self._registry._translate_errors():
            self._session.flush()
        return TaskRecord.from_row(self._row)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the task transaction has ended; open a new one")


def _lease_values(
    lease_id: str,
    *,
    parallelism: int,
    cluster_load: float,
    input_size: float | None,
    expires_at: datetime,
    workflow: str | None,
    task: str | None,
) -> dict[str, Any]:
    """A lease's columns, checked (everything but `task_id` and `closed_at`)."""
    check_lease_id("lease_id", lease_id)
    check_parallelism("parallelism", parallelism)
    check_number("cluster_load", cluster_load, minimum=0.0, inclusive=True)
    if input_size is not None:
        check_number("input_size", input_size, minimum=0.0, inclusive=False)
    return {
        "id": lease_id,
        "parallelism": parallelism,
        "cluster_load": float(cluster_load),
        "input_size": _optional_float(input_size),
        "workflow": None if workflow is None else check_name("workflow", workflow),
        "task": None if task is None else check_name("task", task),
        "created_at": utc_now(),
        "expires_at": check_aware("expires_at", expires_at),
    }


def _observation_values(observation: NewObservation, *, now: datetime) -> dict[str, Any]:
    """An observation's columns but `task_id` and `seq`."""
    return {
        "execution_id": observation.execution_id,
        "workflow": observation.workflow,
        "task": observation.task,
        "recommendation_id": observation.recommendation_id,
        "parallelism": observation.parallelism,
        "input_size": _optional_float(observation.input_size),
        "cluster_load": float(observation.cluster_load),
        "duration_seconds": float(observation.duration_seconds),
        "startup_seconds": _optional_float(observation.startup_seconds),
        "outcome": observation.outcome,
        "created_at": observation.created_at or now,
    }


def _observation_insert(
    dialect_insert: Callable[[type[Any]], postgresql.Insert | sqlite.Insert],
) -> ReturningInsert[Any]:
    """The report INSERT, built once: composing it per report from a dozen values cost
    about a millisecond of SQLAlchemy, three times the statement's round trip."""
    columns = [c.name for c in ObservationRow.__table__.c if c.name != "seq"]
    return (
        dialect_insert(ObservationRow)
        .values({name: bindparam(name) for name in columns})
        .on_conflict_do_nothing(index_elements=["task_id", "execution_id"])
        .returning(*ObservationRow.__table__.c)
    )


def _open_lease_at_version_sql(dialect: str) -> str:
    """INSERT of a lease that selects the task row only at the expected version."""
    columns = (
        "id",
        "parallelism",
        "cluster_load",
        "input_size",
        "workflow",
        "task",
        "created_at",
        "expires_at",
    )
    if dialect == "sqlite":
        marks = [f":{name}" for name in (*columns, "task_id", "version")]
    else:
        marks = [f"%({name})s" for name in (*columns, "task_id", "version")]
    return (
        f"INSERT INTO {LeaseRow.__tablename__} (id, task_id, {', '.join(columns[1:])}) "
        f"SELECT {marks[0]}, id, {', '.join(marks[1 : len(columns)])} "
        f"FROM {TaskRow.__tablename__} WHERE id = {marks[-2]} AND version = {marks[-1]}"
    )


def _report_at_version_sql(dialect: str) -> tuple[str, ...]:
    """The writes of `Registry.report_at_version`.

    The task row is updated only at the expected version and while the execution id is
    new, and the observation and the lease follow only from that update. PostgreSQL
    runs them as one statement; SQLite, whose WITH takes no INSERT or UPDATE, as three
    statements in one transaction.
    """
    tasks, observations, leases = (
        TaskRow.__tablename__,
        ObservationRow.__tablename__,
        LeaseRow.__tablename__,
    )
    columns = [c.name for c in ObservationRow.__table__.c if c.name not in ("seq", "task_id")]

    def mark(name: str) -> str:
        return f":{name}" if dialect == "sqlite" else f"%({name})s"

    state = mark("state") if dialect == "sqlite" else f"CAST({mark('state')} AS JSONB)"
    update_task = (
        f"UPDATE {tasks} SET state = {state}, version = version + 1, "
        f"updated_at = {mark('updated_at')} "
        f"WHERE id = {mark('task_id')} AND version = {mark('version')} AND NOT EXISTS "
        f"(SELECT 1 FROM {observations} WHERE task_id = {mark('task_id')} "
        f"AND execution_id = {mark('execution_id')})"
    )
    observation_values = ", ".join(mark(name) for name in columns)
    close_lease = (
        f"UPDATE {leases} SET closed_at = {mark('now')} "
        f"WHERE id = {mark('lease_id')} AND closed_at IS NULL"
    )
    if dialect == "sqlite":
        insert_observation = (
            f"INSERT INTO {observations} (task_id, {', '.join(columns)}) "
            f"VALUES ({mark('task_id')}, {observation_values})"
        )
        return update_task, insert_observation, close_lease
    # Data-modifying WITH clauses run once and to completion whether read or not.
    return (
        f"WITH saved AS ({update_task} RETURNING id, version), "
        f"stored AS (INSERT INTO {observations} (task_id, {', '.join(columns)}) "
        f"SELECT id, {observation_values} FROM saved), "
        f"closed AS ({close_lease} AND EXISTS (SELECT 1 FROM saved) RETURNING id) "
        "SELECT (SELECT version FROM saved), (SELECT count(*) FROM closed)",
    )


def _unchanged(value: Any) -> Any:
    return value


def _read_load(session: Session, now: datetime | None) -> LoadReading:
    moment = utc_now() if now is None else check_aware("now", now)
    query = select(
        func.coalesce(func.sum(LeaseRow.parallelism), 0), func.min(LeaseRow.expires_at)
    ).where(LeaseRow.closed_at.is_(None), LeaseRow.expires_at > moment)
    total, first_expiry = session.execute(query).one()
    return LoadReading(int(total or 0), first_expiry)


def _task_query(namespace: str, name: str) -> Select[TaskRow]:
    return select(TaskRow).where(TaskRow.namespace == namespace, TaskRow.name == name)


# Built once, as the report's other statements.
_CLOSE_LEASE = (
    update(LeaseRow)
    .where(LeaseRow.id == bindparam("lease_id"), LeaseRow.closed_at.is_(None))
    .values(closed_at=bindparam("now", type_=UtcDateTime()))
    .execution_options(synchronize_session=False)
)

# Built once: every report and every locked Recommend starts with it.
_LOCK_TASK = (
    select(TaskRow)
    .where(TaskRow.namespace == bindparam("namespace"), TaskRow.name == bindparam("name"))
    .with_for_update()
)


def _observations_query(
    task_id: int, *, limit: int | None, succeeded_only: bool
) -> Select[ObservationRow]:
    """Newest first; callers reverse, so that `limit` keeps the newest rows."""
    query = (
        select(ObservationRow)
        .where(ObservationRow.task_id == _check_task_id(task_id))
        .order_by(ObservationRow.seq.desc())
    )
    if succeeded_only:
        query = query.where(ObservationRow.outcome == "succeeded")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidFieldError("limit", f"must be a non-negative integer, got {limit!r}")
        query = query.limit(limit)
    return query


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _check_positive_int(field_name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidFieldError(field_name, f"must be a positive integer, got {value!r}")


def _check_task_id(task_id: object) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise InvalidFieldError("task_id", f"must be an integer, got {task_id!r}")
    return task_id


def _encode_page_token(namespace_filter: str | None, namespace: str, name: str) -> str:
    payload = json.dumps([namespace_filter, namespace, name], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_page_token(token: str, namespace_filter: str | None) -> tuple[str, str]:
    if not isinstance(token, str) or len(token) > 4 * MAX_PAGE_SIZE:
        raise InvalidPageToken("not a token issued by this registry")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw.decode())
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidPageToken("not a token issued by this registry") from exc
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or not all(isinstance(part, str) for part in decoded[1:])
        or not (decoded[0] is None or isinstance(decoded[0], str))
    ):
        raise InvalidPageToken("not a token issued by this registry")
    if decoded[0] != namespace_filter:
        raise InvalidPageToken("issued for a different namespace filter")
    return decoded[1], decoded[2]


def _sqlstate(error: BaseException | None) -> str | None:
    # psycopg2 calls it pgcode, psycopg 3 sqlstate.
    for attribute in ("pgcode", "sqlstate"):
        value = getattr(error, attribute, None)
        if isinstance(value, str):
            return value
    return None


def _is_driver_connection_error(error: BaseException | None) -> bool:
    module = type(error).__module__
    name = type(error).__name__
    return module.startswith(("psycopg", "sqlite3")) and name in (
        "OperationalError",
        "InterfaceError",
    )


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _rowcount(result: Any) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if isinstance(count, int) else 0


def _rollback_quietly(session: Session) -> None:
    # The connection may be gone; the original error is the one worth raising.
    with suppress(SQLAlchemyError, OSError):
        session.rollback()


def _close_quietly(session: Session) -> None:
    with suppress(SQLAlchemyError, OSError):
        session.close()
