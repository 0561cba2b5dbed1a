"""The blocking client: `Advisor`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self, TypeVar

import grpc
from google.protobuf.message import Message

from fanout_client import _convert
from fanout_client._base import AdvisorBase, channel_options, log, new_execution_id
from fanout_client._proto import advisor_pb2 as pb
from fanout_client._proto import advisor_pb2_grpc
from fanout_client.errors import FanoutError, from_rpc_error
from fanout_client.models import (
    PredictResult,
    PredictRow,
    Recommendation,
    ReportResult,
    Strategy,
    Task,
    TaskConfig,
    TaskRef,
)

Response = TypeVar("Response", bound=Message)


class Advisor(AdvisorBase):
    """Blocking client of a fanout server.

    `task` arguments are `"workflow/task"` (in this advisor's `namespace`) or a `TaskRef`.
    Each attempt of a call has `timeout` seconds; UNAVAILABLE (and DEADLINE_EXCEEDED for
    idempotent calls) is retried `retries` times with exponential backoff and jitter.
    Failures raise `FanoutError` subclasses; `recommend` instead returns the default
    width (`fallback=True`) when the server stays unreachable and a default is known.
    """

    def _open(self) -> None:
        options = channel_options(self._retry)
        self._channel = (
            grpc.secure_channel(self.target, self._credentials, options=options)
            if self._credentials is not None
            else grpc.insecure_channel(self.target, options=options)
        )
        self._stub = advisor_pb2_grpc.AdvisorServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel; calls afterwards fail."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., Response],
        request: Message,
        *,
        idempotent: bool,
    ) -> Response:
        retry = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if retry >= self._retry.retries or not self._retry.retryable(
                    code, idempotent=idempotent
                ):
                    raise from_rpc_error(error) from error
                pause = self._retry.delay(retry, self._rng)
                log.debug("%s from %s; retry %d in %.2fs", code, self.target, retry + 1, pause)
                time.sleep(pause)
                retry += 1

    def recommend(
        self,
        task: str | TaskRef,
        *,
        input_size: float | None = None,
        cluster_load: float | None = None,
        min_parallelism: int | None = None,
        max_parallelism: int | None = None,
        urgency: float | None = None,
        resource_exponent: float | None = None,
        deadline_seconds: float | None = None,
        confidence: float | None = None,
        strategy: Strategy | str | None = None,
        model_key: str | None = None,
        lease_seconds: float | None = None,
        default_parallelism: int | None = None,
    ) -> Recommendation:
        """The width for the next execution of `task`; unset options take the task's
        defaults. Returns a fallback recommendation when the server is unreachable and
        `default_parallelism` (here or on the advisor) is set."""
        ref, request = self._recommend_request(
            task,
            input_size=input_size,
            cluster_load=cluster_load,
            min_parallelism=min_parallelism,
            max_parallelism=max_parallelism,
            urgency=urgency,
            resource_exponent=resource_exponent,
            deadline_seconds=deadline_seconds,
            confidence=confidence,
            strategy=strategy,
            model_key=model_key,
            lease_seconds=lease_seconds,
        )
        try:
            # Not idempotent: a repeat after a timeout would open a second lease.
            response = self._call(self._stub.Recommend, request, idempotent=False)
        except FanoutError as error:
            return self._fallback(error, ref, default_parallelism, input_size)
        return _convert.recommendation(response, ref, input_size)

    def report(
        self,
        target: Recommendation | str | TaskRef | None = None,
        *,
        duration_seconds: float,
        recommendation_id: str | None = None,
        execution_id: str | None = None,
        input_size: float | None = None,
        startup_seconds: float | None = None,
        succeeded: bool = True,
        parallelism: int | None = None,
        cluster_load: float | None = None,
    ) -> ReportResult:
        """Reports one finished execution of a `Recommendation`, of `recommendation_id`,
        or of a task run at `parallelism` that never asked. Retried with the same
        `execution_id` (a fresh uuid4 when not given), so a repeat is a duplicate."""
        request = self._report_request(
            target,
            recommendation_id=recommendation_id,
            duration_seconds=duration_seconds,
            execution_id=execution_id,
            input_size=input_size,
            startup_seconds=startup_seconds,
            succeeded=succeeded,
            parallelism=parallelism,
            cluster_load=cluster_load,
        )
        response = self._call(self._stub.ReportExecution, request, idempotent=True)
        return _convert.report_result(response)

    @contextmanager
    def run(
        self,
        task: str | TaskRef,
        *,
        input_size: float | None = None,
        cluster_load: float | None = None,
        min_parallelism: int | None = None,
        max_parallelism: int | None = None,
        urgency: float | None = None,
        resource_exponent: float | None = None,
        deadline_seconds: float | None = None,
        confidence: float | None = None,
        strategy: Strategy | str | None = None,
        model_key: str | None = None,
        default_parallelism: int | None = None,
    ) -> Iterator[Recommendation]:
        """Recommends, times the `with` block and reports it on exit (FAILED when the block
        raises an exception). A failed report is logged, never raised over the block's outcome."""
        recommendation = self.recommend(
            task,
            input_size=input_size,
            cluster_load=cluster_load,
            min_parallelism=min_parallelism,
            max_parallelism=max_parallelism,
            urgency=urgency,
            resource_exponent=resource_exponent,
            deadline_seconds=deadline_seconds,
            confidence=confidence,
            strategy=strategy,
            model_key=model_key,
            default_parallelism=default_parallelism,
        )
        execution_id = new_execution_id()
        started = time.perf_counter()
        try:
            yield recommendation
        except Exception:
            self._report_quietly(recommendation, execution_id, started, succeeded=False)
            raise
        self._report_quietly(recommendation, execution_id, started, succeeded=True)

    def _report_quietly(
        self, recommendation: Recommendation, execution_id: str, started: float, *, succeeded: bool
    ) -> None:
        duration = max(time.perf_counter() - started, 1e-6)
        try:
            self.report(
                recommendation,
                duration_seconds=duration,
                execution_id=execution_id,
                succeeded=succeeded,
            )
        except Exception as error:
            # The block's own outcome must win over a failed report.
            log.warning(
                "could not report execution %s of %s: %s", execution_id, recommendation.task, error
            )

    def predict(self, task: str | TaskRef, rows: Iterable[PredictRow | int]) -> PredictResult:
        """Predicted run time per row (a `PredictRow` or a bare width), in order."""
        request = self._predict_request(task, rows)
        return _convert.predict_result(self._call(self._stub.Predict, request, idempotent=True))

    def get_task(self, task: str | TaskRef) -> Task:
        """One task's configuration and model; `NotFoundError` when unknown."""
        request = pb.GetTaskRequest(task=_convert.task_message(self._ref(task)))
        return _convert.task(self._call(self._stub.GetTask, request, idempotent=True).task)

    def list_tasks(self, namespace: str | None = None, *, page_size: int = 100) -> Iterator[Task]:
        """Every task (of `namespace`, or of all namespaces), fetching pages as needed."""
        token = ""
        while True:
            request = self._list_request(namespace, page_size, token)
            page = self._call(self._stub.ListTasks, request, idempotent=True)
            for message in page.tasks:
                yield _convert.task(message)
            token = page.next_page_token
            if not token:
                return

    def configure_task(
        self,
        task: str | TaskRef,
        *,
        t1_seconds: float | None = None,
        base_input_size: float | None = None,
        p: float | None = None,
        startup_seconds: float | None = None,
        alpha: float | None = None,
        window: int | None = None,
        probe_parallelism: int | None = None,
        min_parallelism: int | None = None,
        max_parallelism: int | None = None,
        default_urgency: float | None = None,
        resource_exponent: float | None = None,
        default_strategy: Strategy | str | None = None,
        lease_seconds: float | None = None,
    ) -> Task:
        """Sets the given fields of a task's configuration (creating the task); the
        others keep their values."""
        config = TaskConfig(
            t1_seconds=t1_seconds,
            base_input_size=base_input_size,
            p=p,
            startup_seconds=startup_seconds,
            alpha=alpha,
            window=window,
            probe_parallelism=probe_parallelism,
            min_parallelism=min_parallelism,
            max_parallelism=max_parallelism,
            default_urgency=default_urgency,
            resource_exponent=resource_exponent,
            default_strategy=_convert.strategy_enum(default_strategy, "default_strategy"),
            lease_seconds=lease_seconds,
        )
        request = self._configure_request(task, config)
        return _convert.task(self._call(self._stub.ConfigureTask, request, idempotent=True).task)

    def reset_task(self, task: str | TaskRef, *, forget_history: bool = False) -> Task:
        """Forgets the learned model; with `forget_history`, the stored observations too."""
        request = pb.ResetTaskRequest(
            task=_convert.task_message(self._ref(task)), forget_history=forget_history
        )
        return _convert.task(self._call(self._stub.ResetTask, request, idempotent=False).task)
