"""`make demo`: the genome workflow of the research notes, replayed through a live server.

A `fanout serve` child on a fresh SQLite registry; every decision asked for and every
run reported through the Python SDK over real gRPC. The stage times are drawn from
laws fitted to the notes' measured tables (`fanout.sim`), so regret against the
best width in hindsight can be shown as it learns.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fanout.sim.scenarios import Scenario, SimTask, all_scenarios
from fanout_client import Advisor

WORKFLOW = "genome"
MAX_PARALLELISM = 16


@dataclass(frozen=True)
class Row:
    run: int
    task: str
    phase: str
    parallelism: int
    predicted: float
    actual: float
    regret: float
    best: int


def genome_stages() -> tuple[tuple[SimTask, ...], ...]:
    """individuals, then frequency (ALL and the light populations at once)."""
    scenarios: dict[str, Scenario] = all_scenarios()
    return scenarios["individuals"].stages + scenarios["frequency"].stages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(database: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    target = f"127.0.0.1:{port}"
    with log.open("wb") as sink:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fanout.cli",
                "serve",
                "--listen",
                target,
                "--database-url",
                f"sqlite:///{database}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, FANOUT_LOG_LEVEL="WARNING"),
        )
    return process, target


def wait_ready(advisor: Advisor, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited; see its log")
        try:
            advisor.list_tasks(page_size=1).__next__()
        except StopIteration:
            return
        except Exception:  # not listening yet
            time.sleep(0.2)
            continue
        return
    raise TimeoutError("the server did not start")


def score(seconds: float, s: int) -> float:
    return seconds * math.sqrt(s)  # SPEC 5.3 at the defaults a = 1, b = 0.5


def progress(done: int, total: int, width: int = 30) -> str:
    filled = round(width * done / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} workflow runs"


def replay(advisor: Advisor, runs: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    header = (
        f"{'run':>3}  {'task':<16} {'phase':<9} {'s':>3} {'best':>4} "
        f"{'predicted':>10} {'actual':>8} {'regret':>7}"
    )
    print(header)
    print("-" * len(header))
    for run in range(1, runs + 1):
        for stage in genome_stages():
            granted: list[int] = []
            decisions = []
            for task in stage:
                rec = advisor.recommend(
                    f"{WORKFLOW}/{task.name}",
                    model_key=task.model_key,
                    max_parallelism=MAX_PARALLELISM,
                )
                decisions.append((task, rec))
                granted.append(rec.parallelism)
            total = sum(granted)
            for task, rec in decisions:
                others = total - rec.parallelism
                duration, startup = task.truth.sample(rec.parallelism, 1.0, others, rng)
                widths = np.arange(1, MAX_PARALLELISM + 1)
                truth = task.truth.true_time(widths, 1.0, others)
                scores = truth * np.sqrt(widths)
                best = int(widths[np.argmin(scores)])
                regret = (
                    score(float(truth[rec.parallelism - 1]), rec.parallelism) / float(scores.min())
                    - 1.0
                )
                advisor.report(
                    rec,
                    duration_seconds=duration,
                    startup_seconds=startup,
                    execution_id=f"demo-{run}-{task.name}",
                )
                row = Row(
                    run,
                    task.name,
                    rec.phase.value,
                    rec.parallelism,
                    rec.predicted_seconds or math.nan,
                    duration,
                    regret,
                    best,
                )
                rows.append(row)
                predicted = "-" if math.isnan(row.predicted) else f"{row.predicted:8.1f} s"
                print(
                    f"{run:>3}  {task.name:<16} {row.phase:<9} {row.parallelism:>3} "
                    f"{best:>4} {predicted:>10} {duration:>6.1f} s {100 * regret:>6.1f}%"
                )
        print(progress(run, runs), file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[Row], advisor: Advisor) -> None:
    print("\nSummary (regret = score of the chosen width / best width's score - 1)")
    print(f"{'task':<16} {'mean regret':>12} {'second half':>12} {'last s':>7} {'best':>5}")
    runs = max(r.run for r in rows)
    for name in dict.fromkeys(r.task for r in rows):
        mine = [r for r in rows if r.task == name]
        late = [r.regret for r in mine if r.run > runs // 2]
        print(
            f"{name:<16} {100 * np.mean([r.regret for r in mine]):>11.1f}% "
            f"{100 * np.mean(late):>11.1f}% {mine[-1].parallelism:>7} {mine[-1].best:>5}"
        )
    print(f"all decisions: mean regret {100 * np.mean([r.regret for r in rows]):.1f}%")
    print("\nLearned models:")
    for task in advisor.list_tasks():
        m = task.model
        p = "-" if m.p is None else f"{m.p:.3f}"
        t1 = "-" if m.t1_seconds is None else f"{m.t1_seconds:.0f} s"
        print(
            f"  {task.model_key:<16} phase {m.phase.value:<9} T1 {t1:>6}  p {p}  "
            f"C {m.startup_seconds:.1f} s  window {m.window_size}"
        )


def plot(rows: list[Row], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in dict.fromkeys(r.task for r in rows):
        mine = [r for r in rows if r.task == name]
        ax.plot([r.run for r in mine], [100 * r.regret for r in mine], marker=".", label=name)
    ax.set(xlabel="workflow run", ylabel="regret (%)", title="fanout learning the genome workflow")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "learning-curve.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    known = [r for r in rows if not math.isnan(r.predicted)]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter([r.actual for r in known], [r.predicted for r in known], s=12)
    top = max(*(r.actual for r in known), *(r.predicted for r in known))
    ax.plot([0, top], [0, top], color="grey", linewidth=1)
    ax.set(xlabel="actual (s)", ylabel="predicted (s)", title="Predicted against actual")
    fig.tight_layout()
    written.append(out / "predicted-vs-actual.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fanout.demo", description=__doc__)
    parser.add_argument("--runs", type=int, default=25, help="workflow runs (default 25)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()
    process, target = start_server(out / "registry.sqlite3", out / "server.log")
    print(f"fanout server on {target}, registry {out / 'registry.sqlite3'}")
    try:
        with Advisor(target, namespace="demo", fallback=False) as advisor:
            wait_ready(advisor, process)
            rows = replay(advisor, args.runs, args.seed)
            summarise(rows, advisor)
        written = plot(rows, out)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    print(f"\nplots: {', '.join(str(p) for p in written)}")
    print(f"done in {time.monotonic() - started:.0f} s; server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
