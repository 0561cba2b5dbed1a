"""The Argo Workflows and Kubernetes manifests under clients/: valid, spelt right, and runnable.

Argo resources are checked with Hera's models and Argo's published JSON schema (kept out
of the repo, at ../shared/schemas); Kubernetes resources are rendered from their
kustomize overlays and checked with the schemas inside kubernetes-validate. The command
lines the Argo templates run are produced by walking each template as the controller
would (tests/manifests_argo.py) and parsed with the step CLI's own parser.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
from hera.workflows import models as hera_models

from fanout.cli import build_parser as server_parser
from fanout.settings import ENV_PREFIX, Settings, settings_from
from tests.manifests_argo import (
    FAN_OUT_FIELDS,
    NAME_PATTERN,
    PARAMETER_NAME_PATTERN,
    ArgoTemplateError,
    Interpreter,
    Invocation,
    Scenario,
    depends_on,
)
from tests.manifests_kustomize import KustomizeError, load_documents, render, strategic_merge
from tests.manifests_schema import SchemaSet, kubernetes_schema, kubernetes_versions, unknown_keys

REPO = Path(__file__).resolve().parents[1]
ARGO_DIR = REPO / "clients" / "argo"
KUBERNETES_DIR = REPO / "clients" / "kubernetes"
ARGO_SCHEMA = REPO.parent / "shared" / "schemas" / "argo-workflows-v4.1-schema.json"

ARGO_FILES = sorted(ARGO_DIR.glob("*.yaml"))
OVERLAYS = sorted(p.parent for p in (KUBERNETES_DIR / "overlays").glob("*/kustomization.yaml"))
# Oldest version still in wide use that has GA gRPC probes, and the newest shipped.
KUBERNETES_VERSIONS = sorted({"1.30", kubernetes_versions()[-1]})
SCHEMA_VERSION = KUBERNETES_VERSIONS[0]

SCENARIOS = [
    Scenario("stages-succeed", stage_status="Succeeded", recommendation_id="rec-5e1f"),
    Scenario("stages-fail", stage_status="Failed", recommendation_id="rec-5e1f"),
    Scenario("fanout-was-down", stage_status="Succeeded", recommendation_id=""),
]
RECOMMEND_OUTPUT_FLAGS = {
    "--output-file": "width",
    "--id-file": "recommendation-id",
    "--chunks-file": "groups",
}
RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _skip_or_fail(reason: str) -> None:
    """Skip locally; under CI=true a missing prerequisite is a failure, never a skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this check must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def argo_schema() -> dict[str, Any]:
    if not ARGO_SCHEMA.is_file():
        _skip_or_fail(f"Argo's JSON schema is not at {ARGO_SCHEMA}")
    loaded: dict[str, Any] = json.loads(ARGO_SCHEMA.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def client_parser() -> Callable[[], argparse.ArgumentParser]:
    try:
        module = importlib.import_module("fanout_client.cli")
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("fanout_client"):
            raise
        _skip_or_fail("fanout_client.cli (the step CLI) is not installed")
    return cast(Callable[[], argparse.ArgumentParser], module.build_parser)


def _argo_documents(path: Path) -> list[dict[str, Any]]:
    documents = load_documents(path)
    assert documents, f"{path} holds no resource"
    return documents


def _workflow_templates(path: Path) -> list[dict[str, Any]]:
    return [d for d in _argo_documents(path) if d["kind"] == "WorkflowTemplate"]


def _invocations(path: Path, scenario: Scenario) -> Iterator[tuple[Interpreter, Invocation]]:
    for document in _workflow_templates(path):
        interpreter = Interpreter(document, scenario)
        for invocation in interpreter.run():
            yield interpreter, invocation


def _runs_fanout_client(invocation: Invocation) -> bool:
    return any("fanout-client" in word for word in invocation.argv)


def _recommend_argv(invocation: Invocation) -> list[str] | None:
    """The argument list of a `fanout-client ... recommend` container, without the program."""
    if invocation.argv[:1] == ["fanout-client"] and "recommend" in invocation.argv:
        return invocation.argv[1:]
    return None


def _options(argv: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a command line (flags without a value map to "")."""
    options: dict[str, str] = {}
    for index, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            options[word] = "" if following.startswith("--") else following
    return options


def _run_in_shell_with_stubs(
    invocation: Invocation, tmp_path: Path, stubs: tuple[str, ...]
) -> list[list[str]]:
    """Run an `sh -c` step with the named programs replaced by recorders; their argv lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    recorder = (
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['STUB_LOG'], 'a') as log:\n"
        "    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n"
    )
    for name in stubs:
        stub = bin_dir / name
        stub.write_text(recorder, encoding="utf-8")
        stub.chmod(0o755)
    assert invocation.argv[:2] == ["sh", "-c"], f"{invocation.via} is not an sh -c step"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), **invocation.env}
    result = subprocess.run(
        invocation.argv, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{invocation.via} failed: {result.stderr}"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"the parser rejects `{shlex.join(argv)}`: {errors.getvalue().strip()}")


def _rfc3339(text: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), f"not RFC 3339 UTC: {text!r}"
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# --- Argo: schema, models, spelling


def test_argo_manifests_exist() -> None:
    names = {p.name for p in ARGO_FILES}
    assert {"genome-workflowtemplate.yaml", "example-workflowtemplate.yaml"} <= names


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_argo_resources_load_into_hera_models(path: Path) -> None:
    for document in _argo_documents(path):
        model_class = getattr(hera_models, document["kind"])
        model = model_class.model_validate(document)
        assert model.metadata.name == document["metadata"]["name"]
        assert len(model.spec.templates) == len(document["spec"]["templates"])


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_argo_resources_match_argos_json_schema(path: Path, argo_schema: dict[str, Any]) -> None:
    for document in _argo_documents(path):
        definition = f"io.argoproj.workflow.v1alpha1.{document['kind']}"
        assert definition in argo_schema["definitions"], f"no schema for {document['kind']}"
        schema = {k: v for k, v in argo_schema.items() if k != "oneOf"}
        schema["$ref"] = f"#/definitions/{definition}"
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(document),
            key=lambda e: list(e.path),
        )
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_argo_keys_are_spelt_as_in_the_schema(path: Path, argo_schema: dict[str, Any]) -> None:
    schemas = SchemaSet(argo_schema)
    for document in _argo_documents(path):
        kind = {"$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{document['kind']}"}
        assert unknown_keys(document, kind, schemas) == []


