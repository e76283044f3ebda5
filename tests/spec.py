"""The package's OpenAPI document, and a check of one real answer against it."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC: dict[str, Any] = json.loads(files("kernelserver.web").joinpath("openapi.json").read_text())
REGISTRY = Registry().with_resource("urn:spec", Resource.from_contents(SPEC, DRAFT202012))


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """node with its $ref, if any, followed within the document."""
    while "$ref" in node:
        found: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        node = found
    return node


def check(response: Any, path: str, method: str) -> None:
    """Validate one real answer against the document's schema for its status."""
    status = str(response.status_code)
    operation = SPEC["paths"][path][method.lower()]
    assert status in operation["responses"], f"{method} {path} answered undocumented {status}"
    content = operation["responses"][status].get("content", {})
    if response.mimetype == "application/x-ndjson":
        assert "application/x-ndjson" in content
        return
    schema = content["application/json"]["schema"]
    if "$ref" in schema:
        schema = {"$ref": "urn:spec" + schema["$ref"]}
    validator = jsonschema.Draft202012Validator(schema, registry=REGISTRY)
    errors = sorted(validator.iter_errors(response.get_json()), key=str)
    assert not errors, f"{method} {path} {status}: {errors[0].message}"
