"""The server's view of the cluster load (SPEC 6): own leases at once, others' on refresh."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from fanout.server.load import ClusterLoad
from fanout.storage import LoadReading, Registry, RegistryUnavailableError

NS = "default"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def store_lease(registry: Registry, lease_id: str, s: int, expires: datetime) -> None:
    with registry.task_transaction(NS, "w/other", create_config={}) as tx:
        tx.open_lease(lease_id, parallelism=s, cluster_load=0, input_size=None, expires_at=expires)


def test_own_leases_count_at_once_and_others_after_a_background_read(
    registry: Registry,
) -> None:
    load = ClusterLoad(registry, refresh_seconds=0.25, max_age_seconds=60.0)
    assert load.current(T0) == 0
    store_lease(registry, "mine", 4, T0 + timedelta(minutes=5))
    load.opened("mine", 4, T0 + timedelta(minutes=5))
    store_lease(registry, "theirs", 3, T0 + timedelta(minutes=5))  # another server's
    assert load.current(T0 + timedelta(seconds=0.1)) == 4
    # Due for a read: this request starts one in the background (and answers with the
    # base it has, unless the read is done first).
    load.current(T0 + timedelta(seconds=0.3))
    load.wait_refreshed()
    # The read counted "mine" too, which is no longer counted twice.
    assert load.current(T0 + timedelta(seconds=0.31)) == 7
    load.close()


def test_a_base_past_its_max_age_is_read_by_the_request(registry: Registry) -> None:
    load = ClusterLoad(registry, refresh_seconds=0.25, max_age_seconds=1.0)
    assert load.current(T0) == 0
    store_lease(registry, "theirs", 3, T0 + timedelta(minutes=5))
    assert load.current(T0 + timedelta(seconds=1.5)) == 3
    load.close()


def test_a_lease_of_the_base_that_expires_forces_a_read(registry: Registry) -> None:
    """Another server's lease stops counting at its expiry, not at the next refresh."""
    load = ClusterLoad(registry, refresh_seconds=60.0, max_age_seconds=600.0)
    store_lease(registry, "theirs", 3, T0 + timedelta(seconds=10))
    store_lease(registry, "long", 2, T0 + timedelta(minutes=5))
    assert load.current(T0) == 5
    assert load.current(T0 + timedelta(seconds=9)) == 5
    assert load.current(T0 + timedelta(seconds=10)) == 2


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


class FakeRegistry:
    """`read_load` answers from a list; `(event, total)` answers once `event` is set."""

    def __init__(self, answers: list[int | tuple[threading.Event, int] | Exception]) -> None:
        self.answers = answers
        self.reads = 0
        self.waiting = threading.Event()

    def read_load(self, *, now: datetime) -> LoadReading:
        self.reads += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, tuple):
            event, answer = answer
            self.waiting.set()
            event.wait(10.0)
        return LoadReading(answer, None)


def test_a_failed_background_read_keeps_the_base_until_the_max_age(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = RegistryUnavailableError("registry down")
    fake = FakeRegistry([3, outage, outage])
    load = ClusterLoad(cast(Registry, fake), refresh_seconds=0.25, max_age_seconds=1.0)
    assert load.current(T0) == 3
    with caplog.at_level(logging.WARNING, logger="fanout.server.load"):
        assert load.current(T0 + timedelta(seconds=0.5)) == 3
        load.wait_refreshed()
    assert "background read of the cluster load failed" in caplog.text
    # Past the max age the request reads itself, and the outage reaches its caller.
    with pytest.raises(RegistryUnavailableError):
        load.current(T0 + timedelta(seconds=1.5))
    assert fake.reads == 3
    load.close()


def test_a_read_that_finishes_after_a_newer_one_is_dropped() -> None:
    slow = threading.Event()
    fake = FakeRegistry([1, (slow, 5), 7])
    load = ClusterLoad(cast(Registry, fake), refresh_seconds=0.25, max_age_seconds=1.0)
    assert load.current(T0) == 1
    assert load.current(T0 + timedelta(seconds=0.5)) == 1  # starts the slow read
    assert fake.waiting.wait(10.0)
    assert load.current(T0 + timedelta(seconds=1.5)) == 7  # reads itself, past the age
    slow.set()
    load.wait_refreshed()
    assert load.current(T0 + timedelta(seconds=1.6)) == 7
    load.close()
