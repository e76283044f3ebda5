"""The request log: one line per request on stderr, never the token, the query string or code;
and the redaction that keeps the token out of every other log line of a server process."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

from flask import Flask, Response, g, request

_write_lock = threading.Lock()  # lines from many threads never interleave


def note(**fields: Any) -> None:
    """Add what the route learned (the namespace id, the execution_count) to this request's line."""
    g.setdefault("request_log", {}).update(fields)


REDACTED = "<redacted>"
# What carries a credential in text about a request, whoever's it is (a wrong token too): a
# query's token=/access_token= value, an Authorization header's value (as a line, or in a repr
# of headers or an environ), a Bearer credential.
_PATTERNS = (
    re.compile(r"(?i)(token=)[^&\s'\"\\;#<>]+"),
    re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?)[^\r\n'\"]+"),
    re.compile(r"(?i)(\bbearer\s+)[^\s'\"\\,]+"),
)
MIN_SECRET = 4  # a shorter one would be cut out of ordinary words; the patterns still apply
_FORMATTER = logging.Formatter()


class Redactor:
    """Takes secrets (the token, in every form a log line may show it) out of text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Redact secret from now on: as is, escaped (repr of str and bytes) and URL-encoded."""
        if not secret or len(secret) < MIN_SECRET:
            return
        forms = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1], json.dumps(secret)[1:-1],
                 quote(secret, safe=""), quote(secret), quote_plus(secret)}
        # Longest first: a form that contains another is replaced whole.
        self._forms = tuple(sorted(set(self._forms) | forms, key=len, reverse=True))

    def redact_secrets(self, text: str) -> str:
        """text without the secrets (cheap: substring checks, for every request's line)."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def redact(self, text: str) -> str:
        """text without the secrets, nor any query token, Authorization value or Bearer credential."""
        text = self.redact_secrets(text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda found: found.group(1) + REDACTED, text)
        return text

    def scrub(self, record: logging.LogRecord) -> None:
        """Redact a log record: its message with its arguments, its traceback, its stack."""
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: logging would print them raw
            message = f"{record.msg!s} (arguments that do not fit it: {record.args!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info:
            # Formatted now and the exception dropped: no handler or formatter, however it is
            # configured, can print the exception's message or arguments unredacted.
            record.exc_text = self.redact(_FORMATTER.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)


# The loggers that write about requests: gunicorn's (its error log quotes what it refuses),
# ours and Flask's. Not the rest: the inprocess backend runs cells in this process, and what a
# cell logs is its output, not the server's log.
REDACTED_LOGGERS = ("gunicorn", "kernelserver", "werkzeug", "flask")


def install_log_redaction(redactor: Redactor, loggers: tuple[str, ...] = REDACTED_LOGGERS) -> None:
    """Redact every record these loggers (and their children) make in this process from now on."""
    # At the record's making, not in a handler: whatever handler or formatter writes it (the
    # invalid-request warnings of gunicorn's error log, a traceback) gets the redacted text.
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    # Installed again (another worker or app in this process): replace ours, never stack it.
    inner = getattr(previous, "kernelserver_inner", previous)
    prefixes = tuple(name + "." for name in loggers)

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        if record.name in loggers or record.name.startswith(prefixes):
            redactor.scrub(record)
        return record

    make_record.kernelserver_inner = inner  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


class RequestLog:
    """Writes the line of each request once it is answered (a stream's once it ends)."""

    def __init__(self, mode: str, stream: TextIO | None = None,
                 redactor: Redactor | None = None) -> None:
        self.mode = mode  # "text" or "json"
        self.stream = stream
        # A path or a namespace id may be the token itself (a mistyped URL, a hostile request).
        self.redactor = redactor or Redactor()

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
        data = (self.redactor.redact_secrets(line) + "\n").encode("utf-8", "backslashreplace")
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


def install(app: Flask, mode: str, token: str | None = None) -> None:
    """The request log of the request_log setting (text, json, off), never showing token."""
    if mode != "off":
        RequestLog(mode, redactor=Redactor([token] if token else [])).install(app)