def test_the_key_check_catches_a_misspelt_argo_field(argo_schema: dict[str, Any]) -> None:
    document = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "typo"},
        "spec": {
            "templates": [
                {"name": "main", "dag": {"tasks": [{"name": "a", "withparam": "[1]"}]}},
            ]
        },
    }
    kind = {"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate"}
    assert unknown_keys(document, kind, SchemaSet(argo_schema)) == [
        "spec.templates[0].dag.tasks[0].withparam"
    ]


# --- Argo: what the controller would accept and run


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_argo_names_and_references_are_valid(path: Path) -> None:
    for document in _workflow_templates(path):
        templates = document["spec"]["templates"]
        names = [t["name"] for t in templates]
        assert len(names) == len(set(names)), "template names repeat"
        assert document["spec"]["entrypoint"] in names
        for template in templates:
            assert NAME_PATTERN.match(template["name"]), template["name"]
            for parameter in template.get("inputs", {}).get("parameters", []):
                assert PARAMETER_NAME_PATTERN.match(parameter["name"]), parameter["name"]
            # Argo cannot template `parallelism` (a plain integer); widths go through
            # withParam or withSequence instead.
            assert "{{" not in str(template.get("parallelism", ""))
            for task in template.get("dag", {}).get("tasks", []):
                assert NAME_PATTERN.match(task["name"]), task["name"]
                assert task["template"] in names, f"{task['name']}: no template {task['template']}"
                for hook in task.get("hooks", {}).values():
                    assert hook["template"] in names


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_exit_hooks_sit_on_stage_tasks_that_are_not_expanded(path: Path) -> None:
    """A hook on an expanded task would run once per item, and the hooked task's own
    startedAt/finishedAt/id are not in its hook's scope; stages expose their times as
    outputs instead."""
    for document in _workflow_templates(path):
        templates = {t["name"]: t for t in document["spec"]["templates"]}
        hooked = 0
        for template in templates.values():
            tasks = template.get("dag", {}).get("tasks", [])
            by_name = {t["name"]: t for t in tasks}
            for task in tasks:
                if "hooks" not in task:
                    continue
                hooked += 1
                assert set(task["hooks"]) == {"exit"}
                assert not any(key in task for key in FAN_OUT_FIELDS), task["name"]
                own = re.escape(f"tasks.{task['name']}.")
                assert not re.search(
                    own + r"(startedAt|finishedAt|id)\b", json.dumps(task["hooks"])
                ), f"{task['name']}'s hook reads its own times, which Argo leaves unresolved"
                stage = templates[task["template"]]
                fanned = [
                    t for t in stage["dag"]["tasks"] if "withParam" in t or "withSequence" in t
                ]
                assert len(fanned) == 1, f"stage {stage['name']} should fan out exactly once"
                outputs = {
                    p["name"]: p["valueFrom"]["parameter"] for p in stage["outputs"]["parameters"]
                }
                name = fanned[0]["name"]
                assert outputs == {
                    "started-at": f"{{{{tasks.{name}.startedAt}}}}",
                    "finished-at": f"{{{{tasks.{name}.finishedAt}}}}",
                }
                # The width comes from a recommendation this stage waits for.
                recommenders = [
                    d for d in depends_on(task) if _is_recommend(templates[by_name[d]["template"]])
                ]
                assert len(recommenders) == 1, f"{task['name']} needs one recommend step"
                arguments = json.dumps(task.get("arguments", {}))
                assert f"tasks.{recommenders[0]}.outputs.parameters." in arguments
        assert hooked, "no stage reports to fanout"


