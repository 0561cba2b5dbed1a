"""The advisor: the engine and the registry joined, with no gRPC in sight.

Every write for one task either happens inside that task's registry transaction or is
one statement that applies only while the task is at the version the write was
computed from, so the stored state always equals a serial replay of the stored
observations in commit order. GP hyper-parameters are re-optimised off the request
path (`RefitQueue`), in worker processes when the server is given a `ProcessFitter`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from fanout.engine import ConfigError, Decision, Observation, TaskConfig, TaskModel
from fanout.server.auth import check_namespace
from fanout.server.fitting import Fitter, InlineFitter
from fanout.server.load import ClusterLoad
from fanout.storage import (
    DuplicateExecutionError,
    LeaseRecord,
    NewObservation,
    Registry,
    RegistryUnavailableError,
    TaskRecord,
    TaskTransaction,
)

log = logging.getLogger(__name__)

REFIT_RETRIES = 8  # with doubling waits from 1 s: about four minutes of outage
REFIT_RETRY_SECONDS = 1.0
# Recommendations in flight whose reports skip a registry read: a few MB at most.
LEASE_CACHE_SIZE = 10_000


class NotFoundError(LookupError):
    """A named thing (task, recommendation) does not exist; `field` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.description = message


@dataclass(frozen=True)
class TaskRef:
    """Which task a request is about; `model_name` is the registry row it learns in."""

    namespace: str
    workflow: str
    task: str
    model_key: str | None = None

    @property
    def model_name(self) -> str:
        return self.model_key or f"{self.workflow}/{self.task}"


@dataclass(frozen=True, kw_only=True)
class RecommendParams:
    input_size: float | None = None
    cluster_load: float | None = None
    min_parallelism: int | None = None
    max_parallelism: int | None = None
    urgency: float | None = None
    resource_exponent: float | None = None
    deadline_seconds: float | None = None
    confidence: float | None = None
    strategy: str | None = None
    lease_seconds: float | None = None


@dataclass(frozen=True)
class Recommendation:
    recommendation_id: str
    decision: Decision
    lease_expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class Report:
    execution_id: str
    duration_seconds: float
    succeeded: bool = True
    input_size: float | None = None
    startup_seconds: float | None = None
    recommendation_id: str | None = None
    task: TaskRef | None = None
    parallelism: int | None = None
    cluster_load: float | None = None


@dataclass(frozen=True)
class ReportOutcome:
    applied: bool
    summary: dict[str, Any]


@dataclass(frozen=True)
class TaskView:
    record: TaskRecord
    config: TaskConfig
    summary: dict[str, Any]


class ModelCache:
    """Parsed models by registry row, reused while the row's version is unchanged."""

    def __init__(self) -> None:
        self._models: dict[int, tuple[int, TaskModel]] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._names: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def snapshot(self, record: TaskRecord) -> TaskModel:
        """The model as stored in `record`; callers must not mutate it."""
        with self._lock:
            cached = self._models.get(record.id)
        if cached is not None and cached[0] == record.version:
            return cached[1]
        return TaskModel.from_dicts(record.config, record.state or None)

    def writable(self, record: TaskRecord) -> TaskModel:
        """A private copy to change inside a transaction; a rollback then leaves
        the cached snapshot as it was."""
        return self.snapshot(record).clone()

    def remember(self, record: TaskRecord, model: TaskModel) -> None:
        with self._lock:
            self._ids[(record.namespace, record.name)] = record.id
            self._names[record.id] = (record.namespace, record.name)
        self.advance(record.id, record.version, model)

    def advance(self, task_id: int, version: int, model: TaskModel) -> None:
        """`model` as the task stands at `version`; an older version never replaces a
        newer one (two writes of one task may finish in either order)."""
        with self._lock:
            cached = self._models.get(task_id)
            if cached is None or cached[0] <= version:
                self._models[task_id] = (version, model)

    def name_of(self, task_id: int) -> tuple[str, str] | None:
        """`(namespace, name)` of a task this server has seen (they never change)."""
        with self._lock:
            return self._names.get(task_id)

    def lookup(self, namespace: str, name: str) -> tuple[int, int, TaskModel] | None:
        """`(task id, version, model)` last seen for a task; the registry may have
        moved on since (another server's report), so callers check the version."""
        with self._lock:
            task_id = self._ids.get((namespace, name))
            if task_id is None:
                return None
            version, model = self._models[task_id]
        return task_id, version, model


