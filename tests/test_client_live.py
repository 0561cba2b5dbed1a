"""The SDK and the step CLI against a real fanout server on loopback (no fakes).

Most tests share one in-process server on a SQLite file and keep apart by namespace; the
restart test runs `fanout serve` as a child process so it can be killed and started
again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import grpc
import pytest

import tests.servers
from fanout.server.app import RunningServer, make_server
from fanout.settings import Settings
from fanout.storage import Registry
from fanout.storage.records import ObservationRecord, TaskRecord
from fanout_client import (
    Advisor,
    AsyncAdvisor,
    InvalidArgumentError,
    NotFoundError,
    Phase,
    PredictRow,
    Recommendation,
    ReportResult,
    TaskRef,
    UnavailableError,
)
from fanout_client.cli import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, main
from tests.fake_advisor import unused_target
from tests.servers import ServerProcess

# The notes' individuals stage (SPEC 7): T1 = 292 s; a run at s = 4 taking 82 s.
T1 = 292.0
P_FROM_82_AT_4 = 4 / 3 * (1 - 82 / T1)


class Backoff(TypedDict):
    backoff_seconds: float
    max_backoff_seconds: float


FAST: Backoff = {"backoff_seconds": 0.02, "max_backoff_seconds": 0.1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    database = tmp_path_factory.mktemp("live") / "registry.sqlite3"
    running = make_server(Settings(listen="127.0.0.1:0", database_url=f"sqlite:///{database}"))
    try:
        yield running
    finally:
        running.stop(grace=1.0)


@pytest.fixture
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def namespace() -> str:
    """A namespace of the test's own, so tests sharing the server never see each other."""
    return f"live-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def advisor(target: str, namespace: str) -> Iterator[Advisor]:
    with Advisor(target, namespace=namespace, timeout=10.0, retries=2, **FAST) as client:
        yield client


def stored_task(server: RunningServer, namespace: str, model_key: str) -> TaskRecord:
    record = server.advisor.registry.get_task(namespace, model_key)
    assert record is not None, f"no task {namespace}/{model_key} in the registry"
    return record


def stored_observations(
    server: RunningServer, namespace: str, model_key: str
) -> list[ObservationRecord]:
    """Every observation of one model, failed runs included, oldest first."""
    record = stored_task(server, namespace, model_key)
    return server.advisor.registry.observations(record.id, succeeded_only=False)


def rpc_count(server: RunningServer, method: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "fanout_rpc_duration_seconds_count", {"method": method, "code": "OK"}
    )
    return value or 0.0


# -- SDK: recommend and report -------------------------------------------------------


def test_recommend_then_report_through_the_phases(
    advisor: Advisor, server: RunningServer, namespace: str
) -> None:
    first = advisor.recommend("genome/individuals", input_size=16, max_parallelism=8)
    assert (first.phase, first.parallelism, first.fallback) == (Phase.BASELINE, 1, False)
    assert first.id and first.task == TaskRef(namespace, "genome", "individuals")
    assert first.lease_expires_at is not None and first.lease_expires_at > datetime.now(UTC)
    assert not first.input_size_unknown
    lease = server.advisor.registry.get_lease(first.id)
    assert lease is not None and lease.closed_at is None and lease.parallelism == 1

    baseline = advisor.report(first, duration_seconds=T1)
    assert (baseline.applied, baseline.duplicate) == (True, False)
    assert baseline.model.t1_seconds == pytest.approx(T1)
    assert baseline.model.phase == Phase.PROBE
    lease = server.advisor.registry.get_lease(first.id)
    assert lease is not None and lease.closed_at is not None

    probe = advisor.recommend("genome/individuals", input_size=16, max_parallelism=8)
    assert (probe.phase, probe.parallelism) == (Phase.PROBE, 5)

    # A run at a width of its own choosing, reported against the task: SPEC 7's p0.
    unasked = advisor.report(
        "genome/individuals", parallelism=4, duration_seconds=82.0, input_size=16
    )
    assert unasked.applied
    assert unasked.model.p == pytest.approx(0.959, abs=5e-4)
    assert unasked.model.phase == Phase.OPTIMIZE

    observations = stored_observations(server, namespace, "genome/individuals")
    assert [(o.parallelism, o.duration_seconds) for o in observations] == [(1, T1), (4, 82.0)]
    assert observations[0].recommendation_id == first.id
    assert observations[1].recommendation_id is None
    assert all(o.outcome == "succeeded" and o.input_size == 16 for o in observations)


