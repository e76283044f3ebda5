"""The default backend: each namespace is a worker process forked from the fork server."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from ..errors import NamespaceUnavailable
from ..results import Cell, Outcome
from . import memory as memory_limits
from . import protocol, rings
from .base import (
    ExitReason,
    NamespaceOptions,
    OutputSink,
    interrupted_before_start,
    refuse_placement,
    timed_out,
    timeout_error,
)
from .forkserver import ForkServer, ForkServerError
from .pipes import CellIO, OutputPipe

log = logging.getLogger("kernelserver")

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
DRAIN_AFTER_RESULT = 5.0  # seconds to wait for the output sentinels once the result is in
DRAIN_AFTER_DEATH = 1.0  # a grandchild may hold the pipes open after the worker died
# Seconds the worker's query thread has to answer an interrupt; past it (a __repr__ that hangs
# in a query, a C call that holds the GIL) the cell is signalled without it.
INTERRUPT_ANSWER = 2.0
QUERY_TIMEOUT = 10.0  # seconds any other query may take


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
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)  # fewer wake-ups on big output
            except OSError:
                pass
        child_fds = [ctl_child.fileno(), query_child.fileno(), out_w, err_w]
        # Printed text in shared memory, readable after the worker is gone (rings.py); without
        # it (no memfd, no address space) the pipes carry it as before.
        self.rings: list[rings.RingReader] = []
        self._ring_fd: int | None = None
        self._ring_header: Any = None
        try:
            self._ring_fd = rings.create()
            self._ring_header = rings.map_header(self._ring_fd)
            self.rings = [rings.RingReader(self._ring_fd, self._ring_header, i) for i in (0, 1)]
            child_fds.append(self._ring_fd)
        except (OSError, ValueError):
            self._close_rings()
        try:
            self.pid = forkserver.spawn(child_fds, self.prefix, options)
        except ForkServerError:
            for sock in (ctl, query):
                sock.close()
            for fd in (out_r, err_r):
                os.close(fd)
            self._close_rings()
            raise
        finally:
            ctl_child.close()
            query_child.close()
            os.close(out_w)
            os.close(err_w)
        self.ctl = ctl
        self.query = query
        self.query.settimeout(QUERY_TIMEOUT)
        self.query_lock = threading.Lock()
        self._query_seq = 0
        self.ctl_lock = threading.Lock()
        self.stdout = OutputPipe(out_r, self.prefix)
        self.stderr = OutputPipe(err_r, self.prefix)
        self.reader = protocol.FrameReader()
        # One selector for the worker's life: making one per cell cost four syscalls a cell.
        self.selector = selectors.DefaultSelector()
        for stream in (self.stdout, self.stderr):
            self.selector.register(stream.fd, selectors.EVENT_READ, stream)
        self.selector.register(self.ctl, selectors.EVENT_READ, None)
        self.expected_exit: ExitReason | None = None  # why we are stopping it, when we are
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def status(self) -> int | None:
        """The raw wait status once the process has exited."""
        return self.forkserver.exit_status(self.pid)

    def is_alive(self) -> bool:
        """True until the fork server has reaped the process (or died, taking it along)."""
        return self.status is None and not self.forkserver.lost

    def how_it_ended(self) -> str:
        """'exited with code 3', 'was killed by SIGSEGV', or how its fork server took it along."""
        if self.status is None and self.forkserver.lost:
            return "was killed when its fork server died"
        return describe_status(self.status)

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
                self.tell({"op": "shutdown"})
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

    def ask(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A request/reply on the query channel (answered even while a cell runs)."""
        with self.query_lock:
            self._query_seq += 1
            if timeout is not None:
                self.query.settimeout(timeout)
            try:
                protocol.send(self.query, {**message, "seq": self._query_seq})
                while True:
                    reply = protocol.recv(self.query)
                    # A reply that comes after its asker timed out belongs to nobody: skip it.
                    if reply.get("seq") == self._query_seq:
                        return reply
            finally:
                if timeout is not None:
                    self.query.settimeout(QUERY_TIMEOUT)

    def tell(self, message: dict[str, Any]) -> None:
        """Send on the control channel (from any thread: a cell, a shutdown, an input reply)."""
        with self.ctl_lock:
            self.ctl.sendall(protocol.encode(message))

    def close(self) -> None:
        """Release the parent's ends of the sockets and pipes (once, whoever calls)."""
        with self._close_lock:  # closing a fd twice could close a file that reused its number
            if self._closed:
                return
            self._closed = True
        self.selector.close()
        self.ctl.close()
        self.query.close()
        os.close(self.stdout.fd)
        os.close(self.stderr.fd)
        self._close_rings()
        self.forkserver.forget(self.pid)

    def _close_rings(self) -> None:
        readers, self.rings = self.rings, []
        while readers:
            readers.pop().close()
        if self._ring_header is not None:
            self._ring_header.close()
            self._ring_header = None
        if self._ring_fd is not None:
            os.close(self._ring_fd)  # the memory goes when the worker's mappings go too
            self._ring_fd = None


