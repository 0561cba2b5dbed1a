"""Typed errors for gRPC failures, with the request field a refusal names.

The server attaches a `google.rpc.Status` (with a `google.rpc.BadRequest` detail) in the
`grpc-status-details-bin` trailer. The client decodes it with wire-compatible message
types kept in a private descriptor pool, so it needs no `googleapis-common-protos` and
cannot clash with a copy of `google.rpc` already loaded in the process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

STATUS_DETAILS_KEY = "grpc-status-details-bin"
BAD_REQUEST_TYPE = "google.rpc.BadRequest"


class FanoutError(Exception):
    """A call to the advisor failed; `code` is the gRPC status (None when not a gRPC error)."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgumentError(FanoutError, ValueError):
    """The server refused a request field; `field` names it (e.g. `"config.alpha"`)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        description: str | None = None,
        code: grpc.StatusCode | None = grpc.StatusCode.INVALID_ARGUMENT,
    ) -> None:
        super().__init__(message, code=code)
        self.field = field
        self.description = description if description is not None else message


class NotFoundError(FanoutError):
    """The task or recommendation is unknown to the server."""


class PermissionDeniedError(FanoutError):
    """The token is valid but may not do this."""


class UnauthenticatedError(FanoutError):
    """No token, or a token the server does not accept."""


class UnavailableError(FanoutError):
    """The server could not be reached (after the retries)."""


class DeadlineExceededError(UnavailableError):
    """The server did not answer within the call's deadline (after the retries)."""


_BY_CODE: dict[grpc.StatusCode, type[FanoutError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def _message_types() -> tuple[type[Message], type[Message]]:
    """`Status` and `BadRequest`, field-for-field as in google/rpc (details as raw Any)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="fanout_client/rpc_status.proto", package="fanout_client.rpc", syntax="proto3"
    )
    scalar = descriptor_pb2.FieldDescriptorProto
    optional, repeated = scalar.LABEL_OPTIONAL, scalar.LABEL_REPEATED

    def add(message: descriptor_pb2.DescriptorProto, name: str, number: int, **kw: Any) -> None:
        message.field.add(name=name, number=number, label=kw.pop("label", optional), **kw)

    any_value = proto.message_type.add(name="AnyValue")
    add(any_value, "type_url", 1, type=scalar.TYPE_STRING)
    add(any_value, "value", 2, type=scalar.TYPE_BYTES)
    status = proto.message_type.add(name="Status")
    add(status, "code", 1, type=scalar.TYPE_INT32)
    add(status, "message", 2, type=scalar.TYPE_STRING)
    add(
        status,
        "details",
        3,
        type=scalar.TYPE_MESSAGE,
        type_name=".fanout_client.rpc.AnyValue",
        label=repeated,
    )
    bad_request = proto.message_type.add(name="BadRequest")
    violation = bad_request.nested_type.add(name="FieldViolation")
    add(violation, "field", 1, type=scalar.TYPE_STRING)
    add(violation, "description", 2, type=scalar.TYPE_STRING)
    add(
        bad_request,
        "field_violations",
        1,
        type=scalar.TYPE_MESSAGE,
        type_name=".fanout_client.rpc.BadRequest.FieldViolation",
        label=repeated,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("fanout_client.rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("fanout_client.rpc.BadRequest")),
    )


_STATUS, _BAD_REQUEST = _message_types()


def field_violations(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> list[tuple[str, str]]:
    """`(field, description)` pairs of the BadRequest details in a status trailer."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status: Any = _STATUS.FromString(value)
            violations: list[tuple[str, str]] = []
            for detail in status.details:
                if detail.type_url.rpartition("/")[2] != BAD_REQUEST_TYPE:
                    continue
                bad_request: Any = _BAD_REQUEST.FromString(detail.value)
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
        except DecodeError:
            # A garbled trailer must not hide the status itself.
            return []
        return violations
    return []


def from_rpc_error(error: grpc.RpcError) -> FanoutError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code: grpc.StatusCode | None = getattr(error, "code", lambda: None)()
    details: str = getattr(error, "details", lambda: "")() or ""
    message = f"{code.name if code else 'UNKNOWN'}: {details}" if details else str(code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        trailer = getattr(error, "trailing_metadata", lambda: None)()
        violations = field_violations(trailer)
        if violations:
            field, description = violations[0]
            return InvalidArgumentError(
                f"invalid {field}: {description}", field=field, description=description
            )
        return InvalidArgumentError(message, description=details)
    return _BY_CODE.get(code, FanoutError)(message, code=code) if code else FanoutError(message)


def is_unreachable(error: FanoutError) -> bool:
    """Whether the server was not reached or did not answer in time."""
    return isinstance(error, UnavailableError)


__all__ = [
    "DeadlineExceededError",
    "FanoutError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "UnavailableError",
    "field_violations",
    "from_rpc_error",
    "is_unreachable",
]
