"""`make soak`: minutes of mixed traffic against a `fanout serve` child on PostgreSQL, with
one database crash and restart in the middle; then an audit of what was stored.

Starts its own PostgreSQL and server, on loopback only. Callers ask for widths and report
runs of many tasks, re-send some reports (duplicates) and send some bad requests. Every
status is checked against what that request may get; every acknowledged report must be
stored exactly once. Writes docs/reliability.md (unless --no-doc).

    .venv/bin/python benchmarks/soak.py --minutes 3
    .venv/bin/python benchmarks/soak.py --minutes 0.5 --skip-tests   # a quick look
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fanout.storage import Registry  # noqa: E402
from fanout.v1 import advisor_pb2 as pb  # noqa: E402
from fanout.v1 import advisor_pb2_grpc  # noqa: E402
from tests.faults_audit import (  # noqa: E402
    Audit,
    ExecutionKey,
    audit,
    replay_mismatch,
)
from tests.postgres import PostgresServer, start_postgres_server  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

NS = "soak"
DOC = ROOT / "docs" / "reliability.md"
FAULT_TESTS = ROOT / "tests" / "test_faults.py"
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CALL_TIMEOUT = 30.0
# After PostgreSQL is back, pooled connections are found dead one by one (pre-ping);
# UNAVAILABLE is still an expected answer for this long.
RECOVERY_GRACE = 15.0
RSS_GROWTH_TARGET = 0.10
MAX_ITERATIONS = 10**7  # per caller: the loops end by the clock long before


# -- the simulated tasks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Law:
    """A task's true run time: Amdahl with noise, optionally growing with the input."""

    t1: float
    p: float
    sized: bool

    def seconds(self, s: int, size: float | None, rng: random.Random) -> float:
        gamma = (size / 10.0) if (self.sized and size is not None) else 1.0
        mean = gamma * self.t1 * ((1 - self.p) + self.p / s)
        return max(0.01, mean * (1 + 0.05 * rng.gauss(0, 1)))


def laws(tasks: int) -> list[Law]:
    rng = random.Random(2024)
    return [
        Law(t1=rng.uniform(20, 400), p=rng.uniform(0.3, 0.98), sized=i % 3 == 0)
        for i in range(tasks)
    ]


def task_ref(i: int) -> pb.TaskRef:
    return pb.TaskRef(namespace=NS, workflow="soak", task=f"t{i:04d}")


def task_name(i: int) -> str:
    return f"soak/t{i:04d}"


# -- bad requests, each with the answers it may get ----------------------------------------------


@dataclass(frozen=True)
class BadKind:
    name: str
    method: str
    build: Callable[[random.Random], Any]
    expected: frozenset[grpc.StatusCode]


