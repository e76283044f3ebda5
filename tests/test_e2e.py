"""End to end against a real `kernelserver serve` (gunicorn) on a free loopback port."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Flask

from kernelserver import Client
from kernelserver.errors import CellError, ConnectionFailed, LimitExceeded, NamespaceNotFound, Unauthorized

from helpers import TOKEN, LiveServer, free_port, pid_alive, process_tree, start_server, wait_until

pytestmark = pytest.mark.slow


def curl(*args: str) -> str:
    done = subprocess.run(["curl", "-s", "--max-time", "30", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_json_form_and_multipart(live_server: LiveServer) -> None:
    auth = f"Authorization: Bearer {live_server.token}"
    out = json.loads(curl("-H", auth, "-H", "Content-Type: application/json",
                          "-d", json.dumps({"code": "print('from json')\n6 * 7"}),
                          live_server.url + "/execute"))
    assert out["stdout"] == "from json\n" and out["result"] == {"text/plain": "42"}
    out = json.loads(curl("-H", auth, "--data-urlencode", "code=x = 1 + 1\nx",
                          live_server.url + "/execute"))
    assert out["result"] == {"text/plain": "2"}
    out = json.loads(curl("-H", auth, "-F", "id=multi", "-F", "syntax=python",
                          live_server.url + "/env/create"))
    assert out == {"id": "multi", "created": True, "envs": ["default", "multi"], "memory_limit": 0,
                   "cull_idle_after": 0, "syntax": "python", "kernel": "python3"}
    denied = json.loads(curl(live_server.url + "/env/list"))
    assert denied["error"]["code"] == "unauthorized"
    rebinding = json.loads(curl("-H", "Host: attacker.example", live_server.url + "/health"))
    assert rebinding["error"]["code"] == "host_not_allowed"


def test_client_against_real_server(live_server: LiveServer) -> None:
    with Client(live_server.url, live_server.token) as client:
        assert client.health() == {"status": "ok"}
        ns = client.namespace("exp")
        ns.run("import math\nr = 2")
        result = ns.run("print('area')\nmath.pi * r ** 2")
        assert result.ok and result.stdout == "area\n"
        assert result.result is not None and result.result["text/plain"].startswith("12.566")
        failed = ns.run("1/0")
        assert failed.status == "error" and failed.error is not None
        with pytest.raises(CellError, match="ZeroDivisionError") as caught:
            failed.raise_for_error()
        assert "1/0" in str(caught.value)
        assert {v["name"] for v in ns.variables()} >= {"r"}
        assert [n["id"] for n in client.namespaces()] == ["exp"]
        assert [h["code"] for h in ns.history()][-1] == "1/0"
        ns.delete()
        with pytest.raises(NamespaceNotFound):
            client.namespace("exp", create=False).variables()
    with Client(live_server.url, "wrong") as bad, pytest.raises(Unauthorized):
        bad.namespaces()
    with Client(f"http://127.0.0.1:{free_port()}", "x", timeout=2) as gone, \
            pytest.raises(ConnectionFailed, match="cannot reach"):
        gone.health()


def test_client_lowers_limits_per_cell_and_gets_a_clear_error_above_them(live_server: LiveServer) -> None:
    with Client(live_server.url, live_server.token) as client:
        ns = client.namespace("limits")
        cut = ns.run("print('a' * 100)\n'b' * 100", output_cap_bytes=10, repr_limit_bytes=10)
        assert cut.truncated and cut.stdout.startswith("aaaaa\n[kernelserver: output truncated")
        assert cut.result is not None and cut.result["text/plain"].startswith("'bbbbbbbbb\n")
        with pytest.raises(LimitExceeded, match="above this server's limit") as caught:
            ns.run("1", output_cap_bytes=10**12)
        assert caught.value.details == {"limit": "output_cap_bytes", "max": 8 * 1024 * 1024}
        assert ns.run("'b' * 100").result == {"text/plain": repr("b" * 100)}


def test_client_long_cell_with_wait_and_result_wait(live_server: LiveServer) -> None:
    with Client(live_server.url, live_server.token) as client:
        ns = client.namespace()
        pending = ns.run("import time\ntime.sleep(1.5)\n'slept'", wait=0.2)
        assert pending.status in ("queued", "running")
        done = pending.wait(timeout=30)
        assert done.status == "ok" and done.result == {"text/plain": "'slept'"}
        assert ns.execution(pending.execution_count).result == {"text/plain": "'slept'"}


def _children(server: LiveServer) -> set[int]:
    return process_tree(server.proc.pid) - {server.proc.pid}


def _workers_of(server: LiveServer, ids: list[str]) -> list[int]:
    pids = []
    for namespace_id in ids:
        info = requests.post(server.url + "/env/get", json={"id": namespace_id},
                             headers=server.headers, timeout=30).json()
        pids.append(info["pid"])
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_worker_survives_the_server(tmp_path: Path, sig: int) -> None:
    server = start_server(tmp_path)
    try:
        with Client(server.url, server.token) as client:
            for name in ("a", "b"):
                client.namespace(name).run("x = 1")
            # One of them busy in a long cell when the server goes.
            client.namespace("a").run("import time\ntime.sleep(120)", wait=0.1)
        workers = _workers_of(server, ["a", "b"])
        everything = _children(server)
        assert set(workers) <= process_tree(os.getpid())
        server.proc.send_signal(sig)
        server.proc.wait(30)
        assert wait_until(lambda: not any(pid_alive(p) for p in everything), 15), [
            p for p in everything if pid_alive(p)]
    finally:
        server.stop(signal.SIGKILL)


def test_token_never_reaches_worker_environment(tmp_path: Path) -> None:
    secret = "env-token-that-must-not-leak-42"
    server = start_server(tmp_path, token=secret, env={"KERNELSERVER_TOKEN": secret,
                                                       "KS_TEST_MARKER": "kept"})
    try:
        with Client(server.url, secret) as client:
            result = client.run(
                "import os\n"
                "raw = open('/proc/self/environ', 'rb').read()\n"
                "parent = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
                f"(os.environ.get('KERNELSERVER_TOKEN'), {secret!r}.encode() in raw + parent, "
                "os.environ.get('KS_TEST_MARKER'))")
        assert result.result == {"text/plain": "(None, False, 'kept')"}
    finally:
        server.stop()


def test_worker_inherits_no_server_socket(live_server: LiveServer) -> None:
    with Client(live_server.url, live_server.token) as client:
        result = client.run(
            "import os, socket, stat\n"
            "listening = []\n"
            "for fd in map(int, os.listdir('/proc/self/fd')):\n"
            "    try:\n"
            "        if not stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
            "            continue\n"
            "        s = socket.socket(fileno=os.dup(fd))\n"
            "        if s.family in (socket.AF_INET, socket.AF_INET6):\n"
            "            listening.append(fd)\n"
            "        s.close()\n"
            "    except OSError:\n"
            "        pass\n"
            "listening")
    assert result.result == {"text/plain": "[]"}


def _documented_gunicorn() -> list[str]:
    """The gunicorn command wsgi.py's docstring documents, as argv."""
    doc = ast.get_docstring(ast.parse((Path(__file__).resolve().parent.parent / "wsgi.py").read_text()))
    line = next(ln.strip() for ln in (doc or "").splitlines() if ln.strip().startswith("gunicorn "))
    return [sys.executable, "-m", *shlex.split(line)]


