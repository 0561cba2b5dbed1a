"""Step helpers: chunk groups for withParam, RFC 3339 times, Argo phases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout_client.argo import argo_succeeded, duration_between, parse_rfc3339, split_chunks


def test_split_examples() -> None:
    assert split_chunks(10, 4) == [
        {"group": 0, "chunks": "0,1,2"},
        {"group": 1, "chunks": "3,4,5"},
        {"group": 2, "chunks": "6,7"},
        {"group": 3, "chunks": "8,9"},
    ]
    assert split_chunks(3, 8) == [
        {"group": 0, "chunks": "0"},
        {"group": 1, "chunks": "1"},
        {"group": 2, "chunks": "2"},
    ]
    assert split_chunks(5, 1) == [{"group": 0, "chunks": "0,1,2,3,4"}]


@given(chunks=st.integers(1, 400), parallelism=st.integers(1, 80))
def test_split_is_contiguous_near_equal_and_never_empty(chunks: int, parallelism: int) -> None:
    groups = split_chunks(chunks, parallelism)
    assert len(groups) == min(chunks, parallelism)
    assert [g["group"] for g in groups] == list(range(len(groups)))
    members = [[int(i) for i in g["chunks"].split(",")] for g in groups]
    assert [i for group in members for i in group] == list(range(chunks))
    sizes = [len(group) for group in members]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("chunks", "parallelism"), [(0, 3), (3, 0), (-1, 2), (True, 2)])
def test_split_refuses_bad_counts(chunks: int, parallelism: int) -> None:
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        split_chunks(chunks, parallelism)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:00:00Z", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),
        ("2026-11-23t10:00:00z", datetime(2026, 11, 23, 10, 0, tzinfo=UTC)),
        ("2026-11-23T10:00:00.25Z", datetime(2026, 11, 23, 10, 0, 0, 250000, tzinfo=UTC)),
        (
            "2026-11-23T10:00:00.123456789Z",
            datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC),
        ),
        (
            "2026-11-23T12:30:00+02:30",
            datetime(2026, 11, 23, 12, 30, tzinfo=timezone(timedelta(hours=2, minutes=30))),
        ),
        (
            "2026-11-23 05:00:00-05:00",
            datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        ),
    ],
)
def test_rfc3339_forms(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T10:00:00",  # no offset: ambiguous
        "2026-11-23",
        "2026-13-01T00:00:00Z",
        "2026-11-23T10:00:00+2:00",
        "{{tasks.stage.startedAt}}",
        "",
    ],
)
def test_rfc3339_rejections(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|valid date"):
        parse_rfc3339(text)


def test_duration_between() -> None:
    start = parse_rfc3339("2026-11-23T10:00:00Z")
    assert duration_between(start, parse_rfc3339("2026-11-23T11:00:01+01:00")) == 1.0
    with pytest.raises(ValueError, match="must be after"):
        duration_between(start, start)


@pytest.mark.parametrize(
    ("phase", "succeeded"),
    [("Succeeded", True), ("succeeded", True), ("Failed", False), ("Error", False)],
)
def test_argo_phases(phase: str, succeeded: bool) -> None:
    assert argo_succeeded(phase) is succeeded


@pytest.mark.parametrize("phase", ["Running", "Omitted", ""])
def test_argo_phases_that_end_nothing(phase: str) -> None:
    with pytest.raises(ValueError, match="Succeeded, Failed or Error"):
        argo_succeeded(phase)
