"""What tests share that is not a fixture: the token, a test client, a real server, process checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from flask.testing import FlaskClient

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class ApiClient:
    """The Flask test client with the token, plus small helpers."""

    def __init__(self, client: FlaskClient) -> None:
        self.raw = client

    def post(self, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", AUTH)
        return self.raw.post(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", AUTH)
        return self.raw.get(path, **kwargs)

    def run(self, code: str, id: str = "default", **extra: Any) -> dict[str, Any]:
        response = self.post("/execute", json={"id": id, "code": code, **extra})
        assert response.status_code in (200, 202), response.get_data(as_text=True)
        data: dict[str, Any] = response.get_json()
        return data

    def create(self, id: str, **options: Any) -> Any:
        return self.post("/env/create", json={"id": id, **options})

    def latest(self, id: str = "default") -> dict[str, Any]:
        """The newest execution of namespace id as /env/execution shows it ({} while none)."""
        rows = self.get(f"/env/history?id={id}&limit=1").get_json()["executions"]
        if not rows:
            return {}
        data: dict[str, Any] = self.get(
            f"/env/execution?id={id}&n={rows[-1]['execution_count']}").get_json()
        return data


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running `kernelserver serve` subprocess."""

    url: str
    token: str
    proc: subprocess.Popen[str]
    data_dir: Path
    log: Path
    log_handle: Any = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.log_handle is not None:
            self.log_handle.close()
            self.log_handle = None


def latest_execution(server: LiveServer, namespace_id: str = "default") -> dict[str, Any]:
    """The newest execution of a live server's namespace, as /env/execution shows it ({} while none)."""
    rows = requests.get(server.url + "/env/history", params={"id": namespace_id, "limit": 1},
                        headers=server.headers, timeout=10).json()["executions"]
    if not rows:
        return {}
    data: dict[str, Any] = requests.get(
        server.url + "/env/execution", params={"id": namespace_id, "n": rows[-1]["execution_count"]},
        headers=server.headers, timeout=10).json()
    return data


def start_server(tmp_path: Path, *args: str, token: str = TOKEN, scheme: str = "http",
                 env: dict[str, str] | None = None, data_dir: Path | None = None,
                 verify: Any = True, up_within: float = 30.0) -> LiveServer:
    """Start `kernelserver serve` on a free port and wait (up_within s) until /health answers."""
    port = free_port()
    data_dir = data_dir or tmp_path / "server-data"
    log = tmp_path / f"server-{port}.log"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("KERNELSERVER_TOKEN", None)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "kernelserver.cli", "serve", "--port", str(port),
           "--data-dir", str(data_dir), *args]
    if token and "--no-auth" not in args and "KERNELSERVER_TOKEN" not in (env or {}):
        cmd += ["--token", token]
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, text=True,
                            env=full_env)
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + up_within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            handle.close()
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if requests.get(url + "/health", timeout=1, verify=verify).ok:
                return LiveServer(url, token, proc, data_dir, log, handle)
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    handle.close()
    raise RuntimeError(f"server did not come up:\n{log.read_text()}")


def process_tree(root: int) -> set[int]:
    """root and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def server_pid(data_dir: Path) -> int:
    """The pid of the server process that holds data_dir (0 while none has said so yet)."""
    try:
        return int(json.loads((data_dir / "server.lock").read_text()).get("pid") or 0)
    except (OSError, ValueError, AttributeError):
        return 0


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def held_until(go_on: Path) -> str:
    """Cell code that waits (60 s at most) until the test creates go_on: a cell still running
    however slow the machine, until the test lets it go."""
    return (f"import os, time\ndeadline = time.monotonic() + 60\n"
            f"while not os.path.exists({str(go_on)!r}) and time.monotonic() < deadline:\n"
            f"    time.sleep(0.02)\n")


def as_fast_as_alone(alone: float, beside: float) -> bool:
    """Whether a call timed beside a burden took no longer than load explains, against the same
    call timed alone in the same run."""
    # Five times and half a second: room for two busy loops on two cores, and far under the
    # seconds-long stalls (a held thread, a cell that blocks its neighbours) these checks catch.
    return beside < 5 * alone + 0.5


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll predicate until true or timeout; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@contextmanager
def jupyter_gateway(tmp_path: Path, gateway_url: str, gateway_token: str, token: str,
                    *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A real jupyter_server whose kernels live in kernelserver (`--gateway-url`), on 127.0.0.1;
    its URL, stopped on leaving whatever happened (its log in tmp_path/jupyter_server.log)."""
    port = free_port()
    full_env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
                "JUPYTER_DATA_DIR": str(tmp_path / "data"),
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), **(env or {})}
    log_path = tmp_path / "jupyter_server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.open_browser=False",
             "--ServerApp.allow_root=True", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={tmp_path}", f"--gateway-url={gateway_url}",
             f"--GatewayClient.auth_token={gateway_token}", *extra],
            env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(url + "/api", timeout=1).ok
            except requests.RequestException:
                return proc.poll() is not None

        try:
            assert wait_until(up, 60, 0.2) and proc.poll() is None, log_path.read_text()
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
