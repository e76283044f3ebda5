"""The bad-input walk: every route in the OpenAPI document, every kind of bad input.

Cases are generated from the document itself (its routes, required fields, field types and
query parameters), so a route or field added there is walked without editing this file. Every
answer must be the one error shape with the fitting 4xx, documented for that operation, and no
bad request may run, delete or restart anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask

from kernelserver import create_app

from helpers import AUTH, TOKEN
from spec import SPEC, check, resolve

MAX_BODY = 4096
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
SENTINEL = "ran.append(1)"  # the code of every execute request: nothing may append
ID_ROUTES_CREATE = {"/env/create"}  # an unknown id is what these routes want


@dataclass(frozen=True)
class Case:
    """One bad request and the answer it must get."""

    kind: str
    method: str
    path: str
    status: int
    codes: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    documented: bool = True  # the operation exists, so its answer is checked against the document

    @property
    def name(self) -> str:
        body = self.kwargs.get("json", self.kwargs.get("data", self.kwargs.get("query_string", "")))
        return f"{self.kind}: {self.method} {self.path} {str(body)[:60]}"


def _types(schema: dict[str, Any]) -> set[str]:
    schema = resolve(schema)
    kind = schema.get("type", "string" if "pattern" in schema else None)
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def wrong_values(schema: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """Values of the wrong type (or out of range) for a field, each with the error code expected."""
    is_id = schema.get("$ref", "").endswith("/NamespaceId")
    types = _types(schema)
    minimum = resolve(schema).get("minimum")
    if {t.get("type") for t in schema.get("oneOf", [])} == {"integer", "string"}:  # a size
        yield from (("lots", "bad_request"), ("12 parsecs", "bad_request"), ([1], "bad_request"),
                    ({}, "bad_request"), (True, "bad_request"), (-1, "bad_request"),
                    (1000, "bad_request"), (2**70, "bad_request"))
    elif [t.get("type", t.get("const")) for t in schema.get("oneOf", [])] == ["boolean", "text"]:
        yield from (("maybe", "bad_request"), ("TEXT", "bad_request"), (2, "bad_request"),
                    ([True], "bad_request"))  # stream: true/false or "text"
    elif schema.get("type") == "object":  # resources
        yield from ((5, "bad_request"), (["num_gpus"], "bad_request"), ({"bogus": 1}, "bad_request"),
                    ({"num_gpus": -1}, "bad_request"), ({"num_cpus": "many"}, "bad_request"),
                    ({"memory": "lots"}, "bad_request"), ("{not json", "bad_request"))
    elif is_id:
        yield from ((5, "bad_request"), (["a"], "bad_request"), ({"a": 1}, "bad_request"),
                    ("", "invalid_id"), ("../etc", "invalid_id"), ("x" * 65, "invalid_id"))
    elif "string" in types:
        yield from ((5, "bad_request"), (["print(1)"], "bad_request"), ({"a": 1}, "bad_request"),
                    (True, "bad_request"))
    elif "boolean" in types:
        yield from (("maybe", "bad_request"), (2, "bad_request"), ([True], "bad_request"))
    elif types & {"number", "integer"}:
        yield from (("soon", "bad_request"), ([1], "bad_request"), ({}, "bad_request"),
                    (True, "bad_request"), (2**70, "bad_request"))
        if "integer" in types:
            yield 1.5, "bad_request"
        if minimum is not None:
            yield minimum - 1, "bad_request"
    else:
        raise AssertionError(f"no wrong values for a field of schema {schema}")


def valid_body(path: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A good body for the route: it names the kept namespace and runs only the sentinel."""
    body: dict[str, Any] = {"id": "fresh" if path in ID_ROUTES_CREATE else "keep"}
    if "code" in properties:
        body["code"] = SENTINEL
    return body


def wrong_value_query(name: str) -> Iterator[tuple[str, str]]:
    return ((value, "bad_request") for value in {"n": ["x", "1.5", "", "99999999999999999999999"],
                                                 "wait": ["soon", "-1", "1e99"],
                                                 "stream": ["maybe", "2"],
                                                 "limit": ["0", "x", "-5"],
                                                 "keep": ["-1", "x", "1.5"],
                                                 "kernel": ["no-such-kernel", "python3 "]}[name])


def cases() -> list[Case]:
    found: list[Case] = []
    for path, operations in SPEC["paths"].items():
        for method in METHODS:
            if method.lower() not in operations:
                found.append(Case("wrong method", method, path, 405, ("method_not_allowed",),
                                  documented=False))
        for method, operation in operations.items():
            method = method.upper()
            if "requestBody" in operation:
                found.extend(body_cases(method, path, operation))
            if operation.get("parameters"):
                found.extend(query_cases(method, path, operation))
    return found


