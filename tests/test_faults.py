"""Injected faults and what must survive them.

- PostgreSQL crashes and comes back while SDK clients report and ask.
- A server is killed with SIGKILL mid-report and restarted; its leases run out.
- Two servers race on one task; the stored state stays a serial replay.
- A client vanishes before reporting; its lease stops counting, its late report lands once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from fanout.server.app import RunningServer, make_server
from fanout.settings import Settings
from fanout.storage import Registry
from fanout.v1 import advisor_pb2 as pb
from fanout.v1 import advisor_pb2_grpc
from fanout_client import Advisor, FanoutError, Recommendation
from tests.faults_audit import ExecutionKey, audit, replay_mismatch, tasks_of
from tests.postgres import PostgresServer
from tests.servers import ServerProcess, drain
from tests.test_concurrency import NS, settled, true_seconds

TASKS = 4
TASK_NAMES = [f"wf/task-{i}" for i in range(TASKS)]
WINDOW = 10  # a short window keeps the GP refits of hundreds of reports cheap


def name(i: int) -> str:
    return TASK_NAMES[i]


def ref(i: int) -> pb.TaskRef:
    return pb.TaskRef(namespace=NS, workflow="wf", task=f"task-{i}")


def configure(stub: advisor_pb2_grpc.AdvisorServiceStub, tasks: int) -> None:
    for i in range(tasks):
        stub.ConfigureTask(
            pb.ConfigureTaskRequest(
                task=ref(i), config=pb.TaskConfig(window=WINDOW, max_parallelism=16)
            )
        )


def assert_serial_replays(registry: Registry, *, configured: int) -> None:
    for record in settled(registry):
        assert replay_mismatch(registry, record, configured=configured) is None


@dataclass
class Ledger:
    """What the callers were told, shared by client threads."""

    acknowledged: set[ExecutionKey] = field(default_factory=set)
    # Reports whose answer never came: they may or may not be stored.
    in_doubt: dict[ExecutionKey, Callable[[], object]] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    unexpected: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, code: grpc.StatusCode | None) -> None:
        with self.lock:
            label = code.name if code is not None else "NONE"
            self.codes[label] = self.codes.get(label, 0) + 1

    def acked(self, key: ExecutionKey) -> None:
        with self.lock:
            self.acknowledged.add(key)
            self.in_doubt.pop(key, None)

    def doubt(self, key: ExecutionKey, resend: Callable[[], object]) -> None:
        with self.lock:
            self.in_doubt[key] = resend

    def resend_all(self) -> None:
        """Re-sends every report left in doubt until it is acknowledged."""
        for key, resend in list(self.in_doubt.items()):
            resend()
            self.acked(key)


# -- PostgreSQL crash under SDK traffic ----------------------------------------------------------


def test_database_crash_under_sdk_traffic(private_postgres_server: PostgresServer) -> None:
    """PostgreSQL crashes under SDK traffic: only UNAVAILABLE, then every acknowledged or
    re-sent report stored once, leases closed with their reports, state a serial replay."""
    pg = private_postgres_server
    url = pg.url(pg.create_database())
    Registry(url).ensure_schema(upgrade=True)
    running = make_server(Settings(listen="127.0.0.1:0", database_url=url))
    target = f"127.0.0.1:{running.port}"
    ledger = Ledger()
    stop = threading.Event()
    outage = threading.Event()
    after_outage: list[int] = [0]
    # Outlives the client threads, to re-send what they left in doubt.
    resender = Advisor(target, namespace=NS, retries=20, timeout=20.0, fallback=False)

    def client(index: int) -> None:
        rng = random.Random(index)
        # Few, quick retries: some calls must outlast them during the outage.
        with Advisor(
            target,
            namespace=NS,
            retries=3,
            timeout=20.0,
            backoff_seconds=0.05,
            max_backoff_seconds=0.3,
            fallback=False,
        ) as advisor:
            for n in range(400):
                if stop.is_set():
                    return
                task = rng.randrange(TASKS)
                try:
                    recommendation = advisor.recommend(name(task))
                except FanoutError as error:
                    ledger.failed(error.code)
                    time.sleep(0.05)
                    continue
                execution_id = f"c{index}-{n}"
                key = (name(task), execution_id)
                seconds = true_seconds(task, recommendation.parallelism, rng)

                def send(
                    rec: Recommendation = recommendation,
                    eid: str = execution_id,
                    duration: float = seconds,
                ) -> object:
                    return resender.report(rec, duration_seconds=duration, execution_id=eid)

                ledger.doubt(key, send)
                try:
                    advisor.report(
                        recommendation, duration_seconds=seconds, execution_id=execution_id
                    )
                except FanoutError as error:
                    ledger.failed(error.code)
                    continue
                except BaseException as error:
                    with ledger.lock:
                        ledger.unexpected.append(error)
                    return
                ledger.acked(key)
                if outage.is_set():
                    with ledger.lock:
                        after_outage[0] += 1

    try:
        with grpc.insecure_channel(target) as channel:
            configure(advisor_pb2_grpc.AdvisorServiceStub(channel), TASKS)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(ledger.acknowledged) >= 12, "reports before the crash")
        pg.stop("immediate")
        acknowledged_before = len(ledger.acknowledged)
        time.sleep(3.0)
        pg.start()
        outage.set()
        wait_for(lambda: after_outage[0] >= 12, "reports after the restart", timeout=120.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=120.0)
        assert not ledger.unexpected, ledger.unexpected[:3]
        # The crash was felt, and only as UNAVAILABLE: never UNKNOWN or INTERNAL.
        assert ledger.codes, "no call failed: the crash was not injected"
        assert set(ledger.codes) == {"UNAVAILABLE"}, ledger.codes
        assert acknowledged_before >= 12

        ledger.resend_all()
        registry = Registry(url)
        try:
            result = audit(registry, NS, ledger.acknowledged)
            assert result.clean, result.describe()
            # Nothing half-written: a stored report closed its lease in the same commit.
            for task in tasks_of(registry, NS):
                for observation in registry.observations(task.id):
                    assert observation.recommendation_id is not None
                    lease = registry.get_lease(observation.recommendation_id)
                    assert lease is not None and lease.closed_at is not None
            settle_reports(target, TASKS)
            assert_serial_replays(registry, configured=1)
        finally:
            registry.dispose()
    finally:
        stop.set()
        resender.close()
        running.stop(grace=1.0)


def settle_reports(target: str, tasks: int) -> None:
    """One more report per task: a background refit lost to the outage happens now, so
    every stored state can be compared with a replay."""
    with grpc.insecure_channel(target) as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        for i in range(tasks):
            stub.ReportExecution(
                pb.ReportExecutionRequest(
                    run=pb.TaskRun(task=ref(i), parallelism=2),
                    execution_id=f"settle-{i}",
                    duration_seconds=true_seconds(i, 2, random.Random(i)),
                    outcome=pb.OUTCOME_SUCCEEDED,
                )
            )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


# -- SIGKILL mid-report, restart, lease expiry -------------------------------------------------


def test_server_killed_mid_report_loses_nothing(registry_url: str, tmp_path: Path) -> None:
    """A server SIGKILLed mid-report and restarted: no acknowledged report lost or doubled,
    and the dead server's leases expire and stop counting (SQLite and PostgreSQL)."""
    lease_seconds = 5.0
    first = ServerProcess(registry_url, log_dir=tmp_path, name="first")
    first.wait_ready()
    ledger = Ledger()
    channel = grpc.insecure_channel(first.target)
    stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
    configure(stub, TASKS)

    def client(index: int) -> None:
        rng = random.Random(index)
        for n in range(1000):
            task = rng.randrange(TASKS)
            try:
                recommendation = stub.Recommend(
                    pb.RecommendRequest(task=ref(task), lease_seconds=lease_seconds), timeout=30.0
                )
            except grpc.RpcError as error:
                ledger.failed(error.code())
                return
            execution_id = f"c{index}-{n}"
            request = pb.ReportExecutionRequest(
                recommendation_id=recommendation.recommendation_id,
                execution_id=execution_id,
                duration_seconds=true_seconds(task, recommendation.parallelism, rng),
                outcome=pb.OUTCOME_SUCCEEDED,
            )
            key = (name(task), execution_id)

            def resend(again: pb.ReportExecutionRequest = request) -> object:
                return resend_stub[0].ReportExecution(again, timeout=30.0)

            ledger.doubt(key, resend)
            try:
                stub.ReportExecution(request, timeout=30.0)
            except grpc.RpcError as error:
                ledger.failed(error.code())
                return  # the server is gone: this report's fate is in doubt
            ledger.acked(key)

    resend_stub: list[advisor_pb2_grpc.AdvisorServiceStub] = []
    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(ledger.acknowledged) >= 20, "reports before the kill")
        # Recommendations nobody will report: leases held by a server about to die.
        abandoned = [
            stub.Recommend(pb.RecommendRequest(task=ref(i), lease_seconds=lease_seconds))
            for i in range(TASKS)
        ]
        first.kill()
        # Still open: nobody closed them, and they have not expired yet.
        registry = Registry(registry_url)
        assert registry.cluster_load() >= sum(r.parallelism for r in abandoned)
        for thread in threads:
            thread.join(timeout=60.0)
    finally:
        channel.close()
        if first.process.poll() is None:
            first.kill()
    # Every client was cut off mid-call, and saw the server gone, nothing else.
    assert sum(ledger.codes.values()) == len(threads)
    assert set(ledger.codes) <= {"UNAVAILABLE", "CANCELLED"}, ledger.codes

    second = ServerProcess(registry_url, log_dir=tmp_path, name="second")
    try:
        second.wait_ready()
        with grpc.insecure_channel(second.target) as second_channel:
            resend_stub.append(advisor_pb2_grpc.AdvisorServiceStub(second_channel))
            # Acknowledged before the kill: stored, so a repeat is a duplicate.
            for task_name, execution_id in sorted(ledger.acknowledged)[:5]:
                again = resend_stub[0].ReportExecution(
                    pb.ReportExecutionRequest(
                        run=pb.TaskRun(task=ref(TASK_NAMES.index(task_name)), parallelism=1),
                        execution_id=execution_id,
                        duration_seconds=1.0,
                        outcome=pb.OUTCOME_SUCCEEDED,
                    )
                )
                assert again.status == pb.REPORT_STATUS_DUPLICATE
            ledger.resend_all()
            result = audit(registry, NS, ledger.acknowledged)
            assert result.clean, result.describe()

            # The dead server's leases stop counting once they expire.
            wait_for(
                lambda: registry.cluster_load() == 0,
                "the dead server's leases to expire",
                timeout=lease_seconds + 30.0,
            )
            fresh = resend_stub[0].Recommend(pb.RecommendRequest(task=ref(0)))
            assert fresh.cluster_load == 0.0
            for recommendation in abandoned:
                lease = registry.get_lease(recommendation.recommendation_id)
                assert lease is not None and lease.closed_at is None
                assert lease.expires_at <= datetime.now(UTC)
        # The dead server's queued GP refits died with it; the next report catches up.
        settle_reports(second.target, TASKS)
        assert_serial_replays(registry, configured=1)
    finally:
        registry.dispose()
        second.terminate()


