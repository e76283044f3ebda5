"""Every error path answers the one JSON error shape with a fitting 4xx; auth and Host checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from kernelserver.errors import (
    BadRequest,
    KernelServerError,
    NamespaceNotFound,
    TooManyNamespaces,
    error_class,
)

from helpers import AUTH, TOKEN, wait_until


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return dict(body["error"])


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> Any:
    return make_app(backend="inprocess").test_client()


# Every route's bad input is walked in test_bad_input.py, generated from the OpenAPI document;
# these are the answers that walk does not reach.
ERROR_CASES = [
    ("GET", "/nowhere", {}, 404, "not_found"),
    ("POST", "/nowhere", {"json": {"id": "x"}}, 404, "not_found"),
    # Found by schemathesis: a 2**65 limit overflowed SQLite and answered 500.
    ("GET", "/env/history?id=default&limit=36893488147419103231", {}, 400, "bad_request"),
    ("GET", "/env/execution?id=default&n=-36893488147419103231", {}, 400, "bad_request"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), ERROR_CASES,
                         ids=[f"{c[0]} {c[1]} {c[4]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_error_shape(client: Any, method: str, path: str, kwargs: dict[str, Any], status: int,
                     code: str) -> None:
    response = client.open(path, method=method, headers=AUTH, **kwargs)
    assert_error(response, status, code)


@pytest.mark.parametrize("bad_id", ["../x", "", "a" * 200, "-leading", "has space", "x/y", "ü"],
                         ids=["dotdot", "empty", "200-chars", "leading-dash", "space", "slash",
                              "non-ascii"])
@pytest.mark.parametrize("route", ["/env/create", "/env/get", "/env/delete", "/execute"])
def test_bad_ids_are_400(client: Any, bad_id: str, route: str) -> None:
    response = client.post(route, json={"id": bad_id, "code": "1"}, headers=AUTH)
    assert_error(response, 400, "invalid_id")


def test_longest_valid_id_is_accepted(client: Any) -> None:
    assert client.post("/env/create", json={"id": "a" * 64}, headers=AUTH).status_code == 201


def test_oversize_body_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", max_body_bytes=1000).test_client()
    response = client.post("/execute", json={"code": "x = '" + "a" * 2000 + "'"}, headers=AUTH)
    error = assert_error(response, 413, "payload_too_large")
    assert "1000" in error["message"]
    form = client.post("/execute", data={"code": "a" * 2000}, headers=AUTH)
    assert_error(form, 413, "payload_too_large")


def test_namespace_limit_is_429(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", max_namespaces=2).test_client()
    for name in ("a", "b"):
        assert client.post("/env/create", json={"id": name}, headers=AUTH).status_code == 201
    error = assert_error(client.post("/env/create", json={"id": "c"}, headers=AUTH), 429,
                         "too_many_namespaces")
    assert "limit" in error["message"]
    client.post("/env/delete", json={"id": "a"}, headers=AUTH)
    assert client.post("/env/create", json={"id": "c"}, headers=AUTH).status_code == 201


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "missing"),
    ({"Authorization": "Bearer wrong"}, "wrong"),
    ({"Authorization": f"Basic {TOKEN}"}, "missing"),
    ({"Authorization": "Bearer"}, "missing"),
], ids=["none", "wrong-token", "basic-scheme", "empty-bearer"])
@pytest.mark.parametrize("path", ["/env/list", "/info", "/env/history?id=x"])
def test_auth_required(client: Any, headers: dict[str, str], why: str, path: str) -> None:
    response = client.get(path, headers=headers)
    error = assert_error(response, 401, "unauthorized")
    assert why in error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_auth_on_execute_runs_nothing(client: Any) -> None:
    response = client.post("/execute", json={"code": "open('/tmp/ks-should-not-exist','w')"})
    assert_error(response, 401, "unauthorized")
    ok = client.post("/execute", json={"code": "import os\nos.path.exists('/tmp/ks-should-not-exist')"},
                     headers=AUTH)
    assert ok.get_json()["result"] == {"text/plain": "False"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:5000", "127.0.0.1.evil.example",
                                  "localhost.evil.example"])
def test_host_check_rejects_foreign_names(client: Any, host: str) -> None:
    response = client.get("/health", headers={**AUTH, "Host": host})
    assert_error(response, 403, "host_not_allowed")


@pytest.mark.parametrize("host", ["localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000",
                                  "127.0.0.5", "app.localhost"])
def test_host_check_accepts_loopback_names(client: Any, host: str) -> None:
    assert client.get("/env/list", headers={**AUTH, "Host": host}).status_code == 200


def test_allow_host_adds_a_name(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", allowed_hosts=["box.lan"]).test_client()
    assert client.get("/env/list", headers={**AUTH, "Host": "box.lan:5000"}).status_code == 200
    assert client.get("/env/list", headers={**AUTH, "Host": "other.lan"}).status_code == 403


def test_host_check_off_when_bound_publicly(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", host="0.0.0.0").test_client()
    assert client.get("/env/list", headers={**AUTH, "Host": "box.example"}).status_code == 200


def test_no_auth_refused_off_loopback(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ValueError, match="loopback"):
        make_app(backend="inprocess", host="0.0.0.0", no_auth=True)


def test_no_auth_on_loopback_needs_no_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="inprocess", no_auth=True).test_client()
    assert client.get("/env/list").status_code == 200


def test_error_classes_map_codes_both_ways() -> None:
    assert error_class("namespace_not_found", 404) is NamespaceNotFound
    assert error_class("too_many_namespaces", 429) is TooManyNamespaces
    assert error_class("something_new", 400) is BadRequest
    assert error_class("", 599) is KernelServerError
    assert issubclass(NamespaceNotFound, LookupError)
    assert issubclass(BadRequest, ValueError)


def test_token_leaves_the_environment_of_an_inprocess_server(make_app: Callable[..., Flask],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELSERVER_TOKEN", "from-the-environment")
    app = make_app(backend="inprocess", token=None)
    assert app.extensions["kernelserver"].token == "from-the-environment"
    client = app.test_client()
    data = client.post("/execute", json={"code": "import os\n'KERNELSERVER_TOKEN' in os.environ"},
                       headers={"Authorization": "Bearer from-the-environment"}).get_json()
    assert data["result"] == {"text/plain": "False"}


def test_queue_limit_is_429(make_app: Callable[..., Flask]) -> None:
    client = make_app(backend="process", max_queued=2).test_client()
    first = client.post("/execute", json={"code": "import time\ntime.sleep(2)", "wait": 0},
                        headers=AUTH).get_json()
    # the first is running, not queued
    assert wait_until(lambda: client.get(
        f"/env/execution?id=default&n={first['execution_count']}", headers=AUTH).get_json()["status"]
        == "running", 10)
    for _ in range(2):
        queued = client.post("/execute", json={"code": "1", "wait": 0}, headers=AUTH)
        assert queued.status_code == 202 and queued.get_json()["status"] == "queued"
    error = assert_error(client.post("/execute", json={"code": "1", "wait": 0}, headers=AUTH), 429,
                         "queue_full")
    assert "2 executions queued" in error["message"]
    client.post("/env/interrupt", json={"id": "default"}, headers=AUTH)


def test_data_dir_and_history_are_private(make_app: Callable[..., Flask], tmp_path: Any) -> None:
    import stat

    data_dir = tmp_path / "private"
    make_app(backend="inprocess", data_dir=str(data_dir))
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "history.sqlite3").stat().st_mode) == 0o600
