"""The server's side of a worker's output: the pipe demultiplexer and one running cell's I/O.

A worker writes its cell's text to two pipes (fd 1 and 2) and sends displays and the result on
its control socket. In-band markers in the pipes (see protocol.marker) place each display among
the text and say where a cell's output ends; OutputPipe finds them in arbitrary reads, and CellIO
puts text and displays into the sink in the order the cell produced them.
"""

from __future__ import annotations

import codecs
import functools
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .base import OutputSink
from .protocol import Op

if TYPE_CHECKING:
    from .workerprocess import WorkerProcess

READ_SIZE = 1 << 16
JOIN_MAX = 30_000  # characters: as rings.READ_SIZE, under allocator.LARGE_BLOCK


def read_now(read: Callable[[int], bytes]) -> bytes | None:
    """What read(READ_SIZE) gives without waiting: None when nothing is there yet, b"" at EOF.

    The one non-blocking read of a worker's pipes and control socket: an error counts as EOF,
    since either way that end is done and the worker is gone or going.
    """
    try:
        return read(READ_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        return b""


# Text to forward, the seq of a display that goes here, or a ring position (gen, pos) whose text
# goes here (rings.py).
Item = str | int | tuple[int, int]


class OutputPipe:
    """One output pipe: decode incrementally, find the in-band markers, yield text and displays."""

    def __init__(self, fd: int, prefix: bytes) -> None:
        self.fd = fd
        self.prefix = prefix
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = b""
        self.seen_end = False
        self.eof = False
        self.leftover = b""  # bytes that came after END: they belong to the next cell

    def reset(self) -> bytes:
        """Start a new cell; returns output that arrived between cells."""
        self.seen_end = False
        early, self.leftover = self.leftover, b""
        return early

    def _text(self, data: bytes) -> list[Item]:
        text = self._decoder.decode(data, final=False)
        return [text] if text else []

    def feed(self, data: bytes) -> list[Item]:
        """Text and display places in data; a partial marker at the end is held back."""
        if self.seen_end:
            self.leftover += data
            return []
        data = self._held + data
        self._held = b""
        items: list[Item] = []
        while True:
            at = data.find(self.prefix)
            if at < 0:
                break
            close = data.find(b"\x00", at + len(self.prefix))
            if close < 0:
                items += self._text(data[:at])
                self._held = data[at:]
                return items
            items += self._text(data[:at])
            tag = data[at + len(self.prefix):close]
            data = data[close + 1:]
            if tag == b"END":
                self.seen_end = True
                self.leftover += data
                return items
            if tag.startswith(b"D") and tag[1:].isdigit():
                items.append(int(tag[1:]))
            elif tag.startswith(b"R"):
                gen, _, pos = tag[1:].partition(b":")
                if gen.isdigit() and pos.isdigit():
                    items.append((int(gen), int(pos)))
        # Hold back the longest tail that could be the start of a marker.
        for keep in range(min(len(self.prefix) - 1, len(data)), 0, -1):
            if self.prefix.startswith(data[-keep:]):
                self._held = data[-keep:]
                data = data[:-keep]
                break
        return items + self._text(data)

    def release_held(self) -> list[Item]:
        """What was held back as a possible marker, as text: no marker follows this cell's output."""
        held, self._held = self._held, b""
        return self._text(held)

    def flush(self) -> str:
        """Whatever is held back, at the end of output."""
        held, self._held = self._held, b""
        return self._decoder.decode(held, final=True)


def deliver_display(sink: OutputSink, message: dict[str, Any]) -> None:
    """A worker's display message into the sink: a display, an update of one, or a clear."""
    if "clear" in message:
        sink.clear_output(bool(message["clear"]))
    elif "value" in message:
        sink.publish_value(message["value"])
    elif message.get("display_id") is not None:
        sink.add_display(message["data"], str(message["display_id"]), bool(message.get("update")))
    else:
        sink.add_display(message["data"])


class CellIO:
    """The server's side of one running cell: reads the pipes and the control socket, and puts
    text and displays into the sink in the order the cell produced them."""

    def __init__(self, worker: WorkerProcess, sink: OutputSink) -> None:
        self.worker = worker
        self.sink = sink
        self.writers = {worker.stdout.fd: sink.write_stdout, worker.stderr.fd: sink.write_stderr}
        self.displays: dict[int, dict[str, Any]] = {}
        self.reply: dict[str, Any] | None = None
        self.closed = False  # the control socket reached EOF: the worker is gone
        self.selector = worker.selector  # EOFs unregister there for good

    def emit(self, stream: OutputPipe, items: list[Item]) -> None:
        """Forward text, the ring's text at its marker, and each display at its marker."""
        write = self.writers[stream.fd]
        # Small pieces of one read go out joined: a cell that flushes often (a progress bar)
        # sends a marker per flush, and each write is an event for every watcher. Joined only
        # up to JOIN_MAX, so big output stays in pieces the allocator reuses (allocator.py).
        pending: list[str] = []
        size = 0
        for item in items:
            if isinstance(item, int):
                if pending:
                    write("".join(pending))
                    pending.clear()
                    size = 0
                message = self._display(item)
                if message is not None:
                    deliver_display(self.sink, message)
                continue
            if isinstance(item, str):
                pieces: Iterable[str] = (item,)
            else:
                rings = self.worker.rings
                pieces = rings[0 if stream is self.worker.stdout else 1].take(*item) if rings else ()
            for text in pieces:
                if size + len(text) > JOIN_MAX and pending:
                    write("".join(pending))
                    pending.clear()
                    size = 0
                pending.append(text)
                size += len(text)
        if pending:
            write(pending[0] if len(pending) == 1 else "".join(pending))

    def flush_rest(self) -> None:
        """The worker is gone: what it printed that no marker announced, then stray displays."""
        for stream, reader in zip((self.worker.stdout, self.worker.stderr), self.worker.rings,
                                  strict=False):
            text = reader.rest()
            if text:
                self.writers[stream.fd](text)
        self.flush_displays()

    def _display(self, seq: int) -> dict[str, Any] | None:
        """The display message number seq (waiting briefly for it), or None."""
        # The worker sends a display's bundle before writing its marker: it is on its way.
        deadline = time.monotonic() + 5.0
        while seq not in self.displays and not self.closed and time.monotonic() < deadline:
            ready = selectors.DefaultSelector()
            ready.register(self.worker.ctl, selectors.EVENT_READ)
            try:
                if ready.select(max(deadline - time.monotonic(), 0)):
                    self._read_ctl()
            finally:
                ready.close()
        return self.displays.pop(seq, None)

    def _read_ctl(self) -> None:
        # Never block: readiness seen by pump() may be stale once _display() has read the socket.
        ctl = self.worker.ctl
        data = read_now(lambda size: ctl.recv(size, socket.MSG_DONTWAIT))
        if data is None:
            return
        if not data:
            self.closed = True
            if ctl.fileno() in self.selector.get_map():
                self.selector.unregister(ctl)
            return
        for message in self.worker.reader.feed(data):
            if message["op"] == Op.DISPLAY:
                self.displays[int(message["seq"])] = message
            elif message["op"] == Op.RESULT:
                self.reply = message
            elif message["op"] == Op.INPUT_REQUEST:
                self._relay_input_request(message)

    def _relay_input_request(self, message: dict[str, Any]) -> None:
        worker, seq = self.worker, message.get("id")

        def reply(value: str) -> None:
            try:
                worker.tell({"op": Op.INPUT_REPLY, "id": seq, "value": str(value)})
            except OSError:
                pass  # the worker is gone; the cell's answer says so

        self.sink.request_input(str(message.get("prompt", "")), bool(message.get("password")),
                                reply)

    def _read_pipe(self, stream: OutputPipe) -> None:
        data = read_now(functools.partial(os.read, stream.fd))  # our read ends are non-blocking
        if data is None:
            return
        if not data:
            stream.eof = True
            self.selector.unregister(stream.fd)
            self.writers[stream.fd](stream.flush())
            return
        self.emit(stream, stream.feed(data))

    def pump(self, timeout: float) -> None:
        """Handle whatever becomes readable within timeout seconds."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._read_ctl()
            else:
                self._read_pipe(key.data)

    def drain_to_eof(self, limit: float) -> None:
        """Read the pipes until EOF, for at most limit seconds (a grandchild may hold them)."""
        end = time.monotonic() + limit
        if self.worker.ctl.fileno() in self.selector.get_map():
            self.selector.unregister(self.worker.ctl)
        while self.selector.get_map() and time.monotonic() < end:
            for key, _ in self.selector.select(max(end - time.monotonic(), 0)):
                self._read_pipe(key.data)

    def flush_displays(self) -> None:
        """Displays whose marker never came (the cell redirected fd 1): at the end, in order."""
        for seq in sorted(self.displays):
            deliver_display(self.sink, self.displays.pop(seq))
