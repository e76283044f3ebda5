"""A server WebSocket on the connection a WSGI request hands over (gunicorn's), framed by wsproto.

Written for kernelserver rather than taken from simple-websocket, whose shape it follows (the
socket from the WSGI environ, the handshake replayed into wsproto): every frame, pings and pongs
included, is sent under one lock and whole (`sendall`; what a non-blocking `try_send` could not
write goes out first with the next), so threads can share a socket and a 16 MiB display is never
cut short; the reader is the caller's own thread (no thread per socket beyond the request's); no
compression (displays are base64 PNGs: deflate costs CPU and saves little); a peer that stops
answering pings is dropped, and `drop()` gives up on one that reads too slowly without waiting
for anything; every wait is bounded.
"""

from __future__ import annotations

import fcntl
import select
import socket
import ssl
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_SIZE = 1 << 16
DIRECT_MAX = 16 << 10  # try_send: the largest message, and the most already queued in the socket
SEND_TIMEOUT = 60.0  # a peer that takes longer than this to take one message is dropped
CLOSE_TIMEOUT = 2.0  # how long a local close waits for the peer's close frame

NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
ABNORMAL = 1006


class HandshakeError(ValueError):
    """The request is not a valid WebSocket upgrade."""


class ConnectionClosed(ConnectionError):
    """The WebSocket is closed; code and reason say how."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


def is_upgrade(environ: Mapping[str, Any]) -> bool:
    """True when the request asks to become a WebSocket."""
    return (environ.get("HTTP_UPGRADE", "").lower() == "websocket"
            and "upgrade" in environ.get("HTTP_CONNECTION", "").lower())


def offered_subprotocols(environ: Mapping[str, Any]) -> list[str]:
    """The subprotocols the client offers, in its order."""
    raw = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _unsent(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet sent; large when it cannot tell."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 1 << 30


class WebSocket:
    """One accepted WebSocket: receive() on one thread, send() and close() from any."""

    def __init__(self, sock: socket.socket, subprotocol: str | None, ping_interval: float,
                 max_message_size: int) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._ws = WSConnection(ConnectionType.SERVER)
        self._send_lock = threading.Lock()
        # What a non-blocking send could not write: it goes out first, under the lock, before
        # any other frame (a frame is never interleaved with another).
        self._tail = b""
        self._dropped = False
        self._messages: deque[str | bytes] = deque()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._last_heard = time.monotonic()
        self._ping_sent_at: float | None = None
        self._closing_since: float | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    def accept(cls, environ: Mapping[str, Any], subprotocols: list[str], ping_interval: float,
               max_message_size: int) -> WebSocket:
        """Complete the handshake of this request (the first offered subprotocol we speak wins)."""
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        if sock is None:
            raise HandshakeError("this server cannot hand the connection over to a WebSocket")
        # The worker's read timeout is for requests; a WebSocket waits on select() instead, and
        # sends with their own bound.
        sock.settimeout(SEND_TIMEOUT)
        try:  # small frames (a status, a reply) must not wait on Nagle for the peer's ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        offered = offered_subprotocols(environ)
        chosen = next((p for p in offered if p in subprotocols), None)
        self = cls(sock, chosen, ping_interval, max_message_size)
        self._handshake(environ)
        return self

    def _handshake(self, environ: Mapping[str, Any]) -> None:
        target = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        lines = [f"GET {target} HTTP/1.1"]
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                lines.append(f"{key[5:].replace('_', '-').title()}: {value}")
        try:
            self._ws.receive_data(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
            request = next((e for e in self._ws.events() if isinstance(e, Request)), None)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            raise HandshakeError(f"not a valid WebSocket upgrade: {exc}") from None
        if request is None:
            raise HandshakeError("not a valid WebSocket upgrade")
        self._write(self._ws.send(AcceptConnection(subprotocol=self.subprotocol)))

    # -- sending: any thread --

    def _write(self, data: bytes) -> None:
        if self._tail:
            data, self._tail = self._tail + data, b""
        if data:
            self.sock.sendall(data)

    def send(self, message: str | bytes) -> None:
        """Send one message (text for str, binary for bytes); ConnectionClosed once closed."""
        self.send_many([message])

    def try_send(self, message: str | bytes) -> bool:
        """Send a small message now if that cannot block; False (nothing sent) otherwise.

        For a thread that must never wait on a client (a cell's own): it skips the hand-off
        to a writer thread when the socket's send queue is nearly empty. The write never blocks:
        what the socket does not take is kept and goes out first with the next frame, so a
        caller that gets True with `pending` set must have a writer send (send_many([])) soon.
        """
        if (self._tls or self._dropped or len(message) > DIRECT_MAX
                or not self._send_lock.acquire(blocking=False)):
            return False
        try:
            if (self._tail or self._ws.state is not ConnectionState.OPEN
                    or _unsent(self.sock) > DIRECT_MAX):
                return False
            event = Message(data=message) if isinstance(message, bytes) else TextMessage(data=message)
            data = self._ws.send(event)
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._abort(f"send failed: {exc}")
                return True
            self._tail = data[sent:]
            return True
        finally:
            self._send_lock.release()

    @property
    def pending(self) -> bool:
        """True while part of a frame that try_send accepted waits to be written."""
        return bool(self._tail)

    def send_many(self, messages: list[str | bytes]) -> None:
        """Send messages in order, in one write (after what try_send left); ConnectionClosed
        once closed."""
        if not messages and not self._tail:
            return
        with self._send_lock:
            if self._dropped or self._ws.state is not ConnectionState.OPEN:
                raise ConnectionClosed(self.close_code or ABNORMAL, self.close_reason)
            data = b"".join(self._ws.send(Message(data=m) if isinstance(m, bytes)
                                          else TextMessage(data=m)) for m in messages)
            try:
                self._write(data)
            except OSError as exc:  # timed out or reset: the peer is gone for us
                self._abort(f"send failed: {exc}")
                raise ConnectionClosed(ABNORMAL, str(exc)) from None

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake (idempotent); the reader ends once the peer answers."""
        with self._send_lock:
            if self._ws.state is not ConnectionState.OPEN:
                return
            self.close_code, self.close_reason = code, reason
            self._closing_since = time.monotonic()
            try:
                self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
            except (OSError, LocalProtocolError):
                self._abort("close failed")

    def drop(self, code: int, reason: str) -> None:
        """Give up on a peer that reads too slowly, never waiting (from any thread).

        A writer blocked in sendall on it returns at once, and the reader ends. The close frame
        goes too only where the socket takes it now: the peer is not reading anyway.
        """
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._dropped = True
        if not self._tls and self._send_lock.acquire(blocking=False):
            try:
                if not self._tail and self._ws.state is ConnectionState.OPEN:
                    frame = self._ws.send(CloseConnection(code=code, reason=reason))
                    self.sock.send(frame, socket.MSG_DONTWAIT)
            except (OSError, LocalProtocolError):
                pass
            finally:
                self._send_lock.release()
        self._abort(reason)

    def _abort(self, why: str) -> None:
        """Give up on the connection without a handshake (the peer is unreachable)."""
        if self.close_code is None:
            self.close_code, self.close_reason = ABNORMAL, why
        self._closing_since = 0.0  # the reader stops at once
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def closed(self) -> bool:
        """True once no more messages can be sent."""
        return self._ws.state is not ConnectionState.OPEN

    # -- receiving: one thread --

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next whole message, or None when timeout seconds pass first.

        Sends pings while it waits and drops a peer that does not answer them; raises
        ConnectionClosed once the connection is closed (by either side).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._messages:
                return self._messages.popleft()
            now = time.monotonic()
            self._check_closed(now)
            wake = self._next_ping_or_close(now)
            if deadline is not None:
                if now >= deadline:
                    return None
                wake = min(wake, deadline)
            if self._readable(max(0.0, wake - now)):
                self._read()
            else:
                self._keep_alive(time.monotonic())

    def _check_closed(self, now: float) -> None:
        if self._ws.state is ConnectionState.CLOSED or (
                self._closing_since is not None and now - self._closing_since >= CLOSE_TIMEOUT):
            raise ConnectionClosed(self.close_code or ABNORMAL, self.close_reason)

    def _next_ping_or_close(self, now: float) -> float:
        if self._closing_since is not None:
            return self._closing_since + CLOSE_TIMEOUT
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self.ping_interval  # the pong is due by then
        return self._last_heard + self.ping_interval

    def _keep_alive(self, now: float) -> None:
        if self._closing_since is not None:
            return
        if self._ping_sent_at is not None and now - self._ping_sent_at >= self.ping_interval:
            self._abort(f"no answer to a ping for {self.ping_interval:g} s")
            return
        if self._ping_sent_at is None and now - self._last_heard >= self.ping_interval:
            with self._send_lock:
                if self._ws.state is ConnectionState.OPEN:
                    try:
                        self._write(self._ws.send(Ping()))
                    except OSError as exc:
                        self._abort(f"ping failed: {exc}")
                        return
            self._ping_sent_at = now

    def _readable(self, wait: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted bytes wait in the TLS layer, where select cannot see them
        try:
            readable, _, _ = select.select([self.sock], [], [], wait)
        except (OSError, ValueError):  # closed under us
            self._abort("socket closed")
            return False
        return bool(readable)

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        if not data:
            self._peer_gone()
            return
        self._last_heard = time.monotonic()
        self._ping_sent_at = None  # any bytes from the peer prove it is there
        try:
            self._ws.receive_data(data)
            self._handle_events()
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.close(PROTOCOL_ERROR, str(exc)[:100])

    def _peer_gone(self) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = ABNORMAL, "the peer closed the connection"
        try:
            self._ws.receive_data(None)  # EOF: wsproto moves to CLOSED
        except (RemoteProtocolError, LocalProtocolError):
            pass
        self._closing_since = 0.0

    def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._size += len(event.data)
                if self._size > self.max_message_size:
                    self.close(TOO_BIG, f"messages are limited to {self.max_message_size} bytes")
                    self._parts, self._size = [], 0
                    return
                self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                if event.message_finished:
                    parts = self._parts
                    self._messages.append("".join(p for p in parts if isinstance(p, str))
                                          if isinstance(event, TextMessage)
                                          else b"".join(p for p in parts if isinstance(p, bytes)))
                    self._parts, self._size = [], 0
            elif isinstance(event, Ping):
                with self._send_lock:
                    if self._ws.state is ConnectionState.OPEN:
                        try:
                            self._write(self._ws.send(event.response()))
                        except OSError as exc:
                            self._abort(f"pong failed: {exc}")
            elif isinstance(event, Pong):
                pass  # _read already noted that the peer is there
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.OPEN:
                    # Not the peer's close but wsproto's verdict on a bad frame (1007 for invalid
                    # UTF-8 in a text frame, 1002...): the peer must be told, with that code.
                    self.close(event.code, (event.reason or "")[:100])
                    return
                if self.close_code is None:
                    self.close_code, self.close_reason = event.code, event.reason or ""
                with self._send_lock:
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        try:
                            self._write(self._ws.send(event.response()))
                        except OSError:
                            pass  # it said goodbye; an answer that cannot go changes nothing
                self._closing_since = 0.0

