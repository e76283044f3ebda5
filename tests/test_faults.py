"""The fault cases a hostile probe found: each against a real server, each failing on the old code."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import LiveServer, pid_alive, server_pid, start_server, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("faults"), env={"KERNELSERVER_MAX_BODY_BYTES": "1000"})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def pure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose workers print through the pure-Python path (as where _ringtext is not built)."""
    live = start_server(tmp_path_factory.mktemp("faults-pure"),
                        env={"KERNELSERVER_PURE_PYTHON_OUTPUT": "1"})
    yield live
    live.stop()


@pytest.fixture(params=["default", "pure-python"])
def printing_server(request: pytest.FixtureRequest, server: LiveServer,
                    pure_server: LiveServer) -> LiveServer:
    """Each way a worker's prints reach shared memory."""
    return server if request.param == "default" else pure_server


def post(server: LiveServer, path: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 60)
    return requests.post(server.url + path, json=body, headers=server.headers, **kwargs)


def chunked(server: LiveServer, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    """POST /execute with Transfer-Encoding: chunked (what curl -T - or a streaming client sends)."""
    host, port = server.url.removeprefix("http://").split(":")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 300]), body[i:i + 300])
                      for i in range(0, len(body), 300)) + b"0\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /execute HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.token}\r\n"
                     f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\n".encode() + chunks)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json"])
def test_a_chunked_body_over_the_limit_is_413_and_runs_nothing(server: LiveServer,
                                                              content_type: str) -> None:
    post(server, "/env/create", {"id": "chunks"})
    code = "ran = 'the cut code'\n" + "#" * 1500 + "\nprint('whole')"
    body = (b"id=chunks&code=" + code.encode() if content_type.endswith("urlencoded")
            else json.dumps({"id": "chunks", "code": code}).encode())
    status, answer = chunked(server, body, content_type)
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    assert post(server, "/execute", {"id": "chunks", "code": "'ran' in globals()"}).json()["result"] == {
        "text/plain": "False"}
    # Under the limit, chunked works.
    status, answer = chunked(server, b"id=chunks&code=print('small')", "application/x-www-form-urlencoded")
    assert status == 200 and answer["stdout"] == "small\n"


def test_execution_count_never_repeats_after_a_kill(tmp_path: Path) -> None:
    live = start_server(tmp_path)
    try:
        worker = server_pid(live.data_dir)
        answered = post(live, "/execute", {"code": "1"}).json()["execution_count"]
        os.kill(worker, signal.SIGKILL)  # at once after the answer: no time to flush anything
        # gunicorn starts a new worker, which opens the same history.
        assert wait_until(lambda: server_pid(live.data_dir) != worker
                          and _healthy(live), 30)
        again = post(live, "/execute", {"code": "2"}).json()["execution_count"]
    finally:
        live.stop()
    assert again > answered


def _healthy(server: LiveServer) -> bool:
    try:
        return requests.get(server.url + "/health", timeout=1).ok
    except requests.RequestException:
        return False


