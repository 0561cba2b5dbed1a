"""Walk an Argo WorkflowTemplate the way the controller would, without a cluster.

Starting at the entrypoint, every DAG task is expanded (withItems, withParam,
withSequence), its arguments are substituted into the called template, and every
container that would run is recorded with its command line and environment after
substitution. Exit hooks are run too, with the scope the controller gives them
(workflow/controller/exit_handler.go and dag.go in argo-workflows): the hooked task's
ancestors, its own `status`, and its own output parameters only when it produced them.
A tag that would stay unresolved anywhere else is an error here, so a misspelt
parameter or a reference to a missing task fails the tests instead of a workflow.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

Template = Mapping[str, Any]

_TAG = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# Argo's own rules (workflow/validate/validate.go).
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9]*$")
PARAMETER_NAME_PATTERN = re.compile(r"^[-a-zA-Z0-9_]+$")
_DEPENDS_TOKEN = re.compile(r"([A-Za-z0-9][-A-Za-z0-9]*)(?:\.[A-Za-z]+)?")
FAN_OUT_FIELDS = ("withItems", "withParam", "withSequence")
SAMPLE_EPOCH = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class ArgoTemplateError(ValueError):
    """Something the Argo controller would reject or leave unresolved."""


@dataclass(frozen=True)
class Scenario:
    """What the fanout steps and the fanned-out stages produce in one imagined run."""

    name: str
    stage_status: str  # phase of every hooked stage task: Succeeded, Failed or Error
    recommendation_id: str  # "" when fanout was unreachable at recommend time
    width: int = 3
    workflow_uid: str = "6f0c2d3e-8a41-4b7e-9d55-0b1c2e3f4a5b"
    namespace: str = "genome-lab"

    @property
    def stage_outputs_exist(self) -> bool:
        # A DAG template sets its outputs only when it succeeds (dag.go, executeDAG).
        return self.stage_status == "Succeeded"

    def container_output(self, name: str) -> str:
        """Sample value of a container template's output parameter, by parameter name."""
        if name == "width":
            return str(self.width)
        if name == "recommendation-id":
            return self.recommendation_id
        if name == "groups":
            groups = [
                {"group": g, "chunks": ",".join(str(c) for c in range(g, 16, self.width))}
                for g in range(self.width)
            ]
            return json.dumps(groups)
        raise ArgoTemplateError(f"no sample value for container output parameter {name!r}")


@dataclass(frozen=True)
class HookContext:
    """Which DAG task an exit hook belongs to."""

    dag_template: str
    task: str
    task_template: str


@dataclass(frozen=True)
class Invocation:
    """One container the workflow would start, after substitution."""

    template: str
    via: str  # task path, for messages
    argv: list[str]
    env: dict[str, str]
    hook: HookContext | None = None


