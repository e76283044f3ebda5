"""Jupyter messages on a WebSocket, in both wire formats jupyter_server speaks.

- Legacy (no subprotocol): one JSON text frame a message, with `channel`, `header`, `msg_id`,
  `msg_type`, `parent_header`, `metadata`, `content`, `buffers`; a message with binary buffers is
  a binary frame: uint32 big-endian count and offsets, the JSON, then the buffers.
- `v1.kernel.websocket.jupyter.org`: every frame binary: uint64 little-endian count of offsets,
  the offsets, then channel | header | parent_header | metadata | content | buffers...

(jupyter_server, services/kernels/connection/base.py, is the reference for both.)
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ..encoding import json_bytes, loads
from ..execution import utcnow_iso

V1 = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"  # the messaging spec this kernel speaks (kernel_info_reply)
CHANNELS = frozenset({"shell", "control", "stdin", "iopub"})
USERNAME = "kernelserver"


class WireError(ValueError):
    """A frame that is not a Jupyter message; the message says what is wrong with it."""


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


def new_header(msg_type: str, session: str) -> dict[str, Any]:
    """A header for a message the kernel sends (every field a string, as JupyterLab checks)."""
    return {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": USERNAME,
            "session": session, "date": utcnow_iso(), "version": PROTOCOL_VERSION}


def reply(request: Message, msg_type: str, content: dict[str, Any], session: str,
          channel: str | None = None, metadata: dict[str, Any] | None = None) -> Message:
    """A message answering request: its header becomes the parent."""
    return Message(channel or request.channel, new_header(msg_type, session), content,
                   request.header, metadata or {})


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
    header, parent, metadata, content = (_json(p, name) for p, name in zip(
        parts[1:5], ("header", "parent_header", "metadata", "content"), strict=True))
    return _from_parts(channel, header, parent, metadata, content, [bytes(b) for b in parts[5:]])


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
