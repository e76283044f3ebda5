"""A namespace in its own worker process, restartable (the backend that makes them: processbackend.py)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import NamespaceUnavailable
from ..results import Cell, Outcome
from . import memory as memory_limits
from . import protocol
from .base import (
    ExitReason,
    OutputSink,
    interrupted_before_start,
    timed_out,
)
from .forkserver import ForkServer, ForkServerError
from .pipes import CellIO
from .policy import Deadline, died_between_cells, died_in_cell, memory_exceeded_text
from .protocol import Op
from .workerprocess import WorkerProcess

log = logging.getLogger("kernelserver")

DRAIN_AFTER_RESULT = 5.0  # seconds to wait for the output sentinels once the result is in
DRAIN_AFTER_DEATH = 1.0  # a grandchild may hold the pipes open after the worker died
# Seconds the worker's query thread has to answer an interrupt; past it (a __repr__ that hangs
# in a query, a C call that holds the GIL) the cell is signalled without it.
INTERRUPT_ANSWER = 2.0


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
        self._worker: WorkerProcess | None = None
        self._busy = False
        self._closing = False
        # Which cell an interrupt is for, decided under _cells: the cell whose execute message
        # went to that worker (until its end), one interrupted before it was sent, and the
        # latest cell that has ended (interrupting it, or one before it, does nothing).
        self._cells = threading.Lock()
        self._sent: tuple[WorkerProcess, int] | None = None
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

    def _spawn(self) -> WorkerProcess:
        try:
            worker = WorkerProcess(self._forkserver(), self.options)
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

    def _interrupt_sent(self, worker: WorkerProcess, execution_count: int) -> bool:
        """Ask the worker's query thread to interrupt a cell sent to it; False if it has ended."""
        try:
            reply = worker.ask({"op": Op.INTERRUPT, "execution_count": execution_count},
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
        reply = self._ask({"op": Op.VARIABLES})
        return list(reply["variables"]) if reply else []

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Completions from the worker's namespace (asked on the query channel)."""
        reply = self._ask({"op": Op.COMPLETE, "code": code, "cursor_pos": cursor_pos})
        if reply is None:
            return {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                    "cursor_end": cursor_pos, "metadata": {}}
        return dict(reply["reply"])

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        """What the name at the cursor is, from the worker's namespace."""
        reply = self._ask({"op": Op.INSPECT, "code": code, "cursor_pos": cursor_pos,
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
        dead: WorkerProcess | None = None
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

    def _report_death_between_cells(self, dead: WorkerProcess, sink: OutputSink) -> None:
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
        how = (memory_exceeded_text(self.memory.limit, used) if used is not None and self.memory
               else dead.how_it_ended())
        sink.write_stderr(died_between_cells(how))
        dead.close()

    def _replace_dead(self, worker: WorkerProcess) -> None:
        with self._lifecycle:
            if self._worker is worker and not self._closing:
                worker.kill()
                self._worker = self._spawn()

    def _run(self, worker: WorkerProcess, cell: Cell, execution_count: int,
             sink: OutputSink) -> Outcome:
        io = CellIO(worker, sink)
        for stream in (worker.stdout, worker.stderr):
            early = stream.reset()
            if early:
                io.emit(stream, stream.feed(early))
        message: dict[str, Any] = {"op": Op.EXECUTE, "code": cell.code,
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
            return self._died(worker, io, None)
        deadline = Deadline(time.monotonic(), timeout, self.interrupt_grace)
        drain_until: float | None = None
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
            if deadline.interrupt_due(now):
                # Aimed at this cell like a user's interrupt (even one not started yet), on a
                # thread of its own: this loop keeps reading output, and kills past the grace.
                threading.Thread(target=self._interrupt_sent, args=(worker, execution_count),
                                 name="timeout-interrupt", daemon=True).start()
            if io.reply is None and deadline.kill_due(now):
                worker.kill()
                return self._died(worker, io, deadline)
            if memory is not None and io.reply is None and now >= next_check:
                next_check = now + memory_limits.POLL
                used = memory.exceeded(worker.pid)
                if used is not None:  # the watchdog's find, or the kernel stopped part of it
                    worker.kill()
                    return self._died(worker, io, deadline, memory_used=used)
            wake = deadline.wakes() + [t for t in (drain_until, next_check if memory is not None
                                                   else None) if t is not None]
            # Wake at least every 0.5 s to notice a worker that died while a grandchild
            # still holds its sockets open.
            io.pump(min([0.5] + [max(t - now, 0.0) for t in wake]))
            if io.closed or (io.reply is None and not worker.is_alive()):
                return self._died(worker, io, deadline)
        if memory is not None and io.reply is not None:
            used = memory.exceeded(worker.pid)
            if used is not None:
                # It ends holding more than its limit (the watchdog samples, and a cell can end
                # between two samples; the kernel may have stopped only a subprocess): stopped,
                # as it would have been a moment later.
                worker.kill()
                return self._died(worker, io, deadline, memory_used=used)
        io.flush_displays()
        for reader in worker.rings:
            reader.release()  # the pages of what the cell printed go back
        outcome = Outcome.from_dict(io.reply)
        return timed_out(outcome, timeout) if deadline.passed else outcome

    def _died(self, worker: WorkerProcess, io: CellIO, deadline: Deadline | None,
              memory_used: int | None = None) -> Outcome:
        """The worker is gone mid-cell: collect its last output, report, and replace it."""
        status = worker.wait(2.0)
        if status is None:
            worker.kill()
        io.drain_to_eof(DRAIN_AFTER_DEATH)
        io.flush_rest()
        why = worker.expected_exit
        if why is None:
            self._replace_dead(worker)
        if memory_used is None and self.memory is not None and why is None:
            memory_used = self.memory.exceeded(worker.pid)  # the kernel killed it at the limit
        return died_in_cell(why, worker.how_it_ended(), deadline,
                            self.memory.limit if self.memory is not None else None, memory_used)
