"""What a worker's exit or a cell's timeout means: the escalation, and the words and outcomes."""

from __future__ import annotations

import os
import signal

from ..results import Outcome
from .base import ExitReason, timeout_error


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


def size_text(count: int) -> str:
    """Bytes as people read them: 512 MiB, 1.5 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{count} bytes"


class Deadline:
    """A cell's timeout, escalated: interrupt at the deadline, kill if unanswered `grace` s later."""

    def __init__(self, now: float, timeout: float | None, grace: float) -> None:
        self.timeout = timeout
        self.grace = grace
        self.deadline = now + timeout if timeout is not None else None
        self.kill_at: float | None = None
        self.passed = False

    def interrupt_due(self, now: float) -> bool:
        """True once, when the deadline passes: interrupt the cell now (the kill is armed)."""
        if self.deadline is None or self.passed or now < self.deadline:
            return False
        self.passed = True
        self.kill_at = now + self.grace
        return True

    def kill_due(self, now: float) -> bool:
        """True when the interrupt went unanswered for the grace: kill the worker."""
        return self.kill_at is not None and now >= self.kill_at

    def wakes(self) -> list[float]:
        """The times the runner must wake at for this deadline."""
        return [t for t in (None if self.passed else self.deadline, self.kill_at) if t is not None]


def memory_exceeded_text(limit: int, used: int) -> str:
    """How a worker stopped at its memory limit ended, for a sentence about it."""
    return (f"went past the namespace's memory limit of {size_text(limit)} ({size_text(used)} in "
            "use) and was stopped")


def died_between_cells(how: str) -> str:
    """The note a cell gets in its stderr when the worker had died after the last cell."""
    return (f"[kernelserver: the worker process {how} after the last cell; the namespace was "
            "restarted empty for this one]\n")


def died_in_cell(why: ExitReason | None, how: str, deadline: Deadline | None,
                 memory_limit: int | None, memory_used: int | None) -> Outcome:
    """The cell's outcome when its worker is gone mid-cell, from the most telling reason."""
    if memory_used is not None and memory_limit is not None:
        return Outcome.failed(
            "MemoryLimitExceeded", f"the cell went past the namespace's memory limit of "
            f"{size_text(memory_limit)} ({size_text(memory_used)} in use): its processes were "
            "stopped and the namespace restarted empty", restarted=True)
    if deadline is not None and deadline.passed:
        return Outcome("timeout", error=timeout_error(deadline.timeout, None, deadline.grace),
                       restarted=True)
    if why is ExitReason.RESTARTED:
        return Outcome.failed("NamespaceRestarted", "the namespace was restarted while the cell "
                              "ran", restarted=True)
    if why is ExitReason.DELETED:
        return Outcome.failed("NamespaceDeleted", "the namespace was deleted while the cell ran")
    if why is ExitReason.STOPPED:
        return Outcome.failed("ServerStopped", "the server stopped while the cell ran, and the "
                              "cell did not stop at its interrupt: its worker was killed")
    return Outcome.failed("WorkerDied", f"the worker process {how} while running the cell; the "
                          "namespace was restarted empty", restarted=True)