def test_a_stalled_stream_reader_does_not_slow_the_cell(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "stall"})
    # 60 MB: more than a stream client may lag (32 MiB) plus what the sockets' buffers hold.
    code = ("import time\nstarted = time.time()\nfor _ in range(600_000):\n    print('x' * 99)\n"
            "print('the last line')\ntime.time() - started")
    body = json.dumps({"id": "stall", "code": code, "stream": True, "timeout": 20}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.settimeout(30)
    sock.connect((host, int(port)))
    try:
        sock.sendall(f"POST /execute HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.token}"
                     f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        seen = bytearray()
        while b"stdout" not in seen:  # the headers, then the first lines of output
            seen += sock.recv(4096)
        time.sleep(4)  # the client stops reading: it holds the stream but takes nothing
        while not seen.endswith(b"\r\n0\r\n\r\n"):  # then reads on, to the end
            chunk = sock.recv(1 << 20)
            assert chunk, "the stream ended without its last chunk"
            seen += chunk
    finally:
        sock.close()
    # Where it fell behind it reads what it missed and where that is kept; then the end of the
    # output and the result.
    assert b"characters of output left out of this stream here" in seen
    assert b"the last line" in seen and b'"event": "result"' in seen.replace(b'":"', b'": "')
    n = requests.get(server.url + "/env/history", params={"id": "stall"}, headers=server.headers,
                     timeout=10).json()["executions"][-1]["execution_count"]
    final = requests.get(server.url + "/env/execution", params={"id": "stall", "n": n, "wait": 40},
                         headers=server.headers, timeout=60).json()
    assert final["status"] == "ok", final["status"]
    assert float(final["result"]["text/plain"]) < 3  # 60 MB in well under the 4 s it was not read


def test_env_get_is_short_and_safe_with_huge_and_endless_reprs(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "reprs"})
    code = ("class Endless:\n    def __repr__(self):\n        while True:\n            pass\n"
            "forever = Endless()\nhuge = 'x' * (200 * 1024 * 1024)\nfine = [1, 2, 3]")
    assert post(server, "/execute", {"id": "reprs", "code": code}).json()["status"] == "ok"
    rss_before = post(server, "/env/get", {"id": "reprs"}).json()["memory_rss"]
    started = time.monotonic()
    info = post(server, "/env/get", {"id": "reprs"}).json()
    assert time.monotonic() - started < 3  # not the query channel's 10 s timeout
    shown = {v["name"]: v["repr"] for v in info["variables"]}
    assert "repr took over" in shown["forever"]
    assert len(shown["huge"]) < 400 and "209715200 in all" in shown["huge"]
    assert shown["fine"] == "[1, 2, 3]"
    assert info["memory_rss"] < rss_before + 50 * 1024 * 1024  # the 200 MB string was not copied
    # And again at once: nothing is left spinning in the worker.
    started = time.monotonic()
    assert post(server, "/env/get", {"id": "reprs"}).status_code == 200
    assert time.monotonic() - started < 3
    assert post(server, "/execute", {"id": "reprs", "code": "len(fine)"}).json()["result"] == {
        "text/plain": "3"}


def run(server: LiveServer, namespace: str, code: str) -> dict[str, Any]:
    answer: dict[str, Any] = post(server, "/execute", {"id": namespace, "code": code}).json()
    return answer


def test_a_cell_that_kills_the_fork_server_breaks_nothing_for_good(tmp_path: Path) -> None:
    live = start_server(tmp_path)
    try:
        for namespace in ("killer", "bystander"):
            post(live, "/env/create", {"id": namespace})
            run(live, namespace, "kept = 1")
        forkserver = int(run(live, "killer", "import os\nos.getppid()")["result"]["text/plain"])
        answer = run(live, "killer", "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\n"
                                     "time.sleep(5)")
        # The cell's own worker dies with its fork server (its parent-death signal).
        assert answer["error"]["ename"] == "WorkerDied" and answer["restarted"] is True
        assert "killed when its fork server died" in answer["error"]["evalue"]
        assert wait_until(lambda: not pid_alive(forkserver), 10)  # reaped, not a zombie
        assert requests.get(live.url + "/health", timeout=10).status_code == 200
        # The bystander's worker died with the fork server: it says so, until its next cell.
        assert post(live, "/env/get", {"id": "bystander"}).json()["state"] == "dead"
        after = run(live, "bystander", "kept")
        assert after["error"]["ename"] == "NameError" and after["restarted"] is True
        assert "killed when its fork server died after the last cell" in after["stderr"]
        assert run(live, "bystander", "'fine'")["result"] == {"text/plain": "'fine'"}
        assert post(live, "/env/create", {"id": "new"}).status_code == 201
        assert run(live, "new", "1 + 1")["result"] == {"text/plain": "2"}
    finally:
        live.stop()


def test_a_worker_that_dies_between_cells_is_reported(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "between"})
    run(server, "between", "kept = 1\nimport os, threading, time\ndef bye():\n    time.sleep(0.3)\n"
                           "    print('last words', flush=True)\n    os._exit(3)\n"
                           "threading.Thread(target=bye).start()")
    assert wait_until(lambda: post(server, "/env/get", {"id": "between"}).json()["state"] == "dead", 10)
    answer = run(server, "between", "print('after')\n'kept' in globals()")
    assert answer["stdout"] == "last words\nafter\n"
    assert "exited with code 3 after the last cell" in answer["stderr"]
    assert answer["restarted"] is True and answer["result"] == {"text/plain": "False"}
    assert post(server, "/env/get", {"id": "between"}).json()["state"] == "idle"


