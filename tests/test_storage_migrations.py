"""Schema checks and Alembic migrations, on every backend."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from fanout.storage import Registry, StaleSchemaError, TaskNotFoundError
from fanout.storage.database import parse_database_url
from fanout.storage.migrations import (
    current_revision,
    downgrade,
    head_revision,
    revisions,
    upgrade,
)
from fanout.storage.models import Base

TABLES = {"tasks", "observations", "leases"}


def table_names(url: str) -> set[str]:
    engine = create_engine(parse_database_url(url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version", "sqlite_sequence"}
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    """What Alembic's autogenerate would change to make the database match the models."""
    engine = create_engine(parse_database_url(url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_empty_database_is_refused_with_the_migrate_command(registry_url: str) -> None:
    url = make_url(registry_url)
    if url.get_backend_name() == "postgresql":
        # Trust authentication ignores the password; the message must not show it.
        url = url.set(password="s3cret-pw")
    registry = Registry(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(StaleSchemaError) as caught:
            registry.ensure_schema(upgrade=False)
    finally:
        registry.dispose()
    message = str(caught.value)
    assert "fanout migrate --database-url" in message
    assert "s3cret-pw" not in message
    assert caught.value.current is None
    assert caught.value.head == head_revision()
    assert table_names(registry_url) == set()  # refusing changed nothing


def test_using_a_registry_without_schema_names_the_migrate_command(registry_url: str) -> None:
    registry = Registry(registry_url)
    try:
        with pytest.raises(StaleSchemaError, match="fanout migrate"):
            registry.get_task("ns", "w/t")
    finally:
        registry.dispose()


def test_upgrade_from_empty_matches_the_models(registry_url: str) -> None:
    assert current_revision(registry_url) is None
    upgrade(registry_url)
    assert current_revision(registry_url) == head_revision()
    assert table_names(registry_url) == TABLES
    assert schema_differences(registry_url) == []


def test_constraint_names_follow_the_naming_convention(registry_url: str) -> None:
    upgrade(registry_url)
    engine = create_engine(parse_database_url(registry_url))
    try:
        inspector = inspect(engine)
        unique = {c["name"] for c in inspector.get_unique_constraints("observations")}
        foreign = {c["name"] for c in inspector.get_foreign_keys("leases")}
        checks = {c["name"] for c in inspector.get_check_constraints("observations")}
    finally:
        engine.dispose()
    assert unique == {"uq_observations_task_id_execution_id"}
    assert foreign == {"fk_leases_task_id_tasks"}
    assert "ck_observations_parallelism_positive" in checks


def test_upgrade_from_every_earlier_revision(registry_url: str) -> None:
    head = head_revision()
    starts: list[str | None] = [None, *revisions()[:-1]]
    for start in starts:
        downgrade(registry_url, "base")
        if start is not None:
            upgrade(registry_url, start)
        assert current_revision(registry_url) == start
        registry = Registry(registry_url)
        try:
            with pytest.raises(StaleSchemaError, match="fanout migrate"):
                registry.ensure_schema(upgrade=False)
            registry.ensure_schema(upgrade=True)
            assert current_revision(registry_url) == head
            registry.ensure_schema(upgrade=False)  # now accepted
        finally:
            registry.dispose()
    assert schema_differences(registry_url) == []


def test_migrations_step_one_revision_at_a_time(registry_url: str) -> None:
    for revision in revisions():
        upgrade(registry_url, revision)
        assert current_revision(registry_url) == revision
    earlier: list[str | None] = [None, *revisions()[:-1]]
    for target in reversed(earlier):
        downgrade(registry_url, target or "base")
        assert current_revision(registry_url) == target


def test_downgrade_to_base_and_up_again(registry_url: str) -> None:
    registry = Registry(registry_url)
    try:
        registry.ensure_schema(upgrade=True)
        with registry.task_transaction("ns", "w/t", create_config={"a": 1}) as tx:
            tx.save(state={"p": 0.9})

        registry.dispose()
        downgrade(registry_url, "base")
        assert current_revision(registry_url) is None
        assert table_names(registry_url) == set()

        upgrade(registry_url)
        assert table_names(registry_url) == TABLES
        assert registry.get_task("ns", "w/t") is None
        with pytest.raises(TaskNotFoundError), registry.task_transaction("ns", "w/t"):
            pass  # pragma: no cover - never entered
        with registry.task_transaction("ns", "w/t", create_config={}) as tx:
            assert tx.created
    finally:
        registry.dispose()


def test_ensure_schema_keeps_the_data(registry_url: str) -> None:
    registry = Registry(registry_url)
    try:
        registry.ensure_schema(upgrade=True)
        with registry.task_transaction("ns", "w/t", create_config={"a": 1}) as tx:
            tx.save(state={"p": 0.9})
        registry.ensure_schema(upgrade=True)
        registry.ensure_schema(upgrade=False)
        task = registry.get_task("ns", "w/t")
        assert task is not None
        assert task.state == {"p": 0.9}
    finally:
        registry.dispose()


def test_a_newer_schema_than_this_fanout_is_refused(registry_url: str) -> None:
    upgrade(registry_url)
    engine = create_engine(parse_database_url(registry_url))
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    finally:
        engine.dispose()
    registry = Registry(registry_url)
    try:
        for upgrade_allowed in (False, True):
            with pytest.raises(StaleSchemaError, match="newer") as caught:
                registry.ensure_schema(upgrade=upgrade_allowed)
            assert caught.value.current == "from_the_future"
    finally:
        registry.dispose()
    assert current_revision(registry_url) == "from_the_future"


def test_servers_starting_together_migrate_once(registry_url: str) -> None:
    registries = [Registry(registry_url) for _ in range(4)]
    start = threading.Barrier(len(registries))

    def start_up(registry: Registry) -> None:
        start.wait()
        registry.ensure_schema(upgrade=True)

    try:
        with ThreadPoolExecutor(max_workers=len(registries)) as pool:
            list(pool.map(start_up, registries))  # re-raises the first failure
        with registries[0].task_transaction("ns", "w/t", create_config={}) as tx:
            assert tx.created
    finally:
        for registry in registries:
            registry.dispose()
    assert current_revision(registry_url) == head_revision()


def test_processes_starting_together_migrate_once(registry_url: str) -> None:
    # Separate processes, like several servers: only the database's locks order them.
    script = (
        "import sys\n"
        "from fanout.storage import Registry\n"
        "registry = Registry(sys.argv[1])\n"
        "registry.ensure_schema(upgrade=True)\n"
        "registry.dispose()\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, registry_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert current_revision(registry_url) == head_revision()
    assert schema_differences(registry_url) == []


def test_revisions_form_one_line_ending_at_head() -> None:
    shipped = revisions()
    assert shipped
    assert shipped[-1] == head_revision()
    assert len(set(shipped)) == len(shipped)
