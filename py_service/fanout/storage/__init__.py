"""The registry: where tasks, their learned state, observations and leases are kept."""

from fanout.storage.database import default_database_url, mask_url, migrate_command
from fanout.storage.errors import (
    DuplicateExecutionError,
    InvalidFieldError,
    InvalidPageToken,
    RegistryError,
    RegistryUnavailableError,
    StaleSchemaError,
    TaskNotFoundError,
    TransactionConflictError,
)
from fanout.storage.records import (
    LeaseRecord,
    LoadReading,
    NewObservation,
    ObservationRecord,
    Outcome,
    TaskRecord,
)
from fanout.storage.registry import Registry, TaskTransaction

__all__ = [
    "DuplicateExecutionError",
    "InvalidFieldError",
    "InvalidPageToken",
    "LeaseRecord",
    "LoadReading",
    "NewObservation",
    "ObservationRecord",
    "Outcome",
    "Registry",
    "RegistryError",
    "RegistryUnavailableError",
    "StaleSchemaError",
    "TaskNotFoundError",
    "TaskRecord",
    "TaskTransaction",
    "TransactionConflictError",
    "default_database_url",
    "mask_url",
    "migrate_command",
]
