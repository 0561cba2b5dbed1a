"""How much handler work issue 3's service targets leave room for (`make bench-budget`).

The child is a real `fanout` server whose `Recommend`, for the task named `BURN_TASK`,
answers a held copy of a real recommendation after spinning on the CPU for
`input_size` microseconds, holding the GIL as Python code does. Measured against the
no-op floor in alternating rounds, as `bench_service` does: where the `Recommend`
p50 and 16-caller throughput targets fall between those burns, and how much server
CPU per call (with 16 callers) a real `Recommend` adds to the no-op's.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_service import CONCURRENT, NS, latencies, seed_tasks, throughput  # noqa: E402

from fanout.server import app  # noqa: E402
from fanout.server.servicer import AdvisorServicer  # noqa: E402
from fanout.settings import Settings  # noqa: E402
from fanout.v1 import advisor_pb2 as pb  # noqa: E402
from fanout.v1 import advisor_pb2_grpc  # noqa: E402

BURN_TASK = "budget-burn"
BURNS_US = (0, 100, 200, 300)
ROUNDS = 6
CALLS_PER_ROUND = 200
PER_CALLER = 50


class BurningServicer(AdvisorServicer):
    """`Recommend` for `BURN_TASK`: a held real answer after `input_size` us of CPU."""

    _held: pb.RecommendResponse | None = None

    def Recommend(  # noqa: N802 - the proto's method name
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        if request.task.task != BURN_TASK:
            return super().Recommend(request, context)
        if self._held is None:
            real = pb.RecommendRequest(
                task=pb.TaskRef(namespace=NS, workflow="wf", task="task-0"), input_size=120.0
            )
            self._held = super().Recommend(real, context)
        until = time.thread_time() + request.input_size / 1e6
        while time.thread_time() < until:
            pass
        return self._held


def serve(database_url: str) -> None:
    """The child: serves until its standard input closes."""
    # `make_server` builds its servicer by this name; everything else is the real server.
    setattr(app, "AdvisorServicer", BurningServicer)  # noqa: B010
    running = app.make_server(Settings(listen="127.0.0.1:0", database_url=database_url))
    print(running.port, flush=True)
    sys.stdin.read()
    running.stop(1.0)


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, to the nanosecond (`/proc/PID/stat` counts ticks
    of 10 ms, too coarse for a round of calls): the sum over its threads."""
    total = 0
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((thread / "schedstat").read_text().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total / 1e9


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fanout-budget-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'budget.sqlite3'}"
        seed_tasks(url, 1)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            port = child.stdout.readline().strip()
            if not port.isdigit():
                raise RuntimeError(f"the server child did not start (exit {child.poll()})")
            target = f"127.0.0.1:{port}"
            return measure(target, child.pid)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)


def measure(target: str, pid: int) -> dict[str, float]:
    def caller(workload: str) -> Callable[[], Any]:
        channel = grpc.insecure_channel(target)
        if workload == "noop":
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest()
            return lambda: health.Check(check)
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        if workload == "recommend":
            task, size = "task-0", 120.0
        else:
            task, size = BURN_TASK, float(workload.removeprefix("burn_"))
        request = pb.RecommendRequest(
            task=pb.TaskRef(namespace=NS, workflow="wf", task=task), input_size=size
        )
        return lambda: stub.Recommend(request)

    workloads = ["noop", *(f"burn_{us}" for us in BURNS_US), "recommend"]
    callers = {name: caller(name) for name in workloads}
    p50: dict[str, list[float]] = {name: [] for name in workloads}
    cpu_us: dict[str, list[float]] = {name: [] for name in workloads}
    qps: dict[str, list[float]] = {name: [] for name in workloads}
    for name in workloads:
        latencies(callers[name], CALLS_PER_ROUND)
    for _ in range(ROUNDS):
        for name in workloads:
            p50[name].append(statistics.median(latencies(callers[name], CALLS_PER_ROUND)))
            before = cpu_seconds(pid)
            qps[name].append(throughput(partial(caller, name), CONCURRENT, PER_CALLER))
            cpu_us[name].append((cpu_seconds(pid) - before) / (CONCURRENT * PER_CALLER) * 1e6)
    floor_p50 = statistics.median(p50["noop"])
    floor_qps = statistics.median(qps["noop"])
    floor_cpu = statistics.median(cpu_us["noop"])
    figures: dict[str, float] = {}
    print(
        f"{'workload':<12} {'p50 ms':>8} {'/ no-op':>8} {'16 callers /s':>14} {'/ no-op':>8} "
        f"{'server CPU/call us':>19} {'- no-op':>8}"
    )
    for name in workloads:
        ms, cpu, rate = (statistics.median(x[name]) for x in (p50, cpu_us, qps))
        print(
            f"{name:<12} {ms:>8.3f} {ms / floor_p50:>8.2f} {rate:>14.0f} {rate / floor_qps:>8.2f} "
            f"{cpu:>19.0f} {cpu - floor_cpu:>8.0f}"
        )
        if name != "noop":
            figures[f"{name}_p50_vs_noop"] = ms / floor_p50
            figures[f"{name}_throughput_vs_noop"] = rate / floor_qps
            figures[f"{name}_extra_cpu_us"] = cpu - floor_cpu
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        print(json.dumps({k: round(v, 3) for k, v in run().items()}), flush=True)
