"""A registry whose database is gone raises RegistryUnavailableError and recovers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from fanout.storage import NewObservation, Registry, RegistryUnavailableError
from fanout.storage.database import PING_AFTER_IDLE_SECONDS
from tests.postgres import PostgresServer


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens once the probe is closed


def every_registry_call(registry: Registry) -> list[tuple[str, Callable[[], object]]]:
    """Each public entry point, ready to be called with valid arguments."""

    def transaction() -> None:
        with registry.task_transaction("ns", "w/t", create_config={}) as tx:
            tx.save(state={})

    return [
        ("ensure_schema", lambda: registry.ensure_schema(upgrade=False)),
        ("get_task", lambda: registry.get_task("ns", "w/t")),
        ("list_tasks", lambda: registry.list_tasks(namespace=None, page_size=5, page_token=None)),
        ("cluster_load", registry.cluster_load),
        ("get_lease", lambda: registry.get_lease("lease")),
        ("observations", lambda: registry.observations(1)),
        ("count_observations", registry.count_observations),
        ("task_transaction", transaction),
        (
            "open_lease_at_version",
            lambda: registry.open_lease_at_version(
                1,
                1,
                "lease",
                parallelism=1,
                cluster_load=0.0,
                input_size=None,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            ),
        ),
        (
            "report_at_version",
            lambda: registry.report_at_version(
                1,
                1,
                NewObservation(
                    execution_id="run",
                    workflow="w",
                    task="t",
                    parallelism=1,
                    cluster_load=0.0,
                    duration_seconds=1.0,
                ),
                state={},
                lease_id=None,
                now=datetime.now(UTC),
            ),
        ),
    ]


def test_nothing_listening_on_postgres_port() -> None:
    registry = Registry(
        f"postgresql://fanout:pw-never-shown@127.0.0.1:{closed_port()}/fanout",
        connect_timeout=2,
    )
    try:
        for name, call in every_registry_call(registry):
            with pytest.raises(RegistryUnavailableError) as caught:
                call()
            assert "pw-never-shown" not in str(caught.value), name
            assert "127.0.0.1" in str(caught.value), name
    finally:
        registry.dispose()


def test_sqlite_file_that_cannot_be_opened() -> None:
    registry = Registry("sqlite:////proc/fanout-cannot-exist/registry.sqlite3")
    try:
        for _, call in every_registry_call(registry):
            with pytest.raises(RegistryUnavailableError):
                call()
    finally:
        registry.dispose()


def report(execution_id: str) -> NewObservation:
    return NewObservation(
        execution_id=execution_id,
        workflow="w",
        task="t",
        parallelism=2,
        cluster_load=0.0,
        duration_seconds=5.0,
    )


def test_postgres_restart_is_survived(private_postgres_server: PostgresServer) -> None:
    server = private_postgres_server
    registry = Registry(server.url(server.create_database()), connect_timeout=2)
    try:
        registry.ensure_schema(upgrade=True)
        with registry.task_transaction("ns", "w/t", create_config={}) as tx:
            tx.add_observation(report("before"))
            tx.save(state={"n": 1})
        assert registry.get_task("ns", "w/t") is not None  # a pooled connection now exists

        # A restart while idle: the pooled connection is pinged before use, found dead
        # and replaced, so the first call after it already succeeds.
        server.stop("fast")
        server.start()
        time.sleep(PING_AFTER_IDLE_SECONDS)
        assert registry.get_task("ns", "w/t") is not None

        server.stop("fast")
        for _, call in every_registry_call(registry):
            with pytest.raises(RegistryUnavailableError):
                call()

        server.start()
        task = registry.get_task("ns", "w/t")
        assert task is not None
        assert task.state == {"n": 1}
        with registry.task_transaction("ns", "w/t") as tx:
            tx.add_observation(report("after"))
            tx.save(state={"n": 2})
        assert [o.execution_id for o in registry.observations(task.id)] == ["before", "after"]
    finally:
        registry.dispose()


def test_crash_inside_a_transaction_commits_nothing(
    private_postgres_server: PostgresServer,
) -> None:
    server = private_postgres_server
    registry = Registry(server.url(server.create_database()), connect_timeout=2)
    try:
        registry.ensure_schema(upgrade=True)
        with registry.task_transaction("ns", "w/t", create_config={}) as tx:
            tx.save(state={"n": 1})

        def write_through_a_crash() -> None:
            with registry.task_transaction("ns", "w/t") as tx:
                tx.add_observation(report("lost"))
                tx.open_lease(
                    "lease-lost",
                    parallelism=4,
                    cluster_load=0.0,
                    input_size=None,
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                )
                server.stop("immediate")
                tx.save(state={"n": 2})

        with pytest.raises(RegistryUnavailableError):
            write_through_a_crash()

        server.start()
        task = registry.get_task("ns", "w/t")
        assert task is not None
        assert task.state == {"n": 1}
        assert task.version == 2
        assert registry.count_observations(task.id) == 0
        assert registry.get_lease("lease-lost") is None
        assert registry.cluster_load() == 0
    finally:
        registry.dispose()
