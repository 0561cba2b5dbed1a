"""Background upkeep: the lease purger (finished leases older than the retention go,
nothing else does) and SQLite's WAL checkpointer (requests' writes leave the copying
back to it)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fanout.server import housekeeping
from fanout.server.housekeeping import LeasePurger, WalCheckpointer
from fanout.settings import parse_settings
from fanout.storage import Registry, RegistryError

NS = "default"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def open_leases(registry: Registry, expiries: dict[str, datetime]) -> None:
    with registry.task_transaction(NS, "w/t", create_config={}) as tx:
        for lease_id, expires in expiries.items():
            tx.open_lease(
                lease_id, parallelism=2, cluster_load=0, input_size=None, expires_at=expires
            )


def test_only_leases_finished_before_the_retention_go(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 2)  # several batches
    day = timedelta(days=1)
    open_leases(
        registry,
        {
            **{f"expired-long-ago-{i}": NOW - 9 * day for i in range(3)},
            "expired-lately": NOW - day,
            "closed-long-ago": NOW + day,
            "closed-lately": NOW + day,
            "open": NOW + day,
        },
    )
    with registry.task_transaction(NS, "w/t") as tx:
        tx.close_lease("closed-long-ago", now=NOW - 8 * day)
        tx.close_lease("closed-lately", now=NOW - day)
    purger = LeasePurger(registry, retention=7 * day, clock=lambda: NOW)
    assert purger.purge_once() == 4
    kept = [
        lease_id
        for lease_id in ("expired-lately", "closed-lately", "open", "closed-long-ago")
        if registry.get_lease(lease_id) is not None
    ]
    assert kept == ["expired-lately", "closed-lately", "open"]
    assert purger.purge_once() == 0


def test_the_purger_runs_by_itself_and_stops(registry: Registry) -> None:
    open_leases(registry, {"old": NOW - timedelta(days=30)})
    purger = LeasePurger(
        registry, retention=timedelta(days=7), interval_seconds=0.05, clock=lambda: NOW
    )
    purger.start()
    try:
        deadline = time.monotonic() + 10
        while registry.get_lease("old") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.get_lease("old") is None
    finally:
        purger.stop()


def test_lease_retention_setting() -> None:
    assert parse_settings([], {}).lease_retention_hours == 168.0
    assert parse_settings(["--lease-retention-hours", "0"], {}).lease_retention_hours == 0.0
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ValueError, match="lease_retention_hours"):
            parse_settings(["--lease-retention-hours", bad], {})


# -- the WAL checkpointer (SQLite) ----------------------------------------------------

# Enough leases that their WAL frames pass SQLite's own checkpoint threshold (1,000
# pages) several times over: each lease writes three or more pages.
LEASES_PAST_THRESHOLD = 1200


def write_leases(registry: Registry, count: int) -> None:
    """Leases written as `Recommend` writes them, one commit each."""
    with registry.task_transaction(NS, "w/t", create_config={}) as tx:
        task_id, version = tx.record.id, tx.record.version
    expires = datetime.now(UTC) + timedelta(hours=1)
    for i in range(count):
        lease = registry.open_lease_at_version(
            task_id,
            version,
            f"lease-{i}",
            parallelism=2,
            cluster_load=0.0,
            input_size=None,
            expires_at=expires,
        )
        assert lease is not None


def digest(path: Path) -> str:
    """The database file's content (the WAL beside it not included)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sqlite_registry(path: Path, *, background_checkpoints: bool) -> Registry:
    registry = Registry(f"sqlite:///{path}", background_checkpoints=background_checkpoints)
    registry.ensure_schema(upgrade=True)
    return registry


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
def test_writes_checkpoint_only_when_nobody_else_does(tmp_path: Path, background: bool) -> None:
    """The database file changes only when the WAL is copied into it: by the writes
    themselves in SQLite's default, by `checkpoint` when it runs in the background."""
    database = tmp_path / "registry.sqlite3"
    registry = sqlite_registry(database, background_checkpoints=background)
    try:
        registry.checkpoint()
        before = digest(database)
        write_leases(registry, LEASES_PAST_THRESHOLD)
        changed_by_writes = digest(database) != before
        assert changed_by_writes is not background
        registry.checkpoint()
        assert digest(database) != before
    finally:
        registry.dispose()


def test_the_checkpointer_runs_by_itself_and_stops(tmp_path: Path) -> None:
    database = tmp_path / "registry.sqlite3"
    registry = sqlite_registry(database, background_checkpoints=True)
    checkpointer = WalCheckpointer(registry, interval_seconds=0.05)
    try:
        registry.checkpoint()
        before = digest(database)
        write_leases(registry, 50)
        assert digest(database) == before
        checkpointer.start()
        deadline = time.monotonic() + 10
        while digest(database) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert digest(database) != before
    finally:
        checkpointer.stop()
        registry.dispose()
    assert not checkpointer._thread.is_alive()


def test_checkpoint_does_nothing_on_postgresql(registry: Registry) -> None:
    """Harmless on either backend; PostgreSQL checkpoints by itself."""
    write_leases(registry, 3)
    registry.checkpoint()
    assert registry.cluster_load() == 6


def test_an_outage_is_logged_once_and_the_recovery_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpointer runs every second: a registry that fails for a while gets one
    warning, not one a second, and a line when the work runs again."""
    registry = sqlite_registry(tmp_path / "registry.sqlite3", background_checkpoints=True)
    failures = iter([RegistryError("disk full")] * 5)
    ran = threading.Event()

    def flaky_checkpoint() -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        ran.set()

    registry.checkpoint = flaky_checkpoint  # type: ignore[method-assign]
    checkpointer = WalCheckpointer(registry, interval_seconds=0.01)
    with caplog.at_level(logging.INFO, logger=housekeeping.__name__):
        checkpointer.start()
        try:
            assert ran.wait(10)
        finally:
            checkpointer.stop()
            registry.dispose()
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "wal-checkpointer skipped until the registry answers: disk full"
    assert messages.count(messages[0]) == 1
    assert "wal-checkpointer running again" in messages
