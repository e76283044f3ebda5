"""A namespace backed by any Jupyter kernelspec (IRkernel, bash_kernel, ...) through jupyter_client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, cast

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.channels import ZMQSocketChannel
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from ..errors import NamespaceUnavailable
from ..results import Cell, Outcome
from ..runner.display import recording_cuts
from . import proctree
from .base import ExitReason, OutputSink, interrupted_before_start, timed_out
from .jupytercell import CellRun
from .memory import proc_kib
from .policy import Deadline, describe_status, died_between_cells, died_in_cell

log = logging.getLogger("kernelserver")

STARTUP_TIMEOUT = 60.0  # R and Julia take seconds to load on a busy machine
SHUTDOWN_WAIT = 3.0  # after shutdown_request: SIGTERM at half of it, SIGKILL at the end
QUERY_TIMEOUT = 2.0  # a kernel's shell answers complete/inspect only between cells
QUERY_ANSWER = 10.0  # no cell runs: an answer comes, if slowly (ipykernel's first jedi completion)
ALIVE_POLL = 0.5  # how often a running cell checks that its kernel's process still runs
INPUT_POLL = 0.05  # while input() waits: how soon the client's line goes out
LOOP_CALL = 10.0  # a KernelManager call other than start and shutdown


class LenientKernelSpec(KernelSpec):
    """A KernelSpec that drops kernel.json fields it does not know (bash_kernel's codemirror_mode)."""

    # traitlets warns of each one (an error under -W error, as in the tests).
    def __init__(self, **fields: Any) -> None:
        super().__init__(**{k: v for k, v in fields.items() if k in self.class_trait_names()})


# Run before the kernel's own program, in the process that becomes the kernel (exec keeps its
# pid): SIGKILL when the server's thread that started it dies, even by SIGKILL, so no kernel
# outlives a killed server. Our own workers get the same from proctree.die_with_parent.
_DIE_WITH_SERVER = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n"
                    "if os.getppid() != int(sys.argv[1]): sys.exit('kernelserver: the server is gone')\n"
                    "os.execvp(sys.argv[2], sys.argv[2:])")


class _KernelManager(AsyncKernelManager):
    """jupyter_client's manager, whose kernels die with the server's process."""

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """The kernelspec's command, run through _DIE_WITH_SERVER."""
        return [sys.executable, "-I", "-S", "-c", _DIE_WITH_SERVER, str(os.getpid()),
                *super().format_kernel_cmd(extra_arguments)]


