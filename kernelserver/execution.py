"""A live execution: capped output buffers, state changes, and events for listeners."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .results import FINISHED, ErrorInfo, ExecutionResult


def utcnow_iso() -> str:
    """Now, as the ISO 8601 UTC string the API uses."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OutputBuffer:
    """Keeps the first and last cap/2 characters of a stream and counts what fell out between."""

    def __init__(self, cap: int) -> None:
        self.half = max(cap // 2, 1)
        self._head: list[str] = []
        self._head_size = 0
        self._tail: deque[str] = deque()
        self._tail_size = 0
        self.dropped = 0
        self.total = 0

    def write(self, text: str) -> None:
        """Append text, dropping from the middle once the cap is reached."""
        self.total += len(text)
        room = self.half - self._head_size
        if room > 0:
            self._append(self._head, text[:room])
            self._head_size += min(room, len(text))
            text = text[room:]
        if not text:
            return
        self._append(self._tail, text)
        self._tail_size += len(text)
        while self._tail_size > self.half:
            excess = self._tail_size - self.half
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                self._tail_size -= len(first)
                self.dropped += len(first)
            else:
                self._tail[0] = first[excess:]
                self._tail_size -= excess
                self.dropped += excess

    @staticmethod
    def _append(chunks: list[str] | deque[str], text: str) -> None:
        # Coalesce small writes: a million one-line chunks would cost more in object headers
        # than the text itself.
        if chunks and len(chunks[-1]) < 4096:
            chunks[-1] += text
        else:
            chunks.append(text)

    @property
    def truncated(self) -> bool:
        """True when something was dropped."""
        return self.dropped > 0

    def getvalue(self) -> str:
        """Head, the marker if anything was dropped, and tail."""
        head = "".join(self._head)
        tail = "".join(self._tail)
        if not self.dropped:
            return head + tail
        marker = (
            f"\n[kernelserver: output truncated: {self.dropped} characters dropped here; "
            f"{self.total} in all, the first and last {self.half} kept]\n"
        )
        return head + marker + tail


class Execution:
    """One submitted cell, from queued to finished; the output sink backends write to."""

    def __init__(self, namespace_id: str, execution_count: int, code: str, output_cap: int,
                 timeout: float | None = None) -> None:
        self.id = namespace_id
        self.execution_count = execution_count
        self.code = code
        self.timeout = timeout
        self.status = "queued"
        self.stdout = OutputBuffer(output_cap)
        self.stderr = OutputBuffer(output_cap)
        self.displays: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.error: ErrorInfo | None = None
        self.restarted = False
        self.submitted_at = utcnow_iso()
        self.started_at: str | None = None
        self._t0: float | None = None
        self.duration_ms: float | None = None
        self._cond = threading.Condition()
        self._listeners: list[queue.SimpleQueue[dict[str, Any]]] = []

    # -- sink interface, called by the backend from the namespace's runner thread --

    def _emit(self, event: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener.put(event)

    def write_stdout(self, text: str) -> None:
        """Record and broadcast stdout text."""
        with self._cond:
            self.stdout.write(text)
            self._emit({"event": "stdout", "text": text})

    def write_stderr(self, text: str) -> None:
        """Record and broadcast stderr text."""
        with self._cond:
            self.stderr.write(text)
            self._emit({"event": "stderr", "text": text})

    def add_display(self, bundle: dict[str, Any]) -> None:
        """Record and broadcast a display."""
        with self._cond:
            self.displays.append(bundle)
            self._emit({"event": "display", "data": bundle})

    # -- lifecycle --

    def start(self) -> None:
        """Mark the execution running."""
        with self._cond:
            self.status = "running"
            self.started_at = utcnow_iso()
            self._t0 = time.perf_counter()
            self._cond.notify_all()

    def finish(self, status: str, result: dict[str, Any] | None = None,
               error: ErrorInfo | None = None, restarted: bool = False) -> None:
        """Record the outcome and wake every waiter and listener."""
        with self._cond:
            if self.status in FINISHED:
                return
            if self._t0 is not None:
                self.duration_ms = round((time.perf_counter() - self._t0) * 1000, 3)
            self.status = status
            self.result = result
            self.error = error
            self.restarted = restarted
            self._emit({"event": "result", **self.snapshot().to_dict()})
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """True once the outcome is recorded."""
        return self.status in FINISHED

    def wait(self, timeout: float | None) -> bool:
        """Block until finished or timeout seconds pass; True if finished."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    def snapshot(self) -> ExecutionResult:
        """The current state as an immutable result."""
        with self._cond:
            return ExecutionResult(
                id=self.id,
                execution_count=self.execution_count,
                status=self.status,
                stdout=self.stdout.getvalue(),
                stderr=self.stderr.getvalue(),
                result=self.result,
                displays=tuple(self.displays),
                error=self.error,
                truncated=self.stdout.truncated or self.stderr.truncated,
                restarted=self.restarted,
                started_at=self.started_at,
                duration_ms=self.duration_ms,
                code=self.code,
            )

    def events(self, keepalive: float, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Every event from now on, ending with the result; a keepalive after each silent interval."""
        listener: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._cond:
            if self.finished:
                yield {"event": "result", **self.snapshot().to_dict()}
                return
            self._listeners.append(listener)
        try:
            silent_since = time.monotonic()
            while True:
                try:
                    event = listener.get(timeout=poll)
                except queue.Empty:
                    if time.monotonic() - silent_since >= keepalive:
                        silent_since = time.monotonic()
                        yield {"event": "keepalive", "status": self.status}
                    continue
                silent_since = time.monotonic()
                yield event
                if event["event"] == "result":
                    return
        finally:
            with self._cond:
                if listener in self._listeners:
                    self._listeners.remove(listener)