def body_cases(method: str, path: str, operation: dict[str, Any]) -> Iterator[Case]:
    schema = resolve(resolve(operation["requestBody"])["content"]["application/json"]["schema"])
    properties = schema["properties"]
    good = valid_body(path, properties)
    yield Case("wrong content type", method, path, 415, ("unsupported_media_type",),
               {"data": b"id=keep", "content_type": "text/plain"})
    yield Case("wrong content type", method, path, 415, ("unsupported_media_type",),
               {"data": b"<id>keep</id>", "content_type": "application/xml"})
    for raw in (b"{not json", b"{\"id\": \"keep\"", b"\xff\xfe", b"[\"keep\"]", b"\"keep\"", b"null",
                b"7"):
        yield Case("invalid JSON", method, path, 400, ("bad_request",),
                   {"data": raw, "content_type": "application/json"})
    for name in schema.get("required", []):
        body = {k: v for k, v in good.items() if k != name}
        yield Case("missing field", method, path, 400, ("bad_request",), {"json": body})
        yield Case("missing field", method, path, 400, ("bad_request",), {"json": {**body, name: None}})
    for name, prop in properties.items():
        for value, code in wrong_values(prop):
            yield Case("wrong field type", method, path, 400, (code,), {"json": {**good, name: value}})
    if "id" in properties and path not in ID_ROUTES_CREATE:
        yield Case("unknown namespace", method, path, 404, ("namespace_not_found",),
                   {"json": {**good, "id": "ghost"}})
    padding = "#" + "x" * MAX_BODY
    big = {**good, "code": SENTINEL + padding} if "code" in good else {**good, "pad": padding}
    yield Case("oversize body", method, path, 413, ("payload_too_large",), {"json": big})
    yield Case("oversize body", method, path, 413, ("payload_too_large",),
               {"data": {k: str(v) for k, v in big.items()}})


def query_cases(method: str, path: str, operation: dict[str, Any]) -> Iterator[Case]:
    parameters = [resolve(p) for p in operation["parameters"]]
    good = {p["name"]: ("keep" if p["name"] == "id" else "1") for p in parameters if p["required"]}
    for p in parameters:
        name = p["name"]
        if p["required"]:
            query = {k: v for k, v in good.items() if k != name}
            yield Case("missing field", method, path, 400, ("bad_request",), {"query_string": query})
        if name == "id":
            for value, code in (("", "invalid_id"), ("../etc", "invalid_id"), ("x" * 65, "invalid_id")):
                yield Case("wrong field type", method, path, 400, (code,),
                           {"query_string": {**good, "id": value}})
            yield Case("unknown namespace", method, path, 404, ("namespace_not_found",),
                       {"query_string": {**good, "id": "ghost"}})
        else:
            for value, code in wrong_value_query(name):
                yield Case("wrong field type", method, path, 400, (code,),
                           {"query_string": {**good, name: value}})


CASES = cases()


def test_the_walk_covers_every_route_and_every_kind_of_bad_input() -> None:
    kinds_by_route: dict[tuple[str, str], set[str]] = {}
    for case in CASES:
        kinds_by_route.setdefault((case.method, case.path), set()).add(case.kind)
    for path, operations in SPEC["paths"].items():
        for method, operation in operations.items():
            kinds = kinds_by_route.get((method.upper(), path), set())
            if "requestBody" in operation:
                assert kinds >= {"wrong content type", "invalid JSON", "missing field",
                                 "wrong field type", "oversize body"}, (method, path, kinds)
            names = {resolve(p)["name"] for p in operation.get("parameters", [])}
            if "id" in names:
                assert kinds >= {"missing field", "wrong field type", "unknown namespace"}, (path, kinds)
            elif names:  # only optional parameters (/info?kernel=)
                assert "wrong field type" in kinds, (path, kinds)
        assert any(c.kind == "wrong method" and c.path == path for c in CASES), path
    all_kinds = {c.kind for c in CASES}
    assert all_kinds == {"wrong method", "wrong content type", "invalid JSON", "missing field",
                         "wrong field type", "unknown namespace", "oversize body"}


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One inprocess app for the whole walk, with a kept namespace holding state to lose."""
    app: Flask = create_app({"backend": "inprocess", "token": TOKEN, "max_body_bytes": MAX_BODY,
                             "data_dir": str(tmp_path_factory.mktemp("walk"))})
    client = app.test_client()
    assert client.post("/env/create", json={"id": "keep"}, headers=AUTH).status_code == 201
    assert client.post("/execute", json={"id": "keep", "code": "ran = []\nkept = 41"},
                       headers=AUTH).status_code == 200
    yield client
    # Nothing any bad request carried ran, and the namespace kept its state and was not restarted.
    after = client.post("/execute", json={"id": "keep", "code": "(ran, kept)"}, headers=AUTH)
    assert after.get_json()["result"] == {"text/plain": "([], 41)"}
    listed = [ns["id"] for ns in client.get("/env/list", headers=AUTH).get_json()["envs"]]
    assert listed == ["keep"], "a bad request created or deleted a namespace"
    app.extensions["kernelserver"].close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_the_error_shape_with_a_fitting_4xx(walked: Any, case: Case) -> None:
    response = walked.open(case.path, method=case.method, headers=AUTH, **case.kwargs)
    text = response.get_data(as_text=True)
    assert response.status_code == case.status, f"{case.name}: {response.status_code} {text[:300]}"
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] in case.codes, text
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip()
    assert "Traceback" not in text and 'File "' not in text
    if case.documented:
        check(response, case.path, case.method)
