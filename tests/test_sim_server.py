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
    # The same engine behind the server; only the timing of GP refits differs, so
    # once learned both choose near the optimum.
    assert 0.0 <= served["mean_regret_second_half"] < 0.1
    assert abs(served["mean_regret"] - local["mean_regret"]) < 0.1
