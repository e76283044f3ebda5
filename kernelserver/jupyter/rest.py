"""The Jupyter Server / Kernel Gateway REST API over namespaces, and the channels WebSocket route."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..errors import BadRequest, KernelServerError, NotFound
from ..namespace import NamespaceInfo
from ..params import current_service, json_object, read_body
from ..streaming import json_response
from ..websocket import INTERNAL_ERROR, HandshakeError, WebSocket
from . import replies
from .channels import Connection
from .kernels import Kernels
from .wire import V1

bp = Blueprint("jupyter", __name__)
log = logging.getLogger("kernelserver.jupyter")


def current_kernels() -> Kernels:
    """The Jupyter side of the app's namespaces."""
    kernels: Kernels = current_app.extensions["kernelserver.jupyter"]
    return kernels


def _model(info: NamespaceInfo) -> dict[str, Any]:
    # last_activity must be exactly %Y-%m-%dT%H:%M:%S.%fZ: jupyter_server parses it so.
    return {"id": info.id, "name": replies.KERNEL_NAME, "last_activity": info.last_activity,
            "execution_state": info.state, "connections": current_kernels().connections(info.id)}


def _body() -> dict[str, Any]:
    # JupyterLab posts JSON as text/plain, jupyter_server as application/json: read it either way.
    return json_object(read_body())


@bp.get("/api")
def api_version() -> Response:
    return json_response({"version": __version__})


@bp.get("/api/kernelspecs")
def kernelspecs() -> Response:
    return json_response({"default": replies.KERNEL_NAME,
                          "kernelspecs": {replies.KERNEL_NAME: replies.kernelspec()}})


@bp.get("/api/kernelspecs/<name>")
def kernelspec(name: str) -> Response:
    if name != replies.KERNEL_NAME:
        raise NotFound(f"no kernelspec {name!r}; this server has {replies.KERNEL_NAME!r}")
    return json_response(replies.kernelspec())


@bp.get("/kernelspecs/<name>/<path:resource>")
def kernelspec_resource(name: str, resource: str) -> Response:
    raise NotFound(f"kernelspec {name!r} has no resource {resource!r}")


@bp.get("/api/kernels")
def list_kernels() -> Response:
    return json_response([_model(info) for info in current_service().namespaces()])


@bp.post("/api/kernels")
def start_kernel() -> Response:
    body = _body()
    name = body.get("name") or replies.KERNEL_NAME
    if name != replies.KERNEL_NAME:
        raise NotFound(f"no kernelspec {name!r}; this server has {replies.KERNEL_NAME!r}")
    env = body.get("env")
    if env is not None and not isinstance(env, dict):
        raise BadRequest("env must be an object")
    service = current_service()
    kernel_id = str(uuid.uuid4())  # jupyter_server routes only dashed UUIDs to a gateway
    service.create(kernel_id)
    response = json_response(_model(service.describe(kernel_id, with_variables=False)), 201)
    response.headers["Location"] = f"/api/kernels/{kernel_id}"
    return response


@bp.get("/api/kernels/<kernel_id>")
def get_kernel(kernel_id: str) -> Response:
    return json_response(_model(current_service().describe(kernel_id, with_variables=False)))


@bp.delete("/api/kernels/<kernel_id>")
def delete_kernel(kernel_id: str) -> Response:
    current_service().delete(kernel_id)
    return Response(status=204)


@bp.post("/api/kernels/<kernel_id>/interrupt")
def interrupt_kernel(kernel_id: str) -> Response:
    current_service().interrupt(kernel_id)
    return Response(status=204)


@bp.post("/api/kernels/<kernel_id>/restart")
def restart_kernel(kernel_id: str) -> Response:
    info = current_service().restart(kernel_id)
    return json_response(_model(info))


class HandedOver(Response):
    """The answer after a WebSocket: the connection belongs to it now, nothing more is written."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            # gunicorn closes the connection on StopIteration without writing (as flask-sock does).
            raise StopIteration()
        return super().__call__(environ, start_response)


@bp.get("/api/kernels/<kernel_id>/channels", websocket=True)  # werkzeug routes upgrades only here
def channels(kernel_id: str) -> Response:
    service = current_service()
    service.describe(kernel_id, with_variables=False)  # 404 before the handshake, not after
    kernels = current_kernels()
    kernels.reserve()
    try:
        try:
            ws = WebSocket.accept(request.environ, [V1], service.config["websocket_ping_interval"],
                                  service.config["max_body_bytes"])
        except HandshakeError as exc:
            raise BadRequest(str(exc)) from None
        try:
            Connection(ws, kernel_id, request.args.get("session_id", ""), service, kernels).serve()
        except Exception:  # the HTTP answer is long gone: close the socket, say why in the log
            log.exception("jupyter: the channels of kernel %r failed", kernel_id)
            ws.close(INTERNAL_ERROR, "internal error; see the server log")
    finally:
        kernels.release()
    return HandedOver()


@bp.errorhandler(KernelServerError)
@bp.errorhandler(HTTPException)
def render_error(exc: Exception) -> Response:
    """Jupyter's error shape: {"message", "reason"} (and our code, as the v1 API names it)."""
    if isinstance(exc, KernelServerError):
        status, code, message = exc.status, exc.code, exc.message
    elif isinstance(exc, HTTPException):
        status, code = exc.code or 500, (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name or "error"
        if status == 413:
            message = (f"request body too large: the limit is "
                       f"{current_service().config['max_body_bytes']} bytes (max_body_bytes)")
    else:
        raise exc
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = code
    response = json_response({"message": message, "reason": reason, "code": code}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'token realm="kernelserver"'
    return response
