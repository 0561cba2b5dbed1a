"""`fanout simulate` end to end on short settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fanout.sim.cli import main
from fanout.sim.policies import BASELINES, FANOUT
from fanout.sim.scenarios import all_scenarios


def test_quick_run_writes_table_json_plots_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    report = tmp_path / "docs" / "results.md"
    assert main(["--quick", "--quiet", "--out", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "Mean regret over all runs" in printed
    for name in all_scenarios():
        assert name in printed

    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["runs"] == 12
    assert set(document["scenarios"]) == set(all_scenarios())
    for scenario in document["scenarios"].values():
        assert set(scenario["policies"]) == {FANOUT, *BASELINES}
        for row in scenario["policies"].values():
            assert row["mean_regret"] >= 0.0
            assert len(row["regret_curve"]) == 12
        assert scenario["oracle"]["total_time"] > 0
    assert document["goal"]["target"] == pytest.approx(0.03)

    text = report.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "../results/learning_curves.png" in linked
    assert "../results/time_vs_cost.png" in linked
    assert "../results/residuals_frequency.png" in linked
    assert "../results/performance_individuals.png" in linked
    for link in linked:
        image = (report.parent / link).resolve()
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subset_without_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--scenarios", "nearly_serial",
            "--policies", "static-1", "static-4",
            "--runs", "5", "--repetitions", "1",
            "--no-plots", "--quiet", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads((tmp_path / "results.json").read_text())
    policies = document["scenarios"]["nearly_serial"]["policies"]
    assert policies["static-1"]["mean_regret"] == 0.0
    assert policies["static-4"]["mean_regret"] > 0.3
    assert document["goal"] is None  # no fanout in the run
    assert not list(tmp_path.glob("*.png"))
    assert "static-4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--runs", "1"], "runs"),
        (["--policies", "bogus"], "--policies"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_bad_arguments_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    assert main([*argv, "--quiet", "--no-plots", "--out", str(tmp_path)]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_unknown_scenario_is_an_argparse_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--scenarios", "nope", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