@pytest.mark.parametrize("stuck_in_c", [False, True], ids=["python-loop", "stuck-in-c"])
def test_sigterm_writes_the_running_cells_final_row(tmp_path: Path, stuck_in_c: bool) -> None:
    data_dir = tmp_path / "data"
    live = start_server(tmp_path, data_dir=data_dir)
    code = ("print('before the stop', flush=True)\n" +
            ("sum(range(10**12))" if stuck_in_c else "import time\ntime.sleep(60)"))
    running = post(live, "/execute", {"code": code, "wait": 0}).json()
    # The stop comes once the cell has printed, not merely been handed to its worker.
    assert wait_until(lambda: requests.get(
        live.url + "/env/execution", params={"id": "default", "n": running["execution_count"]},
        headers=live.headers, timeout=10).json()["stdout"] == "before the stop\n", 30)
    started = time.monotonic()
    live.stop(signal.SIGTERM)
    assert live.proc.returncode is not None and time.monotonic() - started < 10  # not 15 s + kill
    again = start_server(tmp_path, data_dir=data_dir)
    try:
        final = requests.get(again.url + "/env/execution", params={"id": "default",
                             "n": running["execution_count"]}, headers=again.headers, timeout=10).json()
    finally:
        again.stop()
    assert final["stdout"] == "before the stop\n" and final["started_at"] is not None
    if stuck_in_c:
        assert final["error"]["ename"] == "ServerStopped"
    else:
        assert final["status"] == "interrupted"


DETACHED = """
import os, time
r, w = os.pipe()
if os.fork() == 0:          # a double fork into a session of its own: out of the worker's group
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode())
        os.execvp('sleep', ['sleep', '5557'])
    os._exit(0)
os.wait()
int(os.read(r, 32))
"""


def _detached_sleeper(server: LiveServer, namespace: str) -> int:
    post(server, "/env/create", {"id": namespace})
    pid = int(run(server, namespace, DETACHED)["result"]["text/plain"])
    assert pid_alive(pid)
    return pid


@pytest.mark.parametrize("how", ["delete", "restart"])
def test_a_detached_process_dies_with_its_namespace(server: LiveServer, how: str) -> None:
    pid = _detached_sleeper(server, f"tree-{how}")
    post(server, f"/env/{how}", {"id": f"tree-{how}"})
    assert not pid_alive(pid)  # gone when the request returns


# Detached like DETACHED, and slow to die: freeing 1 GiB of touched memory takes the kernel a
# while after SIGKILL (a busy machine delays any process's death the same way), so an answer
# sent right after the signal would find it still running.
DETACHED_HEAVY = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        held = b'\\x01' * (1 << 30)
        os.write(w, str(os.getpid()).encode())
        time.sleep(5557)
    os._exit(0)
