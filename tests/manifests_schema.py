"""JSON-schema helpers for the manifest tests: `$ref` resolution and a key-spelling walk.

Argo's published schema does not reject unknown keys, so a misspelt field (`withparam`,
`readinesProbe`) would pass validation and be silently dropped by the API server. The
walk here compares every mapping's keys with the property names its schema allows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import kubernetes_validate.utils as kv_utils

Schema = Mapping[str, Any]


@dataclass(frozen=True)
class SchemaSet:
    """One document holding every definition that `$ref`s point into."""

    definitions: Schema

    def resolve(self, schema: Schema) -> Schema:
        """Follow `$ref` chains; refs are `#/definitions/X` (Argo) or `...#/$defs/X` (k8s)."""
        seen: set[str] = set()
        while "$ref" in schema:
            ref = str(schema["$ref"])
            if ref in seen:
                raise ValueError(f"$ref cycle at {ref}")
            seen.add(ref)
            _, _, fragment = ref.partition("#")
            node: Any = self.definitions
            for part in fragment.strip("/").split("/"):
                node = node[part]
            schema = node
        return schema


def unknown_keys(instance: object, schema: Schema, schemas: SchemaSet, path: str = "") -> list[str]:
    """Dotted paths of keys in `instance` that its schema does not define."""
    schema = schemas.resolve(schema)
    problems: list[str] = []
    if isinstance(instance, Mapping):
        branches = _object_branches(schema, schemas)
        if not branches:
            return problems  # free-form (Argo `Item`, preserve-unknown-fields)
        best: list[str] | None = None
        for branch in branches:
            found = _unknown_in_object(instance, branch, schemas, path)
            if best is None or len(found) < len(best):
                best = found
        return best or []
    if isinstance(instance, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(instance):
                problems += unknown_keys(item, items, schemas, f"{path}[{index}]")
    return problems


def _object_branches(schema: Schema, schemas: SchemaSet) -> list[Schema]:
    """The object-shaped alternatives a mapping may match (oneOf/anyOf/allOf flattened)."""
    if "properties" in schema or isinstance(schema.get("additionalProperties"), Mapping):
        return [schema]
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}}
        for part in schema["allOf"]:
            for branch in _object_branches(schemas.resolve(part), schemas):
                merged["properties"].update(branch.get("properties", {}))
        return [merged]
    branches: list[Schema] = []
    for key in ("oneOf", "anyOf"):
        for part in schema.get(key, []):
            branches += _object_branches(schemas.resolve(part), schemas)
    return branches


def _unknown_in_object(
    instance: Mapping[str, Any], schema: Schema, schemas: SchemaSet, path: str
) -> list[str]:
    properties: Mapping[str, Any] = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    problems: list[str] = []
    for key, value in instance.items():
        where = f"{path}.{key}" if path else str(key)
        if key in properties:
            problems += unknown_keys(value, properties[key], schemas, where)
        elif isinstance(additional, Mapping):
            problems += unknown_keys(value, additional, schemas, where)
        else:
            problems.append(where)
    return problems


# --- Kubernetes schemas shipped inside kubernetes-validate


def kubernetes_versions() -> list[str]:
    """Kubernetes versions (major.minor) the installed kubernetes-validate has schemas for."""
    return sorted({kv_utils.major_minor(v) for v in kv_utils.all_versions()}, key=_version_key)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _schema_folder(version: str) -> str:
    matches = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == version]
    if not matches:
        raise LookupError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    return f"v{matches[-1]}-local-strict"


@cache
def _load(folder: str, name: str) -> Schema:
    ref = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", folder, name)
    loaded: Schema = json.loads(ref.read_text(encoding="utf-8"))
    return loaded


def kubernetes_schema(kind: str, api_version: str, version: str) -> tuple[Schema, SchemaSet]:
    """Top-level schema of `kind` and the shared definitions, as kubernetes-validate names them."""
    folder = _schema_folder(version)
    # Same file naming as kubernetes_validate.utils.validate: apps/v1 -> apps-v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    top = _load(folder, f"{kind.lower()}-{group_version}.json")
    return top, SchemaSet(_load(folder, "_definitions.json"))