class LeaseCache:
    """The leases this server opened lately, so that their reports need not read them
    back. A lease never changes but for being closed, which reports learn from the
    registry; a lease missing here is read from the registry."""

    def __init__(self, capacity: int = LEASE_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._leases: OrderedDict[str, LeaseRecord] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, lease: LeaseRecord) -> None:
        with self._lock:
            self._leases[lease.id] = lease
            while len(self._leases) > self._capacity:
                self._leases.popitem(last=False)

    def get(self, lease_id: str) -> LeaseRecord | None:
        with self._lock:
            return self._leases.get(lease_id)

    def discard(self, lease_id: str) -> None:
        with self._lock:
            self._leases.pop(lease_id, None)


class RefitQueue:
    """Re-optimises GP hyper-parameters in the background, one task at a time each.

    A refit is computed outside any lock and stored only if no report moved the
    task on meanwhile; a later report refits first anyway (`TaskModel.observe`).
    """

    def __init__(self, advisor: Advisor, *, workers: int = 1) -> None:
        self._advisor = advisor
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refit")
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.fit_seconds: Callable[[float], None] = lambda _: None
        self._closed = False

    def submit(self, namespace: str, name: str, task_id: int) -> None:
        self._submit(namespace, name, task_id, attempt=0)

    def _submit(self, namespace: str, name: str, task_id: int, *, attempt: int) -> None:
        with self._lock:
            if task_id in self._pending or self._closed:
                return
            self._pending.add(task_id)
        self._pool.submit(self._run, namespace, name, task_id, attempt)

    def _run(self, namespace: str, name: str, task_id: int, attempt: int) -> None:
        with self._lock:
            self._pending.discard(task_id)
        try:
            self._advisor.refit(namespace, name)
        except RegistryUnavailableError:
            # Decisions use the stored hyper-parameters until a refit lands, and a
            # task that gets no more reports would keep stale ones: try again later.
            if attempt < REFIT_RETRIES:
                delay = min(REFIT_RETRY_SECONDS * 2**attempt, 60.0)
                timer = threading.Timer(
                    delay, self._submit, (namespace, name, task_id), {"attempt": attempt + 1}
                )
                timer.daemon = True
                timer.start()
            else:
                log.warning("background refit of %s/%s given up", namespace, name)
        except Exception:
            # The next report refits synchronously, so this costs latency only.
            log.exception("background refit failed for %s/%s", namespace, name)
        finally:
            with self._lock:
                if not self._pending:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """For tests and shutdown: wait until no refit is queued."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        self._pool.submit(lambda: None).result(timeout=max(0.0, deadline - time.monotonic()))
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


class Advisor:
    """Recommend, report and manage tasks against one registry."""

    def __init__(
        self,
        registry: Registry,
        *,
        default_config: TaskConfig | None = None,
        background_refit: bool = True,
        fitter: Fitter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`fitter`: where GP refits run (default: in the calling thread)."""
        self.registry = registry
        self.fitter: Fitter = fitter or InlineFitter()
        self.default_config = default_config or TaskConfig()
        self.clock = clock
        self.models = ModelCache()
        self.load = ClusterLoad(registry)
        self.leases = LeaseCache()
        self.refits = RefitQueue(self) if background_refit else None

    @contextmanager
    def _task(self, ref: TaskRef, *, create: bool) -> Iterator[tuple[TaskTransaction, TaskModel]]:
        create_config = self.default_config.to_dict() if create else None
        with self.registry.task_transaction(
            ref.namespace, ref.model_name, create_config=create_config
        ) as tx:
            yield tx, self.models.writable(tx.record)

    def _after_write(self, record: TaskRecord, model: TaskModel) -> None:
        self.models.remember(record, model)
        self._refit_later(record.namespace, record.name, record.id, model)

    def _refit_later(self, namespace: str, name: str, task_id: int, model: TaskModel) -> None:
        if model.needs_refit:
            if self.refits is not None:
                self.refits.submit(namespace, name, task_id)
            else:
                self.refit(namespace, name)

    def recommend(self, ref: TaskRef, params: RecommendParams) -> Recommendation:
        """SPEC 5 and 6: decide, open a lease, store the re-probe counters.

        A task whose cached model is still the registry's current version, and whose
        decision leaves the re-probe counters as they were (every steady-state
        decision at s > 1), needs one INSERT and no task lock. Anything else takes
        the task's lock and decides on the stored model.
        """
        now = self.clock()
        load = params.cluster_load
        if load is None:
            load = float(self.load.current(now))
        cached = self.models.lookup(ref.namespace, ref.model_name)
        if cached is not None:
            task_id, version, model = cached
            decision, counters = self._plan(model, params, load)
            if counters == (model.state.ones_streak, model.state.reprobe_wait):
                lease_id, expires = self._new_lease(model, params, now)
                lease = self.registry.open_lease_at_version(
                    task_id,
                    version,
                    lease_id,
                    **self._lease_fields(ref, params, decision) | {"expires_at": expires},
                )
                if lease is not None:
                    self.leases.add(lease)
                    self.load.opened(lease_id, decision.parallelism, expires)
                    return Recommendation(lease_id, decision, expires)
        with self._task(ref, create=True) as (tx, model):
            decision, counters = self._plan(model, params, load)
            lease_id, expires = self._new_lease(model, params, now)
            lease = tx.open_lease(
                lease_id, **self._lease_fields(ref, params, decision) | {"expires_at": expires}
            )
            # Rewriting the whole state only when the counters moved saves time.
            if counters != (model.state.ones_streak, model.state.reprobe_wait):
                model.state.ones_streak, model.state.reprobe_wait = counters
                record = tx.save(state=model.state_dict())
            else:
                record = tx.record
        self.models.remember(record, model)
        self.leases.add(lease)
        self.load.opened(lease_id, decision.parallelism, expires)
        return Recommendation(lease_id, decision, expires)

    @staticmethod
    def _plan(
        model: TaskModel, params: RecommendParams, load: float
    ) -> tuple[Decision, tuple[int, int]]:
        return model.plan(
            input_size=params.input_size,
            cluster_load=load,
            urgency=params.urgency,
            resource_exponent=params.resource_exponent,
            deadline_seconds=params.deadline_seconds,
            confidence=params.confidence,
            min_parallelism=params.min_parallelism,
            max_parallelism=params.max_parallelism,
            strategy=params.strategy,
        )

    @staticmethod
    def _new_lease(
        model: TaskModel, params: RecommendParams, now: datetime
    ) -> tuple[str, datetime]:
        lease_seconds = params.lease_seconds or model.config.lease_seconds
        return str(uuid.uuid4()), now + timedelta(seconds=lease_seconds)

    @staticmethod
    def _lease_fields(ref: TaskRef, params: RecommendParams, decision: Decision) -> dict[str, Any]:
        return {
            "parallelism": decision.parallelism,
            "cluster_load": decision.cluster_load,
            "input_size": params.input_size,
            "workflow": ref.workflow,
            "task": ref.task,
        }

    def report(self, report: Report) -> ReportOutcome:
        """SPEC 4: store the run once (by execution id) and learn from it."""
        lease: LeaseRecord | None = None
        if report.recommendation_id is not None:
            lease = self.leases.get(report.recommendation_id)
            if lease is None:
                lease = self.registry.get_lease(report.recommendation_id)
            if lease is None:
                raise NotFoundError(
                    "recommendation_id", f"no recommendation {report.recommendation_id!r}"
                )
            known = self.models.name_of(lease.task_id)
            if known is None:
                record = self.registry.get_task_by_id(lease.task_id)
                if record is None:
                    raise NotFoundError("recommendation_id", "the recommendation's task is gone")
                known = (record.namespace, record.name)
            namespace, name = known
            check_namespace(namespace, field="recommendation_id")
            ref = TaskRef(namespace, "", "", model_key=name)
            if lease.workflow is not None and lease.task is not None:
                workflow, task = lease.workflow, lease.task
            else:  # a lease from before revision 0002
                workflow, _, task = name.partition("/")
            parallelism = lease.parallelism
            load = lease.cluster_load if report.cluster_load is None else report.cluster_load
            size = lease.input_size if report.input_size is None else report.input_size
        else:
            assert report.task is not None and report.parallelism is not None
            ref = report.task
            workflow, task = ref.workflow, ref.task
            parallelism = report.parallelism
            load = 0.0 if report.cluster_load is None else report.cluster_load
            size = report.input_size
        now = self.clock()
        observation = Observation(
            parallelism=parallelism,
            duration_seconds=report.duration_seconds,
            input_size=size,
            cluster_load=load,
            startup_seconds=report.startup_seconds,
        )
        stored = NewObservation(
            execution_id=report.execution_id,
            workflow=report.task.workflow if report.task else workflow,
            task=report.task.task if report.task else task,
            recommendation_id=report.recommendation_id,
            parallelism=parallelism,
            input_size=size,
            cluster_load=load,
            duration_seconds=report.duration_seconds,
            startup_seconds=report.startup_seconds,
            outcome="succeeded" if report.succeeded else "failed",
            created_at=now,
        )
        self._refit_if_lagging(ref.namespace, ref.model_name)
        if report.succeeded:
            outcome = self._report_on_cached_model(ref, lease, observation, stored, now)
            if outcome is not None:
                return outcome
        with self._task(ref, create=lease is None) as (tx, model):
            try:
                # Added before anything else is written: a duplicate then changes nothing.
                tx.add_observation(stored)
            except DuplicateExecutionError:
                return ReportOutcome(False, model.summary())
            closed = lease is not None and tx.close_lease(lease.id, now=now)
            if report.succeeded:
                # A failed run closes its lease but teaches nothing (its time is not
                # the task's time at that width).
                model.observe(observation, refit=False)
                record = tx.save(state=model.state_dict())
            else:
                record = tx.record
        if lease is not None:
            self._lease_reported(lease, closed=closed)
        self._after_write(record, model)
        return ReportOutcome(True, model.summary())

    def _report_on_cached_model(
        self,
        ref: TaskRef,
        lease: LeaseRecord | None,
        observation: Observation,
        stored: NewObservation,
        now: datetime,
    ) -> ReportOutcome | None:
        """A succeeded run of a task whose cached model is the registry's current
        version: learn from it outside any lock, then write it only if the task is
        still at that version and the execution id is new (one statement). None when
        that did not hold; the report then takes the task's lock."""
        cached = self.models.lookup(ref.namespace, ref.model_name)
        if cached is None:
            return None
        task_id, version, current = cached
        if current.needs_refit:
            return None
        model = current.clone()
        model.observe(observation, refit=False)
        written = self.registry.report_at_version(
            task_id,
            version,
            stored,
            state=model.state_dict(),
            lease_id=None if lease is None else lease.id,
            now=now,
        )
        if written is None:
            return None
        if lease is not None:
            self._lease_reported(lease, closed=written.lease_closed)
        self.models.advance(task_id, written.version, model)
        self._refit_later(ref.namespace, ref.model_name, task_id, model)
        return ReportOutcome(True, model.summary())

    def _lease_reported(self, lease: LeaseRecord, *, closed: bool) -> None:
        self.leases.discard(lease.id)
        if closed:
            self.load.closed(lease.id, lease.parallelism, lease.expires_at)

    def _refit_if_lagging(self, namespace: str, name: str) -> None:
        """The report must see the GP of the previous report (`TaskModel.observe`);
        fitting it here, outside the task's lock, keeps Recommends unblocked."""
        cached = self.models.lookup(namespace, name)
        if cached is not None:
            lagging = cached[2].needs_refit
        else:
            record = self.registry.get_task(namespace, name)
            lagging = record is not None and self.models.snapshot(record).needs_refit
        if lagging:
            self.refit(namespace, name)

    def refit(self, namespace: str, name: str) -> None:
        """Re-optimise one task's GP and store it if nothing moved on meanwhile."""
        record = self.registry.get_task(namespace, name)
        if record is None:
            return
        model = TaskModel.from_dicts(record.config, record.state or None)
        if not model.needs_refit:
            return
        started = time.perf_counter()
        model = self.fitter.refit(model)
        if self.refits is not None:
            self.refits.fit_seconds(time.perf_counter() - started)
        with self.registry.task_transaction(namespace, name) as tx:
            current = tx.record
            stored = TaskModel.from_dicts(current.config, current.state or None)
            if stored.state.version != model.state.version or not stored.needs_refit:
                return
            # Only the GP fields are taken: decisions made meanwhile moved the
            # re-probe counters, which the refit must not roll back.
            stored.adopt_refit(model)
            saved = tx.save(state=stored.state_dict())
        self.models.remember(saved, stored)

    def predict(
        self, ref: TaskRef, rows: list[tuple[int, float | None, float | None]]
    ) -> tuple[list[tuple[float, float]], int]:
        """What-if predictions; rows are (s, input_size, cluster_load)."""
        record = self._existing(ref)
        model = self.models.snapshot(record)
        s = np.array([float(r[0]) for r in rows])
        gamma = np.array([model.gamma_of(r[1])[0] for r in rows])
        load = np.array([0.0 if r[2] is None else float(r[2]) for r in rows])
        mean, sd = model.predict(s, gamma, load)
        return list(zip(mean.tolist(), sd.tolist(), strict=True)), model.state.version

    def _existing(self, ref: TaskRef) -> TaskRecord:
        record = self.registry.get_task(ref.namespace, ref.model_name)
        if record is None:
            raise NotFoundError("task", f"no task {ref.namespace}/{ref.model_name}")
        return record

    def view(self, record: TaskRecord) -> TaskView:
        model = self.models.snapshot(record)
        return TaskView(record, model.config, model.summary())

    def get_task(self, ref: TaskRef) -> TaskView:
        return self.view(self._existing(ref))

    def list_tasks(
        self, namespace: str | None, page_size: int, page_token: str | None
    ) -> tuple[list[TaskView], str | None]:
        records, token = self.registry.list_tasks(
            namespace=namespace, page_size=page_size, page_token=page_token
        )
        return [self.view(r) for r in records], token

    def configure_task(self, ref: TaskRef, changes: dict[str, Any]) -> TaskView:
        """Set configuration fields; seeds overwrite learned values (ConfigureTask)."""
        with self._task(ref, create=True) as (tx, model):
            try:
                config = model.config.updated(**changes)
            except TypeError as exc:  # an unknown field: a programming error upstream
                raise ConfigError("config", str(exc)) from exc
            model.reconfigure(config)
            record = tx.save(config=config.to_dict(), state=model.state_dict())
        self._after_write(record, model)
        return TaskView(record, model.config, model.summary())

    def reset_task(self, ref: TaskRef, *, forget_history: bool) -> TaskView:
        with self._task(ref, create=False) as (tx, model):
            model.reset()
            if forget_history:
                tx.delete_observations()
            record = tx.save(state=model.state_dict())
        self._after_write(record, model)
        return TaskView(record, model.config, model.summary())

    def close(self) -> None:
        self.load.close()
        if self.refits is not None:
            self.refits.shutdown()
        self.fitter.close()