def test_a_repeated_execution_id_is_a_duplicate_and_changes_nothing(
    advisor: Advisor, server: RunningServer, namespace: str
) -> None:
    recommendation = advisor.recommend("genome/sifting")
    first = advisor.report(recommendation, duration_seconds=40.0, execution_id="run-7/sifting")
    again = advisor.report(recommendation, duration_seconds=99.0, execution_id="run-7/sifting")
    assert (first.applied, first.duplicate) == (True, False)
    assert (again.applied, again.duplicate) == (False, True)
    assert again.model.t1_seconds == first.model.t1_seconds == pytest.approx(40.0)
    assert again.model.version == first.model.version
    by_task = advisor.report(
        "genome/sifting", parallelism=1, duration_seconds=12.0, execution_id="run-7/sifting"
    )
    assert by_task.duplicate
    (observation,) = stored_observations(server, namespace, "genome/sifting")
    assert (observation.execution_id, observation.duration_seconds) == ("run-7/sifting", 40.0)


def test_configure_predict_and_decide_as_in_spec_7(advisor: Advisor) -> None:
    task = advisor.configure_task("genome/individuals", t1_seconds=T1, p=P_FROM_82_AT_4)
    assert task.model.phase == Phase.OPTIMIZE
    assert task.config.max_parallelism == 64
    # Only what is given changes: max_parallelism set alone keeps T1, p and alpha.
    task = advisor.configure_task("genome/individuals", max_parallelism=8)
    assert task.config.max_parallelism == 8
    assert task.model.t1_seconds == pytest.approx(T1)
    assert task.model.p == pytest.approx(P_FROM_82_AT_4)
    assert task.config.alpha == pytest.approx(0.3)

    result = advisor.predict(
        "genome/individuals", [2, 4, PredictRow(6), PredictRow(8, input_size=None)]
    )
    means = [p.mean_seconds for p in result.predictions]
    assert means == pytest.approx([152.0, 82.0, 58.7, 47.0], abs=0.05)
    assert all(p.sd_seconds > 0 for p in result.predictions)
    assert result.model_version == task.model.version

    decision = advisor.recommend("genome/individuals")
    assert (decision.phase, decision.parallelism) == (Phase.OPTIMIZE, 8)
    assert decision.bounds is not None and decision.bounds.upper == 8
    assert {c.parallelism for c in decision.candidates} == set(range(1, 9))


def test_get_task_and_list_tasks_across_pages(
    advisor: Advisor, server: RunningServer, namespace: str
) -> None:
    names = [f"stage-{i}" for i in range(5)]
    for name in names:
        advisor.configure_task(f"paging/{name}", window=20)
    shown = advisor.get_task("paging/stage-3")
    assert shown.ref == TaskRef(namespace, "paging", "stage-3", "paging/stage-3")
    assert shown.config.window == 20
    assert shown.model.phase == Phase.BASELINE and shown.model.t1_seconds is None

    calls_before = rpc_count(server, "ListTasks")
    listed = list(advisor.list_tasks(namespace, page_size=2))
    assert [t.ref.task for t in listed] == names
    assert rpc_count(server, "ListTasks") - calls_before == 3  # pages of 2, 2 and 1
    assert len(list(advisor.list_tasks(namespace))) == len(names)  # the default page size

    other = f"{namespace}-other"
    advisor.configure_task(TaskRef(other, "paging", "elsewhere"), window=10)
    everywhere = {(t.ref.namespace, t.ref.task) for t in advisor.list_tasks(None, page_size=3)}
    assert {(namespace, n) for n in names} | {(other, "elsewhere")} <= everywhere


def test_reset_task_forgets_the_model_and_optionally_the_history(
    advisor: Advisor, server: RunningServer, namespace: str
) -> None:
    recommendation = advisor.recommend("genome/merge")
    advisor.report(recommendation, duration_seconds=30.0)
    reset = advisor.reset_task("genome/merge")
    assert reset.model.phase == Phase.BASELINE and reset.model.t1_seconds is None
    assert len(stored_observations(server, namespace, "genome/merge")) == 1
    assert advisor.recommend("genome/merge").phase == Phase.BASELINE

    advisor.reset_task("genome/merge", forget_history=True)
    assert stored_observations(server, namespace, "genome/merge") == []


