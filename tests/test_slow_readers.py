"""Readers that stop reading (a Jupyter WebSocket, an HTTP stream) never slow a cell, another
reader or a deadline; and bad frames on /channels are answered as the protocols say."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from kernelserver.web.jupyter.wire import MERGE_MAX, Message, Pending, new_header
from kernelserver.web.websocket import ConnectionClosed, WebSocket

from helpers import LiveServer, wait_until
from jupyter_ws import KernelClient, of_type, ws_url

pytestmark = pytest.mark.slow

# 12,000 progress updates, each flushed: thousands of stream messages a client must take.
PROGRESS = ("import sys\nfor i in range(12000):\n    sys.stdout.write(f'\\rstep {i:05d} ' + 'p' * 60)\n"
            "    sys.stdout.flush()\nprint()")
PROGRESS_CHARS = 12000 * len("\rstep 00000 " + "p" * 60) + 1
# 200 MB in one print: far more than a client may lag, in thousands of messages.
BIG = "print('x' * (200 * 1024 * 1024))"


def _auth(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"token {server.token}"}


@pytest.fixture
def kernel(server: LiveServer) -> Iterator[str]:
    """A fresh kernel (a namespace), deleted after the test."""
    response = requests.post(server.url + "/api/kernels", json={"name": "python3"},
                             headers=_auth(server), timeout=30)
    assert response.status_code == 201, response.text
    kernel_id: str = response.json()["id"]
    yield kernel_id
    requests.delete(f"{server.url}/api/kernels/{kernel_id}", headers=_auth(server), timeout=30)


def run_http(server: LiveServer, kernel_id: str, code: str, limit: float = 60,
             **extra: Any) -> tuple[dict[str, Any], float]:
    """Run a cell over HTTP; its answer and how long the request took."""
    started = time.monotonic()
    answer = requests.post(server.url + "/execute", json={"id": kernel_id, "code": code, **extra},
                           headers=server.headers, timeout=limit).json()
    return answer, time.monotonic() - started


class SlowReader:
    """A Jupyter WebSocket client that connects and then never reads: with a small receive
    buffer, the server's sends to it block almost at once."""

    def __init__(self, server: LiveServer, kernel_id: str, session: str | None = None) -> None:
        self.session = session or uuid.uuid4().hex
        self.ws = websocket.create_connection(
            ws_url(server.url, kernel_id, self.session), timeout=20, header=_auth(server),
            suppress_origin=True, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))

    def dropped(self, timeout: float) -> bool:
        """True when the server ends the connection within timeout (read what is left, then EOF)."""
        sock = self.ws.sock
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not sock.recv(1 << 20):
                    return True
            except TimeoutError:
                continue
            except OSError:
                return True
        return False

    def close(self) -> None:
        self.ws.shutdown()  # no closing handshake: it was dropped, or never reads the answer


@pytest.fixture
def slow_reader(server: LiveServer, kernel: str) -> Iterator[SlowReader]:
    reader = SlowReader(server, kernel)
    yield reader
    reader.close()


def _limit(baseline: float) -> float:
    # Generous for a shared 2-core machine; the stall this guards against was 60 s.
    return 2 * baseline + 2


@pytest.mark.parametrize("code", [PROGRESS, BIG], ids=["progress", "big"])
def test_a_websocket_client_that_never_reads_does_not_slow_an_http_cell(
        server: LiveServer, kernel: str, code: str) -> None:
    answer, baseline = run_http(server, kernel, code)
    assert answer["status"] == "ok"
    reader = SlowReader(server, kernel)
    try:
        answer, took = run_http(server, kernel, code, limit=_limit(baseline) + 10)
        print(f"\nthe cell: {baseline:.2f} s alone, {took:.2f} s with a client that never reads")
        assert answer["status"] == "ok"
        assert took < _limit(baseline), (baseline, took)
        if code == BIG:  # it was dropped (200 MB behind), not waited for
            assert reader.dropped(10)
    finally:
        reader.close()
    assert requests.get(server.url + "/health", timeout=5).ok


def test_a_fast_reader_of_the_same_kernel_gets_everything_and_is_not_slowed(
        server: LiveServer, kernel: str) -> None:
    fast = KernelClient(server.url, kernel, server.token)
    slow: SlowReader | None = None
    try:
        def timed() -> tuple[float, str]:
            started = time.monotonic()
            reply, seen = fast.execute(PROGRESS)
            assert reply["content"]["status"] == "ok"
            text = "".join(m["content"]["text"] for m in of_type(seen, "stream"))
            return time.monotonic() - started, text

        baseline, text = timed()
        assert len(text) == PROGRESS_CHARS
        slow = SlowReader(server, kernel)
        took, text = timed()
        print(f"\na fast reader's cell: {baseline:.2f} s alone, {took:.2f} s beside a client that "
              "never reads")
        assert len(text) == PROGRESS_CHARS  # all of it, in order
        assert text.endswith("p" * 60 + "\n") and text.count("\rstep ") == 12000
        assert took < _limit(baseline), (baseline, took)
        # The fast one is still served.
        reply, _ = fast.execute("6 * 7")
        assert reply["content"]["status"] == "ok"
    finally:
        if slow is not None:
            slow.close()
        fast.close()


