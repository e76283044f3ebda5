"""A live execution: capped output buffers, state changes, and events for listeners."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .results import FINISHED, ErrorInfo, ExecutionResult


def utcnow_iso() -> str:
    """Now, as the ISO 8601 UTC string the API uses (e.g. 2026-01-02T03:04:05.678901Z)."""
    # time.strftime on a struct is half the cost of datetime.now().strftime, on every request.
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1e6)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}Z"


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


@dataclass(frozen=True)
class Finished:
    """A finished execution as the server keeps it: the result, its output still in pieces."""

    result: ExecutionResult  # its stdout and stderr are empty: the text is below
    stdout: Text
    stderr: Text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the result, stdout and stderr as Text (see app.iter_json)."""
        data = self.result.to_dict()
        data["stdout"] = self.stdout
        data["stderr"] = self.stderr
        return data

    def to_result(self) -> ExecutionResult:
        """The result with its output joined into strings."""
        return self.result.with_changes(stdout=str(self.stdout), stderr=str(self.stderr))


# A streaming client may fall this many events behind (each at most one 64 KiB read) before
# the cell waits for it, and the cell waits at most this long before cutting it off.
LISTENER_QUEUE_EVENTS = 64
LISTENER_STALL_SECONDS = 30.0


def _force_put(listener: queue.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    while True:
        try:
            listener.put_nowait(event)
            return
        except queue.Full:
            try:
                listener.get_nowait()
            except queue.Empty:
                pass


SLICE_AFTER = 1 << 16  # characters dropped from the oldest kept piece before it is cut


class OutputBuffer:
    """Keeps the first and last half of cap characters of a stream and counts what fell out between."""

    def __init__(self, cap: int) -> None:
        self.tail_cap = max(cap, 0) // 2
        self.head_cap = max(cap, 0) - self.tail_cap
        self._head: list[str] = []
        self._head_size = 0
        self._tail: deque[str] = deque()
        self._tail_size = 0  # characters in _tail, the _skip dropped ones included
        self._skip = 0  # characters at the start of _tail[0] that are already dropped
        self.dropped = 0
        self.total = 0

    def write(self, text: str) -> None:
        """Append text, dropping from the middle once the cap is reached."""
        self.total += len(text)
        room = self.head_cap - self._head_size
        if room > 0:
            self._append(self._head, text[:room])
            self._head_size += min(room, len(text))
            text = text[room:]
        if not text:
            return
        self._append(self._tail, text)
        self._tail_size += len(text)
        while self._tail_size - self._skip > self.tail_cap:
            excess = self._tail_size - self._skip - self.tail_cap
            first = self._tail[0]
            if len(first) - self._skip <= excess:
                self._tail.popleft()
                self._tail_size -= len(first)
                self.dropped += len(first) - self._skip
                self._skip = 0
            else:
                # Mark the dropped start rather than copy the rest of the piece on every write:
                # pieces then leave and arrive whole, and the allocator reuses their memory.
                self._skip += excess
                self.dropped += excess
        if self._skip > SLICE_AFTER:  # one huge write: do not keep all of it for its last part
            self._tail[0] = self._tail[0][self._skip:]
            self._tail_size -= self._skip
            self._skip = 0

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

    def _pieces(self) -> list[str]:
        tail = list(self._tail)
        if tail and self._skip:
            tail[0] = tail[0][self._skip:]
        if not self.dropped:
            return [*self._head, *tail]
        marker = (
            f"\n[kernelserver: output truncated: {self.dropped} characters dropped here; "
            f"{self.total} in all, the first {self.head_cap} and last {self.tail_cap} kept]\n"
        )
        return [*self._head, marker, *tail]

    def getvalue(self) -> str:
        """Head, the marker if anything was dropped, and tail."""
        return "".join(self._pieces())

    def take(self) -> Text:
        """The kept text as pieces, handed over without a copy; the buffer keeps only counters."""
        text = Text(self._pieces())
        self._head = []
        self._tail = deque()
        self._skip = 0
        return text


class Execution:
    """One submitted cell, from queued to finished; the output sink backends write to."""

    def __init__(self, namespace_id: str, execution_count: int, code: str, output_cap: int,
                 timeout: float | None = None, repr_limit: int | None = None) -> None:
        self.id = namespace_id
        self.execution_count = execution_count
        self.code = code
        self.timeout = timeout
        self.repr_limit = repr_limit  # None: the server's
        self.status = "queued"
        self.stdout = OutputBuffer(output_cap)
        self.stderr = OutputBuffer(output_cap)
        self.displays: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.error: ErrorInfo | None = None
        self.restarted = False
        self.repr_cut = False  # the repr limit cut the result or a display
        self.submitted_at = utcnow_iso()
        self.started_at: str | None = None
        self._t0: float | None = None
        self.duration_ms: float | None = None
        self._cond = threading.Condition()
        self._listeners: list[queue.Queue[dict[str, Any]]] = []
        self._final: Finished | None = None  # built once: a finished result never changes

    # -- sink interface, called by the backend from the namespace's runner thread --

    def _emit(self, listeners: list[queue.Queue[dict[str, Any]]], event: dict[str, Any]) -> None:
        # Outside the lock: a full queue makes the runner wait (backpressure, so a live client
        # receives everything), but never blocks readers of the execution's state.
        for listener in listeners:
            try:
                listener.put(event, timeout=LISTENER_STALL_SECONDS)
            except queue.Full:
                with self._cond:
                    if listener in self._listeners:
                        self._listeners.remove(listener)
                _force_put(listener, {"event": "lagging"})

    def _write(self, stream: str, buffer: OutputBuffer, text: str) -> None:
        with self._cond:
            buffer.write(text)
            listeners = list(self._listeners)
        if listeners:
            self._emit(listeners, {"event": stream, "text": text})

    def write_stdout(self, text: str) -> None:
        """Record and broadcast stdout text."""
        self._write("stdout", self.stdout, text)

    def write_stderr(self, text: str) -> None:
        """Record and broadcast stderr text."""
        self._write("stderr", self.stderr, text)

    def add_display(self, bundle: dict[str, Any]) -> None:
        """Record and broadcast a display."""
        with self._cond:
            self.displays.append(bundle)
            listeners = list(self._listeners)
        if listeners:
            self._emit(listeners, {"event": "display", "data": bundle})

    # -- lifecycle --

    def start(self) -> None:
        """Mark the execution running."""
        with self._cond:
            self.status = "running"
            self.started_at = utcnow_iso()
            self._t0 = time.perf_counter()
            self._cond.notify_all()

    def finish(self, status: str, result: dict[str, Any] | None = None,
               error: ErrorInfo | None = None, restarted: bool = False,
               repr_cut: bool = False) -> None:
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
            self.repr_cut = repr_cut
            # The pieces move into the final record: joining them would hold the text twice.
            self._final = Finished(self._result("", ""), self.stdout.take(), self.stderr.take())
            listeners = list(self._listeners)
            self._cond.notify_all()
        if listeners:
            self._emit(listeners, {"event": "result", **self._final.to_dict()})

    @property
    def finished(self) -> bool:
        """True once the outcome is recorded."""
        return self.status in FINISHED

    def wait(self, timeout: float | None) -> bool:
        """Block until finished or timeout seconds pass; True if finished."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    @property
    def final(self) -> Finished | None:
        """The final record once finished, else None."""
        return self._final

    def _result(self, stdout: str, stderr: str) -> ExecutionResult:
        return ExecutionResult(
            id=self.id,
            execution_count=self.execution_count,
            status=self.status,
            stdout=stdout,
            stderr=stderr,
            result=self.result,
            displays=tuple(self.displays),
            error=self.error,
            truncated=self.stdout.truncated or self.stderr.truncated or self.repr_cut,
            restarted=self.restarted,
            started_at=self.started_at,
            duration_ms=self.duration_ms,
            code=self.code,
        )

    def snapshot(self) -> ExecutionResult:
        """The current state as an immutable result (its output joined into strings)."""
        with self._cond:
            if self._final is not None:
                return self._final.to_result()
            return self._result(self.stdout.getvalue(), self.stderr.getvalue())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the current state; once finished, the output stays in pieces."""
        with self._cond:
            if self._final is not None:
                return self._final.to_dict()
            return self._result(self.stdout.getvalue(), self.stderr.getvalue()).to_dict()

    def subscribe(self, replay: bool = False) -> Subscription:
        """Start receiving this execution's events now (before the caller starts reading them).

        With replay, the output kept so far comes first, so a client reattaching to a running
        execution misses nothing that is still kept.
        """
        listener: queue.Queue[dict[str, Any]] = queue.Queue(LISTENER_QUEUE_EVENTS)
        backlog: list[dict[str, Any]] = []
        with self._cond:
            if self._final is not None:
                return Subscription(self, None, [{"event": "result", **self._final.to_dict()}])
            if replay:
                for name, buffer in (("stdout", self.stdout), ("stderr", self.stderr)):
                    text = buffer.getvalue()
                    if text:
                        backlog.append({"event": name, "text": text})
                backlog.extend({"event": "display", "data": d} for d in self.displays)
            self._listeners.append(listener)
        return Subscription(self, listener, backlog)

    def unsubscribe(self, listener: queue.Queue[dict[str, Any]]) -> None:
        """Stop sending events to listener."""
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)


