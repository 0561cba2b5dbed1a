"""Database URLs, the default location, and the PostgreSQL test harness itself."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy import event

from fanout.storage import InvalidFieldError, Registry, default_database_url, migrate_command
from fanout.storage.database import mask_url, parse_database_url
from tests import postgres


def test_default_url_is_a_sqlite_file_in_the_data_folder(tmp_path: Path) -> None:
    url = default_database_url(tmp_path / "not-yet" / "there")
    assert url.startswith("sqlite:///")
    assert url.endswith("/not-yet/there/registry.sqlite3")
    registry = Registry(url)
    try:
        registry.ensure_schema(upgrade=True)  # creates the missing folders
        with registry.task_transaction("ns", "w/t", create_config={}) as tx:
            assert tx.created
    finally:
        registry.dispose()
    assert (tmp_path / "not-yet" / "there" / "registry.sqlite3").is_file()
    assert registry.dialect == "sqlite"


def test_default_url_without_argument_uses_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "fanout.storage.database.platformdirs.user_data_path",
        lambda app: Path("/data") / app,
    )
    assert default_database_url() == "sqlite:////data/fanout/registry.sqlite3"


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u:p@db:5432/fanout", "postgresql+psycopg2"),
        ("postgres://u:p@db/fanout", "postgresql+psycopg2"),
        ("postgresql+psycopg2://u@db/fanout", "postgresql+psycopg2"),
        ("postgresql+psycopg://u@db/fanout", "postgresql+psycopg"),
        ("sqlite:///relative.db", "sqlite"),
    ],
)
def test_url_driver_is_settled(given: str, driver: str) -> None:
    assert parse_database_url(given).drivername == driver


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("", "non-empty"),
        ("not a url", "not a database URL"),
        ("mysql://u@db/fanout", "unsupported database"),
        ("postgresql+pg8000://u@db/fanout", "unsupported PostgreSQL driver"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_bad_url_names_the_field(given: str, problem: str) -> None:
    with pytest.raises(InvalidFieldError, match=problem) as caught:
        Registry(given)
    assert caught.value.field == "database_url"


@pytest.mark.parametrize("field", ["connect_timeout", "lock_timeout"])
def test_timeouts_must_be_positive(tmp_path: Path, field: str) -> None:
    timeouts: dict[str, Any] = {field: 0}
    with pytest.raises(InvalidFieldError) as caught:
        Registry(f"sqlite:///{tmp_path / 'r.db'}", **timeouts)
    assert caught.value.field == field


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_pool_size_must_be_a_positive_integer(tmp_path: Path, size: object) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        Registry(f"sqlite:///{tmp_path / 'r.db'}", pool_size=size)  # type: ignore[arg-type]
    assert caught.value.field == "pool_size"


def connections_opened_by_second_burst(url: str, *, pool_size: int, threads: int) -> int:
    """Connections opened by the second of two bursts of `threads` threads that each hold
    a pooled connection at the same moment."""
    registry = Registry(url, pool_size=pool_size)
    opened = []
    event.listen(registry._engine, "connect", lambda *_: opened.append(1))
    all_holding = threading.Barrier(threads)

    def hold() -> None:
        connection = registry._engine.raw_connection()
        try:
            all_holding.wait(timeout=30)
        finally:
            connection.close()

    for _ in range(2):
        opened.clear()
        burst = [threading.Thread(target=hold) for _ in range(threads)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join()
    registry.dispose()
    return len(opened)


def test_a_pool_sized_to_the_threads_keeps_their_connections(postgres_url: str) -> None:
    assert connections_opened_by_second_burst(postgres_url, pool_size=12, threads=12) == 0
    # Too small a pool closed what it could not keep, and opens it again.
    assert connections_opened_by_second_burst(postgres_url, pool_size=2, threads=12) == 10


def test_password_is_masked_everywhere_it_is_shown() -> None:
    url = "postgresql://fanout:hunter2@db.internal:5432/registry"
    assert "hunter2" not in mask_url(url)
    command = migrate_command(url)
    assert command.startswith("fanout migrate --database-url ")
    assert "hunter2" not in command
    assert "'" in command  # quoted for the shell: `***` would otherwise glob
    registry = Registry(url)
    try:
        assert "hunter2" not in repr(registry)
        assert registry.safe_url == "postgresql+psycopg2://fanout:***@db.internal:5432/registry"
        assert registry.dialect == "postgresql"
        assert registry.url.endswith("@db.internal:5432/registry")
    finally:
        registry.dispose()


# -- the harness ------------------------------------------------------------------------


def test_missing_binaries_fail_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(postgres.BIN_DIR_VARIABLE, str(tmp_path))  # holds no PostgreSQL
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        postgres.start_postgres_server()


def test_missing_binaries_skip_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(postgres.BIN_DIR_VARIABLE, str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        postgres.start_postgres_server()


def test_each_postgres_url_is_a_new_empty_database(
    postgres_server: postgres.PostgresServer, postgres_url: str
) -> None:
    other = postgres_server.create_database()
    try:
        assert other not in postgres_url
        connection = psycopg2.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            dbname=parse_database_url(postgres_url).database,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                )
                row = cursor.fetchone()
        finally:
            connection.close()
        assert row == (0,)
    finally:
        postgres_server.drop_database(other)


def test_postgres_fixtures_are_marked(request: pytest.FixtureRequest, postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg2://")
    assert request.node.get_closest_marker("postgres") is not None
