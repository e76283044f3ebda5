"""Jupyter messages on a WebSocket, in both wire formats jupyter_server speaks.

- Legacy (no subprotocol): one JSON text frame a message, with `channel`, `header`, `msg_id`,
  `msg_type`, `parent_header`, `metadata`, `content`, `buffers`; a message with binary buffers is
  a binary frame: uint32 big-endian count and offsets, the JSON, then the buffers.
- `v1.kernel.websocket.jupyter.org`: every frame binary: uint64 little-endian count of offsets,
  the offsets, then channel | header | parent_header | metadata | content | buffers...

(jupyter_server, services/kernels/connection/base.py, is the reference for both.)
"""

from __future__ import annotations

import itertools
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ...encoding import json_bytes, loads

V1 = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"  # the messaging spec this kernel speaks (kernel_info_reply)
CHANNELS = frozenset({"shell", "control", "stdin", "iopub"})
USERNAME = "kernelserver"


class WireError(ValueError):
    """A frame that is not a Jupyter message; the message says what is wrong with it.

    header is the frame's header where that much could be read, so the error can answer it.
    """

    def __init__(self, message: str, header: dict[str, Any] | None = None,
                 channel: str = "shell") -> None:
        super().__init__(message)
        self.header = header
        self.channel = channel


@dataclass
class Message:
    """One Jupyter message; header and parent_header are the spec's dicts."""

    channel: str
    header: dict[str, Any]
    content: dict[str, Any] = field(default_factory=dict)
    parent_header: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)

    @property
    def msg_type(self) -> str:
        """The header's msg_type."""
        return str(self.header.get("msg_type", ""))

    @property
    def msg_id(self) -> str:
        """The header's msg_id."""
        return str(self.header.get("msg_id", ""))


# Message ids as jupyter_client makes them (a random prefix, the pid, a count): unique, and a
# fraction of a uuid4's cost on a path taken for every line a cell prints.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)
_second: tuple[int, str] = (-1, "")  # the last whole second, formatted


def _now_iso() -> str:
    """execution.utcnow_iso() for a hot path: the date and time part made once a second."""
    global _second
    now = time.time()
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1e6):06d}Z"


def new_header(msg_type: str, session: str) -> dict[str, Any]:
    """A header for a message the kernel sends (every field a string, as JupyterLab checks)."""
    return {"msg_id": f"{_ID_PREFIX}_{os.getpid()}_{next(_ids)}", "msg_type": msg_type,
            "username": USERNAME, "session": session, "date": _now_iso(),
            "version": PROTOCOL_VERSION}


def reply(request: Message, msg_type: str, content: dict[str, Any], session: str,
          channel: str | None = None, metadata: dict[str, Any] | None = None) -> Message:
    """A message answering request: its header becomes the parent."""
    return Message(channel or request.channel, new_header(msg_type, session), content,
                   request.header, metadata or {})


# -- on its way: queued for a client, or kept for its replay --

MERGE_MAX = 1 << 20  # the most text one merged stream message carries


def weight(message: Message) -> int:
    """Roughly what a message costs a queue: the characters of its text, data and buffers."""
    content = message.content
    text = content.get("text")
    if isinstance(text, str):  # a stream message: the common case, and the flood
        return 200 + len(text)
    size = 200 + sum(len(b) for b in message.buffers)
    data = content.get("data")
    if isinstance(data, dict):
        size += sum(len(v) for v in data.values() if isinstance(v, str))
    return size


def stream_key(message: Message) -> tuple[str, str] | None:
    """What stream messages must share to be merged: their cell and stream; None for others."""
    if message.channel != "iopub" or message.msg_type != "stream":
        return None
    name, text = message.content.get("name"), message.content.get("text")
    if not isinstance(name, str) or not isinstance(text, str):
        return None
    return str(message.parent_header.get("msg_id", "")), name


class Pending:
    """A message on its way, with the text of the stream messages merged into it.

    Printed text that waits is merged, as ipykernel's own buffering does: a progress bar's
    thousands of updates cost a client that is behind a few messages, not thousands.
    """

    __slots__ = ("frame", "key", "message", "size", "texts")

    def __init__(self, message: Message, size: int | None = None,
                 frame: str | bytes | None = None) -> None:
        self.message = message
        self.size = weight(message) if size is None else size
        self.frame = frame  # its frame, when the producer already made it
        self.key = stream_key(message)
        self.texts: list[str] | None = None

    def merge(self, message: Message, size: int) -> bool:
        """Take message's text after this one's if it is of the same cell and stream (and the
        result not too large); False when it is not."""
        if self.key is None or self.size + size > MERGE_MAX or stream_key(message) != self.key:
            return False
        if self.texts is None:
            self.texts = [self.message.content["text"]]
        self.texts.append(message.content["text"])
        self.size += size
        self.frame = None
        return True

    def final(self) -> Message:
        """The message to send: with merged text, a new one (the first is shared by every
        connection)."""
        if self.texts is None:
            return self.message
        first = self.message
        return Message(first.channel, first.header, {**first.content, "text": "".join(self.texts)},
                       first.parent_header, first.metadata)