class KernelLoop:
    """An asyncio loop on a thread of its own, where every KernelManager call runs."""

    # jupyter_client's blocking manager runs each call on an event loop it keeps per calling
    # thread and never closes; the server calls from many request threads, so all come here.
    def __init__(self) -> None:
        self._loop, self._closed = asyncio.new_event_loop(), False
        self._thread = threading.Thread(target=self._loop.run_forever, name="jupyter-kernels", daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """Run make() on the loop and wait: TimeoutError past timeout, RuntimeError once closed."""
        if self._closed:
            raise RuntimeError("the kernel loop is closed")
        future = asyncio.run_coroutine_threadsafe(cast(Coroutine[Any, Any, Any], make()), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the kernel manager in {timeout:g} s") from None

    def close(self) -> None:
        """Stop the loop and its thread (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()


class _Instance:
    """One kernel process: its manager, and the client that talks to it."""

    def __init__(self, km: AsyncKernelManager) -> None:
        self.km = km
        self.process: Any = getattr(km.provisioner, "process", None)  # a LocalProvisioner's Popen
        self.pid: int | None = getattr(self.process, "pid", None)
        self.client = BlockingKernelClient()
        self.client.load_connection_info(km.get_connection_info())
        self.client.start_channels(shell=True, iopub=True, stdin=True, hb=False, control=False)
        # Held by whoever uses the client's sockets: the running cell, or a complete or inspect.
        self.lock = threading.Lock()
        self.info: dict[str, Any] = {}  # its kernel_info_reply
        self.expected_exit: ExitReason | None = None  # set when the server stops it
        self.stopped = self.failed = False


def _reply(channel: ZMQSocketChannel, msg_id: str, timeout: float) -> dict[str, Any] | None:
    """The reply to msg_id within timeout (others are stale: dropped), else None."""
    until, socket = time.monotonic() + timeout, cast(zmq.Socket, channel.socket)
    while socket.poll(max(0, int((until - time.monotonic()) * 1000))):
        if (msg := channel.get_msg(timeout=0))["parent_header"].get("msg_id") == msg_id:
            return msg
    return None


def _how_it_ended(process: Any) -> str:
    """'exited with code 1' or 'was killed by SIGKILL', from a Popen (its code as a wait status)."""
    code = process.poll() if process is not None else None
    return "stopped answering" if code is None else describe_status(-code if code < 0 else code << 8)


class JupyterClientKernel:
    """A namespace in a kernel of one kernelspec, started and restarted by jupyter_client."""

    runs_inline = True  # the code runs in the kernel's process; interrupts go through its manager

    def __init__(self, kernel_name: str, repr_limit: int = 1024 * 1024, interrupt_grace: float = 5.0,
                 startup_timeout: float = STARTUP_TIMEOUT, loop: KernelLoop | None = None,
                 specs: KernelSpecManager | None = None) -> None:
        self.kernel_name, self.repr_limit = kernel_name, repr_limit
        self.interrupt_grace, self.startup_timeout = interrupt_grace, startup_timeout
        self.specs = specs or KernelSpecManager(kernel_spec_class=LenientKernelSpec)
        self._own_loop, self._loop = loop is None, loop or KernelLoop()
        self._lifecycle, self._closing = threading.Lock(), False
        # Under _cells: the cell sent to a kernel (until its end), whether an interrupt went
        # out to it, one interrupted before it was sent, and the latest cell that has ended.
        self._cells = threading.Lock()
        self._running: tuple[_Instance, int] | None = None
        self._interrupted, self._ended = False, 0
        self._early: int | None = None
        try:
            self._instance: _Instance | None = self._start()
        except BaseException:
            if self._own_loop:
                self._loop.close()
            raise

    def _start(self) -> _Instance:
        km = _KernelManager(kernel_name=self.kernel_name, shutdown_wait_time=SHUTDOWN_WAIT,
                                kernel_spec_manager=self.specs)
        try:
            self._loop.call(km.start_kernel, self.startup_timeout)
        except Exception as exc:  # NoSuchKernel says only the name; OSError, a program not found
            with contextlib.suppress(Exception):  # one launched, but too slowly: not to outlive this
                self._loop.call(lambda: km.shutdown_kernel(now=True), SHUTDOWN_WAIT + 5.0)
            why = "no such kernelspec is installed" if isinstance(exc, NoSuchKernel) else str(exc)
            raise NamespaceUnavailable(f"the {self.kernel_name} kernel did not start: {why}") from None
        instance = _Instance(km)
        client, until = instance.client, time.monotonic() + self.startup_timeout
        while time.monotonic() < until and self._alive(instance):
            reply = _reply(client.shell_channel, client.kernel_info(), 1.0)
            # Its busy/idle shows the iopub subscription is live (output before it would be lost).
            if reply is not None and client.iopub_channel.socket.poll(500):
                instance.info = reply["content"]
                return instance
        how = _how_it_ended(instance.process).replace("stopped answering", "did not answer in time")
        self._stop(instance, polite=False)
        raise NamespaceUnavailable(f"the {self.kernel_name} kernel {how} as it started")

    def _stop(self, instance: _Instance, polite: bool) -> None:
        """Shut the kernel down (bounded), kill what it left behind, and close its client."""
        instance.stopped = True
        # Found before the kernel goes: its orphans leave the tree. A shell in a pty (bash_kernel)
        # leads a session of its own, with the jobs it started.
        sessions = proctree.sessions_below(instance.pid) if instance.pid else set()
        try:
            self._loop.call(lambda: instance.km.shutdown_kernel(now=not polite), SHUTDOWN_WAIT + 5.0)
        except Exception as exc:  # a stuck manager must not keep the namespace's process alive
            log.warning("jupyter kernel %s: shutdown failed (%s); killing it", instance.pid, exc)
        # jupyter_client starts a kernel in a session of its own, which a polite exit leaves to its
        # jobs and workers; a session outlives its leader while they run, so its id is no one
        # else's. Killed and waited for: a delete that answers has ended them.
        proctree.kill_sessions(sessions)
        if instance.lock.acquire(blocking=False):  # else its holder closes the client when done
            instance.client.stop_channels()  # as often as asked: it closes what is still open
            instance.lock.release()

    def _alive(self, instance: _Instance) -> bool:
        if instance.stopped:
            return False
        if instance.process is not None:  # a local kernel: its Popen says, without a hop to the loop
            return bool(instance.process.poll() is None)
        try:
            return bool(self._loop.call(instance.km.is_alive, LOOP_CALL))
        except (TimeoutError, RuntimeError) as exc:  # closed; or busy: asked again on the next poll
            return isinstance(exc, TimeoutError)

    def is_alive(self) -> bool:
        """True while the kernel's process runs."""
        return (instance := self._instance) is not None and self._alive(instance)

    def _renew(self, why: ExitReason | None, polite: bool) -> _Instance:
        """Under _lifecycle: stop the kernel (if any), then start a fresh one in its place."""
        old, self._instance = self._instance, None
        if old is not None:
            old.expected_exit = old.expected_exit or why
            self._stop(old, polite)
        self._instance = self._start()
        return self._instance

    def restart(self) -> None:
        """Replace the kernel with a fresh one; the old one is gone before the new one starts."""
        with self._lifecycle:
            self._renew(ExitReason.RESTARTED, polite=True)

    def close(self, reason: ExitReason = ExitReason.DELETED) -> None:
        """Stop the kernel for good (escalating, bounded) and release its sockets."""
        with self._lifecycle:
            self._closing, old, self._instance = True, self._instance, None
        if old is not None:
            old.expected_exit = reason
            self._stop(old, polite=True)
        if self._own_loop:
            self._loop.close()

    def _query(self, send: Callable[[BlockingKernelClient], str]) -> dict[str, Any] | None:
        if (instance := self._instance) is None or not instance.lock.acquire(timeout=QUERY_TIMEOUT):
            return None
        try:
            shell = instance.client.shell_channel
            while not instance.stopped and shell.msg_ready():
                shell.get_msg(timeout=0)  # late replies to queries that timed out
            reply = None if instance.stopped else _reply(shell, send(instance.client), QUERY_ANSWER)
        finally:
            if instance.stopped:
                instance.client.stop_channels()  # stopped while this query held the client
            instance.lock.release()
        return dict(reply["content"]) if reply and reply["content"].get("status") == "ok" else None

    def variables(self) -> list[dict[str, Any]]:
        """None: the Jupyter protocol has no request for a kernel's variables."""
        return []

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """The kernel's complete_reply (none while a cell runs past QUERY_TIMEOUT)."""
        found = self._query(lambda c: cast(str, c.complete(code, cursor_pos)))
        return found or {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                         "cursor_end": cursor_pos, "metadata": {}}

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        """The kernel's inspect_reply (not found while a cell runs past QUERY_TIMEOUT)."""
        found = self._query(lambda c: cast(str, c.inspect(code, cursor_pos, detail_level)))
        return found or {"status": "ok", "found": False, "data": {}, "metadata": {}}

    def details(self) -> dict[str, Any]:
        """The kernel's pid, its resident memory, and what it is (its kernel_info)."""
        pid, info = (instance.pid, instance.info) if (instance := self._instance) else (None, {})
        rss = proc_kib(f"/proc/{pid}/status", "VmRSS:") if pid else None
        return {"pid": pid, "memory_rss": rss * 1024 if rss is not None else None,
                "language_info": info.get("language_info", {}),
                **{key: info.get(key) for key in ("implementation", "implementation_version")}}

    def interrupt(self, execution_count: int) -> bool:
        """Interrupt that cell in the kernel, or before it is sent there; False once it ended."""
        with self._cells:
            running = self._running
            if running is None or running[1] != execution_count:
                if execution_count <= self._ended:
                    return False
                self._early = execution_count  # execute() answers it without sending it
                return True
            # Under the lock: the next cell is not sent before this interrupt has gone out, and
            # the cell's end (which may come before the call returns) reads the flag after it.
            try:
                self._loop.call(running[0].km.interrupt_kernel, LOOP_CALL)
                self._interrupted = True
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.warning("jupyter kernel %s: interrupt failed (%s)", running[0].pid, exc)
            return self._interrupted

    def execute(self, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        """Run a cell in the kernel, forwarding its output as it comes; handles timeout and death."""
        with self._lifecycle:
            if self._closing:
                raise NamespaceUnavailable("the namespace is shutting down")
            dead = (instance := self._instance) is not None and not self._alive(instance)
            if instance is not None and dead:
                sink.write_stderr(died_between_cells(_how_it_ended(instance.process)))
            if instance is None or dead:  # died, or a restart could not start the new one
                instance = self._renew(None, polite=False)
        try:
            with instance.lock:
                outcome = self._run(instance, cell, execution_count, sink)
                if instance.stopped:
                    instance.client.stop_channels()  # stopped while the cell still ran
        finally:
            with self._cells:
                self._running, self._ended = None, max(self._ended, execution_count)
        if instance.failed:  # it died or hung in the cell: a fresh one now (else the next cell tries)
            with self._lifecycle, contextlib.suppress(NamespaceUnavailable):
                if self._instance is instance and not self._closing:
                    self._renew(None, polite=False)
        return replace(outcome, restarted=True) if dead else outcome

    def _run(self, instance: _Instance, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        with self._cells:
            early, self._early = self._early, None
            if early == execution_count:
                return interrupted_before_start()
            self._running, self._interrupted = (instance, execution_count), False
        client = instance.client
        if instance.stopped:  # stopped before the cell could start
            return died_in_cell(instance.expected_exit, "was stopped", None, None, None)
        msg_id = cast(str, client.execute(cell.code, silent=False, store_history=True,
                                          user_expressions=cell.user_expressions or {},
                                          allow_stdin=cell.allow_stdin, stop_on_error=False))
        run = CellRun(msg_id, sink, cell, cell.repr_limit or self.repr_limit)
        channels = {name: getattr(client, f"{name}_channel") for name in ("iopub", "shell", "stdin")}
        poller = zmq.Poller()
        for channel in channels.values():
            poller.register(channel.socket, zmq.POLLIN)
        deadline = Deadline(time.monotonic(), cell.timeout, self.interrupt_grace)
        next_check = time.monotonic() + ALIVE_POLL
        with recording_cuts() as cuts:
            # Output ends with iopub's idle after the reply (bounded: a dropped idle must not hang).
            while not (run.reply is not None and (run.idle or time.monotonic() > run.replied)):
                now = time.monotonic()
                if deadline.interrupt_due(now):
                    self.interrupt(execution_count)
                if run.reply is None and (deadline.kill_due(now) or (
                        now >= next_check and not self._alive(instance))):
                    # Dead, or hung past the grace: replaced once this cell lets go of the client.
                    why, instance.failed = instance.expected_exit, instance.expected_exit is None
                    return died_in_cell(why, _how_it_ended(instance.process), deadline, None, None)
                next_check = now + ALIVE_POLL if now >= next_check else next_check
                while not run.answers.empty():  # the client's lines: sent from the socket's thread
                    run.asking = False
                    client.input(run.answers.get())
                wait = min([next_check] + deadline.wakes()) - now
                wait = min(wait, INPUT_POLL) if run.asking else wait
                ready = dict(poller.poll(max(int(wait * 1000), 0) + 1))
                for name, channel in channels.items():
                    while channel.socket in ready and channel.msg_ready():
                        run.take(channel.get_msg(timeout=0), name, client)
        with self._cells:  # an interrupt on its way out when the kernel answered it: its flag set
            interrupted = self._interrupted
        outcome = run.outcome(interrupted, bool(cuts))
        return timed_out(outcome, cell.timeout) if deadline.passed else outcome
