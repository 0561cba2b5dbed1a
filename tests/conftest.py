"""Shared fixtures; the PostgreSQL harness lives in tests/postgres.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fanout.storage import Registry

pytest_plugins = ["tests.postgres"]


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """A migrated, empty registry on each backend (SQLite, then PostgreSQL)."""
    store = Registry(registry_url)
    store.ensure_schema(upgrade=True)
    try:
        yield store
    finally:
        store.dispose()
