"""NamespaceInfo: a namespace as /env/get, /env/list and the Jupyter kernel model show it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .results import NamespaceState


@dataclass(frozen=True)
class NamespaceInfo:
    """A namespace as /env/get and /env/list show it."""

    id: str
    state: NamespaceState
    execution_count: int
    created_at: str
    last_activity: str
    details: dict[str, Any] = field(default_factory=dict)  # the backend's: pid, memory_rss
    variables: list[dict[str, Any]] | None = None  # only when asked for
    memory_limit: int = 0  # bytes; 0 for none
    cull_idle_after: float = 0.0  # seconds; 0 never
    syntax: str = "python"  # what its cells are written in: "ipython" or "python"
    kernel: str = "python3"  # the environment it runs in (kernelserver kernels)
    running: int | None = None  # the execution_count of the cell running now

    def limits(self) -> dict[str, Any]:
        """What the namespace was made with (its limits, its syntax) as its JSON shows them."""
        return {"memory_limit": self.memory_limit, "cull_idle_after": self.cull_idle_after,
                "syntax": self.syntax, "kernel": self.kernel}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form pinned in DESIGN.md section 3, and its limits."""
        data: dict[str, Any] = {"id": self.id, "state": self.state,
                                "execution_count": self.execution_count,
                                "created_at": self.created_at, "last_activity": self.last_activity,
                                "running": self.running, **self.limits()}
        data.update(self.details)
        if self.variables is not None:
            data["variables"] = self.variables
        return data
