"""The execution result: one frozen dataclass used by server, worker protocol and client."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import CellError

STATUSES = ("queued", "running", "ok", "error", "interrupted", "timeout")
FINISHED = frozenset({"ok", "error", "interrupted", "timeout"})


@dataclass(frozen=True)
class ErrorInfo:
    """What went wrong in a cell: exception name, its message, and the formatted traceback."""

    ename: str
    evalue: str
    traceback: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        """Build from the JSON form."""
        return cls(str(data["ename"]), str(data["evalue"]), str(data["traceback"]))


@dataclass(frozen=True)
class ExecutionResult:
    """The state of one execution: finished, or running with the output so far."""

    id: str
    execution_count: int
    status: str
    stdout: str = ""
    stderr: str = ""
    result: dict[str, Any] | None = None
    displays: tuple[dict[str, Any], ...] = ()
    error: ErrorInfo | None = None
    truncated: bool = False
    restarted: bool = False
    started_at: str | None = None
    duration_ms: float | None = None
    code: str = field(default="", repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the cell finished without an error."""
        return self.status == "ok"

    @property
    def finished(self) -> bool:
        """True once the execution will not change any more."""
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """The JSON form pinned in DESIGN.md section 3 (the code is not echoed)."""
        return {
            "id": self.id,
            "execution_count": self.execution_count,
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "result": self.result,
            "displays": list(self.displays),
            "error": self.error.to_dict() if self.error else None,
            "truncated": self.truncated,
            "restarted": self.restarted,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        """Build from the JSON form; unknown keys are ignored so newer servers stay readable."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["displays"] = tuple(values.get("displays") or ())
        if values.get("error"):
            values["error"] = ErrorInfo.from_dict(values["error"])
        return cls(**values)

    def with_changes(self, **changes: Any) -> ExecutionResult:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def wait(self, timeout: float | None = None) -> ExecutionResult:
        """The finished result, long-polling the server if this one is still running."""
        if self.finished:
            return self
        namespace = getattr(self, "_namespace", None)
        if namespace is None:
            raise RuntimeError("this result did not come from a Client; nothing to poll")
        result: ExecutionResult = namespace.wait_for(self.execution_count, timeout)
        return result

    def raise_for_error(self) -> ExecutionResult:
        """Raise CellError with the remote traceback unless the cell finished ok; else return self."""
        if self.status == "ok":
            return self
        if self.error is not None:
            raise CellError(
                f"cell {self.execution_count} in {self.id!r} {self.status}: "
                f"{self.error.ename}: {self.error.evalue}\n{self.error.traceback}",
                ename=self.error.ename,
            )
        raise CellError(f"cell {self.execution_count} in {self.id!r} is {self.status}")
