"""The lightweight backend: namespaces are dicts in the server process, output routed per thread.

Interrupts and timeouts are best-effort here: a KeyboardInterrupt is injected into the running
thread, which only sees it between bytecodes (a blocking C call finishes first), and nothing can
be killed. Use the process backend when that matters.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import io
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from ..errors import NamespaceUnavailable
from ..results import Cell, ErrorInfo, Outcome
from ..runner import introspect
from ..runner.executor import Executor
from .base import (
    ExitReason,
    NamespaceOptions,
    OutputSink,
    interrupted_before_start,
    refuse_other_pythons,
    refuse_placement,
    timed_out,
)

_Writer = Callable[[str], None]
_route: contextvars.ContextVar[tuple[_Writer, _Writer] | None] = contextvars.ContextVar(
    "kernelserver_route", default=None
)
_install_lock = threading.Lock()


class _RoutedStream(io.TextIOBase):
    """sys.stdout/sys.stderr stand-in: writes go to the current execution, else the real stream.

    A real text stream, as ipykernel's OutStream: writable, str only (bytes are a TypeError, as
    on the process backend's TextIOWrapper), writelines and print(file=...) work.
    """

    def __init__(self, original: Any, index: int) -> None:
        self._original = original
        self._index = index

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        route = _route.get()
        if route is None:
            return int(self._original.write(text))
        route[self._index](text)
        return len(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        if _route.get() is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"


def install_routing() -> None:
    """Put the routed streams on sys.stdout/sys.stderr once per process."""
    with _install_lock:
        if not isinstance(sys.stdout, _RoutedStream):
            sys.stdout = _RoutedStream(sys.stdout, 0)
        if not isinstance(sys.stderr, _RoutedStream):
            sys.stderr = _RoutedStream(sys.stderr, 1)


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Make exc_type raise in that thread at its next bytecode; None takes back one not raised yet."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None
    )
    return bool(done == 1)


def _ask(sink: OutputSink, prompt: str, password: bool) -> str:
    """input() on the cell's own thread: wait for the client's line (an interrupt still lands)."""
    answered = threading.Event()
    box: list[str] = []

    def reply(value: str) -> None:
        box.append(value)
        answered.set()

    sink.request_input(prompt, password, reply)
    while not answered.wait(0.05):  # short waits: an injected KeyboardInterrupt needs bytecode
        pass
    return box[0]


def ipython_shell_taken() -> bool:
    """True when this process has an IPython shell already (IPython allows one)."""
    if "IPython" not in sys.modules:
        return False
    from IPython.core.interactiveshell import InteractiveShell

    return bool(InteractiveShell.initialized())


class InProcessKernel:
    """A namespace in the server process: an Executor run on the caller's (runner) thread."""

    runs_inline = False  # interrupts target the runner thread; user code must stay on it

    def __init__(self, repr_limit: int, syntax: str = "python") -> None:
        install_routing()
        # This process must never open a plot window; figures come back as displays.
        os.environ.setdefault("MPLBACKEND", "module://kernelserver.runner.mpl_backend")
        self.repr_limit = repr_limit
        self.syntax = syntax
        self._sink: OutputSink | None = None
        self._executor = self._new_executor()
        # Under _lock: the thread running cell _running (the only one an interrupt is raised
        # in), the latest cell started, and an interrupt for a cell not started yet.
        self._lock = threading.Lock()
        self._running_thread: int | None = None
        self._running: int | None = None
        self._started = 0
        self._early: int | None = None

    def _new_executor(self) -> Executor:
        return Executor(repr_limit=self.repr_limit, on_display=self._display,
                        syntax="ipython" if self.syntax == "ipython" else "python",
                        on_clear=self._clear, on_value=self._value)

    def _display(self, bundle: dict[str, Any], *, display_id: str | None = None,
                 update: bool = False, metadata: dict[str, Any] | None = None) -> None:
        if self._sink is not None:
            self._sink.add_display(bundle, display_id, update)

    def _clear(self, wait: bool) -> None:
        if self._sink is not None:
            self._sink.clear_output(wait)

    def _value(self, bundle: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.publish_value(bundle)

    def execute(self, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        """Run the cell on this thread with its output routed to sink."""
        with self._lock:
            self._started = max(self._started, execution_count)
            early, self._early = self._early, None
            if early == execution_count:
                return interrupted_before_start()
            self._running_thread = threading.get_ident()
            self._running = execution_count
        # From here an interrupt may land at any bytecode until the loop below takes it back:
        # no call (where one could land) stands outside a try that catches it.
        timeout = cell.timeout
        expired = threading.Event()
        timer: threading.Timer | None = None
        token = None
        outcome: Outcome | None = None
        try:
            self._sink = sink
            token = _route.set((sink.write_stdout, sink.write_stderr))
            if timeout is not None:
                def expire() -> None:
                    expired.set()
                    self.interrupt(execution_count)

                timer = threading.Timer(timeout, expire)
                timer.daemon = True
                timer.start()
            stdin = functools.partial(_ask, sink) if cell.allow_stdin else None
            outcome = self._executor.run(cell.code, execution_count, cell.repr_limit, stdin)
            if cell.user_expressions:
                outcome = replace(outcome,
                                  user_expressions=self._executor.evaluate(cell.user_expressions))
        except KeyboardInterrupt:
            pass  # it landed just outside the cell's own try block: answered below
        landed = False
        while True:
            try:
                with self._lock:
                    thread, self._running_thread, self._running = self._running_thread, None, None
                    if thread is not None:
                        _raise_in_thread(thread, None)  # one injected, not raised yet
                break
            except KeyboardInterrupt:  # raised before it could be taken back
                landed = True
        if outcome is None or (landed and outcome.status == "ok"):
            # Interrupted outside the cell's code (even as it ended: the interrupt said true).
            outcome = Outcome("interrupted", error=ErrorInfo("KeyboardInterrupt", "", ""),
                              truncated=self._executor.truncated)
        if timer is not None:
            timer.cancel()
        if token is not None:
            _route.reset(token)
        self._sink = None
        return timed_out(outcome, timeout) if expired.is_set() else outcome

    def interrupt(self, execution_count: int) -> bool:
        """KeyboardInterrupt in that cell's thread, or at its start; False once it has ended."""
        with self._lock:
            if self._running == execution_count and self._running_thread is not None:
                return _raise_in_thread(self._running_thread, KeyboardInterrupt)
            if execution_count > self._started:
                self._early = execution_count  # execute() answers it without running it
                return True
            return False

    def _interrupt_running(self) -> None:
        """Whatever cell runs now (a restart or close)."""
        with self._lock:
            if self._running_thread is not None:
                _raise_in_thread(self._running_thread, KeyboardInterrupt)

    def is_alive(self) -> bool:
        """Always: it lives as long as the server."""
        return True

    def variables(self) -> list[dict[str, Any]]:
        """The namespace's user variables."""
        return self._executor.variables()

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Completions from the namespace."""
        return introspect.complete(self._executor.namespace, code, cursor_pos)

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        """What the name at the cursor is."""
        return introspect.inspect_name(self._executor.namespace, code, cursor_pos, detail_level)

    def restart(self) -> None:
        """Drop the namespace dict for a fresh one."""
        self._interrupt_running()
        self._executor.close()  # first: its IPython shell is the process's one
        self._executor = self._new_executor()

    def details(self) -> dict[str, Any]:
        """No process of its own: nothing to add."""
        return {}

    def close(self, reason: ExitReason = ExitReason.DELETED) -> None:
        """Interrupt anything running and clear the namespace."""
        self._interrupt_running()
        self._executor.close()


class InProcessBackend:
    """Makes InProcessKernels."""

    name: ClassVar[str] = "inprocess"
    # Every namespace in the server's process, and IPython has one shell per process: a
    # namespace gets IPython syntax only when it asks (the first alone could have it).
    default_syntax: ClassVar[str | None] = "python"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def healthy(self) -> bool:
        """Always: cells run in this process."""
        return True

    def validate(self, options: NamespaceOptions) -> None:
        """CPUs and GPUs are placed by the ray backend; here every namespace shares the box."""
        refuse_placement(options, "inprocess", limits_memory=False)
        refuse_other_pythons(options, "inprocess")

    def cluster(self) -> dict[str, Any] | None:
        """Not a cluster."""
        return None

    def memory_limit_method(self) -> str:
        """None: namespaces share the server's memory."""
        return "none"

    def start_kernel(self, namespace_id: str, options: NamespaceOptions) -> InProcessKernel:
        """A fresh namespace dict (nothing to wait for)."""
        limit = options.resources.memory
        if limit is None:
            limit = self.config.get("memory_limit", 0)
        if limit:
            raise NamespaceUnavailable(
                "the inprocess backend runs namespaces inside the server and cannot limit their "
                "memory; use the process backend, or no memory_limit")
        # One process for every namespace, and IPython has one shell per process: only a
        # namespace that asks gets it (the setting's default would give it to the first alone).
        syntax = options.syntax or self.default_syntax or "python"
        if syntax == "ipython" and ipython_shell_taken():
            raise NamespaceUnavailable(
                "the inprocess backend runs every namespace in the server's process, where IPython "
                "allows one shell, and another namespace has it: create this one with syntax "
                "'python', or use the process backend")
        return InProcessKernel(self.config["repr_limit_bytes"], syntax)

    def close(self) -> None:
        """Nothing shared to release."""