def _size(count: int) -> str:
    """Bytes as people read them: 512 MiB, 1.5 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{count} bytes"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process, from /proc (None where unavailable)."""
    found = memory_limits.proc_kib(f"/proc/{pid}/status", "VmRSS:")
    return None if found is None else found * 1024


class ProcessKernel:
    """A namespace in its own worker process, restartable; modelled on jupyter_client's manager."""

    runs_inline = True  # the code runs in the worker; interrupts are signals to it

    def __init__(self, forkserver: ForkServer | Callable[[], ForkServer], options: dict[str, Any],
                 interrupt_grace: float, autostart: bool = True,
                 memory: memory_limits.Group | None = None) -> None:
        # A fork server, or where to get a live one (the backend replaces one that died).
        self._forkserver = forkserver if callable(forkserver) else (lambda: forkserver)
        self.options = options
        self.interrupt_grace = interrupt_grace
        self.memory = memory  # the namespace's memory limit, kept across its workers
        self._lifecycle = threading.Lock()
        self._worker: Worker | None = None
        self._busy = False
        self._closing = False
        # Which cell an interrupt is for, decided under _cells: the cell whose execute message
        # went to that worker (until its end), one interrupted before it was sent, and the
        # latest cell that has ended (interrupting it, or one before it, does nothing).
        self._cells = threading.Lock()
        self._sent: tuple[Worker, int] | None = None
        self._early: int | None = None
        self._ended = 0
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
            worker = Worker(self._forkserver(), self.options)
        except ForkServerError as exc:
            raise NamespaceUnavailable(f"could not start a worker: {exc}") from None
        if self.memory is not None:
            try:
                self.memory.attach(worker.pid)
            except OSError as exc:
                log.warning("could not put worker %d in its memory cgroup (%s); it is watched "
                            "instead", worker.pid, exc)
                self.memory = memory_limits.watchdog(self.memory.limit)
        return worker

    def is_alive(self) -> bool:
        """True while a worker process is running."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    @property
    def pid(self) -> int | None:
        """The current worker's pid."""
        return self._worker.pid if self._worker else None

    def interrupt(self, execution_count: int) -> bool:
        """Interrupt that cell, in its worker or before it is sent there; False once it ended."""
        with self._cells:
            sent = self._sent
            if sent is None or sent[1] != execution_count:
                if execution_count <= self._ended:
                    return False
                self._early = execution_count  # execute() answers it without sending it
                return True
        return self._interrupt_sent(sent[0], execution_count)

    def _interrupt_sent(self, worker: Worker, execution_count: int) -> bool:
        """Ask the worker's query thread to interrupt a cell sent to it; False if it has ended."""
        try:
            reply = worker.ask({"op": "interrupt", "execution_count": execution_count},
                               timeout=INTERRUPT_ANSWER)
        except (OSError, protocol.ChannelClosed):
            pass  # no answer: its query thread is stuck, or the worker is going away
        else:
            return bool(reply.get("ok") and reply.get("interrupted"))
        with self._cells:
            # Signalled while the cell is still unanswered, the next cannot have been sent:
            # the worker takes this SIGINT before it reads the next cell.
            if self._sent != (worker, execution_count) or not worker.is_alive():
                return False
            worker.signal(signal.SIGINT)
            return True

    def shutdown(self, reason: ExitReason = ExitReason.DELETED) -> None:
        """Stop the worker for good (escalating, bounded)."""
        with self._lifecycle:
            self._closing = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.expected_exit = reason
            worker.shutdown()
            with self._lifecycle:
                if not self._busy:
                    worker.close()  # else the runner still reads it, and closes it when done
        if self.memory is not None:
            self.memory.close()

    def restart(self) -> None:
        """Replace the worker with a fresh one; the old one is gone before the new one starts."""
        with self._lifecycle:
            old = self._worker
            if old is not None:
                old.expected_exit = ExitReason.RESTARTED
                old.shutdown()
                if not self._busy:
                    old.close()  # else the runner still reads it, and closes it when done
            self._worker = self._spawn()

    def close(self, reason: ExitReason = ExitReason.DELETED) -> None:
        """Same as shutdown()."""
        self.shutdown(reason)

    def __enter__(self) -> ProcessKernel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- queries --

    def _ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        worker = self._worker
        if worker is None:
            return None
        try:
            reply = worker.ask(message)
        except (OSError, protocol.ChannelClosed):
            return None  # the worker is gone or restarting: nothing to tell
        return reply if reply.get("ok") else None

    def variables(self) -> list[dict[str, Any]]:
        """The worker's user variables, asked on the query channel."""
        reply = self._ask({"op": "variables"})
        return list(reply["variables"]) if reply else []

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Completions from the worker's namespace (asked on the query channel)."""
        reply = self._ask({"op": "complete", "code": code, "cursor_pos": cursor_pos})
        if reply is None:
            return {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                    "cursor_end": cursor_pos, "metadata": {}}
        return dict(reply["reply"])

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        """What the name at the cursor is, from the worker's namespace."""
        reply = self._ask({"op": "inspect", "code": code, "cursor_pos": cursor_pos,
                           "detail_level": detail_level})
        return dict(reply["reply"]) if reply else {"status": "ok", "found": False, "data": {},
                                                   "metadata": {}}

    def details(self) -> dict[str, Any]:
        """Worker pid, its resident memory, and (with a limit) what the limit counts."""
        worker = self._worker
        if worker is None:
            return {"pid": None, "memory_rss": None}
        found: dict[str, Any] = {"pid": worker.pid, "memory_rss": rss_bytes(worker.pid)}
        if self.memory is not None:
            found["memory_used"] = self.memory.usage(worker.pid)
        return found

    # -- execution --

    def execute(self, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        """Run a cell in the worker, forwarding its output as it comes; handles timeout and death."""
        # Under the lifecycle lock: a cell that arrives while a restart runs waits for the new
        # worker, rather than start on the old one as it is shut down and closed.
        dead: Worker | None = None
        with self._lifecycle:
            worker = self._worker
            if worker is None or self._closing:
                raise NamespaceUnavailable("the namespace is shutting down")
            if not worker.is_alive():
                dead = worker
                dead.kill()
                self._worker = worker = self._spawn()
            self._busy = True
        restarted_before = dead is not None
        if dead is not None:
            self._report_death_between_cells(dead, sink)
        try:
            outcome = self._run(worker, cell, execution_count, sink)
        finally:
            with self._cells:
                self._sent = None
                self._ended = max(self._ended, execution_count)
            self._busy = False
            if worker is not self._worker:
                worker.close()
        if restarted_before and not outcome.restarted:
            outcome = replace(outcome, restarted=True)
        return outcome

    def _report_death_between_cells(self, dead: Worker, sink: OutputSink) -> None:
        """The worker died after the last cell (a thread of it, a signal, its fork server): what
        it printed on its way out, then why, go to this cell's output; it runs on a new worker."""
        io = CellIO(dead, sink)
        for stream in (dead.stdout, dead.stderr):
            early = stream.reset()
            if early:
                io.emit(stream, stream.feed(early))
        io.drain_to_eof(DRAIN_AFTER_DEATH)
        io.flush_rest()
        used = self.memory.exceeded(dead.pid) if self.memory is not None else None
        how = (f"went past the namespace's memory limit of {_size(self.memory.limit)} "
               f"({_size(used)} in use) and was stopped" if used is not None and self.memory
               else dead.how_it_ended())
        sink.write_stderr(f"[kernelserver: the worker process {how} after the last cell; the "
                          "namespace was restarted empty for this one]\n")
        dead.close()

    def _replace_dead(self, worker: Worker) -> None:
        with self._lifecycle:
            if self._worker is worker and not self._closing:
                worker.kill()
                self._worker = self._spawn()

    def _run(self, worker: Worker, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        io = CellIO(worker, sink)
        for stream in (worker.stdout, worker.stderr):
            early = stream.reset()
            if early:
                io.emit(stream, stream.feed(early))
        message: dict[str, Any] = {"op": "execute", "code": cell.code,
                                   "execution_count": execution_count}
        if cell.repr_limit is not None:
            message["repr_limit"] = cell.repr_limit
        if cell.user_expressions:
            message["user_expressions"] = cell.user_expressions
        if cell.allow_stdin:
            message["allow_stdin"] = True
        timeout = cell.timeout
        memory = self.memory
        if memory is not None:
            memory.arm()
        next_check = time.monotonic() + memory_limits.POLL
        with self._cells:
            interrupted, self._early = self._early, None
            if interrupted == execution_count:
                return interrupted_before_start()
            self._sent = (worker, execution_count)  # from now on interrupts go to the worker
        try:
            worker.tell(message)
        except OSError:
            return self._died(worker, io, deadline_passed=False)
        deadline = time.monotonic() + timeout if timeout is not None else None
        kill_at: float | None = None
        drain_until: float | None = None
        deadline_passed = False
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
            if deadline is not None and not deadline_passed and now >= deadline:
                deadline_passed = True
                # Aimed at this cell like a user's interrupt (even one not started yet), on a
                # thread of its own: this loop keeps reading output, and kills at kill_at.
                threading.Thread(target=self._interrupt_sent, args=(worker, execution_count),
                                 name="timeout-interrupt", daemon=True).start()
                kill_at = now + self.interrupt_grace
            if kill_at is not None and io.reply is None and now >= kill_at:
                worker.kill()
                return self._died(worker, io, deadline_passed=True, timeout=timeout)
            if memory is not None and io.reply is None and now >= next_check:
                next_check = now + memory_limits.POLL
                used = memory.exceeded(worker.pid)
                if used is not None:  # the watchdog's find, or the kernel stopped part of it
                    worker.kill()
                    return self._died(worker, io, deadline_passed, timeout, memory_used=used)
            wake = [t for t in (None if deadline_passed else deadline, kill_at, drain_until,
                                next_check if memory is not None else None) if t is not None]
            # Wake at least every 0.5 s to notice a worker that died while a grandchild
            # still holds its sockets open.
            io.pump(min([0.5] + [max(t - now, 0.0) for t in wake]))
            if io.closed or (io.reply is None and not worker.is_alive()):
                return self._died(worker, io, deadline_passed, timeout)
        if memory is not None and io.reply is not None:
            used = memory.exceeded(worker.pid)
            if used is not None:
                # It ends holding more than its limit (the watchdog samples, and a cell can end
                # between two samples; the kernel may have stopped only a subprocess): stopped,
                # as it would have been a moment later.
                worker.kill()
                return self._died(worker, io, deadline_passed, timeout, memory_used=used)
        io.flush_displays()
        for reader in worker.rings:
            reader.release()  # the pages of what the cell printed go back
        outcome = Outcome.from_dict(io.reply)
        return timed_out(outcome, timeout) if deadline_passed else outcome

    def _died(self, worker: Worker, io: CellIO, deadline_passed: bool,
              timeout: float | None = None, memory_used: int | None = None) -> Outcome:
        """The worker is gone mid-cell: collect its last output, report, and replace it."""
        status = worker.wait(2.0)
        if status is None:
            worker.kill()
            status = worker.status
        io.drain_to_eof(DRAIN_AFTER_DEATH)
        io.flush_rest()
        why = worker.expected_exit
        if why is None:
            self._replace_dead(worker)
        if memory_used is None and self.memory is not None and why is None:
            memory_used = self.memory.exceeded(worker.pid)  # the kernel killed it at the limit
        if memory_used is not None and self.memory is not None:
            return Outcome.failed(
                "MemoryLimitExceeded", f"the cell went past the namespace's memory limit of "
                f"{_size(self.memory.limit)} ({_size(memory_used)} in use): its processes were "
                "stopped and the namespace restarted empty", restarted=True)
        if deadline_passed:
            return Outcome("timeout", error=timeout_error(timeout, None, self.interrupt_grace),
                           restarted=True)
        if why is ExitReason.RESTARTED:
            return Outcome.failed("NamespaceRestarted", "the namespace was restarted while the cell "
                                  "ran", restarted=True)
        if why is ExitReason.DELETED:
            return Outcome.failed("NamespaceDeleted", "the namespace was deleted while the cell ran")
        if why is ExitReason.STOPPED:
            return Outcome.failed("ServerStopped", "the server stopped while the cell ran, and the "
                                  "cell did not stop at its interrupt: its worker was killed")
        return Outcome.failed("WorkerDied", f"the worker process {worker.how_it_ended()} while "
                              "running the cell; the namespace was restarted empty", restarted=True)


class ProcessBackend:
    """Makes ProcessKernels, all forked from one fork server owned by this backend."""

    name: ClassVar[str] = "process"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.options = {"repr_limit": config["repr_limit_bytes"]}
        self._lock = threading.Lock()
        self.forkserver = ForkServer()
        self.forkserver.start()
        self._limits: memory_limits.Limits | None = None  # made when first asked for
        self._closed = False

    def live_forkserver(self) -> ForkServer:
        """The fork server, started anew if the last one died (a cell can kill it: every
        namespace's worker dies with it, and new ones must still start)."""
        with self._lock:
            if self._closed:
                # Stopping: a worker that died meanwhile must not bring a fork server back.
                raise ForkServerError("the server is stopping")
            if not self.forkserver.alive:
                self.forkserver.close()  # reaped already by its reader; releases the socket
                fresh = ForkServer()
                fresh.start()
                self.forkserver = fresh
            return self.forkserver

    def healthy(self) -> bool:
        """True when a worker can be started now (the fork server runs, or starts again)."""
        try:
            return self.live_forkserver().alive
        except ForkServerError:
            return False

    @property
    def limits(self) -> memory_limits.Limits:
        """Where namespaces' memory groups are made (found, and the server's cgroup made, on the
        first use: a server whose namespaces have no limit touches no cgroup)."""
        with self._lock:
            if self._limits is None:
                self._limits = memory_limits.Limits(self.config.get("memory_limit_method", "auto"),
                                                    server_pids=memory_limits.server_processes)
                log.info("%s", self._limits.why)
            return self._limits

    def validate(self, options: NamespaceOptions) -> None:
        """CPUs and GPUs are placed by the ray backend; here every namespace shares the box."""
        refuse_placement(options, "process", limits_memory=True)

    def cluster(self) -> dict[str, Any] | None:
        """Not a cluster."""
        return None

    def memory_limit_method(self) -> str:
        """'cgroup v2', 'cgroup v1' or 'watchdog'."""
        return self.limits.method

    def start_kernel(self, namespace_id: str, options: NamespaceOptions) -> ProcessKernel:
        """A kernel with its worker forked and ready, in its memory group if it has a limit."""
        limit = options.resources.memory
        if limit is None:
            limit = self.config.get("memory_limit", 0)
        group = self.limits.group(namespace_id, limit) if limit else None
        try:
            return ProcessKernel(self.live_forkserver, self.options, self.config["interrupt_grace"],
                                 memory=group)
        except BaseException:
            if group is not None:
                group.close()
            raise

    def close(self) -> None:
        """Stop the fork server; remove the server's memory cgroup."""
        with self._lock:
            self._closed = True
            self.forkserver.close()
            limits = self._limits
        if limits is not None:
            limits.close()
