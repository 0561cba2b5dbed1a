"""Several server processes on one registry: serial-replay invariant, idempotency, restarts."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from fanout.engine import Observation, TaskModel
from fanout.storage import Registry
from fanout.v1 import advisor_pb2 as pb
from fanout.v1 import advisor_pb2_grpc
from tests.servers import ServerProcess, drain

T = TypeVar("T")
NS = "load-test"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


def retrying(call: Callable[[Any], T], request: Any, attempts: int = 20) -> T:
    for attempt in range(attempts):
        try:
            return call(request)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def ref(i: int) -> pb.TaskRef:
    return pb.TaskRef(namespace=NS, workflow="wf", task=f"task-{i}")


def true_seconds(task: int, s: int, rng: random.Random) -> float:
    t1 = 60.0 + 10 * task
    p = 0.7 + 0.03 * task
    return (t1 * ((1 - p) + p / s)) * (1 + 0.05 * rng.gauss(0, 1))


def replay(config: dict[str, Any], observations: list[Any]) -> TaskModel:
    """The state a single server would reach applying these reports one by one."""
    model = TaskModel.from_dicts(config, None)
    for obs in observations:
        model.observe(
            Observation(
                parallelism=obs.parallelism,
                duration_seconds=obs.duration_seconds,
                input_size=obs.input_size,
                cluster_load=obs.cluster_load,
                startup_seconds=obs.startup_seconds,
            ),
            refit=True,
        )
    return model


def settled(registry: Registry, timeout: float = 120.0) -> list[Any]:
    """Wait until every background refit has landed; returns the task records."""
    deadline = time.monotonic() + timeout
    while True:
        tasks, _ = registry.list_tasks(namespace=NS, page_size=1000, page_token=None)
        if all(t.state.get("gp_version") == t.state.get("version") for t in tasks):
            return tasks
        if time.monotonic() > deadline:
            raise TimeoutError("background refits did not settle")
        time.sleep(0.2)


@pytest.fixture
def servers(postgres_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    Registry(postgres_url).ensure_schema(upgrade=True)
    started = [ServerProcess(postgres_url, log_dir=tmp_path, name=f"s{i}") for i in range(3)]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.kill()


@pytest.mark.postgres
@pytest.mark.slow
def test_three_servers_sixteen_clients(servers: list[ServerProcess], postgres_url: str) -> None:
    tasks = 8
    rng = random.Random(11)
    channels = [grpc.insecure_channel(s.target) for s in servers]
    stubs = [advisor_pb2_grpc.AdvisorServiceStub(c) for c in channels]
    for i in range(tasks):
        # A short window keeps each of the 2,000 GP refits cheap.
        retrying(
            stubs[0].ConfigureTask,
            pb.ConfigureTaskRequest(
                task=ref(i), config=pb.TaskConfig(window=12, max_parallelism=16)
            ),
        )
    # 1,800 distinct runs; 200 of them reported twice (a retried exit hook).
    jobs: list[tuple[int, str, bool]] = [
        (rng.randrange(tasks), f"exec-{n}", n % 2 == 0) for n in range(1800)
    ]
    jobs += [jobs[rng.randrange(len(jobs))] for _ in range(200)]
    rng.shuffle(jobs)
    lock = threading.Lock()
    acknowledged: dict[str, int] = {}
    recommendations: dict[str, bool] = {}  # lease id -> its report was applied

    def handle(job: tuple[int, str, bool], local: random.Random) -> None:
        task, execution_id, ask_first = job
        stub = stubs[local.randrange(len(stubs))]
        if ask_first:
            rec = retrying(stub.Recommend, pb.RecommendRequest(task=ref(task), cluster_load=0.0))
            target: dict[str, Any] = {"recommendation_id": rec.recommendation_id}
            s = rec.parallelism
        else:
            s = local.choice([1, 2, 4, 8])
            target = {"run": pb.TaskRun(task=ref(task), parallelism=s)}
        answer = retrying(
            stub.ReportExecution,
            pb.ReportExecutionRequest(
                execution_id=execution_id,
                duration_seconds=true_seconds(task, s, local),
                outcome=pb.OUTCOME_SUCCEEDED,
                **target,
            ),
        )
        applied = answer.status == pb.REPORT_STATUS_APPLIED
        with lock:
            acknowledged[execution_id] = acknowledged.get(execution_id, 0) + applied
            if "recommendation_id" in target:
                recommendations[target["recommendation_id"]] = applied

    try:
        drain(jobs, 16, handle)
    finally:
        for channel in channels:
            channel.close()
    # Each distinct execution was applied exactly once, however often it was reported.
    assert len(acknowledged) == 1800
    assert set(acknowledged.values()) == {1}

    registry = Registry(postgres_url)
    try:
        records = settled(registry)
        assert sum(registry.count_observations(t.id) for t in records) == 1800
        for record in records:
            stored = registry.observations(record.id)
            assert len({o.execution_id for o in stored}) == len(stored)
            expected = replay(record.config, stored).state_dict()
            # Recommend moves only the re-probe counters, which replaying reports
            # cannot; the version also counted the ConfigureTask before the reports.
            for counter in ("ones_streak", "reprobe_wait"):
                expected[counter] = record.state[counter]
            assert record.state["version"] == expected["version"] + 1
            expected["version"] = expected["gp_version"] = record.state["version"]
            assert record.state == expected, record.name
        # No lease was lost: each recommendation's lease exists, and an applied report
        # closed it. A duplicate report changes nothing, so a lease whose report
        # repeated an earlier execution id stays open until it expires.
        still_open = 0
        for lease_id, applied in recommendations.items():
            lease = registry.get_lease(lease_id)
            assert lease is not None
            assert (lease.closed_at is not None) == applied
            still_open += 0 if applied else lease.parallelism
        assert registry.cluster_load() == still_open
    finally:
        registry.dispose()


@pytest.mark.slow
def test_sigkill_then_restart_loses_nothing(registry_url: str, tmp_path: Path) -> None:
    first = ServerProcess(registry_url, log_dir=tmp_path, name="first")
    first.wait_ready()
    acknowledged = []
    request = pb.RecommendRequest(task=ref(0), input_size=10.0, cluster_load=3.0)
    with grpc.insecure_channel(first.target) as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        rng = random.Random(3)
        for n in range(12):
            s = [1, 5, 3, 8][n % 4]
            stub.ReportExecution(
                pb.ReportExecutionRequest(
                    run=pb.TaskRun(task=ref(0), parallelism=s),
                    execution_id=f"r{n}",
                    duration_seconds=true_seconds(0, s, rng),
                    input_size=10.0,
                    outcome=pb.OUTCOME_SUCCEEDED,
                )
            )
            acknowledged.append(f"r{n}")
        registry = Registry(registry_url)
        settled(registry)
        registry.dispose()
        before = stub.Recommend(request)
        # Reports to another task still in flight when the process dies may or may
        # not land; task-0 is settled, so its next decision is fixed.
        in_flight = [
            stub.ReportExecution.future(
                pb.ReportExecutionRequest(
                    run=pb.TaskRun(task=ref(1), parallelism=2),
                    execution_id=f"late{n}",
                    duration_seconds=50.0,
                    outcome=pb.OUTCOME_SUCCEEDED,
                )
            )
            for n in range(5)
        ]
        first.kill()
        for future in in_flight:
            with contextlib.suppress(grpc.RpcError):
                future.result(timeout=5)
    second = ServerProcess(registry_url, log_dir=tmp_path, name="second")
    try:
        second.wait_ready()
        registry = Registry(registry_url)
        try:
            record = registry.get_task(NS, "wf/task-0")
            assert record is not None
            stored = [o.execution_id for o in registry.observations(record.id)]
            assert stored == acknowledged  # all acknowledged, once each, in order
            late = registry.get_task(NS, "wf/task-1")
            if late is not None:
                landed = [o.execution_id for o in registry.observations(late.id)]
                assert len(landed) == len(set(landed))
            with grpc.insecure_channel(second.target) as channel:
                after = advisor_pb2_grpc.AdvisorServiceStub(channel).Recommend(request)
            assert after.parallelism == before.parallelism
            assert list(after.candidates) == list(before.candidates)
        finally:
            registry.dispose()
    finally:
        second.terminate()
