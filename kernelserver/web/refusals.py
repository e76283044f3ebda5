"""Connections the worker closes or refuses: lingering closes, and the JSON answers to requests
gunicorn could not parse (or a malformed chunked body the app read), in the one error shape."""

from __future__ import annotations

import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn.http.errors import (
    ChunkMissingTerminator,
    ConfigurationProblem,
    ExpectationFailed,
    ForbiddenProxyRequest,
    InvalidChunkExtension,
    InvalidChunkSize,
    InvalidHeader,
    InvalidHeaderName,
    InvalidHTTPVersion,
    InvalidRequestLine,
    InvalidRequestMethod,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    LimitRequestHeaders,
    LimitRequestLine,
    ObsoleteFolding,
    ParseException,
    UnsupportedTransferCoding,
)

from ..encoding import dumps
from ..errors import BadRequest, HeadersTooLarge, error_body

LINGER_SECONDS = 2.0  # as gunicorn's own graceful close: time for the peer to read and close
LINGER_DRAIN_BYTES = 65536
MAX_LINGERING = 1024  # beyond this, sockets are closed at once rather than held open
MAX_HEAD_BYTES = 64 * 1024  # a request's header block; nginx's default allows 32 KiB
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
READ_CHUNK = 65536
MAX_DETAIL = 200  # characters of gunicorn's reason for refusing a request, in the answer


def too_large_answer() -> bytes:
    body = dumps(HeadersTooLarge(
        f"the request's headers are larger than {MAX_HEAD_BYTES} bytes").to_dict())
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


class Closer:
    """Closes sockets after the peer has read the answer, without blocking the caller."""

    def __init__(self, linger: float = LINGER_SECONDS) -> None:
        self.linger = linger
        self._incoming: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lingering: dict[socket.socket, tuple[float, int]] = {}
        threading.Thread(target=self._run, name="lingering-close", daemon=True).start()

    def close(self, sock: socket.socket) -> None:
        """Half-close sock now; drain and close it once the peer closes or the linger passes."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            close_quietly(sock)
            return
        self._incoming.put(sock)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the wake-up pipe is full: the closer is awake already

    def _run(self) -> None:
        while True:
            timeout = None
            if self._lingering:
                timeout = max(0.0, min(d for d, _ in self._lingering.values()) - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._wake_r:
                    self._take_incoming()
                else:
                    self._drain(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for sock in [s for s, (deadline, _) in self._lingering.items() if deadline <= now]:
                self._finish(sock)

    def _take_incoming(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        while True:
            try:
                sock = self._incoming.get_nowait()
            except queue.Empty:
                return
            if len(self._lingering) >= MAX_LINGERING:
                close_quietly(sock)
                continue
            self._lingering[sock] = (time.monotonic() + self.linger, 0)
            self._selector.register(sock, selectors.EVENT_READ)

    def _drain(self, sock: socket.socket) -> None:
        deadline, drained = self._lingering[sock]
        try:
            data = sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        drained += len(data)
        if not data or drained >= LINGER_DRAIN_BYTES:
            self._finish(sock)
        else:
            self._lingering[sock] = (deadline, drained)

    def _finish(self, sock: socket.socket) -> None:
        del self._lingering[sock]
        self._selector.unregister(sock)
        close_quietly(sock)


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# What a request gunicorn cannot parse gets: (status, reason, code, message), the message
# followed by gunicorn's own words for it, redacted (they quote the bytes refused).
_REFUSED: tuple[tuple[type[Exception], int, str, str, str], ...] = (
    (InvalidRequestLine, 400, "Bad Request", "bad_request", "the request line is malformed"),
    (InvalidRequestMethod, 400, "Bad Request", "bad_request", "the request method is malformed"),
    (InvalidHTTPVersion, 400, "Bad Request", "bad_request",
     "the HTTP version is malformed or not supported"),
    (LimitRequestLine, 414, "URI Too Long", "uri_too_long", "the request line is too long"),
    (LimitRequestHeaders, 431, "Request Header Fields Too Large", HeadersTooLarge.code,
     "the request has too many headers, or too large a one"),
    (ObsoleteFolding, 400, "Bad Request", "bad_request",
     "a header is folded over lines (obsolete, refused)"),
    (InvalidHeaderName, 400, "Bad Request", "bad_request", "a header name is malformed"),
    (InvalidHeader, 400, "Bad Request", "bad_request", "a header is malformed"),
    (UnsupportedTransferCoding, 501, "Not Implemented", "not_implemented",
     "the Transfer-Encoding is not supported: send the body whole or chunked"),
    (ExpectationFailed, 417, "Expectation Failed", "expectation_failed",
     "the Expect header asks for what the server does not do (only 100-continue)"),
    (ForbiddenProxyRequest, 403, "Forbidden", "forbidden", "proxy request refused"),
    (ParseException, 400, "Bad Request", "bad_request", "the request is malformed"),
)
CHUNK_ERRORS = (InvalidChunkSize, ChunkMissingTerminator, InvalidChunkExtension)
# A chunked body found malformed while the app reads it: said in the app's own answer (a 400).
_BODY_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (InvalidChunkSize, "a chunk size is not a hexadecimal number (or has text after it)"),
    (ChunkMissingTerminator, "a chunk does not end with CRLF where its size says it does"),
    (InvalidChunkExtension, "a chunk extension is malformed"),
    (ParseException, "its framing or trailers are malformed"),
)


def refusal(exc: Exception) -> tuple[int, str, str, str] | None:
    """How to answer a request gunicorn could not parse; None for what is not the client's fault."""
    if isinstance(exc, (ConfigurationProblem, InvalidResponseHeader, InvalidResponseHeaderName)):
        return None
    for cls, status, reason, code, message in _REFUSED:
        if isinstance(exc, cls):
            return status, reason, code, message
    return None


def json_answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = dumps(error_body(code, message))
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))


class CheckedBody:
    """gunicorn's wsgi.input, whose parse errors are the client's 400 (BadRequest), not a 500."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def _checked(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except ParseException as exc:
            why = next(text for cls, text in _BODY_ERRORS if isinstance(exc, cls))
            raise BadRequest(f"the chunked request body is malformed: {why}") from None

    def read(self, size: int | None = None) -> bytes:
        return self._checked(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._checked(self._body.readline, size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        return self._checked(self._body.readlines, size)

    def __iter__(self) -> CheckedBody:
        return self

    def __next__(self) -> bytes:
        return self._checked(self._body.__next__)
