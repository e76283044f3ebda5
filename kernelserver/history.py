"""SQLite store of executions: written by one background thread, read by request threads."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from .results import ErrorInfo, ExecutionResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    ns TEXT NOT NULL,
    n INTEGER NOT NULL,
    code TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT,
    started_at TEXT,
    duration_ms REAL,
    stdout TEXT NOT NULL DEFAULT '',
    stderr TEXT NOT NULL DEFAULT '',
    result TEXT,
    displays TEXT,
    error TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    restarted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, n)
);
"""


class HistoryError(Exception):
    """The history database cannot be opened or written; the message says what to do."""


class History:
    """Every execution of every namespace, kept across server restarts."""

    def __init__(self, data_dir: str) -> None:
        self.path = Path(data_dir) / "history.sqlite3"
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            self._read = self._connect()
            with self._read:
                self._read.executescript(SCHEMA)
                self._read.execute("PRAGMA quick_check").fetchone()
                # Anything left queued or running belongs to a server that stopped.
                self._read.execute(
                    "UPDATE executions SET status='error', error=? "
                    "WHERE status IN ('queued', 'running')",
                    (json.dumps(ErrorInfo("ServerStopped", "the server stopped before this "
                                          "execution finished", "").to_dict()),),
                )
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(
                f"cannot use the history database {self.path}: {exc}. Check that the data dir "
                "is writable, move a corrupt file away, or choose another --data-dir"
            ) from None
        self._read_lock = threading.Lock()
        # Items: a (sql, args) write, an Event to set once everything before it is committed,
        # or None to stop.
        self._writes: queue.Queue[tuple[str, tuple[Any, ...]] | threading.Event | None] = (
            queue.Queue())
        self._writer = threading.Thread(target=self._write_loop, name="history-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass
        return conn

    def _write_loop(self) -> None:
        conn = self._connect()
        while True:
            item = self._writes.get()
            if item is None:
                break
            batch = [item]
            # Commit whatever else is already waiting in the same transaction.
            while len(batch) < 256:
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._writes.put(None)
                    break
                batch.append(more)
            writes = [w for w in batch if isinstance(w, tuple)]
            try:
                if writes:
                    conn.execute("BEGIN")
                    for sql, args in writes:
                        conn.execute(sql, args)
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                print(f"kernelserver: history write failed: {exc}", file=sys.stderr, flush=True)
            for marker in batch:
                if isinstance(marker, threading.Event):
                    marker.set()
        conn.close()

    def record_submitted(self, ns: str, n: int, code: str, submitted_at: str) -> None:
        """Queue the row of a newly submitted execution."""
        self._writes.put((
            "INSERT OR REPLACE INTO executions (ns, n, code, status, submitted_at) "
            "VALUES (?, ?, ?, 'queued', ?)", (ns, n, code, submitted_at)))

    def record_finished(self, result: ExecutionResult) -> None:
        """Queue the final state of an execution."""
        self._writes.put((
            "INSERT INTO executions (ns, n, code, status, started_at, duration_ms, stdout, "
            "stderr, result, displays, error, truncated, restarted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(ns, n) DO UPDATE SET status=excluded.status, "
            "started_at=excluded.started_at, duration_ms=excluded.duration_ms, "
            "stdout=excluded.stdout, stderr=excluded.stderr, result=excluded.result, "
            "displays=excluded.displays, error=excluded.error, truncated=excluded.truncated, "
            "restarted=excluded.restarted",
            (result.id, result.execution_count, result.code, result.status, result.started_at,
             result.duration_ms, result.stdout, result.stderr,
             json.dumps(result.result) if result.result is not None else None,
             json.dumps(list(result.displays)),
             json.dumps(result.error.to_dict()) if result.error else None,
             int(result.truncated), int(result.restarted)),
        ))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until every write queued so far is committed; False on timeout."""
        done = threading.Event()
        self._writes.put(done)
        return done.wait(timeout)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._read_lock:
            self._read.row_factory = sqlite3.Row
            return list(self._read.execute(sql, args).fetchall())

    def max_count(self, ns: str) -> int:
        """The highest execution_count recorded for ns (0 if none)."""
        rows = self._query("SELECT MAX(n) AS m FROM executions WHERE ns=?", (ns,))
        return int(rows[0]["m"] or 0)

    def has(self, ns: str) -> bool:
        """True if ns has any recorded execution."""
        return bool(self._query("SELECT 1 FROM executions WHERE ns=? LIMIT 1", (ns,)))

    def list(self, ns: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` executions of ns, oldest first."""
        rows = self._query(
            "SELECT n, code, status, started_at, duration_ms FROM executions WHERE ns=? "
            "ORDER BY n DESC LIMIT ?", (ns, limit))
        return [
            {"execution_count": r["n"], "code": r["code"], "status": r["status"],
             "started_at": r["started_at"], "duration_ms": r["duration_ms"]}
            for r in reversed(rows)
        ]

    def get(self, ns: str, n: int) -> ExecutionResult | None:
        """One recorded execution, or None."""
        rows = self._query("SELECT * FROM executions WHERE ns=? AND n=?", (ns, n))
        if not rows:
            return None
        r = rows[0]
        return ExecutionResult(
            id=ns, execution_count=n, status=r["status"], stdout=r["stdout"], stderr=r["stderr"],
            result=json.loads(r["result"]) if r["result"] else None,
            displays=tuple(json.loads(r["displays"]) if r["displays"] else ()),
            error=ErrorInfo.from_dict(json.loads(r["error"])) if r["error"] else None,
            truncated=bool(r["truncated"]), restarted=bool(r["restarted"]),
            started_at=r["started_at"], duration_ms=r["duration_ms"], code=r["code"],
        )

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued and close."""
        self._writes.put(None)
        self._writer.join(timeout)
        with self._read_lock:
            self._read.close()
