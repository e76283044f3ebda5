"""Shared parts of the benchmarks: the servers, a keep-alive HTTP client, Jupyter, statistics."""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
TOKEN = "bench-token-0123456789abcdef"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of pid."""
    return _status_kib(pid, "VmRSS") * 1024


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


class PeakRSS:
    """The peak RSS of a process over a block: the kernel's exact high-water mark (VmHWM, reset
    through /proc/PID/clear_refs) where allowed, else sampled every 5 ms (may miss a brief peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRSS:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self.exact = True
        except OSError:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.exact:
            self.peak = _status_kib(self.pid, "VmHWM") * 1024
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


@dataclass
class Server:
    """A server subprocess on 127.0.0.1:port."""

    proc: subprocess.Popen[bytes]
    port: int
    app_pid: Callable[[], int]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _lock_pid(lock: Path) -> int:
    """The pid of the server process holding a data dir (a JSON lock file, or a bare pid before)."""
    text = lock.read_text()
    return int(text) if text.strip().isdigit() else int(json.loads(text)["pid"])


def _wait_for_health(proc: subprocess.Popen[bytes], port: int, path: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET" if path == "/health" else "POST", path, body=b"{}",
                         headers={"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not come up")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


@contextmanager
def kernelserver(env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[Server]:
    """`kernelserver serve` on a free port, with a private data dir; stopped at exit.

    `python -m` imports kernelserver from cwd first: cwd picks the checkout that serves.
    """
    with tempfile.TemporaryDirectory(prefix="ks-bench-") as tmp:
        port = free_port()
        full_env = {**os.environ, "KERNELSERVER_TOKEN": TOKEN, **(env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "kernelserver.cli", "serve", "--port", str(port),
                                 "--data-dir", f"{tmp}/data"], env=full_env, cwd=cwd,
                                stdout=subprocess.DEVNULL,
                                # BENCH_DEBUG=1 shows the server's log.
                                stderr=None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL)
        server = Server(proc, port, lambda: _lock_pid(Path(f"{tmp}/data/server.lock")))
        try:
            _wait_for_health(proc, port, "/health")
            yield server
        finally:
            server.stop()


@contextmanager
def floor_server() -> Iterator[Server]:
    """The constant-JSON Flask route under the same gunicorn configuration (bench/floor.py)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "floor.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, port, lambda: _children(proc.pid)[0])
    try:
        _wait_for_health(proc, port, "/floor")
        yield server
    finally:
        server.stop()


class Http:
    """One keep-alive connection (http.client, as a plain script would use)."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers=self.headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def get_json(self, path: str) -> dict[str, Any]:
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, data = self.post(path, body)
        if status >= 300:
            raise RuntimeError(f"{path}: HTTP {status}: {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def stream(self, path: str, body: dict[str, Any], on_chunk: Callable[[bytes], None]) -> None:
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers=self.headers)
        response = self.conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
        while chunk := response.read1(1 << 20):
            on_chunk(chunk)

    def close(self) -> None:
        self.conn.close()


@contextmanager
def jupyter_kernel() -> Iterator[Any]:
    """An ipykernel started by jupyter_client, with a blocking client ready."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def jupyter_execute(client: Any, code: str, on_output: Callable[[str], None] | None = None) -> None:
    """Run code on a Jupyter kernel, reading iopub until idle (how a client gets its output)."""
    msg_id = client.execute(code, store_history=False)
    while True:
        msg = client.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream" and on_output is not None:
            on_output(msg["content"]["text"])
        elif kind == "error":
            raise RuntimeError(f"Jupyter cell failed: {msg['content']['ename']}")
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    client.get_shell_msg(timeout=120)


def timed(call: Callable[[], Any], batch: int) -> list[float]:
    """Seconds each of batch calls took, one after another."""
    out = []
    for _ in range(batch):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def percentile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def machine() -> str:
    """One line about the machine the figures come from."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def interleave(rounds: int, measures: dict[str, Callable[[], T]]) -> dict[str, list[T]]:
    """Run each measure once per round, in turn, so drift on the machine hits them all alike."""
    samples: dict[str, list[T]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    return samples
