"""`make demo` end to end with short settings: a live server, the SDK, plots written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fanout import demo


@pytest.mark.slow
def test_demo_runs_and_writes_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert demo.main(["--runs", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Summary" in printed
    assert "server stopped" in printed
    # Three runs of seven tasks: one table row each.
    rows = re.findall(r"^\s*\d+\s+\S+\s+(?:BASELINE|PROBE|OPTIMIZE)\s", printed, re.MULTILINE)
    assert len(rows) == 21
    for name in ("learning-curve.png", "predicted-vs-actual.png", "registry.sqlite3"):
        assert (out / name).stat().st_size > 0
