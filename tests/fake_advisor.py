"""An in-process stand-in for the fanout server: records requests, answers as scripted.

with serve_fake() as (fake, target):
    fake.fail("Recommend", grpc.StatusCode.UNAVAILABLE, times=2)
    fake.answer("Recommend", pb.RecommendResponse(parallelism=6))
    ... use Advisor(target) ...
    assert fake.requests_for("Recommend")[0].task.workflow == "genome"
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from fanout.v1 import advisor_pb2 as pb
from fanout.v1 import advisor_pb2_grpc

METHODS = (
    "Recommend",
    "ReportExecution",
    "Predict",
    "GetTask",
    "ListTasks",
    "ConfigureTask",
    "ResetTask",
)


@dataclass(frozen=True)
class Failure:
    """A scripted error: status code, message, and optional BadRequest violations."""

    code: grpc.StatusCode
    message: str = "scripted failure"
    violations: tuple[tuple[str, str], ...] = ()


@dataclass
class Received:
    """One call as the fake saw it."""

    method: str
    request: Any
    metadata: dict[str, str] = field(default_factory=dict)


def sample_summary(**overrides: Any) -> pb.ModelSummary:
    values: dict[str, Any] = {
        "phase": pb.PHASE_OPTIMIZE,
        "t1_seconds": 292.0,
        "p": 0.959,
        "k": 1.0,
        "startup_seconds": 2.5,
        "base_input_size": 32.0,
        "window_size": 7,
        "window_capacity": 50,
        "observations_total": 9,
        "version": 12,
        "drift_detected": False,
    }
    values.update(overrides)
    return pb.ModelSummary(**values)


def sample_task(namespace: str = "default", workflow: str = "genome", task: str = "ind") -> pb.Task:
    message = pb.Task(
        task=pb.TaskRef(namespace=namespace, workflow=workflow, task=task),
        model_key=f"{workflow}/{task}",
        config=pb.TaskConfig(alpha=0.3, window=50, max_parallelism=64),
        model=sample_summary(),
    )
    message.created_at.FromDatetime(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    message.updated_at.FromDatetime(datetime(2026, 11, 23, 11, 30, tzinfo=UTC))
    return message


def sample_recommendation(parallelism: int = 8) -> pb.RecommendResponse:
    response = pb.RecommendResponse(
        recommendation_id="rec-1",
        parallelism=parallelism,
        predicted_seconds=47.0,
        predicted_sd_seconds=3.5,
        phase=pb.PHASE_OPTIMIZE,
        bounds=pb.Bounds(lower=1, upper=parallelism),
        candidates=[
            pb.Candidate(parallelism=s, mean_seconds=292 / s, sd_seconds=1.0, score=float(s))
            for s in range(1, parallelism + 1)
        ],
        cluster_load=4.0,
        gamma=1.5,
        model_version=12,
        input_size_unknown=False,
        deadline_unreachable=False,
    )
    response.lease_expires_at.FromDatetime(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    return response


def _defaults() -> dict[str, Message]:
    return {
        "Recommend": sample_recommendation(),
        "ReportExecution": pb.ReportExecutionResponse(
            status=pb.REPORT_STATUS_APPLIED, model=sample_summary()
        ),
        "Predict": pb.PredictResponse(model_version=12),
        "GetTask": pb.GetTaskResponse(task=sample_task()),
        "ListTasks": pb.ListTasksResponse(tasks=[sample_task()]),
        "ConfigureTask": pb.ConfigureTaskResponse(task=sample_task()),
        "ResetTask": pb.ResetTaskResponse(task=sample_task()),
    }


class FakeAdvisor(advisor_pb2_grpc.AdvisorServiceServicer):
    """Records every call; answers with scripted failures first, then canned responses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self._responses: dict[str, deque[Message]] = defaultdict(deque)
        self._failures: dict[str, deque[Failure]] = defaultdict(deque)
        self._defaults = _defaults()

    # -- scripting ------------------------------------------------------------------

    def answer(self, method: str, *responses: Message) -> None:
        """Queue responses for `method`; when the queue is empty the default answers."""
        assert method in METHODS, method
        with self._lock:
            self._responses[method].extend(responses)

    def set_default(self, method: str, response: Message) -> None:
        assert method in METHODS, method
        with self._lock:
            self._defaults[method] = response

    def fail(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str = "scripted failure",
        *,
        violations: tuple[tuple[str, str], ...] = (),
        times: int = 1,
    ) -> None:
        """The next `times` calls of `method` fail with `code`."""
        assert method in METHODS, method
        with self._lock:
            self._failures[method].extend([Failure(code, message, violations)] * times)

    def requests_for(self, method: str) -> list[Any]:
        with self._lock:
            return [r.request for r in self.received if r.method == method]

    def calls(self) -> list[str]:
        with self._lock:
            return [r.method for r in self.received]

    # -- serving --------------------------------------------------------------------

    def _handle(self, method: str, request: Message, context: grpc.ServicerContext) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        metadata = dict(context.invocation_metadata())
        with self._lock:
            self.received.append(Received(method, copy, metadata))
            failure = self._failures[method].popleft() if self._failures[method] else None
            queued = self._responses[method]
            response = queued.popleft() if queued else self._defaults[method]
        if failure is not None:
            _abort(context, failure)
        return response

    def Recommend(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("Recommend", request, context)

    def ReportExecution(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("ReportExecution", request, context)

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("Predict", request, context)

    def GetTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("GetTask", request, context)

    def ListTasks(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("ListTasks", request, context)

    def ConfigureTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("ConfigureTask", request, context)

    def ResetTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._handle("ResetTask", request, context)


def _abort(context: grpc.ServicerContext, failure: Failure) -> None:
    status = status_pb2.Status(code=failure.code.value[0], message=failure.message)
    if failure.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in failure.violations
                ]
            )
        )
        status.details.append(detail)
    context.abort_with_status(rpc_status.to_status(status))


def start_server(fake: FakeAdvisor, port: int = 0) -> tuple[grpc.Server, int]:
    """A started gRPC server for `fake` on loopback (`port` 0 picks a free one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    advisor_pb2_grpc.add_AdvisorServiceServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise RuntimeError(f"could not bind 127.0.0.1:{port}")
    server.start()
    return server, bound


@contextmanager
def serve_fake(fake: FakeAdvisor | None = None) -> Iterator[tuple[FakeAdvisor, str]]:
    """Runs a fake on a free loopback port; yields it and its target."""
    fake = fake or FakeAdvisor()
    server, port = start_server(fake)
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def unused_target() -> str:
    """A loopback address where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return f"127.0.0.1:{port}"
