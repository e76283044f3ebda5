"""One client's WebSocket on a kernel: requests in on shell/control/stdin, replies and iopub out.

The request's own thread reads and answers (nothing it does waits on a cell: an execute_request
only queues the cell), a writer thread sends what the kernel's relay and the reader queue for it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import BadRequest, KernelServerError
from ...results import Cell
from ...runner import introspect
from ...service import Service
from ..websocket import TRY_AGAIN_LATER, ConnectionClosed, WebSocket
from . import replies
from .kernels import JupyterKernel, JupyterOrigin, Kernels, Slot
from .offline import OFFLINE_BYTES
from .wire import Message, Pending, WireError, new_header, parse, reply, serialize, weight

log = logging.getLogger("kernelserver.web.jupyter")

# A client this far behind (messages, or characters of output and displays) is dropped, and
# replayed what it missed when it comes back: its queue never makes the cell, its deadline or
# another client wait. Printed text waiting for it is merged (wire.Pending).
# A whole replay (OFFLINE_MESSAGES, OFFLINE_BYTES) must fit, with room for what comes meanwhile.
OUTBOX_MESSAGES = 4096
OUTBOX_BYTES = OFFLINE_BYTES + (8 << 20)
WRITE_BATCH_MESSAGES = 64  # the most one write of the writer thread joins
WRITE_BATCH_BYTES = 4 << 20
DROPPED = "the client read too slowly; reconnect to get what it missed"


class _Flush:
    """Queued to have the writer send what try_send left unwritten."""


_FLUSH = _Flush()
_Item = Pending | _Flush | tuple[int, str] | None


class Connection:
    """One open WebSocket on one kernel."""

    def __init__(self, ws: WebSocket, kernel_id: str, session_id: str, service: Service,
                 kernels: Kernels, slot: Slot | None = None, arrived: int = 0) -> None:
        self.ws, self.arrived = ws, arrived  # arrived: its request's place in arrival order
        self._slot = slot
        self.kernel_id = kernel_id
        self.session_id = session_id
        self.service = service
        self.kernels = kernels
        self.kernel: JupyterKernel | None = None
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        # Messages, then None (the reader is done) or a (code, reason) close after what is queued.
        # Unbounded as a queue: put() bounds it, and put must never wait.
        self._outbox: deque[_Item] = deque()
        self._backlog = 0  # messages queued or being written: while any, new ones queue behind
        self._backlog_bytes = 0
        # Set once it fell too far behind: later messages wait in _missed for its replay.
        self.dropped = False
        self._missed: list[Message] = []
        self._missed_bytes = 0
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name=f"ws-writer-{kernel_id}")

    # -- out --

    def put(self, message: Message) -> None:
        """Send or queue a message for the client, never waiting; one that reads too slowly is
        dropped (and replayed what it missed when it comes back).

        Called on the thread that publishes a cell's output: nothing here may wait on the socket
        or on a lock a writer holds while it sends (try_send and drop take it only if free).
        """
        size = weight(message)
        with self._lock:
            if self.dropped:  # kept (bounded) until its reader, woken by the drop, detaches it
                if len(self._missed) < OUTBOX_MESSAGES and self._missed_bytes + size <= OUTBOX_BYTES:
                    self._missed.append(message)
                    self._missed_bytes += size
                return
            frame: str | bytes | None = None
            if not self._backlog:
                # Nothing queued before it: send it now from this thread if that cannot block,
                # and save the writer's wake-up (~0.15 ms a batch, half a small cell's round trip).
                frame = serialize(message, self.ws.subprotocol)
                if self.ws.try_send(frame):
                    if self.ws.pending:  # the socket took part of it: the writer sends the rest
                        self._queue(_FLUSH, 0)
                    return
            elif self._backlog_bytes + size <= OUTBOX_BYTES and self._merge(message, size):
                return
            if self._backlog < OUTBOX_MESSAGES and self._backlog_bytes + size <= OUTBOX_BYTES:
                self._queue(Pending(message, size, frame), size)
                return
            self.dropped = True
            self._missed.append(message)
            behind = self._backlog
        log.warning("jupyter: dropped a client of kernel %r (session %r) %d messages behind: "
                    "it reads too slowly", self.kernel_id, self.session_id, behind)
        self.ws.drop(TRY_AGAIN_LATER, DROPPED)

    def _queue(self, item: Pending | _Flush, size: int) -> None:
        """Queue item for the writer (under the lock)."""
        self._backlog += 1
        self._backlog_bytes += size
        self._outbox.append(item)
        self._ready.notify()

    def _merge(self, message: Message, size: int) -> bool:
        """Add a stream message's text to the message queued last if the writer has not taken
        it yet and it is of the same cell and stream (under the lock)."""
        last = self._outbox[-1] if self._outbox else None
        if isinstance(last, Pending) and last.merge(message, size):
            self._backlog_bytes += size
            return True
        return False

    def undelivered(self) -> list[Message]:
        """What was queued for the client and never written, in order (for its replay); the
        connection takes nothing more after this."""
        with self._lock:
            self.dropped = True
            left = [item.final() for item in self._outbox if isinstance(item, Pending)]
            self._outbox.clear()
            left += self._missed
            self._missed, self._missed_bytes = [], 0
            return left

    def _take(self) -> list[_Item]:
        """The next batch for the writer, waiting for one."""
        with self._ready:
            while not self._outbox:
                self._ready.wait()
            items: list[_Item] = []
            size = 0
            while self._outbox and len(items) < WRITE_BATCH_MESSAGES and size < WRITE_BATCH_BYTES:
                item = self._outbox.popleft()
                items.append(item)
                size += item.size if isinstance(item, Pending) else 0
            return items

    def _write_loop(self) -> None:
        while True:
            # What else is queued goes out with the first, in one write: a cell's result, reply
            # and idle come together, and one send of three frames beats three.
            items = self._take()
            frames: list[str | bytes] = []
            try:
                for item in items:
                    if item is None or isinstance(item, tuple):
                        self.ws.send_many(frames)
                        frames = []
                        if item is None:
                            return
                        self.ws.close(*item)
                    elif isinstance(item, Pending):
                        frames.append(item.frame if item.frame is not None
                                      else serialize(item.final(), self.ws.subprotocol))
                self.ws.send_many(frames)  # with none, what try_send left (a _FLUSH)
            except ConnectionClosed:
                return
            finally:
                with self._lock:
                    for item in items:
                        if isinstance(item, (Pending, _Flush)):
                            self._backlog -= 1
                        if isinstance(item, Pending):
                            self._backlog_bytes -= item.size

    def _end(self, item: tuple[int, str] | None) -> None:
        with self._lock:
            self._outbox.append(item)
            self._ready.notify()

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket once what is queued for it is sent (from any thread, never
        waiting: one whose writer is stuck on it is dropped when its queue fills)."""
        self._end((code, reason))

    # -- in --

    def serve(self) -> None:
        """Answer the client until it goes (runs on the request's thread)."""
        try:
            self.kernel = self.kernels.attach(self)
        except KernelServerError as exc:  # deleted between the handshake and now
            self.ws.close(1000, replies.error_message(exc)[:120])
            return
        self._writer.start()
        keep_missed = True
        try:
            while True:
                try:
                    frame = self.ws.receive()
                except ConnectionClosed as closed:
                    # A client that said goodbye (1000/1001) will not come back for its replay.
                    keep_missed = closed.code not in (1000, 1001)
                    return
                if frame is not None:
                    self._handle(frame)
        finally:
            self.kernel.detach(self, keep_missed or self.dropped)
            if self._slot is not None:
                # With the count the kernel shows: a client that saw its socket gone from
                # /api/kernels may open another at once, even while this thread winds down.
                self._slot.release()
            self._end(None)
            self._writer.join(5.0)

    def _handle(self, frame: str | bytes) -> None:
        try:
            message = parse(frame, self.ws.subprotocol)
        except WireError as exc:
            self._bad_message(exc)
            return
        except Exception:  # a parser's bug must not cost the client its socket either
            log.exception("jupyter: a frame on kernel %r could not be read", self.kernel_id)
            self._bad_message(WireError("the message could not be read; see the server log"))
            return
        try:
            self._dispatch(message)
        except KernelServerError as exc:  # the namespace went away, a full queue...
            self._answer(message, _reply_type(message.msg_type), replies.failure(exc))
        except Exception:  # never a dropped connection for one request
            log.exception("jupyter: %s on kernel %r failed", message.msg_type, self.kernel_id)
            self._answer(message, _reply_type(message.msg_type), {
                "status": "error", "ename": "InternalError", "evalue": "internal error; see the "
                "server log", "traceback": []})

    def _bad_message(self, exc: WireError) -> None:
        """A frame that is no message: answer its request if its header says which, else say
        so on shell; the connection stays open for the next one."""
        log.info("jupyter: a bad message on kernel %r: %s", self.kernel_id, exc)
        content = {"status": "error", "ename": "BadMessage", "evalue": str(exc), "traceback": []}
        header = exc.header
        if header and isinstance(header.get("msg_type"), str) and header["msg_type"]:
            if exc.channel == "stdin":
                return  # nothing answers on stdin (an input_reply is not replied to)
            request = Message(exc.channel if exc.channel == "control" else "shell", header)
            self._answer(request, _reply_type(request.msg_type), content)
            return
        self.put(Message("shell", new_header("error", self._session()), content))

    def _session(self) -> str:
        return self.kernel.session if self.kernel is not None else ""

    def _answer(self, request: Message, msg_type: str, content: dict[str, Any]) -> None:
        """A reply inside busy/idle, to this client only: a side request while a cell runs must
        not tell the others the kernel is idle. If a cell runs, say busy again after."""
        session = self._session()
        self.put(reply(request, "status", {"execution_state": "busy"}, session, "iopub"))
        self.put(reply(request, msg_type, content, session))
        self.put(reply(request, "status", {"execution_state": "idle"}, session, "iopub"))
        running = self.kernel.running_parent if self.kernel else None
        if running is not None:
            self.put(Message("iopub", new_header("status", session), {"execution_state": "busy"},
                             running))

    def _dispatch(self, message: Message) -> None:
        if message.channel == "stdin":
            if message.msg_type == "input_reply":
                self._input_reply(message)
            return
        handler = _HANDLERS.get(message.msg_type)
        if handler is None:
            if message.msg_type in ("comm_msg", "comm_close"):
                return  # no comms live here: nothing to do, nothing to answer
            self._answer(message, _reply_type(message.msg_type), {
                "status": "error", "ename": "UnknownMessageType",
                "evalue": f"kernelserver does not handle {message.msg_type!r} messages",
                "traceback": []})
            return
        handler(self, message)

    # -- handlers --

    def _kernel_info(self, message: Message) -> None:
        try:
            details = self.service.kernel_facts(self.kernel_id)
        except KernelServerError:  # gone meanwhile: what follows on the socket says so
            details = None
        self._answer(message, "kernel_info_reply", replies.kernel_info(details))

    def _execute(self, message: Message) -> None:
        content = message.content
        code = content.get("code")
        if not isinstance(code, str):
            raise BadRequest("execute_request needs 'code', a string")
        expressions = content.get("user_expressions") or {}
        if not isinstance(expressions, dict):
            raise BadRequest("user_expressions must be an object of name: expression")
        options = message.metadata.get("kernelserver") or {}
        timeout = options.get("timeout") if isinstance(options, dict) else None
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 <= timeout < 1e9):
            raise BadRequest("metadata.kernelserver.timeout must be a number of seconds")
        silent = bool(content.get("silent", False))
        cell = Cell(code, float(timeout) if timeout is not None else None,
                    user_expressions={str(k): str(v) for k, v in expressions.items()} or None,
                    allow_stdin=bool(content.get("allow_stdin", True)))
        # stop_on_error (the default): this client's cells queued behind a failing one of them
        # are aborted. A silent cell's failure aborts nothing, as in ipykernel.
        stop = bool(content.get("stop_on_error", True)) and not silent
        self.service.submit(self.kernel_id, cell, origin=JupyterOrigin(self, message, silent),
                            stop_group=self if stop else None)

    def _complete(self, message: Message) -> None:
        code, cursor = _code_and_cursor(message)
        self._answer(message, "complete_reply", self.service.complete(self.kernel_id, code, cursor))

    def _inspect(self, message: Message) -> None:
        code, cursor = _code_and_cursor(message)
        level = message.content.get("detail_level", 0)
        self._answer(message, "inspect_reply", self.service.inspect(
            self.kernel_id, code, cursor, level if isinstance(level, int) else 0))

    def _is_complete(self, message: Message) -> None:
        code = message.content.get("code")
        self._answer(message, "is_complete_reply",
                     introspect.is_complete(code) if isinstance(code, str) else {"status": "unknown"})

    def _history(self, message: Message) -> None:
        self._answer(message, "history_reply",
                     replies.history(self.service, self.kernel_id, message.content))

    def _comm_info(self, message: Message) -> None:
        self._answer(message, "comm_info_reply", {"status": "ok", "comms": {}})

    def _comm_open(self, message: Message) -> None:
        # No comm targets here: say so by closing it, as ipykernel does for an unknown target.
        comm_id = message.content.get("comm_id")
        self.put(reply(message, "comm_close", {"comm_id": comm_id, "data": {}}, self._session(),
                       "iopub"))

    def _interrupt(self, message: Message) -> None:
        self.service.interrupt(self.kernel_id)
        self._answer(message, "interrupt_reply", {"status": "ok"})

    def _shutdown(self, message: Message) -> None:
        restart = bool(message.content.get("restart", False))
        content = {"status": "ok", "restart": restart}
        self._answer(message, "shutdown_reply", content)
        if self.kernel is None:
            return
        if restart:
            self.kernel.restart(message)  # which says shutdown_reply on iopub, as ipykernel
        else:
            self.kernel.broadcast(reply(message, "shutdown_reply", content, self._session(), "iopub"))
            self.service.delete(self.kernel_id)  # the relay says dead and closes every socket

    def _input_reply(self, message: Message) -> None:
        kernel = self.kernel
        if kernel is None:
            return
        waiting = kernel.inputs.pop(str(message.parent_header.get("msg_id", "")), None)
        if waiting is None:  # a client that lost the parent: the one cell of ours that waits
            ours = [(k, e) for k, e in kernel.inputs.items()
                    if isinstance(e.origin, JupyterOrigin) and e.origin.connection.session_id
                    == self.session_id]
            if len(ours) != 1:
                return
            kernel.inputs.pop(ours[0][0], None)
            waiting = ours[0][1]
        self.service.provide_input(waiting, str(message.content.get("value", "")))


def _reply_type(msg_type: str) -> str:
    return (msg_type[:-len("_request")] if msg_type.endswith("_request") else msg_type) + "_reply"


def _code_and_cursor(message: Message) -> tuple[str, int]:
    code = message.content.get("code")
    cursor = message.content.get("cursor_pos")
    if not isinstance(code, str):
        raise BadRequest(f"{message.msg_type} needs 'code', a string")
    if not isinstance(cursor, int) or isinstance(cursor, bool):
        cursor = len(code)
    return code, cursor


_HANDLERS: dict[str, Callable[[Connection, Message], None]] = {
    "kernel_info_request": Connection._kernel_info,
    "execute_request": Connection._execute,
    "complete_request": Connection._complete,
    "inspect_request": Connection._inspect,
    "is_complete_request": Connection._is_complete,
    "history_request": Connection._history,
    "comm_info_request": Connection._comm_info,
    "comm_open": Connection._comm_open,
    "interrupt_request": Connection._interrupt,
    "shutdown_request": Connection._shutdown,
}
