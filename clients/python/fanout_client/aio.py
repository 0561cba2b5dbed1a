"""The asyncio client: `AsyncAdvisor`, the twin of `Advisor` on `grpc.aio`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self, TypeVar, cast

import grpc
import grpc.aio
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


class AsyncAdvisor(AdvisorBase):
    """Asyncio client of a fanout server; same arguments and behaviour as `Advisor`.

    The channel opens on the first call, inside the running event loop.
    """

    def _open(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._stub_instance: advisor_pb2_grpc.AdvisorServiceAsyncStub | None = None

    @property
    def _stub(self) -> advisor_pb2_grpc.AdvisorServiceAsyncStub:
        if self._stub_instance is None:
            options = channel_options(self._retry)
            channel = (
                grpc.aio.secure_channel(self.target, self._credentials, options=options)
                if self._credentials is not None
                else grpc.aio.insecure_channel(self.target, options=options)
            )
            self._channel = channel
            # grpc ships no type information, so the stub's aio overload cannot be picked.
            stub = cast(
                "advisor_pb2_grpc.AdvisorServiceAsyncStub",
                advisor_pb2_grpc.AdvisorServiceStub(channel),
            )
            self._stub_instance = stub
            return stub
        return self._stub_instance

    async def close(self) -> None:
        """Closes the channel; a later call opens a new one."""
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub_instance = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[..., Awaitable[Response]],
        request: Message,
        *,
        idempotent: bool,
    ) -> Response:
        retry = 0
        while True:
            try:
                return await method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
                if retry >= self._retry.retries or not self._retry.retryable(
                    code, idempotent=idempotent
                ):
                    raise from_rpc_error(error) from error
                pause = self._retry.delay(retry, self._rng)
                log.debug("%s from %s; retry %d in %.2fs", code, self.target, retry + 1, pause)
                await asyncio.sleep(pause)
                retry += 1

    async def recommend(
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
        """See `Advisor.recommend`."""
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
            response = await self._call(self._stub.Recommend, request, idempotent=False)
        except FanoutError as error:
            return self._fallback(error, ref, default_parallelism, input_size)
        return _convert.recommendation(response, ref, input_size)

    async def report(
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
        """See `Advisor.report`."""
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
        response = await self._call(self._stub.ReportExecution, request, idempotent=True)
        return _convert.report_result(response)

    @asynccontextmanager
    async def run(
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
    ) -> AsyncIterator[Recommendation]:
        """See `Advisor.run`; used as `async with advisor.run(...) as recommendation:`."""
        recommendation = await self.recommend(
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
            await self._report_quietly(recommendation, execution_id, started, succeeded=False)
            raise
        await self._report_quietly(recommendation, execution_id, started, succeeded=True)

    async def _report_quietly(
        self, recommendation: Recommendation, execution_id: str, started: float, *, succeeded: bool
    ) -> None:
        duration = max(time.perf_counter() - started, 1e-6)
        try:
            await self.report(
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

    async def predict(self, task: str | TaskRef, rows: Iterable[PredictRow | int]) -> PredictResult:
        """See `Advisor.predict`."""
        request = self._predict_request(task, rows)
        response = await self._call(self._stub.Predict, request, idempotent=True)
        return _convert.predict_result(response)

    async def get_task(self, task: str | TaskRef) -> Task:
        """See `Advisor.get_task`."""
        request = pb.GetTaskRequest(task=_convert.task_message(self._ref(task)))
        response = await self._call(self._stub.GetTask, request, idempotent=True)
        return _convert.task(response.task)

    async def list_tasks(
        self, namespace: str | None = None, *, page_size: int = 100
    ) -> AsyncIterator[Task]:
        """See `Advisor.list_tasks`; an async iterator."""
        token = ""
        while True:
            request = self._list_request(namespace, page_size, token)
            page = await self._call(self._stub.ListTasks, request, idempotent=True)
            for message in page.tasks:
                yield _convert.task(message)
            token = page.next_page_token
            if not token:
                return

    async def configure_task(
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
        """See `Advisor.configure_task`."""
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
        response = await self._call(self._stub.ConfigureTask, request, idempotent=True)
        return _convert.task(response.task)

    async def reset_task(self, task: str | TaskRef, *, forget_history: bool = False) -> Task:
        """See `Advisor.reset_task`."""
        request = pb.ResetTaskRequest(
            task=_convert.task_message(self._ref(task)), forget_history=forget_history
        )
        response = await self._call(self._stub.ResetTask, request, idempotent=False)
        return _convert.task(response.task)
