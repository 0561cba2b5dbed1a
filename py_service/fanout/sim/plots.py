"""PNG plots of an evaluation (matplotlib, Agg backend; imported only when plotting).

Besides learning curves and time-against-cost, this redoes the analyses of the notes'
figures on fanout's own simulated runs: performance against width (figures 3a, 6a),
the Pareto front of time and cost (3b, 6b) and the residuals of the naive, fitted and
full models (figures 7 and 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter
from numpy.typing import NDArray

from fanout.sim.evaluate import (
    REGRET_TARGET,
    ScenarioOutcome,
    static_totals,
)
from fanout.sim.policies import FANOUT
from fanout.sim.report import Evaluation

# Headless: plots are only ever written to files (pyplot picks its backend lazily).
mpl.use("Agg")

F64 = NDArray[np.float64]
DPI = 110
MODEL_STYLES = {
    "naive": ("naive Amdahl p=1", "tab:red"),
    "fitted": ("fitted p, no GP", "tab:orange"),
    "self": ("fanout (Amdahl + GP)", "tab:blue"),
}


def _grid(
    count: int, columns: int = 2, size: tuple[float, float] = (6.0, 3.6)
) -> tuple[Any, list[Any]]:
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False
    )
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _colors(policies: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {p: ("black" if p == FANOUT else cmap((i % 9) + 1)) for i, p in enumerate(policies)}


def learning_curves(evaluation: Evaluation, path: Path) -> Path:
    """Regret per run (mean over repetitions and tasks) per policy, one panel per scenario."""
    policies = evaluation.policies
    colors = _colors(policies)
    fig, axes = _grid(len(evaluation.table))
    for ax, (name, row) in zip(axes, evaluation.table.items(), strict=True):
        for policy in policies:
            curve = 100 * np.asarray(row[policy].regret_curve)
            ax.plot(
                np.arange(1, len(curve) + 1),
                curve,
                color=colors[policy],
                lw=2.0 if policy == FANOUT else 1.0,
                zorder=3 if policy == FANOUT else 2,
                label=policy,
            )
        ax.axhline(100 * REGRET_TARGET, color="grey", ls=":", lw=1)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0.0)
        ax.set_title(name)
        ax.set_xlabel("run")
        ax.set_ylabel("regret (%)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def pareto_front(time: F64, cost: F64) -> NDArray[np.bool_]:
    """Which points no other point beats in both time and cost, shape (n,)."""
    keep = np.ones(len(time), dtype=bool)
    for i in range(len(time)):
        dominated = (time <= time[i]) & (cost <= cost[i]) & ((time < time[i]) | (cost < cost[i]))
        keep[i] = not dominated.any()
    return keep


def time_against_cost(evaluation: Evaluation, path: Path) -> Path:
    """Total time against total pod-seconds: every static width, its Pareto front, each
    policy's totals and the oracle's."""
    policies = evaluation.policies
    colors = _colors(policies)
    fig, axes = _grid(len(evaluation.outcomes))
    for ax, (name, outcome) in zip(axes, evaluation.outcomes.items(), strict=True):
        widths, times, pods = static_totals(outcome.scenario, evaluation.settings)
        hours, pod_hours = times / 3600, pods / 3600
        ax.plot(pod_hours, hours, ".", color="lightgrey", label="static widths")
        front = pareto_front(hours, pod_hours)
        order = np.argsort(pod_hours[front])
        ax.plot(
            pod_hours[front][order], hours[front][order], "-", color="grey", label="Pareto front"
        )
        for i in np.linspace(0, len(widths) - 1, min(len(widths), 5)).astype(int):
            ax.annotate(f"s={widths[i]}", (pod_hours[i], hours[i]), fontsize=6, color="grey")
        for policy in policies:
            m = evaluation.table[name][policy]
            ax.plot(
                m.total_pod_seconds / 3600,
                m.total_time / 3600,
                "o",
                color=colors[policy],
                label=policy,
                ms=7 if policy == FANOUT else 5,
            )
        oracle = outcome.oracle
        ax.plot(
            oracle.pod_seconds.sum(axis=1).mean() / 3600,
            oracle.stage_time.sum(axis=1).mean() / 3600,
            "*",
            color="gold",
            mec="black",
            ms=12,
            label="oracle",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("pod-hours (all runs)")
        ax.set_ylabel("hours (all runs)")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def residuals(outcome: ScenarioOutcome, path: Path) -> Path | None:
    """Predicted against actual and residual per run for the naive, fitted and full
    models on fanout's own runs (first repetition), one row per model key."""
    trace = outcome.traces.get(FANOUT)
    if trace is None or not trace.predictions:
        return None
    tasks = outcome.scenario.tasks
    keys = list(dict.fromkeys(task.model_key for task in tasks))
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 3.8 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        columns = [j for j, task in enumerate(tasks) if task.model_key == key]
        actual = trace.durations[0][:, columns].ravel()
        runs = np.repeat(np.arange(1, trace.durations.shape[1] + 1), len(columns))
        scatter, over_runs = axes[row]
        low, top = math.inf, 0.0
        models = [m for m in MODEL_STYLES if m in trace.predictions]
        # The rms is taken over the runs every model predicted, so the three compare.
        common = np.all(
            [np.isfinite(trace.predictions[m][0][:, columns].ravel()) for m in models], axis=0
        )
        for model in models:
            label, color = MODEL_STYLES[model]
            predicted = trace.predictions[model][0][:, columns].ravel()
            ok = np.isfinite(predicted)
            if not ok.any():
                continue
            errors = actual[common] - predicted[common]
            rms = float(np.sqrt(np.mean(errors**2))) if errors.size else math.nan
            scatter.plot(
                actual[ok],
                predicted[ok],
                ".",
                color=color,
                alpha=0.6,
                label=f"{label} (rms {rms:.1f} s)",
            )
            over_runs.plot(
                runs[ok], actual[ok] - predicted[ok], ".", color=color, alpha=0.6, label=label
            )
            shown = np.concatenate((actual[ok], predicted[ok]))
            low, top = min(low, float(shown.min())), max(top, float(shown.max()))
        if top > 0:
            scatter.plot([low, top], [low, top], color="grey", lw=1)
        scatter.set_xlabel("actual time (s)")
        scatter.set_ylabel("predicted time (s)")
        scatter.set_title(f"{outcome.scenario.name}: {key}")
        scatter.legend(fontsize=7)
        over_runs.axhline(0, color="grey", lw=1)
        over_runs.set_xlabel("run")
        over_runs.set_ylabel("residual = actual - predicted (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def performance(outcome: ScenarioOutcome, path: Path) -> Path | None:
    """The notes' performance panels from fanout's runs: time, speed-up, cost and
    overhead against width (points: runs; line: the truth at the reference context),
    plus the Pareto front of the mean time and cost per width."""
    trace = outcome.traces.get(FANOUT)
    if trace is None:
        return None
    tasks = outcome.scenario.tasks
    keys = list(dict.fromkeys(task.model_key for task in tasks))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    (t_ax, sp_ax, cost_ax), (ov_ax, pareto_ax, count_ax) = axes
    cmap = plt.get_cmap("tab10")
    for index, key in enumerate(keys):
        color = cmap(index)
        columns = [j for j, task in enumerate(tasks) if task.model_key == key]
        widths = trace.widths[:, :, columns].ravel()
        times = trace.durations[:, :, columns].ravel()
        unique = np.unique(widths)
        mean_t = np.array([times[widths == w].mean() for w in unique])
        first = columns[0]
        truth = tasks[first].truth
        grid = np.arange(1, int(max(unique.max(), 8)) + 1, dtype=np.float64)
        # The truth line at the mean load the task shared the cluster with.
        load = float((trace.widths.sum(axis=2) - trace.widths[:, :, first]).mean())
        true_t = truth.true_time(grid, 1.0, load)
        t1 = float(true_t[0])
        t_ax.plot(widths, times, ".", color=color, alpha=0.25)
        t_ax.plot(unique, mean_t, "o", color=color, label=f"{key}: runs (mean)")
        t_ax.plot(grid, true_t, "-", color=color, lw=1, label=f"{key}: truth")
        sp_ax.plot(unique, t1 / mean_t, "o-", color=color, label=key)
        sp_ax.plot(grid, grid, ":", color="grey", lw=1)
        cost_ax.plot(unique, unique * mean_t, "o-", color=color, label=key)
        ov_ax.plot(unique, mean_t - t1 / unique, "o-", color=color, label=key)
        front = pareto_front(mean_t, unique * mean_t)
        pareto_ax.plot(unique * mean_t, mean_t, "o", color=color, alpha=0.4)
        order = np.argsort(unique[front])
        pareto_ax.plot(
            (unique * mean_t)[front][order],
            mean_t[front][order],
            "-",
            color=color,
            label=f"{key} front",
        )
        for w, c, t in zip(unique[front], (unique * mean_t)[front], mean_t[front], strict=True):
            pareto_ax.annotate(f"s={w}", (c, t), fontsize=7)
        counts = np.array([(widths == w).sum() for w in unique])
        count_ax.bar(unique + 0.2 * index, counts, width=0.4, color=color, label=key)
    t_ax.set(xlabel="s", ylabel="time (s)", title="execution time")
    sp_ax.set(xlabel="s", ylabel="speed-up vs s = 1", title="speed-up")
    cost_ax.set(xlabel="s", ylabel="pod-seconds", title="cost")
    ov_ax.set(xlabel="s", ylabel="time - T1/s (s)", title="overhead over ideal scaling")
    pareto_ax.set(xlabel="pod-seconds", ylabel="time (s)", title="Pareto front")
    count_ax.set(xlabel="s", ylabel="runs", title="fanout's choices")
    for ax in axes.ravel():
        ax.legend(fontsize=7)
    fig.suptitle(f"{outcome.scenario.title}: fanout's runs")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


PERFORMANCE_SCENARIOS = ("individuals", "frequency")


def write_all(evaluation: Evaluation, out: Path) -> dict[str, Path]:
    """Write every plot into `out`; returns title -> file, in report order."""
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "Learning curves": learning_curves(evaluation, out / "learning_curves.png"),
        "Time against cost": time_against_cost(evaluation, out / "time_vs_cost.png"),
    }
    for name, outcome in evaluation.outcomes.items():
        if name in PERFORMANCE_SCENARIOS:
            made_perf = performance(outcome, out / f"performance_{name}.png")
            if made_perf is not None:
                made[f"Performance against width: {name}"] = made_perf
    for name, outcome in evaluation.outcomes.items():
        made_res = residuals(outcome, out / f"residuals_{name}.png")
        if made_res is not None:
            made[f"Predicted against actual: {name}"] = made_res
    return made
