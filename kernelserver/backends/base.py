"""What every namespace backend implements: a Backend that starts Kernels, and the Kernel itself."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..errors import BadRequest
from ..results import Cell, ErrorInfo, Outcome


class ExitReason(enum.Enum):
    """Why the server itself stops a kernel's process (as jupyter_client's _ShutdownStatus)."""

    DELETED = "deleted"
    RESTARTED = "restarted"
    STOPPED = "stopped"  # the server is shutting down


class OutputSink(Protocol):
    """Where a running cell's output goes (an Execution)."""

    def write_stdout(self, text: str) -> None:
        """Receive stdout text."""

    def write_stderr(self, text: str) -> None:
        """Receive stderr text."""

    def add_display(self, bundle: dict[str, Any], display_id: str | None = None,
                    update: bool = False) -> None:
        """Receive one display's MIME bundle (update: new data for the displays shown with display_id)."""

    def clear_output(self, wait: bool = False) -> None:
        """The cell cleared its output; with wait, the clearing happens when the next output comes."""

    def publish_value(self, bundle: dict[str, Any]) -> None:
        """The cell's value, before the figures it drew (the answer's result carries it too)."""

    def request_input(self, prompt: str, password: bool, reply: Callable[[str], None]) -> None:
        """The cell waits in input(): pass the line to reply() once the client gives it."""


@dataclass(frozen=True)
class Resources:
    """What a namespace asks its backend to reserve for it (None: the backend's default)."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None  # bytes: reserved where a backend places namespaces, and the limit

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: v for k, v in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus),
                                  ("memory", self.memory)) if v is not None}


SYNTAXES = ("ipython", "python")  # what a namespace's cells may be written in


@dataclass(frozen=True)
class NamespaceOptions:
    """Per-namespace options, handed to the backend with the id when it starts the kernel."""

    resources: Resources = field(default_factory=Resources)
    cull_idle_after: float | None = None  # seconds idle before it is deleted; 0 never
    syntax: str | None = None  # "ipython" or "python"; None: the server's setting
    kernel: str | None = None  # the environment's name (kernelspecs.py); None: the server's own
    python: str | None = None  # its interpreter, as the service found it; None: the server's
    jupyter: bool = False  # kernel is a Jupyter kernel run as itself (jupyterkernel.py), not our worker

    def syntax_in(self, config: dict[str, Any]) -> str:
        """The syntax this namespace's cells are written in, under the server's settings."""
        return self.syntax or config.get("syntax", "python")


def timeout_error(timeout: float | None, interrupted: ErrorInfo | None, killed_after: float | None = None
                  ) -> ErrorInfo:
    """The TimeoutError of a cell that ran past its timeout; its traceback shows where it was."""
    shown = f"{timeout:g}" if timeout is not None else "?"
    if killed_after is None:
        evalue = f"cell exceeded its timeout of {shown} s and was interrupted"
    else:
        evalue = (f"cell exceeded its timeout of {shown} s and did not stop within {killed_after:g} s "
                  "of its interrupt; the worker was killed and the namespace restarted empty")
    where = interrupted.traceback if interrupted else ""
    lines = where.rstrip("\n").split("\n") if where else []
    if lines and lines[-1].startswith("KeyboardInterrupt"):
        lines.pop()
    traceback = "\n".join(lines + [f"TimeoutError: {evalue}"]) + "\n"
    return ErrorInfo("TimeoutError", evalue, traceback)


def interrupted_before_start() -> Outcome:
    """The answer for a cell whose interrupt came before it started: it did not run."""
    return Outcome("interrupted", error=ErrorInfo(
        "KeyboardInterrupt", "the cell was interrupted before it started", ""))


def timed_out(outcome: Outcome, timeout: float | None) -> Outcome:
    """The answer for a cell whose deadline passed: a timeout, unless it failed on its own first."""
    if outcome.status not in ("interrupted", "ok"):
        return outcome
    return Outcome("timeout", error=timeout_error(timeout, outcome.error), truncated=outcome.truncated)


class Kernel(Protocol):
    """One namespace's code runner: execute blocks and is only called from one thread at a time."""

    # True when any thread may drive a cell (the code runs elsewhere, interrupts are signals),
    # so the registry may run it on the request's own thread.
    runs_inline: bool

    def execute(self, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        """Run a cell to completion (or its timeout), streaming its output into sink."""

    # Aimed by number, never at another cell: one not started yet is kept, and execute()
    # answers it interrupted without running it.
    def interrupt(self, execution_count: int) -> bool:
        """KeyboardInterrupt in that cell, running or not started yet; False once it has ended."""

    def is_alive(self) -> bool:
        """False once the namespace's process died (the next cell starts a new one)."""

    def variables(self) -> list[dict[str, Any]]:
        """Name, type and short repr of each user variable."""

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Jupyter's complete_reply content (answered while a cell runs)."""

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        """Jupyter's inspect_reply content (answered while a cell runs)."""

    def restart(self) -> None:
        """Replace the namespace with a fresh, empty one."""

    def details(self) -> dict[str, Any]:
        """Backend-specific facts for /env/get (pid, memory)."""

    def close(self, reason: ExitReason = ExitReason.DELETED) -> None:
        """Stop the namespace and release everything it holds; reason says why to a running cell."""


class Backend(Protocol):
    """Makes the kernels of one server; one instance per app, built from the server's settings."""

    name: ClassVar[str]
    default_syntax: ClassVar[str | None]  # a namespace's syntax unless it asks; None: the setting

    def start_kernel(self, namespace_id: str, options: NamespaceOptions) -> Kernel:
        """A started kernel for a new namespace (blocks until it can run a cell)."""

    def healthy(self) -> bool:
        """True when a cell can run now (what /health reports)."""

    def memory_limit_method(self) -> str:
        """How it keeps namespaces' memory limits ('cgroup v2', 'watchdog', ...; 'none')."""

    def validate(self, options: NamespaceOptions) -> None:
        """Refuse (BadRequest) what this backend cannot give a namespace, before it is made."""

    def cluster(self) -> dict[str, Any] | None:
        """The cluster's nodes and resources, where namespaces are placed on one (else None)."""

    def close(self) -> None:
        """Release what the backend shares between its kernels."""


def refuse_other_pythons(options: NamespaceOptions, backend: str) -> None:
    """BadRequest when a namespace asks for another environment of a backend that runs only the
    server's own (the process backend forks workers in any, and starts Jupyter kernels)."""
    if options.jupyter:
        raise BadRequest(f"kernel {options.kernel!r} is a Jupyter kernel, which the process "
                         f"backend starts; this server runs the {backend} backend")
    if options.python is not None:
        raise BadRequest(f"kernel {options.kernel!r} runs another Python, which the process "
                         f"backend starts; this server runs the {backend} backend")


def refuse_placement(options: NamespaceOptions, backend: str, limits_memory: bool) -> None:
    """BadRequest when a namespace asks for CPUs or GPUs of a backend that shares one box."""
    asked = [name for name in ("num_cpus", "num_gpus")
             if getattr(options.resources, name) is not None]
    if asked:
        raise BadRequest(f"resources {', '.join(asked)} need the ray backend, which places "
                         f"namespaces on a cluster; this server runs the {backend} backend"
                         + (" (a memory limit works here)" if limits_memory else ""))
