"""The Python SDK against an in-test fake server: request mapping, retries, fallback, errors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypedDict

import grpc
import pytest

from fanout.v1 import advisor_pb2 as pb
from fanout_client import (
    Advisor,
    AsyncAdvisor,
    DeadlineExceededError,
    FanoutError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Phase,
    PredictRow,
    Strategy,
    TaskRef,
    UnauthenticatedError,
    UnavailableError,
)
from fanout_client.errors import field_violations
from tests.fake_advisor import (
    FakeAdvisor,
    sample_recommendation,
    sample_summary,
    sample_task,
    serve_fake,
    start_server,
    unused_target,
)


class Backoff(TypedDict):
    backoff_seconds: float
    max_backoff_seconds: float


# Short pauses keep the retry tests quick.
FAST: Backoff = {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


@pytest.fixture
def fake_target() -> Iterator[tuple[FakeAdvisor, str]]:
    with serve_fake() as served:
        yield served


@pytest.fixture
def fake(fake_target: tuple[FakeAdvisor, str]) -> FakeAdvisor:
    return fake_target[0]


@pytest.fixture
def advisor(fake_target: tuple[FakeAdvisor, str]) -> Iterator[Advisor]:
    with Advisor(fake_target[1], namespace="lab", timeout=5.0, **FAST) as client:
        yield client


# -- recommend ----------------------------------------------------------------------


def test_recommend_sends_only_the_options_given(advisor: Advisor, fake: FakeAdvisor) -> None:
    advisor.recommend("genome/individuals")
    (request,) = fake.requests_for("Recommend")
    assert (request.task.namespace, request.task.workflow, request.task.task) == (
        "lab",
        "genome",
        "individuals",
    )
    assert not request.task.HasField("model_key")
    for name in ("input_size", "cluster_load", "urgency", "strategy", "deadline_seconds"):
        assert not request.HasField(name), name


def test_recommend_maps_every_option(advisor: Advisor, fake: FakeAdvisor) -> None:
    advisor.recommend(
        "genome/frequency_EUR",
        input_size=12.5,
        cluster_load=3,
        min_parallelism=2,
        max_parallelism=9,
        urgency=2.0,
        resource_exponent=0.75,
        deadline_seconds=120.0,
        confidence=0.9,
        strategy="EFFICIENCY",
        model_key="frequency-light",
        lease_seconds=600.0,
    )
    (request,) = fake.requests_for("Recommend")
    assert request.task.model_key == "frequency-light"
    assert request.input_size == 12.5
    assert request.cluster_load == 3.0
    assert (request.min_parallelism, request.max_parallelism) == (2, 9)
    assert (request.urgency, request.resource_exponent) == (2.0, 0.75)
    assert (request.deadline_seconds, request.confidence) == (120.0, 0.9)
    assert request.strategy == pb.STRATEGY_EFFICIENCY
    assert request.lease_seconds == 600.0


def test_recommend_reads_the_whole_response(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.answer("Recommend", sample_recommendation(parallelism=6))
    rec = advisor.recommend(TaskRef("other", "genome", "individuals"), input_size=48)
    assert fake.requests_for("Recommend")[0].task.namespace == "other"
    assert rec.id == "rec-1"
    assert rec.parallelism == 6
    assert (rec.predicted_seconds, rec.sd_seconds) == (47.0, 3.5)
    assert rec.phase is Phase.OPTIMIZE
    assert rec.bounds is not None
    assert (rec.bounds.lower, rec.bounds.upper) == (1, 6)
    assert [c.parallelism for c in rec.candidates] == [1, 2, 3, 4, 5, 6]
    assert rec.candidates[3].mean_seconds == pytest.approx(73.0)
    assert (rec.cluster_load, rec.gamma, rec.model_version) == (4.0, 1.5, 12)
    assert rec.lease_expires_at == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert rec.input_size == 48
    assert not rec.fallback
    with pytest.raises(AttributeError):
        rec.parallelism = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("task", "kwargs", "field"),
    [
        ("genome", {}, "task"),
        ("genome/a/b", {}, "task"),
        ("genome/ind", {"strategy": "fastest"}, "strategy"),
        ("genome/ind", {"input_size": float("nan")}, "input_size"),
        ("genome/ind", {"max_parallelism": 2.5}, "max_parallelism"),
    ],
)
def test_bad_recommend_arguments_send_nothing(
    advisor: Advisor, fake: FakeAdvisor, task: str, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.recommend(task, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert fake.calls() == []


def test_token_is_sent_as_bearer_metadata(fake_target: tuple[FakeAdvisor, str]) -> None:
    fake, target = fake_target
    with Advisor(target, token="s3cret\n") as client:
        client.get_task("genome/ind")
    assert fake.received[0].metadata["authorization"] == "Bearer s3cret"


# -- report -------------------------------------------------------------------------


def test_report_of_a_recommendation_quotes_its_id(advisor: Advisor, fake: FakeAdvisor) -> None:
    rec = advisor.recommend("genome/ind")
    result = advisor.report(rec, duration_seconds=61.5, startup_seconds=4.0, input_size=10)
    (request,) = fake.requests_for("ReportExecution")
    assert request.WhichOneof("target") == "recommendation_id"
    assert request.recommendation_id == "rec-1"
    assert request.duration_seconds == 61.5
    assert (request.startup_seconds, request.input_size) == (4.0, 10.0)
    assert request.outcome == pb.OUTCOME_SUCCEEDED
    assert uuid.UUID(request.execution_id).version == 4
    assert result.applied
    assert not result.duplicate
    assert result.model.p == pytest.approx(0.959)
    assert result.model.phase is Phase.OPTIMIZE
    assert result.model.window_capacity == 50


def test_report_of_a_task_run_needs_its_width(advisor: Advisor, fake: FakeAdvisor) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.report("genome/ind", duration_seconds=3.0)
    assert caught.value.field == "parallelism"
    assert fake.calls() == []

    advisor.report(
        "genome/ind",
        duration_seconds=3.0,
        parallelism=4,
        cluster_load=2.0,
        execution_id="run-7",
        succeeded=False,
    )
    (request,) = fake.requests_for("ReportExecution")
    assert request.WhichOneof("target") == "run"
    assert (request.run.task.namespace, request.run.task.task) == ("lab", "ind")
    assert (request.run.parallelism, request.run.cluster_load) == (4, 2.0)
    assert request.execution_id == "run-7"
    assert request.outcome == pb.OUTCOME_FAILED
    assert not request.HasField("input_size")


def test_report_by_recommendation_id(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.answer(
        "ReportExecution",
        pb.ReportExecutionResponse(status=pb.REPORT_STATUS_DUPLICATE, model=sample_summary()),
    )
    result = advisor.report(recommendation_id="rec-9", duration_seconds=1.0, execution_id="e")
    assert fake.requests_for("ReportExecution")[0].recommendation_id == "rec-9"
    assert result.duplicate
    assert not result.applied
    with pytest.raises(InvalidArgumentError):
        advisor.report("genome/ind", recommendation_id="rec-9", duration_seconds=1.0)
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.report(recommendation_id="rec-9", duration_seconds=-1.0)
    assert caught.value.field == "duration_seconds"


# -- the other calls ----------------------------------------------------------------


def test_predict_maps_rows_in_order(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.answer(
        "Predict",
        pb.PredictResponse(
            predictions=[
                pb.Prediction(mean_seconds=100.0, sd_seconds=5.0),
                pb.Prediction(mean_seconds=60.0, sd_seconds=4.0),
            ],
            model_version=3,
        ),
    )
    result = advisor.predict("genome/ind", [2, PredictRow(4, input_size=8.0, cluster_load=1.0)])
    (request,) = fake.requests_for("Predict")
    assert [row.parallelism for row in request.rows] == [2, 4]
    assert not request.rows[0].HasField("input_size")
    assert (request.rows[1].input_size, request.rows[1].cluster_load) == (8.0, 1.0)
    assert [p.mean_seconds for p in result.predictions] == [100.0, 60.0]
    assert result.model_version == 3
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.predict("genome/ind", [])
    assert caught.value.field == "rows"


def test_get_task_reads_config_presence_and_times(advisor: Advisor, fake: FakeAdvisor) -> None:
    task = advisor.get_task("genome/ind")
    assert fake.requests_for("GetTask")[0].task.workflow == "genome"
    assert task.ref == TaskRef("default", "genome", "ind")
    assert task.model_key == "genome/ind"
    assert task.config.alpha == 0.3
    assert task.config.window == 50
    assert task.config.t1_seconds is None  # not set on the wire
    assert task.model.t1_seconds == 292.0
    assert task.created_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_list_tasks_follows_page_tokens(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.answer(
        "ListTasks",
        pb.ListTasksResponse(
            tasks=[sample_task(task="a"), sample_task(task="b")], next_page_token="p2"
        ),
        pb.ListTasksResponse(tasks=[sample_task(task="c")]),
    )
    names = [t.ref.task for t in advisor.list_tasks("lab", page_size=2)]
    assert names == ["a", "b", "c"]
    first, second = fake.requests_for("ListTasks")
    assert (first.namespace, first.page_size, first.page_token) == ("lab", 2, "")
    assert second.page_token == "p2"
    list(advisor.list_tasks())
    assert not fake.requests_for("ListTasks")[2].HasField("namespace")


def test_configure_task_sends_only_fields_given(advisor: Advisor, fake: FakeAdvisor) -> None:
    advisor.configure_task("genome/ind", t1_seconds=292.0, window=30, default_strategy="cost")
    (request,) = fake.requests_for("ConfigureTask")
    set_fields = sorted(f.name for f, _ in request.config.ListFields())
    assert set_fields == ["default_strategy", "t1_seconds", "window"]
    assert request.config.default_strategy == pb.STRATEGY_COST
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.configure_task("genome/ind")
    assert caught.value.field == "config"
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.configure_task("genome/ind", default_strategy="cheap")
    assert caught.value.field == "default_strategy"
    assert len(fake.requests_for("ConfigureTask")) == 1


def test_reset_task_passes_forget_history(advisor: Advisor, fake: FakeAdvisor) -> None:
    advisor.reset_task("genome/ind")
    advisor.reset_task("genome/ind", forget_history=True)
    assert [r.forget_history for r in fake.requests_for("ResetTask")] == [False, True]


# -- run() --------------------------------------------------------------------------


def test_run_reports_success_with_the_block_time(advisor: Advisor, fake: FakeAdvisor) -> None:
    with advisor.run("genome/ind", input_size=32) as rec:
        assert rec.parallelism == 8
        time.sleep(0.05)
    assert fake.calls() == ["Recommend", "ReportExecution"]
    (report,) = fake.requests_for("ReportExecution")
    assert report.recommendation_id == "rec-1"
    assert report.outcome == pb.OUTCOME_SUCCEEDED
    assert 0.05 <= report.duration_seconds < 5.0


def test_run_reports_failure_and_reraises(advisor: Advisor, fake: FakeAdvisor) -> None:
    with pytest.raises(RuntimeError, match="stage broke"), advisor.run("genome/ind"):
        raise RuntimeError("stage broke")
    (report,) = fake.requests_for("ReportExecution")
    assert report.outcome == pb.OUTCOME_FAILED


def test_a_failed_report_never_masks_the_block(
    advisor: Advisor, fake: FakeAdvisor, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail("ReportExecution", grpc.StatusCode.INTERNAL, "db down", times=2)
    with caplog.at_level(logging.WARNING, logger="fanout_client"):
        with advisor.run("genome/ind"):
            pass
        with pytest.raises(KeyError), advisor.run("genome/ind"):
            raise KeyError("own error")
    assert sum("could not report" in r.getMessage() for r in caplog.records) == 2


def test_run_retries_a_report_with_one_execution_id(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.fail("ReportExecution", grpc.StatusCode.DEADLINE_EXCEEDED, times=1)
    with advisor.run("genome/ind"):
        pass
    first, second = fake.requests_for("ReportExecution")
    assert first.execution_id == second.execution_id


# -- retries ------------------------------------------------------------------------


def test_unavailable_is_retried_until_it_answers(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.fail("Recommend", grpc.StatusCode.UNAVAILABLE, times=2)
    rec = advisor.recommend("genome/ind")
    assert rec.parallelism == 8
    assert not rec.fallback
    assert fake.calls() == ["Recommend"] * 3


def test_retries_give_up_after_the_limit(fake_target: tuple[FakeAdvisor, str]) -> None:
    fake, target = fake_target
    fake.fail("GetTask", grpc.StatusCode.UNAVAILABLE, times=5)
    with Advisor(target, retries=1, **FAST) as client, pytest.raises(UnavailableError):
        client.get_task("genome/ind")
    assert fake.calls() == ["GetTask"] * 2


def test_deadline_exceeded_is_retried_only_when_idempotent(
    advisor: Advisor, fake: FakeAdvisor
) -> None:
    fake.fail("Recommend", grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(DeadlineExceededError):
        advisor.recommend("genome/ind")
    assert fake.calls() == ["Recommend"]
    fake.fail("GetTask", grpc.StatusCode.DEADLINE_EXCEEDED)
    advisor.get_task("genome/ind")
    assert fake.calls()[1:] == ["GetTask", "GetTask"]


def test_other_errors_are_not_retried(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.fail("GetTask", grpc.StatusCode.INTERNAL)
    with pytest.raises(FanoutError) as caught:
        advisor.get_task("genome/ind")
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert fake.calls() == ["GetTask"]


def test_a_restarted_server_is_reached_by_the_retries() -> None:
    fake = FakeAdvisor()
    server, port = start_server(fake)
    target = f"127.0.0.1:{port}"
    restarted: list[grpc.Server] = []
    try:
        with Advisor(target, retries=8, backoff_seconds=0.1, max_backoff_seconds=0.4) as client:
            client.get_task("genome/ind")
            server.stop(grace=None).wait()

            def restart() -> None:
                time.sleep(0.6)
                restarted.append(start_server(fake, port)[0])

            thread = threading.Thread(target=restart)
            thread.start()
            task = client.get_task("genome/ind")
            thread.join()
        assert task.ref.task == "ind"
        assert fake.calls() == ["GetTask", "GetTask"]
    finally:
        for again in restarted:
            again.stop(grace=None).wait()


# -- fallback -----------------------------------------------------------------------


def test_fallback_when_nothing_listens() -> None:
    with Advisor(unused_target(), timeout=1.0, retries=1, default_parallelism=3, **FAST) as client:
        rec = client.recommend("genome/ind", input_size=7)
        assert rec.fallback
        assert rec.parallelism == 3
        assert rec.id is None
        assert rec.phase is Phase.UNSPECIFIED
        assert rec.input_size == 7
        assert client.recommend("genome/ind", default_parallelism=5).parallelism == 5


def test_no_default_or_opted_out_raises() -> None:
    target = unused_target()
    with Advisor(target, timeout=1.0, retries=0) as client, pytest.raises(UnavailableError):
        client.recommend("genome/ind")
    with (
        Advisor(target, timeout=1.0, retries=0, default_parallelism=2, fallback=False) as client,
        pytest.raises(UnavailableError),
    ):
        client.recommend("genome/ind")


def test_fallback_is_not_used_for_a_refusal(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.fail("Recommend", grpc.StatusCode.NOT_FOUND)
    with pytest.raises(NotFoundError):
        advisor.recommend("genome/ind", default_parallelism=4)


def test_report_of_a_fallback_is_a_task_run(advisor: Advisor, fake: FakeAdvisor) -> None:
    with Advisor(unused_target(), timeout=1.0, retries=0, default_parallelism=3) as offline:
        rec = offline.recommend("genome/ind", input_size=9)
    advisor.report(rec, duration_seconds=12.0)
    (request,) = fake.requests_for("ReportExecution")
    assert request.WhichOneof("target") == "run"
    assert request.run.parallelism == 3
    assert request.run.task.namespace == "default"
    assert request.input_size == 9.0


# -- typed errors -------------------------------------------------------------------


def test_invalid_argument_names_the_field(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.fail(
        "ConfigureTask",
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad alpha",
        violations=(("config.alpha", "must be in (0, 1], got 0"),),
    )
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.configure_task("genome/ind", alpha=0.0)
    assert caught.value.field == "config.alpha"
    assert caught.value.description == "must be in (0, 1], got 0"
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_argument_without_detail(advisor: Advisor, fake: FakeAdvisor) -> None:
    fake.fail("GetTask", grpc.StatusCode.INVALID_ARGUMENT, "plain refusal")
    with pytest.raises(InvalidArgumentError) as caught:
        advisor.get_task("genome/ind")
    assert caught.value.field is None
    assert caught.value.description == "plain refusal"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
    ],
)
def test_status_codes_map_to_types(
    advisor: Advisor, fake: FakeAdvisor, code: grpc.StatusCode, error: type[FanoutError]
) -> None:
    fake.fail("GetTask", code, "nope")
    with pytest.raises(error) as caught:
        advisor.get_task("genome/ind")
    assert type(caught.value) is error
    assert "nope" in str(caught.value)


def test_garbled_status_details_are_ignored() -> None:
    assert field_violations([("grpc-status-details-bin", b"\xff\xff\xff")]) == []
    assert field_violations([("other", b"x")]) == []
    assert field_violations(None) == []


def test_client_settings_are_checked() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Advisor("127.0.0.1:1", timeout=0)
    assert caught.value.field == "timeout"
    with pytest.raises(InvalidArgumentError) as caught:
        Advisor("127.0.0.1:1", certificate_file="cert.pem")
    assert caught.value.field == "private_key_file"
    with pytest.raises(InvalidArgumentError) as caught:
        Advisor("127.0.0.1:1", default_parallelism=0)
    assert caught.value.field == "default_parallelism"


# -- AsyncAdvisor -------------------------------------------------------------------


def test_async_advisor_mirrors_the_blocking_one(fake_target: tuple[FakeAdvisor, str]) -> None:
    fake, target = fake_target
    fake.fail("Recommend", grpc.StatusCode.UNAVAILABLE)
    fake.answer(
        "ListTasks",
        pb.ListTasksResponse(tasks=[sample_task(task="a")], next_page_token="next"),
        pb.ListTasksResponse(tasks=[sample_task(task="b")]),
    )

    async def scenario() -> tuple[int, list[str], str]:
        async with AsyncAdvisor(target, namespace="lab", token="t", **FAST) as client:
            rec = await client.recommend("genome/ind", strategy=Strategy.COST)
            await client.report(rec, duration_seconds=2.0)
            names = [t.ref.task async for t in client.list_tasks()]
            with pytest.raises(ValueError, match="inner"):
                async with client.run("genome/ind"):
                    raise ValueError("inner")
            task = await client.configure_task("genome/ind", p=0.5)
            return rec.parallelism, names, task.model_key

    width, names, model_key = asyncio.run(scenario())
    assert width == 8
    assert names == ["a", "b"]
    assert model_key == "genome/ind"
    assert fake.calls() == [
        "Recommend",
        "Recommend",
        "ReportExecution",
        "ListTasks",
        "ListTasks",
        "Recommend",
        "ReportExecution",
        "ConfigureTask",
    ]
    assert fake.requests_for("Recommend")[0].strategy == pb.STRATEGY_COST
    assert fake.requests_for("ReportExecution")[1].outcome == pb.OUTCOME_FAILED
    assert fake.received[0].metadata["authorization"] == "Bearer t"


def test_async_fallback_and_typed_errors(fake_target: tuple[FakeAdvisor, str]) -> None:
    fake, target = fake_target
    fake.fail("GetTask", grpc.StatusCode.INVALID_ARGUMENT, violations=(("task.task", "empty"),))

    async def scenario() -> tuple[int, str | None]:
        async with AsyncAdvisor(
            unused_target(), timeout=1.0, retries=1, default_parallelism=2, **FAST
        ) as offline:
            rec = await offline.recommend("genome/ind")
        async with AsyncAdvisor(target) as client:
            try:
                await client.get_task("genome/ind")
            except InvalidArgumentError as error:
                return rec.parallelism if rec.fallback else -1, error.field
        return -1, None

    assert asyncio.run(scenario()) == (2, "task.task")
