"""The cluster load of SPEC 6 as one server sees it.

The load is the sum of `s` over open, unexpired leases of every server sharing the
registry. Summing the lease table on every `Recommend` cost a registry round trip per
request; here the sum is re-read at most every `refresh_seconds`, and this server's own
leases opened or closed since count at once. Other servers' leases therefore show up
within `refresh_seconds`; this server's own are always exact.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from fanout.storage import Registry

DEFAULT_REFRESH_SECONDS = 0.25


class ClusterLoad:
    """Open leases across the registry, refreshed lazily on read."""

    def __init__(
        self, registry: Registry, *, refresh_seconds: float = DEFAULT_REFRESH_SECONDS
    ) -> None:
        self._registry = registry
        self._refresh = timedelta(seconds=refresh_seconds)
        self._lock = threading.Lock()
        self._read_at: datetime | None = None
        self._base = 0
        # This server's leases opened since the last read: id -> (s, expires_at).
        self._local: dict[str, tuple[int, datetime]] = {}
        self._local_total = 0
        self._first_expiry: datetime | None = None

    def current(self, now: datetime) -> int:
        """The load at `now`; reads the registry when the last read is too old."""
        with self._lock:
            read_at = self._read_at
            if read_at is None or not read_at <= now < read_at + self._refresh:
                # A clock that went backwards also forces a read.
                self._base = self._registry.cluster_load(now=now)
                self._read_at = now
                self._local.clear()
                self._local_total = 0
                self._first_expiry = None
            elif self._first_expiry is not None and self._first_expiry <= now:
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
                # that read: then the load is low until the next read.
                self._base = max(0, self._base - parallelism)

    def _drop_expired(self, now: datetime) -> None:
        expired = [key for key, (_, expires) in self._local.items() if expires <= now]
        for key in expired:
            self._local_total -= self._local.pop(key)[0]
        self._first_expiry = min((e for _, e in self._local.values()), default=None)
