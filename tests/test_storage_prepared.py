"""The serving path's writes run as statements prepared once per PostgreSQL connection."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fanout.storage import Registry
from fanout.storage.prepared import PreparedStatement
from tests.test_storage_registry import NS, create_task, observation


def test_parameters_are_numbered_once_each_in_order() -> None:
    statement = PreparedStatement(
        "UPDATE t SET a = %(a)s WHERE id = %(id)s AND b = %(a)s AND c = %(c_1)s"
    )
    assert statement.prepare_sql == (
        f"PREPARE {statement.name} AS UPDATE t SET a = $1 WHERE id = $2 AND b = $1 AND c = $3"
    )
    assert statement.execute_sql == f"EXECUTE {statement.name} (%(a)s, %(id)s, %(c_1)s)"


def test_statements_are_named_by_their_text() -> None:
    first = PreparedStatement("SELECT %(a)s")
    assert PreparedStatement("SELECT %(a)s").name == first.name
    assert PreparedStatement("SELECT %(a)s + 1").name != first.name
    assert first.name.startswith("fanout_")


# The `registry` fixture on its PostgreSQL backend only.
on_postgresql = pytest.mark.parametrize(
    "registry_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def prepared_on_pooled_connection(registry: Registry, sql: str | None = None) -> set[str]:
    """Names prepared on the connection the pool hands out next (last in, first out: the
    one the previous call used); runs `sql` on it first."""
    connection = registry._engine.raw_connection()
    try:
        cursor = connection.cursor()
        if sql is not None:
            cursor.execute(sql)
        cursor.execute("SELECT name FROM pg_prepared_statements")
        names = {row[0] for row in cursor.fetchall()}
        cursor.close()
        connection.commit()
        return names
    finally:
        connection.close()


def lease_fields(expires: datetime) -> dict[str, Any]:
    return {"parallelism": 4, "cluster_load": 0.0, "input_size": None, "expires_at": expires}


@on_postgresql
def test_lease_and_report_writes_run_prepared(registry: Registry) -> None:
    task_id = create_task(registry, "w/t")
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert registry.open_lease_at_version(task_id, 1, "lease-1", **lease_fields(expires))
    now = datetime.now(UTC)
    written = registry.report_at_version(
        task_id, 1, observation("run-1"), state={"n": 1}, lease_id="lease-1", now=now
    )
    assert written is not None and (written.version, written.lease_closed) == (2, True)
    assert prepared_on_pooled_connection(registry) == {
        registry._lease_prepared.name,
        registry._report_prepared.name,
    }
    # Run again, prepared: the same answers as the plain statements give.
    assert registry.open_lease_at_version(task_id, 2, "lease-2", **lease_fields(expires))
    again = registry.report_at_version(
        task_id, 2, observation("run-2"), state={"n": 2}, lease_id="lease-2", now=now
    )
    assert again is not None and (again.version, again.lease_closed) == (3, True)
    stale = registry.report_at_version(
        task_id, 2, observation("run-3"), state={"n": 9}, lease_id=None, now=now
    )
    assert stale is None
    stored = registry.get_task(NS, "w/t")
    assert stored is not None and (stored.version, stored.state) == (3, {"n": 2})
    assert [o.execution_id for o in registry.observations(task_id)] == ["run-1", "run-2"]


@on_postgresql
def test_a_statement_prepared_behind_the_pools_back_is_reused(
    registry: Registry,
) -> None:
    task_id = create_task(registry, "w/t")
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert registry.open_lease_at_version(task_id, 1, "lease-1", **lease_fields(expires))
    # The pool forgets what this connection prepared; PostgreSQL still has it.
    connection = registry._engine.raw_connection()
    connection.info.clear()
    connection.close()
    assert registry.open_lease_at_version(task_id, 1, "lease-2", **lease_fields(expires))
    assert registry._prepared.enabled
    assert registry.cluster_load() == 8


@on_postgresql
def test_statements_that_vanish_turn_preparing_off(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """As behind a pooler in transaction mode: the next EXECUTE finds no statement."""
    task_id = create_task(registry, "w/t")
    now = datetime.now(UTC)
    assert registry.report_at_version(
        task_id, 1, observation("run-1"), state={"n": 1}, lease_id=None, now=now
    )
    assert prepared_on_pooled_connection(registry, "DEALLOCATE ALL") == set()
    with caplog.at_level(logging.WARNING, logger="fanout.storage.prepared"):
        written = registry.report_at_version(
            task_id, 2, observation("run-2"), state={"n": 2}, lease_id=None, now=now
        )
    assert written is not None and written.version == 3
    assert "sending plain statements" in caplog.text
    assert not registry._prepared.enabled
    assert registry.report_at_version(
        task_id, 3, observation("run-3"), state={"n": 3}, lease_id=None, now=now
    )
    assert prepared_on_pooled_connection(registry) == set()
    assert [o.execution_id for o in registry.observations(task_id)] == [
        "run-1",
        "run-2",
        "run-3",
    ]
