"""Feeds of live events: one execution's (a v1 stream) or a whole namespace's (every cell, any sender)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from .results import (
    DisplayEvent,
    Event,
    KeepaliveEvent,
    OutputEvent,
    ResultEvent,
    StateEvent,
    StreamErrorEvent,
)

if TYPE_CHECKING:
    from .execution import Execution

log = logging.getLogger("kernelserver")

# A subscriber never makes a cell wait: one that falls this far behind (events, or characters of
# text and displays) misses output. A client of its own cell's stream misses only the output that
# came while it was behind, and reads a note saying how much where it was left out; a watcher of a
# namespace is cut off, told so, and subscribes again. One that stalls must not stall the cell,
# its deadline or anyone else; one that reads, but more slowly than the cell prints, still gets
# the start, the end and the result.
LISTENER_QUEUE_EVENTS = 4096
LISTENER_QUEUE_BYTES = 32 << 20
# A namespace watcher (every cell of a namespace) is cut off sooner in events: many are tiny.
WATCHER_QUEUE_EVENTS = 256


class _Cut:
    """Queued for a subscriber that was cut off for reading too slowly."""


CUT = _Cut()


@dataclass(frozen=True)
class NamespaceEvent:
    """One event of a namespace, with the live execution it belongs to (None for StateEvent)."""

    execution: Execution | None
    event: Event


def weight(event: Event) -> int:
    """What an event costs a subscriber's queue: the characters of its text or display."""
    if isinstance(event, OutputEvent):
        return len(event.text)
    if isinstance(event, DisplayEvent):
        return sum(len(v) for v in event.data.values() if isinstance(v, str))
    return 0


T = TypeVar("T")


class Listener(Generic[T]):
    """A queue of events for one subscriber that never makes the publisher wait.

    Full, it cuts the subscriber off (a CUT item ends its feed); or, with gap, it leaves out the
    items that have a size (output, displays) until the subscriber has read half of what waits,
    then queues gap(characters left out) and goes on. Items without a size (the result, state
    changes) are always queued: a client that keeps reading always gets the end.
    """

    def __init__(self, max_events: int, max_bytes: int = LISTENER_QUEUE_BYTES,
                 gap: Callable[[int], T] | None = None) -> None:
        self._items: deque[tuple[T | _Cut, int]] = deque()
        self._cond = threading.Condition()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._gap = gap
        self._skipping = False
        self._skipped = 0  # characters left out since it fell behind
        self.cut = False

    def offer(self, item: T, size: int = 0) -> bool:
        """Queue item; False once the subscriber is cut off for being too far behind."""
        with self._cond:
            if self.cut:
                return False
            full = len(self._items) >= self._max_events or self._bytes + size > self._max_bytes
            if self._gap is None:
                if full:
                    # What it has not read goes, and it learns why its feed ended.
                    self.cut = True
                    self._items.clear()
                    self._bytes = 0
                    self._items.append((CUT, 0))
                    self._cond.notify()
                    return False
            elif self._skipping and (not size or self._caught_up()):
                self._skipping = False
                self._items.append((self._gap(self._skipped), 0))
                self._skipped = 0
            elif size and (full or self._skipping):
                self._skipping = True
                self._skipped += size
                return True
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify()
            return True

    def _caught_up(self) -> bool:
        return len(self._items) <= self._max_events // 2 and self._bytes <= self._max_bytes // 2

    def get(self, timeout: float) -> T | _Cut | None:
        """The next item, or None when timeout seconds pass first."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            item, size = self._items.popleft()
            self._bytes -= size
            return item


class Watcher(Protocol):
    """Takes a namespace's events: a Listener (a queue) or a Relay (a callback)."""

    def offer(self, item: NamespaceEvent, size: int = 0) -> bool:
        """Take item (size: its weight); False to be removed."""