# -- two servers racing on one task ------------------------------------------------------------


@pytest.fixture
def two_servers(postgres_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    Registry(postgres_url).ensure_schema(upgrade=True)
    started = [ServerProcess(postgres_url, log_dir=tmp_path, name=f"s{i}") for i in range(2)]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.kill()


def test_two_servers_racing_on_one_task(
    two_servers: list[ServerProcess], postgres_url: str
) -> None:
    """Two servers on one task, reports crossing between them: each run applied once and
    the stored state equal to a serial replay of the stored reports."""
    channels = [grpc.insecure_channel(s.target) for s in two_servers]
    stubs = [advisor_pb2_grpc.AdvisorServiceStub(c) for c in channels]
    configure(stubs[0], 1)
    # 60 runs of task 0, half of them recommended first.
    jobs = [(f"race-{n}", n % 2 == 0) for n in range(60)]
    random.Random(5).shuffle(jobs)
    applied: dict[str, int] = {}
    recommendations: list[str] = []
    repeats: list[str] = []
    lock = threading.Lock()

    def handle(job: tuple[str, bool], local: random.Random) -> None:
        execution_id, ask_first = job
        stub = stubs[local.randrange(len(stubs))]
        if ask_first:
            rec = stub.Recommend(pb.RecommendRequest(task=ref(0), cluster_load=0.0))
            with lock:
                recommendations.append(rec.recommendation_id)
            s = rec.parallelism
            target: dict[str, object] = {"recommendation_id": rec.recommendation_id}
        else:
            s = local.choice([1, 2, 4, 8])
            target = {"run": pb.TaskRun(task=ref(0), parallelism=s)}
        report = pb.ReportExecutionRequest(
            execution_id=execution_id,
            duration_seconds=true_seconds(0, s, local),
            outcome=pb.OUTCOME_SUCCEEDED,
            **target,  # type: ignore[arg-type]
        )
        # The other server reports: the two share nothing but the database.
        answers = [stubs[(stubs.index(stub) + 1) % 2].ReportExecution(report)]
        if local.random() < 0.2:
            # A retried exit hook: the same report again, to either server.
            answers.append(stubs[local.randrange(2)].ReportExecution(report))
            with lock:
                repeats.append(execution_id)
        with lock:
            applied[execution_id] = applied.get(execution_id, 0) + sum(
                answer.status == pb.REPORT_STATUS_APPLIED for answer in answers
            )

    try:
        drain(jobs, 6, handle)
    finally:
        for channel in channels:
            channel.close()
    assert repeats, "no report was repeated"
    # Each run applied exactly once, however often and wherever it was reported.
    assert len(applied) == 60 and set(applied.values()) == {1}
    registry = Registry(postgres_url)
    try:
        result = audit(registry, NS, {(name(0), execution_id) for execution_id in applied})
        assert result.clean, result.describe()
        assert_serial_replays(registry, configured=1)
        for lease_id in recommendations:
            lease = registry.get_lease(lease_id)
            assert lease is not None and lease.closed_at is not None
        assert registry.cluster_load() == 0
    finally:
        registry.dispose()


# -- a client that vanishes before reporting ---------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    server = make_server(
        Settings(listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'r.sqlite3'}")
    )
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def test_vanished_client_lease_expires_and_late_report_lands_once(
    running: RunningServer,
) -> None:
    """A client gone before reporting: its lease stops counting at expiry; its late report
    is applied once, then answered DUPLICATE."""
    registry = running.advisor.registry
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        # A known model, so that the width (and the load it adds) is well above 1.
        stub.ConfigureTask(
            pb.ConfigureTaskRequest(task=ref(0), config=pb.TaskConfig(t1_seconds=100.0, p=0.9))
        )
        lost = stub.Recommend(pb.RecommendRequest(task=ref(0), lease_seconds=2.0))
        assert lost.parallelism > 1
        assert registry.cluster_load() == lost.parallelism
        other = stub.Recommend(pb.RecommendRequest(task=ref(1), lease_seconds=1.0))
        assert other.cluster_load == lost.parallelism  # the open lease counts for others

        # The client is gone; nobody reports. Past the expiry, its lease stops counting.
        expires = lost.lease_expires_at.ToDatetime(tzinfo=UTC)
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
        assert registry.cluster_load() == 0
        later = stub.Recommend(pb.RecommendRequest(task=ref(2)))
        assert later.cluster_load == 0.0

        late = pb.ReportExecutionRequest(
            recommendation_id=lost.recommendation_id,
            execution_id="late-1",
            duration_seconds=40.0,
            outcome=pb.OUTCOME_SUCCEEDED,
        )
        first = stub.ReportExecution(late)
        assert first.status == pb.REPORT_STATUS_APPLIED
        assert first.model.observations_total == 1
        second = stub.ReportExecution(late)
        assert second.status == pb.REPORT_STATUS_DUPLICATE
        assert second.model.observations_total == 1

    record = registry.get_task(NS, name(0))
    assert record is not None
    stored = registry.observations(record.id)
    assert [(o.execution_id, o.recommendation_id) for o in stored] == [
        ("late-1", lost.recommendation_id)
    ]
    # The run is learned at the width and load it was recommended with.
    assert stored[0].parallelism == lost.parallelism
    assert stored[0].cluster_load == lost.cluster_load
    lease = registry.get_lease(lost.recommendation_id)
    assert lease is not None and lease.closed_at is not None
    assert registry.cluster_load() == later.parallelism