def _bad_kinds() -> list[BadKind]:
    invalid = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
    missing = frozenset({grpc.StatusCode.NOT_FOUND})

    def report(**fields: Any) -> pb.ReportExecutionRequest:
        base: dict[str, Any] = {
            "run": pb.TaskRun(task=task_ref(0), parallelism=2),
            "execution_id": "never-stored",
            "duration_seconds": 10.0,
            "outcome": pb.OUTCOME_SUCCEEDED,
        }
        base.update(fields)
        return pb.ReportExecutionRequest(**base)

    return [
        BadKind(
            "negative duration",
            "ReportExecution",
            lambda rng: report(duration_seconds=-rng.uniform(1, 100)),
            invalid,
        ),
        BadKind(
            "NaN duration", "ReportExecution", lambda _: report(duration_seconds=math.nan), invalid
        ),
        BadKind("outcome unset", "ReportExecution", lambda _: report(outcome=0), invalid),
        BadKind(
            "width 0",
            "ReportExecution",
            lambda _: report(run=pb.TaskRun(task=task_ref(0), parallelism=0)),
            invalid,
        ),
        BadKind(
            "unknown recommendation id",
            "ReportExecution",
            lambda rng: pb.ReportExecutionRequest(
                recommendation_id=f"no-such-{rng.getrandbits(64):x}",
                execution_id="never-stored",
                duration_seconds=10.0,
                outcome=pb.OUTCOME_SUCCEEDED,
            ),
            missing,
        ),
        BadKind(
            "infinite input size",
            "Recommend",
            lambda _: pb.RecommendRequest(task=task_ref(1), input_size=math.inf),
            invalid,
        ),
        BadKind(
            "empty namespace",
            "Recommend",
            lambda _: pb.RecommendRequest(task=pb.TaskRef(workflow="soak", task="t0001")),
            invalid,
        ),
        BadKind(
            "NUL in task name",
            "Recommend",
            lambda _: pb.RecommendRequest(
                task=pb.TaskRef(namespace=NS, workflow="soak", task="t\x000")
            ),
            invalid,
        ),
        BadKind(
            "min width above max",
            "Recommend",
            lambda _: pb.RecommendRequest(task=task_ref(2), min_parallelism=9, max_parallelism=3),
            invalid,
        ),
        BadKind(
            "strategy out of range",
            "Recommend",
            lambda _: pb.RecommendRequest(task=task_ref(2), strategy=pb.Strategy.ValueType(77)),
            invalid,
        ),
        BadKind(
            "alpha 2 in ConfigureTask",
            "ConfigureTask",
            lambda _: pb.ConfigureTaskRequest(task=task_ref(3), config=pb.TaskConfig(alpha=2.0)),
            invalid,
        ),
        BadKind(
            "Predict without rows",
            "Predict",
            lambda _: pb.PredictRequest(task=task_ref(3)),
            invalid,
        ),
        BadKind(
            "GetTask of an unknown task",
            "GetTask",
            lambda rng: pb.GetTaskRequest(
                task=pb.TaskRef(namespace=NS, workflow="nowhere", task=f"x{rng.getrandbits(32)}")
            ),
            missing,
        ),
        BadKind(
            "5 MB task name",
            "Recommend",
            lambda _: pb.RecommendRequest(
                task=pb.TaskRef(namespace=NS, workflow="soak", task="x" * (5 << 20))
            ),
            frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}),
        ),
    ]


BAD_KINDS = _bad_kinds()


# -- what the callers saw --------------------------------------------------------------------


@dataclass
class Outage:
    """When PostgreSQL was down, in seconds since the start of traffic."""

    stopped: float | None = None
    started: float | None = None
    first_ok_after: float | None = None

    def covers(self, moment: float) -> bool:
        if self.stopped is None or moment < self.stopped:
            return False
        return self.started is None or moment <= self.started + RECOVERY_GRACE


@dataclass
class Ledger:
    """Everything the callers saw; shared by their threads."""

    started: float
    outage: Outage
    lock: threading.Lock = field(default_factory=threading.Lock)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t, ms) of answers
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    bad: Counter[tuple[str, str]] = field(default_factory=Counter)
    acknowledged: set[ExecutionKey] = field(default_factory=set)
    in_doubt: dict[ExecutionKey, pb.ReportExecutionRequest] = field(default_factory=dict)
    recent: deque[tuple[ExecutionKey, pb.ReportExecutionRequest]] = field(
        default_factory=lambda: deque(maxlen=2000)
    )
    duplicates_sent: int = 0
    duplicates_answered: int = 0
    duplicates_unavailable: int = 0
    warmup_reports: int = 0
    resent: int = 0
    resent_stored_before: int = 0
    catch_up_reports: int = 0
    reports: int = 0
    recommends: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def call(
        self,
        method: str,
        rpc: Callable[..., Any],
        request: Any,
        expected: frozenset[grpc.StatusCode] = frozenset({OK}),
    ) -> tuple[grpc.StatusCode, Any]:
        """One RPC: its latency and status recorded, the status judged."""
        begun = time.perf_counter()
        answer: Any = None
        details = ""
        try:
            answer = rpc(request, timeout=CALL_TIMEOUT)
            code = OK
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        moment = self.now()
        elapsed_ms = (time.perf_counter() - begun) * 1000
        allowed = code in expected or (code == UNAVAILABLE and self.outage.covers(moment))
        with self.lock:
            self.samples.append((moment, elapsed_ms))
            self.statuses[(method, code.name)] += 1
            if not allowed:
                self.unexpected.append(f"{moment:7.1f} s {method}: {code.name} {details[:160]}")
            if (
                code == OK
                and self.outage.started is not None
                and self.outage.first_ok_after is None
            ):
                self.outage.first_ok_after = moment - self.outage.started
        return code, answer