def _is_recommend(template: Mapping[str, Any]) -> bool:
    container = template.get("container", {})
    return container.get("command") == ["fanout-client"] and "recommend" in container.get(
        "args", []
    )


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_recommend_outputs_are_read_from_the_files_it_writes(path: Path) -> None:
    checked = 0
    for document in _workflow_templates(path):
        for template in document["spec"]["templates"]:
            if not _is_recommend(template):
                continue
            checked += 1
            written = _options(template["container"]["args"])
            outputs = {p["name"]: p["valueFrom"] for p in template["outputs"]["parameters"]}
            expected = {
                name: written[flag]
                for flag, name in RECOMMEND_OUTPUT_FLAGS.items()
                if flag in written
            }
            assert {name: source["path"] for name, source in outputs.items()} == expected
            # fanout-client writes no recommendation id when fanout is down.
            assert outputs["recommendation-id"].get("default") == ""
    assert checked


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_fanout_client_command_lines_parse(
    path: Path,
    scenario: Scenario,
    tmp_path: Path,
    client_parser: Callable[[], argparse.ArgumentParser],
) -> None:
    parsed = 0
    for _, invocation in _invocations(path, scenario):
        recommend = _recommend_argv(invocation)
        if recommend is not None:
            command_lines = [recommend]
        elif _runs_fanout_client(invocation):
            calls = _run_in_shell_with_stubs(invocation, tmp_path, ("fanout-client",))
            command_lines = [call[1:] for call in calls]
        else:
            continue
        for argv in command_lines:
            _parse(client_parser(), argv)
            parsed += 1
    assert parsed


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_each_stage_reports_once_with_its_own_times(
    path: Path, scenario: Scenario, tmp_path: Path
) -> None:
    reports: list[dict[str, str]] = []
    recommended_tasks: set[str] = set()
    for interpreter, invocation in _invocations(path, scenario):
        recommend = _recommend_argv(invocation)
        if recommend is not None:
            recommended_tasks.add(_options(recommend)["--task"])
        if invocation.hook is None:
            continue
        (call,) = _run_in_shell_with_stubs(invocation, tmp_path, ("fanout-client",))
        assert call[0] == "fanout-client"
        assert "report" in call
        options = _options(call[1:])
        reports.append(options)

        document = interpreter.document
        fanout_target = next(
            p["value"]
            for p in document["spec"]["arguments"]["parameters"]
            if p["name"] == "fanout-target"
        )
        assert options["--target"] == fanout_target
        assert options["--namespace"] == scenario.namespace
        assert options["--outcome"] == scenario.stage_status
        assert options["--execution-id"].startswith(f"{scenario.workflow_uid}/")
        if scenario.recommendation_id:
            assert options["--recommendation-id"] == scenario.recommendation_id
            assert "--task" not in options
        else:
            assert "--recommendation-id" not in options
            assert options["--parallelism"] == str(scenario.width)

        started, finished = _rfc3339(options["--started-at"]), _rfc3339(options["--finished-at"])
        if scenario.stage_outputs_exist:
            stage = interpreter.templates[invocation.hook.task_template]
            (fanned,) = [
                t for t in stage["dag"]["tasks"] if "withParam" in t or "withSequence" in t
            ]
            expected = interpreter.task_times(stage["name"], fanned["name"])
            assert (options["--started-at"], options["--finished-at"]) == expected
        else:
            assert options["--started-at"] == invocation.env["FALLBACK_STARTED_AT"]
            now = datetime.now(UTC)
            assert now - timedelta(minutes=5) <= finished <= now + timedelta(minutes=1)
        assert started < finished

    assert reports, "no exit hook reports"
    execution_ids = [r["--execution-id"] for r in reports]
    assert len(execution_ids) == len(set(execution_ids)), "two stages share an execution id"
    if not scenario.recommendation_id:
        assert {r["--task"] for r in reports} == recommended_tasks


