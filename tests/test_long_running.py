"""Long cells: live streaming, wait and reattach, disconnects, output caps, history across restarts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from kernelserver import Client
from kernelserver.results import DisplayEvent, OutputEvent, ResultEvent

from helpers import ApiClient, LiveServer, held_until, process_tree, start_server, wait_until

pytestmark = pytest.mark.slow


def post(server: LiveServer, path: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 60)
    return requests.post(server.url + path, json=body, headers=server.headers, **kwargs)


def create(server: LiveServer, namespace: str) -> None:
    assert post(server, "/env/create", {"id": namespace}).status_code in (200, 201)


def stream_lines(response: requests.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    start = time.monotonic()
    for line in response.iter_lines(chunk_size=1):
        if line:
            yield time.monotonic() - start, json.loads(line)


def test_stream_events_arrive_as_they_happen(server: LiveServer) -> None:
    create(server, "stream")
    code = ("import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\n"
            "print('oops', file=sys.stderr, flush=True)\n'done'")
    response = post(server, "/execute", {"id": "stream", "code": code, "stream": True}, stream=True)
    assert response.headers["Content-Type"] == "application/x-ndjson"
    events = list(stream_lines(response))
    (t_first, first), *_ = events
    assert first == {"event": "stdout", "text": "first\n"}
    kinds = [e["event"] for _, e in events]
    assert kinds == ["stdout", "stderr", "result"]
    t_last, last = events[-1]
    # 'first' came while the cell slept its 1.5 s, not with the result (timed against the cell's
    # own sleep, so a slow start under load does not count)
    assert t_last - t_first > 1.0, (t_first, t_last)
    assert last["status"] == "ok" and last["result"] == {"text/plain": "'done'"}
    assert last["stdout"] == "first\n" and last["stderr"] == "oops\n"


def test_silent_stream_gets_keepalives(make_app: Callable[..., Flask]) -> None:
    app = make_app(backend="process", stream_keepalive=0.3)
    api = ApiClient(app.test_client())
    response = api.post("/execute", json={"code": "import time\ntime.sleep(1.2)", "stream": True})
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert [e["event"] for e in events].count("keepalive") >= 2
    assert events[-1]["event"] == "result"


def test_wait_answers_202_then_execution_has_the_result(server: LiveServer) -> None:
    create(server, "waiting")
    code = "import time\nprint('start', flush=True)\ntime.sleep(2)\nprint('end')\n'finished'"
    response = post(server, "/execute", {"id": "waiting", "code": code, "wait": 0.3})
    assert response.status_code == 202
    pending = response.json()
    assert pending["status"] == "running"
    n = pending["execution_count"]
    assert wait_until(lambda: "start" in requests.get(
        server.url + "/env/execution", params={"id": "waiting", "n": n},
        headers=server.headers, timeout=10).json()["stdout"], 5)
    done = requests.get(server.url + "/env/execution", params={"id": "waiting", "n": n, "wait": 10},
                        headers=server.headers, timeout=30)
    assert done.status_code == 200
    final = done.json()
    assert final["status"] == "ok" and final["stdout"] == "start\nend\n"
    assert final["result"] == {"text/plain": "'finished'"}


def test_cancel_on_disconnect_of_a_queued_cell_spares_the_running_one(server: LiveServer,
                                                                      tmp_path: Path) -> None:
    create(server, "spare")
    # The first cell runs until the test lets it go: the second is still queued when its
    # client goes away, however slow the machine.
    go_on = tmp_path / "go-on"
    running = post(server, "/execute", {"id": "spare", "wait": 0,
                                        "code": held_until(go_on) + "'finished'"}).json()
    # A second client streams a cell that has to wait behind it, then goes away.
    body = json.dumps({"id": "spare", "code": "print('must not run')", "stream": True,
                       "cancel_on_disconnect": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + server.token.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        # the second cell has reached the server and waits behind the first
        assert wait_until(lambda: requests.get(
            server.url + "/env/execution", headers=server.headers, timeout=10,
            params={"id": "spare", "n": running["execution_count"] + 1}).json().get("status")
            == "queued", 10)
    assert wait_until(lambda: requests.get(
        server.url + "/env/execution", headers=server.headers, timeout=10,
        params={"id": "spare", "n": running["execution_count"] + 1}).json().get("status")
        == "interrupted", 10)
    go_on.touch()
    first = requests.get(server.url + "/env/execution", headers=server.headers, timeout=30,
                         params={"id": "spare", "n": running["execution_count"], "wait": 10}).json()
    assert first["status"] == "ok" and first["result"] == {"text/plain": "'finished'"}
    second = requests.get(server.url + "/env/execution", headers=server.headers, timeout=30,
                          params={"id": "spare", "n": running["execution_count"] + 1, "wait": 10}).json()
    assert second["status"] == "interrupted" and second["stdout"] == ""


def test_queued_status_while_namespace_is_busy(server: LiveServer) -> None:
    create(server, "queue")
    post(server, "/execute", {"id": "queue", "code": "import time\ntime.sleep(60)", "wait": 0})
    second = post(server, "/execute", {"id": "queue", "code": "2", "wait": 0})
    assert second.status_code == 202 and second.json()["status"] == "queued"
    assert wait_until(lambda: post(server, "/env/interrupt", {"id": "queue"}).json()["interrupted"],
                      10, 0.05)


def test_disconnected_stream_loses_nothing(server: LiveServer) -> None:
    create(server, "gone")
    code = ("import time\nfor i in range(6):\n    print(f'line {i}', flush=True)\n"
            "    time.sleep(0.25)\n'complete'")
    response = post(server, "/execute", {"id": "gone", "code": code, "stream": True}, stream=True)
    lines = response.iter_lines(chunk_size=1)
    first = json.loads(next(line for line in lines if line))
    assert first["text"] == "line 0\n"
    response.close()  # the client goes away mid-cell
    history = requests.get(server.url + "/env/history", params={"id": "gone"},
                           headers=server.headers, timeout=10).json()["executions"]
    n = history[-1]["execution_count"]
    final = requests.get(server.url + "/env/execution", params={"id": "gone", "n": n, "wait": 10},
                         headers=server.headers, timeout=30).json()
    assert final["status"] == "ok"
    assert final["stdout"] == "".join(f"line {i}\n" for i in range(6))
    assert final["result"] == {"text/plain": "'complete'"}


def test_cancel_on_disconnect_interrupts(server: LiveServer) -> None:
    create(server, "cancel")
    code = "import time\nprint('go', flush=True)\ntime.sleep(30)"
    response = post(server, "/execute", {"id": "cancel", "code": code, "stream": True,
                                         "cancel_on_disconnect": True}, stream=True)
    next(line for line in response.iter_lines(chunk_size=1) if line)
    response.close()
    n = requests.get(server.url + "/env/history", params={"id": "cancel"}, headers=server.headers,
                     timeout=10).json()["executions"][-1]["execution_count"]
    final = requests.get(server.url + "/env/execution", params={"id": "cancel", "n": n, "wait": 10},
                         headers=server.headers, timeout=30).json()
    assert final["status"] == "interrupted"


def test_reattach_by_streaming_an_execution(server: LiveServer) -> None:
    create(server, "reattach")
    code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.3)"
    pending = post(server, "/execute", {"id": "reattach", "code": code, "wait": 0.45}).json()
    follow = requests.get(server.url + "/env/execution",
                          params={"id": "reattach", "n": pending["execution_count"], "stream": "true"},
                          headers=server.headers, stream=True, timeout=30)
    events = [e for _, e in stream_lines(follow)]
    streamed = "".join(e["text"] for e in events if e["event"] == "stdout")
    assert streamed == "0\n1\n2\n3\n"  # what was kept before reattaching, then the rest live
    assert events[-1]["event"] == "result" and events[-1]["status"] == "ok"


def test_tqdm_progress_passes_through_live(server: LiveServer) -> None:
    create(server, "tqdm")
    code = ("from tqdm import tqdm\nimport time\n"
            "for _ in tqdm(range(5), mininterval=0, miniters=1, ncols=60):\n    time.sleep(0.2)")
    response = post(server, "/execute", {"id": "tqdm", "code": code, "stream": True}, stream=True)
    events = list(stream_lines(response))
    progress = [(t, e["text"]) for t, e in events if e["event"] == "stderr"]
    assert len(progress) >= 4
    assert any("\r" in text for _, text in progress)
    assert any("40%" in text for _, text in progress)
    # the bar as the user's terminal last shows it; tqdm's closing newline may arrive as its own chunk
    final_bar = "".join(text for _, text in progress).rstrip("\n").rsplit("\r", 1)[-1]
    assert "100%" in final_bar
    assert progress[-1][0] - progress[0][0] >= 0.6  # spread over the run, not one burst at the end


def _server_worker_pid(server: LiveServer) -> int:
    children = [p for p in process_tree(server.proc.pid) if p != server.proc.pid]
    # gunicorn's worker is the master's direct child; the fork server and workers sit below it.
    direct = []
    for pid in children:
        with open(f"/proc/{pid}/stat") as handle:
            if int(handle.read().rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                direct.append(pid)
    assert len(direct) == 1
    return direct[0]


def _status_mib(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def test_memory_of_dropped_outputs_goes_back_to_the_system(server: LiveServer) -> None:
    create(server, "noisy")
    pid = _server_worker_pid(server)
    post(server, "/execute", {"id": "noisy", "code": "print('warm')"})
    before = _status_mib(pid, "VmRSS")
    # Six 8 MiB outputs read in pieces of every size: four stay kept, then all go with the
    # namespace. The server's memory must come back, not stay with the allocator.
    code = ("import os, random\nfor i in range(1500):\n"
            "    os.write(1, b'x' * random.randint(1, 65536))")
    for _ in range(6):
        assert post(server, "/execute", {"id": "noisy", "code": code}, timeout=120).json()["truncated"]
    held = _status_mib(pid, "VmRSS") - before
    post(server, "/env/delete", {"id": "noisy"})
    # Reading history waits for its writer, which holds each output until it is stored.
    history = requests.get(server.url + "/env/history", params={"id": "noisy"},
                           headers=server.headers, timeout=30).json()
    assert len(history["executions"]) == 7
    returned = _status_mib(pid, "VmRSS") - before
    assert held > 20, f"only {held:.1f} MiB held: the outputs were not kept"
    assert returned < 6, f"{returned:.1f} MiB still held after the namespace was deleted"


def test_hundred_megabytes_keeps_server_memory_bounded(server: LiveServer) -> None:
    create(server, "flood")
    pid = _server_worker_pid(server)
    post(server, "/execute", {"id": "flood", "code": "import sys\nsys.stdout.write('warm' * 1000)"})
    before = _status_mib(pid, "VmHWM")
    code = "import sys\nfor i in range(100):\n    sys.stdout.write(str(i % 10) * (1 << 20))"
    data = post(server, "/execute", {"id": "flood", "code": code}, timeout=120).json()
    grown = _status_mib(pid, "VmHWM") - before
    cap_mib = 8
    assert data["truncated"] is True
    assert data["stdout"].startswith("0" * 1000) and data["stdout"].endswith("9" * 1000)
    assert "characters dropped here" in data["stdout"]
    assert len(data["stdout"]) < cap_mib * 1024 * 1024 + 1000
    # The kept 8 MiB and little else: never a second copy of it, nothing proportional to 100 MB.
    assert grown < 1.5 * cap_mib, f"server peak grew {grown:.1f} MiB"


def test_streaming_clients_receive_everything_past_the_cap(make_app: Callable[..., Flask]) -> None:
    app = make_app(backend="process", output_cap_bytes=1000)
    api = ApiClient(app.test_client())
    response = api.post("/execute", json={"code": "for i in range(2000):\n    print(i)",
                                          "stream": True})
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    streamed = "".join(e["text"] for e in events if e["event"] == "stdout")
    assert streamed == "".join(f"{i}\n" for i in range(2000))
    final = events[-1]
    assert final["truncated"] is True and len(final["stdout"]) < 1200


def test_history_survives_a_server_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "keep"
    first = start_server(tmp_path, data_dir=data_dir)
    try:
        with Client(first.url, first.token) as client:
            ns = client.namespace("persist")
            ns.run("print('one')\n1")
            ns.run("1/0")
    finally:
        first.stop()
    second = start_server(tmp_path, data_dir=data_dir)
    try:
        with Client(second.url, second.token) as client:
            ns = client.namespace("persist", create=False)
            history = ns.history()
            assert [(h["execution_count"], h["code"], h["status"]) for h in history] == [
                (1, "print('one')\n1", "ok"), (2, "1/0", "error")]
            old = ns.execution(1)
            assert old.stdout == "one\n" and old.result == {"text/plain": "1"}
            assert ns.execution(2).error is not None
            # The namespace itself is gone with the old server; counts continue after history.
            assert client.namespaces() == []
            again = client.namespace("persist").run("2")
            assert again.execution_count == 3
    finally:
        second.stop()


def test_restart_keeps_history(server: LiveServer) -> None:
    with Client(server.url, server.token) as client:
        ns = client.namespace("rs")
        ns.run("x = 1")
        ns.restart()
        assert ns.run("'x' in globals()").result == {"text/plain": "False"}
        assert [h["code"] for h in ns.history()] == ["x = 1", "'x' in globals()"]
        ns.delete()
        assert [h["code"] for h in ns.history(limit=1)] == ["'x' in globals()"]


def test_client_stream_yields_events(server: LiveServer) -> None:
    with Client(server.url, server.token) as client:
        events = list(client.namespace("cs").run("print('a')\n2", stream=True))
    assert events[0] == {"event": "stdout", "text": "a\n"}
    assert events[-1]["event"] == "result" and events[-1]["result"] == {"text/plain": "2"}


def test_client_stream_yields_typed_events(server: LiveServer) -> None:
    with Client(server.url, server.token) as client:
        events = list(client.namespace("typed").stream(
            "import sys\nprint('a', flush=True)\nsys.stderr.write('b')\n"
            "display({'text/plain': 'shown'}, raw=True)\n2"))
    assert events[0] == OutputEvent("stdout", "a\n")
    assert OutputEvent("stderr", "b") in events
    assert DisplayEvent({"text/plain": "shown"}) in events
    last = events[-1]
    assert isinstance(last, ResultEvent)
    assert last.result.ok and last.result.result == {"text/plain": "2"}
    assert (last.result.stdout, last.result.stderr) == ("a\n", "b")


def _serve_fails(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernelserver.cli", "serve", "--port", "0", "--token", "t",
         "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=30)


def test_unwritable_data_dir_is_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = _serve_fails(tmp_path, blocker / "data")
    assert done.returncode == 2
    assert done.stderr.startswith("kernelserver: error: cannot use the data dir")
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_data_dir_is_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o500)
    done = _serve_fails(tmp_path, data)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_corrupt_history_is_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "corrupt"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(b"this is not a database" * 100)
    done = _serve_fails(tmp_path, data)
    assert done.returncode == 2
    assert "cannot use the history database" in done.stderr
    assert "move a corrupt file away" in done.stderr
    assert "Traceback" not in done.stderr


def test_stream_misses_nothing_printed_before_the_client_reads(make_app: Callable[..., Flask]) -> None:
    api = ApiClient(make_app(backend="process").test_client())
    response = api.post("/execute", json={"code": "print('early', flush=True)\nimport time\n"
                                                  "time.sleep(0.6)\nprint('late')", "stream": True})
    time.sleep(0.3)  # the cell has printed 'early' before the body is read
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    streamed = "".join(e["text"] for e in events if e["event"] == "stdout")
    assert streamed == "early\nlate\n"


def test_plain_prints_arrive_live_and_in_order_with_stderr_and_subprocesses(server: LiveServer) -> None:
    # stdout is block-buffered in the worker (for throughput) and flushed within 50 ms, before
    # anything is written to stderr, and before a subprocess gets the pipes.
    create(server, "order")
    code = ("import subprocess, sys, time\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')\n"
            "subprocess.run(['echo', 'd'])\nprint('e')\ntime.sleep(1.5)\nprint('f')")
    response = post(server, "/execute", {"id": "order", "code": code, "stream": True}, stream=True)
    events = list(stream_lines(response))
    texts = [(e["event"], e["text"]) for _, e in events if e["event"] in ("stdout", "stderr")]
    lines = {kind: [line for k, text in texts if k == kind for line in text.splitlines()]
             for kind in ("stdout", "stderr")}
    # Two pipes: the order within each is exact; across them only as close as the server reads.
    assert lines == {"stdout": ["a", "c", "d", "e", "f"], "stderr": ["b"]}
    t_e = next(t for t, e in events if e["event"] == "stdout" and "e" in e["text"].split())
    t_f = next(t for t, e in events if e["event"] == "stdout" and "f" in e["text"].split())
    assert t_f - t_e > 1.0, (t_e, t_f)  # 'e' came while the cell slept its 1.5 s, not at its end


def test_a_plain_execute_run_on_its_request_thread_is_interruptible_and_keeps_fifo(
        server: LiveServer) -> None:
    # A plain /execute on an idle namespace runs on its own request thread; interrupts, the
    # namespace state and the order of cells submitted meanwhile must not notice.
    create(server, "inline")
    results: dict[str, Any] = {}

    def long_cell() -> None:
        results["long"] = post(server, "/execute", {"id": "inline", "code": (
            "import time\norder = ['long']\nprint('started', flush=True)\ntime.sleep(30)")}).json()

    thread = threading.Thread(target=long_cell)
    thread.start()
    assert wait_until(lambda: post(server, "/env/get", {"id": "inline"}).json()["state"] == "busy", 10)
    queued = post(server, "/execute", {"id": "inline", "code": "order.append('next')\norder",
                                       "wait": 0}).json()
    assert queued["status"] == "queued"
    # Busy is the cell handed to the worker, not yet run: interrupt once it has printed (a loaded
    # machine once interrupted it before the print, which is a right answer to a different test).
    long_n = queued["execution_count"] - 1
    assert wait_until(lambda: requests.get(
        server.url + "/env/execution", headers=server.headers, timeout=30,
        params={"id": "inline", "n": long_n}).json()["stdout"] == "started\n", 30)
    assert wait_until(lambda: post(server, "/env/interrupt", {"id": "inline"}).json()["interrupted"],
                      10, 0.05)
    thread.join(30)
    assert results["long"]["status"] == "interrupted" and results["long"]["stdout"] == "started\n"
    after = requests.get(server.url + "/env/execution", headers=server.headers, timeout=30,
                         params={"id": "inline", "n": queued["execution_count"], "wait": 20}).json()
    assert after["status"] == "ok" and after["result"] == {"text/plain": "['long', 'next']"}
