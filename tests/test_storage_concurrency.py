"""Concurrent writers: each task's transactions must apply one after the other."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from fanout.storage import (
    DuplicateExecutionError,
    NewObservation,
    Registry,
    RegistryUnavailableError,
)

THREADS = 8
INCREMENTS_PER_THREAD = 50


def run_together(worker: Callable[[int], object], threads: int = THREADS) -> list[object]:
    """Runs `worker(i)` on `threads` threads released at the same moment."""
    start = threading.Barrier(threads)

    def released(index: int) -> object:
        start.wait()
        return worker(index)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(released, range(threads)))


def test_read_modify_write_loses_no_increment(registry: Registry) -> None:
    with registry.task_transaction("ns", "w/counter", create_config={}) as tx:
        tx.save(state={"counter": 0})

    def increment_many(_: int) -> int:
        for _ in range(INCREMENTS_PER_THREAD):
            with registry.task_transaction("ns", "w/counter") as tx:
                counter = int(tx.record.state["counter"])
                tx.save(state={"counter": counter + 1})
        return INCREMENTS_PER_THREAD

    done = run_together(increment_many)

    expected = THREADS * INCREMENTS_PER_THREAD
    assert sum(done) == expected  # type: ignore[arg-type]
    task = registry.get_task("ns", "w/counter")
    assert task is not None
    assert task.state == {"counter": expected}
    assert task.version == 2 + expected  # creation, the reset to 0, then one per increment


def test_concurrent_creation_makes_one_task(registry: Registry) -> None:
    def create(index: int) -> bool:
        with registry.task_transaction("ns", "w/new", create_config={"by": index}) as tx:
            return tx.created

    created = run_together(create)

    assert created.count(True) == 1
    assert registry.count_tasks() == 1
    task = registry.get_task("ns", "w/new")
    assert task is not None
    assert task.config == {"by": created.index(True)}


def test_concurrent_reports_of_one_execution_store_it_once(registry: Registry) -> None:
    with registry.task_transaction("ns", "w/t", create_config={}) as tx:
        task_id = tx.record.id

    def report(index: int) -> str:
        with registry.task_transaction("ns", "w/t") as tx:
            if tx.find_observation("exec-1") is not None:
                return "seen"
            try:
                tx.add_observation(
                    NewObservation(
                        execution_id="exec-1",
                        workflow="w",
                        task="t",
                        parallelism=index + 1,
                        cluster_load=0.0,
                        duration_seconds=10.0,
                    )
                )
            except DuplicateExecutionError:
                return "duplicate"
            tx.save(state={"reports": 1})
            return "stored"

    outcomes = run_together(report)

    assert outcomes.count("stored") == 1
    # Under the task lock the later ones see the first report before inserting.
    assert outcomes.count("seen") == THREADS - 1
    assert registry.count_observations(task_id) == 1
    task = registry.get_task("ns", "w/t")
    assert task is not None
    assert task.version == 2


def test_waiting_too_long_for_a_task_lock_is_reported_as_busy(registry: Registry) -> None:
    with registry.task_transaction("ns", "w/t", create_config={}) as tx:
        tx.save(state={"n": 0})
    impatient = Registry(registry.url, lock_timeout=0.3)
    holding = threading.Event()
    release = threading.Event()

    def hold_the_lock() -> None:
        with registry.task_transaction("ns", "w/t") as tx:
            tx.save(state={"n": 1})
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(timeout=30)
        with (
            pytest.raises(RegistryUnavailableError, match="busy"),
            impatient.task_transaction("ns", "w/t") as tx,
        ):
            tx.save(state={"n": 99})
        # Readers are not held up by the writer, and see the last commit.
        task = impatient.get_task("ns", "w/t")
        assert task is not None
        assert task.state == {"n": 0}
    finally:
        release.set()
        holder.join(timeout=30)
        impatient.dispose()
    task = registry.get_task("ns", "w/t")
    assert task is not None
    assert task.state == {"n": 1}
