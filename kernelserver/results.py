"""What a cell gives back, in one set of frozen types shared by server, worker protocol and client.

`Outcome` is how a cell ended (executor → worker reply → backend → execution); `ExecutionResult`
is an execution as the API answers it; `Finished` is one the server keeps, its output in pieces;
the `*Event` classes are what a stream carries, each with its wire form in `to_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, Protocol

from .encoding import Text
from .errors import CellError

Status = Literal["queued", "running", "ok", "error", "interrupted", "timeout"]
STATUSES: tuple[Status, ...] = ("queued", "running", "ok", "error", "interrupted", "timeout")
FINISHED = frozenset({"ok", "error", "interrupted", "timeout"})
NamespaceState = Literal["starting", "idle", "busy", "dead"]


class ResultSource(Protocol):
    """Where a running result can be waited for: the client's Namespace."""

    def wait_for(self, n: int, timeout: float | None = None) -> ExecutionResult:
        """Execution n once finished (or as it is after timeout seconds)."""
        ...


@dataclass(frozen=True)
class ErrorInfo:
    """What went wrong in a cell: exception name, message, formatted traceback; read it by
    attribute (error.ename) or, like its JSON, by key (error["ename"], .get(), in, dict())."""

    ename: str
    evalue: str
    traceback: str
    _KEYS: ClassVar[tuple[str, ...]] = ("ename", "evalue", "traceback")

    # A user who read the JSON writes result.error["ename"], as for result.result: both work.
    def __getitem__(self, key: str) -> str:
        if key not in self._KEYS:
            raise KeyError(key)
        value: str = getattr(self, key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The field named key, else default (as dict.get)."""
        return getattr(self, key) if key in self._KEYS else default

    def keys(self) -> tuple[str, ...]:
        """The field names: ename, evalue, traceback."""
        return self._KEYS

    def values(self) -> tuple[str, ...]:
        """The field values, in the order of keys()."""
        return (self.ename, self.evalue, self.traceback)

    def items(self) -> tuple[tuple[str, str], ...]:
        """(name, value) pairs, as dict.items()."""
        return tuple((key, getattr(self, key)) for key in self._KEYS)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __contains__(self, key: object) -> bool:
        return key in self._KEYS

    def __len__(self) -> int:
        return len(self._KEYS)

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        """Build from the JSON form."""
        return cls(str(data["ename"]), str(data["evalue"]), str(data["traceback"]))


@dataclass(frozen=True)
class Cell:
    """A cell to run and how: its code, the limits a request set (None: the server's), and
    Jupyter's extras (expressions to evaluate after it, whether input() may ask the client)."""

    code: str
    timeout: float | None = None
    output_cap: int | None = None
    repr_limit: int | None = None
    user_expressions: dict[str, str] | None = None
    allow_stdin: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a cell ended; its printed output went to the sink as it came."""

    status: str
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    restarted: bool = False  # the worker died or was killed; the namespace is fresh
    truncated: bool = False  # the repr limit cut the result or a display
    # Jupyter's user_expressions, evaluated after the cell: name → {status, data | ename...}.
    user_expressions: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the worker's reply carries it)."""
        data = {"status": self.status, "result": self.result,
                "error": self.error.to_dict() if self.error else None,
                "restarted": self.restarted, "truncated": self.truncated}
        if self.user_expressions is not None:
            data["user_expressions"] = self.user_expressions
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outcome:
        """Build from the JSON form; missing flags are false."""
        error = data.get("error")
        return cls(str(data["status"]), data.get("result"),
                   ErrorInfo.from_dict(error) if error else None,
                   bool(data.get("restarted")), bool(data.get("truncated")),
                   data.get("user_expressions"))

    @classmethod
    def failed(cls, ename: str, evalue: str, restarted: bool = False) -> Outcome:
        """An error outcome with no traceback (the server's own reasons: deleted, died...)."""
        return cls("error", error=ErrorInfo(ename, evalue, ""), restarted=restarted)


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
    # Where .wait() polls: set by the client that fetched it; never part of the JSON.
    source: ResultSource | None = field(default=None, repr=False, compare=False)

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
    def from_dict(cls, data: Mapping[str, Any], source: ResultSource | None = None
                  ) -> ExecutionResult:
        """Build from the JSON form; unknown keys are ignored so newer servers stay readable.
        source is where .wait() polls for it (the client's Namespace)."""
        known = {f.name for f in fields(cls)} - {"source"}
        values = {k: v for k, v in data.items() if k in known}
        values["displays"] = tuple(values.get("displays") or ())
        if values.get("error"):
            values["error"] = ErrorInfo.from_dict(values["error"])
        return cls(**values, source=source)

    def with_changes(self, **changes: Any) -> ExecutionResult:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def wait(self, timeout: float | None = None) -> ExecutionResult:
        """The finished result, long-polling the server if this one is still running."""
        if self.finished:
            return self
        if self.source is None:
            raise RuntimeError("this result did not come from a Client; nothing to poll")
        return self.source.wait_for(self.execution_count, timeout)

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


@dataclass(frozen=True)
class Finished:
    """A finished execution as the server keeps it: the result, its output still in pieces."""

    result: ExecutionResult  # its stdout and stderr are empty: the text is below
    stdout: Text
    stderr: Text

    @classmethod
    def of(cls, result: ExecutionResult) -> Finished:
        """The kept form of a result whose output is in strings (read from history or the wire)."""
        return cls(result.with_changes(stdout="", stderr=""), Text([result.stdout]),
                   Text([result.stderr]))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the result, stdout and stderr as Text (see encoding.iter_json)."""
        data = self.result.to_dict()
        data["stdout"] = self.stdout
        data["stderr"] = self.stderr
        return data

    def to_result(self) -> ExecutionResult:
        """The result with its output joined into strings."""
        return self.result.with_changes(stdout=str(self.stdout), stderr=str(self.stderr))


# -- stream events: what a subscriber receives, and (to_dict) the v1 NDJSON line of each --

@dataclass(frozen=True)
class OutputEvent:
    """Text a cell printed on stdout or stderr."""

    stream: Literal["stdout", "stderr"]
    text: str

    def to_dict(self) -> dict[str, Any]:
        """{"event": "stdout"|"stderr", "text": ...}."""
        return {"event": self.stream, "text": self.text}


@dataclass(frozen=True)
class DisplayEvent:
    """One rich display (a MIME bundle), in its place among the printed text.

    With a display_id it can be replaced later: an update carries the same id and new data for
    every display shown with it (Jupyter's update_display_data), and adds no display of its own.
    """

    data: dict[str, Any]
    display_id: str | None = None
    update: bool = False

    def to_dict(self) -> dict[str, Any]:
        """{"event": "display" | "update_display", "data": {...}[, "display_id": ...]}."""
        found: dict[str, Any] = {"event": "update_display" if self.update else "display",
                                 "data": self.data}
        if self.display_id is not None:
            found["display_id"] = self.display_id
        return found


@dataclass(frozen=True)
class ValueEvent:
    """The cell's value before the figures it drew (only then): Jupyter's execute_result."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """{"event": "value", "data": {...}}."""
        return {"event": "value", "data": self.data}


@dataclass(frozen=True)
class ClearEvent:
    """The cell cleared its output (IPython's clear_output); with wait, once the next comes."""

    wait: bool = False

    def to_dict(self) -> dict[str, Any]:
        """{"event": "clear_output", "wait": ...}."""
        return {"event": "clear_output", "wait": self.wait}


@dataclass(frozen=True)
class ResultEvent:
    """The last event of a cell: its final result."""

    final: Finished

    @property
    def result(self) -> ExecutionResult:
        """The result with its output joined into strings."""
        return self.final.to_result()

    def to_dict(self) -> dict[str, Any]:
        """{"event": "result", ...the execution result...}, the output still in pieces."""
        return {"event": "result", **self.final.to_dict()}


@dataclass(frozen=True)
class KeepaliveEvent:
    """Nothing happened for a while; the cell is still queued or running."""

    status: str

    def to_dict(self) -> dict[str, Any]:
        """{"event": "keepalive", "status": ...}."""
        return {"event": "keepalive", "status": self.status}


@dataclass(frozen=True)
class StreamErrorEvent:
    """A namespace subscription ends early (its reader fell too far behind); the cells go on."""

    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """{"event": "error", "code": ..., "message": ...}."""
        return {"event": "error", "code": self.code, "message": self.message}


@dataclass(frozen=True)
class StartedEvent:
    """A cell left the queue and runs now (namespace subscriptions only)."""

    execution_count: int
    code: str

    def to_dict(self) -> dict[str, Any]:
        """{"event": "started", "execution_count": n, "code": ...}."""
        return {"event": "started", "execution_count": self.execution_count, "code": self.code}


@dataclass(frozen=True)
class StateEvent:
    """The namespace itself changed: restarting, idle again after a restart, or dead (deleted)."""

    state: str

    def to_dict(self) -> dict[str, Any]:
        """{"event": "state", "state": ...}."""
        return {"event": "state", "state": self.state}


@dataclass(frozen=True)
class InputRequestEvent:
    """The cell called input() (or getpass) and waits for a line (cells that allow stdin only)."""

    prompt: str
    password: bool

    def to_dict(self) -> dict[str, Any]:
        """{"event": "input_request", "prompt": ..., "password": ...}."""
        return {"event": "input_request", "prompt": self.prompt, "password": self.password}


Event = (OutputEvent | DisplayEvent | ClearEvent | ValueEvent | ResultEvent | KeepaliveEvent
         | StreamErrorEvent | StartedEvent | StateEvent | InputRequestEvent)


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """The typed event of one wire line; ValueError for a line that is not one."""
    kind = data.get("event")
    if kind in ("stdout", "stderr"):
        return OutputEvent(kind, str(data["text"]))
    if kind in ("display", "update_display"):
        display_id = data.get("display_id")
        return DisplayEvent(dict(data["data"]), None if display_id is None else str(display_id),
                            update=kind == "update_display")
    if kind == "clear_output":
        return ClearEvent(bool(data.get("wait")))
    if kind == "result":
        return ResultEvent(Finished.of(ExecutionResult.from_dict(data)))
    if kind == "keepalive":
        return KeepaliveEvent(str(data.get("status", "")))
    if kind == "error":
        return StreamErrorEvent(str(data.get("code", "")), str(data.get("message", "")))
    if kind == "started":
        return StartedEvent(int(data["execution_count"]), str(data.get("code", "")))
    if kind == "state":
        return StateEvent(str(data["state"]))
    if kind == "input_request":
        return InputRequestEvent(str(data.get("prompt", "")), bool(data.get("password")))
    raise ValueError(f"not a stream event: {kind!r}")
