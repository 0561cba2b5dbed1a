"""The cluster load of SPEC 6 as one server sees it.

The load is the sum of `s` over open, unexpired leases of every server sharing the
registry. Summing the lease table costs 1-2 ms with a few thousand leases open: too
much for every `Recommend`, and still 1-2 ms added to one of them every
`refresh_seconds` when requests did the reading. So the registry's sum (the base) is
re-read in a background thread once it is older than `refresh_seconds`, while requests
go on with the base they have. A request reads the registry itself only when the base
is older than `max_age_seconds` (traffic was sparse), or when a lease counted in it has
expired since (an expired lease never counts). This server's own leases opened or
closed since the base was read count at once, so they are always exact; other
servers' show up within `refresh_seconds` and one read under steady traffic, and
within `max_age_seconds` at worst.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from fanout.storage import Registry, RegistryError

log = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS = 0.25
DEFAULT_MAX_AGE_SECONDS = 2.0


class ClusterLoad:
    """Open leases across the registry, refreshed in the background."""

    def __init__(
        self,
        registry: Registry,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    ) -> None:
        self._registry = registry
        self._refresh = timedelta(seconds=refresh_seconds)
        self._max_age = timedelta(seconds=max(refresh_seconds, max_age_seconds))
        self._lock = threading.Lock()
        # Requests that find the base unusable read it one at a time: the first reads,
        # the ones queued behind it find the base fresh.
        self._inline = threading.Lock()
        self._read_at: datetime | None = None
        self._base = 0
        self._base_expiry: datetime | None = None
        # Reads may finish out of order (one in the background, one inline): only a
        # read started after the applied one replaces it.
        self._reads_started = 0
        self._read_applied = 0
        # This server's leases opened since the last read: id -> (s, expires_at).
        self._local: dict[str, tuple[int, datetime]] = {}
        self._local_total = 0
        self._first_expiry: datetime | None = None
        self._background: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._failing = False
        self._closed = False

    def current(self, now: datetime) -> int:
        """The load at `now`; reads the registry itself only when the base is unusable."""
        if self._must_read(now):
            with self._inline:
                if self._must_read(now):
                    self._read(now)
        with self._lock:
            if self._first_expiry is not None and self._first_expiry <= now:
                self._drop_expired(now)
            return self._base + self._local_total

    def opened(self, lease_id: str, parallelism: int, expires_at: datetime) -> None:
        """A lease this server just committed."""
        with self._lock:
            self._local[lease_id] = (parallelism, expires_at)
            self._local_total += parallelism
            if self._first_expiry is None or expires_at < self._first_expiry:
                self._first_expiry = expires_at

    def closed(self, lease_id: str, parallelism: int, expires_at: datetime) -> None:
        """A lease this server just closed (whoever opened it)."""
        with self._lock:
            mine = self._local.pop(lease_id, None)
            if mine is not None:
                self._local_total -= mine[0]
            elif self._read_at is not None and expires_at > self._read_at:
                # Counted in the last read unless another server opened it after
                # that read: then the load is low until the next read. (A read in
                # flight may count it once more, until the read after it.)
                self._base = max(0, self._base - parallelism)

    def wait_refreshed(self, timeout: float = 10.0) -> None:
        """For tests: wait for the background read in flight, if any."""
        with self._lock:
            pending = self._pending
        if pending is not None:
            pending.result(timeout=timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            background = self._background
        if background is not None:
            background.shutdown(wait=True, cancel_futures=True)

    def _must_read(self, now: datetime) -> bool:
        """Whether the base cannot serve `now`; starts a background read when it can
        but is due for one."""
        with self._lock:
            read_at = self._read_at
            if (
                read_at is None
                or now < read_at  # a clock that went backwards
                or now >= read_at + self._max_age
                or (self._base_expiry is not None and now >= self._base_expiry)
            ):
                return True
            if now >= read_at + self._refresh and self._pending is None and not self._closed:
                if self._background is None:
                    self._background = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="cluster-load"
                    )
                self._pending = self._background.submit(self._read_in_background, now)
            return False

    def _read(self, now: datetime) -> None:
        with self._lock:
            self._reads_started += 1
            ticket = self._reads_started
            # Committed before the read starts, so the read counts them.
            counted = list(self._local)
        reading = self._registry.read_load(now=now)
        with self._lock:
            if ticket < self._read_applied:
                return
            self._read_applied = ticket
            self._read_at = now
            self._base = reading.total
            self._base_expiry = reading.first_expiry
            for lease_id in counted:
                entry = self._local.pop(lease_id, None)
                if entry is not None:
                    self._local_total -= entry[0]
            self._first_expiry = min((e for _, e in self._local.values()), default=None)

    def _read_in_background(self, now: datetime) -> None:
        try:
            self._read(now)
            self._failing = False
        except RegistryError as exc:
            # The base stays; past `max_age_seconds` a request reads the registry
            # itself and answers UNAVAILABLE if it is still down.
            if not self._failing:
                log.warning("background read of the cluster load failed: %s", exc)
            self._failing = True
        except Exception:
            log.exception("background read of the cluster load failed")
        finally:
            with self._lock:
                self._pending = None

    def _drop_expired(self, now: datetime) -> None:
        expired = [key for key, (_, expires) in self._local.items() if expires <= now]
        for key in expired:
            self._local_total -= self._local.pop(key)[0]
        self._first_expiry = min((e for _, e in self._local.values()), default=None)
