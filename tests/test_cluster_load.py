"""The server's view of the cluster load (SPEC 6): own leases at once, others' on refresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fanout.server.load import ClusterLoad
from fanout.storage import Registry

NS = "default"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def store_lease(registry: Registry, lease_id: str, s: int, expires: datetime) -> None:
    with registry.task_transaction(NS, "w/other", create_config={}) as tx:
        tx.open_lease(lease_id, parallelism=s, cluster_load=0, input_size=None, expires_at=expires)


def test_own_leases_count_at_once_and_others_after_the_refresh(registry: Registry) -> None:
    load = ClusterLoad(registry, refresh_seconds=0.25)
    assert load.current(T0) == 0
    store_lease(registry, "mine", 4, T0 + timedelta(minutes=5))
    load.opened("mine", 4, T0 + timedelta(minutes=5))
    store_lease(registry, "theirs", 3, T0 + timedelta(minutes=5))  # another server's
    assert load.current(T0 + timedelta(seconds=0.1)) == 4
    assert load.current(T0 + timedelta(seconds=0.3)) == 7  # re-read: both stored


def test_closing_and_expiry_stop_counting(registry: Registry) -> None:
    load = ClusterLoad(registry, refresh_seconds=60.0)
    store_lease(registry, "theirs", 3, T0 + timedelta(minutes=5))
    assert load.current(T0) == 3
    load.opened("short", 2, T0 + timedelta(seconds=10))
    load.opened("long", 5, T0 + timedelta(minutes=5))
    assert load.current(T0 + timedelta(seconds=1)) == 10
    assert load.current(T0 + timedelta(seconds=11)) == 8  # "short" expired
    load.closed("long", 5, T0 + timedelta(minutes=5))
    load.closed("theirs", 3, T0 + timedelta(minutes=5))
    assert load.current(T0 + timedelta(seconds=12)) == 0
    # A lease that had expired before the last read was not counted in it.
    load.closed("expired-long-ago", 9, T0 - timedelta(minutes=1))
    assert load.current(T0 + timedelta(seconds=13)) == 0


def test_a_clock_that_goes_back_rereads(registry: Registry) -> None:
    load = ClusterLoad(registry, refresh_seconds=60.0)
    assert load.current(T0) == 0
    store_lease(registry, "theirs", 3, T0 + timedelta(minutes=5))
    assert load.current(T0 - timedelta(seconds=1)) == 3
