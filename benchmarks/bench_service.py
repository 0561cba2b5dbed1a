"""Service figures over loopback gRPC against a server child process (issue 3 targets).

The floor is the gRPC health service's `Check`, a no-op unary RPC on the same server.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_engine import warm_model  # noqa: E402

from fanout.storage import Registry  # noqa: E402
from fanout.v1 import advisor_pb2 as pb  # noqa: E402
from fanout.v1 import advisor_pb2_grpc  # noqa: E402
from tests.postgres import start_postgres_server  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

NS = "bench"
CALLS = 2000
CONCURRENT = 16
ROUNDS = 10


def latencies(call: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(make_call: Callable[[], Callable[[], Any]], callers: int, per_caller: int) -> float:
    barrier = threading.Barrier(callers + 1)

    def run() -> None:
        call = make_call()
        barrier.wait()
        for _ in range(per_caller):
            call()

    threads = [threading.Thread(target=run) for _ in range(callers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return callers * per_caller / (time.perf_counter() - start)


def seed_tasks(url: str, count: int) -> None:
    """`count` tasks with full W = 50 windows, written straight into the registry."""
    model = warm_model()
    registry = Registry(url)
    registry.ensure_schema(upgrade=True)
    try:
        for i in range(count):
            with registry.task_transaction(
                NS, f"wf/task-{i}", create_config=model.config.to_dict()
            ) as tx:
                tx.save(state=model.state_dict())
    finally:
        registry.dispose()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_rss_mb(pid: int) -> float:
    """Resident memory of a process's children: the server's refit workers (and
    multiprocessing's resource tracker)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


def measure(url: str, log_dir: Path, *, label: str, tasks: int) -> dict[str, float]:
    """Latencies on task-0; reports spread over the first 100 tasks; RSS with all loaded."""
    seed_tasks(url, tasks)
    server = ServerProcess(url, log_dir=log_dir, name=label)
    server.wait_ready()
    figures: dict[str, float] = {}
    try:
        channel = grpc.insecure_channel(server.target)
        health = health_pb2_grpc.HealthStub(channel)
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        task = pb.TaskRef(namespace=NS, workflow="wf", task="task-0")
        noop_request = health_pb2.HealthCheckRequest()
        recommend_request = pb.RecommendRequest(task=task, input_size=120.0)

        def noop() -> Any:
            return health.Check(noop_request)

        def recommend() -> Any:
            return stub.Recommend(recommend_request)

        latencies(noop, 200)
        latencies(recommend, 200)
        # Floor and subject in alternating rounds, so that both meet the same machine:
        # here a call is faster while another process keeps the cores awake (such as
        # the server's refit worker starting) than on an idle machine.
        noop_ms, recommend_ms = [], []
        for _ in range(ROUNDS):
            noop_ms += latencies(noop, CALLS // ROUNDS)
            recommend_ms += latencies(recommend, CALLS // ROUNDS)
        figures["noop_p50_ms"] = statistics.median(noop_ms)
        figures["recommend_p50_ms"] = statistics.median(recommend_ms)
        figures["recommend_p99_ms"] = percentile(recommend_ms, 0.99)

        def own_channel(rpc: str) -> Callable[[], Any]:
            ch = grpc.insecure_channel(server.target)
            if rpc == "noop":
                h = health_pb2_grpc.HealthStub(ch)
                return lambda: h.Check(noop_request)
            s = advisor_pb2_grpc.AdvisorServiceStub(ch)
            return lambda: s.Recommend(recommend_request)

        noop_qps, recommend_qps = [], []
        for _ in range(3):
            noop_qps.append(throughput(lambda: own_channel("noop"), CONCURRENT, 50))
            recommend_qps.append(throughput(lambda: own_channel("rec"), CONCURRENT, 50))
        figures["noop_qps_16"] = statistics.median(noop_qps)
        figures["recommend_qps_16"] = statistics.median(recommend_qps)

        # Reports spread over many tasks, as real exit hooks arrive: each task's GP
        # refit runs in the background between its reports.
        spread = min(tasks, 100)
        counter = iter(range(10**9))

        def report() -> Any:
            n = next(counter)
            return stub.ReportExecution(
                pb.ReportExecutionRequest(
                    run=pb.TaskRun(
                        task=pb.TaskRef(namespace=NS, workflow="wf", task=f"task-{n % spread}"),
                        parallelism=8,
                    ),
                    execution_id=f"{label}-{n}",
                    duration_seconds=60.0 + (n % 7),
                    input_size=120.0,
                    outcome=pb.OUTCOME_SUCCEEDED,
                )
            )

        # Paced like exit hooks of real runs: each report's background GP refit
        # (about 40 ms of CPU) lands before the same task reports again, so this
        # measures the report path itself. Back to back, refits would queue up.
        # One report per task first, unmeasured: a long-running server has every
        # task's model parsed and its GP posterior built; a fresh one builds them on
        # a task's first report.
        for _ in range(spread):
            report()
            time.sleep(0.05)
        # The floor of a paced call: on a machine whose cores idle between calls, waking
        # the client's and the server's threads costs more than the call itself.
        report_ms, paced_noop_ms = [], []
        for _ in range(200):
            report_ms += latencies(report, 1)
            time.sleep(0.1)
            paced_noop_ms += latencies(noop, 1)
            time.sleep(0.1)
        figures["report_p50_ms"] = statistics.median(report_ms)
        figures["paced_noop_p50_ms"] = statistics.median(paced_noop_ms)
        if tasks >= 1000:
            for i in range(tasks):
                stub.Recommend(
                    pb.RecommendRequest(
                        task=pb.TaskRef(namespace=NS, workflow="wf", task=f"task-{i}")
                    )
                )
            figures["rss_mb_1000_tasks"] = rss_mb(server.process.pid)
            figures["rss_mb_refit_workers"] = children_rss_mb(server.process.pid)
        channel.close()
    finally:
        server.terminate()
    return figures


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as scratch:
        log_dir = Path(scratch)
        sqlite = measure(
            f"sqlite:///{log_dir / 'bench.sqlite3'}", log_dir, label="sqlite", tasks=1000
        )
        postgres_server = start_postgres_server()
        try:
            postgres = measure(
                postgres_server.url(postgres_server.create_database()),
                log_dir,
                label="postgres",
                tasks=100,
            )
        finally:
            postgres_server.destroy()
    print(f"{'figure':<34} {'SQLite':>10} {'PostgreSQL':>12}")
    for key in (
        "noop_p50_ms",
        "recommend_p50_ms",
        "recommend_p99_ms",
        "report_p50_ms",
        "paced_noop_p50_ms",
        "noop_qps_16",
        "recommend_qps_16",
    ):
        print(f"{key:<34} {sqlite[key]:>10.3f} {postgres[key]:>12.3f}")
    print(f"{'server RSS, 1,000 warm tasks (MB)':<34} {sqlite['rss_mb_1000_tasks']:>10.1f}")
    print(f"{'its refit workers, RSS (MB)':<34} {sqlite['rss_mb_refit_workers']:>10.1f}")
    return {
        "recommend_p50_vs_noop": sqlite["recommend_p50_ms"] / sqlite["noop_p50_ms"],
        "recommend_p50_vs_noop_postgres": postgres["recommend_p50_ms"] / postgres["noop_p50_ms"],
        "recommend_p99_ms": sqlite["recommend_p99_ms"],
        "throughput_16_vs_noop": sqlite["recommend_qps_16"] / sqlite["noop_qps_16"],
        "report_p50_ms_postgres": postgres["report_p50_ms"],
        "paced_noop_p50_ms_postgres": postgres["paced_noop_p50_ms"],
        "rss_mb_1000_tasks": sqlite["rss_mb_1000_tasks"],
        "rss_mb_refit_workers": sqlite["rss_mb_refit_workers"],
    }
