"""Errors raised by the registry; the server maps each to one gRPC status code."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class RegistryUnavailableError(RegistryError):
    """The database cannot be reached or is too busy right now; retrying later may work."""


class TransactionConflictError(RegistryError):
    """PostgreSQL aborted the transaction (serialization failure or deadlock).

    Nothing was committed; the caller may run the whole operation again.
    """


class StaleSchemaError(RegistryError):
    """The database schema is not the one this version of fanout needs."""

    def __init__(self, message: str, *, current: str | None, head: str | None) -> None:
        super().__init__(message)
        self.current = current
        self.head = head


class TaskNotFoundError(RegistryError, LookupError):
    """No task with that (namespace, name)."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"task {name!r} not found in namespace {namespace!r}")
        self.namespace = namespace
        self.name = name


class DuplicateExecutionError(RegistryError):
    """The task already holds an observation with this execution id."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution_id {execution_id!r} was already reported for this task")
        self.execution_id = execution_id


class InvalidFieldError(RegistryError, ValueError):
    """A value handed to the registry is malformed; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidPageToken(InvalidFieldError):  # noqa: N818 - the name is part of the agreed API
    """A page token that this registry did not issue (or issued for another query)."""

    def __init__(self, problem: str) -> None:
        super().__init__("page_token", problem)
