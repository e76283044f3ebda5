"""kernelserver: a self-hosted code-execution server with named, persistent Python namespaces."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .client import Client
    from .web.app import create_app


def __getattr__(name: str) -> Any:
    # Lazy, so that a worker process importing kernelserver.runner.executor does not import Flask.
    if name == "create_app":
        from .web.app import create_app

        return create_app
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(name)


__all__ = ["Client", "__version__", "create_app"]