class Relay:
    """A watcher that hands each event to a callback, on the thread that publishes it.

    For a front end that only queues what it makes of an event (never blocks, as
    JupyterKernel does): one thread hand-off fewer than a NamespaceSubscription.
    """

    def __init__(self, hub: Hub, callback: Callable[[NamespaceEvent], None]) -> None:
        self._hub = hub
        self._callback = callback
        hub.add(self)

    def offer(self, item: NamespaceEvent, size: int = 0) -> bool:
        try:
            self._callback(item)
        except Exception:  # the cell that published it must not fail for a front end's bug
            log.exception("a relay of namespace events failed")
        return True

    def close(self) -> None:
        """Stop relaying (idempotent)."""
        self._hub.remove(self)


class Hub:
    """A namespace's watchers: the subscribers to every cell it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated: executions read it on every write without a lock.
        self.watchers: tuple[Watcher, ...] = ()

    def add(self, watcher: Watcher) -> None:
        """Start sending events to watcher."""
        with self._lock:
            self.watchers = (*self.watchers, watcher)

    def remove(self, watcher: Watcher) -> None:
        """Stop sending events to watcher (idempotent)."""
        with self._lock:
            self.watchers = tuple(w for w in self.watchers if w is not watcher)

    def publish(self, execution: Execution | None, event: Event) -> None:
        """Send event to every watcher; a watcher too far behind is cut off, never waited for."""
        watchers = self.watchers
        if not watchers:
            return
        item = NamespaceEvent(execution, event)
        size = weight(event)
        for watcher in watchers:
            if not watcher.offer(item, size):
                self.remove(watcher)


class Subscription:
    """One client's feed of an execution's events; close() it when the client is done."""

    def __init__(self, execution: Execution, listener: Listener[Event] | None,
                 backlog: list[Event]) -> None:
        self.execution = execution
        self._listener = listener
        self._backlog = backlog

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        if self._listener is not None:
            self.execution.unsubscribe(self._listener)

    def events(self, keepalive: float, poll: float = 0.25,
               gone: Callable[[], bool] = lambda: False) -> Iterator[Event]:
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
                event = self._listener.get(poll)
                if event is None:
                    if gone():
                        return
                    if time.monotonic() - silent_since >= keepalive:
                        silent_since = time.monotonic()
                        yield KeepaliveEvent(execution.status)
                    continue
                silent_since = time.monotonic()
                if isinstance(event, _Cut):
                    # This client stalled; the cell goes on, and its result stays fetchable.
                    yield StreamErrorEvent(
                        "stream_lagging", "the client read too slowly and the stream was cut; "
                        f"execution {execution.execution_count} of namespace {execution.id!r} "
                        "goes on, and its result is kept")
                    return
                yield event
                if isinstance(event, ResultEvent):
                    return
        finally:
            self.close()


class NamespaceSubscription:
    """Every event of every cell of one namespace, from subscription on, whoever sent the cell.

    Ends with StateEvent("dead") when the namespace is deleted, or a StreamErrorEvent when the
    subscriber fell too far behind.
    """

    def __init__(self, namespace_id: str, hub: Hub) -> None:
        self.id = namespace_id
        self._hub = hub
        self._listener: Listener[NamespaceEvent] = Listener(WATCHER_QUEUE_EVENTS)
        self.closed = False
        hub.add(self._listener)

    def get(self, timeout: float) -> NamespaceEvent | None:
        """The next event, or None when timeout seconds pass first (or once closed)."""
        if self.closed:
            return None
        item = self._listener.get(timeout)
        if item is None:
            return None
        if isinstance(item, _Cut):
            self.close()
            return NamespaceEvent(None, StreamErrorEvent(
                "stream_lagging", f"the subscriber to namespace {self.id!r} read too slowly and "
                "was cut off; subscribe again"))
        if isinstance(item.event, StateEvent) and item.event.state == "dead":
            self.close()
        return item

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        self.closed = True
        self._hub.remove(self._listener)

    def __enter__(self) -> NamespaceSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