@pytest.mark.parametrize("path", ARGO_FILES, ids=_ids(ARGO_FILES))
def test_step_scripts_run(path: Path, tmp_path: Path) -> None:
    ran = 0
    for _, invocation in _invocations(path, SCENARIOS[0]):
        if invocation.argv[:2] == ["sh", "-c"] and not _runs_fanout_client(invocation):
            calls = _run_in_shell_with_stubs(invocation, tmp_path, ("sleep",))
            assert calls, f"{invocation.via} does no work"
            ran += 1
    assert ran


def test_genome_workflow_follows_the_notes() -> None:
    """The notes' DAG, with ALL on a model of its own and the light populations sharing one."""
    (document,) = _workflow_templates(ARGO_DIR / "genome-workflowtemplate.yaml")
    scenario = SCENARIOS[0]
    invocations = [i for _, i in _invocations(ARGO_DIR / "genome-workflowtemplate.yaml", scenario)]
    recommends = [_options(a) for i in invocations if (a := _recommend_argv(i)) is not None]
    by_task = {r["--task"]: r for r in recommends}

    chunks = next(
        p["value"] for p in document["spec"]["arguments"]["parameters"] if p["name"] == "chunks"
    )
    assert by_task["genome/individuals"]["--chunks"] == chunks
    assert by_task["genome/individuals"]["--input-size"] == chunks
    populations = {t.removeprefix("genome/frequency-") for t in by_task if "frequency" in t}
    assert populations == {"ALL", "EUR", "EAS", "AFR", "AMR", "SAS"}
    light_keys = {by_task[f"genome/frequency-{p}"]["--model-key"] for p in populations - {"ALL"}}
    assert len(light_keys) == 1
    assert by_task["genome/frequency-ALL"]["--model-key"] not in light_keys

    shards = [i for i in invocations if i.template == "individuals"]
    frequency_shards = [i for i in invocations if i.template == "frequency-shard"]
    assert len(shards) == scenario.width
    assert len(frequency_shards) == len(populations) * scenario.width
    covered = sorted(int(c) for i in shards for c in i.env["CHUNKS"].split(","))
    assert covered == list(range(int(chunks)))

    main = next(t for t in document["spec"]["templates"] if t["name"] == "genome")
    tasks = {t["name"]: t for t in main["dag"]["tasks"]}
    assert depends_on(tasks["individuals-merge"]) == ["individuals"]
    for frequency in ("frequency-all", "frequency-light"):
        assert set(depends_on(tasks[frequency])) == {"individuals-merge", "sifting"}


