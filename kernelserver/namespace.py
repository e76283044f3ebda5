"""One named namespace: a kernel started on its own thread, a FIFO of cells, and its watchers."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .backends.base import ExitReason, Kernel, NamespaceOptions
from .errors import ExecutionNotFound, NamespaceUnavailable, QueueFull
from .execution import Execution, utcnow_iso
from .history import History
from .namespaceinfo import NamespaceInfo
from .results import Cell, ErrorInfo, Finished, NamespaceState, Outcome, StateEvent
from .subscriptions import Hub, NamespaceEvent, NamespaceSubscription, Relay

log = logging.getLogger("kernelserver")
# A backend bounds its own start by start_timeout and says why it failed (no node had room...);
# callers wait this much longer, so that reason reaches them rather than a bare "did not start".
START_GRACE = 2.0
RESERVE_BLOCK = 64  # execution counts put on disk at once: one synchronous write per 64 cells


class Namespace:
    """One named namespace: its kernel, its queue of executions and the thread that runs them.

    The kernel starts on the namespace's own thread: until it is up the state is `starting`,
    cells queue, and everyone who asked for the namespace waits on the same start.
    """

    def __init__(self, namespace_id: str, start: Callable[[], Kernel], config: dict[str, Any],
                 history: History | None = None,
                 on_failed: Callable[[Namespace], None] | None = None,
                 options: NamespaceOptions | None = None) -> None:
        self.id = namespace_id
        self.config = config
        options = options or NamespaceOptions()
        # None: the server's setting (0 for none, or never).
        memory, cull = options.resources.memory, options.cull_idle_after
        self.memory_limit: int = config.get("memory_limit", 0) if memory is None else memory
        self.cull_idle_after: float = config.get("cull_idle_after", 0.0) if cull is None else cull
        self.syntax = options.syntax_in(config)
        self.kernel_name = options.kernel or "python3"  # kernelspecs.DEFAULT: the server's own
        self.created_at = utcnow_iso()
        self.last_activity = self.created_at
        self._active_at = time.monotonic()  # last_activity, on the clock idle culling reads
        self.history = history
        self.hub = Hub()
        self.kernel: Kernel | None = None  # None while starting
        self._start = start
        self._on_failed = on_failed
        self._started = threading.Event()  # the kernel is up, or will never be
        self._start_error: str | None = None
        # execution_count never repeats for an id: continue after what history holds, and
        # reserve numbers on disk (a block at a time) before they are handed out.
        self._next_count = (history.max_count(namespace_id) if history else 0) + 1
        self._reserved = self._next_count - 1
        self._lock = threading.Lock()
        self._queue: queue.Queue[Execution | None] = queue.Queue()
        self._executions: OrderedDict[int, Execution] = OrderedDict()
        self._current: Execution | None = None
        self._pending = 0  # submitted and not finished: queued, or running here or inline
        self._cancelled: set[int] = set()  # queued cells answered already, for the runner to skip
        self._run_lock = threading.Lock()  # held by whichever thread runs a cell
        self._closed = False
        self._runner = threading.Thread(target=self._main, name=f"ns-{namespace_id}", daemon=True)
        self._runner.start()

    @property
    def state(self) -> NamespaceState:
        """dead once closed, or while its process is dead (the next cell restarts it); starting
        until the kernel is up; busy while cells wait or run."""
        if self._closed:
            return "dead"
        kernel = self.kernel
        if kernel is None:
            return "starting"
        if self._pending:
            return "busy"
        return "idle" if kernel.is_alive() else "dead"

    @property
    def execution_count(self) -> int:
        """The number of the latest submitted execution (0 before any)."""
        return self._next_count - 1

    # -- start --

    def _main(self) -> None:
        try:
            kernel = self._start()
        except NamespaceUnavailable as exc:
            self._start_failed(str(exc))
            return
        except Exception as exc:  # a backend's failure to start is the namespace's, not ours
            self._start_failed(f"could not start namespace {self.id!r}: {exc}")
            return
        with self._lock:
            keep = not self._closed
            if keep:
                self.kernel = kernel
        self._started.set()
        if not keep:  # deleted, or given up on, while it started
            kernel.close()
            return
        self._run_loop()

    def wait_started(self, timeout: float) -> None:
        """Block until the kernel is up; NamespaceUnavailable if it failed or took over timeout s
        (and START_GRACE more, for the backend's own reason)."""
        if not self._started.wait(timeout + START_GRACE):
            self._start_failed(f"namespace {self.id!r} did not start within {timeout:g} s "
                               "(start_timeout); it was abandoned")
        with self._lock:
            error = self._start_error
        if error is not None:
            raise NamespaceUnavailable(error)

    def _start_failed(self, message: str) -> None:
        """The start failed or was given up on: fail queued cells, go away, then wake waiters."""
        with self._lock:
            if self.kernel is not None or self._start_error is not None:
                return  # up after all, or already failed
            self._start_error = message
            self._closed = True
        self._cancel_queued(Outcome.failed("NamespaceUnavailable", message))
        self.hub.publish(None, StateEvent("dead"))
        if self._on_failed is not None:
            self._on_failed(self)
        self._started.set()  # last: a caller retrying at once finds the id free, not this one

    # -- cells --

    def submit(self, cell: Cell, inline: bool = False, origin: object = None,
               stop_group: object = None) -> Execution:
        """Queue a cell; it runs after every cell submitted before it.

        origin says who sent it, for the front end that did (kept on the Execution). Cells of
        one stop_group (Jupyter's stop_on_error, by connection) still queued when one of them
        fails do not run: they are answered aborted before the next cell starts.

        With inline, a cell submitted to an idle namespace runs in the calling thread, which
        returns once it has finished: a caller that waits for the end anyway saves two thread
        hand-offs. Only backends whose cells run in another process allow it.
        """
        with self._lock:
            if self._closed:
                raise NamespaceUnavailable(f"namespace {self.id!r} is being deleted")
            if self._queue.qsize() >= self.config["max_queued"]:
                raise QueueFull.for_limit(self.id, self.config["max_queued"])
            cap = self.config["output_cap_bytes"] if cell.output_cap is None else cell.output_cap
            if self.history is not None and self._next_count > self._reserved:
                self._reserved = self._next_count + RESERVE_BLOCK - 1
                self.history.reserve(self.id, self._reserved)
            execution = Execution(self.id, self._next_count, cell, cap, hub=self.hub, origin=origin)
            execution.stop_group = stop_group
            self._next_count += 1
            self._executions[execution.execution_count] = execution
            self._forget_old()
            self._touch()
            if self.history is not None:
                self.history.record_submitted(self.id, execution.execution_count, cell.code,
                                              execution.submitted_at)
            kernel = self.kernel
            run_here = inline and self._pending == 0 and kernel is not None and kernel.runs_inline
            self._pending += 1
            if not run_here:
                self._queue.put(execution)
        if run_here:
            self._run_one(execution)
        return execution

    def _forget_old(self) -> None:
        keep = self.config["keep_executions"]
        while len(self._executions) > keep:
            oldest = next(iter(self._executions.values()))
            if not oldest.finished:
                break
            self._executions.popitem(last=False)

    def execution(self, n: int) -> Execution:
        """A kept execution by number, else ExecutionNotFound."""
        with self._lock:
            found = self._executions.get(n)
        if found is None:
            raise ExecutionNotFound(f"no execution {n} in namespace {self.id!r}")
        return found

    def _run_loop(self) -> None:
        while True:
            execution = self._queue.get()
            if execution is None:
                return
            self._run_one(execution)

    def _run_one(self, execution: Execution) -> None:
        with self._run_lock:
            with self._lock:
                cancelled = execution.execution_count in self._cancelled
                self._cancelled.discard(execution.execution_count)
                skip = cancelled or self._closed
                if not skip:
                    self._current = execution
            if skip:
                if not cancelled:  # a cancelled one was answered when it was cancelled
                    self._finish_early(execution, Outcome.failed(
                        "NamespaceDeleted", f"namespace {self.id!r} was deleted before the cell ran"))
            else:
                execution.start()
                kernel = self.kernel
                assert kernel is not None  # cells run only once the kernel is up
                try:
                    outcome = kernel.execute(execution.cell, execution.execution_count, execution)
                except NamespaceUnavailable as exc:  # deleted or restarted under the cell
                    outcome = Outcome.failed("NamespaceUnavailable", exc.message)
                except Exception as exc:  # a backend bug must not kill the runner
                    log.exception("internal error running cell %d of %r", execution.execution_count,
                                  self.id)
                    outcome = Outcome.failed("KernelServerError",
                                             f"internal error running the cell: {exc}")
                # Which cells the failure aborts is decided before it is answered: a cell its
                # client sends once it has the reply was not queued behind it, and runs.
                doomed = (self._abort_group(execution)
                          if outcome.status != "ok" and execution.stop_group is not None else [])
                execution.finish(outcome, self._record)
                for queued in doomed:
                    self._finish_early(queued, Outcome("interrupted", error=ErrorInfo(
                        "Aborted", f"cell {execution.execution_count}, sent before it by the "
                        "same client, failed (stop_on_error)", "")))
            with self._lock:
                self._current = None
                self._pending -= 1
                self._touch()

    def _abort_group(self, failed: Execution) -> list[Execution]:
        """Mark the queued cells of failed's stop group not to run; them, to answer aborted."""
        with self._lock:
            doomed = [e for e in self._executions.values() if e.stop_group is failed.stop_group
                      and e.status == "queued" and e.execution_count not in self._cancelled]
            self._cancelled.update(e.execution_count for e in doomed)
        return doomed

    def _record(self, final: Finished) -> None:
        """Commit a finished cell's row; finish() answers the cell only after this returns, so
        an answered cell is in history after a crash of the server (bounded: COMMIT_WAIT)."""
        if self.history is not None:
            self.history.commit_finished(final)

    def _finish_early(self, execution: Execution, outcome: Outcome) -> None:
        """Answer a cell that will not run, and record it."""
        execution.finish(outcome, self._record)

    def interrupt(self) -> bool:
        """Interrupt the running cell, else the first one accepted; True when one was."""
        # As Jupyter: with none running yet, the cell that would run next is the one meant (it
        # then never runs); the target is decided under the lock the runner takes a cell with.
        with self._lock:
            target = self._current
            if target is None or target.concluded:  # its end is decided: the runner tidies up
                target = next((e for e in self._executions.values() if e.status == "queued"
                               and e.execution_count not in self._cancelled), None)
            if target is None:
                return False
            kernel = self._claim(target)
        return self._stop(target, kernel, "the cell was interrupted before it ran")

    def cancel(self, execution: Execution) -> bool:
        """Stop this one execution: interrupt it if it runs, drop it if it waits; else False."""
        with self._lock:
            if execution.concluded or execution.execution_count in self._cancelled:
                return False
            kernel = self._claim(execution)
        return self._stop(execution, kernel, "the cell was cancelled before it ran")

    def _claim(self, execution: Execution) -> Kernel | None:
        """Under the lock: the kernel to interrupt a taken cell in; else None, marked to skip."""
        # The runner reads the mark under this lock before it takes a cell: it either skips it
        # or has taken it (then the kernel stops it by number, even before it starts).
        if self._current is execution and self.kernel is not None:
            return self.kernel
        self._cancelled.add(execution.execution_count)
        return None

    def _stop(self, execution: Execution, kernel: Kernel | None, why: str) -> bool:
        """Carry out _claim's decision, outside the lock."""
        if kernel is not None:
            return kernel.interrupt(execution.execution_count)
        self._finish_early(execution, Outcome("interrupted", error=ErrorInfo(
            "KeyboardInterrupt", why, "")))
        return True

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Completions at the cursor from the namespace's variables (none while it starts)."""
        kernel = self.kernel
        if kernel is None:
            return {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                    "cursor_end": cursor_pos, "metadata": {}}
        return kernel.complete(code, cursor_pos)

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        """What the name at the cursor is in the namespace (nothing while it starts)."""
        kernel = self.kernel
        if kernel is None:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return kernel.inspect(code, cursor_pos, detail_level)

    def subscribe(self) -> NamespaceSubscription:
        """Every event of every cell from now on, whoever submitted it."""
        return NamespaceSubscription(self.id, self.hub)

    def relay(self, callback: Callable[[NamespaceEvent], None]) -> Relay:
        """Every event of every cell from now on, handed to callback as it is published."""
        return Relay(self.hub, callback)

    # -- lifecycle --

    def restart(self) -> None:
        """Cancel what is queued, stop what runs, and give the namespace a fresh kernel."""
        self.wait_started(self.config["start_timeout"])
        assert self.kernel is not None
        self.hub.publish(None, StateEvent("restarting"))
        self._cancel_queued(Outcome.failed(
            "NamespaceRestarted", f"namespace {self.id!r} was restarted before the cell ran"))
        self.kernel.restart()
        self._touch()
        self.hub.publish(None, StateEvent("idle"))

    def stop_cells(self) -> Execution | None:
        """The server is stopping: queued cells will not run, the running one is interrupted;
        the running one, if any, to wait for."""
        self._cancel_queued(Outcome.failed(
            "ServerStopped", f"the server stopped before the cell ran in namespace {self.id!r}"))
        with self._lock:
            running = self._current
        if running is not None:
            self.interrupt()
        return running

    def _cancel_queued(self, outcome: Outcome) -> None:
        while True:
            try:
                execution = self._queue.get_nowait()
            except queue.Empty:
                return
            if execution is None:
                self._queue.put(None)
                return
            with self._lock:
                self._pending -= 1
                self._cancelled.discard(execution.execution_count)
            self._finish_early(execution, outcome)

    def _touch(self) -> None:
        self.last_activity = utcnow_iso()
        self._active_at = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since a cell last ran or came; 0 while one waits or runs, or while starting."""
        with self._lock:
            if self._closed or self.kernel is None or self._pending:
                return 0.0
            return time.monotonic() - self._active_at

    def close(self, timeout: float = 10.0, reason: ExitReason = ExitReason.DELETED) -> None:
        """Stop the runner and release the kernel; waits (bounded) for the running cell to end."""
        with self._lock:
            self._closed = True
            if self.kernel is None and self._start_error is None:
                self._start_error = f"namespace {self.id!r} was deleted while it started"
            kernel = self.kernel
        self._cancel_queued(Outcome.failed(
            "NamespaceDeleted", f"namespace {self.id!r} was deleted before the cell ran"))
        if kernel is not None:
            kernel.close(reason)
        self._queue.put(None)
        self._runner.join(timeout)
        if self.history is not None:
            # Every number handed out is in a row now (or queued for one): the next namespace
            # of this id continues right after the last, not after the reserved block.
            with self._lock:
                self.history.release(self.id, self._next_count - 1)
        self.hub.publish(None, StateEvent("dead"))

    def info(self, with_variables: bool = False) -> NamespaceInfo:
        """The namespace's state, counters, the backend's details and, if asked, its variables."""
        kernel = self.kernel
        current = self._current
        return NamespaceInfo(
            id=self.id, state=self.state, execution_count=self.execution_count,
            created_at=self.created_at, last_activity=self.last_activity,
            details=kernel.details() if kernel is not None else {},
            variables=(kernel.variables() if kernel is not None else []) if with_variables else None,
            memory_limit=self.memory_limit, cull_idle_after=self.cull_idle_after,
            syntax=self.syntax, kernel=self.kernel_name,
            running=current.execution_count if current is not None else None,
        )