# -- the callers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    tasks: int
    callers: int
    seconds: float
    warmup_seconds: float
    restart_seconds: float
    pause: float
    duplicate_share: float = 0.05
    bad_share: float = 0.02
    run_share: float = 0.10  # reports of runs that never asked for a recommendation

    @property
    def total_seconds(self) -> float:
        return self.warmup_seconds + self.seconds


def caller(
    index: int, target: str, plan: Plan, law_of: list[Law], ledger: Ledger, stop: threading.Event
) -> None:
    rng = random.Random(index)
    with grpc.insecure_channel(target) as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        methods: dict[str, Callable[..., Any]] = {
            "Recommend": stub.Recommend,
            "ReportExecution": stub.ReportExecution,
            "ConfigureTask": stub.ConfigureTask,
            "Predict": stub.Predict,
            "GetTask": stub.GetTask,
        }
        for n in range(MAX_ITERATIONS):
            if stop.is_set() or ledger.now() > plan.total_seconds:
                return
            draw = rng.random()
            if draw < plan.bad_share:
                kind = rng.choice(BAD_KINDS)
                code, _ = ledger.call(
                    kind.method, methods[kind.method], kind.build(rng), kind.expected
                )
                with ledger.lock:
                    ledger.bad[(kind.name, code.name)] += 1
            elif draw < plan.bad_share + plan.duplicate_share and ledger.recent:
                with ledger.lock:
                    key, request = ledger.recent[rng.randrange(len(ledger.recent))]
                    ledger.duplicates_sent += 1
                code, answer = ledger.call("ReportExecution", stub.ReportExecution, request)
                if code == UNAVAILABLE:
                    with ledger.lock:
                        ledger.duplicates_unavailable += 1
                if code == OK:
                    with ledger.lock:
                        if answer.status == pb.REPORT_STATUS_DUPLICATE:
                            ledger.duplicates_answered += 1
                        else:
                            ledger.unexpected.append(f"re-sent report {key} applied again")
            else:
                code = run_once(stub, rng, f"c{index}-{n}", plan, law_of, ledger)
            # A caller that found the service down backs off, as the SDK does.
            backoff = 0.25 if code == UNAVAILABLE else plan.pause
            time.sleep(backoff * rng.uniform(0.5, 1.5))


def run_once(
    stub: advisor_pb2_grpc.AdvisorServiceStub,
    rng: random.Random,
    execution_id: str,
    plan: Plan,
    law_of: list[Law],
    ledger: Ledger,
) -> grpc.StatusCode:
    """One execution of a random task: ask (usually), run, report; the last status."""
    i = rng.randrange(plan.tasks)
    law = law_of[i]
    size = rng.uniform(5.0, 20.0) if law.sized else None
    if rng.random() < plan.run_share:
        s = rng.choice([1, 2, 4, 8, 16])
        request = pb.ReportExecutionRequest(
            run=pb.TaskRun(task=task_ref(i), parallelism=s),
            execution_id=execution_id,
            duration_seconds=law.seconds(s, size, rng),
            outcome=pb.OUTCOME_SUCCEEDED,
        )
    else:
        ask = pb.RecommendRequest(task=task_ref(i))
        if size is not None:
            ask.input_size = size
        code, recommendation = ledger.call("Recommend", stub.Recommend, ask)
        with ledger.lock:
            ledger.recommends += 1
        if code != OK:
            return code  # nothing ran; a lease opened by a lost answer expires by itself
        s = recommendation.parallelism
        request = pb.ReportExecutionRequest(
            recommendation_id=recommendation.recommendation_id,
            execution_id=execution_id,
            duration_seconds=law.seconds(s, size, rng),
            outcome=pb.OUTCOME_SUCCEEDED,
        )
    if size is not None:
        request.input_size = size
    key = (task_name(i), execution_id)
    with ledger.lock:
        ledger.in_doubt[key] = request
        ledger.reports += 1
    code, answer = ledger.call("ReportExecution", stub.ReportExecution, request)
    if code != OK:
        return code  # in doubt: re-sent after the traffic stops
    with ledger.lock:
        del ledger.in_doubt[key]
        ledger.acknowledged.add(key)
        ledger.recent.append((key, request))
        if answer.status != pb.REPORT_STATUS_APPLIED:
            ledger.unexpected.append(f"first report of {key} answered {answer.status}")
    return code


