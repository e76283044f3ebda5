"""The request log: one line per request on the server's stderr, never the token or the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from helpers import TOKEN, start_server

pytestmark = pytest.mark.slow

SECRET_CODE = "print('code-must-not-be-logged-7')"


def logged(tmp_path: Path, mode: str | None = None) -> str:
    """The output of a server (request_log mode, else the default) that served the requests."""
    tmp_path.mkdir(exist_ok=True)
    env = {"KERNELSERVER_TOKEN": TOKEN, **({"KERNELSERVER_REQUEST_LOG": mode} if mode else {})}
    server = start_server(tmp_path, env=env)
    try:
        exercise(server.url)
    finally:
        server.stop()
    return server.output()


def exercise(url: str) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    requests.post(url + "/execute", json={"code": SECRET_CODE}, headers=good, timeout=30)
    streamed = requests.post(url + "/execute", json={"code": SECRET_CODE, "stream": True},
                             headers=good, timeout=30)
    assert streamed.text.rstrip().endswith("}")  # read to its end: the line is written then
    requests.post(url + "/execute", json={"code": "1"}, timeout=30)  # no token: 401
    requests.get(url + "/env/history", params={"id": "default", "limit": 5}, headers=good,
                 timeout=30)
    requests.get(url + "/api/kernels", headers={"Authorization": f"token {TOKEN}"}, timeout=30)


def test_text_lines_say_method_path_status_duration_namespace_and_count(tmp_path: Path) -> None:
    log = logged(tmp_path)
    lines = [line for line in log.splitlines()
             if re.match(r"^\d{4}-\d\d-\d\dT", line) and " /health " not in line]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(stamp + r" POST /execute 200 [\d.]+ms id=default execution_count=1",
                        lines[0]), lines
    assert re.fullmatch(stamp + r" POST /execute 200 [\d.]+ms id=default execution_count=2",
                        lines[1]), lines
    assert re.fullmatch(stamp + r" POST /execute 401 [\d.]+ms", lines[2]), lines
    assert re.fullmatch(stamp + r" GET /env/history 200 [\d.]+ms id=default", lines[3]), lines
    assert re.fullmatch(stamp + r" GET /api/kernels 200 [\d.]+ms", lines[4]), lines
    assert TOKEN not in log and "code-must-not-be-logged" not in log and "limit=" not in log


def test_json_lines_and_off(tmp_path: Path) -> None:
    log = logged(tmp_path / "json", "json")
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    records = [r for r in records if r["path"] != "/health"]  # start_server's probes
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", "/execute", 200), ("POST", "/execute", 200), ("POST", "/execute", 401),
        ("GET", "/env/history", 200), ("GET", "/api/kernels", 200)]
    assert records[1]["id"] == "default" and records[1]["execution_count"] == 2
    assert all(isinstance(r["duration_ms"], float) and r["time"].endswith("Z") for r in records)
    assert TOKEN not in log
    assert "/execute" not in logged(tmp_path / "off", "off")
