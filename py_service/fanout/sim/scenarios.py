"""The simulated workloads: tasks with known truth, grouped into workflow stages.

The two scenarios from the notes use the laws fitted to the notes' tables
(`fanout.sim.calibration`). The others share the individuals stage's per-pod overhead
and the notes' run-to-run noise, add a pod start-up of 5 s (an assumption: the notes
measure none) and vary one property each. None of them was adjusted after seeing how
any policy scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fanout.sim import calibration as cal
from fanout.sim.truth import TaskTruth

F64 = NDArray[np.float64]

GENERIC_STARTUP_SECONDS = 5.0
REFERENCE_INPUT_SIZE = 1000.0


@dataclass(frozen=True)
class SimTask:
    """One task of a stage; tasks with the same `model_key` share one learned model."""

    name: str
    model_key: str
    truth: TaskTruth


@dataclass(frozen=True)
class InputGrowth:
    """Input size per run: a log-linear trend from `start` to `end` (relative sizes)
    with mean-one lognormal jitter of log-spread `jitter`."""

    start: float
    end: float
    jitter: float

    def sizes(self, runs: int, rng: np.random.Generator) -> F64:
        """Absolute sizes, shape (runs,); `REFERENCE_INPUT_SIZE` is `gamma = 1`."""
        trend = np.exp(np.linspace(math.log(self.start), math.log(self.end), runs))
        jitter = rng.lognormal(-0.5 * self.jitter**2, self.jitter, size=runs)
        return REFERENCE_INPUT_SIZE * trend * jitter


@dataclass(frozen=True)
class Drift:
    """From run `at_fraction * runs` on, work takes `work_factor` times longer and the
    start-up and per-pod overheads `overhead_factor` times longer."""

    at_fraction: float
    work_factor: float
    overhead_factor: float

    def first_run(self, runs: int) -> int:
        return round(self.at_fraction * runs)


@dataclass(frozen=True)
class Scenario:
    """A workflow run `runs` times: stages in sequence, the tasks of a stage at once.

    Within a stage, tasks ask for their width in order; each sees as cluster load the
    widths already granted in its stage (SPEC 6 leases) and experiences the widths of
    all its stage's other tasks.
    """

    name: str
    title: str
    description: str
    stages: tuple[tuple[SimTask, ...], ...]
    min_parallelism: int = 1
    max_parallelism: int = 64
    input_growth: InputGrowth | None = None
    drift: Drift | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tasks(self) -> tuple[SimTask, ...]:
        return tuple(task for stage in self.stages for task in stage)

    def input_sizes(self, runs: int, rng: np.random.Generator) -> F64 | None:
        """Sizes per run, shape (runs,), or None when the callers do not know them."""
        return None if self.input_growth is None else self.input_growth.sizes(runs, rng)

    def truth_at(self, task: SimTask, run: int, runs: int) -> TaskTruth:
        """The task's law at run `run` of `runs` (drift applied when due)."""
        if self.drift is not None and run >= self.drift.first_run(runs):
            return task.truth.slowed(
                work_factor=self.drift.work_factor, overhead_factor=self.drift.overhead_factor
            )
        return task.truth


def _generic(work: float, p: float, **extra: float) -> TaskTruth:
    return TaskTruth(
        work_seconds=work,
        p=p,
        startup_seconds=GENERIC_STARTUP_SECONDS,
        per_pod_seconds=cal.INDIVIDUALS_PER_POD_SECONDS,
        noise=cal.RUN_NOISE,
        **extra,
    )


def _individuals() -> Scenario:
    truth = TaskTruth(
        work_seconds=cal.INDIVIDUALS_T1 - cal.INDIVIDUALS_PER_POD_SECONDS,
        p=cal.INDIVIDUALS_P,
        per_pod_seconds=cal.INDIVIDUALS_PER_POD_SECONDS,
        noise=cal.RUN_NOISE,
    )
    return Scenario(
        name="individuals",
        title="Genome individuals stage",
        description="The notes' individuals stage, fitted to Table 3 (T1 = 292 s, "
        f"p = {cal.INDIVIDUALS_P}, {cal.INDIVIDUALS_PER_POD_SECONDS} s per pod).",
        stages=((SimTask("individuals", "individuals", truth),),),
    )


