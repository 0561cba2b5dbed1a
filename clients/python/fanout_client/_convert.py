"""Between the SDK's dataclasses and the wire messages; shared by both advisors."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from fanout_client._proto import advisor_pb2 as pb
from fanout_client.errors import InvalidArgumentError
from fanout_client.models import (
    Bounds,
    Candidate,
    ModelSummary,
    Phase,
    Prediction,
    PredictResult,
    PredictRow,
    Recommendation,
    ReportResult,
    Strategy,
    Task,
    TaskConfig,
    TaskRef,
)

PHASES = {
    pb.PHASE_BASELINE: Phase.BASELINE,
    pb.PHASE_PROBE: Phase.PROBE,
    pb.PHASE_OPTIMIZE: Phase.OPTIMIZE,
}
STRATEGIES = {Strategy.COST: pb.STRATEGY_COST, Strategy.EFFICIENCY: pb.STRATEGY_EFFICIENCY}
STRATEGIES_BACK = {wire: strategy for strategy, wire in STRATEGIES.items()}

TaskLike = str | TaskRef


def task_ref(task: TaskLike, namespace: str, model_key: str | None = None) -> TaskRef:
    """A `TaskRef` from `"workflow/task"` (in `namespace`) or a `TaskRef`."""
    if isinstance(task, TaskRef):
        if model_key is not None and model_key != task.model_key:
            return TaskRef(task.namespace, task.workflow, task.task, model_key)
        return task
    if not isinstance(task, str):
        raise InvalidArgumentError(
            f"task must be 'WORKFLOW/TASK' or a TaskRef, got {type(task).__name__}",
            field="task",
            code=None,
        )
    try:
        return TaskRef.parse(task, namespace=namespace, model_key=model_key)
    except ValueError as error:
        raise InvalidArgumentError(str(error), field="task", code=None) from error


def strategy_enum(value: Strategy | str | None, field: str) -> Strategy | None:
    """`Strategy` for `"cost"`/`"efficiency"` (any case) or a `Strategy`."""
    if value is None:
        return None
    try:
        return Strategy(str(value).lower())
    except ValueError as error:
        raise InvalidArgumentError(
            f"{field} must be 'cost' or 'efficiency', got {value!r}", field=field, code=None
        ) from error


def strategy(value: Strategy | str, field: str) -> pb.Strategy.ValueType:
    """The wire strategy for `"cost"`/`"efficiency"` (any case) or a `Strategy`."""
    chosen = strategy_enum(value, field)
    assert chosen is not None
    return STRATEGIES[chosen]


def finite(value: float | None, field: str) -> float | None:
    """`value` as float, refusing NaN and infinities (caught here rather than by the server)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(
            f"{field} must be a number, got {value!r}", field=field, code=None
        ) from error
    if not math.isfinite(number):
        raise InvalidArgumentError(
            f"{field} must be a finite number, got {value!r}", field=field, code=None
        )
    return number


