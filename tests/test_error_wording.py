"""Errors carry reasons; each front end (v1, Jupyter, CLI) words its own hint (issue 26)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from kernelserver.cli.common import _error_line
from kernelserver.client import Client
from kernelserver.errors import (
    NamespaceNotFound,
    NamespaceUnavailable,
    PayloadTooLarge,
    QueueFull,
    ServerUnavailable,
    TooManyNamespaces,
    TooManyWebSockets,
    error_class,
)
from kernelserver.web.app import v1_error_body
from kernelserver.web.jupyter import replies

from helpers import AUTH, start_server

PACKAGE = Path(__file__).resolve().parent.parent / "kernelserver"

# (why, history, idle, cull_idle_after) -> the core message, the v1 message, the Jupyter
# message, the CLI line.
REASONS = {
    "unknown": (
        ("unknown", False, None, None),
        "no namespace 'x'",
        "no namespace 'x'; create it with POST /env/create",
        "no namespace 'x'; start a new kernel with POST /api/kernels",
        "no namespace 'x' (`kernelserver ls` lists the namespaces)"),
    "deleted-with-history": (
        ("deleted", True, None, None),
        "no namespace 'x' now: it was deleted; its history is kept",
        "no namespace 'x' now: it was deleted; its history is kept (GET /env/history?id=x); "
        "create it again with POST /env/create",
        "no namespace 'x' now: it was deleted; its history is kept; "
        "start a new kernel with POST /api/kernels",
        "no namespace 'x' now: it was deleted; its history is kept (`kernelserver history x`)"),
    "deleted-without-history": (
        ("deleted", False, None, None),
        "no namespace 'x' now: it was deleted",
        "no namespace 'x' now: it was deleted; create it again with POST /env/create",
        "no namespace 'x' now: it was deleted; start a new kernel with POST /api/kernels",
        "no namespace 'x' now: it was deleted (`kernelserver ls` lists the namespaces)"),
    "culled": (
        ("culled", True, 12.3, 10.0),
        "namespace 'x' was deleted after 12 s idle (cull_idle_after 10 s) to free its memory; "
        "its history is kept",
        "namespace 'x' was deleted after 12 s idle (cull_idle_after 10 s) to free its memory; "
        "its history is kept (GET /env/history?id=x); create it again with POST /env/create",
        "namespace 'x' was deleted after 12 s idle (cull_idle_after 10 s) to free its memory; "
        "its history is kept; start a new kernel with POST /api/kernels",
        "namespace 'x' was deleted after 12 s idle (cull_idle_after 10 s) to free its memory; "
        "its history is kept (`kernelserver history x`)"),
    "server-restarted": (
        ("server_restarted", True, None, None),
        "no namespace 'x' now: namespaces do not survive a restart of the server, but its "
        "history does",
        "no namespace 'x' now: namespaces do not survive a restart of the server, but its "
        "history does (GET /env/history?id=x); create it again with POST /env/create",
        "no namespace 'x' now: namespaces do not survive a restart of the server, but its "
        "history does; start a new kernel with POST /api/kernels",
        "no namespace 'x' now: namespaces do not survive a restart of the server, but its "
        "history does (`kernelserver history x`)"),
}


@pytest.mark.parametrize("reason", list(REASONS), ids=list(REASONS))
def test_every_not_found_reason_is_worded_by_each_front_end(reason: str) -> None:
    (why, history, idle, after), core, v1, jupyter, cli = REASONS[reason]
    exc = NamespaceNotFound.missing("x", why, history, idle=idle, cull_idle_after=after)
    assert exc.message == core and "/env/" not in core and "/api/" not in core
    body = v1_error_body(exc)["error"]
    assert body["code"] == "namespace_not_found" and body["message"] == v1
    assert body["id"] == "x" and body["why"] == why and body["history"] is history
    assert replies.error_message(exc) == jupyter
    assert replies.failure(exc)["evalue"] == jupyter
    # The CLI reads what the client rebuilt from the v1 body, as it does against a server.
    details = {k: v for k, v in body.items() if k not in ("code", "message")}
    received = error_class(body["code"], 404)(body["message"], **details)
    assert _error_line(received, "http://s", True) == (cli, 1)


def test_the_cli_words_the_namespace_limit_itself() -> None:
    body = v1_error_body(TooManyNamespaces.for_limit(3))["error"]
    assert body["message"] == ("namespace limit reached (3); delete one with POST /env/delete or "
                               "raise max_namespaces")
    received = error_class(body["code"], 429)(body["message"], limit=body["limit"])
    assert _error_line(received, "http://s", True) == (
        "namespace limit reached (3); delete one with `kernelserver rm ID`", 2)


def _message_strings(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings (f-string pieces included)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_core_names_no_v1_route_in_its_messages() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] in ("web", "cli"):
            continue
        for text in _message_strings(path):
            if "POST /env/" in text or "GET /env/" in text:
                offenders.append(f"{path.relative_to(PACKAGE)}: {text!r}")
    assert offenders == []


def test_split_modules_stay_under_400_lines() -> None:
    for name in ("history.py", "namespace.py"):
        assert len((PACKAGE / name).read_text().splitlines()) <= 400, name


@pytest.mark.parametrize(("exc", "seconds"), [
    (TooManyNamespaces.for_limit(1), "10"), (QueueFull.for_limit("x", 1), "1"),
    (NamespaceUnavailable("starting"), "2"), (TooManyWebSockets("full"), "5"),
    (ServerUnavailable("no workers"), "5"),
], ids=["too_many_namespaces", "queue_full", "namespace_unavailable", "too_many_websockets",
        "unavailable"])
def test_429_and_503_say_when_to_retry(make_app: Callable[..., Flask], exc: Any,
                                       seconds: str) -> None:
    app = make_app(backend="inprocess")
    from kernelserver.web.app import render_error

    with app.test_request_context("/execute", method="POST"):
        response = render_error(exc)
    assert response.status_code == exc.status and response.headers["Retry-After"] == seconds
    assert replies.error_headers(exc) == {"Retry-After": seconds}
    assert replies.error_headers(NamespaceNotFound.missing("x")) == {}


def test_the_v1_answers_carry_retry_after_and_the_jupyter_body_no_v1_route(
        make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", max_namespaces=1).test_client()
    assert client.post("/env/create", json={"id": "a"}, headers=AUTH).status_code == 201
    refused = client.post("/env/create", json={"id": "b"}, headers=AUTH)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
    assert refused.get_json()["error"]["limit"] == 1
    assert client.post("/env/delete", json={"id": "a"}, headers=AUTH).status_code == 200
    gone = client.get("/api/kernels/a", headers=AUTH)
    assert gone.status_code == 404 and "/env/" not in gone.get_json()["message"]
    assert "it was deleted" in gone.get_json()["message"]


def test_the_jupyter_rest_body_words_its_own_hint(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", max_namespaces=1).test_client()
    never = client.get("/api/kernels/never", headers=AUTH).get_json()["message"]
    assert never == "no namespace 'never'; start a new kernel with POST /api/kernels"
    client.post("/env/create", json={"id": "a"}, headers=AUTH)
    refused = client.post("/api/kernels", json={"name": "python3"}, headers=AUTH)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"


def test_the_413_is_made_in_one_place(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", max_body_bytes=1000).test_client()
    answer = client.post("/execute", json={"code": "a" * 2000}, headers=AUTH).get_json()["error"]
    assert answer["message"] == PayloadTooLarge.for_limit(1000).message
    assert answer["limit"] == 1000


def test_the_client_keeps_retry_after_and_the_cli_words_a_deleted_namespace(
        tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"KERNELSERVER_MAX_NAMESPACES": "1",
                                         "KERNELSERVER_BACKEND": "inprocess"})
    try:
        with Client(server.url, server.token) as client:
            client.namespace("kept").run("1")
            with pytest.raises(TooManyNamespaces) as refused:
                client.namespace("other")
            assert refused.value.response.headers["Retry-After"] == "10"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSERVER_")}
        env.update(KERNELSERVER_URL=server.url, KERNELSERVER_TOKEN=server.token)

        def ks(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "kernelserver.cli", *args],
                                  capture_output=True, text=True, timeout=60, env=env)

        assert ks("rm", "kept").returncode == 0
        again = ks("rm", "kept")
        assert (again.returncode, again.stderr) == (1, (
            "kernelserver: error: no namespace 'kept' now: it was deleted; its history is kept "
            "(`kernelserver history kept`)\n"))
    finally:
        server.stop()