# -- incoming --

def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WireError(f"{what} must be an object, not {type(value).__name__}")
    return value


def _from_parts(channel: str, header: Any, parent: Any, metadata: Any, content: Any,
                buffers: list[bytes]) -> Message:
    header = _dict(header, "header")
    if not isinstance(header.get("msg_type"), str) or not header["msg_type"]:
        raise WireError("the header has no msg_type")
    if channel not in CHANNELS:
        raise WireError(f"unknown channel {channel!r}: use shell, control or stdin")
    return Message(channel, header, _dict(content, "content"), _dict(parent, "parent_header"),
                   _dict(metadata, "metadata"), buffers)


def _json(data: bytes | str, what: str) -> Any:
    try:
        return loads(data) if data else None
    except RecursionError:  # json's fallback parser on deep nesting (orjson stops at 1024)
        raise WireError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{what} is not valid JSON: {exc}") from None


def _legacy(data: dict[str, Any], buffers: list[bytes]) -> Message:
    channel = data.get("channel") or "shell"  # jupyter_server's default when none is named
    if not isinstance(channel, str):
        raise WireError("channel must be a string")
    return _from_parts(channel, data.get("header"), data.get("parent_header"), data.get("metadata"),
                       data.get("content"), buffers)


def parse(frame: str | bytes, subprotocol: str | None) -> Message:
    """The message in one frame from a client; WireError says why a frame is not one."""
    if subprotocol == V1:
        if isinstance(frame, str):
            raise WireError(f"{V1} frames are binary")
        return _parse_v1(frame)
    if isinstance(frame, str):
        data = _json(frame, "the message")
        if not isinstance(data, dict):
            raise WireError("a message must be a JSON object")
        return _legacy(data, [])
    return _parse_legacy_binary(frame)


def _offsets(frame: bytes, fmt: str, width: int) -> list[int]:
    if len(frame) < width:
        raise WireError("the frame is too short")
    (count,) = struct.unpack_from(fmt, frame)
    if not 0 < count <= 1024 or len(frame) < width * (count + 1):
        raise WireError("the frame's offset table is malformed")
    offsets = list(struct.unpack_from(fmt[0] + fmt[1] * count, frame, width))
    if offsets != sorted(offsets) or offsets[0] < width * (count + 1) or offsets[-1] > len(frame):
        raise WireError("the frame's offsets are out of order or out of bounds")
    return offsets


def _parse_v1(frame: bytes) -> Message:
    offsets = _offsets(frame, "<Q", 8)
    if len(offsets) < 6:
        raise WireError(f"a {V1} frame has at least 6 offsets")
    parts = [frame[a:b] for a, b in pairwise(offsets)]
    channel = parts[0].decode("utf-8", "replace")
    header = _json(parts[1], "header")
    try:
        parent, metadata, content = (_json(p, name) for p, name in zip(
            parts[2:5], ("parent_header", "metadata", "content"), strict=True))
        return _from_parts(channel, header, parent, metadata, content,
                           [bytes(b) for b in parts[5:]])
    except WireError as exc:
        # The header was readable: the error can answer the request it belongs to.
        raise WireError(str(exc), header if isinstance(header, dict) else None,
                        channel) from None


def _parse_legacy_binary(frame: bytes) -> Message:
    offsets = _offsets(frame, "!I", 4)
    bounds = [*offsets, len(frame)]
    parts = [frame[a:b] for a, b in pairwise(bounds)]
    data = _json(parts[0], "the message")
    if not isinstance(data, dict):
        raise WireError("a message must be a JSON object")
    return _legacy(data, [bytes(p) for p in parts[1:]])


# -- outgoing --

def serialize(message: Message, subprotocol: str | None) -> str | bytes:
    """The frame for one message to a client of this subprotocol."""
    if subprotocol == V1:
        parts = [message.channel.encode(), json_bytes(message.header),
                 json_bytes(message.parent_header), json_bytes(message.metadata),
                 json_bytes(message.content), *message.buffers]
        offsets = [8 * (len(parts) + 2)]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
        return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)
    data = {"header": message.header, "msg_id": message.msg_id, "msg_type": message.msg_type,
            "parent_header": message.parent_header, "metadata": message.metadata,
            "content": message.content, "buffers": [], "channel": message.channel}
    if not message.buffers:
        return json_bytes(data).decode("utf-8")
    del data["buffers"]
    parts = [json_bytes(data), *message.buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(offsets) + 1}I", len(parts), *offsets) + b"".join(parts)