def whole(value: int | None, field: str) -> int | None:
    """`value` as int, refusing bools and non-integral numbers."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(
            f"{field} must be an integer, got {value!r}", field=field, code=None
        )
    return value


def task_message(ref: TaskRef) -> pb.TaskRef:
    message = pb.TaskRef(namespace=ref.namespace, workflow=ref.workflow, task=ref.task)
    if ref.model_key is not None:
        message.model_key = ref.model_key
    return message


def _set_optional(message: Any, **values: object) -> None:
    """Set only the given (non-None) fields, so unset ones keep "not given" on the wire."""
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def recommend_request(
    ref: TaskRef,
    *,
    input_size: float | None,
    cluster_load: float | None,
    min_parallelism: int | None,
    max_parallelism: int | None,
    urgency: float | None,
    resource_exponent: float | None,
    deadline_seconds: float | None,
    confidence: float | None,
    strategy_value: Strategy | str | None,
    lease_seconds: float | None,
) -> pb.RecommendRequest:
    request = pb.RecommendRequest(task=task_message(ref))
    _set_optional(
        request,
        input_size=finite(input_size, "input_size"),
        cluster_load=finite(cluster_load, "cluster_load"),
        min_parallelism=whole(min_parallelism, "min_parallelism"),
        max_parallelism=whole(max_parallelism, "max_parallelism"),
        urgency=finite(urgency, "urgency"),
        resource_exponent=finite(resource_exponent, "resource_exponent"),
        deadline_seconds=finite(deadline_seconds, "deadline_seconds"),
        confidence=finite(confidence, "confidence"),
        lease_seconds=finite(lease_seconds, "lease_seconds"),
    )
    if strategy_value is not None:
        request.strategy = strategy(strategy_value, "strategy")
    return request


def _datetime(stamp: Any, present: bool) -> datetime | None:
    if not present:
        return None
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def recommendation(
    response: pb.RecommendResponse, ref: TaskRef, input_size: float | None
) -> Recommendation:
    return Recommendation(
        id=response.recommendation_id,
        task=ref,
        parallelism=response.parallelism,
        predicted_seconds=response.predicted_seconds,
        sd_seconds=response.predicted_sd_seconds,
        phase=PHASES.get(response.phase, Phase.UNSPECIFIED),
        bounds=Bounds(response.bounds.lower, response.bounds.upper),
        candidates=tuple(
            Candidate(c.parallelism, c.mean_seconds, c.sd_seconds, c.score)
            for c in response.candidates
        ),
        cluster_load=response.cluster_load,
        gamma=response.gamma,
        model_version=response.model_version,
        input_size=input_size,
        input_size_unknown=response.input_size_unknown,
        deadline_unreachable=response.deadline_unreachable,
        lease_expires_at=_datetime(
            response.lease_expires_at, response.HasField("lease_expires_at")
        ),
    )


def fallback_recommendation(
    ref: TaskRef, parallelism: int, input_size: float | None
) -> Recommendation:
    """The default width as a recommendation the server never saw."""
    return Recommendation(
        id=None,
        task=ref,
        parallelism=parallelism,
        predicted_seconds=None,
        sd_seconds=None,
        phase=Phase.UNSPECIFIED,
        bounds=None,
        candidates=(),
        cluster_load=None,
        gamma=None,
        model_version=None,
        input_size=input_size,
        input_size_unknown=input_size is None,
        deadline_unreachable=False,
        lease_expires_at=None,
        fallback=True,
    )


def report_request(
    *,
    recommendation_id: str | None,
    ref: TaskRef | None,
    parallelism: int | None,
    cluster_load: float | None,
    execution_id: str,
    duration_seconds: float,
    input_size: float | None,
    startup_seconds: float | None,
    succeeded: bool,
) -> pb.ReportExecutionRequest:
    duration = finite(duration_seconds, "duration_seconds")
    if duration is None or duration <= 0:
        raise InvalidArgumentError(
            f"duration_seconds must be > 0, got {duration_seconds!r}",
            field="duration_seconds",
            code=None,
        )
    if not execution_id:
        raise InvalidArgumentError(
            "execution_id must not be empty", field="execution_id", code=None
        )
    request = pb.ReportExecutionRequest(
        execution_id=execution_id,
        duration_seconds=duration,
        outcome=pb.OUTCOME_SUCCEEDED if succeeded else pb.OUTCOME_FAILED,
    )
    _set_optional(
        request,
        input_size=finite(input_size, "input_size"),
        startup_seconds=finite(startup_seconds, "startup_seconds"),
    )
    if recommendation_id:
        request.recommendation_id = recommendation_id
        return request
    if ref is None or parallelism is None:
        raise InvalidArgumentError(
            "parallelism is required when reporting against a task (no recommendation id)",
            field="parallelism",
            code=None,
        )
    run = pb.TaskRun(task=task_message(ref), parallelism=parallelism)
    _set_optional(run, cluster_load=finite(cluster_load, "cluster_load"))
    request.run.CopyFrom(run)
    return request


def model_summary(message: pb.ModelSummary) -> ModelSummary:
    return ModelSummary(
        phase=PHASES.get(message.phase, Phase.UNSPECIFIED),
        t1_seconds=message.t1_seconds if message.HasField("t1_seconds") else None,
        p=message.p if message.HasField("p") else None,
        k=message.k,
        startup_seconds=message.startup_seconds,
        base_input_size=(message.base_input_size if message.HasField("base_input_size") else None),
        window_size=message.window_size,
        window_capacity=message.window_capacity,
        observations_total=message.observations_total,
        version=message.version,
        drift_detected=message.drift_detected,
        refit_pending=message.refit_pending,
    )


def report_result(response: pb.ReportExecutionResponse) -> ReportResult:
    return ReportResult(
        applied=response.status == pb.REPORT_STATUS_APPLIED,
        duplicate=response.status == pb.REPORT_STATUS_DUPLICATE,
        model=model_summary(response.model),
    )


def predict_request(ref: TaskRef, rows: Iterable[PredictRow | int]) -> pb.PredictRequest:
    request = pb.PredictRequest(task=task_message(ref))
    for i, row in enumerate(rows):
        point = PredictRow(row) if isinstance(row, int) and not isinstance(row, bool) else row
        if not isinstance(point, PredictRow):
            raise InvalidArgumentError(
                f"rows[{i}] must be a PredictRow or an int width, got {row!r}",
                field=f"rows[{i}]",
                code=None,
            )
        message = request.rows.add(parallelism=whole(point.parallelism, f"rows[{i}].parallelism"))
        _set_optional(
            message,
            input_size=finite(point.input_size, f"rows[{i}].input_size"),
            cluster_load=finite(point.cluster_load, f"rows[{i}].cluster_load"),
        )
    return request


def predict_result(response: pb.PredictResponse) -> PredictResult:
    return PredictResult(
        predictions=tuple(Prediction(p.mean_seconds, p.sd_seconds) for p in response.predictions),
        model_version=response.model_version,
    )


_CONFIG_NUMBERS = (
    "t1_seconds",
    "base_input_size",
    "p",
    "startup_seconds",
    "alpha",
    "default_urgency",
    "resource_exponent",
    "lease_seconds",
)
_CONFIG_INTEGERS = ("window", "probe_parallelism", "min_parallelism", "max_parallelism")


def config_message(config: TaskConfig) -> pb.TaskConfig:
    """Only the fields set in `config`; the server changes exactly those."""
    message = pb.TaskConfig()
    for name in _CONFIG_NUMBERS:
        _set_optional(message, **{name: finite(getattr(config, name), f"config.{name}")})
    for name in _CONFIG_INTEGERS:
        _set_optional(message, **{name: whole(getattr(config, name), f"config.{name}")})
    if config.default_strategy is not None:
        message.default_strategy = strategy(config.default_strategy, "config.default_strategy")
    return message


def _task_config(config: pb.TaskConfig) -> TaskConfig:
    message: Any = config  # field names come from a tuple, not literals
    values: dict[str, Any] = {
        name: getattr(message, name)
        for name in (*_CONFIG_NUMBERS, *_CONFIG_INTEGERS)
        if message.HasField(name)
    }
    if message.HasField("default_strategy"):
        values["default_strategy"] = STRATEGIES_BACK.get(message.default_strategy)
    return TaskConfig(**values)


def task(message: pb.Task) -> Task:
    ref = message.task
    return Task(
        ref=TaskRef(
            ref.namespace,
            ref.workflow,
            ref.task,
            ref.model_key if ref.HasField("model_key") else None,
        ),
        model_key=message.model_key,
        config=_task_config(message.config),
        model=model_summary(message.model),
        created_at=_datetime(message.created_at, message.HasField("created_at")),
        updated_at=_datetime(message.updated_at, message.HasField("updated_at")),
    )
