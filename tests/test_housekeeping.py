"""The lease purger: finished leases older than the retention go, nothing else does."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from fanout.server import housekeeping
from fanout.server.housekeeping import LeasePurger
from fanout.settings import parse_settings
from fanout.storage import Registry

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
