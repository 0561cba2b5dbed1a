"""Helpers for workflow steps: chunk groups for `withParam`, Argo times and phases."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import TypedDict

_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})"
)

#: Argo node/workflow phases that end a run, and whether the run succeeded.
ARGO_OUTCOMES = {"succeeded": True, "failed": False, "error": False}


class ChunkGroup(TypedDict):
    """One pod's share of the work: its group number and comma-separated chunk indices."""

    group: int
    chunks: str


def split_chunks(chunks: int, parallelism: int) -> list[ChunkGroup]:
    """Chunk indices `0..chunks-1` in `min(parallelism, chunks)` contiguous groups whose
    sizes differ by at most one (the larger groups first); no group is empty."""
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be an integer >= 1, got {chunks!r}")
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"parallelism must be an integer >= 1, got {parallelism!r}")
    groups = min(parallelism, chunks)
    size, larger = divmod(chunks, groups)
    result: list[ChunkGroup] = []
    start = 0
    for group in range(groups):
        end = start + size + (1 if group < larger else 0)
        result.append({"group": group, "chunks": ",".join(str(i) for i in range(start, end))})
        start = end
    return result


def parse_rfc3339(text: str) -> datetime:
    """A timezone-aware datetime from RFC 3339 text as Argo substitutes it
    (`2026-11-23T10:00:00Z`, with fractional seconds or a `+hh:mm` offset)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected an RFC 3339 time such as 2026-11-23T10:00:00Z, got {text!r}")
    offset = match["offset"]
    if offset in ("Z", "z"):
        zone = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"offset out of range in {text!r}")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        stamp = datetime.fromisoformat(f"{match['date']}T{match['time']}").replace(tzinfo=zone)
    except ValueError as error:
        raise ValueError(f"not a valid date and time: {text!r} ({error})") from error
    fraction = match["fraction"]
    if fraction:
        # Nanosecond digits beyond what datetime holds are dropped, not rounded up
        # into the next second.
        stamp += timedelta(microseconds=int(fraction[:6].ljust(6, "0")))
    return stamp


def duration_between(started: datetime, finished: datetime) -> float:
    """Seconds from `started` to `finished`; `ValueError` unless positive."""
    seconds = (finished - started).total_seconds()
    if seconds <= 0:
        raise ValueError(
            f"finished ({finished.isoformat()}) must be after started ({started.isoformat()})"
        )
    return seconds


def argo_succeeded(phase: str) -> bool:
    """Whether an Argo phase (`Succeeded`, `Failed`, `Error`; any case) is a success."""
    try:
        return ARGO_OUTCOMES[phase.strip().lower()]
    except KeyError:
        raise ValueError(f"expected Succeeded, Failed or Error, got {phase!r}") from None