POPULATIONS = ("AFR", "AMR", "EAS", "EUR", "SAS")


def _frequency() -> Scenario:
    contention = {
        "capacity_pods": cal.FREQUENCY_CAPACITY_PODS,
        "contention_exponent": cal.FREQUENCY_CONTENTION_EXPONENT,
        "noise": cal.RUN_NOISE,
    }
    heavy = TaskTruth(
        work_seconds=cal.FREQUENCY_ALL_WORK_SECONDS, p=cal.FREQUENCY_ALL_P, **contention
    )
    light = TaskTruth(
        work_seconds=cal.FREQUENCY_LIGHT_WORK_SECONDS, p=cal.FREQUENCY_LIGHT_P, **contention
    )
    # The notes scale the light populations as one class (one shared model).
    lights = [SimTask(f"frequency_{pop}", "frequency_light", light) for pop in POPULATIONS]
    stage = (SimTask("frequency_ALL", "frequency_ALL", heavy), *lights)
    return Scenario(
        name="frequency",
        title="Frequency ALL + light populations",
        description="The notes' frequency stage fitted to Table 6: frequency_ALL and five "
        "light populations (one shared model) run at once and slow each other down "
        f"(pods / {cal.FREQUENCY_CAPACITY_PODS:g})^{cal.FREQUENCY_CONTENTION_EXPONENT} "
        "beyond a two-pod capacity.",
        stages=(stage,),
        tags=("contention",),
    )


def _growing_input() -> Scenario:
    return Scenario(
        name="growing_input",
        title="Growing input, k = 1.5",
        description="Work grows as gamma^1.5 while the input grows fourfold over the runs "
        "(jitter 25 %); T1 = 120 s, p = 0.95, start-up 5 s.",
        stages=((SimTask("grow", "grow", _generic(120.0, 0.95, k=1.5)),),),
        input_growth=InputGrowth(start=1.0, end=4.0, jitter=0.25),
    )


def _stragglers() -> Scenario:
    return Scenario(
        name="stragglers",
        title="Straggler-heavy task",
        description="Piece times spread lognormally (sigma 0.5), so the slowest of s "
        "pieces grows with s; T1 = 600 s, p = 0.97.",
        stages=((SimTask("straggle", "straggle", _generic(600.0, 0.97, straggler_sigma=0.5)),),),
    )


def _drift() -> Scenario:
    return Scenario(
        name="drift",
        title="Cluster slows down part-way",
        description="T1 = 300 s, p = 0.95; from 40 % of the runs on, work takes 1.5x and "
        "start-up and per-pod overheads 3x as long (a busier, slower-scheduling cluster).",
        stages=((SimTask("drifting", "drifting", _generic(300.0, 0.95)),),),
        drift=Drift(at_fraction=0.4, work_factor=1.5, overhead_factor=3.0),
    )


def _nearly_serial() -> Scenario:
    return Scenario(
        name="nearly_serial",
        title="Nearly serial task",
        description="p = 0.3, T1 = 200 s: one pod is best.",
        stages=((SimTask("serial", "serial", _generic(200.0, 0.3)),),),
    )


def _highly_parallel() -> Scenario:
    return Scenario(
        name="highly_parallel",
        title="Highly parallel task, quota 16",
        description="p = 0.999, T1 = 3000 s, at most 16 pods: the maximum is optimal.",
        stages=((SimTask("wide", "wide", _generic(3000.0, 0.999)),),),
        max_parallelism=16,
    )


def all_scenarios() -> dict[str, Scenario]:
    """Every scenario by name, in report order."""
    built = (
        _individuals(),
        _frequency(),
        _growing_input(),
        _stragglers(),
        _drift(),
        _nearly_serial(),
        _highly_parallel(),
    )
    return {scenario.name: scenario for scenario in built}
