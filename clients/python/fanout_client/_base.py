"""What the blocking and the asyncio advisors share: settings, requests, retry timing."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from fanout_client import _convert
from fanout_client._proto import advisor_pb2 as pb
from fanout_client.errors import FanoutError, InvalidArgumentError, UnavailableError
from fanout_client.models import (
    PredictRow,
    Recommendation,
    Strategy,
    TaskConfig,
    TaskRef,
)

log = logging.getLogger("fanout_client")

DEFAULT_TARGET = "127.0.0.1:50051"
USER_AGENT = "fanout-client/0.1.0"


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff with jitter between attempts of one call."""

    retries: int = 3
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    multiplier: float = 2.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0-based): `b * m^retry`, capped,
        then scaled by a uniform factor in [0.5, 1] so clients that failed together do
        not return together."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * self.multiplier**retry)
        return ceiling * (0.5 + 0.5 * rng.random())

    def retryable(self, code: grpc.StatusCode | None, *, idempotent: bool) -> bool:
        """UNAVAILABLE means the call never ran; a timed-out call may have, so only an
        idempotent one is repeated."""
        if code == grpc.StatusCode.UNAVAILABLE:
            return True
        return idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED


def _read(path: str | Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidArgumentError(
            f"{option}: cannot read {path}: {error.strerror}", field=option, code=None
        ) from error


def channel_credentials(
    *,
    tls: bool,
    root_certificates_file: str | Path | None,
    certificate_file: str | Path | None,
    private_key_file: str | Path | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when asked for (any file implies TLS); `None` for plaintext."""
    if (certificate_file is None) != (private_key_file is None):
        missing = "private_key_file" if private_key_file is None else "certificate_file"
        raise InvalidArgumentError(
            f"{missing} is required with a client certificate (mutual TLS)",
            field=missing,
            code=None,
        )
    if not tls and root_certificates_file is None and certificate_file is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(root_certificates_file, "root_certificates_file"),
        private_key=_read(private_key_file, "private_key_file"),
        certificate_chain=_read(certificate_file, "certificate_file"),
    )


def channel_options(retry: RetrySettings) -> list[tuple[str, str | int]]:
    # grpc's own reconnect backoff starts at 1 s and grows to 120 s; kept below ours,
    # a restarted server is reached on the next retry instead of failing fast.
    reconnect_ms = max(50, int(retry.backoff_seconds * 500))
    return [
        ("grpc.primary_user_agent", USER_AGENT),
        ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
        ("grpc.min_reconnect_backoff_ms", reconnect_ms),
        ("grpc.max_reconnect_backoff_ms", max(reconnect_ms, int(retry.max_backoff_seconds * 500))),
    ]


class AdvisorBase:
    """Settings and request building; subclasses add the transport."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        namespace: str = "default",
        timeout: float = 5.0,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 5.0,
        tls: bool = False,
        root_certificates_file: str | Path | None = None,
        certificate_file: str | Path | None = None,
        private_key_file: str | Path | None = None,
        token: str | None = None,
        default_parallelism: int | None = None,
        fallback: bool = True,
    ) -> None:
        if not target:
            raise InvalidArgumentError("target must not be empty", field="target", code=None)
        if not namespace:
            raise InvalidArgumentError("namespace must not be empty", field="namespace", code=None)
        if not timeout > 0:
            raise InvalidArgumentError(
                f"timeout must be > 0 seconds, got {timeout}", field="timeout", code=None
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidArgumentError(
                f"retries must be an integer >= 0, got {retries!r}", field="retries", code=None
            )
        if not 0 <= backoff_seconds <= max_backoff_seconds:
            raise InvalidArgumentError(
                "backoff_seconds must be within [0, max_backoff_seconds], "
                f"got {backoff_seconds} and {max_backoff_seconds}",
                field="backoff_seconds",
                code=None,
            )
        self.target = target
        self.namespace = namespace
        self.timeout = float(timeout)
        self.default_parallelism = _check_width(default_parallelism, "default_parallelism")
        self.fallback = fallback
        self._retry = RetrySettings(retries, backoff_seconds, max_backoff_seconds)
        self._rng = random.Random()
        self._credentials = channel_credentials(
            tls=tls,
            root_certificates_file=root_certificates_file,
            certificate_file=certificate_file,
            private_key_file=private_key_file,
        )
        token = token.strip() if token else None
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._open()

    def _open(self) -> None:
        """Opens the transport (subclasses)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, namespace={self.namespace!r})"

    # -- request building (no I/O) -----------------------------------------------------

    def _ref(self, task: _convert.TaskLike, model_key: str | None = None) -> TaskRef:
        return _convert.task_ref(task, self.namespace, model_key)

    def _recommend_request(
        self,
        task: _convert.TaskLike,
        *,
        input_size: float | None,
        cluster_load: float | None,
        min_parallelism: int | None,
        max_parallelism: int | None,
        urgency: float | None,
        resource_exponent: float | None,
        deadline_seconds: float | None,
        confidence: float | None,
        strategy: Strategy | str | None,
        model_key: str | None,
        lease_seconds: float | None,
    ) -> tuple[TaskRef, pb.RecommendRequest]:
        ref = self._ref(task, model_key)
        request = _convert.recommend_request(
            ref,
            input_size=input_size,
            cluster_load=cluster_load,
            min_parallelism=min_parallelism,
            max_parallelism=max_parallelism,
            urgency=urgency,
            resource_exponent=resource_exponent,
            deadline_seconds=deadline_seconds,
            confidence=confidence,
            strategy_value=strategy,
            lease_seconds=lease_seconds,
        )
        return ref, request

    def _fallback(
        self,
        error: FanoutError,
        ref: TaskRef,
        default_parallelism: int | None,
        input_size: float | None,
    ) -> Recommendation:
        """The default width when the server is unreachable; re-raises otherwise."""
        width = _check_width(default_parallelism, "default_parallelism")
        width = width if width is not None else self.default_parallelism
        if not self.fallback or width is None or not isinstance(error, UnavailableError):
            raise error
        log.warning(
            "fanout at %s unreachable (%s); using the default parallelism %d for %s",
            self.target,
            error.message,
            width,
            ref,
        )
        return _convert.fallback_recommendation(ref, width, input_size)

    def _report_request(
        self,
        target: Recommendation | _convert.TaskLike | None,
        *,
        recommendation_id: str | None,
        duration_seconds: float,
        execution_id: str | None,
        input_size: float | None,
        startup_seconds: float | None,
        succeeded: bool,
        parallelism: int | None,
        cluster_load: float | None,
    ) -> pb.ReportExecutionRequest:
        if (target is None) == (recommendation_id is None):
            raise InvalidArgumentError(
                "give either a recommendation or task, or recommendation_id (exactly one)",
                field="recommendation_id",
                code=None,
            )
        ref: TaskRef | None = None
        if isinstance(target, Recommendation):
            if target.id:
                recommendation_id = target.id
            else:
                # A fallback width the server never saw: report it as a plain run.
                ref = target.task
                parallelism = target.parallelism if parallelism is None else parallelism
                input_size = target.input_size if input_size is None else input_size
        elif target is not None:
            ref = self._ref(target)
        elif not recommendation_id:
            raise InvalidArgumentError(
                "recommendation_id must not be empty", field="recommendation_id", code=None
            )
        return _convert.report_request(
            recommendation_id=recommendation_id,
            ref=ref,
            parallelism=_check_width(parallelism, "parallelism"),
            cluster_load=cluster_load,
            execution_id=execution_id or new_execution_id(),
            duration_seconds=duration_seconds,
            input_size=input_size,
            startup_seconds=startup_seconds,
            succeeded=succeeded,
        )

    def _predict_request(
        self, task: _convert.TaskLike, rows: Iterable[PredictRow | int]
    ) -> pb.PredictRequest:
        request = _convert.predict_request(self._ref(task), rows)
        if not request.rows:
            raise InvalidArgumentError("rows must hold at least one row", field="rows", code=None)
        return request

    def _list_request(
        self, namespace: str | None, page_size: int, token: str
    ) -> pb.ListTasksRequest:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
            raise InvalidArgumentError(
                f"page_size must be an integer >= 0, got {page_size!r}",
                field="page_size",
                code=None,
            )
        request = pb.ListTasksRequest(page_size=page_size, page_token=token)
        if namespace is not None:
            request.namespace = namespace
        return request

    def _configure_request(
        self, task: _convert.TaskLike, config: TaskConfig
    ) -> pb.ConfigureTaskRequest:
        message = _convert.config_message(config)
        if not message.ListFields():
            raise InvalidArgumentError(
                "set at least one configuration field", field="config", code=None
            )
        return pb.ConfigureTaskRequest(task=_convert.task_message(self._ref(task)), config=message)


def new_execution_id() -> str:
    """A fresh idempotency key for one execution."""
    return str(uuid.uuid4())


def _check_width(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(
            f"{field} must be an integer >= 1, got {value!r}", field=field, code=None
        )
    return value