def resend_in_doubt(target: str, ledger: Ledger, timeout: float = 180.0) -> None:
    """Re-sends each report whose answer was lost until it is acknowledged."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        for key, request in sorted(ledger.in_doubt.items()):
            while True:
                try:
                    answer = stub.ReportExecution(request, timeout=CALL_TIMEOUT)
                    break
                except grpc.RpcError as error:
                    if error.code() != UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            ledger.acknowledged.add(key)
            ledger.resent += 1
            # DUPLICATE: the first attempt was stored, only its answer was lost.
            ledger.resent_stored_before += answer.status == pb.REPORT_STATUS_DUPLICATE
        ledger.in_doubt.clear()


def warm_up(target: str, plan: Plan, law_of: list[Law], ledger: Ledger) -> None:
    """Baseline and probe of every task, so that every model is loaded and learning."""
    lock = threading.Lock()
    pending = list(range(plan.tasks)) * 2

    def work(index: int) -> None:
        rng = random.Random(1000 + index)
        with grpc.insecure_channel(target) as channel:
            stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
            for n in range(MAX_ITERATIONS):
                with lock:
                    if not pending:
                        return
                    i = pending.pop()
                law = law_of[i]
                size = 10.0 if law.sized else None
                ask = pb.RecommendRequest(task=task_ref(i))
                if size is not None:
                    ask.input_size = size
                code, recommendation = ledger.call("Recommend", stub.Recommend, ask)
                if code != OK:
                    continue
                execution_id = f"warm{index}-{n}"
                request = pb.ReportExecutionRequest(
                    recommendation_id=recommendation.recommendation_id,
                    execution_id=execution_id,
                    duration_seconds=law.seconds(recommendation.parallelism, size, rng),
                    outcome=pb.OUTCOME_SUCCEEDED,
                )
                code, _ = ledger.call("ReportExecution", stub.ReportExecution, request)
                key = (task_name(i), execution_id)
                with ledger.lock:
                    ledger.warmup_reports += 1
                    if code == OK:
                        ledger.acknowledged.add(key)
                    else:
                        ledger.in_doubt[key] = request

    threads = [threading.Thread(target=work, args=(i,)) for i in range(plan.callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def restart_database(
    pg: PostgresServer, at: float, down: float, ledger: Ledger, stop: threading.Event
) -> None:
    """Crashes PostgreSQL (immediate stop) at `at` seconds, starts it `down` seconds later."""
    while ledger.now() < at:
        if stop.wait(0.05):
            return
    ledger.outage.stopped = ledger.now()
    pg.stop("immediate")
    time.sleep(down)
    pg.start()
    ledger.outage.started = ledger.now()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


# -- replay check --------------------------------------------------------------------------


def check_replays(
    registry: Registry, target: str, sample: list[int], ledger: Ledger, timeout: float = 120.0
) -> list[str]:
    """Stored state against a serial replay, for a sample of tasks (once their refits land).

    A background refit that failed while the database was down is not retried; the
    task's next report catches it up. A sampled task still lagging after a while gets
    that report here (counted as `ledger.catch_up_reports`).
    """
    problems = []
    with grpc.insecure_channel(target) as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        for i in sample:
            deadline = time.monotonic() + timeout
            nudge_at = time.monotonic() + 15.0
            while True:
                record = registry.get_task(NS, task_name(i))
                if record is None:
                    problems.append(f"{task_name(i)} missing")
                    break
                if record.state.get("gp_version") == record.state.get("version"):
                    mismatch = replay_mismatch(registry, record, configured=0)
                    if mismatch is not None:
                        problems.append(mismatch)
                    break
                if time.monotonic() > deadline:
                    problems.append(f"{task_name(i)}: background refit never landed")
                    break
                if time.monotonic() > nudge_at:
                    nudge_at = math.inf
                    execution_id = f"catch-up-{i}"
                    stub.ReportExecution(
                        pb.ReportExecutionRequest(
                            run=pb.TaskRun(task=task_ref(i), parallelism=2),
                            execution_id=execution_id,
                            duration_seconds=50.0,
                            input_size=10.0,
                            outcome=pb.OUTCOME_SUCCEEDED,
                        ),
                        timeout=CALL_TIMEOUT,
                    )
                    ledger.acknowledged.add((task_name(i), execution_id))
                    ledger.catch_up_reports += 1
                time.sleep(0.2)
    return problems


def lost_refits(log: Path) -> int:
    """Background refits the server logged as failed (the database was down)."""
    try:
        return log.read_text(errors="replace").count("background refit failed")
    except OSError:
        return 0


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Result:
    plan: Plan
    ledger: Ledger
    audit: Audit
    replay_problems: list[str]
    replay_sample: int
    rss_warm: float
    rss_end: float
    rss_by_minute: dict[int, float]
    observations: int
    started_at: datetime
    lost_refits: int

    @property
    def rss_growth(self) -> float:
        return self.rss_end / self.rss_warm - 1

    @property
    def met(self) -> bool:
        return (
            not self.ledger.unexpected
            and self.audit.clean
            and not self.replay_problems
            and self.rss_growth < RSS_GROWTH_TARGET
            and self.ledger.outage.first_ok_after is not None
        )


def soak(plan: Plan, replay_sample: int) -> Result:
    started_at = datetime.now(UTC)
    law_of = laws(plan.tasks)
    pg = start_postgres_server()
    with tempfile.TemporaryDirectory(prefix="fanout-soak-") as scratch:
        try:
            url = pg.url(pg.create_database())
            Registry(url).ensure_schema(upgrade=True)
            server = ServerProcess(url, log_dir=Path(scratch), name="soak")
            try:
                server.wait_ready()
                return drive(plan, law_of, pg, server, url, replay_sample, started_at)
            finally:
                if server.process.poll() is None:
                    server.terminate()
        finally:
            pg.destroy()


def drive(
    plan: Plan,
    law_of: list[Law],
    pg: PostgresServer,
    server: ServerProcess,
    url: str,
    replay_sample: int,
    started_at: datetime,
) -> Result:
    ledger = Ledger(started=time.monotonic(), outage=Outage())
    print(f"warm-up: baseline and probe of {plan.tasks} tasks", flush=True)
    warm_up(server.target, plan, law_of, ledger)
    # The clock starts with the mixed traffic; what the warm-up pass acknowledged stays
    # in the audit.
    ledger.started = time.monotonic()
    ledger.samples.clear()
    ledger.statuses.clear()
    stop = threading.Event()
    crash_at = plan.warmup_seconds + (plan.seconds - plan.restart_seconds) / 2
    restart = threading.Thread(
        target=restart_database, args=(pg, crash_at, plan.restart_seconds, ledger, stop)
    )
    callers = [
        threading.Thread(target=caller, args=(i, server.target, plan, law_of, ledger, stop))
        for i in range(plan.callers)
    ]
    restart.start()
    for thread in callers:
        thread.start()
    rss_by_minute: dict[int, float] = {}
    rss_warm = math.nan
    while any(thread.is_alive() for thread in callers):
        time.sleep(0.5)
        moment = ledger.now()
        if math.isnan(rss_warm) and moment >= plan.warmup_seconds:
            rss_warm = rss_mb(server.process.pid)
            print(f"after warm-up: server RSS {rss_warm:.1f} MB", flush=True)
        rss_by_minute[int(moment // 60)] = rss_mb(server.process.pid)
    stop.set()
    restart.join()
    for thread in callers:
        thread.join()
    rss_end = rss_mb(server.process.pid)
    print(f"traffic done; re-sending {len(ledger.in_doubt)} reports left in doubt", flush=True)
    resend_in_doubt(server.target, ledger)
    registry = Registry(url)
    try:
        sample = random.Random(7).sample(range(plan.tasks), min(replay_sample, plan.tasks))
        problems = check_replays(registry, server.target, sample, ledger)
        result = audit(registry, NS, ledger.acknowledged)
        observations = result.stored
    finally:
        registry.dispose()
    return Result(
        plan,
        ledger,
        result,
        problems,
        len(sample),
        rss_warm,
        rss_end,
        rss_by_minute,
        observations,
        started_at,
        lost_refits(server.log_path),
    )


# -- the report ------------------------------------------------------------------------------


def minute_rows(result: Result) -> list[tuple[str, int, float, float, float]]:
    """(minute, answers, p50 ms, p99 ms, RSS MB) per minute of measured traffic."""
    by_minute: dict[int, list[float]] = {}
    for moment, ms in result.ledger.samples:
        by_minute.setdefault(int(moment // 60), []).append(ms)
    rows = []
    for minute in sorted(by_minute):
        values = by_minute[minute]
        rows.append(
            (
                f"{minute}-{minute + 1}",
                len(values),
                percentile(values, 0.5),
                percentile(values, 0.99),
                result.rss_by_minute.get(minute, math.nan),
            )
        )
    return rows


def fault_tests() -> list[tuple[str, str]]:
    """(test name, first docstring line) of every test in tests/test_faults.py."""
    tree = ast.parse(FAULT_TESTS.read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            doc = ast.get_docstring(node) or ""
            found.append((node.name, doc.split("\n\n")[0].replace("\n", " ")))
    return found


@dataclass(frozen=True)
class TestRun:
    summary: str
    outcomes: dict[str, str]  # test name (parameters kept) -> passed / failed / skipped


def run_tests() -> TestRun:
    """pytest on the fault and fuzz tests, after the soak (they start their own servers)."""
    with tempfile.TemporaryDirectory(prefix="fanout-soak-tests-") as scratch:
        report = Path(scratch) / "junit.xml"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/test_faults.py",
                "tests/test_fuzz.py",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        summary = lines[-1].strip("= ") if lines else f"pytest exited with {done.returncode}"
        outcomes: dict[str, str] = {}
        if report.exists():
            for case in ET.parse(report).iter("testcase"):
                state = "passed"
                if case.find("failure") is not None or case.find("error") is not None:
                    state = "failed"
                elif case.find("skipped") is not None:
                    state = "skipped"
                module = case.get("classname", "").rsplit(".", 1)[-1]
                outcomes[f"{module}::{case.get('name', '?')}"] = state
    return TestRun(re.sub(r"\s+", " ", summary), outcomes)


def render(result: Result, tests: TestRun | None) -> str:
    plan, ledger, checked = result.plan, result.ledger, result.audit
    answered = sum(ledger.statuses.values())
    ok = sum(n for (_, code), n in ledger.statuses.items() if code == "OK")
    outage = ledger.outage
    lines = [
        "# Reliability: soak, faults and hostile input",
        "",
        f"Generated by `make soak` (`benchmarks/soak.py --minutes {plan.seconds / 60:g}`) on "
        f"{result.started_at:%Y-%m-%d %H:%M} UTC, {platform.machine()} with "
        f"{_cores()} cores shared with other work. Every number below comes from that run; "
        "nothing was edited by hand.",
        "",
        "## Verdict",
        "",
        f"- Unexpected statuses: **{len(ledger.unexpected)}** (target 0).",
        f"- Server RSS growth after warm-up: **{result.rss_growth * 100:+.1f} %** "
        f"(target under {RSS_GROWTH_TARGET * 100:.0f} %).",
        f"- Audit: **{'clean' if checked.clean else 'NOT clean'}**: every acknowledged report "
        "stored exactly once, nothing stored that was not acknowledged.",
        f"- Serial replay of {result.replay_sample} sampled tasks: "
        f"**{'equal' if not result.replay_problems else 'DIFFERENT'}** to the stored state.",
        f"- All targets met: **{'yes' if result.met else 'no'}**.",
        "",
        "## Load held",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| measured traffic | {plan.seconds / 60:g} min after a {plan.warmup_seconds:.0f} s "
        "warm-up (baseline and probe of every task first) |",
        f"| tasks | {plan.tasks} |",
        f"| concurrent callers (loopback gRPC) | {plan.callers} |",
        f"| requests answered | {answered} ({answered / plan.total_seconds:.1f}/s), {ok} OK |",
        f"| recommendations asked | {ledger.recommends} |",
        f"| executions reported | {ledger.reports} (10 % without a recommendation), plus "
        f"{ledger.warmup_reports} in the warm-up pass |",
        f"| duplicate reports re-sent | {ledger.duplicates_sent}: "
        f"{ledger.duplicates_answered} answered DUPLICATE, "
        f"{ledger.duplicates_unavailable} met the outage (UNAVAILABLE) |",
        f"| bad requests | {sum(ledger.bad.values())} |",
        f"| observations stored | {result.observations} |",
        "",
        "Latency of every answer (all methods) and server memory, per minute:",
        "",
        "| minute | answers | p50 ms | p99 ms | server RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for minute, count, p50, p99, rss in minute_rows(result):
        lines.append(f"| {minute} | {count} | {p50:.1f} | {p99:.1f} | {rss:.1f} |")
    lines += [
        "",
        "Latency counts every answer of every method, bad requests included. A report "
        "refits its task's GP in the request when the background refit queue lags behind "
        "(as it does under this load); that cost grows with the task's window, so p99 "
        "climbs while windows fill (here "
        f"{result.observations / plan.tasks:.1f} stored runs per task at the end; W = 50).",
        "",
        "Answers by method and status (UNAVAILABLE is expected only from the crash until "
        f"{RECOVERY_GRACE:.0f} s after the restart; any other status a request may not get "
        "counts as unexpected):",
        "",
        "| method | status | answers |",
        "| --- | --- | --- |",
    ]
    for (method, code), count in sorted(ledger.statuses.items()):
        lines.append(f"| {method} | {code} | {count} |")
    lines += [
        "",
        "## Faults injected and survived",
        "",
        "| fault | injected | seen by callers | recovered |",
        "| --- | --- | --- | --- |",
    ]
    unavailable = sum(n for (_, code), n in ledger.statuses.items() if code == "UNAVAILABLE")
    if outage.stopped is not None and outage.started is not None:
        recovered = (
            f"first OK {outage.first_ok_after:.2f} s after the restart"
            if outage.first_ok_after is not None
            else "never"
        )
        lines.append(
            f"| PostgreSQL crashed (`pg_ctl stop -m immediate`), down "
            f"{outage.started - outage.stopped:.1f} s | at {outage.stopped:.0f} s of "
            f"{plan.total_seconds:.0f} s | {unavailable} UNAVAILABLE answers, "
            f"no other error status | {recovered}; {ledger.resent} reports whose answer "
            f"was lost re-sent ({ledger.resent_stored_before} had been stored, the rest "
            f"had not), each stored once; {result.lost_refits} background GP refits lost "
            "to the outage, caught up by each task's next report "
            f"({ledger.catch_up_reports} sent by the replay check) |"
        )
    lines += [
        "",
        "The fault tests (`tests/test_faults.py`) inject each fault on its own and check "
        "the outcome:",
        "",
    ]
    for name, doc in fault_tests():
        outcome = ""
        if tests is not None:
            states = sorted(
                {
                    state
                    for case, state in tests.outcomes.items()
                    if case.split("[")[0] == f"test_faults::{name}"
                }
            )
            outcome = f" ({', '.join(states) or 'not run'})"
        lines.append(f"- `{name}`{outcome}: {doc}")
    lines += [
        "",
        "## Bad inputs tried",
        "",
        "During the soak, about 2 % of requests were malformed on purpose:",
        "",
        "| bad input | method | sent | answers |",
        "| --- | --- | --- | --- |",
    ]
    for kind in BAD_KINDS:
        answers = {code: n for (name, code), n in ledger.bad.items() if name == kind.name}
        text = ", ".join(f"{code} {n}" for code, n in sorted(answers.items())) or "-"
        lines.append(f"| {kind.name} | {kind.method} | {sum(answers.values())} | {text} |")
    lines += [
        "",
        "`tests/test_fuzz.py` goes further: a property-based fuzzer (hypothesis) sends every "
        "RPC NaN, infinities, huge, negative, zero and subnormal numbers, empty, 1 MB and "
        "over-limit strings, unicode with control characters and NUL, unknown ids, unset "
        "and out-of-range enums and oversized Predict batches; it accepts only OK, "
        "INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and RESOURCE_EXHAUSTED, checks the "
        "server stays SERVING, and checks the registry after every request (observations "
        "well-formed and unique, every stored model loadable, counts only growing, a refused "
        "request changing nothing). It draws the same examples on every run, so that CI "
        "cannot fail by the luck of the draw; `FANOUT_FUZZ_RANDOM=1` draws new ones and "
        "`FANOUT_FUZZ_EXAMPLES` sets how many per RPC.",
        "",
        "## Audit",
        "",
        "| acknowledged reports | stored | missing | stored twice | stored, never acknowledged "
        "| re-sent after a lost answer |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {checked.acknowledged} | {checked.stored} | {len(checked.missing)} | "
        f"{len(checked.duplicated)} | {len(checked.unexpected)} | {ledger.resent} |",
        "",
    ]
    if ledger.unexpected:
        lines += ["Unexpected answers (first 10):", ""]
        lines += [f"- {line}" for line in ledger.unexpected[:10]]
        lines.append("")
    if result.replay_problems:
        lines += ["Replay differences:", ""]
        lines += [f"- {line}" for line in result.replay_problems[:10]]
        lines.append("")
    if tests is not None:
        lines += [
            "## Test run",
            "",
            f"`pytest tests/test_faults.py tests/test_fuzz.py` after the soak: {tests.summary}.",
            "",
            "| test | outcome |",
            "| --- | --- |",
        ]
        lines += [f"| `{case}` | {state} |" for case, state in sorted(tests.outcomes.items())]
        lines.append("")
    return "\n".join(lines)


def _cores() -> int:
    return os.cpu_count() or 1


def print_summary(result: Result) -> None:
    ledger = result.ledger
    print()
    print(f"requests answered: {sum(ledger.statuses.values())}")
    for (method, code), count in sorted(ledger.statuses.items()):
        print(f"  {method:<16} {code:<20} {count:>8}")
    print("minute    answers   p50 ms   p99 ms   RSS MB")
    for minute, count, p50, p99, rss in minute_rows(result):
        print(f"{minute:<8} {count:>8} {p50:>8.1f} {p99:>8.1f} {rss:>8.1f}")
    print(
        f"server RSS: {result.rss_warm:.1f} MB after warm-up, {result.rss_end:.1f} MB at end "
        f"({result.rss_growth * 100:+.1f} %)"
    )
    outage = ledger.outage
    if outage.stopped is None or outage.started is None:
        print("database restart did not happen")
    else:
        back = "never" if outage.first_ok_after is None else f"{outage.first_ok_after:.1f} s"
        print(
            f"database down {outage.stopped:.1f}-{outage.started:.1f} s; first OK {back} "
            f"after the restart; {ledger.resent} reports re-sent "
            f"({ledger.resent_stored_before} had been stored)"
        )
    print(
        f"background refits lost to the outage: {result.lost_refits}; catch-up reports "
        f"sent by the replay check: {ledger.catch_up_reports}"
    )
    print(f"bad requests: {sum(ledger.bad.values())}; duplicates: {ledger.duplicates_sent}")
    print(f"audit: {result.audit.describe()}")
    print(f"replay of {result.replay_sample} tasks: {result.replay_problems or 'equal'}")
    print(f"unexpected statuses: {len(ledger.unexpected)}")
    for line in ledger.unexpected[:10]:
        print(f"  {line}")
    print(f"targets met: {'yes' if result.met else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="measured traffic (default 3)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--callers", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--restart-seconds", type=float, default=4.0, help="database downtime")
    parser.add_argument(
        "--pause", type=float, default=0.02, help="mean pause of a caller between requests (s)"
    )
    parser.add_argument("--replay-sample", type=int, default=3, help="tasks checked by replay")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the report")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument(
        "--skip-tests", action="store_true", help="do not run the fault and fuzz tests after"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.tasks < 1 or args.callers < 1:
        parser.error("--minutes, --tasks and --callers must be positive")
    seconds = args.minutes * 60
    plan = Plan(
        tasks=args.tasks,
        callers=args.callers,
        seconds=seconds,
        warmup_seconds=min(30.0, max(5.0, 0.15 * seconds)),
        restart_seconds=args.restart_seconds,
        pause=args.pause,
    )
    result = soak(plan, args.replay_sample)
    print_summary(result)
    tests = None
    if not args.skip_tests:
        print("\nrunning tests/test_faults.py and tests/test_fuzz.py ...", flush=True)
        tests = run_tests()
        print(tests.summary)
    if not args.no_doc:
        args.doc.write_text(render(result, tests))
        print(f"wrote {args.doc.relative_to(ROOT) if args.doc.is_relative_to(ROOT) else args.doc}")
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
