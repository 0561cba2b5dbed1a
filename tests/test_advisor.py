"""The advisor's two write paths: a report on the cached model (one statement) and the
locked transaction, which must store exactly the same thing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from fanout.engine import TaskConfig, TaskModel
from fanout.server.advisor import Advisor, ModelCache, RecommendParams, Report, TaskRef
from fanout.storage import Registry, TaskRecord
from tests.faults_audit import replay_mismatch

NS = "default"


def reports(count: int, seed: int = 5) -> list[Report]:
    rng = random.Random(seed)
    runs = []
    for i in range(count):
        s = rng.choice((1, 2, 4, 8))
        seconds = 100.0 * (0.2 + 0.8 / s) * (1 + 0.05 * rng.gauss(0, 1))
        runs.append(
            Report(
                execution_id=f"run-{i}",
                duration_seconds=seconds,
                input_size=None if i % 3 else 10.0 + i,
                parallelism=s,
            )
        )
    return runs


def for_task(report: Report, name: str) -> Report:
    return Report(
        execution_id=report.execution_id,
        duration_seconds=report.duration_seconds,
        input_size=report.input_size,
        parallelism=report.parallelism,
        task=TaskRef(NS, "w", name),
    )


def count_calls(obj: Any, method: str, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Results of every call of `obj.method` from now on."""
    results: list[object] = []
    original = getattr(obj, method)

    def spy(*args: Any, **kwargs: Any) -> object:
        result = original(*args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(obj, method, spy)
    return results


def test_cached_reports_store_what_locked_reports_store(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = Advisor(registry, background_refit=False)
    fast_writes = count_calls(registry, "report_at_version", monkeypatch)
    runs = reports(12)
    for run in runs:
        cached.report(for_task(run, "cached"))
        # A new advisor has nothing cached: every report takes the task's lock.
        Advisor(registry, background_refit=False).report(for_task(run, "locked"))
    # The cached advisor learned the task on its first report, then wrote on the cache.
    assert sum(write is not None for write in fast_writes) == len(runs) - 1
    fast = registry.get_task(NS, "w/cached")
    locked = registry.get_task(NS, "w/locked")
    assert fast is not None and locked is not None
    assert fast.state == locked.state and fast.version == locked.version
    assert replay_mismatch(registry, fast, configured=0) is None
    stored = [(o.execution_id, o.parallelism, o.input_size) for o in registry.observations(fast.id)]
    assert stored == [
        (o.execution_id, o.parallelism, o.input_size) for o in registry.observations(locked.id)
    ]


def test_a_report_on_a_stale_cache_takes_the_lock(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = (Advisor(registry, background_refit=False) for _ in range(2))
    runs = [for_task(run, "shared") for run in reports(6)]
    first.report(runs[0])
    second.report(runs[1])  # `first` now caches an old version
    fast_writes = count_calls(registry, "report_at_version", monkeypatch)
    assert first.report(runs[2]).applied
    assert fast_writes == [None]  # refused, nothing written, then the locked path
    for run in runs[3:]:
        first.report(run)
    record = registry.get_task(NS, "w/shared")
    assert record is not None
    assert registry.count_observations(record.id) == len(runs)
    assert replay_mismatch(registry, record, configured=0) is None


def test_a_repeated_report_on_the_cache_changes_nothing(registry: Registry) -> None:
    advisor = Advisor(registry, background_refit=False)
    run = for_task(reports(1)[0], "t")
    assert advisor.report(run).applied
    advisor.report(for_task(reports(2)[1], "t"))
    before = registry.get_task(NS, "w/t")
    outcome = advisor.report(run)
    assert not outcome.applied
    assert registry.get_task(NS, "w/t") == before
    assert before is not None and registry.count_observations(before.id) == 2


def test_a_report_of_an_own_recommendation_needs_no_lease_read(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    advisor = Advisor(registry, background_refit=False)
    ref = TaskRef(NS, "w", "t")
    advisor.report(Report(execution_id="seed", duration_seconds=50.0, task=ref, parallelism=2))
    recommendation = advisor.recommend(ref, RecommendParams(input_size=4.0))
    lease_id = recommendation.recommendation_id
    assert registry.cluster_load() == recommendation.decision.parallelism

    def no_read(_: str) -> None:
        raise AssertionError("the lease was read back")

    monkeypatch.setattr(registry, "get_lease", no_read)
    outcome = advisor.report(
        Report(execution_id="run", duration_seconds=40.0, recommendation_id=lease_id)
    )
    assert outcome.applied
    monkeypatch.undo()
    lease = registry.get_lease(lease_id)
    assert lease is not None and lease.closed_at is not None
    assert registry.cluster_load() == 0
    [_, stored] = registry.observations(lease.task_id)
    assert (stored.recommendation_id, stored.parallelism, stored.input_size) == (
        lease_id,
        recommendation.decision.parallelism,
        4.0,
    )
    # Another server, which never saw the lease, reads it from the registry.
    other = Advisor(registry, background_refit=False)
    again = other.report(
        Report(execution_id="retry", duration_seconds=41.0, recommendation_id=lease_id)
    )
    assert again.applied and registry.count_observations(lease.task_id) == 3


def test_the_model_cache_never_goes_back_a_version() -> None:
    cache = ModelCache()
    now = datetime.now(UTC)
    record = TaskRecord(
        id=7,
        namespace=NS,
        name="w/t",
        config={},
        state={},
        version=3,
        created_at=now,
        updated_at=now,
    )
    newer, older = (TaskModel.from_dicts(TaskConfig().to_dict(), None) for _ in range(2))
    cache.remember(record, newer)
    cache.advance(7, 2, older)  # a write that finished after a later one
    assert cache.lookup(NS, "w/t") == (7, 3, newer)
    cache.advance(7, 4, older)
    assert cache.lookup(NS, "w/t") == (7, 4, older)
