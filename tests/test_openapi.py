"""The hand-written OpenAPI document: served, complete, true to the real answers, fuzzed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask

from helpers import AUTH, start_server
from spec import SPEC, check


def test_document_is_served_without_a_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess").test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator.check_schema(SPEC["components"]["schemas"]["ExecutionResult"])


def test_every_route_is_documented_and_nothing_else(make_app: Callable[..., Flask]) -> None:
    # The document is the v1 API's and the console page's; the Jupyter API (/api/...) follows
    # Jupyter Server's own, and the console's script and style are files of the page.
    app = make_app(backend="inprocess")
    routes = {(m.lower(), r.rule) for r in app.url_map.iter_rules()
              if r.endpoint.startswith("v1.") or r.endpoint == "console.page"
              for m in r.methods or () if m not in ("HEAD", "OPTIONS")}
    others = {r.endpoint for r in app.url_map.iter_rules()
              if r.endpoint.split(".")[0] not in ("v1", "jupyter", "static")}
    assert others == {"console.page", "console.asset"}
    documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert routes == documented


def test_real_answers_match_the_document(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="process", max_namespaces=3).test_client()

    def call(method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", AUTH)
        response = client.open(path.split("?")[0] + ("?" + path.split("?")[1] if "?" in path else ""),
                                method=method, **kwargs)
        check(response, path.split("?")[0], method)
        return response

    call("GET", "/health")
    call("GET", "/openapi.json")
    call("GET", "/info")
    assert call("POST", "/env/create", json={"id": "a"}).status_code == 201
    assert call("POST", "/env/create", data={"id": "a"}).status_code == 200
    call("POST", "/execute", json={"id": "a", "code": "import numpy as np\nx = np.ones((2, 2))\nx"})
    call("POST", "/", json={"id": "a", "code": "display('d')\n1/0"})
    call("POST", "/execute", json={"id": "a", "code": "import time; time.sleep(5)", "timeout": 0.2})
    call("POST", "/execute", json={"id": "a", "code": "print('s')", "stream": True})
    cut = call("POST", "/execute", json={"id": "a", "code": "print('x' * 99)\n'y' * 99",
                                         "output_cap_bytes": 10, "repr_limit_bytes": 10})
    assert cut.get_json()["truncated"] is True
    pending = call("POST", "/execute", json={"id": "a", "code": "import time; time.sleep(0.5)",
                                             "wait": 0})
    assert pending.status_code == 202
    n = pending.get_json()["execution_count"]
    call("GET", f"/env/execution?id=a&n={n}&wait=0")
    call("GET", f"/env/execution?id=a&n={n}&wait=5")
    call("POST", "/env/interrupt", json={"id": "a"})
    call("POST", "/env/get", json={"id": "a"})
    call("GET", "/env/list")
    call("GET", "/env/history?id=a&limit=2")
    call("POST", "/env/restart", json={"id": "a"})
    call("POST", "/env/create", json={"id": "b"})
    call("POST", "/env/create", json={"id": "c"})
    assert call("POST", "/env/create", json={"id": "d"}).status_code == 429
    call("POST", "/env/delete", json={"id": "a"})
    # Errors
    assert call("POST", "/env/get", json={"id": "a"}).status_code == 404
    assert call("GET", "/env/execution?id=a&n=999").status_code == 404
    assert call("GET", "/env/history?id=nobody").status_code == 404
    assert call("POST", "/env/create", json={"id": "../x"}).status_code == 400
    assert call("POST", "/execute", data=b"x", content_type="text/plain").status_code == 415
    assert call("POST", "/execute", json={"code": "1", "repr_limit_bytes": 2**40}).status_code == 400
    assert call("GET", "/env/list", headers={}).status_code == 401
    assert call("GET", "/health", headers={"Host": "evil.example"}).status_code == 403
    assert call("POST", "/env/create", json={"id": "x" * 20_000_000}).status_code == 413


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_break(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
             "-H", f"Authorization: Bearer {server.token}",
             "--checks", "not_a_server_error,response_schema_conformance",
             "--max-examples", "10", "--generation-deterministic", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=400, cwd=tmp_path,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
    assert time.monotonic() - started < 400
