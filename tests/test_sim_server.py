"""`fanout simulate` with fanout through the real server (SDK over loopback gRPC)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fanout.sim.cli import main


@pytest.mark.slow
def test_server_policy_learns_through_grpc(tmp_path: Path) -> None:
    code = main(
        [
            "--scenarios",
            "individuals",
            "--runs",
            "8",
            "--repetitions",
            "1",
            "--policies",
            "fanout",
            "fanout-server",
            "--out",
            str(tmp_path),
            "--no-plots",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    served, local = summary["fanout-server"], summary["fanout"]
    # The same engine behind the server, and the policy lets each background GP refit
    # land before the next run (as the minutes between real runs would): the served
    # model decides exactly as the in-process one, width for width.
    curves = json.loads((tmp_path / "results.json").read_text())["scenarios"]["individuals"]
    widths = curves["policies"]
    assert widths["fanout-server"]["width_curve"] == widths["fanout"]["width_curve"]
    assert served["mean_regret"] == pytest.approx(local["mean_regret"], rel=1e-12)
    assert served["mean_regret_second_half"] < 0.1
