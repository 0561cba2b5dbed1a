"""A small kustomize for the tests (no kustomize or kubectl binary is installed here).

It understands exactly the kustomization fields our manifests use (`resources`,
`patches` with a `path`, `namespace`) and refuses any other, so a field that real
kustomize would apply can never be skipped silently. Patches are strategic merge patches,
merged the way the API server does it: lists whose schema carries
`x-kubernetes-patch-strategy: merge` are merged by their `x-kubernetes-patch-merge-key`,
other lists are replaced, and a `null` value deletes the key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.manifests_schema import Schema, SchemaSet, kubernetes_schema

Resource = dict[str, Any]

SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "patches", "namespace"})


class KustomizeError(ValueError):
    """A kustomization this renderer cannot reproduce faithfully."""


def load_documents(path: Path) -> list[Resource]:
    """The non-empty YAML documents of one file."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def render(directory: Path, *, schema_version: str) -> list[Resource]:
    """Resources of the kustomization in `directory`, patches applied.

    `schema_version` (e.g. "1.30") picks the Kubernetes schemas that give the merge keys.
    """
    kustomization_file = directory / "kustomization.yaml"
    (kustomization,) = load_documents(kustomization_file)
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(f"{kustomization_file}: unsupported fields {sorted(unsupported)}")

    rendered: list[Resource] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            rendered += render(target, schema_version=schema_version)
        else:
            rendered += load_documents(target)

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{kustomization_file}: only `path` patches are supported")
        for patch in load_documents(directory / patch_entry["path"]):
            index = _find(rendered, patch)
            top, schemas = kubernetes_schema(patch["kind"], patch["apiVersion"], schema_version)
            rendered[index] = strategic_merge(rendered[index], patch, top, schemas)

    if "namespace" in kustomization:
        for resource in rendered:
            resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    _refuse_duplicates(rendered)
    return rendered


def _identity(resource: Mapping[str, Any]) -> tuple[str, str, str]:
    return (resource["apiVersion"], resource["kind"], resource["metadata"]["name"])


def _find(resources: list[Resource], patch: Mapping[str, Any]) -> int:
    wanted = _identity(patch)
    for index, resource in enumerate(resources):
        if _identity(resource) == wanted:
            return index
    raise KustomizeError(f"patch target {wanted} is not among the resources")


def _refuse_duplicates(resources: list[Resource]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        identity = _identity(resource)
        if identity in seen:
            raise KustomizeError(f"{identity} is defined twice")
        seen.add(identity)


def strategic_merge(base: Any, patch: Any, schema: Schema, schemas: SchemaSet) -> Any:
    """`base` with `patch` merged in; neither argument is modified."""
    schema = schemas.resolve(schema)
    if not isinstance(patch, Mapping) or not isinstance(base, Mapping):
        return copy.deepcopy(patch)
    if any(str(key).startswith("$") for key in patch):
        raise KustomizeError(f"patch directives are not supported: {sorted(patch)}")
    merged = copy.deepcopy(dict(base))
    properties: Mapping[str, Any] = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
            continue
        if key in properties:
            field_schema: Schema = properties[key]
        elif isinstance(additional, Mapping):
            field_schema = additional
        else:
            raise KustomizeError(f"patch key {key!r} is not in the schema")
        if key not in merged:
            merged[key] = copy.deepcopy(value)
        elif isinstance(value, list):
            merged[key] = _merge_list(merged[key], value, field_schema, schemas)
        else:
            merged[key] = strategic_merge(merged[key], value, field_schema, schemas)
    return merged


def _merge_list(base: list[Any], patch: list[Any], schema: Schema, schemas: SchemaSet) -> list[Any]:
    # The patch extensions sit beside the $ref in the property, not in the referenced type.
    strategy = str(schema.get("x-kubernetes-patch-strategy", ""))
    merge_key = schema.get("x-kubernetes-patch-merge-key")
    if "merge" not in strategy.split(",") or merge_key is None:
        return copy.deepcopy(patch)
    item_schema = schemas.resolve(schemas.resolve(schema).get("items", {}))
    merged = copy.deepcopy(base)
    for item in patch:
        position = next(
            (i for i, old in enumerate(merged) if old.get(merge_key) == item.get(merge_key)),
            None,
        )
        if position is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[position] = strategic_merge(merged[position], item, item_schema, schemas)
    return merged
