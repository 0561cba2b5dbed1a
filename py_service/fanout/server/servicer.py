"""The gRPC servicer: validates and translates, the advisor decides.

Every field is checked before anything is read or written, so a bad request changes
nothing; each failure names the request field in a `BadRequest` detail.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from fanout import _core
from fanout.engine import Decision, Phase
from fanout.engine.config import MAX_LOAD, MAX_SECONDS, MAX_SIZE, MIN_SECONDS, MIN_SIZE
from fanout.server.advisor import Advisor, RecommendParams, Report, TaskRef, TaskView
from fanout.server.auth import check_namespace, listing_scope
from fanout.server.errors import FieldError, translate_errors
from fanout.server.metrics import Metrics
from fanout.v1 import advisor_pb2 as pb
from fanout.v1 import advisor_pb2_grpc

log = logging.getLogger(__name__)

NAME_MAX = 253  # a Kubernetes object name's limit, so any namespace or workflow fits
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")

PHASES = {
    Phase.BASELINE: pb.PHASE_BASELINE,
    Phase.PROBE: pb.PHASE_PROBE,
    Phase.OPTIMIZE: pb.PHASE_OPTIMIZE,
}
STRATEGIES = {pb.STRATEGY_COST: "cost", pb.STRATEGY_EFFICIENCY: "efficiency"}
STRATEGY_VALUES = {v: k for k, v in STRATEGIES.items()}


# -- field checks -----------------------------------------------------------------


def _name(field: str, value: str) -> str:
    if not value:
        raise FieldError(field, "must not be empty")
    if len(value) > NAME_MAX:
        raise FieldError(field, f"must be at most {NAME_MAX} characters, got {len(value)}")
    if _CONTROL_CHARACTER.search(value):
        raise FieldError(field, "must not contain control characters")
    return value


def _number(
    field: str,
    value: float,
    *,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float:
    if not math.isfinite(value):
        raise FieldError(field, f"must be a finite number, got {value}")
    if positive and value <= 0:
        raise FieldError(field, f"must be > 0, got {value}")
    if low is not None and value < low:
        raise FieldError(field, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise FieldError(field, f"must be <= {high}, got {value}")
    return value


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _task_ref(message: pb.TaskRef, field: str = "task") -> TaskRef:
    if not message.ByteSize():
        raise FieldError(field, "is required")
    namespace = _name(f"{field}.namespace", message.namespace)
    check_namespace(namespace, field=f"{field}.namespace")
    workflow = _name(f"{field}.workflow", message.workflow)
    task = _name(f"{field}.task", message.task)
    model_key = None
    if message.HasField("model_key"):
        model_key = _name(f"{field}.model_key", message.model_key)
    return TaskRef(namespace, workflow, task, model_key)


def _strategy(message: Any, name: str, field: str) -> str | None:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    if value not in STRATEGIES:
        raise FieldError(field, "must be STRATEGY_COST or STRATEGY_EFFICIENCY when set")
    return STRATEGIES[value]


def _limits(message: Any) -> tuple[int | None, int | None]:
    low = _optional(message, "min_parallelism")
    high = _optional(message, "max_parallelism")
    if low is not None and low < 1:
        raise FieldError("min_parallelism", f"must be >= 1, got {low}")
    if high is not None and high < 1:
        raise FieldError("max_parallelism", f"must be >= 1, got {high}")
    if low is not None and high is not None and low > high:
        raise FieldError("min_parallelism", f"must be <= max_parallelism ({high}), got {low}")
    return low, high


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


# -- translation out ------------------------------------------------------------------


def _summary(summary: dict[str, Any]) -> pb.ModelSummary:
    message = pb.ModelSummary(
        phase=PHASES[summary["phase"]],
        k=summary["k"],
        startup_seconds=summary["startup_seconds"],
        window_size=summary["window_size"],
        window_capacity=summary["window_capacity"],
        observations_total=summary["observations_total"],
        version=summary["version"],
        drift_detected=summary["drift_detected"],
        refit_pending=summary["refit_pending"],
    )
    for name in ("t1_seconds", "p", "base_input_size"):
        if summary[name] is not None:
            setattr(message, name, summary[name])
    return message


def _task(view: TaskView) -> pb.Task:
    record, config = view.record, view.config
    workflow, _, task = record.name.partition("/")
    message = pb.Task(
        task=pb.TaskRef(
            namespace=record.namespace, workflow=workflow, task=task, model_key=record.name
        ),
        model_key=record.name,
        model=_summary(view.summary),
        created_at=_timestamp(record.created_at),
        updated_at=_timestamp(record.updated_at),
    )
    cfg = message.config
    cfg.alpha = config.alpha
    cfg.window = config.window
    cfg.probe_parallelism = config.probe_parallelism
    cfg.min_parallelism = config.min_parallelism
    cfg.max_parallelism = config.max_parallelism
    cfg.default_urgency = config.urgency
    cfg.resource_exponent = config.resource_exponent
    cfg.default_strategy = STRATEGY_VALUES[config.strategy]
    cfg.lease_seconds = config.lease_seconds
    cfg.startup_seconds = config.startup_seconds
    if config.t1_seconds is not None:
        cfg.t1_seconds = config.t1_seconds
    if config.base_input_size is not None:
        cfg.base_input_size = config.base_input_size
    if config.p is not None:
        cfg.p = config.p
    return message


# Field numbers for `_core.encode_candidates`, read from the descriptors so that the
# bytes follow the proto; tests check them against protobuf's own serialization.
CANDIDATES_FIELD = pb.RecommendResponse.DESCRIPTOR.fields_by_name["candidates"].number
_candidate_field = pb.Candidate.DESCRIPTOR.fields_by_name
CANDIDATE_FIELDS = (
    _candidate_field["parallelism"].number,
    _candidate_field["mean_seconds"].number,
    _candidate_field["sd_seconds"].number,
    _candidate_field["score"].number,
)


def _add_candidates(response: pb.RecommendResponse, decision: Decision) -> None:
    # Wire bytes from the core, parsed by protobuf's C parser: a seventh of the time
    # of building the 64 row messages from Python, on every Recommend.
    response.MergeFromString(
        _core.encode_candidates(
            decision.candidate_s,
            decision.candidate_mean,
            decision.candidate_sd,
            decision.candidate_score,
            field=CANDIDATES_FIELD,
            row_fields=CANDIDATE_FIELDS,
        )
    )


# -- the servicer ---------------------------------------------------------------------


class AdvisorServicer(advisor_pb2_grpc.AdvisorServiceServicer):
    """`fanout.v1.AdvisorService` over an `Advisor`."""

    def _registry_error(self, kind: str) -> None:
        self._metrics.registry_errors.labels(kind).inc()

    def __init__(self, advisor: Advisor, metrics: Metrics, *, max_predict_rows: int) -> None:
        self._advisor = advisor
        self._metrics = metrics
        self._max_predict_rows = max_predict_rows

    @contextmanager
    def _rpc(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        started = time.perf_counter()
        code = "OK"
        try:
            with translate_errors(context, on_registry_error=self._registry_error):
                yield
        except Exception:
            status = context.code()
            if status is None or status == grpc.StatusCode.OK:
                # Not an abort of ours: a bug. INTERNAL says so; UNKNOWN would not.
                code = "INTERNAL"
                log.exception("%s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")
            code = status.name
            raise
        finally:
            self._metrics.rpc_duration.labels(method, code).observe(time.perf_counter() - started)

    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        with self._rpc("Recommend", context):
            ref = _task_ref(request.task)
            low, high = _limits(request)
            params = RecommendParams(
                input_size=_checked(request, "input_size", low=MIN_SIZE, high=MAX_SIZE),
                cluster_load=_checked(request, "cluster_load", low=0.0, high=MAX_LOAD),
                min_parallelism=low,
                max_parallelism=high,
                urgency=_checked(request, "urgency", positive=True, high=10.0),
                resource_exponent=_checked(request, "resource_exponent", low=0.0, high=10.0),
                deadline_seconds=_checked(
                    request, "deadline_seconds", positive=True, high=MAX_SECONDS
                ),
                confidence=_checked(request, "confidence", positive=True, high=0.999999),
                strategy=_strategy(request, "strategy", "strategy"),
                lease_seconds=_checked(request, "lease_seconds", low=1.0, high=7 * 86400.0),
            )
            result = self._advisor.recommend(ref, params)
            decision = result.decision
            self._metrics.decisions.labels(decision.phase.value).inc()
            response = pb.RecommendResponse(
                recommendation_id=result.recommendation_id,
                parallelism=decision.parallelism,
                predicted_seconds=decision.mean_seconds,
                predicted_sd_seconds=decision.sd_seconds,
                phase=PHASES[decision.phase],
                bounds=pb.Bounds(lower=decision.bounds[0], upper=decision.bounds[1]),
                cluster_load=decision.cluster_load,
                gamma=decision.gamma,
                model_version=decision.model_version,
                input_size_unknown=decision.input_size_unknown,
                deadline_unreachable=decision.deadline_unreachable,
                lease_expires_at=_timestamp(result.lease_expires_at),
            )
            _add_candidates(response, decision)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def ReportExecution(
        self, request: pb.ReportExecutionRequest, context: grpc.ServicerContext
    ) -> pb.ReportExecutionResponse:
        with self._rpc("ReportExecution", context):
            target = request.WhichOneof("target")
            execution_id = _name("execution_id", request.execution_id)
            duration = _number(
                "duration_seconds", request.duration_seconds, low=MIN_SECONDS, high=MAX_SECONDS
            )
            if request.outcome not in (pb.OUTCOME_SUCCEEDED, pb.OUTCOME_FAILED):
                raise FieldError("outcome", "must be OUTCOME_SUCCEEDED or OUTCOME_FAILED")
            common: dict[str, Any] = {
                "execution_id": execution_id,
                "duration_seconds": duration,
                "succeeded": request.outcome == pb.OUTCOME_SUCCEEDED,
                "input_size": _checked(request, "input_size", low=MIN_SIZE, high=MAX_SIZE),
                "startup_seconds": _checked(request, "startup_seconds", low=0.0, high=MAX_SECONDS),
            }
            if target == "recommendation_id":
                report = Report(
                    recommendation_id=_name("recommendation_id", request.recommendation_id),
                    **common,
                )
            elif target == "run":
                run = request.run
                if run.parallelism < 1:
                    raise FieldError("run.parallelism", f"must be >= 1, got {run.parallelism}")
                report = Report(
                    task=_task_ref(run.task, "run.task"),
                    parallelism=run.parallelism,
                    cluster_load=_checked(
                        run, "cluster_load", low=0.0, high=MAX_LOAD, field="run.cluster_load"
                    ),
                    **common,
                )
            else:
                raise FieldError("target", "set recommendation_id or run")
            outcome = self._advisor.report(report)
            result = "applied" if outcome.applied else "duplicate"
            self._metrics.reports.labels(result).inc()
            return pb.ReportExecutionResponse(
                status=pb.REPORT_STATUS_APPLIED if outcome.applied else pb.REPORT_STATUS_DUPLICATE,
                model=_summary(outcome.summary),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        with self._rpc("Predict", context):
            ref = _task_ref(request.task)
            if not request.rows:
                raise FieldError("rows", "must hold at least one row")
            if len(request.rows) > self._max_predict_rows:
                raise FieldError(
                    "rows", f"at most {self._max_predict_rows} rows, got {len(request.rows)}"
                )
            rows = []
            for i, row in enumerate(request.rows):
                if row.parallelism < 1:
                    raise FieldError(
                        f"rows[{i}].parallelism", f"must be >= 1, got {row.parallelism}"
                    )
                rows.append(
                    (
                        row.parallelism,
                        _checked(
                            row,
                            "input_size",
                            low=MIN_SIZE,
                            high=MAX_SIZE,
                            field=f"rows[{i}].input_size",
                        ),
                        _checked(
                            row,
                            "cluster_load",
                            low=0.0,
                            high=MAX_LOAD,
                            field=f"rows[{i}].cluster_load",
                        ),
                    )
                )
            predictions, version = self._advisor.predict(ref, rows)
            return pb.PredictResponse(
                predictions=[pb.Prediction(mean_seconds=m, sd_seconds=s) for m, s in predictions],
                model_version=version,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:
        with self._rpc("GetTask", context):
            view = self._advisor.get_task(_task_ref(request.task))
            return pb.GetTaskResponse(task=_task(view))
        raise AssertionError("unreachable")  # pragma: no cover

    def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.ServicerContext
    ) -> pb.ListTasksResponse:
        with self._rpc("ListTasks", context):
            namespace = None
            if request.HasField("namespace"):
                namespace = _name("namespace", request.namespace)
            scope = listing_scope(namespace)
            if namespace is None and scope is not None:
                # The registry pages over one namespace or all; a token for several
                # must name the one it lists.
                if len(scope) != 1:
                    raise FieldError("namespace", "is required with a token for several namespaces")
                (namespace,) = scope
            size = request.page_size or DEFAULT_PAGE_SIZE
            if size < 0 or size > MAX_PAGE_SIZE:
                raise FieldError("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {size}")
            if len(request.page_token) > 1024:
                raise FieldError("page_token", "is not a token this server issued")
            views, token = self._advisor.list_tasks(namespace, size, request.page_token or None)
            return pb.ListTasksResponse(
                tasks=[_task(v) for v in views], next_page_token=token or ""
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def ConfigureTask(
        self, request: pb.ConfigureTaskRequest, context: grpc.ServicerContext
    ) -> pb.ConfigureTaskResponse:
        with self._rpc("ConfigureTask", context):
            ref = _task_ref(request.task)
            cfg = request.config
            changes: dict[str, Any] = {}
            renames = {"default_urgency": "urgency"}
            for name in (
                "t1_seconds",
                "base_input_size",
                "p",
                "startup_seconds",
                "alpha",
                "window",
                "probe_parallelism",
                "min_parallelism",
                "max_parallelism",
                "default_urgency",
                "resource_exponent",
                "lease_seconds",
            ):
                if cfg.HasField(name):
                    changes[renames.get(name, name)] = getattr(cfg, name)
            strategy = _strategy(cfg, "default_strategy", "config.default_strategy")
            if strategy is not None:
                changes["strategy"] = strategy
            if not changes:
                raise FieldError("config", "set at least one field")
            with translate_errors(context, field_prefix="config."):
                view = self._advisor.configure_task(ref, changes)
            return pb.ConfigureTaskResponse(task=_task(view))
        raise AssertionError("unreachable")  # pragma: no cover

    def ResetTask(
        self, request: pb.ResetTaskRequest, context: grpc.ServicerContext
    ) -> pb.ResetTaskResponse:
        with self._rpc("ResetTask", context):
            view = self._advisor.reset_task(
                _task_ref(request.task), forget_history=request.forget_history
            )
            return pb.ResetTaskResponse(task=_task(view))
        raise AssertionError("unreachable")  # pragma: no cover


def _checked(
    message: Any,
    name: str,
    *,
    field: str | None = None,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    value = _optional(message, name)
    if value is None:
        return None
    return _number(field or name, float(value), positive=positive, low=low, high=high)


__all__ = ["AdvisorServicer"]
