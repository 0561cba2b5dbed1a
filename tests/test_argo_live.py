"""The Argo templates' own commands, run as local processes against a live fanout server.

tests/manifests_argo.py walks a WorkflowTemplate the way the Argo controller would;
`LiveWalk` runs every container it reaches instead of only recording it: the recommend
steps through the installed `fanout-client` console script, the exit hooks' `sh -c`
scripts with that script on PATH, and the fanned-out shards with a no-op `sleep`. The
outputs Argo would read (the recommend steps' files) feed the rest of the walk, so the
printed widths decide how many shards `withParam`/`withSequence` start. The stages'
start and end times are generated from a synthetic Amdahl stage time at the chosen width.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fanout.server.app import RunningServer, make_server
from fanout.settings import Settings
from fanout.storage.records import ObservationRecord
from tests.fake_advisor import unused_target
from tests.manifests_argo import (
    ArgoTemplateError,
    HookContext,
    Interpreter,
    Invocation,
    Scenario,
    Template,
)
from tests.manifests_kustomize import load_documents

REPO = Path(__file__).resolve().parents[1]
ARGO_DIR = REPO / "clients" / "argo"
NAMESPACE = "genome-lab"
LIGHT_POPULATIONS = ("EUR", "EAS", "AFR", "AMR", "SAS")
#: The genome template's model keys: individuals has its own task's key, ALL its own
#: shared key, and every other population `frequency-light`.
MODEL_KEYS = {"genome/individuals": "genome/individuals", "genome/frequency-ALL": "frequency-heavy"}
#: Seconds a step outside a fan-out (recommend, merge, a hook pod) takes on the clock.
STEP_SECONDS = 4

Arguments = tuple[tuple[str, str], ...]
StageSeconds = Callable[[str, Mapping[str, str], int], int]


@dataclass(frozen=True)
class Ran:
    """One container run as a local process."""

    invocation: Invocation
    stdout: str
    stderr: str
    outputs: dict[str, str]


@dataclass(frozen=True)
class Stage:
    """One fan-out stage of a run: its template, arguments, width and generated time."""

    template: str
    arguments: dict[str, str]
    width: int
    seconds: int


def amdahl_seconds(t1: float, p: float, width: int, gamma: float = 1.0) -> int:
    """SPEC 2's T_A with C = 0, in the whole seconds Argo's timestamps carry."""
    return max(1, round(gamma * t1 * ((1 - p) + p / width)))


def genome_stage_task(stage: Stage) -> str:
    """The fanout task a genome stage run belongs to."""
    if stage.template == "individuals-stage":
        return "genome/individuals"
    return f"genome/frequency-{stage.arguments['population']}"


def genome_stage_seconds(template: str, arguments: Mapping[str, str], width: int) -> int:
    """Stage times from the notes' tables (SPEC 7): individuals T1 = 292 s at 16 chunks,
    p = 0.96; frequency ALL T1 = 101 s, p = 0.61; a light population T1 = 55 s, p = 0.58."""
    if template == "individuals-stage":
        groups = json.loads(arguments["groups"])
        chunks = sum(len(group["chunks"].split(",")) for group in groups)
        return amdahl_seconds(292.0, 0.96, width, gamma=chunks / 16)
    if template == "frequency-stage":
        heavy = arguments["population"] == "ALL"
        return amdahl_seconds(101.0 if heavy else 55.0, 0.61 if heavy else 0.58, width)
    raise ArgoTemplateError(f"no stage time for {template!r}")


def example_stage_seconds(template: str, arguments: Mapping[str, str], width: int) -> int:
    assert template == "process-stage", template
    return amdahl_seconds(120.0, 0.9, width)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _frozen(arguments: Mapping[str, str]) -> Arguments:
    return tuple(sorted(arguments.items()))


def fanned_task(template: Template) -> Mapping[str, Any] | None:
    """The task a stage template fans out by a recommended width, if it is a stage
    (`withItems` fans out over a fixed list, as the genome's light populations)."""
    tasks: list[Mapping[str, Any]] = template.get("dag", {}).get("tasks", [])
    for task in tasks:
        if "withParam" in task or "withSequence" in task:
            return task
    return None


def fanout_client_dir() -> Path:
    """The folder of the installed `fanout-client` console script."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("fanout-client", path=search)
    if found is None:
        pytest.fail("the fanout-client console script is not installed (make install)")
    return Path(found).parent


class LiveWalk(Interpreter):
    """Walks one workflow run and runs each container it reaches as a local process.

    `parameters` are what `argo submit -p` would set; `stage_seconds(template, arguments,
    width)` gives each fan-out stage's duration on a clock that starts at `clock`.
    """

    def __init__(
        self,
        document: Mapping[str, Any],
        scenario: Scenario,
        *,
        parameters: Mapping[str, str],
        stage_seconds: StageSeconds,
        clock: datetime,
        work_dir: Path,
        before_container: Callable[[Invocation], None] | None = None,
    ) -> None:
        super().__init__(document, scenario)
        self.parameters = dict(parameters)
        self.stage_seconds = stage_seconds
        self.now = clock
        self.work_dir = work_dir
        self.before_container = before_container
        self.ran: list[Ran] = []
        self.stages: list[Stage] = []
        self._outputs: dict[tuple[str, Arguments], dict[str, str]] = {}
        self._times: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        self._dags: list[str] = []
        stubs = work_dir / "stub-bin"
        stubs.mkdir(parents=True, exist_ok=True)
        # The shards' `sleep` stands for their work; its time is the generated one.
        (stubs / "sleep").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        (stubs / "sleep").chmod(0o755)
        self._path = os.pathsep.join([str(stubs), str(fanout_client_dir()), "/usr/bin", "/bin"])

    # -- what Argo substitutes

    def globals(self) -> dict[str, str]:
        values = super().globals()
        for name, value in self.parameters.items():
            key = f"workflow.parameters.{name}"
            if key not in values:
                raise ArgoTemplateError(f"the template declares no parameter {name!r}")
            values[key] = value
        return values

    def task_times(self, dag_template: str, task: str) -> tuple[str, str]:
        if (dag_template, task) not in self._times:
            raise ArgoTemplateError(f"{dag_template}.{task}: times read before it ran")
        started, finished = self._times[(dag_template, task)]
        return rfc3339(started), rfc3339(finished)

    def template_outputs(self, name: str, inputs: Mapping[str, str]) -> dict[str, str]:
        if "container" in self.templates[name]:
            return self._outputs[(name, _frozen(inputs))]
        return super().template_outputs(name, inputs)

    # -- running

    def _run_dag(
        self, dag_name: str, template: Template, values: Mapping[str, str], *, via: str
    ) -> None:
        self._dags.append(dag_name)
        try:
            super()._run_dag(dag_name, template, values, via=via)
        finally:
            self._dags.pop()

    def _call(
        self, name: str, arguments: Mapping[str, str], *, via: str, hook: HookContext | None
    ) -> None:
        template = self.templates[name]
        started = self.now
        if "container" in template:
            before = len(self.invocations)
            super()._call(name, arguments, via=via, hook=hook)
            (invocation,) = self.invocations[before:]
            self._outputs[(name, _frozen(arguments))] = self._execute(template, invocation)
            in_stage = bool(self._dags) and fanned_task(self.templates[self._dags[-1]]) is not None
            if not in_stage:
                self.now += timedelta(seconds=STEP_SECONDS)
        else:
            before = len(self.invocations)
            super()._call(name, arguments, via=via, hook=hook)
            fanned = fanned_task(template)
            if fanned is not None:
                width = sum(i.template == fanned["template"] for i in self.invocations[before:])
                seconds = self.stage_seconds(name, arguments, width)
                self.stages.append(Stage(name, dict(arguments), width, seconds))
                self.now = started + timedelta(seconds=seconds)
                self._times[(name, fanned["name"])] = (started, self.now)
        if hook is None and self._dags:
            self._times[(self._dags[-1], via.rsplit(".", 1)[-1])] = (started, self.now)

    def _execute(self, template: Template, invocation: Invocation) -> dict[str, str]:
        """Runs one container; returns the output parameters Argo would read from it."""
        if self.before_container is not None:
            self.before_container(invocation)
        step = self.work_dir / f"step-{len(self.ran)}"
        step.mkdir()
        declared = template.get("outputs", {}).get("parameters", [])
        files = {p["valueFrom"]["path"]: step / p["name"] for p in declared}
        argv = [str(files.get(word, word)) for word in invocation.argv]
        result = subprocess.run(
            argv,
            env={"PATH": self._path, **invocation.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (
            f"{invocation.via} exited {result.returncode}: {result.stderr}"
        )
        outputs: dict[str, str] = {}
        for parameter in declared:
            path = files[parameter["valueFrom"]["path"]]
            if path.exists():
                outputs[parameter["name"]] = path.read_text(encoding="utf-8")
            elif "default" in parameter["valueFrom"]:
                outputs[parameter["name"]] = str(parameter["valueFrom"]["default"])
            else:
                raise AssertionError(f"{invocation.via} wrote no {path.name}: Argo fails the step")
        self.ran.append(Ran(invocation, result.stdout, result.stderr, outputs))
        return outputs

    # -- what happened

    def recommends(self) -> dict[str, Ran]:
        """The recommend steps that ran, by their --task."""
        found: dict[str, Ran] = {}
        for ran in self.ran:
            argv = ran.invocation.argv
            if argv[:1] == ["fanout-client"] and "recommend" in argv:
                found[argv[argv.index("--task") + 1]] = ran
        return found

    def reports(self) -> list[Ran]:
        return [ran for ran in self.ran if ran.invocation.hook is not None]


def workflow_template(name: str) -> dict[str, Any]:
    (document,) = [d for d in load_documents(ARGO_DIR / name) if d["kind"] == "WorkflowTemplate"]
    return document


def submit(
    template: str,
    *,
    target: str,
    work_dir: Path,
    clock: datetime,
    stage_seconds: StageSeconds,
    parameters: Mapping[str, str] | None = None,
    stage_status: str = "Succeeded",
    before_container: Callable[[Invocation], None] | None = None,
) -> LiveWalk:
    """One `argo submit --from workflowtemplate/...` run, with a fresh workflow uid."""
    scenario = Scenario(
        "live",
        stage_status=stage_status,
        recommendation_id="",
        workflow_uid=str(uuid.uuid4()),
        namespace=NAMESPACE,
    )
    walk = LiveWalk(
        workflow_template(template),
        scenario,
        parameters={"fanout-target": target, **(parameters or {})},
        stage_seconds=stage_seconds,
        clock=clock,
        work_dir=work_dir,
        before_container=before_container,
    )
    walk.run()
    return walk


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    running = make_server(Settings(listen="127.0.0.1:0", database_url=url))
    try:
        yield running
    finally:
        running.stop(grace=1.0)


def observations_of(server: RunningServer, model_key: str) -> list[ObservationRecord]:
    record = server.advisor.registry.get_task(NAMESPACE, model_key)
    assert record is not None, f"no model {model_key!r} in {NAMESPACE}"
    return server.advisor.registry.observations(record.id, succeeded_only=False)


def a_while_ago() -> datetime:
    """Start of the generated clock: in the past, so a failed stage's `date` is later."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)


# -- the genome workflow -------------------------------------------------------------


def _check_widths_drove_the_fan_outs(walk: LiveWalk, chunks: int) -> dict[str, int]:
    """The width each recommend step printed, checked against the shards that ran."""
    recommends = walk.recommends()
    populations = ("ALL", *LIGHT_POPULATIONS)
    assert set(recommends) == {"genome/individuals"} | {
        f"genome/frequency-{p}" for p in populations
    }
    widths: dict[str, int] = {}

    individuals = recommends["genome/individuals"]
    groups = json.loads(individuals.stdout)  # --chunks prints the withParam list
    assert json.loads(individuals.outputs["groups"]) == groups
    shards = [i for i in walk.invocations if i.template == "individuals"]
    assert len(shards) == len(groups) == int(individuals.outputs["width"])
    assert [s.env["CHUNKS"] for s in shards] == [g["chunks"] for g in groups]
    covered = sorted(int(c) for s in shards for c in s.env["CHUNKS"].split(","))
    assert covered == list(range(chunks))
    widths["genome/individuals"] = len(groups)

    for population in populations:
        task = f"genome/frequency-{population}"
        printed = int(recommends[task].stdout)
        assert recommends[task].outputs["width"] == str(printed)
        shards = [
            i
            for i in walk.invocations
            if i.template == "frequency-shard" and i.env["POPULATION"] == population
        ]
        assert len(shards) == printed, f"{population}: withSequence count is not the width"
        assert sorted(int(s.env["SHARD"]) for s in shards) == list(range(printed))
        assert {s.env["SHARDS"] for s in shards} == {str(printed)}
        widths[task] = printed
    return widths


def test_genome_workflow_runs_and_the_registry_learns_every_stage(
    server: RunningServer, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{server.port}"
    runs: list[tuple[LiveWalk, int, dict[str, int]]] = []
    for number, chunks in enumerate((16, 16, 24)):
        walk = submit(
            "genome-workflowtemplate.yaml",
            target=target,
            work_dir=tmp_path / f"run-{number}",
            clock=a_while_ago() + timedelta(hours=number),
            stage_seconds=genome_stage_seconds,
            parameters={"chunks": str(chunks)},
        )
        runs.append((walk, chunks, _check_widths_drove_the_fan_outs(walk, chunks)))
        reports = walk.reports()
        assert len(reports) == 7  # individuals, ALL and five light populations
        for report in reports:
            printed = json.loads(report.stdout)
            assert (printed["applied"], printed["duplicate"]) == (True, False), report.stderr

    registry = server.advisor.registry
    tasks, _ = registry.list_tasks(namespace=NAMESPACE, page_size=10, page_token=None)
    assert {t.name for t in tasks} == {"genome/individuals", "frequency-heavy", "frequency-light"}
    assert registry.count_tasks() == 3
    assert registry.cluster_load() == 0, "a recommend step's lease was never closed by its report"

    expected: dict[str, list[tuple[Any, ...]]] = {
        key: [] for key in (*MODEL_KEYS.values(), "frequency-light")
    }
    for walk, chunks, widths in runs:
        seconds = {genome_stage_task(stage): stage.seconds for stage in walk.stages}
        recommends = walk.recommends()
        for task, width in widths.items():
            key = MODEL_KEYS.get(task, "frequency-light")
            execution = f"{walk.scenario.workflow_uid}/{task.removeprefix('genome/')}"
            size = float(chunks) if task == "genome/individuals" else None
            recommendation = recommends[task].outputs["recommendation-id"]
            expected[key].append((execution, recommendation, width, float(seconds[task]), size))
    for key, rows in expected.items():
        stored = [
            (o.execution_id, o.recommendation_id, o.parallelism, o.duration_seconds, o.input_size)
            for o in observations_of(server, key)
        ]
        assert sorted(stored) == sorted(rows), key
        assert all(o.outcome == "succeeded" for o in observations_of(server, key))

    # The reports reached the right models before their next decision (SPEC 3): each
    # model's first two widths are the baseline and the probe, the shared light model's
    # within the first run already.
    individuals = [widths["genome/individuals"] for _, _, widths in runs]
    assert individuals[:2] == [1, 5]
    assert [runs[0][2][f"genome/frequency-{p}"] for p in LIGHT_POPULATIONS[:2]] == [1, 5]
    assert [widths["genome/frequency-ALL"] for _, _, widths in runs][:2] == [1, 5]


# -- the example template -------------------------------------------------------------


def test_example_workflow_runs_against_a_live_server(server: RunningServer, tmp_path: Path) -> None:
    walk = submit(
        "example-workflowtemplate.yaml",
        target=f"127.0.0.1:{server.port}",
        work_dir=tmp_path,
        clock=a_while_ago(),
        stage_seconds=example_stage_seconds,
    )
    (recommend,) = walk.recommends().values()
    groups = json.loads(recommend.stdout)
    groups_run = [i for i in walk.invocations if i.template == "process-group"]
    assert len(groups_run) == len(groups) == int(recommend.outputs["width"]) == 1  # BASELINE
    assert groups_run[0].env["ITEMS"] == ",".join(str(i) for i in range(24))

    (report,) = walk.reports()
    assert json.loads(report.stdout)["applied"] is True
    (stage,) = walk.stages
    (observation,) = observations_of(server, "fanout-example/process")
    assert observation.execution_id == f"{walk.scenario.workflow_uid}/process"
    assert observation.recommendation_id == recommend.outputs["recommendation-id"]
    assert (observation.parallelism, observation.duration_seconds) == (1, stage.seconds)
    assert (observation.input_size, observation.outcome) == (24.0, "succeeded")
    assert server.advisor.registry.cluster_load() == 0


def test_example_workflow_with_a_failing_stage_reports_the_failure(
    server: RunningServer, tmp_path: Path
) -> None:
    started = a_while_ago()
    walk = submit(
        "example-workflowtemplate.yaml",
        target=f"127.0.0.1:{server.port}",
        work_dir=tmp_path,
        clock=started,
        stage_seconds=example_stage_seconds,
        stage_status="Failed",
    )
    (report,) = walk.reports()
    assert json.loads(report.stdout)["applied"] is True
    (observation,) = observations_of(server, "fanout-example/process")
    assert observation.outcome == "failed"
    # Timed from the end of the recommend step to the hook's `date`: about six hours.
    recommend_finished = started + timedelta(seconds=STEP_SECONDS)
    elapsed = (datetime.now(UTC) - recommend_finished).total_seconds()
    assert elapsed - 120 <= observation.duration_seconds <= elapsed + 1
    assert server.advisor.registry.cluster_load() == 0, "the failed run's lease is still open"
    task = server.advisor.registry.get_task(NAMESPACE, "fanout-example/process")
    assert task is not None
    assert server.advisor.registry.count_observations(task.id, succeeded_only=True) == 0


def test_example_workflow_while_fanout_is_down_then_back(tmp_path: Path) -> None:
    """fanout unreachable at recommend time: the default width runs; the server is back by
    the exit hook, which reports the run against the task so it still counts."""
    target = unused_target()
    started: list[RunningServer] = []

    def start_fanout_before_the_report(invocation: Invocation) -> None:
        if invocation.hook is not None and not started:
            url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
            started.append(make_server(Settings(listen=target, database_url=url)))

    try:
        walk = submit(
            "example-workflowtemplate.yaml",
            target=target,
            work_dir=tmp_path / "run",
            clock=a_while_ago(),
            stage_seconds=example_stage_seconds,
            before_container=start_fanout_before_the_report,
        )
        (recommend,) = walk.recommends().values()
        assert "unreachable" in recommend.stderr
        assert recommend.outputs["recommendation-id"] == ""
        assert recommend.outputs["width"] == "4"  # the template's --default-parallelism
        assert len([i for i in walk.invocations if i.template == "process-group"]) == 4

        (server,) = started
        (observation,) = observations_of(server, "fanout-example/process")
        assert (observation.recommendation_id, observation.parallelism) == (None, 4)
        assert observation.execution_id == f"{walk.scenario.workflow_uid}/process"
        assert observation.duration_seconds == walk.stages[0].seconds
        assert observation.input_size == 24.0
    finally:
        for server in started:
            server.stop(grace=1.0)


def test_example_workflow_completes_when_fanout_stays_down(tmp_path: Path) -> None:
    walk = submit(
        "example-workflowtemplate.yaml",
        target=unused_target(),
        work_dir=tmp_path,
        clock=a_while_ago(),
        stage_seconds=example_stage_seconds,
    )
    (report,) = walk.reports()
    assert report.stdout == ""
    assert "report not delivered" in report.stderr
    assert len([i for i in walk.invocations if i.template == "process-group"]) == 4
