"""Shared fixtures; the PostgreSQL harness lives in tests/postgres.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_limits

from fanout.storage import Registry

pytest_plugins = ["tests.postgres"]


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread() -> Iterator[None]:
    """GP fits with OpenBLAS' default threads ran 20-40x slower on a busy 2-core machine."""
    with threadpool_limits(1):
        yield


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """A migrated, empty registry on each backend (SQLite, then PostgreSQL)."""
    store = Registry(registry_url)
    store.ensure_schema(upgrade=True)
    try:
        yield store
    finally:
        store.dispose()