def test_run_reports_success_and_failure(
    advisor: Advisor, server: RunningServer, namespace: str
) -> None:
    with advisor.run("genome/frequency-EUR", model_key="frequency-light") as succeeded:
        time.sleep(0.05)
    with (
        pytest.raises(RuntimeError, match="shard 3 crashed"),
        advisor.run("genome/frequency-EAS", model_key="frequency-light") as failed,
    ):
        raise RuntimeError("shard 3 crashed")

    observations = stored_observations(server, namespace, "frequency-light")
    assert [(o.recommendation_id, o.outcome) for o in observations] == [
        (succeeded.id, "succeeded"),
        (failed.id, "failed"),
    ]
    assert observations[0].duration_seconds >= 0.05
    for recommendation in (succeeded, failed):
        assert recommendation.id is not None
        lease = server.advisor.registry.get_lease(recommendation.id)
        assert lease is not None and lease.closed_at is not None
    # The failed run closed its lease but taught the shared model nothing.
    model = advisor.get_task(TaskRef(namespace, "genome", "frequency-EAS", "frequency-light"))
    assert model.model.observations_total == 1


# -- SDK: failures -------------------------------------------------------------------


def test_the_servers_refusal_names_the_field_and_stores_nothing(
    advisor: Advisor, server: RunningServer, namespace: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        advisor.recommend("genome/individuals", urgency=0)
    assert refused.value.field == "urgency"
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "> 0" in refused.value.description

    with pytest.raises(InvalidArgumentError) as refused:
        advisor.configure_task("genome/individuals", alpha=5.0)
    assert refused.value.field == "config.alpha"
    assert server.advisor.registry.count_tasks(namespace=namespace) == 0

    with pytest.raises(NotFoundError) as missing:
        advisor.get_task("genome/never-seen")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFoundError):
        advisor.report(recommendation_id=str(uuid.uuid4()), duration_seconds=1.0)
    with pytest.raises(NotFoundError):
        advisor.reset_task("genome/never-seen")
    assert server.advisor.registry.count_tasks(namespace=namespace) == 0


