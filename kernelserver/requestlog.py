"""The request log: one line per request on stderr, never the token, the query string or code."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

from flask import Flask, Response, g, request

_write_lock = threading.Lock()  # lines from many threads never interleave


def note(**fields: Any) -> None:
    """Add what the route learned (the namespace id, the execution_count) to this request's line."""
    g.setdefault("request_log", {}).update(fields)


class RequestLog:
    """Writes the line of each request once it is answered (a stream's once it ends)."""

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.mode = mode  # "text" or "json"
        self.stream = stream

    def install(self, app: Flask) -> None:
        """Time every request of app, before any other check can refuse it."""
        app.before_request(self._start)
        app.after_request(self._answered)

    @staticmethod
    def _start() -> None:
        g.request_started = time.perf_counter()

    def _answered(self, response: Response) -> Response:
        started = g.get("request_started", time.perf_counter())
        # Only the path: a WebSocket's URL may carry ?token=, and ids are all paths hold.
        fields = {"method": request.method, "path": request.path, "status": response.status_code,
                  **g.get("request_log", {})}
        view_args = request.view_args or {}
        if "id" not in fields and "kernel_id" in view_args:
            fields["id"] = view_args["kernel_id"]
        if response.is_streamed:
            # The stream's end is the request's: log when the server closes it.
            response.call_on_close(lambda: self._write(fields, started))
        else:
            self._write(fields, started)
        return response

    def _write(self, fields: dict[str, Any], started: float) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        if self.mode == "json":
            line = json.dumps({"time": _now(), **fields, "duration_ms": duration_ms})
        else:
            extra = "".join(f" {key}={value}" for key, value in fields.items()
                            if key not in ("method", "path", "status"))
            line = (f"{_now()} {fields['method']} {fields['path']} {fields['status']} "
                    f"{duration_ms}ms{extra}")
        data = (line + "\n").encode("utf-8", "backslashreplace")
        try:
            if self.stream is not None:
                with _write_lock:
                    self.stream.write(data.decode())
                    self.stream.flush()
            else:
                # One write(2) of a whole line: lines from many threads never interleave (a pipe
                # keeps writes under PIPE_BUF whole), and no text layer or lock per request.
                os.write(sys.stderr.fileno(), data)
        except (OSError, ValueError, AttributeError):
            pass  # a closed or odd stderr must not fail the request


_clock: tuple[int, str] = (0, "")


def _now() -> str:
    """The time to the second, formatted once a second (a request log line's cost is most of
    what a 1 ms request adds to it)."""
    global _clock
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _clock[1]


def install(app: Flask, mode: str) -> None:
    """The request log of the request_log setting (text, json, off)."""
    if mode != "off":
        RequestLog(mode).install(app)