os.wait()
int(os.read(r, 32))
"""


@pytest.mark.parametrize("how", ["delete", "restart"])
def test_a_detached_process_slow_to_die_is_dead_when_the_answer_comes(server: LiveServer,
                                                                      how: str) -> None:
    namespace = f"heavy-{how}"
    post(server, "/env/create", {"id": namespace})
    pid = int(run(server, namespace, DETACHED_HEAVY)["result"]["text/plain"])
    assert pid_alive(pid)
    post(server, f"/env/{how}", {"id": namespace})
    assert not pid_alive(pid)  # dead (a zombie at most) when the request returns
    if how == "restart":
        post(server, "/env/delete", {"id": namespace})


def test_a_detached_process_dies_with_a_killed_server(tmp_path: Path) -> None:
    live = start_server(tmp_path)
    try:
        pid = _detached_sleeper(live, "orphan")
        app = server_pid(live.data_dir)
        os.kill(app, signal.SIGKILL)  # the process that holds the namespaces, without warning
        assert wait_until(lambda: not pid_alive(pid), 10)
    finally:
        live.stop()


@pytest.mark.parametrize(("code", "how", "printed"), [
    ("print('last words')\nimport os\nos._exit(3)", "exited with code 3", "last words\n"),
    ("import sys, os\nsys.stdout.write('no newline')\nos._exit(3)", "exited with code 3",
     "no newline"),
    ("print('last words')\nimport ctypes\nctypes.string_at(0)", "killed by SIGSEGV", "last words\n"),
    ("import os, signal\nprint('x' * 200_000)\nprint('the marker')\n"
     "os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL", "x" * 200_000 + "\nthe marker\n"),
    # Past the first half of the ring (rings.ROTATE_AT): what is left spans both halves.
    ("import os, signal, sys\nfor _ in range(30):\n    sys.stdout.write('y' * 99_999 + '\\n')\n"
     "print('the marker')\nos.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL",
     ("y" * 99_999 + "\n") * 30 + "the marker\n"),
], ids=["os-exit", "no-newline", "segfault", "sigkill-after-200k", "sigkill-after-3mb"])
def test_output_printed_just_before_a_worker_dies_is_kept(printing_server: LiveServer, code: str,
                                                          how: str, printed: str) -> None:
    server = printing_server
    post(server, "/env/create", {"id": "dying"})
    answer = run(server, "dying", code)
    assert answer["error"]["ename"] == "WorkerDied" and how in answer["error"]["evalue"]
    assert answer["stdout"] == printed


def test_output_of_a_thread_that_kills_the_worker_between_cells_is_kept(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "quiet-death"})
    run(server, "quiet-death", "import os, threading, time\ndef bye():\n    time.sleep(0.3)\n"
                               "    print('unflushed last words')\n    os._exit(3)\n"
                               "threading.Thread(target=bye).start()")
    assert wait_until(lambda: post(server, "/env/get", {"id": "quiet-death"}).json()["state"] == "dead",
                      10)
    answer = run(server, "quiet-death", "print('after')")
    assert answer["stdout"] == "unflushed last words\nafter\n"


def test_workers_print_through_the_c_writer_where_it_is_built(server: LiveServer,
                                                              pure_server: LiveServer) -> None:
    try:
        from kernelserver.backends import _ringtext  # type: ignore[attr-defined]  # noqa: F401
        built = True
    except ImportError:
        built = False
    code = "import sys\ntype(sys.stdout).__name__, type(sys.stderr).__name__"
    assert run(server, "default", code)["result"]["text/plain"] == (
        "('RingText', '_RingErrStream')" if built else "('TextIOWrapper', '_ErrStream')")
    assert run(pure_server, "default", code)["result"]["text/plain"] == (
        "('TextIOWrapper', '_ErrStream')")


def test_stderr_lines_keep_their_order_with_what_c_code_writes(printing_server: LiveServer) -> None:
    code = ("import os, sys\nprint('python line', file=sys.stderr)\nos.write(2, b'C-level line\\n')\n"
            "print('out', flush=True)\nos.write(1, b'C out\\n')")
    answer = run(printing_server, "default", code)
    assert answer["stderr"] == "python line\nC-level line\n"
    assert answer["stdout"] == "out\nC out\n"
