"""HTTP answers: JSON (in pieces when large), the 200/202 of a waited-for cell, NDJSON streams."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context

from ..encoding import dumps, encode, is_large, iter_json
from ..execution import Execution
from ..results import FINISHED, DisplayEvent, OutputEvent, ResultEvent
from ..service import CellStream

TEXT_MIMETYPE = "text/plain"


def json_response(data: Any, status: int = 200) -> Response:
    """data as a JSON answer; a large one is encoded piece by piece as it is sent."""
    if is_large(data):
        return Response(iter_json(data), status=status, mimetype="application/json")
    return Response(dumps(data), status=status, mimetype="application/json")


def execution_response(execution: Execution, with_code: bool = False) -> Response:
    """The execution as it is now: 200 once finished, else 202 with its queued/running state."""
    answer = execution.to_dict()
    if with_code:  # /env/execution: the whole code, which /env/history only previews
        answer["code"] = execution.code
    return json_response(answer, 200 if answer["status"] in FINISHED else 202)


def ndjson_response(stream: CellStream) -> Response:
    """The stream as application/x-ndjson, one event a line, until the result or the client leaves."""
    sock = request.environ.get("gunicorn.socket")

    def generate() -> Iterator[bytes]:
        yield b""  # the headers go now: the client knows its cell is in, however quiet it is
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


def text_response(stream: CellStream) -> Response:
    """The stream as plain text for a terminal: the cell's stdout and stderr as they come (a
    progress bar's \\r included), its value or traceback, then one status line."""
    sock = request.environ.get("gunicorn.socket")

    def generate() -> Iterator[bytes]:
        yield b""  # the headers go now (see ndjson_response)
        at_line_start = True
        ended = False
        for event in stream.events(gone=lambda: client_gone(sock)):
            if isinstance(event, ResultEvent):
                ended = True
                text = _closing_text(event.to_dict(), at_line_start)
            elif isinstance(event, OutputEvent):
                text = event.text
            elif isinstance(event, DisplayEvent):
                shown = event.data.get("text/plain") or ""
                kinds = ", ".join(k for k in event.data if k != "text/plain")
                text = ("" if at_line_start else "\n") + (f"[display {kinds}] " if kinds else "")
                text += f"{shown}\n"
            else:
                continue  # keepalives: a terminal shows every byte, and the socket check suffices
            if text:
                at_line_start = text.endswith(("\n", "\r"))
                yield text.encode("utf-8", "replace")
        if not ended:
            yield (("" if at_line_start else "\n")
                   + "--- kernelserver: the stream ended before the cell did\n").encode()

    response = Response(stream_with_context(generate()), mimetype=TEXT_MIMETYPE)
    response.call_on_close(stream.close)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["X-Content-Type-Options"] = "nosniff"  # output is never a page
    _set_nodelay(sock)
    return response


def _closing_text(result: dict[str, Any], at_line_start: bool) -> str:
    """The value or traceback, then `--- kernelserver: status=… execution_count=… …`."""
    parts = [] if at_line_start else ["\n"]
    value = (result.get("result") or {}).get("text/plain")
    if value is not None:
        parts.append(f"{value}\n")
    error = result.get("error")
    if error:
        shown = error.get("traceback") or f"{error['ename']}: {error['evalue']}"
        parts.append(shown if shown.endswith("\n") else shown + "\n")
    status = [f"status={result['status']}", f"execution_count={result['execution_count']}"]
    if result.get("duration_ms") is not None:
        status.append(f"duration_ms={result['duration_ms']:.1f}")
    if error:
        status.append(f"ename={error['ename']}")
    status += [name for name in ("truncated", "restarted") if result.get(name)]
    parts.append("--- kernelserver: " + " ".join(status) + "\n")
    return "".join(parts)


def stream_response(stream: CellStream, as_text: bool) -> Response:
    """NDJSON, or plain text when the client asked for it."""
    return text_response(stream) if as_text else ndjson_response(stream)


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
