"""Keeping the registry from growing without bound, in background threads.

Every `Recommend` stores a lease, and a lease is needed only while it counts towards the
cluster load and while its report may still arrive. The purger deletes leases that
were closed or expired longer than the retention ago, in small batches so that no
transaction holds many rows (several servers purging one registry at once only delete
the same rows once). On SQLite the checkpointer copies the write-ahead log back into
the database file, which SQLite would otherwise do inside a request's commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fanout.storage import Registry, RegistryError

log = logging.getLogger(__name__)

PURGE_INTERVAL_SECONDS = 600.0
PURGE_BATCH = 1000
CHECKPOINT_INTERVAL_SECONDS = 1.0


class Periodic:
    """Runs `run_once` every `interval_seconds` in a daemon thread until stopped; a
    failure is logged and the work tried again at the next interval."""

    name = "periodic"

    def __init__(self, *, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def run_once(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        # First run one interval after the start: a fleet restarting together does not
        # hit the registry at once, and start-up stays quick.
        failing = ""
        while not self._stopping.wait(self._interval):
            try:
                self.run_once()
            except RegistryError as exc:
                # Once per outage, not once a second for the checkpointer.
                if str(exc) != failing:
                    log.warning("%s skipped until the registry answers: %s", self.name, exc)
                failing = str(exc)
                continue
            except Exception:
                log.exception("%s failed; next try in %.0f s", self.name, self._interval)
                continue
            if failing:
                log.info("%s running again", self.name)
                failing = ""


class LeasePurger(Periodic):
    """Deletes finished leases older than `retention`, every `interval_seconds`."""

    name = "lease-purger"

    def __init__(
        self,
        registry: Registry,
        *,
        retention: timedelta,
        interval_seconds: float = PURGE_INTERVAL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(interval_seconds=interval_seconds)
        self._registry = registry
        self._retention = retention
        self._clock = clock

    def purge_once(self) -> int:
        """Deletes every lease due now; returns how many."""
        before = self._clock() - self._retention
        total = 0
        while not self._stopping.is_set():
            deleted = self._registry.purge_leases(before=before, limit=PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
        return total

    def run_once(self) -> None:
        deleted = self.purge_once()
        if deleted:
            log.info("purged %d finished leases", deleted)


class WalCheckpointer(Periodic):
    """Checkpoints a SQLite registry's write-ahead log every `interval_seconds`, so
    that requests' commits leave it to this thread (`Registry(background_checkpoints=
    True)`). A checkpoint that waited on a slow disk stalled one request in ~250 by
    7-75 ms here."""

    name = "wal-checkpointer"

    def __init__(
        self, registry: Registry, *, interval_seconds: float = CHECKPOINT_INTERVAL_SECONDS
    ) -> None:
        super().__init__(interval_seconds=interval_seconds)
        self._registry = registry

    def run_once(self) -> None:
        self._registry.checkpoint()
