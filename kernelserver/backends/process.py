"""The default backend: each namespace is a worker process forked from the fork server."""

from __future__ import annotations

import codecs
import os
import secrets
import selectors
import signal
import socket
import threading
import time
from dataclasses import replace
from typing import Any

from ..errors import NamespaceUnavailable
from ..results import ErrorInfo
from . import protocol
from .base import KernelOutcome, OutputSink, timeout_error
from .forkserver import ForkServer, ForkServerError

READ_SIZE = 1 << 16
PIPE_SIZE = 1 << 20
DRAIN_AFTER_RESULT = 5.0  # seconds to wait for the output sentinels once the result is in
DRAIN_AFTER_DEATH = 1.0  # a grandchild may hold the pipes open after the worker died


def describe_status(status: int | None) -> str:
    """'exited with code 3' or 'was killed by SIGSEGV' for a raw wait status."""
    if status is None:
        return "exited (status unknown)"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


Item = str | int  # text to forward, or the seq of a display that goes here


class _Stream:
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


class Worker:
    """One worker process: its pid, its sockets and pipes, and signals to it."""

    def __init__(self, forkserver: ForkServer, options: dict[str, Any]) -> None:
        self.forkserver = forkserver
        self.prefix = b"\x00\x1bKS-" + secrets.token_hex(8).encode() + b"-"
        ctl, ctl_child = socket.socketpair()
        query, query_child = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)  # only our read ends; the worker's write ends stay blocking
            try:
                import fcntl

                fcntl.fcntl(fd, 1031, PIPE_SIZE)  # F_SETPIPE_SZ: fewer wake-ups on big output
            except OSError:
                pass
        child_fds = [ctl_child.fileno(), query_child.fileno(), out_w, err_w]
        try:
            self.pid = forkserver.spawn(child_fds, self.prefix, options)
        except ForkServerError:
            for sock in (ctl, query):
                sock.close()
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            ctl_child.close()
            query_child.close()
            os.close(out_w)
            os.close(err_w)
        self.ctl = ctl
        self.query = query
        self.query.settimeout(10.0)
        self.query_lock = threading.Lock()
        self.stdout = _Stream(out_r, self.prefix)
        self.stderr = _Stream(err_r, self.prefix)
        self.reader = protocol.FrameReader()
        # One selector for the worker's life: making one per cell cost four syscalls a cell.
        self.selector = selectors.DefaultSelector()
        for stream in (self.stdout, self.stderr):
            self.selector.register(stream.fd, selectors.EVENT_READ, stream)
        self.selector.register(self.ctl, selectors.EVENT_READ, None)
        self.expected_exit: str | None = None  # why we are stopping it, when we are
        self._closed = False

    @property
    def status(self) -> int | None:
        """The raw wait status once the process has exited."""
        return self.forkserver.exit_status(self.pid)

    def is_alive(self) -> bool:
        """True until the fork server has reaped the process."""
        return self.status is None

    def signal(self, signum: int) -> None:
        """Send a signal to the worker's process group (its subprocesses too)."""
        if not self.is_alive():
            return  # never signal a pid that may have been reused
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            try:
                os.kill(self.pid, signum)  # not yet its own group leader
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int | None:
        """Wait up to timeout for the process to exit; its raw status, or None."""
        return self.forkserver.wait(self.pid, timeout)

    def shutdown(self, grace: float = 1.0) -> int | None:
        """Stop it, escalating: interrupt, shutdown request, SIGTERM, SIGKILL; bounded waits."""
        if self.is_alive():
            self.signal(signal.SIGINT)
            try:
                self.ctl.sendall(protocol.encode({"op": "shutdown"}))
            except OSError:
                pass
            steps = ((grace, None), (grace, signal.SIGTERM), (5.0, signal.SIGKILL))
            for wait_for, signum in steps:
                if signum is not None:
                    self.signal(signum)
                if self.wait(wait_for) is not None:
                    break
        # Stragglers in its group (a subprocess it started) must not outlive it either.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.status

    def kill(self) -> int | None:
        """SIGKILL the process group and wait for the exit."""
        self.signal(signal.SIGKILL)
        return self.wait(5.0)

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """A request/reply on the query channel (answered even while a cell runs)."""
        with self.query_lock:
            protocol.send(self.query, message)
            return protocol.recv(self.query)

    def close(self) -> None:
        """Release the parent's ends of the sockets and pipes."""
        if self._closed:
            return
        self._closed = True
        self.selector.close()
        self.ctl.close()
        self.query.close()
        os.close(self.stdout.fd)
        os.close(self.stderr.fd)
        self.forkserver.forget(self.pid)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process, from /proc (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ProcessKernel:
    """A namespace in its own worker process, restartable; modelled on jupyter_client's manager."""

    runs_inline = True  # the code runs in the worker; interrupts are signals to it

    def __init__(self, forkserver: ForkServer, options: dict[str, Any], interrupt_grace: float,
                 autostart: bool = True) -> None:
        self.forkserver = forkserver
        self.options = options
        self.interrupt_grace = interrupt_grace
        self._lifecycle = threading.Lock()
        self._worker: Worker | None = None
        self._busy = False
        self._closing = False
        if autostart:
            self.start()

    # -- lifecycle --

    def start(self) -> None:
        """Start the worker process."""
        with self._lifecycle:
            if self._worker is None:
                self._worker = self._spawn()

    def _spawn(self) -> Worker:
        try:
            return Worker(self.forkserver, self.options)
        except ForkServerError as exc:
            raise NamespaceUnavailable(f"could not start a worker: {exc}") from None

    def is_alive(self) -> bool:
        """True while a worker process is running."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    @property
    def pid(self) -> int | None:
        """The current worker's pid."""
        return self._worker.pid if self._worker else None

    def interrupt(self) -> bool:
        """SIGINT the running cell; False when idle."""
        worker = self._worker
        if worker is None or not self._busy:
            return False
        worker.signal(signal.SIGINT)
        return True

    def shutdown(self) -> None:
        """Stop the worker for good (escalating, bounded)."""
        with self._lifecycle:
            self._closing = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.expected_exit = "deleted"
            worker.shutdown()
            worker.close()

    def restart(self) -> None:
        """Replace the worker with a fresh one; the old one is gone before the new one starts."""
        with self._lifecycle:
            old = self._worker
            if old is not None:
                old.expected_exit = "restarted"
                old.shutdown()
                if not self._busy:
                    old.close()  # else the runner still reads it, and closes it when done
            self._worker = self._spawn()

    def close(self) -> None:
        """Same as shutdown()."""
        self.shutdown()

    def __enter__(self) -> ProcessKernel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- queries --

    def variables(self) -> list[dict[str, Any]]:
        """The worker's user variables, asked on the query channel."""
        worker = self._worker
        if worker is None:
            return []
        try:
            reply = worker.ask({"op": "variables"})
        except (OSError, protocol.ChannelClosed):
            return []
        return list(reply.get("variables", []))

    def details(self) -> dict[str, Any]:
        """Worker pid and resident memory."""
        worker = self._worker
        if worker is None:
            return {"pid": None, "memory_rss": None}
        return {"pid": worker.pid, "memory_rss": rss_bytes(worker.pid)}

    # -- execution --

    def execute(self, code: str, execution_count: int, sink: OutputSink,
                timeout: float | None, repr_limit: int | None = None) -> KernelOutcome:
        """Run a cell in the worker, forwarding its output as it comes; handles timeout and death."""
        worker = self._worker
        if worker is None or self._closing:
            raise NamespaceUnavailable("the namespace is shutting down")
        restarted_before = False
        if not worker.is_alive():
            self._replace_dead(worker)
            worker.close()
            worker = self._worker
            restarted_before = True
            if worker is None:
                raise NamespaceUnavailable("the namespace is shutting down")
        self._busy = True
        try:
            outcome = self._run(worker, code, execution_count, sink, timeout, repr_limit)
        finally:
            self._busy = False
            if worker is not self._worker:
                worker.close()
        if restarted_before and not outcome.restarted:
            outcome = replace(outcome, restarted=True)
        return outcome

    def _replace_dead(self, worker: Worker) -> None:
        with self._lifecycle:
            if self._worker is worker and not self._closing:
                worker.kill()
                self._worker = self._spawn()

    def _run(self, worker: Worker, code: str, execution_count: int, sink: OutputSink,
             timeout: float | None, repr_limit: int | None) -> KernelOutcome:
        io = _CellIO(worker, sink)
        for stream in (worker.stdout, worker.stderr):
            early = stream.reset()
            if early:
                io.emit(stream, stream.feed(early))
        message: dict[str, Any] = {"op": "execute", "code": code, "execution_count": execution_count}
        if repr_limit is not None:
            message["repr_limit"] = repr_limit
        try:
            worker.ctl.sendall(protocol.encode(message))
        except OSError:
            return self._died(worker, io, timed_out=False)
        deadline = time.monotonic() + timeout if timeout is not None else None
        kill_at: float | None = None
        drain_until: float | None = None
        timed_out = False
        while True:
            now = time.monotonic()
            if io.reply is not None:
                if io.reply.get("drained"):
                    # The worker saw both pipes empty before replying: all its output is read.
                    for stream in (worker.stdout, worker.stderr):
                        io.emit(stream, stream.release_held())
                    break
                if worker.stdout.seen_end and worker.stderr.seen_end:
                    break
                if drain_until is None:
                    drain_until = now + DRAIN_AFTER_RESULT
                elif now >= drain_until:
                    break
            if deadline is not None and not timed_out and now >= deadline:
                timed_out = True
                worker.signal(signal.SIGINT)
                kill_at = now + self.interrupt_grace
            if kill_at is not None and io.reply is None and now >= kill_at:
                worker.kill()
                return self._died(worker, io, timed_out=True, timeout=timeout)
            wake = [t for t in (None if timed_out else deadline, kill_at, drain_until)
                    if t is not None]
            # Wake at least every 0.5 s to notice a worker that died while a grandchild
            # still holds its sockets open.
            io.pump(min([0.5] + [max(t - now, 0.0) for t in wake]))
            if io.closed or (io.reply is None and not worker.is_alive()):
                return self._died(worker, io, timed_out, timeout)
        io.flush_displays()
        reply = io.reply
        error = ErrorInfo.from_dict(reply["error"]) if reply.get("error") else None
        truncated = bool(reply.get("truncated"))
        if timed_out and reply["status"] in ("interrupted", "ok"):
            return KernelOutcome("timeout", error=timeout_error(timeout, error), truncated=truncated)
        return KernelOutcome(reply["status"], reply.get("result"), error, truncated=truncated)

    def _died(self, worker: Worker, io: _CellIO, timed_out: bool,
              timeout: float | None = None) -> KernelOutcome:
        """The worker is gone mid-cell: collect its last output, report, and replace it."""
        status = worker.wait(2.0)
        if status is None:
            worker.kill()
            status = worker.status
        io.drain_to_eof(DRAIN_AFTER_DEATH)
        io.flush_displays()
        why = worker.expected_exit
        if why is None:
            self._replace_dead(worker)
        if timed_out:
            return KernelOutcome("timeout", error=timeout_error(timeout, None, self.interrupt_grace),
                                 restarted=True)
        if why is not None:
            return KernelOutcome("error", error=ErrorInfo(
                "NamespaceRestarted" if why == "restarted" else "NamespaceDeleted",
                f"the namespace was {why} while the cell ran", ""), restarted=why == "restarted")
        return KernelOutcome("error", error=ErrorInfo(
            "WorkerDied",
            f"the worker process {describe_status(status)} while running the cell; the "
            "namespace was restarted empty", ""), restarted=True)


class _CellIO:
    """The server's side of one running cell: reads the pipes and the control socket, and puts
    text and displays into the sink in the order the cell produced them."""

    def __init__(self, worker: Worker, sink: OutputSink) -> None:
        self.worker = worker
        self.sink = sink
        self.writers = {worker.stdout.fd: sink.write_stdout, worker.stderr.fd: sink.write_stderr}
        self.displays: dict[int, dict[str, Any]] = {}
        self.reply: dict[str, Any] | None = None
        self.closed = False  # the control socket reached EOF: the worker is gone
        self.selector = worker.selector  # EOFs unregister there for good

    def emit(self, stream: _Stream, items: list[Item]) -> None:
        """Forward text, and each display at its marker."""
        write = self.writers[stream.fd]
        for item in items:
            if isinstance(item, str):
                write(item)
                continue
            bundle = self._display(item)
            if bundle is not None:
                self.sink.add_display(bundle)

    def _display(self, seq: int) -> dict[str, Any] | None:
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
        try:
            data = self.worker.ctl.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            if self.worker.ctl.fileno() in self.selector.get_map():
                self.selector.unregister(self.worker.ctl)
            return
        for message in self.worker.reader.feed(data):
            if message["op"] == "display":
                self.displays[int(message["seq"])] = message["data"]
            elif message["op"] == "result":
                self.reply = message

    def _read_pipe(self, stream: _Stream) -> None:
        try:
            data = os.read(stream.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
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
            self.sink.add_display(self.displays.pop(seq))


class ProcessBackend:
    """Makes ProcessKernels, all forked from one fork server owned by this backend."""

    name = "process"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.options = {"repr_limit": config["repr_limit_bytes"]}
        self.forkserver = ForkServer()
        self.forkserver.start()

    def __call__(self, namespace_id: str) -> ProcessKernel:
        return ProcessKernel(self.forkserver, self.options, self.config["interrupt_grace"])

    def close(self) -> None:
        """Stop the fork server."""
        self.forkserver.close()
