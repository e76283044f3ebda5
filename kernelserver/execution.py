"""A live execution: capped output buffers, its state, and its events for subscribers."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .encoding import Text
from .results import (
    FINISHED,
    Cell,
    ClearEvent,
    DisplayEvent,
    Event,
    ExecutionResult,
    Finished,
    InputRequestEvent,
    Outcome,
    OutputEvent,
    ResultEvent,
    StartedEvent,
    ValueEvent,
)
from .subscriptions import LISTENER_QUEUE_EVENTS, Hub, Listener, Subscription, weight


def utcnow_iso() -> str:
    """Now, as the ISO 8601 UTC string the API uses (e.g. 2026-01-02T03:04:05.678901Z)."""
    # time.strftime on a struct is half the cost of datetime.now().strftime, on every request.
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1e6)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{micros:06d}Z"


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

    def peek(self) -> Text:
        """The kept text as pieces, without a copy; the buffer keeps them too."""
        return Text(self._pieces())

    def take(self) -> Text:
        """The kept text as pieces, handed over without a copy; the buffer keeps only counters."""
        text = self.peek()
        self.release()
        return text

    def release(self) -> None:
        """Let go of the kept text (it moved into a final record); only the counters stay."""
        self._head = []
        self._tail = deque()
        self._skip = 0


class Execution:
    """One submitted cell, from queued to finished; the output sink backends write to."""

    def __init__(self, namespace_id: str, execution_count: int, cell: Cell | str, output_cap: int,
                 hub: Hub | None = None, origin: object = None) -> None:
        self.id = namespace_id
        self.execution_count = execution_count
        self.cell = Cell(cell) if isinstance(cell, str) else cell
        self.code = self.cell.code
        # Who sent it, for the front end that did (a Jupyter request's header); None over HTTP.
        self.origin = origin
        self.stop_group: object = None  # see Namespace.submit
        self.status = "queued"
        self._output_cap = output_cap
        self.stdout = OutputBuffer(output_cap)
        self.stderr = OutputBuffer(output_cap)
        self.displays: list[dict[str, Any]] = []
        self._display_ids: list[str | None] = []  # beside displays: the id each was shown with
        self._clear_pending = False  # clear_output(wait=True): clear when the next output comes
        self.outcome: Outcome | None = None
        self.submitted_at = utcnow_iso()
        self.started_at: str | None = None
        self._t0: float | None = None
        self.duration_ms: float | None = None
        self._cond = threading.Condition()
        self._listeners: list[Listener[Event]] = []
        self._hub = hub  # the namespace's watchers, who get every event too
        self._final: Finished | None = None  # built once: a finished result never changes
        self._finishing = False  # finish() has begun: a second finish() is refused
        self._input_reply: Callable[[str], None] | None = None  # while the cell waits in input()

    @classmethod
    def recorded(cls, result: ExecutionResult) -> Execution:
        """A finished execution read back from history, answered like a live one."""
        execution = cls(result.id, result.execution_count, Cell(result.code), 0)
        execution.status = result.status
        execution.started_at = result.started_at
        execution.duration_ms = result.duration_ms
        execution._final = Finished.of(result)
        return execution

    # -- sink interface, called by the backend from the namespace's runner thread --

    def _emit(self, listeners: list[Listener[Event]], event: Event) -> None:
        # Outside the lock. Never waits: a listener too far behind is cut off instead.
        size = weight(event)
        for listener in listeners:
            if not listener.offer(event, size):
                self.unsubscribe(listener)
        if self._hub is not None:
            self._hub.publish(self, event)

    def _write(self, stream: str, text: str) -> None:
        with self._cond:
            if self._clear_pending:
                self._clear()
            (self.stdout if stream == "stdout" else self.stderr).write(text)
            listeners = list(self._listeners)
        if listeners or (self._hub is not None and self._hub.watchers):
            self._emit(listeners, OutputEvent(stream, text))  # type: ignore[arg-type]

    def write_stdout(self, text: str) -> None:
        """Record and broadcast stdout text."""
        self._write("stdout", text)

    def write_stderr(self, text: str) -> None:
        """Record and broadcast stderr text."""
        self._write("stderr", text)

    def add_display(self, bundle: dict[str, Any], display_id: str | None = None,
                    update: bool = False) -> None:
        """Record and broadcast a display, or (update) new data for the displays shown with its id."""
        with self._cond:
            if update:
                # In place (an earlier cell's id changes nothing here; clients get the event).
                for i, shown in enumerate(self._display_ids):
                    if shown == display_id:
                        self.displays[i] = bundle
            else:
                if self._clear_pending:
                    self._clear()
                self.displays.append(bundle)
                self._display_ids.append(display_id)
            listeners = list(self._listeners)
        self._emit(listeners, DisplayEvent(bundle, display_id, update))

    def publish_value(self, bundle: dict[str, Any]) -> None:
        """The value before its figures, for watchers (Jupyter); streams get it with the result."""
        if self._hub is not None:
            self._hub.publish(self, ValueEvent(bundle))

    def clear_output(self, wait: bool = False) -> None:
        """The cell cleared its output: the answer keeps what comes after (with wait: the next)."""
        with self._cond:
            if wait:
                self._clear_pending = True
            else:
                self._clear()
            listeners = list(self._listeners)
        self._emit(listeners, ClearEvent(wait))

    def _clear(self) -> None:
        """Under the lock: start the kept output afresh."""
        self._clear_pending = False
        self.stdout = OutputBuffer(self._output_cap)
        self.stderr = OutputBuffer(self._output_cap)
        self.displays = []
        self._display_ids = []

    def request_input(self, prompt: str, password: bool, reply: Callable[[str], None]) -> None:
        """The cell waits in input(): tell the subscribers; provide_input() answers it."""
        with self._cond:
            self._input_reply = reply
            listeners = list(self._listeners)
        self._emit(listeners, InputRequestEvent(prompt, password))

    def provide_input(self, value: str) -> bool:
        """Answer the cell's pending input(); False when it is not waiting for one."""
        with self._cond:
            reply, self._input_reply = self._input_reply, None
        if reply is None:
            return False
        reply(value)
        return True

    # -- lifecycle --

    def start(self) -> None:
        """Mark the execution running."""
        with self._cond:
            self.status = "running"
            self.started_at = utcnow_iso()
            self._t0 = time.perf_counter()
            self._cond.notify_all()
        if self._hub is not None:
            self._hub.publish(self, StartedEvent(self.execution_count, self.code))

    def finish(self, outcome: Outcome, record: Callable[[Finished], None] | None = None) -> bool:
        """Record the outcome and wake every waiter and listener; False if it had finished already.

        record, if given, gets the final record first and returns once it is kept (history's
        commit): whoever learns that the cell finished can find it after a crash. Until then the
        execution still reads as running, to waiters, listeners and snapshots alike.
        """
        with self._cond:
            if self._finishing or self.status in FINISHED:
                return False
            self._finishing = True
            duration = (None if self._t0 is None
                        else round((time.perf_counter() - self._t0) * 1000, 3))
            self._input_reply = None
            # The pieces are shared, not copied, with the final record (joining them would hold
            # the text twice); the buffers let go of them once it is published.
            final = Finished(self._result("", "", outcome, duration), self.stdout.peek(),
                             self.stderr.peek())
        try:
            if record is not None:
                record(final)  # outside the lock: readers of the running state never wait on a disk
        finally:  # answered whatever became of the record: a cell must never hang on it
            with self._cond:
                self.status = outcome.status
                self.outcome = outcome
                self.duration_ms = duration
                self._final = final
                self.stdout.release()
                self.stderr.release()
                listeners = list(self._listeners)
                self._cond.notify_all()
            self._emit(listeners, ResultEvent(final))
        return True

    @property
    def finished(self) -> bool:
        """True once the outcome is recorded."""
        return self.status in FINISHED

    @property
    def concluded(self) -> bool:
        """True once finish() has begun: the outcome is decided, though maybe not yet answered
        (its history row is being committed); nothing can stop it any more."""
        return self._finishing or self.finished

    def wait(self, timeout: float | None) -> bool:
        """Block until finished or timeout seconds pass; True if finished."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    @property
    def final(self) -> Finished | None:
        """The final record once finished, else None."""
        return self._final

    def _result(self, stdout: str, stderr: str, ending: Outcome | None = None,
                duration_ms: float | None = None) -> ExecutionResult:
        """The result as it stands, or as finish() will publish it (ending, and its duration)."""
        outcome = ending or self.outcome
        return ExecutionResult(
            id=self.id,
            execution_count=self.execution_count,
            status=ending.status if ending else self.status,
            stdout=stdout,
            stderr=stderr,
            result=outcome.result if outcome else None,
            displays=tuple(self.displays),
            error=outcome.error if outcome else None,
            truncated=(self.stdout.truncated or self.stderr.truncated
                       or bool(outcome and outcome.truncated)),
            restarted=bool(outcome and outcome.restarted),
            started_at=self.started_at,
            duration_ms=duration_ms if ending else self.duration_ms,
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
        listener: Listener[Event] = Listener(LISTENER_QUEUE_EVENTS, gap=self._gap_note)
        backlog: list[Event] = []
        with self._cond:
            final = self._final
            if final is not None:
                # Finished already (a fast cell can finish before its streaming client subscribes):
                # with replay the stream still carries its output, then the result.
                if replay:
                    backlog += [OutputEvent(name, str(text)) for name, text  # type: ignore[arg-type]
                                in (("stdout", final.stdout), ("stderr", final.stderr)) if text]
                    backlog += [DisplayEvent(d) for d in final.result.displays]  # ids not kept
                return Subscription(self, None, [*backlog, ResultEvent(final)])
            if replay:
                for name, buffer in (("stdout", self.stdout), ("stderr", self.stderr)):
                    text = buffer.getvalue()
                    if text:
                        backlog.append(OutputEvent(name, text))  # type: ignore[arg-type]
                backlog.extend(DisplayEvent(d, i) for d, i in zip(self.displays, self._display_ids,
                                                                  strict=True))
            self._listeners.append(listener)
        return Subscription(self, listener, backlog)

    def _gap_note(self, characters: int) -> Event:
        """Where a stream client that fell behind missed output: what, and where it is kept."""
        # Front-end neutral words: this text is output, the same bytes for every client.
        return OutputEvent("stderr", (
            f"\n[kernelserver: {characters} characters of output left out of this stream here: "
            "the client read more slowly than the cell printed. The whole output (up to the cap) "
            f"is kept with execution {self.execution_count} of namespace {self.id!r}]\n"))

    def unsubscribe(self, listener: Listener[Event]) -> None:
        """Stop sending events to listener."""
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)