def test_documented_wsgi_command_honours_the_port_and_uses_our_worker(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "KERNELSERVER_TOKEN": TOKEN, "KERNELSERVER_PORT": str(port),
           "KERNELSERVER_DATA_DIR": str(tmp_path / "d"), "KERNELSERVER_BACKEND": "inprocess"}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(_documented_gunicorn(), cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(url + "/health", timeout=1).ok
            except requests.RequestException:
                return False

        assert wait_until(up, 30)
        # Our worker answers a request gunicorn cannot parse in the JSON error shape.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400") and b'"code":"bad_request"' in answer.replace(b" ", b"")
    finally:
        proc.terminate()
        proc.wait(30)


def test_wsgi_with_two_workers_is_refused_and_prints_one_token_at_most(tmp_path: Path) -> None:
    env = {**os.environ, "KERNELSERVER_PORT": str(free_port()),
           "KERNELSERVER_DATA_DIR": str(tmp_path / "d"), "KERNELSERVER_BACKEND": "inprocess"}
    env.pop("KERNELSERVER_TOKEN", None)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([*_documented_gunicorn(), "-w", "2"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "exactly one worker" in done.stderr
    # Only the worker that took the data dir's lock generated (and printed) a token.
    assert done.stderr.count("generated one:") <= 1


def test_a_refused_create_app_prints_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from kernelserver import create_app
    from kernelserver.datadir import ServerLockError

    monkeypatch.delenv("KERNELSERVER_TOKEN", raising=False)
    config = {"data_dir": str(tmp_path / "d"), "backend": "inprocess"}
    first = create_app(config)
    try:
        assert capsys.readouterr().err.count("generated one:") == 1
        with pytest.raises(ServerLockError, match="in use by"):
            create_app(config)
        assert "generated one" not in capsys.readouterr().err
    finally:
        first.extensions["kernelserver"].close()


def test_serve_with_a_given_token_prints_a_working_way_to_it_not_the_token(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        wait_until(lambda: "jupyter:" in server.output(), 5)
        log = server.output()
        assert TOKEN not in log and "$KERNELSERVER_TOKEN" not in log
        console = next(ln for ln in log.splitlines() if ln.startswith("console:"))
        assert f"open {server.url}/ and paste your token" in console
        # The command it names prints the token (what the jupyter line runs too).
        ask = console.split("`")[1]
        jupyter = next(ln for ln in log.splitlines() if ln.startswith("jupyter:"))
        assert f'--GatewayClient.auth_token="$({ask})"' in jupyter
        argv = shlex.split(ask)
        printed = subprocess.run([sys.executable, "-m", "kernelserver.cli", *argv[1:]],
                                 capture_output=True, text=True, timeout=30)
        assert printed.stdout.strip() == TOKEN
    finally:
        server.stop()


def test_serve_refuses_no_auth_off_loopback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kernelserver.cli", "serve", "--no-auth", "--host", "0.0.0.0",
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == ("kernelserver: error: --no-auth is refused unless --host is a "
                                   "loopback address")


def test_serve_generates_and_prints_a_token(tmp_path: Path) -> None:
    server = start_server(tmp_path, token="")
    try:
        wait_until(lambda: "token (generated" in server.output(), 5)
        log = server.output()
        token = log.split("token (generated, shown once): ")[1].split()[0]
        assert "--data-urlencode 'code=1+1'" in log
        assert f"console: {server.url}/#token={token}" in log and "$KERNELSERVER_TOKEN" not in log
        ok = requests.get(server.url + "/env/list", headers={"Authorization": f"Bearer {token}"},
                          timeout=10)
        assert ok.status_code == 200
    finally:
        server.stop()


def test_env_execution_answers_200_while_running_as_the_contract_pins(
        make_app: Callable[..., Flask]) -> None:
    from helpers import AUTH

    client = make_app(backend="inprocess").test_client()
    submitted = client.post("/execute", headers=AUTH,
                            json={"code": "import time\ntime.sleep(1.5)", "wait": 0})
    assert submitted.status_code == 202  # the submit's own "wait ran out"
    n = submitted.get_json()["execution_count"]
    running = client.get(f"/env/execution?id=default&n={n}", headers=AUTH)
    assert running.status_code == 200
    assert running.get_json()["status"] in ("queued", "running")
    assert running.get_json()["code"] == "import time\ntime.sleep(1.5)"
    # The OpenAPI document and the README say the same.
    spec = json.loads((Path(__file__).resolve().parent.parent / "kernelserver" / "web"
                       / "openapi.json").read_text())
    assert set(spec["paths"]["/env/execution"]["get"]["responses"]) & {"200", "202"} == {"200"}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    row = next(ln for ln in readme.splitlines() if ln.startswith("| `GET /env/execution`"))
    assert "200 that execution, running or finished" in row and "202" not in row
