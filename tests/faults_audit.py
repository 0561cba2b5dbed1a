"""What the registry stored against what the callers were told: shared by the fault
tests and the soak (benchmarks/soak.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from fanout.storage import Registry, TaskRecord
from tests.test_concurrency import replay

# (model name, execution id): execution ids are unique per task, not across tasks.
ExecutionKey = tuple[str, str]


@dataclass(frozen=True)
class Audit:
    """Acknowledged reports against stored observations; `clean` when they match one to one."""

    acknowledged: int
    stored: int
    missing: list[ExecutionKey]  # acknowledged, not stored
    duplicated: list[ExecutionKey]  # stored more than once
    unexpected: list[ExecutionKey]  # stored, never acknowledged

    @property
    def clean(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def describe(self) -> str:
        return (
            f"{self.acknowledged} acknowledged, {self.stored} stored; "
            f"missing {len(self.missing)} {self.missing[:3]}, "
            f"duplicated {len(self.duplicated)} {self.duplicated[:3]}, "
            f"unexpected {len(self.unexpected)} {self.unexpected[:3]}"
        )


def tasks_of(registry: Registry, namespace: str) -> list[TaskRecord]:
    tasks: list[TaskRecord] = []
    token: str | None = None
    while True:
        page, token = registry.list_tasks(namespace=namespace, page_size=1000, page_token=token)
        tasks.extend(page)
        if token is None:
            return tasks


def stored_executions(registry: Registry, namespace: str) -> Counter[ExecutionKey]:
    """How many times each execution id is stored, failed runs included."""
    stored: Counter[ExecutionKey] = Counter()
    for task in tasks_of(registry, namespace):
        for observation in registry.observations(task.id, succeeded_only=False):
            stored[(task.name, observation.execution_id)] += 1
    return stored


def audit(registry: Registry, namespace: str, acknowledged: Iterable[ExecutionKey]) -> Audit:
    expected = set(acknowledged)
    stored = stored_executions(registry, namespace)
    return Audit(
        acknowledged=len(expected),
        stored=sum(stored.values()),
        missing=sorted(expected - set(stored)),
        duplicated=sorted(key for key, copies in stored.items() if copies > 1),
        unexpected=sorted(set(stored) - expected),
    )


def replay_mismatch(registry: Registry, record: TaskRecord, *, configured: int) -> str | None:
    """None when the stored state equals a serial replay of the stored observations (in
    commit order); otherwise what differs. `configured`: ConfigureTask calls on the task,
    which count in its version but are no reports. Needs settled background refits."""
    stored = registry.observations(record.id)
    expected = replay(record.config, stored).state_dict()
    # Recommend moves only the re-probe counters, which replaying reports cannot.
    for counter in ("ones_streak", "reprobe_wait"):
        expected[counter] = record.state[counter]
    if record.state["version"] != expected["version"] + configured:
        return f"version {record.state['version']}, replay {expected['version']} + {configured}"
    expected["version"] = expected["gp_version"] = record.state["version"]
    differing = sorted(k for k in expected if expected[k] != record.state.get(k))
    return f"{record.name}: {differing} differ" if differing else None
