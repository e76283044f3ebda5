"""Namespaces as Jupyter kernels: each one's session, connections and offline buffers, and the relay
that turns the namespace's events (every cell, whoever sent it) into iopub messages."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import NamespaceNotFound, TooManyWebSockets
from ...execution import Execution
from ...results import (
    ClearEvent,
    DisplayEvent,
    InputRequestEvent,
    OutputEvent,
    ResultEvent,
    StartedEvent,
    StateEvent,
    ValueEvent,
)
from ...service import Service
from ...subscriptions import NamespaceEvent
from . import replies
from .offline import MAX_OFFLINE_SESSIONS, OFFLINE_SECONDS, OfflineBuffer
from .wire import PROTOCOL_VERSION, USERNAME, Message, new_header

if TYPE_CHECKING:
    from .channels import Connection

HTTP_SESSION = "kernelserver-http"  # the parent session of cells sent over the v1 HTTP API


@dataclass(frozen=True)
class JupyterOrigin:
    """Who sent a cell over Jupyter: the connection and its request, and how it asked to run."""

    connection: Connection
    request: Message
    silent: bool


class JupyterKernel:
    """One namespace as Jupyter clients see it, fed by a relay of the namespace's events.

    The relay runs on the thread that publishes an event (the cell's runner, mostly) and only
    queues messages for connections: no thread of its own, no hand-off before the writer, and
    nothing on it waits on a client (a client too far behind is dropped, never waited for).
    """

    def __init__(self, kernels: Kernels, namespace_id: str) -> None:
        self.kernels = kernels
        self.id = namespace_id
        self.connections: list[Connection] = []
        self.offline: dict[str, OfflineBuffer] = {}
        self.inputs: dict[str, Execution] = {}  # input_request msg_id → the cell waiting for it
        self.running_parent: dict[str, Any] | None = None  # the header of the cell that runs now
        self.stopped = False
        # Every message of this kernel carries it, until a restart makes a new one.
        self.session = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._last_parent: tuple[Execution, dict[str, Any]] | None = None
        self._valued: Execution | None = None  # whose execute_result went out before its figures
        # The shutdown_request a restart on this thread answers: its iopub shutdown_reply's parent.
        self._restart_request = threading.local()
        self._relay = kernels.service.relay(namespace_id, self._handle)

    # -- connections --

    def attach(self, connection: Connection) -> bool:
        """Start feeding connection, replaying what its session missed; False once stopped."""
        replaced: list[Connection] = []
        stale = False
        with self._lock:
            if self.stopped:
                return False
            if connection.session_id:
                # One live connection a session, as jupyter_server: a client that reconnects
                # leaves its old socket behind (or jupyter_server leaks one), never to be read.
                same = [c for c in self.connections if c.session_id == connection.session_id]
                # Unless a newer request of the session got here first (its thread ran ahead
                # under load): then this one is the socket left behind, and goes. Replacing the
                # newer one cut JupyterLab's page off its kernel for good.
                stale = any(c.arrived > connection.arrived for c in same)
                if not stale:
                    replaced = same
                    self._take_over(connection, replaced)
                    self.connections = [c for c in self.connections if c not in replaced]
            if not stale:
                self.connections.append(connection)
        for old in [connection] if stale else replaced:
            old.close(1000, "replaced by a newer connection of the same session")
        return True

    def _take_over(self, connection: Connection, replaced: list[Connection]) -> None:
        """Give connection what its session's replaced sockets and offline buffer still hold."""
        for old in replaced:  # what the old socket was never sent goes to the new one
            if old.dropped:
                connection.put(self._note_behind())
            for message in old.undelivered():
                connection.put(message)
        missed = self.offline.pop(connection.session_id, None)
        if missed is not None:
            if missed.cut:
                connection.put(self._note_behind())
            if missed.dropped:
                connection.put(self._note_dropped(missed.dropped))
            for message in missed.replay():
                connection.put(message)

    def detach(self, connection: Connection, keep_missed: bool) -> None:
        """Stop feeding connection; with keep_missed, buffer for its session's return."""
        with self._lock:
            if connection not in self.connections:
                return
            self.connections.remove(connection)
            session = connection.session_id
            if keep_missed and session and not self.stopped and session not in self.offline:
                if len(self.offline) >= MAX_OFFLINE_SESSIONS:
                    oldest = min(self.offline, key=lambda key: self.offline[key].since)
                    del self.offline[oldest]
                buffer = OfflineBuffer(cut=connection.dropped)
                # What was queued for it and never written comes first in its replay.
                for message in connection.undelivered():
                    buffer.add(message)
                self.offline[session] = buffer
            idle = self._unused()
        if idle:
            self._stop()

    def _unused(self) -> bool:
        """Drop expired offline buffers; True when nobody is left to feed (under the lock)."""
        now = time.monotonic()
        for session in [s for s, b in self.offline.items() if now - b.since > OFFLINE_SECONDS]:
            del self.offline[session]
        return not self.connections and not self.offline

    def count(self) -> int:
        """Connections open now."""
        return len(self.connections)

    def _note_dropped(self, dropped: int) -> Message:
        return Message("iopub", new_header("stream", self.session), {
            "name": "stderr", "text": f"[kernelserver: {dropped} messages sent while this client was "
            "away did not fit the replay buffer and were dropped; the full output of each cell is "
            "in the namespace's history]\n"})

    def _note_behind(self) -> Message:
        return Message("iopub", new_header("stream", self.session), {
            "name": "stderr", "text": "[kernelserver: this client fell too far behind and was "
            "disconnected; what it had not been sent follows, but output on its way at that moment "
            "may be missing: the full output of each cell is in the namespace's history]\n"})

    # -- sending --
    # Under the lock, so that a connection that goes (detach) has each message either sent or
    # kept for its replay: put() never waits (see Connection.put), so neither does the lock.

    def broadcast(self, message: Message) -> None:
        """To every connection, and into every offline session's buffer."""
        with self._lock:
            if self.offline:
                idle = self._unused()
                for buffer in self.offline.values():
                    buffer.add(message)
            else:
                idle = not self.connections
            for connection in self.connections:
                connection.put(message)
        if idle:
            self._stop()

    def send_to(self, connection: Connection, message: Message) -> None:
        """To one connection, or into its session's buffer if it has gone."""
        with self._lock:
            if connection in self.connections:
                connection.put(message)
            elif connection.session_id in self.offline:
                self.offline[connection.session_id].add(message)

    def iopub(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]) -> Message:
        """An iopub message of this kernel."""
        return Message("iopub", new_header(msg_type, self.session), content, parent)

    def status(self, state: str, parent: dict[str, Any]) -> Message:
        """An iopub status message."""
        return self.iopub("status", {"execution_state": state}, parent)

    # -- the relay --

    def _stop(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            connections, self.connections = list(self.connections), []
            self.offline.clear()
        self._relay.close()
        self.kernels.forget(self)
        for connection in connections:
            connection.close(1000, "the kernel is gone")

    def _parent_of(self, execution: Execution) -> dict[str, Any]:
        origin = execution.origin
        if isinstance(origin, JupyterOrigin):
            return origin.request.header
        last = self._last_parent  # made once a cell: asked again for every line it prints
        if last is not None and last[0] is execution:
            return last[1]
        # A cell sent over HTTP: its own parent, so clients see it start and end.
        parent = {"msg_id": f"{self.id}:{execution.execution_count}", "msg_type": "execute_request",
                  "username": USERNAME, "session": HTTP_SESSION, "date": execution.submitted_at,
                  "version": PROTOCOL_VERSION}
        self._last_parent = (execution, parent)
        return parent

    def _handle(self, item: NamespaceEvent) -> None:
        event, execution = item.event, item.execution
        if isinstance(event, StateEvent):
            self._state(event.state)
            return
        if execution is None or self.stopped:
            return
        origin = execution.origin if isinstance(execution.origin, JupyterOrigin) else None
        parent = self._parent_of(execution)
        quiet = origin is not None and origin.silent
        if isinstance(event, StartedEvent):
            self.running_parent = parent
            self.broadcast(self.status("busy", parent))
            if not quiet:
                self.broadcast(self.iopub("execute_input", {
                    "code": event.code, "execution_count": event.execution_count}, parent))
        elif isinstance(event, OutputEvent):
            if not quiet:
                self.broadcast(self.iopub("stream", {"name": event.stream, "text": event.text}, parent))
        elif isinstance(event, ValueEvent):
            if not quiet:
                self._valued = execution
                self.broadcast(self.iopub("execute_result", {
                    "execution_count": execution.execution_count, "data": event.data,
                    "metadata": {}}, parent))
        elif isinstance(event, DisplayEvent):
            if not quiet:
                transient = {} if event.display_id is None else {"display_id": event.display_id}
                self.broadcast(self.iopub("update_display_data" if event.update else "display_data",
                                          {"data": event.data, "metadata": {},
                                           "transient": transient}, parent))
        elif isinstance(event, ClearEvent):
            if not quiet:
                self.broadcast(self.iopub("clear_output", {"wait": event.wait}, parent))
        elif isinstance(event, InputRequestEvent):
            if origin is not None:
                request = Message("stdin", new_header("input_request", self.session),
                                  {"prompt": event.prompt, "password": event.password}, parent)
                self.inputs[request.msg_id] = execution
                self.send_to(origin.connection, request)
        elif isinstance(event, ResultEvent):
            self._finished(execution, event, origin, parent, quiet)

    def _finished(self, execution: Execution, event: ResultEvent, origin: JupyterOrigin | None,
                  parent: dict[str, Any], quiet: bool) -> None:
        result = event.final.result  # without its output, which went out as it came
        ran = result.started_at is not None
        for msg_id in [k for k, e in self.inputs.items() if e is execution]:
            del self.inputs[msg_id]
        if ran:
            self.running_parent = None
        if ran and not quiet:
            valued, self._valued = self._valued is execution, None
            if result.ok and result.result is not None and not valued:
                self.broadcast(self.iopub("execute_result", {
                    "execution_count": result.execution_count, "data": result.result,
                    "metadata": {}}, parent))
            elif result.error is not None and not result.ok:
                self.broadcast(self.iopub("error", replies.error_content(result.error), parent))
        if origin is not None:
            outcome = execution.outcome
            content, metadata = replies.execute_reply(
                result, outcome.user_expressions if outcome else None, ran)
            if not ran:  # it never started, so its busy was never sent
                self.send_to(origin.connection, self.status("busy", parent))
            self.send_to(origin.connection, Message("shell", new_header("execute_reply", self.session),
                                                    content, parent, metadata))
            if not ran:
                self.send_to(origin.connection, self.status("idle", parent))
        if ran:
            self.broadcast(self.status("idle", parent))
        if result.restarted and (result.error is None or result.error.ename != "NamespaceRestarted"):
            # The worker died (a crash, a kill past a limit; NamespaceRestarted is a restart
            # someone asked for, see _state) and a new one took over: what jupyter_server's
            # auto-restarter says, then what the new kernel says.
            self.broadcast(self.status("restarting", {}))
            self._started()

    def restart(self, request: Message) -> None:
        """Restart the namespace for a shutdown_request (the parent of its iopub shutdown_reply)."""
        self._restart_request.header = request.header
        try:
            self.kernels.service.restart(self.id)
        finally:
            self._restart_request.header = None

    def _started(self) -> None:
        """A new kernel is up: a new session, which says starting, then idle."""
        self.session = uuid.uuid4().hex
        self.inputs.clear()
        self.broadcast(self.status("starting", {}))
        if self.running_parent is None:  # else a cell sent during the restart runs already
            self.broadcast(self.status("idle", {}))

    def _state(self, state: str) -> None:
        # restarting, then idle: a restart someone asked for. Shown as ipykernel under
        # jupyter_server shows one: the old kernel's shutdown_reply, the new one's starting and
        # idle. Never status `restarting`: JupyterLab takes it for a crash ("The kernel appears
        # to have died. It will restart automatically."), which _finished reports.
        if state == "restarting":
            parent = getattr(self._restart_request, "header", None) or {}
            self.inputs.clear()
            self.running_parent = None
            self.broadcast(self.iopub("shutdown_reply", {"status": "ok", "restart": True}, parent))
        elif state == "idle":
            self._started()
        elif state == "dead":
            self.broadcast(self.status("dead", {}))
            self._stop()
        else:
            self.broadcast(self.status(state, {}))


class Slot:
    """One WebSocket's place under max_websockets, given back once (by whoever is first)."""

    def __init__(self, kernels: Kernels) -> None:
        self._kernels: Kernels | None = kernels

    def release(self) -> None:
        """Give the place back; later calls do nothing."""
        kernels, self._kernels = self._kernels, None
        if kernels is not None:
            kernels._release()


class Kernels:
    """The Jupyter side of every namespace, and the count of open WebSockets."""

    def __init__(self, service: Service, max_websockets: int) -> None:
        self.service = service
        self.max_websockets = max_websockets
        self._kernels: dict[str, JupyterKernel] = {}
        self._open = 0
        self._lock = threading.Lock()

    def reserve(self) -> Slot:
        """Count one more open WebSocket; TooManyWebSockets past max_websockets."""
        with self._lock:
            if self._open >= self.max_websockets:
                raise TooManyWebSockets(
                    f"{self._open} WebSockets are open, the most this server allows "
                    f"(max_websockets={self.max_websockets}); close one, or raise the setting")
            self._open += 1
        return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self._open -= 1

    def attach(self, connection: Connection) -> JupyterKernel:
        """Feed connection from its namespace's kernel (started for it if need be)."""
        for _ in range(3):  # a kernel that stops as we attach is replaced by a fresh one
            with self._lock:
                kernel = self._kernels.get(connection.kernel_id)
                if kernel is None or kernel.stopped:
                    kernel = JupyterKernel(self, connection.kernel_id)
                    self._kernels[connection.kernel_id] = kernel
            if kernel.attach(connection):
                return kernel
        raise NamespaceNotFound(f"no kernel {connection.kernel_id!r}", id=connection.kernel_id)

    def forget(self, kernel: JupyterKernel) -> None:
        """Drop a stopped kernel."""
        with self._lock:
            if self._kernels.get(kernel.id) is kernel:
                del self._kernels[kernel.id]

    def connections(self, namespace_id: str) -> int:
        """Open WebSockets on the namespace."""
        with self._lock:
            kernel = self._kernels.get(namespace_id)
        return kernel.count() if kernel is not None else 0

    def close_all(self, code: int, reason: str) -> None:
        """Close every WebSocket (server shutdown: 1001)."""
        with self._lock:
            kernels = list(self._kernels.values())
        for kernel in kernels:
            for connection in list(kernel.connections):
                connection.close(code, reason)

