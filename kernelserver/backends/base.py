"""The small protocol every namespace backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..results import ErrorInfo


class OutputSink(Protocol):
    """Where a running cell's output goes (an Execution)."""

    def write_stdout(self, text: str) -> None:
        """Receive stdout text."""

    def write_stderr(self, text: str) -> None:
        """Receive stderr text."""

    def add_display(self, bundle: dict[str, Any]) -> None:
        """Receive one display's MIME bundle."""


@dataclass(frozen=True)
class KernelOutcome:
    """How a cell ended, as a backend reports it; output went to the sink already."""

    status: str
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    restarted: bool = False
    truncated: bool = False  # the repr limit cut the result or a display


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


class Kernel(Protocol):
    """One namespace's code runner: execute blocks and is only called from one thread at a time."""

    # True when any thread may drive a cell (the code runs elsewhere, interrupts are signals),
    # so the registry may run it on the request's own thread.
    runs_inline: bool

    def execute(self, code: str, execution_count: int, sink: OutputSink,
                timeout: float | None, repr_limit: int | None = None) -> KernelOutcome:
        """Run a cell to completion (or timeout), streaming its output into sink.

        repr_limit, when given, replaces the server's repr limit for this cell.
        """

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running cell; False when nothing is running."""

    def variables(self) -> list[dict[str, Any]]:
        """Name, type and short repr of each user variable."""

    def restart(self) -> None:
        """Replace the namespace with a fresh, empty one."""

    def details(self) -> dict[str, Any]:
        """Backend-specific facts for /env/get (pid, memory)."""

    def close(self) -> None:
        """Stop the namespace and release everything it holds."""
