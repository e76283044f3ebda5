"""HTTP answers: JSON (in pieces when large), the 200/202 of a waited-for cell, NDJSON streams."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context

from .encoding import dumps, encode, is_large, iter_json
from .execution import Execution
from .results import FINISHED
from .service import CellStream


def json_response(data: Any, status: int = 200) -> Response:
    """data as a JSON answer; a large one is encoded piece by piece as it is sent."""
    if is_large(data):
        return Response(iter_json(data), status=status, mimetype="application/json")
    return Response(dumps(data), status=status, mimetype="application/json")


def execution_response(execution: Execution) -> Response:
    """The execution as it is now: 200 once finished, else 202 with its queued/running state."""
    answer = execution.to_dict()
    return json_response(answer, 200 if answer["status"] in FINISHED else 202)


def ndjson_response(stream: CellStream) -> Response:
    """The stream as application/x-ndjson, one event a line, until the result or the client leaves."""
    sock = request.environ.get("gunicorn.socket")

    def generate() -> Iterator[bytes]:
        # Reached on client disconnect too (the WSGI server closes the iterator).
        for event in stream.events(gone=lambda: client_gone(sock)):
            yield from encode(event.to_dict())  # a result with 8 MiB of output goes out in pieces

    response = Response(stream_with_context(generate()), mimetype="application/x-ndjson")
    # A body that is never iterated (client gone at once) still releases the stream.
    response.call_on_close(stream.close)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    _set_nodelay(sock)
    return response


def client_gone(sock: socket.socket | None) -> bool:
    """True once the client has closed its connection (a readable socket with nothing to read)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):  # ValueError: TLS sockets take no flags; rely on write errors
        return False


def _set_nodelay(sock: socket.socket | None) -> None:
    # gunicorn exposes the connection's socket; small streamed lines must not wait on Nagle.
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
