"""The `fanout-client` step CLI: output, files, exit codes, against the fake server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fanout.v1 import advisor_pb2 as pb
from fanout_client.cli import main
from tests.fake_advisor import FakeAdvisor, sample_recommendation, serve_fake, unused_target


@pytest.fixture
def served() -> Iterator[tuple[FakeAdvisor, str]]:
    with serve_fake() as pair:
        yield pair


def run_cli(target: str, *argv: str) -> int:
    return main(["--target", target, "--namespace", "lab", *argv])


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "recommend" in capsys.readouterr().out
    for command in ("recommend", "report", "get-task", "list-tasks"):
        assert main([command, "--help"]) == 0
        assert f"usage: fanout-client {command}" in capsys.readouterr().out


def test_recommend_prints_the_width_alone(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = served
    fake.answer("Recommend", sample_recommendation(parallelism=6))
    code = run_cli(
        target,
        "recommend",
        "--task",
        "genome/frequency_EUR",
        "--model-key",
        "frequency-light",
        "--input-size",
        "12",
        "--min",
        "2",
        "--max",
        "16",
        "--urgency",
        "0.5",
        "--strategy",
        "efficiency",
        "--deadline-seconds",
        "300",
        "--confidence",
        "0.95",
    )
    assert code == 0
    assert capsys.readouterr().out == "6\n"
    (request,) = fake.requests_for("Recommend")
    assert (request.task.namespace, request.task.model_key) == ("lab", "frequency-light")
    assert (request.input_size, request.min_parallelism, request.max_parallelism) == (12, 2, 16)
    assert request.strategy == pb.STRATEGY_EFFICIENCY
    assert (request.deadline_seconds, request.confidence) == (300.0, 0.95)
    assert not request.HasField("cluster_load")


def test_recommend_json_and_files(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, target = served
    width_file, id_file = tmp_path / "width", tmp_path / "id"
    code = run_cli(
        target,
        "recommend",
        "--task",
        "genome/ind",
        "--json",
        "--output-file",
        str(width_file),
        "--id-file",
        str(id_file),
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["parallelism"] == 8
    assert document["phase"] == "OPTIMIZE"
    assert document["bounds"] == {"lower": 1, "upper": 8}
    assert len(document["candidates"]) == 8
    assert document["lease_expires_at"] == "2026-11-23T12:00:00+00:00"
    assert document["fallback"] is False
    assert width_file.read_text() == "8"
    assert id_file.read_text() == "rec-1"


def test_recommend_chunks_caps_the_width_and_writes_groups(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, target = served
    fake.answer("Recommend", sample_recommendation(parallelism=3))
    chunks_file = tmp_path / "groups.json"
    code = run_cli(
        target,
        "recommend",
        "--task",
        "genome/ind",
        "--max",
        "20",
        "--chunks",
        "7",
        "--chunks-file",
        str(chunks_file),
    )
    assert code == 0
    expected = [
        {"group": 0, "chunks": "0,1,2"},
        {"group": 1, "chunks": "3,4"},
        {"group": 2, "chunks": "5,6"},
    ]
    assert json.loads(capsys.readouterr().out) == expected
    assert json.loads(chunks_file.read_text()) == expected
    assert fake.requests_for("Recommend")[0].max_parallelism == 7


def test_recommend_falls_back_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    id_file = tmp_path / "id"
    code = main(
        [
            "--target",
            unused_target(),
            "--timeout",
            "1",
            "--retries",
            "0",
            "recommend",
            "--task",
            "genome/ind",
            "--default-parallelism",
            "4",
            "--id-file",
            str(id_file),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == "4\n"
    assert "warning" in captured.err
    assert "default parallelism 4" in captured.err
    assert id_file.read_text() == ""


def test_recommend_unreachable_without_default_exits_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        ["--target", unused_target(), "--retries", "0", "recommend", "--task", "genome/ind"]
    )
    assert code == 3
    assert "unreachable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--task", "genome"], "--task"),
        (["--task", "genome/ind", "--input-size", "0"], "--input-size"),
        (["--task", "genome/ind", "--min", "0"], "--min"),
        (["--task", "genome/ind", "--min", "5", "--max", "3"], "--min"),
        (["--task", "genome/ind", "--confidence", "1"], "--confidence"),
        (["--task", "genome/ind", "--chunks-file", "x"], "--chunks-file"),
        (["--task", "genome/ind", "--strategy", "cheap"], "--strategy"),
    ],
)
def test_recommend_bad_input_exits_2_naming_the_option(
    served: tuple[FakeAdvisor, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    option: str,
) -> None:
    fake, target = served
    assert run_cli(target, "recommend", *argv) == 2
    assert option in capsys.readouterr().err
    assert fake.calls() == []


def test_server_refusal_names_the_field(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = served
    fake.fail(
        "Recommend",
        grpc.StatusCode.INVALID_ARGUMENT,
        violations=(("urgency", "must be <= 10.0, got 11"),),
    )
    assert run_cli(target, "recommend", "--task", "genome/ind", "--urgency", "11") == 2
    assert "urgency: must be <= 10.0" in capsys.readouterr().err
    fake.fail("Recommend", grpc.StatusCode.PERMISSION_DENIED, "not yours")
    assert run_cli(target, "recommend", "--task", "genome/ind") == 1
    assert "not yours" in capsys.readouterr().err


# -- report -------------------------------------------------------------------------


def test_report_from_argo_times(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = served
    code = run_cli(
        target,
        "report",
        "--recommendation-id",
        "rec-1",
        "--execution-id",
        "wf-1-stage",
        "--started-at",
        "2026-11-23T10:00:00Z",
        "--finished-at",
        "2026-11-23T11:01:30.5+01:00",
        "--input-size",
        "32",
        "--outcome",
        "Succeeded",
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["applied"] is True
    (request,) = fake.requests_for("ReportExecution")
    assert request.recommendation_id == "rec-1"
    assert request.execution_id == "wf-1-stage"
    assert request.duration_seconds == pytest.approx(90.5)
    assert request.input_size == 32.0
    assert request.outcome == pb.OUTCOME_SUCCEEDED


@pytest.mark.parametrize(
    ("flags", "outcome"),
    [
        (["--outcome", "Failed"], pb.OUTCOME_FAILED),
        (["--outcome", "Error"], pb.OUTCOME_FAILED),
        (["--failed"], pb.OUTCOME_FAILED),
        ([], pb.OUTCOME_SUCCEEDED),
    ],
)
def test_report_outcomes(served: tuple[FakeAdvisor, str], flags: list[str], outcome: int) -> None:
    fake, target = served
    code = run_cli(
        target,
        "report",
        "--task",
        "genome/ind",
        "--parallelism",
        "4",
        "--execution-id",
        "e",
        "--duration-seconds",
        "12.5",
        *flags,
    )
    assert code == 0
    (request,) = fake.requests_for("ReportExecution")
    assert request.outcome == outcome
    assert request.run.parallelism == 4
    assert request.run.task.namespace == "lab"
    assert request.duration_seconds == 12.5


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (
            ["--started-at", "2026-11-23T10:00:05Z", "--finished-at", "2026-11-23T10:00:00Z"],
            "--finished-at",
        ),
        (["--started-at", "2026-11-23T10:00:00Z"], "--finished-at"),
        (["--started-at", "yesterday", "--finished-at", "2026-11-23T10:00:00Z"], "--started-at"),
        (["--duration-seconds", "0"], "--duration-seconds"),
        (["--duration-seconds", "3", "--outcome", "Running"], "--outcome"),
        (
            ["--duration-seconds", "3", "--started-at", "2026-11-23T10:00:00Z"],
            "--duration-seconds",
        ),
        (["--duration-seconds", "3", "--parallelism", "2"], "--parallelism"),
        (["--duration-seconds", "3", "--failed", "--outcome", "Failed"], "--outcome"),
    ],
)
def test_report_bad_input_exits_2(
    served: tuple[FakeAdvisor, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    option: str,
) -> None:
    fake, target = served
    code = run_cli(target, "report", "--recommendation-id", "r", "--execution-id", "e", *argv)
    assert code == 2
    assert option in capsys.readouterr().err
    assert fake.calls() == []


def test_report_task_needs_parallelism(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = served
    code = run_cli(
        target, "report", "--task", "genome/ind", "--execution-id", "e", "--duration-seconds", "1"
    )
    assert code == 2
    assert "--parallelism" in capsys.readouterr().err
    assert fake.calls() == []


@pytest.mark.parametrize(("strict", "expected"), [(False, 0), (True, 3)])
def test_report_while_unreachable(
    capsys: pytest.CaptureFixture[str], strict: bool, expected: int
) -> None:
    argv = [
        "--target",
        unused_target(),
        "--timeout",
        "1",
        "--retries",
        "1",
        "report",
        "--recommendation-id",
        "rec-1",
        "--execution-id",
        "e",
        "--duration-seconds",
        "5",
    ]
    assert main(argv + (["--strict"] if strict else [])) == expected
    captured = capsys.readouterr()
    assert "unreachable" in captured.err
    assert captured.out == ""


# -- read commands and global options ------------------------------------------------


def test_get_and_list_tasks_print_json(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = served
    assert run_cli(target, "get-task", "--task", "genome/ind") == 0
    task = json.loads(capsys.readouterr().out)
    assert task["model_key"] == "genome/ind"
    assert task["model"]["p"] == pytest.approx(0.959)
    assert task["config"]["t1_seconds"] is None
    assert run_cli(target, "list-tasks") == 0
    assert [t["ref"]["task"] for t in json.loads(capsys.readouterr().out)] == ["ind"]
    assert run_cli(target, "list-tasks", "--all-namespaces") == 0
    capsys.readouterr()
    first, everywhere = fake.requests_for("ListTasks")
    assert first.namespace == "lab"
    assert not everywhere.HasField("namespace")


def test_get_task_not_found_exits_1(
    served: tuple[FakeAdvisor, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = served
    fake.fail("GetTask", grpc.StatusCode.NOT_FOUND, "no task lab/genome/x")
    assert run_cli(target, "get-task", "--task", "genome/x") == 1
    assert "no task" in capsys.readouterr().err


def test_environment_and_token_file(
    served: tuple[FakeAdvisor, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, target = served
    monkeypatch.setenv("FANOUT_TARGET", target)
    monkeypatch.setenv("FANOUT_NAMESPACE", "from-env")
    monkeypatch.setenv("FANOUT_TOKEN", "env-token")
    assert main(["get-task", "--task", "genome/ind"]) == 0
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    assert main(["--token-file", str(token_file), "get-task", "--task", "genome/ind"]) == 0
    capsys.readouterr()
    first, second = fake.received
    assert first.request.task.namespace == "from-env"
    assert first.metadata["authorization"] == "Bearer env-token"
    assert second.metadata["authorization"] == "Bearer file-token"
    assert main(["--token-file", str(tmp_path / "missing"), "list-tasks"]) == 2
    assert "--token-file" in capsys.readouterr().err