def test_the_walk_rejects_a_hook_that_reads_its_own_start_time() -> None:
    document = {
        "metadata": {"name": "pitfall"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "dag": {
                        "tasks": [
                            {
                                "name": "work",
                                "template": "step",
                                "hooks": {
                                    "exit": {
                                        "template": "note",
                                        "arguments": {
                                            "parameters": [
                                                {"name": "at", "value": "{{tasks.work.startedAt}}"}
                                            ]
                                        },
                                    }
                                },
                            }
                        ]
                    },
                },
                {"name": "step", "container": {"image": "alpine", "command": ["true"]}},
                {
                    "name": "note",
                    "inputs": {"parameters": [{"name": "at"}]},
                    "container": {"image": "alpine", "args": ["{{inputs.parameters.at}}"]},
                },
            ],
        },
    }
    with pytest.raises(ArgoTemplateError, match=r"tasks\.work\.startedAt"):
        Interpreter(document, SCENARIOS[0]).run()


# --- Kubernetes


def _render(overlay: Path) -> list[dict[str, Any]]:
    return render(overlay, schema_version=SCHEMA_VERSION)


def _one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [r for r in resources if r["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def _pod_spec(resources: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(resources, "Deployment")["spec"]["template"]["spec"]
    return spec


def _server(resources: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _pod_spec(resources)["containers"]
    (server,) = [c for c in containers if c["name"] == "fanout"]
    return server


def _quantity_bytes(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", text)
    assert match, f"unexpected quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2) or "", 1)


def test_overlays_exist() -> None:
    assert {p.name for p in OVERLAYS} == {"postgres", "sqlite"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS, ids=_ids(OVERLAYS))
def test_kubernetes_resources_validate(overlay: Path, version: str) -> None:
    for resource in _render(overlay):
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_ids(OVERLAYS))
def test_kubernetes_keys_are_spelt_as_in_the_schema(overlay: Path) -> None:
    for resource in _render(overlay):
        top, schemas = kubernetes_schema(resource["kind"], resource["apiVersion"], SCHEMA_VERSION)
        assert unknown_keys(resource, top, schemas) == [], resource["kind"]


def test_patch_files_are_spelt_as_in_the_schema() -> None:
    """Patches are partial resources; a misspelt key in one would be merged in unnoticed."""
    files = [p for p in KUBERNETES_DIR.rglob("*.yaml") if p.name != "kustomization.yaml"]
    assert files
    for path in files:
        for resource in load_documents(path):
            top, schemas = kubernetes_schema(
                resource["kind"], resource["apiVersion"], SCHEMA_VERSION
            )
            assert unknown_keys(resource, top, schemas) == [], path


def test_the_key_check_catches_a_misspelt_kubernetes_field() -> None:
    top, schemas = kubernetes_schema("Deployment", "apps/v1", SCHEMA_VERSION)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "labels": {"any-label": "is fine"}},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "readinesProbe": {}}]}}},
    }
    assert unknown_keys(deployment, top, schemas) == [
        "spec.template.spec.containers[0].readinesProbe"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_ids(OVERLAYS))
def test_server_pod_is_locked_down_and_probed_over_grpc(overlay: Path) -> None:
    resources = _render(overlay)
    kinds = {r["kind"] for r in resources}
    assert {"ServiceAccount", "ConfigMap", "Deployment", "Service"} <= kinds
    assert not kinds & RBAC_KINDS, "fanout reads no Kubernetes API and needs no RBAC"

    pod = _pod_spec(resources)
    assert pod["serviceAccountName"] == _one(resources, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert _quantity_bytes(requests["memory"]) <= _quantity_bytes(limits["memory"])

    server = _server(resources)
    # The server's RSS target is 250 MB: the limit must sit above it.
    assert _quantity_bytes(server["resources"]["limits"]["memory"]) > 250e6
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9090}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": ports["grpc"]}, probe

    service = _one(resources, "Service")
    pod_labels = _one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        50051: "grpc",
        9090: "metrics",
    }


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_ids(OVERLAYS))
def test_server_settings_are_understood_by_fanout(overlay: Path) -> None:
    resources = _render(overlay)
    data = _one(resources, "ConfigMap")["data"]
    fields = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert set(data) <= fields, f"unknown settings {sorted(set(data) - fields)}"

    server = _server(resources)
    args = _parse(server_parser(), server["args"])
    assert server["command"] == ["fanout"]
    assert args.command == "serve"
    assert args.insecure is True  # plaintext until TLS is configured, see the README
    settings = settings_from(args, environ=data)
    assert settings.listen.rsplit(":", 1) == ["0.0.0.0", "50051"]
    assert settings.metrics_port == 9090
    grace = _pod_spec(resources)["terminationGracePeriodSeconds"]
    assert grace > settings.grace_seconds, "the kubelet would kill a draining server"


