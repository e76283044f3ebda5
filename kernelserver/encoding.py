"""JSON out: compact, safe for lone surrogates, and a large answer in pieces, never whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .execution import Text

CHUNK_CHARS = 1 << 16
LARGE_ANSWER = 1 << 18  # characters; above this an answer is encoded piece by piece


def _plain(value: Any) -> Any:
    if isinstance(value, Text):
        return str(value)  # only in small answers: large ones go through iter_json
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(data: Any) -> bytes:
    """Compact JSON as UTF-8 and a newline; a lone surrogate becomes its JSON escape."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_plain) + "\n"
    return text.encode("utf-8", "backslashreplace")


def text_size(data: Any) -> int:
    """Roughly how many characters the JSON of data takes (exact enough to spot a large one)."""
    if isinstance(data, (str, Text)):
        return len(data)
    if isinstance(data, dict):
        return sum(text_size(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(text_size(v) for v in data)
    return 8


def _string_pieces(pieces: Iterator[str] | tuple[str, ...]) -> Iterator[str]:
    yield '"'
    for piece in pieces:
        for start in range(0, len(piece), CHUNK_CHARS):
            yield json.dumps(piece[start:start + CHUNK_CHARS], ensure_ascii=False)[1:-1]
    yield '"'


def _pieces(data: Any) -> Iterator[str]:
    if isinstance(data, Text):
        yield from _string_pieces(data.pieces)
    elif isinstance(data, str) and len(data) > CHUNK_CHARS:
        yield from _string_pieces((data,))
    elif isinstance(data, dict):
        yield "{"
        for i, (key, value) in enumerate(data.items()):
            yield ("," if i else "") + json.dumps(str(key), ensure_ascii=False) + ":"
            yield from _pieces(value)
        yield "}"
    elif isinstance(data, (list, tuple)):
        yield "["
        for i, value in enumerate(data):
            if i:
                yield ","
            yield from _pieces(value)
        yield "]"
    else:
        yield json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def iter_json(data: Any) -> Iterator[bytes]:
    """The JSON of data and a newline, in ~64 KiB pieces of UTF-8."""
    batch: list[str] = []
    size = 0
    for piece in _pieces(data):
        batch.append(piece)
        size += len(piece)
        if size >= CHUNK_CHARS:
            yield "".join(batch).encode("utf-8", "backslashreplace")
            batch, size = [], 0
    batch.append("\n")
    yield "".join(batch).encode("utf-8", "backslashreplace")


def is_large(data: Any) -> bool:
    """True when data should be encoded with iter_json rather than dumps."""
    return text_size(data) > LARGE_ANSWER


def encode(data: Any) -> Iterator[bytes]:
    """The JSON of data: whole when small, in pieces when large."""
    if is_large(data):
        yield from iter_json(data)
    else:
        yield dumps(data)
