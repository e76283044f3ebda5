"""The v1 routes through the Flask test client, on both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from kernelserver.errors import NamespaceUnavailable

from helpers import AUTH, ApiClient


def test_execute_defaults_to_the_default_namespace(api: ApiClient) -> None:
    data = api.run("print('hi')\n1 + 1")
    assert data["id"] == "default"
    assert data["status"] == "ok"
    assert data["stdout"] == "hi\n"
    assert data["result"] == {"text/plain": "2"}
    assert data["error"] is None and data["truncated"] is False and data["restarted"] is False
    assert data["execution_count"] == 1
    assert isinstance(data["duration_ms"], float) and data["started_at"].endswith("Z")


def test_execute_alias_root(api: ApiClient) -> None:
    response = api.post("/", json={"code": "3 * 3"})
    assert response.status_code == 200
    assert response.get_json()["result"] == {"text/plain": "9"}


def test_state_persists_across_requests(api: ApiClient) -> None:
    api.create("s")
    api.run("def greet(name):\n    return f'hello {name}'", id="s")
    assert api.run("greet('you')", id="s")["result"] == {"text/plain": "'hello you'"}


def test_output_before_an_exception_is_kept(api: ApiClient) -> None:
    data = api.run("import sys\nprint('before')\nprint('warn', file=sys.stderr)\n1/0")
    assert data["status"] == "error"
    assert data["stdout"] == "before\n"
    assert data["stderr"] == "warn\n"
    assert data["error"]["ename"] == "ZeroDivisionError"
    assert "1/0" in data["error"]["traceback"]


def test_sys_exit_and_input(api: ApiClient) -> None:
    assert api.run("import sys; sys.exit(2)")["error"]["ename"] == "SystemExit"
    assert api.run("input()")["error"]["ename"] == "StdinNotImplementedError"
    assert api.run("'still alive'")["result"] == {"text/plain": "'still alive'"}


def test_unicode_round_trips(api: ApiClient) -> None:
    data = api.run("print('ünïcödé ✓ 日本語 🐍')\n'→'")
    assert data["stdout"] == "ünïcödé ✓ 日本語 🐍\n"
    assert data["result"] == {"text/plain": "'→'"}


def test_twenty_thousand_lines_exact(api: ApiClient) -> None:
    data = api.run("for i in range(20000):\n    print(i)")
    assert data["stdout"] == "".join(f"{i}\n" for i in range(20000))


def test_execution_count_increments_per_namespace(api: ApiClient) -> None:
    api.create("c")
    counts = [api.run("1", id="c")["execution_count"] for _ in range(3)]
    assert counts == [1, 2, 3]
    assert api.run("1")["execution_count"] == 1  # default namespace counts on its own


def test_create_get_list_delete(api: ApiClient, backend: str) -> None:
    first = api.create("ns1")
    assert first.status_code == 201
    # IPython syntax by default; the inprocess backend (one process, one IPython shell) only on request.
    assert first.get_json() == {"id": "ns1", "created": True, "envs": ["ns1"], "memory_limit": 0,
                                "cull_idle_after": 0,
                                "syntax": "python" if backend == "inprocess" else "ipython",
                                "kernel": "python3"}
    again = api.create("ns1")
    assert again.status_code == 200 and again.get_json()["created"] is False
    api.run("answer = 42", id="ns1")
    info = api.post("/env/get", json={"id": "ns1"}).get_json()
    assert info["id"] == "ns1" and info["state"] == "idle" and info["execution_count"] == 1
    assert {"name": "answer", "type": "int", "repr": "42"} in info["variables"]
    listed = api.get("/env/list").get_json()["envs"]
    assert [e["id"] for e in listed] == ["ns1"] and "variables" not in listed[0]
    deleted = api.post("/env/delete", json={"id": "ns1"})
    assert deleted.get_json() == {"id": "ns1", "deleted": True, "envs": []}
    assert api.post("/env/get", json={"id": "ns1"}).status_code == 404


def test_unknown_namespace_says_how_to_create_it(api: ApiClient) -> None:
    response = api.post("/execute", json={"id": "nope", "code": "1"})
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "namespace_not_found"
    assert "POST /env/create" in error["message"]


def test_form_urlencoded_post(api: ApiClient) -> None:
    response = api.post("/execute", data={"code": "print('form')\n2 + 3", "id": "default"})
    assert response.status_code == 200
    assert response.get_json()["stdout"] == "form\n"
    assert response.get_json()["result"] == {"text/plain": "5"}


def test_multipart_post(api: ApiClient) -> None:
    response = api.post("/env/create", data={"id": "mp"}, content_type="multipart/form-data")
    assert response.status_code == 201
    response = api.post("/execute", data={"id": "mp", "code": "7 * 6", "timeout": "5"},
                        content_type="multipart/form-data")
    assert response.get_json()["result"] == {"text/plain": "42"}


def test_interrupt_when_idle_is_false(api: ApiClient) -> None:
    api.create("idle")
    response = api.post("/env/interrupt", json={"id": "idle"})
    assert response.get_json() == {"id": "idle", "interrupted": False}


def test_restart_gives_fresh_namespace(api: ApiClient) -> None:
    api.create("r")
    api.run("x = 1", id="r")
    info = api.post("/env/restart", json={"id": "r"}).get_json()
    assert info["variables"] == []
    data = api.run("x", id="r")
    assert data["error"]["ename"] == "NameError"
    assert data["execution_count"] == 2  # counts continue after a restart


def test_one_namespace_runs_in_arrival_order(api: ApiClient) -> None:
    api.create("order")
    api.run("seen = []", id="order")
    results: list[int] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        data = api.run(f"import time\ntime.sleep(0.05)\nseen.append({i})", id="order")
        with lock:
            results.append(data["execution_count"])

    threads = []
    for i in range(3):
        thread = threading.Thread(target=send, args=(i,))
        thread.start()
        threads.append(thread)
        # Submit strictly one after another so arrival order is known.
        assert _wait_for_count(api, "order", i + 2)
    for thread in threads:
        thread.join(30)
    assert api.run("seen", id="order")["result"] == {"text/plain": "[0, 1, 2]"}
    assert sorted(results) == [2, 3, 4]


def _wait_for_count(api: ApiClient, namespace: str, count: int) -> bool:
    from helpers import wait_until

    def reached() -> bool:
        envs = api.get("/env/list").get_json()["envs"]
        return any(e["id"] == namespace and e["execution_count"] >= count for e in envs)

    return wait_until(reached, 10)


def test_concurrent_namespaces_never_mix_output(api: ApiClient) -> None:
    api.create("left")
    api.create("right")
    failures: list[str] = []

    def hammer(namespace: str) -> None:
        for i in range(200):
            data = api.run(f"for _ in range(3):\n    print('{namespace}-{i}')", id=namespace)
            expected = f"{namespace}-{i}\n" * 3
            if data["stdout"] != expected:
                failures.append(f"{namespace} {i}: {data['stdout']!r}")

    threads = [threading.Thread(target=hammer, args=(n,)) for n in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []


def test_health_needs_no_token(app: Flask) -> None:
    response = app.test_client().get("/health")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_info_reports_version_backend_and_limits(api: ApiClient, backend: str) -> None:
    data = api.get("/info").get_json()
    assert data["backend"] == backend
    assert data["limits"]["max_body_bytes"] == 16 * 1024 * 1024
    assert data["limits"]["max_namespaces"] == 32


def test_no_cors_headers(api: ApiClient) -> None:
    response = api.post("/execute", json={"code": "1"},
                        headers={**AUTH, "Origin": "http://evil.example"})
    assert not any(h.lower().startswith("access-control") for h in response.headers.keys())
    preflight = api.raw.options("/execute", headers={"Origin": "http://evil.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert not any(h.lower().startswith("access-control") for h in preflight.headers.keys())


def test_info_answers_when_its_probe_cannot_start(make_app: Callable[..., Flask],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # As a Ray cluster still placing its first actor refuses one: /info says so, not a 503.
    app = make_app(backend="process")
    service = app.extensions["kernelserver"]

    def refuse(namespace_id: str, options: Any) -> Any:
        raise NamespaceUnavailable("no node of the cluster had room for it")

    monkeypatch.setattr(service.backend, "start_kernel", refuse)
    answer = app.test_client().get("/info", headers=AUTH)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["probe"] == {
        "error": "the probe could not start: no node of the cluster had room for it"}
    monkeypatch.undo()
    assert "python" in app.test_client().get("/info", headers=AUTH).get_json()["probe"]
