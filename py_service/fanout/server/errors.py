"""Domain errors to gRPC status codes, with a `google.rpc.BadRequest` naming the field."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from fanout.engine import ConfigError, StateError
from fanout.server.advisor import NotFoundError
from fanout.server.auth import PermissionDeniedError
from fanout.storage import (
    InvalidFieldError,
    RegistryUnavailableError,
    StaleSchemaError,
    TaskNotFoundError,
    TransactionConflictError,
)

log = logging.getLogger(__name__)


class FieldError(ValueError):
    """A request field is invalid; `field` is its path in the request (e.g. `task.namespace`)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def abort_with(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    field: str | None = None,
    description: str | None = None,
) -> NoReturn:
    status = status_pb2.Status(code=code.value[0], message=message)
    if field is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=field, description=description or message
                    )
                ]
            )
        )
        status.details.append(detail)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


@contextmanager
def translate_errors(
    context: grpc.ServicerContext,
    *,
    field_prefix: str = "",
    on_registry_error: Callable[[str], Any] | None = None,
) -> Iterator[None]:
    """Turn what the domain raises into the status a caller can act on."""
    try:
        yield
    except PermissionDeniedError as exc:
        abort_with(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
    except FieldError as exc:
        abort_with(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            str(exc),
            field=exc.field,
            description=exc.description,
        )
    except (ConfigError, InvalidFieldError) as exc:
        field = field_prefix + exc.field
        problem = exc.description if isinstance(exc, ConfigError) else exc.problem
        abort_with(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: {problem}",
            field=field,
            description=problem,
        )
    except NotFoundError as exc:
        abort_with(
            context,
            grpc.StatusCode.NOT_FOUND,
            str(exc),
            field=exc.field,
            description=exc.description,
        )
    except TaskNotFoundError as exc:
        abort_with(context, grpc.StatusCode.NOT_FOUND, str(exc), field="task", description=str(exc))
    except StateError as exc:
        # A corrupt row is that task's problem alone: say so, serve every other task.
        log.error("stored model state refused: %s", exc)
        abort_with(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            f"stored model state of this task is unusable ({exc}); ResetTask repairs it",
        )
    except StaleSchemaError as exc:
        if on_registry_error:
            on_registry_error("stale_schema")
        abort_with(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except TransactionConflictError as exc:
        if on_registry_error:
            on_registry_error("conflict")
        abort_with(context, grpc.StatusCode.ABORTED, f"registry conflict, retry: {exc}")
    except RegistryUnavailableError as exc:
        if on_registry_error:
            on_registry_error("unavailable")
        abort_with(context, grpc.StatusCode.UNAVAILABLE, f"registry unavailable: {exc}")


__all__ = ["FieldError", "abort_with", "translate_errors"]
