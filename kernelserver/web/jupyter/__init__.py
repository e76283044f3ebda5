"""The Jupyter kernel API (Jupyter Server / Kernel Gateway compatible): a kernel is a namespace."""

from __future__ import annotations

from flask import Flask

from ...service import Service
from ..auth import TokenPolicy
from ..websocket import GOING_AWAY
from .kernels import Kernels
from .rest import bp

# Jupyter clients send `Authorization: token T` (jupyter_server, JupyterLab) or Bearer, and
# browsers put the token in the URL of a WebSocket, which cannot carry headers.
POLICY = TokenPolicy(schemes=("token", "bearer"), query_param="token",
                     public_paths=frozenset({"/api"}))


def register(app: Flask, service: Service) -> Kernels:
    """Serve the Jupyter API from app, over service's namespaces."""
    kernels = Kernels(service, service.config["max_websockets"])
    app.extensions["kernelserver.web.jupyter"] = kernels
    app.extensions["kernelserver.guard"].protect(bp.name, POLICY)
    app.register_blueprint(bp)
    # Server shutdown: every socket is told the server goes away, so handlers end at once.
    app.extensions.setdefault("kernelserver.on_stop", []).append(
        lambda: kernels.close_all(GOING_AWAY, "the server is shutting down"))
    return kernels


__all__ = ["POLICY", "register"]