def substitute(text: str, values: Mapping[str, str], *, keep: Callable[[str], bool]) -> str:
    """Replace `{{name}}` tags; tags for which `keep` is true stay verbatim, others must resolve."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        if keep(name):
            return match.group(0)
        raise ArgoTemplateError(f"unresolved {{{{{name}}}}} in {text!r}")

    return _TAG.sub(replace, text)


def _keep_nothing(_: str) -> bool:
    return False


def depends_on(task: Mapping[str, Any]) -> list[str]:
    """Task names a DAG task waits for (`depends` expression or `dependencies` list)."""
    names = list(task.get("dependencies", []))
    expression = str(task.get("depends", ""))
    expression = re.sub(r"&&|\|\||!|\(|\)", " ", expression)
    names += [m.group(1) for m in _DEPENDS_TOKEN.finditer(expression)]
    return names


@dataclass
class Interpreter:
    """Collects the Invocations of one WorkflowTemplate under one Scenario."""

    document: Mapping[str, Any]
    scenario: Scenario
    invocations: list[Invocation] = field(default_factory=list)
    _clock: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    @property
    def templates(self) -> dict[str, Template]:
        return {t["name"]: t for t in self.document["spec"]["templates"]}

    def globals(self) -> dict[str, str]:
        spec = self.document["spec"]
        values = {
            "workflow.uid": self.scenario.workflow_uid,
            "workflow.namespace": self.scenario.namespace,
            "workflow.name": f"{self.document['metadata']['name']}-x7k2p",
        }
        for parameter in spec.get("arguments", {}).get("parameters", []):
            values[f"workflow.parameters.{parameter['name']}"] = str(parameter["value"])
        return values

    def task_times(self, dag_template: str, task: str) -> tuple[str, str]:
        """Sample startedAt/finishedAt of one DAG task, distinct for every task."""
        key = (dag_template, task)
        if key not in self._clock:
            start = SAMPLE_EPOCH + timedelta(minutes=7 * len(self._clock))
            end = start + timedelta(seconds=95)
            self._clock[key] = (_rfc3339(start), _rfc3339(end))
        return self._clock[key]

    def run(self) -> list[Invocation]:
        entrypoint = self.document["spec"]["entrypoint"]
        self._call(entrypoint, {}, via=entrypoint, hook=None)
        return self.invocations

    # --- templates

    def _bind_inputs(self, name: str, arguments: Mapping[str, str]) -> dict[str, str]:
        template = self.templates.get(name)
        if template is None:
            raise ArgoTemplateError(f"template {name!r} does not exist")
        declared = template.get("inputs", {}).get("parameters", [])
        names = {p["name"] for p in declared}
        unknown = set(arguments) - names
        if unknown:
            raise ArgoTemplateError(f"template {name!r} has no inputs {sorted(unknown)}")
        bound: dict[str, str] = {}
        for parameter in declared:
            if parameter["name"] in arguments:
                bound[parameter["name"]] = arguments[parameter["name"]]
            elif "default" in parameter or "value" in parameter:
                bound[parameter["name"]] = str(parameter.get("value", parameter.get("default")))
            else:
                raise ArgoTemplateError(f"template {name!r}: input {parameter['name']!r} missing")
        return bound

    def _call(
        self, name: str, arguments: Mapping[str, str], *, via: str, hook: HookContext | None
    ) -> None:
        inputs = self._bind_inputs(name, arguments)
        template = self.templates[name]
        values = self.globals() | {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        if "dag" in template:
            self._run_dag(name, template, values, via=via)
        elif "container" in template:
            self._run_container(name, template["container"], values, via=via, hook=hook)
        else:
            raise ArgoTemplateError(f"template {name!r}: only dag and container are walked")

    def _run_container(
        self,
        name: str,
        container: Mapping[str, Any],
        values: Mapping[str, str],
        *,
        via: str,
        hook: HookContext | None,
    ) -> None:
        argv = [
            substitute(str(a), values, keep=_keep_nothing)
            for a in [*container.get("command", []), *container.get("args", [])]
        ]
        env = {
            e["name"]: substitute(str(e["value"]), values, keep=_keep_nothing)
            for e in container.get("env", [])
            if "value" in e
        }
        self.invocations.append(Invocation(name, via, argv, env, hook))

    def template_outputs(self, name: str, inputs: Mapping[str, str]) -> dict[str, str]:
        """Output parameters `name` would produce (sample values for containers)."""
        template = self.templates[name]
        declared = template.get("outputs", {}).get("parameters", [])
        if "container" in template:
            return {p["name"]: self.scenario.container_output(p["name"]) for p in declared}
        values = self.globals() | {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        for task in template["dag"]["tasks"]:
            values |= self._task_values(name, task, inputs=None)
        outputs: dict[str, str] = {}
        for parameter in declared:
            source = parameter.get("valueFrom", {}).get("parameter")
            if source is None:
                raise ArgoTemplateError(f"{name}: DAG output {parameter['name']} needs a source")
            outputs[parameter["name"]] = substitute(source, values, keep=_keep_nothing)
        return outputs

    def _task_values(
        self, dag_name: str, task: Mapping[str, Any], *, inputs: Mapping[str, str] | None
    ) -> dict[str, str]:
        """What `tasks.<task>.*` resolves to once the task has finished."""
        started, finished = self.task_times(dag_name, task["name"])
        prefix = f"tasks.{task['name']}"
        values = {
            f"{prefix}.id": f"{dag_name}-{zlib.crc32(task['name'].encode())}",
            f"{prefix}.status": "Succeeded",
            f"{prefix}.startedAt": started,
            f"{prefix}.finishedAt": finished,
        }
        if not any(key in task for key in FAN_OUT_FIELDS):
            outputs = self.template_outputs(task["template"], inputs or {})
            values |= {f"{prefix}.outputs.parameters.{k}": v for k, v in outputs.items()}
        return values

    def _run_dag(
        self, dag_name: str, template: Template, values: Mapping[str, str], *, via: str
    ) -> None:
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        resolved_args: dict[str, dict[str, str]] = {}
        for task in _topological(tasks):
            scope = dict(values)
            for ancestor in _ancestors(tasks, task["name"]):
                scope |= self._task_values(
                    dag_name, tasks[ancestor], inputs=resolved_args[ancestor]
                )
            path = f"{via}.{task['name']}"
            arguments: dict[str, str] = {}
            for item_values in self._items(task, scope):
                arguments = {
                    p["name"]: substitute(str(p["value"]), scope | item_values, keep=_keep_nothing)
                    for p in task.get("arguments", {}).get("parameters", [])
                }
                self._call(task["template"], arguments, via=path, hook=None)
            resolved_args[task["name"]] = arguments
            for hook_name, hook in task.get("hooks", {}).items():
                self._run_exit_hook(dag_name, task, hook_name, hook, scope, arguments, via=path)

    def _run_exit_hook(
        self,
        dag_name: str,
        task: Mapping[str, Any],
        hook_name: str,
        hook: Mapping[str, Any],
        scope: Mapping[str, str],
        task_arguments: Mapping[str, str],
        *,
        via: str,
    ) -> None:
        if hook_name != "exit":
            raise ArgoTemplateError(f"{via}: only exit hooks are walked, not {hook_name!r}")
        prefix = f"tasks.{task['name']}"
        hook_scope = dict(scope) | {f"{prefix}.status": self.scenario.stage_status}
        own_outputs = f"{prefix}.outputs.parameters."
        if self.scenario.stage_outputs_exist:
            outputs = self.template_outputs(task["template"], task_arguments)
            hook_scope |= {own_outputs + k: v for k, v in outputs.items()}

        def keep(name: str) -> bool:
            # Argo leaves a hook argument it cannot resolve verbatim (ReplaceStrictAny with
            # no strict prefixes); only the task's own missing outputs may end up so.
            return name.startswith(own_outputs) and not self.scenario.stage_outputs_exist

        arguments = {
            p["name"]: substitute(str(p["value"]), hook_scope, keep=keep)
            for p in hook.get("arguments", {}).get("parameters", [])
        }
        context = HookContext(dag_name, task["name"], task["template"])
        self._call(hook["template"], arguments, via=f"{via}.onExit", hook=context)

    def _items(self, task: Mapping[str, Any], scope: Mapping[str, str]) -> Iterator[dict[str, str]]:
        if "withItems" in task:
            items: list[Any] = list(task["withItems"])
        elif "withParam" in task:
            items = json.loads(substitute(task["withParam"], scope, keep=_keep_nothing))
        elif "withSequence" in task:
            sequence = task["withSequence"]
            if set(sequence) - {"count", "start"}:
                raise ArgoTemplateError(f"withSequence fields {sorted(sequence)} not walked")
            start = int(substitute(str(sequence.get("start", "0")), scope, keep=_keep_nothing))
            count = int(substitute(str(sequence["count"]), scope, keep=_keep_nothing))
            items = list(range(start, start + count))
        else:
            yield {}
            return
        if not items:
            raise ArgoTemplateError(f"task {task['name']!r} expands to no items")
        for item in items:
            if isinstance(item, Mapping):
                yield {f"item.{k}": str(v) for k, v in item.items()}
            else:
                yield {"item": str(item)}


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ancestors(tasks: Mapping[str, Mapping[str, Any]], name: str) -> list[str]:
    found: list[str] = []
    pending = list(depends_on(tasks[name]))
    while pending:
        current = pending.pop()
        if current not in tasks:
            raise ArgoTemplateError(f"task {name!r} depends on unknown task {current!r}")
        if current not in found:
            found.append(current)
            pending += depends_on(tasks[current])
    return found


def _topological(tasks: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    ordered: list[Mapping[str, Any]] = []
    done: set[str] = set()
    while len(done) < len(tasks):
        ready = [
            t
            for name, t in tasks.items()
            if name not in done and all(d in done for d in depends_on(t))
        ]
        if not ready:
            raise ArgoTemplateError(f"dependency cycle among {sorted(set(tasks) - done)}")
        for task in ready:
            ordered.append(task)
            done.add(task["name"])
    return ordered