class Subscription:
    """One client's feed of an execution's events; close() it when the client is done."""

    def __init__(self, execution: Execution, listener: queue.Queue[dict[str, Any]] | None,
                 backlog: list[dict[str, Any]]) -> None:
        self.execution = execution
        self._listener = listener
        self._backlog = backlog

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if self._listener is not None:
            self.execution.unsubscribe(self._listener)

    def events(self, keepalive: float, poll: float = 0.25,
               gone: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
        """The events, ending with the result; a keepalive after each silent interval.

        Stops early once gone() says the client has disconnected.
        """
        try:
            yield from self._backlog
            if self._listener is None:
                return
            execution = self.execution
            silent_since = time.monotonic()
            while True:
                try:
                    event = self._listener.get(timeout=poll)
                except queue.Empty:
                    if gone():
                        return
                    if time.monotonic() - silent_since >= keepalive:
                        silent_since = time.monotonic()
                        yield {"event": "keepalive", "status": execution.status}
                    continue
                silent_since = time.monotonic()
                if event["event"] == "lagging":
                    # This client stalled; the cell goes on, and its result stays fetchable.
                    yield {"event": "error", "code": "stream_lagging",
                           "message": "the client read too slowly and the stream was cut; fetch the "
                           f"result with GET /env/execution?id={execution.id}&n={execution.execution_count}"}
                    return
                yield event
                if event["event"] == "result":
                    return
        finally:
            self.close()