def test_a_timeout_fires_on_time_beside_a_client_that_never_reads(
        server: LiveServer, kernel: str) -> None:
    # A cell that prints until its deadline, its answer kept small (output_cap_bytes).
    code = ("import sys, time\nwhile True:\n    sys.stdout.write('\\rworking ' + 't' * 200)\n"
            "    sys.stdout.flush()\n    time.sleep(0.0001)")
    options = {"timeout": 2, "output_cap_bytes": 100_000}
    answer, baseline = run_http(server, kernel, code, **options)
    assert answer["status"] == "timeout", answer["status"]
    reader = SlowReader(server, kernel)
    try:
        answer, took = run_http(server, kernel, code, limit=20, **options)
        print(f"\ntimeout=2: the answer came after {baseline:.2f} s alone, {took:.2f} s with a "
              "client that never reads")
        assert answer["status"] == "timeout", answer["status"]
        # On time: as late as without the reader at most (the interrupt and the last output
        # take a moment on a busy machine), never the 60 s of a send that waits.
        assert took < max(baseline, 2) + 1.5, (baseline, took)
    finally:
        reader.close()


def test_a_dropped_client_gets_its_replay_when_it_comes_back(server: LiveServer, kernel: str) -> None:
    reader = SlowReader(server, kernel)
    try:
        answer, _ = run_http(server, kernel, "print('x' * (50 * 1024 * 1024))\nprint('the end')")
        assert answer["status"] == "ok"
        assert reader.dropped(10)
    finally:
        reader.close()
    back = KernelClient(server.url, kernel, server.token, session=reader.session)
    # Up to 32 MiB of replay: websocket-client's pure-Python UTF-8 check would take seconds.
    back.ws.frame_buffer.skip_utf8_validation = True
    back.ws.cont_frame.skip_utf8_validation = True
    try:
        seen = back.until(lambda m: m["msg_type"] == "stream" and "the end" in m["content"]["text"],
                          timeout=20)
        text = "".join(m["content"]["text"] for m in of_type(seen, "stream"))
        assert "fell too far behind and was disconnected" in text
        assert text.count("x") > 1 << 20  # what it had not been sent, replayed (bounded)
        # And it is a working connection.
        reply, _ = back.execute("6 * 7")
        assert reply["content"]["status"] == "ok"
    finally:
        back.close()


