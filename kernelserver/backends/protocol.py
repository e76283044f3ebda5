"""Framing for messages between the server and its workers: 4-byte length, then JSON.

JSON rather than pickle: the worker runs untrusted code, and the server must never unpickle
what such a process sends it.
"""

from __future__ import annotations

import json
import socket
import struct
from enum import Enum
from typing import Any

try:
    import orjson
except ImportError:  # a worker in another environment: json
    orjson = None  # type: ignore[assignment]

from ..encoding import loads

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30


class Op(str, Enum):
    """What a message is (its "op"): one name per kind; on the wire it is the plain string."""

    # A str mixin, so Op.EXECUTE == "execute", it hashes alike, and json/orjson write the string.
    # Control socket, server -> worker.
    EXECUTE = "execute"
    INPUT_REPLY = "input_reply"
    SHUTDOWN = "shutdown"
    # Control socket, worker -> server.
    RESULT = "result"
    DISPLAY = "display"
    INPUT_REQUEST = "input_request"
    # Query socket: a request, answered on the same socket with its seq.
    VARIABLES = "variables"
    COMPLETE = "complete"
    INSPECT = "inspect"
    INTERRUPT = "interrupt"
    PING = "ping"
    # The fork server's socket (forkserver.py).
    SPAWN = "spawn"
    SPAWNED = "spawned"
    SPAWN_FAILED = "spawn_failed"
    EXIT = "exit"
    READY = "ready"
    FAILED = "failed"


def marker(prefix: bytes, tag: bytes) -> bytes:
    """An in-band marker written into an output pipe: prefix, tag, NUL.

    The prefix is random per worker, so printed text never forges one. Tags: END (all of a
    cell's output precedes this) and D<seq> (display number seq goes here, between the text; a
    display message carries data [display_id, update] or, for clear_output, clear: wait).
    """
    return prefix + tag + b"\x00"


OLDEST = (3, 10)  # the oldest Python a worker runs on (requires-python)


class ChannelClosed(EOFError):
    """The other end of the channel went away."""


def encode(message: dict[str, Any]) -> bytes:
    """One framed message."""
    try:
        if orjson is None:  # a worker in another environment
            raise TypeError("no orjson")
        body = orjson.dumps(message)
    except TypeError:  # lone surrogates (a cell's text may hold one) travel as they are
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass")
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one message (blocking)."""
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ChannelClosed("channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> dict[str, Any]:
    """Receive one message (blocking, or up to the socket's timeout)."""
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ChannelClosed(f"message of {size} bytes is too large")
    message: dict[str, Any] = loads(_recv_exact(sock, size))
    return message


class FrameReader:
    """Incremental decoder for a non-blocking reader: feed bytes, get whole messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Messages completed by data."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                raise ChannelClosed(f"message of {size} bytes is too large")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            messages.append(loads(bytes(self._buffer[_HEADER.size:end])))
            del self._buffer[:end]
        return messages
