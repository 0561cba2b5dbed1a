"""Operating the server: settings, shutdown, metrics, logs, outages, `fanout migrate`."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fanout.server.app import RunningServer, make_server
from fanout.server.housekeeping import WalCheckpointer
from fanout.server.logs import JsonFormatter
from fanout.settings import Settings, parse_settings
from fanout.storage import Registry, StaleSchemaError
from fanout.v1 import advisor_pb2 as pb
from fanout.v1 import advisor_pb2_grpc
from tests.postgres import PostgresServer
from tests.servers import ServerProcess

TASK = pb.TaskRef(namespace="ops", workflow="wf", task="t")


def test_flags_win_over_environment() -> None:
    env = {
        "FANOUT_LISTEN": "127.0.0.1:7000",
        "FANOUT_METRICS_PORT": "9100",
        "FANOUT_AUTO_MIGRATE": "false",
    }
    settings = parse_settings(["--listen", "127.0.0.1:7001"], env)
    assert settings.listen == "127.0.0.1:7001"
    assert settings.metrics_port == 9100
    assert settings.auto_migrate is False
    with pytest.raises(ValueError, match="FANOUT_AUTO_MIGRATE"):
        parse_settings([], {"FANOUT_AUTO_MIGRATE": "maybe"})


def test_plaintext_outside_loopback_needs_insecure(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    with pytest.raises(ValueError, match="--insecure"):
        make_server(Settings(listen="0.0.0.0:0", database_url=url))


def test_stale_schema_is_refused_with_the_command(postgres_url: str) -> None:
    with pytest.raises(StaleSchemaError, match="fanout migrate"):
        make_server(Settings(listen="127.0.0.1:0", database_url=postgres_url))


def test_fanout_migrate_then_serve(postgres_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fanout.cli", "migrate", "--database-url", postgres_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    running = make_server(Settings(listen="127.0.0.1:0", database_url=postgres_url))
    running.stop(grace=0.5)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    server = make_server(
        Settings(
            listen="127.0.0.1:0", metrics_port=0, database_url=f"sqlite:///{tmp_path / 'r.sqlite3'}"
        )
    )
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def test_startup_objects_are_frozen_out_of_garbage_collections(tmp_path: Path) -> None:
    """The imported libraries' objects are never walked again by a full collection."""
    script = (
        "import gc\n"
        "from fanout.server.app import make_server\n"
        "from fanout.settings import Settings\n"
        "assert gc.get_freeze_count() == 0\n"
        f"url = 'sqlite:///{tmp_path / 'r.sqlite3'}'\n"
        "settings = Settings(listen='127.0.0.1:0', database_url=url, refit_processes=0)\n"
        "server = make_server(settings)\n"
        "print(gc.get_freeze_count())\n"
        "server.stop(grace=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert int(done.stdout.split()[-1]) > 50_000


def test_the_registry_pools_a_connection_per_thread_that_uses_it(running: RunningServer) -> None:
    """Handlers, the refit queue, the load read and the purger."""
    registry = running.advisor.registry
    assert registry.pool_size == Settings().max_workers + 3
    assert registry._engine.pool.size() == registry.pool_size  # type: ignore[attr-defined]


def test_sqlite_checkpoints_run_beside_the_requests(running: RunningServer) -> None:
    """On SQLite the server checkpoints the WAL from a thread of its own, and its
    connections leave it to that thread until the WAL is ~40 MB; stopping ends it."""
    registry = running.advisor.registry
    assert registry.dialect == "sqlite"
    [checkpointer] = [w for w in running.housekeeping if isinstance(w, WalCheckpointer)]
    assert checkpointer._thread.is_alive()
    with registry._engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
    assert pages == 10_000
    running.stop(grace=0)
    assert not checkpointer._thread.is_alive()


def test_metrics_are_exposed(running: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        stub.Recommend(pb.RecommendRequest(task=TASK))
        with pytest.raises(grpc.RpcError):
            stub.GetTask(pb.GetTaskRequest(task=pb.TaskRef(namespace="ops")))
    body = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics").read()
    text = body.decode()
    assert 'fanout_rpc_duration_seconds_count{code="OK",method="Recommend"} 1.0' in text
    assert 'fanout_rpc_duration_seconds_count{code="INVALID_ARGUMENT",method="GetTask"} 1.0' in text
    assert 'fanout_decisions_total{phase="baseline"} 1.0' in text


def test_json_logs_carry_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"msg": "serving %s", "args": ("x",), "levelname": "INFO", "name": "fanout", "port": 5}
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "serving x"
    assert entry["port"] == 5


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'r.sqlite3'}",
        log_dir=tmp_path,
        extra=("--log-level", "INFO", "--log-format", "json"),
    )
    server.wait_ready()
    with grpc.insecure_channel(server.target) as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        stub.Recommend(pb.RecommendRequest(task=TASK))
    assert server.terminate() == 0
    messages = [json.loads(line)["message"] for line in server.log_path.read_text().splitlines()]
    assert "serving" in messages
    assert messages[-1] == "stopped"