def test_an_http_stream_that_is_never_read_does_not_slow_its_cell(
        server: LiveServer, kernel: str) -> None:
    # The v1 NDJSON stream of the cell, held by a client that reads its headers and stops.
    answer, baseline = run_http(server, kernel, PROGRESS)
    assert answer["status"] == "ok"
    body = json.dumps({"id": kernel, "code": PROGRESS, "stream": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    try:
        sock.connect((host, int(port)))
        sock.sendall(f"POST /execute HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                     f"{server.token}\r\nContent-Type: application/json\r\nContent-Length: "
                     f"{len(body)}\r\n\r\n".encode() + body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        history = server.url + "/env/history"

        def last() -> dict[str, Any]:
            executions: list[dict[str, Any]] = requests.get(
                history, params={"id": kernel}, headers=server.headers, timeout=10).json()["executions"]
            return executions[-1]

        assert wait_until(lambda: last()["status"] not in ("queued", "running"), _limit(baseline) + 5)
        took = last()["duration_ms"] / 1000
        print(f"\nthe cell: {baseline:.2f} s over HTTP, {took:.2f} s streamed to a client that "
              "never reads")
        assert last()["status"] == "ok"
        assert took < _limit(baseline), (baseline, took)
    finally:
        sock.close()


# -- bad frames on /channels --

def _v1_frame(*parts: bytes) -> bytes:
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])
def test_deeply_nested_json_is_answered_and_the_socket_stays_open(
        server: LiveServer, kernel: str, v1: bool) -> None:
    client = KernelClient(server.url, kernel, server.token, v1=v1)
    try:
        header = {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request",
                  "session": client.session, "username": "test", "version": "5.3",
                  "date": "2026-11-30T00:00:00.000000Z"}
        if v1:
            client.send_raw(_v1_frame(b"shell", json.dumps(header).encode(), b"{}", b"{}",
                                      DEEP.encode()))
            # The header was readable: the error answers that request.
            error = client.until(lambda m: m["parent_header"].get("msg_id") == header["msg_id"]
                                 and m["channel"] == "shell")[-1]
            assert error["msg_type"] == "execute_reply"
        else:
            client.send_raw('{"channel": "shell", "header": ' + json.dumps(header)
                            + ', "content": ' + DEEP + "}")
            error = client.until(lambda m: m["channel"] == "shell")[-1]
        assert error["content"]["status"] == "error" and error["content"]["ename"] == "BadMessage"
        assert "nested too deeply" in error["content"]["evalue"]
        reply, _ = client.request("kernel_info_request")
        assert reply["content"]["status"] == "ok"
    finally:
        client.close()


def test_an_invalid_utf8_text_frame_closes_with_1007(server: LiveServer, kernel: str) -> None:
    client = KernelClient(server.url, kernel, server.token)
    try:
        client.ws.send(b"\xff\xfe", opcode=websocket.ABNF.OPCODE_TEXT)
        client.ws.settimeout(10)
        while True:
            opcode, frame = client.ws.recv_data_frame(True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
        assert struct.unpack("!H", frame.data[:2])[0] == 1007
    finally:
        client.ws.shutdown()


def test_many_clients_at_once_on_one_kernel_all_get_the_output(server: LiveServer, kernel: str) -> None:
    # Two readers of the same cell on two threads, beside one that never reads: both see it all.
    slow = SlowReader(server, kernel)
    fast = [KernelClient(server.url, kernel, server.token) for _ in range(2)]
    texts: list[str] = ["", ""]
    errors: list[BaseException] = []

    def read(i: int) -> None:
        try:
            seen = fast[i].until(lambda m: m["msg_type"] == "stream" and "done" in m["content"]["text"],
                                 timeout=30)
            texts[i] = "".join(m["content"]["text"] for m in of_type(seen, "stream"))
        except Exception as exc:  # reported by the test, not as a thread's unhandled error
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        answer, _ = run_http(server, kernel, PROGRESS + "\nprint('done')")
        assert answer["status"] == "ok"
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        assert all(text.count("\rstep ") == 12000 for text in texts), [len(t) for t in texts]
    finally:
        slow.close()
        for client in fast:
            client.ws.shutdown()  # ends a reader still waiting
        for thread in threads:
            thread.join(10)


# -- the mechanism, without a server --

def _accepted(sock: socket.socket) -> WebSocket:
    environ = {"gunicorn.socket": sock, "PATH_INFO": "/", "HTTP_HOST": "localhost",
               "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
               "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==", "HTTP_SEC_WEBSOCKET_VERSION": "13"}
    return WebSocket.accept(environ, [], 25.0, 1 << 20)


def test_drop_frees_a_writer_stuck_in_sendall_at_once() -> None:
    server_side, peer = socket.socketpair()
    try:
        ws = _accepted(server_side)
        failed: list[BaseException] = []

        def write() -> None:
            try:
                ws.send_many(["x" * (64 << 20)])  # far more than the peer (never reading) takes
            except ConnectionClosed as exc:
                failed.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        assert wait_until(lambda: ws._send_lock.locked(), 5)  # it is inside sendall
        started = time.monotonic()
        ws.drop(1013, "too slow")  # never waits for the lock the writer holds
        assert time.monotonic() - started < 0.5
        writer.join(5)
        assert not writer.is_alive() and failed, "the stuck sendall did not return"
        assert not ws.try_send("more")  # nothing more goes out, and nothing waits
        with pytest.raises(ConnectionClosed):
            ws.receive(5)  # the reader ends too
    finally:
        server_side.close()
        peer.close()


def test_printed_text_that_waits_is_merged_per_cell_and_stream() -> None:
    def stream(parent: str, name: str, text: str) -> Message:
        return Message("iopub", new_header("stream", "s"), {"name": name, "text": text},
                       {"msg_id": parent})

    first = stream("a", "stdout", "1")
    pending = Pending(first)
    assert pending.merge(stream("a", "stdout", "2"), 201)
    assert not pending.merge(stream("a", "stderr", "3"), 201)  # another stream
    assert not pending.merge(stream("b", "stdout", "4"), 201)  # another cell
    assert not Pending(Message("iopub", new_header("status", "s"), {"execution_state": "idle"})
                       ).merge(stream("a", "stdout", "5"), 201)
    merged = pending.final()
    assert merged.content == {"name": "stdout", "text": "12"} and merged.header is first.header
    assert first.content["text"] == "1"  # the shared original is left alone
    big = Pending(stream("a", "stdout", "x" * MERGE_MAX))
    assert not big.merge(stream("a", "stdout", "y"), 201)  # a merged message stays bounded
