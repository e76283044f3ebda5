"""Namespace backends: where a namespace's code actually runs. A new backend is one BACKENDS entry."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from .base import Backend, Kernel, NamespaceOptions, OutputSink, Resources


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend's class lives (imported only when chosen) and what it is for."""

    module: str
    cls: str
    help: str
    extra: str | None = None  # the pip extra that installs what it needs
    requires: str | None = None  # the module that extra brings

    def missing(self) -> str | None:
        """One line naming the extra, when what the backend needs is not installed."""
        if self.requires is None or importlib.util.find_spec(self.requires) is not None:
            return None
        return (f"this backend needs `pip install 'kernelserver[{self.extra}]'` "
                f"({self.requires} is not installed)")


BACKENDS: dict[str, BackendEntry] = {
    "process": BackendEntry("kernelserver.backends.processbackend", "ProcessBackend",
                            "a worker process per namespace"),
    "inprocess": BackendEntry("kernelserver.backends.inprocess", "InProcessBackend",
                              "dicts in the server process"),
    "ray": BackendEntry("kernelserver.backends.raycluster", "RayBackend",
                        "each namespace a Ray actor on a cluster (setting ray_address)", extra="ray",
                        requires="ray"),
}


def load_backend(config: dict[str, Any]) -> Backend:
    """The configured backend, started."""
    entry = BACKENDS[config["backend"]]
    missing = entry.missing()
    if missing:
        raise RuntimeError(f"the {config['backend']} backend: {missing}")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        if entry.extra is None:
            raise
        raise RuntimeError(f"the {config['backend']} backend needs "
                           f"`pip install 'kernelserver[{entry.extra}]'` ({exc})") from None
    backend: Backend = getattr(module, entry.cls)(config)
    return backend


__all__ = ["BACKENDS", "Backend", "BackendEntry", "Kernel", "NamespaceOptions", "OutputSink",
           "Resources", "load_backend"]
