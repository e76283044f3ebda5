"""Slow or stuck clients do not starve the server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests

from conftest import start_server

pytestmark = pytest.mark.slow

HALF_REQUEST = (b"POST /execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{\"co")


def test_forty_stalled_half_requests_do_not_block_health_or_execute(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    stalled = []
    try:
        host, port = server.url.removeprefix("http://").split(":")
        for _ in range(40):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(HALF_REQUEST)
            stalled.append(sock)
        time.sleep(0.5)  # let every one of them reach a worker thread
        started = time.monotonic()
        assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
        health_s = time.monotonic() - started
        started = time.monotonic()
        result = requests.post(server.url + "/execute", json={"code": "1 + 1"}, headers=server.headers,
                               timeout=10).json()
        execute_s = time.monotonic() - started
        assert result["result"] == {"text/plain": "2"}
        assert health_s < 1.0 and execute_s < 2.0, (health_s, execute_s)
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_a_stalled_body_gets_408_and_the_connection_closes(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"KERNELSERVER_REQUEST_READ_TIMEOUT": "1"})
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(HALF_REQUEST.replace(b"Host: localhost\r\n",
                                              b"Host: localhost\r\nAuthorization: Bearer "
                                              + server.token.encode() + b"\r\n"))
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408")
        assert b'"code":"request_timeout"' in answer
        assert 0.8 < waited < 5
    finally:
        server.stop()
