"""A small Jupyter kernel client over WebSocket for the tests: legacy JSON or v1 binary frames.

Built on websocket-client, a real WebSocket client, and written from the messaging spec, so it
checks the server's framing rather than sharing its code.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections import deque
from typing import Any

import websocket

V1 = "v1.kernel.websocket.jupyter.org"


def ws_url(base: str, kernel_id: str, session: str | None = None, token: str | None = None) -> str:
    """The channels URL of a kernel."""
    url = base.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels"
    query = [f"session_id={session}"] if session else []
    if token:
        query.append(f"token={token}")
    return url + ("?" + "&".join(query) if query else "")


def decode_v1(frame: bytes) -> dict[str, Any]:
    """One v1 frame as a message dict (channel, header, parent_header, metadata, content, buffers)."""
    (count,) = struct.unpack_from("<Q", frame)
    offsets = list(struct.unpack_from(f"<{count}Q", frame, 8))
    parts = [frame[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]
    channel, header, parent, metadata, content = parts[0].decode(), *(json.loads(p) for p in parts[1:5])
    return {"channel": channel, "header": header, "parent_header": parent, "metadata": metadata,
            "content": content, "buffers": parts[5:], "msg_type": header["msg_type"]}


def encode_v1(message: dict[str, Any]) -> bytes:
    """A message dict as one v1 frame."""
    parts = [message["channel"].encode()] + [json.dumps(message[k]).encode() for k in
                                             ("header", "parent_header", "metadata", "content")]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)


class KernelClient:
    """One connection to a kernel's channels."""

    def __init__(self, base: str, kernel_id: str, token: str, session: str | None = None,
                 v1: bool = False, headers: dict[str, str] | None = None, timeout: float = 20) -> None:
        self.session = session or uuid.uuid4().hex
        self.v1 = v1
        self.ws = websocket.create_connection(
            ws_url(base, kernel_id, self.session), timeout=timeout,
            header={"Authorization": f"token {token}", **(headers or {})},
            subprotocols=[V1] if v1 else None,
            # A script sends no Origin unless the test gives one (websocket-client would add its own).
            suppress_origin=True)
        # Messages a request() read past that belong to other requests (a cell that ended
        # while an interrupt_request waited for its idle): the next until() sees them first.
        self._backlog: deque[dict[str, Any]] = deque()

    @property
    def subprotocol(self) -> str | None:
        """What the server chose."""
        return self.ws.getsubprotocol()

    def send(self, msg_type: str, content: dict[str, Any] | None = None, channel: str = "shell",
             parent: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a message; its header."""
        header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": self.session,
                  "username": "test", "version": "5.3", "date": "2026-11-30T00:00:00.000000Z"}
        message = {"header": header, "parent_header": parent or {}, "metadata": metadata or {},
                   "content": content or {}, "channel": channel}
        self.send_raw(encode_v1(message) if self.v1 else json.dumps(message))
        return header

    def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as it is."""
        if isinstance(frame, bytes):
            self.ws.send_binary(frame)
        else:
            self.ws.send(frame)

    def recv(self, timeout: float = 20) -> dict[str, Any]:
        """The next message (TimeoutError if none comes)."""
        self.ws.settimeout(timeout)
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise TimeoutError("no message from the server") from None
        if isinstance(frame, bytes):
            assert self.v1, "a binary frame on a legacy connection"
            return decode_v1(frame)
        assert not self.v1, "a text frame on a v1 connection"
        message: dict[str, Any] = json.loads(frame)
        return message

    def until(self, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Messages received up to and including the first one predicate accepts."""
        seen: list[dict[str, Any]] = []
        while self._backlog:
            seen.append(self._backlog.popleft())
            if predicate(seen[-1]):
                return seen
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            seen.append(message)
            if predicate(message):
                return seen

    def until_idle(self, parent_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Everything up to the iopub idle status of the request parent_id."""
        return self.until(lambda m: m["msg_type"] == "status" and
                          m["content"]["execution_state"] == "idle" and
                          m["parent_header"].get("msg_id") == parent_id, timeout)

    def request(self, msg_type: str, content: dict[str, Any] | None = None, channel: str = "shell",
                **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send a request; its reply and everything received until its idle."""
        header = self.send(msg_type, content, channel, **kwargs)
        seen = self.until_idle(header["msg_id"])
        self._backlog.extend(m for m in seen if m["parent_header"].get("msg_id") != header["msg_id"])
        replies = [m for m in seen if m["channel"] == channel and m["parent_header"].get("msg_id")
                   == header["msg_id"] and m["msg_type"] != "status"]
        assert replies, f"no reply to {msg_type}: {[m['msg_type'] for m in seen]}"
        return replies[-1], seen

    def execute(self, code: str, **content: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run code; the execute_reply and everything up to the cell's idle."""
        return self.request("execute_request", {"code": code, "silent": False, **content})

    def close(self) -> None:
        """Close the connection (a goodbye: 1000)."""
        self.ws.close()


def of_type(messages: list[dict[str, Any]], msg_type: str) -> list[dict[str, Any]]:
    """The messages of one type."""
    return [m for m in messages if m["msg_type"] == msg_type]
