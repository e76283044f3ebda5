"""JSON in and out (orjson where it can, json where it cannot), and Text kept in pieces.

Shared by server, worker protocol and client: imports nothing of the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

try:
    import orjson
except ImportError:  # a worker in another environment: the standard library's json serves it
    orjson = None  # type: ignore[assignment]

CHUNK_CHARS = 1 << 16
ENCODE_CHARS = 1 << 14
LARGE_ANSWER = 1 << 18  # characters; above this an answer is encoded piece by piece
_OPTIONS = orjson.OPT_NON_STR_KEYS if orjson is not None else 0


class Text:
    """Captured text kept in the pieces it arrived in, so a large output is never copied whole.

    The JSON encoder and the history writer take it piece by piece; str() joins it.
    """

    __slots__ = ("pieces", "length")

    def __init__(self, pieces: Iterable[str]) -> None:
        self.pieces: tuple[str, ...] = tuple(piece for piece in pieces if piece)
        self.length = sum(map(len, self.pieces))

    def __len__(self) -> int:
        return self.length

    def __str__(self) -> str:
        return "".join(self.pieces)

    def __repr__(self) -> str:
        return f"Text({self.length} characters in {len(self.pieces)} pieces)"


def _plain(value: Any) -> Any:
    if isinstance(value, Text):
        return str(value)  # only in small answers: large ones go through iter_json
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_bytes(data: Any) -> bytes:
    """Compact JSON as UTF-8, no newline; a lone surrogate becomes its JSON escape."""
    # orjson escapes text ~50x faster than json (6 GB/s against 0.1 here), which is what a
    # printing cell's answer or stream is made of. It refuses lone surrogates (a cell can print
    # one) and integers past 64 bits: those take json, which writes a surrogate as its escape.
    if orjson is not None:
        try:
            return orjson.dumps(data, default=_plain, option=_OPTIONS)
        except TypeError:
            pass  # what it refuses, json writes
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_plain)
    return text.encode("utf-8", "backslashreplace")


def dumps(data: Any) -> bytes:
    """Compact JSON as UTF-8 and a newline; a lone surrogate becomes its JSON escape."""
    return json_bytes(data) + b"\n"


class JSONTooDeep(ValueError):
    """JSON nested deeper than the parsers go: invalid input like any other, never a crash."""


def loads(raw: bytes | str) -> Any:
    """Parse JSON; what orjson refuses (lone surrogate escapes, NaN, huge integers) json reads."""
    # Every failure is a ValueError (JSONTooDeep for nesting past orjson's 1024 levels or json's
    # recursion limit, where json raised RecursionError): whoever refuses invalid JSON (a 400, a
    # closed WebSocket) refuses deep JSON too.
    try:
        if orjson is not None:
            return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).lower()
        if "depth limit" in reason or "recursion limit" in reason:
            # json would only recurse into the same input until its own limit: say so at once.
            raise JSONTooDeep(f"JSON nested too deeply ({exc})") from None
    try:
        return json.loads(raw)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply (past the parser's recursion limit)") from None


def text_size(data: Any) -> int:
    """Roughly how many characters the JSON of data takes (exact enough to spot a large one)."""
    if isinstance(data, (str, Text)):
        return len(data)
    if isinstance(data, dict):
        return sum(text_size(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(text_size(v) for v in data)
    return 8


def _string_pieces(pieces: tuple[str, ...]) -> Iterator[bytes]:
    yield b'"'
    for piece in pieces:
        # orjson reserves ~16 bytes per character while it escapes: 16 Ki characters a call
        # keep that near 256 KiB.
        for start in range(0, len(piece), ENCODE_CHARS):
            yield json_bytes(piece[start:start + ENCODE_CHARS])[1:-1]
    yield b'"'


def _pieces(data: Any) -> Iterator[bytes]:
    if isinstance(data, Text):
        yield from _string_pieces(data.pieces)
    elif isinstance(data, str) and len(data) > CHUNK_CHARS:
        yield from _string_pieces((data,))
    elif isinstance(data, dict):
        yield b"{"
        for i, (key, value) in enumerate(data.items()):
            yield (b"," if i else b"") + json_bytes(str(key)) + b":"
            yield from _pieces(value)
        yield b"}"
    elif isinstance(data, (list, tuple)):
        yield b"["
        for i, value in enumerate(data):
            if i:
                yield b","
            yield from _pieces(value)
        yield b"]"
    else:
        yield json_bytes(data)


def iter_json(data: Any) -> Iterator[bytes]:
    """The JSON of data and a newline, in ~64 KiB pieces of UTF-8."""
    batch: list[bytes] = []
    size = 0
    for piece in _pieces(data):
        batch.append(piece)
        size += len(piece)
        if size >= CHUNK_CHARS:
            yield b"".join(batch)
            batch, size = [], 0
    batch.append(b"\n")
    yield b"".join(batch)


def is_large(data: Any) -> bool:
    """True when data should be encoded with iter_json rather than dumps."""
    return text_size(data) > LARGE_ANSWER


def encode(data: Any) -> Iterator[bytes]:
    """The JSON of data: whole when small, in pieces when large."""
    if is_large(data):
        yield from iter_json(data)
    else:
        yield dumps(data)
