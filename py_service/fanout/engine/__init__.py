"""The prediction and decision engine: one `TaskModel` per task (SPEC sections 2-5)."""

from fanout.engine.config import BOUND_RULES, STRATEGIES, ConfigError, TaskConfig
from fanout.engine.gp import ResidualGP
from fanout.engine.model import (
    Decision,
    LearnedState,
    Observation,
    Phase,
    StateError,
    TaskModel,
)

__all__ = [
    "BOUND_RULES",
    "STRATEGIES",
    "ConfigError",
    "Decision",
    "LearnedState",
    "Observation",
    "Phase",
    "ResidualGP",
    "StateError",
    "TaskConfig",
    "TaskModel",
]