def test_fallback_when_no_server_listens(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = unused_target()
    with Advisor(nowhere, namespace="lab", default_parallelism=4, retries=1, **FAST) as advisor:
        with caplog.at_level(logging.WARNING, logger="fanout_client"):
            recommendation = advisor.recommend("genome/individuals", input_size=16)
        assert recommendation.fallback and recommendation.parallelism == 4
        assert recommendation.id is None and recommendation.phase == Phase.UNSPECIFIED
        assert "unreachable" in caplog.text
        assert advisor.recommend("genome/individuals", default_parallelism=2).parallelism == 2

        # run() still runs the block at the default width; the lost report is only logged.
        ran: list[int] = []
        with advisor.run("genome/individuals") as chosen:
            ran.append(chosen.parallelism)
        assert ran == [4]
        with pytest.raises(UnavailableError):
            advisor.report(recommendation, duration_seconds=10.0)

    with (
        Advisor(
            nowhere, namespace="lab", default_parallelism=4, fallback=False, retries=0
        ) as strict,
        pytest.raises(UnavailableError),
    ):
        strict.recommend("genome/individuals")
    with (
        Advisor(nowhere, namespace="lab", retries=0) as no_default,
        pytest.raises(UnavailableError),
    ):
        no_default.recommend("genome/individuals")


def _report_in_background(advisor: Advisor, recommendation: Recommendation) -> dict[str, Any]:
    """Starts `advisor.report` on a thread; the dict gets its result or error, and the thread."""
    outcome: dict[str, Any] = {}

    def report() -> None:
        try:
            outcome["result"] = advisor.report(
                recommendation, duration_seconds=61.0, execution_id="restart/individuals"
            )
        except Exception as error:  # handed to the test thread, which asserts on it
            outcome["error"] = error

    outcome["thread"] = threading.Thread(target=report, daemon=True)
    outcome["thread"].start()
    return outcome


def test_a_report_retried_across_a_server_restart_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    first = ServerProcess(url, log_dir=tmp_path, name="before")
    first.wait_ready()
    caplog.set_level(logging.DEBUG, logger="fanout_client")
    # Generous retries with short pauses: the second server needs a few seconds to start.
    with Advisor(
        first.target, namespace="lab", retries=200, backoff_seconds=0.05, max_backoff_seconds=0.2
    ) as advisor:
        recommendation = advisor.recommend("genome/individuals")
        first.kill()

        pending = _report_in_background(advisor, recommendation)
        deadline = time.monotonic() + 10
        while "retry" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "retry" in caplog.text, "the report was not retried while the server was down"
        assert "result" not in pending

        monkeypatch.setattr(tests.servers, "free_port", lambda: first.port)
        second = ServerProcess(url, log_dir=tmp_path, name="after")
        try:
            assert second.target == first.target
            second.wait_ready()
            pending["thread"].join(timeout=60)
            assert not pending["thread"].is_alive(), "the report never finished"
            assert "error" not in pending, pending.get("error")
            result: ReportResult = pending["result"]
            assert (result.applied, result.duplicate) == (True, False)
            task = advisor.get_task("genome/individuals")
            assert task.model.observations_total == 1
            assert task.model.t1_seconds == pytest.approx(61.0)
            repeat = advisor.report(
                recommendation, duration_seconds=61.0, execution_id="restart/individuals"
            )
            assert repeat.duplicate
        finally:
            assert second.terminate() == 0
    registry = Registry(url)
    try:
        record = registry.get_task("lab", "genome/individuals")
        assert record is not None
        assert registry.count_observations(record.id) == 1
    finally:
        registry.dispose()


def test_async_advisor_flow(target: str, server: RunningServer, namespace: str) -> None:
    async def scenario() -> tuple[list[int], list[str], int]:
        async with AsyncAdvisor(target, namespace=namespace, **FAST) as advisor:
            widths = []
            baseline = await advisor.recommend("genome/individuals")
            widths.append(baseline.parallelism)
            result = await advisor.report(baseline, duration_seconds=T1)
            assert result.applied
            async with advisor.run("genome/individuals") as probe:
                widths.append(probe.parallelism)
            await advisor.report("genome/other", parallelism=2, duration_seconds=5.0)
            names = [task.ref.task async for task in advisor.list_tasks(namespace, page_size=1)]
            task = await advisor.get_task("genome/individuals")
            try:
                await advisor.get_task("genome/missing")
            except NotFoundError:
                pass
            else:
                raise AssertionError("an unknown task was found")
            return widths, names, task.model.observations_total

    widths, names, total = asyncio.run(scenario())
    assert widths == [1, 5]  # BASELINE, then the probe width (SPEC 3)
    assert names == ["individuals", "other"]
    assert total == 2
    observations = stored_observations(server, namespace, "genome/individuals")
    assert [o.parallelism for o in observations] == [1, 5]


# -- the step CLI ----------------------------------------------------------------------


def cli(target: str, namespace: str, *argv: str) -> list[str]:
    return ["--target", target, "--namespace", namespace, "--retries", "1", *argv]


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_cli_recommend_forms(
    target: str,
    namespace: str,
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(cli(target, namespace, "recommend", "--task", "genome/individuals")) == EXIT_OK
    assert capsys.readouterr().out == "1\n"

    assert (
        main(cli(target, namespace, "recommend", "--task", "genome/individuals", "--json"))
        == EXIT_OK
    )
    document = json.loads(capsys.readouterr().out)
    assert (document["parallelism"], document["phase"], document["fallback"]) == (
        1,
        "BASELINE",
        False,
    )
    assert server.advisor.registry.get_lease(document["id"]) is not None

    width_file, id_file = tmp_path / "width", tmp_path / "recommendation-id"
    argv = ["--task", "genome/individuals", "--output-file", str(width_file)]
    assert main(cli(target, namespace, "recommend", *argv, "--id-file", str(id_file))) == EXIT_OK
    printed = capsys.readouterr().out
    assert width_file.read_text() == printed.strip() == "1"
    lease = server.advisor.registry.get_lease(id_file.read_text())
    assert lease is not None and lease.parallelism == 1

    # A known model: SPEC 7's task decides s = 8 within --max 8; 10 chunks allow it.
    heavy_task = ["--task", "genome/heavy"]
    with Advisor(target, namespace=namespace) as advisor:
        advisor.configure_task("genome/heavy", t1_seconds=T1, p=P_FROM_82_AT_4)
    groups_file = tmp_path / "groups.json"
    argv = [*heavy_task, "--max", "8", "--chunks", "10", "--chunks-file", str(groups_file)]
    assert main(cli(target, namespace, "recommend", *argv)) == EXIT_OK
    groups = json.loads(capsys.readouterr().out)
    assert json.loads(groups_file.read_text()) == groups
    assert len(groups) == 8
    chunks = [int(c) for g in groups for c in g["chunks"].split(",")]
    assert chunks == list(range(10))
    # Fewer chunks than the model would like: the width is capped at the chunk count.
    assert main(cli(target, namespace, "recommend", *heavy_task, "--chunks", "3")) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == [
        {"group": 0, "chunks": "0"},
        {"group": 1, "chunks": "1"},
        {"group": 2, "chunks": "2"},
    ]


def test_cli_report_with_argo_times(
    target: str,
    namespace: str,
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    id_file = tmp_path / "recommendation-id"
    recommend = ["recommend", "--task", "genome/individuals", "--id-file", str(id_file)]
    assert main(cli(target, namespace, *recommend)) == EXIT_OK
    capsys.readouterr()
    started = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    report = [
        "report",
        "--recommendation-id",
        id_file.read_text(),
        "--execution-id",
        "wf-uid-1/individuals",
        "--started-at",
        rfc3339(started),
        "--finished-at",
        rfc3339(started + timedelta(seconds=83)),
        "--outcome",
        "Succeeded",
    ]
    assert main(cli(target, namespace, *report)) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert (printed["applied"], printed["duplicate"]) == (True, False)
    assert printed["model"]["t1_seconds"] == pytest.approx(83.0)
    assert main(cli(target, namespace, *report)) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["duplicate"] is True

    # A failed stage from a step that never asked, with an offset and fractions.
    failed = [
        "report",
        "--task",
        "genome/individuals",
        "--parallelism",
        "3",
        "--execution-id",
        "wf-uid-2/individuals",
        "--started-at",
        "2026-11-23T12:00:00.500+02:00",
        "--finished-at",
        "2026-11-23T10:00:30Z",
        "--outcome",
        "Error",
    ]
    assert main(cli(target, namespace, *failed)) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["applied"] is True
    observations = stored_observations(server, namespace, "genome/individuals")
    assert [
        (o.execution_id, o.parallelism, o.duration_seconds, o.outcome) for o in observations
    ] == [
        ("wf-uid-1/individuals", 1, 83.0, "succeeded"),
        ("wf-uid-2/individuals", 3, 29.5, "failed"),
    ]


def test_cli_report_while_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    argv = cli(unused_target(), "lab", "report", "--recommendation-id", "r-1")
    argv += ["--execution-id", "e-1", "--duration-seconds", "12"]
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out == "" and "unreachable" in captured.err and "not delivered" in captured.err
    assert main([*argv, "--strict"]) == EXIT_UNREACHABLE


def test_cli_refusals_from_the_server(
    target: str, namespace: str, server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recommend", "--task", "genome/individuals", "--urgency", "20"]
    assert main(cli(target, namespace, *argv)) == EXIT_USAGE
    assert "urgency" in capsys.readouterr().err
    assert server.advisor.registry.count_tasks(namespace=namespace) == 0
    assert main(cli(target, namespace, "get-task", "--task", "genome/missing")) == EXIT_REFUSED
    assert "NOT_FOUND" in capsys.readouterr().err


def test_cli_get_task_and_list_tasks(
    target: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Advisor(target, namespace=namespace) as advisor:
        advisor.report("genome/individuals", parallelism=1, duration_seconds=T1)
        eur = TaskRef(namespace, "genome", "frequency-EUR", "frequency-light")
        advisor.report(eur, parallelism=1, duration_seconds=55.0)
        advisor.configure_task(TaskRef(f"{namespace}-b", "genome", "sifting"), window=5)

    assert main(cli(target, namespace, "get-task", "--task", "genome/individuals")) == EXIT_OK
    task = json.loads(capsys.readouterr().out)
    assert task["model_key"] == "genome/individuals"
    assert task["model"]["t1_seconds"] == pytest.approx(T1)
    assert task["model"]["phase"] == "PROBE"

    argv = ["get-task", "--task", "genome/frequency-EAS", "--model-key", "frequency-light"]
    assert main(cli(target, namespace, *argv)) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["model"]["t1_seconds"] == pytest.approx(55.0)

    assert main(cli(target, namespace, "list-tasks", "--page-size", "1")) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert sorted(t["model_key"] for t in listed) == ["frequency-light", "genome/individuals"]
    assert main(cli(target, namespace, "list-tasks", "--all-namespaces")) == EXIT_OK
    everywhere = {
        (t["ref"]["namespace"], t["model_key"]) for t in json.loads(capsys.readouterr().out)
    }
    assert (f"{namespace}-b", "genome/sifting") in everywhere
    assert (namespace, "frequency-light") in everywhere