def test_postgres_variant_migrates_first_and_runs_several_replicas() -> None:
    resources = _render(KUBERNETES_DIR / "overlays" / "postgres")
    deployment = _one(resources, "Deployment")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    pod = _pod_spec(resources)
    (migrate,) = pod["initContainers"]
    assert migrate["image"] == _server(resources)["image"]
    assert migrate["command"] == ["fanout"]
    assert _parse(server_parser(), migrate["args"]).command == "migrate"

    secret_url = {
        "name": "FANOUT_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "fanout-database", "key": "url"}},
    }
    assert secret_url in migrate["env"]
    assert secret_url in _server(resources)["env"]
    assert "FANOUT_DATABASE_URL" not in _one(resources, "ConfigMap")["data"]

    budget = _one(resources, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert 1 <= budget["spec"]["minAvailable"] < replicas


def test_sqlite_variant_keeps_one_writer_on_a_volume() -> None:
    resources = _render(KUBERNETES_DIR / "overlays" / "sqlite")
    deployment = _one(resources, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = _pod_spec(resources)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]

    claim = _one(resources, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _server(resources)["volumeMounts"]}
    registry_volume = volumes[mounts["/var/lib/fanout"]]
    assert registry_volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    url = _one(resources, "ConfigMap")["data"]["FANOUT_DATABASE_URL"]
    assert url == "sqlite:////var/lib/fanout/registry.sqlite3"
    assert "PodDisruptionBudget" not in {r["kind"] for r in resources}


def test_dockerfile_matches_the_deployment() -> None:
    dockerfile = (KUBERNETES_DIR / "Dockerfile").read_text(encoding="utf-8")
    server = _server(_render(OVERLAYS[0]))
    pod = _pod_spec(_render(OVERLAYS[0]))
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert entrypoint
    assert json.loads(entrypoint.group(1)) == server["command"]
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user
    assert (int(user.group(1)), int(user.group(2))) == (
        pod["securityContext"]["runAsUser"],
        pod["securityContext"]["runAsGroup"],
    )
    exposed = re.search(r"^EXPOSE (.*)$", dockerfile, re.MULTILINE)
    assert exposed
    assert set(exposed.group(1).split()) == {"50051", "9090"}


# --- the test renderer itself


def test_strategic_merge_follows_the_schemas_merge_keys() -> None:
    top, schemas = kubernetes_schema("Deployment", "apps/v1", SCHEMA_VERSION)
    base: dict[str, Any] = {
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "args": ["x", "y"], "env": [{"name": "K", "value": "1"}]},
                        {"name": "b"},
                    ]
                }
            },
        }
    }
    patch = {
        "spec": {
            "strategy": {"type": "Recreate", "rollingUpdate": None},
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "args": ["z"], "env": [{"name": "L", "value": "2"}]}
                    ]
                }
            },
        }
    }
    merged = strategic_merge(base, patch, top, schemas)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "b"]  # merged by name, order kept
    assert containers[0]["args"] == ["z"]  # no merge key: replaced
    assert containers[0]["env"] == [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}]
    assert merged["spec"]["strategy"] == {"type": "Recreate"}  # null deletes
    assert merged["spec"]["replicas"] == 1
    assert base["spec"]["strategy"]["type"] == "RollingUpdate"  # inputs untouched


def test_renderer_refuses_kustomize_fields_it_does_not_apply(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nimages:\n  - name: fanout\n    newTag: '9'\n", encoding="utf-8"
    )
    with pytest.raises(KustomizeError, match="images"):
        render(tmp_path, schema_version=SCHEMA_VERSION)
