"""SQLite store of executions: a finished cell's row committed before it is answered, the rest in batches."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .historyrows import (
    FINISHED_ROWS,
    SCHEMA,
    delete_rows,
    expired_rows,
    storable,
    text_of,
    write_outputs,
)
from .results import ErrorInfo, ExecutionResult, Finished

PAGE_CACHE_KIB = 256
COALESCE_SECONDS = 0.05  # how long writes nobody waits for gather before the writer commits them
BATCH_ITEMS = 1024  # writes and markers one transaction takes at most
# How long a finished cell waits for another commit (the writer's batch, a retention pass) to
# let it commit its row, before it is answered anyway. Its own commit takes 0.04 ms here (WAL,
# synchronous=NORMAL: write()s into the page cache, no fsync), a retention pass of PRUNE_BATCH
# rows some 100 ms. Past this the disk is stuck: the answer matters more than the row, which
# stays queued for the writer.
COMMIT_WAIT = 5.0
# WAL bytes between checkpoints, SQLite's own default (1000 pages). The writer thread does them
# on a connection of its own: a checkpoint fsyncs (4 ms here), which no answer waits for.
CHECKPOINT_BYTES = 1000 * 4096
CODE_PREVIEW = 1000  # characters of each cell's code /env/history lists; /env/execution has all
PRUNE_EVERY = 60.0  # seconds between retention passes (history_keep, history_max_age_days)


_nothing = threading.Event()  # the writer's wake-up with no write (time for a retention pass)

# A write (a function of the connection), an Event to set once everything before it is
# committed, or None to stop.
_Item = Callable[[sqlite3.Connection], None] | threading.Event | None


class HistoryError(Exception):
    """The history database cannot be opened or written; the message says what to do."""


class History:
    """Every execution of every namespace, kept across server restarts."""

    def __init__(self, data_dir: str, keep: int = 0, max_age_days: float = 0.0) -> None:
        self.path = Path(data_dir) / "history.sqlite3"
        self.keep = keep  # newest executions kept per namespace; 0 all
        self.max_age_days = max_age_days  # 0 forever
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
        # Writes queue here, in order; whoever holds _commit_lock takes them off and commits
        # them on _conn. The writer thread does, a moment after a write nobody waits for (a
        # submitted row); a finished cell's thread does at once, for its row and whatever was
        # queued before it (so a finished row never overtakes its submitted one). Handing that
        # commit to the writer and back cost 0.2 ms median and 2-3 ms at the 95th percentile
        # here, on two busy cores; the commit itself 0.04 ms.
        self._queue: deque[_Item] = deque()
        self._queued = threading.Condition()  # guards _queue; the writer waits on it
        self._commit_lock = threading.Lock()
        self._conn = self._connect(autocheckpoint=False)
        # Not cache_spill=OFF, though an 8 MiB output would commit in 22 ms instead of 36: the
        # transaction's pages then stay resident after it (9 MiB of the server's memory kept
        # after a noisy namespace is gone; test_long_running pins under 6).
        self._conn_closed = False
        self._wal_bytes = 0  # about what was committed since the last checkpoint
        self._urgent = threading.Event()  # set by close, or a full batch: the writer commits now
        self._commits = 0  # transactions done, by anyone: a stall is over once this moves
        # _commits when a finished cell gave up waiting for the commit lock: the disk is stuck,
        # and later cells do not wait for it (one wait per stall, not one per cell) until a
        # commit goes through again.
        self._stalled_at: int | None = None
        self._writer = threading.Thread(target=self._write_loop, name="history-writer", daemon=True)
        self._writer.start()

    def _connect(self, autocheckpoint: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        # History is append-mostly and read rarely; SQLite's default 2 MB page cache per
        # connection would only grow the server's memory as the database grows.
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass
        return conn

    def _put(self, *items: _Item, wake: bool = True) -> None:
        with self._queued:
            self._queue.extend(items)
            if wake:
                self._queued.notify()

    def _write_loop(self) -> None:
        checkpointer = self._connect()
        retention = bool(self.keep or self.max_age_days)
        next_prune = time.monotonic()  # a pass at start, then every PRUNE_EVERY seconds
        while True:
            with self._queued:
                if not self._queue and self._wal_bytes < CHECKPOINT_BYTES:
                    self._queued.wait(PRUNE_EVERY if retention else None)
                head = self._queue[0] if self._queue else _nothing
            if retention and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                with self._commit_lock:
                    self._commit(self._conn, [self._retain])
            if self._wal_bytes >= CHECKPOINT_BYTES:
                self._wal_bytes = 0
                self._checkpoint(checkpointer)
            if head is None:
                break
            if head is _nothing:
                continue
            # Let writes gather for a moment, then commit them in one transaction: waking (and
            # taking the GIL) for each write would compete with the cells being answered. A
            # finished cell or a reader commits what is queued itself, and close ends the
            # moment early, so nobody sees it.
            if callable(head):  # a write, not a marker
                self._urgent.wait(COALESCE_SECONDS)
            # Cleared before the batch is taken: whatever set it is in the batch, or sets it again.
            self._urgent.clear()
            with self._commit_lock:
                self._commit_queued()
            # The loop keeps no reference to a batch while it waits: a batch holds output.
            del head
        with self._commit_lock:
            self._conn.close()
            self._conn_closed = True
        checkpointer.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # busy, or the disk: the next one tries again
            print(f"kernelserver: history checkpoint failed: {exc}", file=sys.stderr, flush=True)

    def _commit_queued(self) -> bool:
        """Commit what is queued (up to a stop) in one transaction and set its markers; False if
        nothing was. The caller holds _commit_lock: batches commit in the order they queued."""
        with self._queued:
            batch: list[_Item] = []
            # Past the markers too: the commits of cells finishing at once become one.
            while self._queue and self._queue[0] is not None and len(batch) < BATCH_ITEMS:
                batch.append(self._queue.popleft())
            more = bool(self._queue) and self._queue[0] is not None
        if more:  # a full batch: the writer takes the rest without a pause
            self._urgent.set()
        if self._conn_closed:
            batch = [item for item in batch if not callable(item)]  # after close: not written
        writes = [w for w in batch if callable(w)]
        if writes and not self._commit(self._conn, writes, quiet=True):
            # One bad row must not lose the batch: retry them one by one.
            for write in writes:
                self._commit(self._conn, [write])
        self._commits += 1
        for marker in batch:
            if isinstance(marker, threading.Event):
                marker.set()
        if self._wal_bytes >= CHECKPOINT_BYTES:
            with self._queued:
                self._queued.notify()  # the writer checkpoints
        return bool(batch)

    def _commit_through(self, marker: threading.Event, timeout: float) -> bool:
        """Commit, on this thread, what is queued up to marker (and what came after it, in the
        same transaction); False if another commit held the database for over timeout s."""
        if not self._commit_lock.acquire(timeout=timeout):
            self._put(wake=True)  # the writer commits it once it can
            return False
        try:
            while not marker.is_set() and self._commit_queued():
                pass
        finally:
            self._commit_lock.release()
        return True

    @staticmethod
    def _commit(conn: sqlite3.Connection, writes: list[Callable[[sqlite3.Connection], None]],
                quiet: bool = False) -> bool:
        """Run writes in one transaction; False (and rolled back) if any failed."""
        try:
            conn.execute("BEGIN")
            for write in writes:
                write(conn)
            conn.execute("COMMIT")
            return True
        except Exception as exc:  # the writer thread must outlive any bad row
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not quiet:
                print(f"kernelserver: history write failed: {exc}", file=sys.stderr, flush=True)
            return False

    def record_submitted(self, ns: str, n: int, code: str, submitted_at: str) -> None:
        """Queue the row of a newly submitted execution."""
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO executions (ns, n, code, status, submitted_at) "
                         "VALUES (?, ?, ?, 'queued', ?)", (ns, n, storable(code), submitted_at))
            self._wal_bytes += 4096 + len(code)

        self._put(write)

    def record_finished(self, final: Finished) -> None:
        """Queue the final state of an execution."""
        self._put(lambda conn: self._write_finished(conn, final))

    def commit_finished(self, final: Finished, timeout: float = COMMIT_WAIT) -> bool:
        """Write the final state of an execution and return once it is committed, with what was
        queued before it (its submitted row). False, the row left queued, if another commit held
        the database for over timeout s, or at once while an earlier one did."""
        marker = threading.Event()
        self._put(lambda conn: self._write_finished(conn, final), marker, wake=False)
        stalled_at = self._stalled_at
        stuck = stalled_at is not None and self._commits == stalled_at
        if self._commit_through(marker, 0 if stuck else timeout):
            if stalled_at is not None:
                self._stalled_at = None
                print("kernelserver: history commits go through again", file=sys.stderr, flush=True)
            return True
        if not stuck:  # it waited the whole bound
            self._stalled_at = self._commits
            print(f"kernelserver: history: cell {final.result.execution_count} of "
                  f"{final.result.id!r} is answered before its row is committed: the database "
                  f"({self.path}) was busy for over {timeout:g} s. Cells are answered without "
                  "waiting for it until it answers again; their rows stay queued until then",
                  file=sys.stderr, flush=True)
        return False

    def _write_finished(self, conn: sqlite3.Connection, final: Finished) -> None:
        result = final.result
        self._wal_bytes += 4096 + len(final.stdout) + len(final.stderr)
        conn.execute(
            "INSERT OR REPLACE INTO executions (ns, n, code, status, started_at, duration_ms, "
            "result, displays, error, truncated, restarted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (result.id, result.execution_count, storable(result.code), result.status,
             result.started_at,
             result.duration_ms,
             json.dumps(result.result) if result.result is not None else None,
             json.dumps(list(result.displays)),
             json.dumps(result.error.to_dict()) if result.error else None,
             int(result.truncated), int(result.restarted)),
        )
        write_outputs(conn, result.id, result.execution_count, final.stdout, final.stderr)

    def _retain(self, conn: sqlite3.Connection) -> None:
        """One retention pass: past history_max_age_days, and all but the newest history_keep."""
        delete_rows(conn, expired_rows(conn, self.keep, self.max_age_days))

    def prune(self, ns: str, keep: int = 0, timeout: float = 30.0) -> int:
        """Delete ns's finished executions but the newest keep; how many were deleted."""
        deleted: list[int] = []
        done = threading.Event()

        def write(conn: sqlite3.Connection) -> None:
            rows = conn.execute(
                f"SELECT ns, n FROM executions WHERE ns = ? AND {FINISHED_ROWS} AND n NOT IN "
                "(SELECT n FROM executions WHERE ns = ? ORDER BY n DESC LIMIT ?)",
                (ns, ns, keep)).fetchall()
            delete_rows(conn, rows)
            deleted.append(len(rows))

        self._put(write, done, wake=False)
        if not self._commit_through(done, timeout):
            raise HistoryError("the history database did not answer in time; try again")
        return deleted[0] if deleted else 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit every write queued so far (waiting, bounded, for a commit under way); False on
        timeout."""
        done = threading.Event()
        self._put(done, wake=False)
        return self._commit_through(done, timeout)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._read_lock:
            self._read.row_factory = sqlite3.Row
            return list(self._read.execute(sql, args).fetchall())

    def max_count(self, ns: str) -> int:
        """The highest execution_count recorded or reserved for ns (0 if none)."""
        rows = self._query("SELECT MAX(n) AS m FROM executions WHERE ns=?", (ns,))
        reserved = self._query("SELECT reserved FROM counters WHERE ns=?", (ns,))
        return max(int(rows[0]["m"] or 0), int(reserved[0]["reserved"]) if reserved else 0)

    def release(self, ns: str, last: int) -> None:
        """Give back reserved numbers past last (the namespace closes cleanly: no gap after it)."""
        with self._read_lock:
            self._read.execute("UPDATE counters SET reserved = ? WHERE ns = ?", (last, ns))

    def reserve(self, ns: str, upto: int) -> None:
        """Put on disk, now, that numbers up to upto are handed out for ns (never again)."""
        with self._read_lock:
            self._read.execute(
                "INSERT INTO counters (ns, reserved) VALUES (?, ?) ON CONFLICT(ns) DO UPDATE "
                "SET reserved = max(reserved, excluded.reserved)", (ns, upto))

    def has(self, ns: str) -> bool:
        """True if ns has any recorded execution."""
        return bool(self._query("SELECT 1 FROM executions WHERE ns=? LIMIT 1", (ns,)))

    def list(self, ns: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` executions of ns, oldest first."""
        rows = self._query(
            "SELECT n, substr(code, 1, ?) AS code, length(code) AS size, status, started_at, "
            "duration_ms FROM executions WHERE ns=? ORDER BY n DESC LIMIT ?",
            (CODE_PREVIEW, ns, limit))
        return [
            {"execution_count": r["n"], "code": r["code"], "code_truncated": r["size"] > CODE_PREVIEW,
             "status": r["status"], "started_at": r["started_at"], "duration_ms": r["duration_ms"]}
            for r in reversed(rows)
        ]

    def get(self, ns: str, n: int) -> ExecutionResult | None:
        """One recorded execution, or None."""
        rows = self._query("SELECT * FROM executions WHERE ns=? AND n=?", (ns, n))
        if not rows:
            return None
        r = rows[0]
        outputs = {row["stream"]: text_of(row["data"]) for row in self._query(
            "SELECT stream, data FROM outputs WHERE ns=? AND n=?", (ns, n))}
        return ExecutionResult(
            id=ns, execution_count=n, status=r["status"], stdout=outputs.get("stdout", ""),
            stderr=outputs.get("stderr", ""),
            result=json.loads(r["result"]) if r["result"] else None,
            displays=tuple(json.loads(r["displays"]) if r["displays"] else ()),
            error=ErrorInfo.from_dict(json.loads(r["error"])) if r["error"] else None,
            truncated=bool(r["truncated"]), restarted=bool(r["restarted"]),
            started_at=r["started_at"], duration_ms=r["duration_ms"], code=r["code"],
        )

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued and close."""
        self._put(None)
        self._urgent.set()
        self._writer.join(timeout)
        with self._read_lock:
            self._read.close()
