"""Every RPC end to end over real gRPC on loopback, on SQLite and on PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from fanout.server.app import RunningServer, make_server
from fanout.settings import Settings
from fanout.v1 import advisor_pb2 as pb
from fanout.v1 import advisor_pb2_grpc

NS = "team-a"


@pytest.fixture
def running(registry_url: str) -> Iterator[RunningServer]:
    server = make_server(
        Settings(listen="127.0.0.1:0", database_url=registry_url, auto_migrate=True)
    )
    try:
        yield server
    finally:
        server.stop(grace=1.0)


@pytest.fixture
def stub(running: RunningServer) -> Iterator[advisor_pb2_grpc.AdvisorServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield advisor_pb2_grpc.AdvisorServiceStub(channel)


def ref(task: str = "individuals", **extra: Any) -> pb.TaskRef:
    return pb.TaskRef(namespace=NS, workflow="genome", task=task, **extra)


def report_run(stub: Any, s: int, seconds: float, execution_id: str, **extra: Any) -> Any:
    return stub.ReportExecution(
        pb.ReportExecutionRequest(
            run=pb.TaskRun(task=ref(), parallelism=s),
            execution_id=execution_id,
            duration_seconds=seconds,
            outcome=pb.OUTCOME_SUCCEEDED,
            **extra,
        )
    )


def snapshot(running: RunningServer) -> list[tuple[Any, ...]]:
    """What the registry holds (once background refits are done), to prove a bad
    request changed nothing."""
    assert running.advisor.refits is not None
    assert running.advisor.refits.wait_idle()
    registry = running.advisor.registry
    tasks, _ = registry.list_tasks(namespace=None, page_size=1000, page_token=None)
    return [
        (t.namespace, t.name, t.version, t.state, registry.count_observations(t.id)) for t in tasks
    ]


def bad_request_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            info = error_details_pb2.BadRequest()
            detail.Unpack(info)
            return str(info.field_violations[0].field)
    raise AssertionError("no BadRequest detail")


def test_learning_cycle_over_grpc(stub: Any) -> None:
    first = stub.Recommend(pb.RecommendRequest(task=ref()))
    assert (first.phase, first.parallelism) == (pb.PHASE_BASELINE, 1)
    assert first.recommendation_id
    done = stub.ReportExecution(
        pb.ReportExecutionRequest(
            recommendation_id=first.recommendation_id,
            execution_id="wf-1/node-1",
            duration_seconds=292.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        )
    )
    assert done.status == pb.REPORT_STATUS_APPLIED
    assert done.model.t1_seconds == pytest.approx(292.0)
    probe = stub.Recommend(pb.RecommendRequest(task=ref(), max_parallelism=8))
    assert (probe.phase, probe.parallelism) == (pb.PHASE_PROBE, 5)
    report_run(stub, 4, 82.0, "wf-2/node-1")
    decision = stub.Recommend(pb.RecommendRequest(task=ref(), max_parallelism=8))
    assert decision.phase == pb.PHASE_OPTIMIZE
    assert decision.parallelism == 8
    assert [c.parallelism for c in decision.candidates] == list(range(1, 9))
    assert decision.bounds.lower == 1 and decision.bounds.upper == 8
    assert decision.predicted_seconds == pytest.approx(decision.candidates[-1].mean_seconds)
    assert decision.input_size_unknown


def test_duplicate_report_changes_nothing(stub: Any, running: RunningServer) -> None:
    report_run(stub, 1, 100.0, "exec-1")
    before = snapshot(running)
    again = report_run(stub, 1, 999.0, "exec-1")
    assert again.status == pb.REPORT_STATUS_DUPLICATE
    assert again.model.t1_seconds == pytest.approx(100.0)
    assert snapshot(running) == before


def test_failed_run_closes_lease_but_teaches_nothing(stub: Any, running: RunningServer) -> None:
    rec = stub.Recommend(pb.RecommendRequest(task=ref(), cluster_load=0.0))
    assert running.advisor.registry.cluster_load() == 1
    failed = stub.ReportExecution(
        pb.ReportExecutionRequest(
            recommendation_id=rec.recommendation_id,
            execution_id="exec-f",
            duration_seconds=5.0,
            outcome=pb.OUTCOME_FAILED,
        )
    )
    assert failed.status == pb.REPORT_STATUS_APPLIED
    assert not failed.model.HasField("t1_seconds")
    assert running.advisor.registry.cluster_load() == 0


def test_cluster_load_counts_open_leases(stub: Any) -> None:
    stub.ConfigureTask(
        pb.ConfigureTaskRequest(task=ref("a"), config=pb.TaskConfig(t1_seconds=50.0))
    )
    stub.Recommend(pb.RecommendRequest(task=ref("b")))  # baseline lease: s = 1
    probe = stub.Recommend(pb.RecommendRequest(task=ref("a")))  # probe lease: s = 5
    third = stub.Recommend(pb.RecommendRequest(task=ref("c")))
    assert third.cluster_load == 1 + probe.parallelism


def test_predict_get_list_configure_reset(stub: Any) -> None:
    configured = stub.ConfigureTask(
        pb.ConfigureTaskRequest(
            task=ref(), config=pb.TaskConfig(t1_seconds=101.0, p=0.61, max_parallelism=16)
        )
    ).task
    assert configured.config.max_parallelism == 16
    assert configured.model.phase == pb.PHASE_OPTIMIZE
    predicted = stub.Predict(
        pb.PredictRequest(task=ref(), rows=[pb.PredictRow(parallelism=s) for s in (2, 3, 4)])
    )
    # SPEC 7, frequency stage: T_A(2, 3, 4) = 70, 60, 55.
    assert [round(p.mean_seconds) for p in predicted.predictions] == [70, 60, 55]
    got = stub.GetTask(pb.GetTaskRequest(task=ref())).task
    assert got.model_key == "genome/individuals"
    for i in range(3):
        stub.ConfigureTask(
            pb.ConfigureTaskRequest(task=ref(f"t{i}"), config=pb.TaskConfig(window=20))
        )
    page = stub.ListTasks(pb.ListTasksRequest(namespace=NS, page_size=2))
    assert len(page.tasks) == 2 and page.next_page_token
    rest = stub.ListTasks(
        pb.ListTasksRequest(namespace=NS, page_size=2, page_token=page.next_page_token)
    )
    names = [t.model_key for t in (*page.tasks, *rest.tasks)]
    assert sorted(names) == sorted(["genome/individuals", "genome/t0", "genome/t1", "genome/t2"])
    report_run(stub, 4, 60.0, "x-1")
    reset = stub.ResetTask(pb.ResetTaskRequest(task=ref(), forget_history=False)).task
    assert reset.model.window_size == 0
    assert reset.model.t1_seconds == pytest.approx(101.0)  # the configured seed applies again


def test_shared_model_key(stub: Any) -> None:
    for population in ("EUR", "AFR"):
        stub.ReportExecution(
            pb.ReportExecutionRequest(
                run=pb.TaskRun(
                    task=ref(f"frequency_{population}", model_key="frequency-light"), parallelism=1
                ),
                execution_id=f"run-{population}",
                duration_seconds=55.0,
                outcome=pb.OUTCOME_SUCCEEDED,
            )
        )
    task = stub.GetTask(
        pb.GetTaskRequest(task=ref("frequency_EUR", model_key="frequency-light"))
    ).task
    assert task.model.observations_total == 2


def test_refit_pending_until_the_background_refit_lands(stub: Any, running: RunningServer) -> None:
    assert report_run(stub, 1, 100.0, "r-1").model.refit_pending
    assert running.advisor.refits is not None and running.advisor.refits.wait_idle()
    assert not stub.GetTask(pb.GetTaskRequest(task=ref())).task.model.refit_pending


def test_health_and_reflection(running: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="fanout.v1.AdvisorService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


BAD_REQUESTS: list[tuple[str, str, Any, str, grpc.StatusCode]] = [
    (
        "Recommend",
        "empty namespace",
        pb.RecommendRequest(task=pb.TaskRef(workflow="w", task="t")),
        "task.namespace",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "long name",
        pb.RecommendRequest(task=pb.TaskRef(namespace=NS, workflow="w" * 300, task="t")),
        "task.workflow",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "control character",
        pb.RecommendRequest(task=pb.TaskRef(namespace=NS, workflow="w", task="t\x1bx")),
        "task.task",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "NaN size",
        pb.RecommendRequest(task=ref(), input_size=math.nan),
        "input_size",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "negative load",
        pb.RecommendRequest(task=ref(), cluster_load=-1.0),
        "cluster_load",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "min > max",
        pb.RecommendRequest(task=ref(), min_parallelism=5, max_parallelism=2),
        "min_parallelism",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "zero urgency",
        pb.RecommendRequest(task=ref(), urgency=0.0),
        "urgency",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "infinite deadline",
        pb.RecommendRequest(task=ref(), deadline_seconds=math.inf),
        "deadline_seconds",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "Recommend",
        "unspecified strategy",
        pb.RecommendRequest(task=ref(), strategy=pb.STRATEGY_UNSPECIFIED),
        "strategy",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ReportExecution",
        "zero duration",
        pb.ReportExecutionRequest(
            run=pb.TaskRun(task=ref(), parallelism=2),
            execution_id="e",
            duration_seconds=0.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        ),
        "duration_seconds",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ReportExecution",
        "unspecified outcome",
        pb.ReportExecutionRequest(
            run=pb.TaskRun(task=ref(), parallelism=2), execution_id="e", duration_seconds=3.0
        ),
        "outcome",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ReportExecution",
        "no execution id",
        pb.ReportExecutionRequest(
            run=pb.TaskRun(task=ref(), parallelism=2),
            duration_seconds=3.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        ),
        "execution_id",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ReportExecution",
        "zero parallelism",
        pb.ReportExecutionRequest(
            run=pb.TaskRun(task=ref(), parallelism=0),
            execution_id="e",
            duration_seconds=3.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        ),
        "run.parallelism",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ReportExecution",
        "unknown recommendation",
        pb.ReportExecutionRequest(
            recommendation_id="nope",
            execution_id="e",
            duration_seconds=3.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        ),
        "recommendation_id",
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "ReportExecution",
        "no target",
        pb.ReportExecutionRequest(
            execution_id="e", duration_seconds=3.0, outcome=pb.OUTCOME_SUCCEEDED
        ),
        "target",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("Predict", "no rows", pb.PredictRequest(task=ref()), "rows", grpc.StatusCode.INVALID_ARGUMENT),
    (
        "Predict",
        "unknown task",
        pb.PredictRequest(task=ref("ghost"), rows=[pb.PredictRow(parallelism=2)]),
        "task",
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "GetTask",
        "unknown task",
        pb.GetTaskRequest(task=ref("ghost")),
        "task",
        grpc.StatusCode.NOT_FOUND,
    ),
    (
        "ListTasks",
        "bad token",
        pb.ListTasksRequest(page_token="garbage"),
        "page_token",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ConfigureTask",
        "alpha zero",
        pb.ConfigureTaskRequest(task=ref(), config=pb.TaskConfig(alpha=0.0)),
        "config.alpha",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ConfigureTask",
        "p above one",
        pb.ConfigureTaskRequest(task=ref(), config=pb.TaskConfig(p=1.5)),
        "config.p",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ConfigureTask",
        "nothing set",
        pb.ConfigureTaskRequest(task=ref()),
        "config",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ResetTask",
        "unknown task",
        pb.ResetTaskRequest(task=ref("ghost")),
        "task",
        grpc.StatusCode.NOT_FOUND,
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "field", "code"),
    [pytest.param(m, r, f, c, id=f"{m}-{why}") for m, why, r, f, c in BAD_REQUESTS],
)
def test_bad_input_is_refused_and_changes_nothing(
    stub: Any,
    running: RunningServer,
    method: str,
    request_: Any,
    field: str,
    code: grpc.StatusCode,
) -> None:
    report_run(stub, 1, 100.0, "seed-run")
    before = snapshot(running)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_)
    assert info.value.code() == code
    assert bad_request_field(info.value) == field
    assert snapshot(running) == before


def test_report_by_recommendation_records_the_asking_task(
    stub: Any, running: RunningServer
) -> None:
    shared = ref("frequency_AMR", model_key="frequency-light")
    rec = stub.Recommend(pb.RecommendRequest(task=shared))
    stub.ReportExecution(
        pb.ReportExecutionRequest(
            recommendation_id=rec.recommendation_id,
            execution_id="wf-9/frequency_AMR",
            duration_seconds=55.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        )
    )
    registry = running.advisor.registry
    record = registry.get_task(NS, "frequency-light")
    assert record is not None
    (stored,) = registry.observations(record.id)
    assert (stored.workflow, stored.task) == ("genome", "frequency_AMR")
