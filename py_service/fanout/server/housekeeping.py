"""Keeping the registry from growing without bound.

Every `Recommend` stores a lease, and a lease is needed only while it counts towards the
cluster load and while its report may still arrive. The purger deletes leases that
were closed or expired longer than the retention ago, in small batches so that no
transaction holds many rows, from a background thread of each server (several servers
purging one registry at once only delete the same rows once).
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


class LeasePurger:
    """Deletes finished leases older than `retention`, every `interval_seconds`."""

    def __init__(
        self,
        registry: Registry,
        *,
        retention: timedelta,
        interval_seconds: float = PURGE_INTERVAL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._registry = registry
        self._retention = retention
        self._interval = interval_seconds
        self._clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-purger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

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

    def _run(self) -> None:
        # First purge one interval after the start: a fleet restarting together does
        # not hit the registry at once, and start-up stays quick.
        while not self._stopping.wait(self._interval):
            try:
                deleted = self.purge_once()
            except RegistryError as exc:
                log.warning("lease purge skipped, next try in %.0f s: %s", self._interval, exc)
                continue
            except Exception:
                log.exception("lease purge failed; next try in %.0f s", self._interval)
                continue
            if deleted:
                log.info("purged %d finished leases", deleted)