def test_sigterm_during_the_start_stops_gracefully_once_up(tmp_path: Path) -> None:
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'r.sqlite3'}", log_dir=tmp_path, extra=("--log-level", "INFO")
    )
    deadline = time.monotonic() + 60
    # Migrating the new SQLite file: the start is under way, the server not up yet.
    while "Running upgrade" not in server.log_path.read_text(errors="replace"):
        assert server.process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    assert server.terminate() == 0
    log = server.log_path.read_text(errors="replace")
    assert "signal SIGTERM" in log and log.rstrip().endswith("stopped")


def test_sigusr1_dumps_every_threads_stack_and_serving_goes_on(tmp_path: Path) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 'r.sqlite3'}", log_dir=tmp_path)
    server.wait_ready()
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    # The main thread, waiting in `serve`, is dumped last.
    while " in serve\n" not in (dump := server.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no stack dump of the main thread in: {dump}"
        time.sleep(0.1)
    assert dump.count("Thread 0x") > 1
    with grpc.insecure_channel(server.target) as channel:
        answer = advisor_pb2_grpc.AdvisorServiceStub(channel).Recommend(
            pb.RecommendRequest(task=TASK)
        )
    assert answer.parallelism >= 1
    assert server.terminate() == 0


def test_database_outage_gives_unavailable_then_recovers(
    private_postgres_server: PostgresServer,
) -> None:
    pg = private_postgres_server
    url = pg.url(pg.create_database())
    Registry(url).ensure_schema(upgrade=True)
    running = make_server(Settings(listen="127.0.0.1:0", database_url=url))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            report = pb.ReportExecutionRequest(
                run=pb.TaskRun(task=TASK, parallelism=1),
                execution_id="e1",
                duration_seconds=10.0,
                outcome=pb.OUTCOME_SUCCEEDED,
            )
            stub.ReportExecution(report)
            pg.stop("immediate")
            for call, request in (
                (stub.Recommend, pb.RecommendRequest(task=TASK)),
                (stub.ReportExecution, report),
                (stub.GetTask, pb.GetTaskRequest(task=TASK)),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call(request, timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            # The process stays up and healthy; the database is what is missing.
            assert health.Check(health_pb2.HealthCheckRequest()).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            pg.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    again = stub.ReportExecution(report)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert again.status == pb.REPORT_STATUS_DUPLICATE  # stored once, before the outage
            assert again.model.observations_total == 1
    finally:
        running.stop(grace=0.5)


def test_refit_lost_to_an_outage_is_retried(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fanout.server import advisor as advisor_module
    from fanout.storage import RegistryUnavailableError

    monkeypatch.setattr(advisor_module, "REFIT_RETRY_SECONDS", 0.01)
    advisor = running.advisor
    assert advisor.refits is not None
    real_refit = advisor.refit
    calls: list[str] = []

    def flaky_refit(namespace: str, name: str) -> None:
        calls.append(name)
        if len(calls) <= 2:
            raise RegistryUnavailableError("database restarting")
        real_refit(namespace, name)

    monkeypatch.setattr(advisor, "refit", flaky_refit)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = advisor_pb2_grpc.AdvisorServiceStub(channel)
        stub.ReportExecution(
            pb.ReportExecutionRequest(
                run=pb.TaskRun(task=TASK, parallelism=1),
                execution_id="e1",
                duration_seconds=10.0,
                outcome=pb.OUTCOME_SUCCEEDED,
            )
        )
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert advisor.refits.wait_idle()
    assert calls == ["wf/t"] * 3
    record = advisor.registry.get_task("ops", "wf/t")
    assert record is not None
    assert record.state["gp_version"] == record.state["version"]
