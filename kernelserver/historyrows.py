"""The history database's rows: its schema, how outputs are stored, which rows retention deletes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

from .encoding import Text

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    ns TEXT NOT NULL,
    n INTEGER NOT NULL,
    code TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT,
    started_at TEXT,
    duration_ms REAL,
    result TEXT,
    displays TEXT,
    error TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    restarted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, n)
);
-- Outputs apart, the blob last: SQLite keeps zeroblob(n) lazy only in a record's last column,
-- which lets a large output be written in pieces instead of copied whole.
-- Numbers handed out ahead of the batched rows: an execution_count is on disk before it is
-- answered, so a server killed right after an answer never hands it out again.
CREATE TABLE IF NOT EXISTS counters (
    ns TEXT PRIMARY KEY,
    reserved INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    ns TEXT NOT NULL,
    n INTEGER NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (ns, n, stream)
);
"""


BLOB_PIECE = 1 << 16
CAN_STREAM_BLOBS = hasattr(sqlite3.Connection, "blobopen")  # Python 3.11+


def utf8_pieces(text: Text) -> Iterator[bytes]:
    """text as UTF-8, in pieces of at most BLOB_PIECE characters."""
    for piece in text.pieces:
        for start in range(0, len(piece), BLOB_PIECE):
            yield piece[start:start + BLOB_PIECE].encode("utf-8", "surrogatepass")


def utf8_size(text: Text) -> int:
    """The length of text in UTF-8 bytes."""
    if all(piece.isascii() for piece in text.pieces):
        return len(text)
    return sum(len(chunk) for chunk in utf8_pieces(text))


def storable(text: str) -> str:
    """text as SQLite can bind it: a lone surrogate (JSON can carry one) becomes its escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def text_of(value: str | bytes | None) -> str:
    """A stored output as text (an empty one for none)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


PRUNE_BATCH = 10_000  # rows one pass deletes at most: the writer must get back to new rows
FINISHED_ROWS = "status NOT IN ('queued', 'running')"  # a live cell's row is never pruned


def write_outputs(conn: sqlite3.Connection, ns: str, n: int, stdout: Text, stderr: Text) -> None:
    """Store an execution's stdout and stderr (the large ones in pieces)."""
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        if not text:
            continue
        if not CAN_STREAM_BLOBS or len(text) <= BLOB_PIECE:
            conn.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)",
                         (ns, n, stream, str(text).encode("utf-8", "surrogatepass")))
            continue
        cursor = conn.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, zeroblob(?))",
                              (ns, n, stream, utf8_size(text)))
        # Piece by piece: binding an 8 MiB string would make SQLite copy it whole first.
        with conn.blobopen("outputs", "data", cursor.lastrowid) as blob:  # type: ignore[attr-defined]
            for chunk in utf8_pieces(text):
                blob.write(chunk)


def expired_rows(conn: sqlite3.Connection, keep: int, max_age_days: float) -> list[tuple[str, int]]:
    """Finished rows past max_age_days, and all but the newest keep per namespace (0: no limit)."""
    doomed: list[tuple[str, int]] = []
    if max_age_days:
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - max_age_days * 86400))
        doomed += conn.execute(
            f"SELECT ns, n FROM executions WHERE {FINISHED_ROWS} "
            "AND COALESCE(started_at, submitted_at) < ? LIMIT ?",
            (cutoff, PRUNE_BATCH)).fetchall()
    if keep:
        for (ns,) in conn.execute("SELECT ns FROM executions GROUP BY ns HAVING COUNT(*) > ?",
                                  (keep,)).fetchall():
            doomed += conn.execute(
                f"SELECT ns, n FROM executions WHERE ns = ? AND {FINISHED_ROWS} AND n NOT IN "
                "(SELECT n FROM executions WHERE ns = ? ORDER BY n DESC LIMIT ?) LIMIT ?",
                (ns, ns, keep, PRUNE_BATCH)).fetchall()
            if len(doomed) >= PRUNE_BATCH:
                break
    return doomed


def delete_rows(conn: sqlite3.Connection, rows: list[tuple[str, int]]) -> None:
    """Delete these executions and their output; their numbers stay handed out."""
    for ns in {ns for ns, _ in rows}:
        # The next number comes from counters once the rows are gone: never reused.
        conn.execute(
            "INSERT INTO counters (ns, reserved) SELECT ?, MAX(n) FROM executions WHERE ns = ? "
            "AND true ON CONFLICT(ns) DO UPDATE SET reserved = max(reserved, excluded.reserved)",
            (ns, ns))
    conn.executemany("DELETE FROM executions WHERE ns = ? AND n = ?", rows)
    conn.executemany("DELETE FROM outputs WHERE ns = ? AND n = ?", rows)
