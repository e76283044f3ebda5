"""The Jupyter Server / Kernel Gateway REST API over namespaces, and the channels WebSocket route."""

from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ... import __version__
from ...backends.base import NamespaceOptions, Resources
from ...errors import BadRequest, KernelServerError, NotFound, PayloadTooLarge
from ...kernelspecs import KernelSpec
from ...namespace import NamespaceInfo
from .. import auth
from ..params import current_service, field_resources, json_object, read_body, shown
from ..streaming import json_response
from ..websocket import INTERNAL_ERROR, HandshakeError, WebSocket
from . import replies
from .channels import Connection
from .kernels import Kernels
from .wire import V1

bp = Blueprint("jupyter", __name__)
log = logging.getLogger("kernelserver.web.jupyter")


def current_kernels() -> Kernels:
    """The Jupyter side of the app's namespaces."""
    kernels: Kernels = current_app.extensions["kernelserver.web.jupyter"]
    return kernels


def _model(info: NamespaceInfo) -> dict[str, Any]:
    # last_activity must be exactly %Y-%m-%dT%H:%M:%S.%fZ: jupyter_server parses it so.
    model: dict[str, Any] = {
        "id": info.id, "name": info.kernel, "last_activity": info.last_activity,
        "execution_state": info.state, "connections": current_kernels().connections(info.id)}
    # Where it runs and what it got (ray backend), and its limits: clients ignore unknown keys.
    placed = {k: info.details[k] for k in ("node", "resources", "cuda_visible_devices")
              if k in info.details}
    model["kernelserver"] = {**placed, **info.limits()}
    return model


# Enterprise Gateway's names for a kernel's resources in the start request's env (JupyterLab
# forwards KERNEL_* variables of its own environment through --gateway-url).
ENV_RESOURCES = {"KERNEL_GPUS": "num_gpus", "KERNEL_CPUS": "num_cpus", "KERNEL_MEMORY": "memory"}


def _options(env: dict[str, Any], kernel: str) -> NamespaceOptions:
    asked = {name: env[key] for key, name in ENV_RESOURCES.items() if env.get(key) not in (None, "")}
    service = current_service()
    options = service.resolve_kernel(NamespaceOptions(field_resources({"resources": asked}),
                                                      kernel=kernel))
    try:
        service.backend.validate(replace(options, kernel=None, python=None))
    except BadRequest as exc:
        # A JupyterLab forwards its environment to any server: what this backend cannot place
        # is left out rather than refused (memory, a limit everywhere, stays).
        log.info("kernel start: %s; started without CPUs and GPUs", exc)
        options = replace(options, resources=Resources(memory=options.resources.memory))
    return options


def _body() -> dict[str, Any]:
    # JupyterLab posts JSON as text/plain, jupyter_server as application/json: read it either way.
    return json_object(read_body())


@bp.get("/api")
def api_version() -> Response:
    return json_response({"version": __version__})


@bp.get("/api/kernelspecs")
def kernelspecs() -> Response:
    found = current_service().kernelspecs
    return json_response({"default": replies.KERNEL_NAME,
                          "kernelspecs": {name: replies.kernelspec(spec) for name, spec in found.items()}})


def _known(name: str) -> KernelSpec:
    found = current_service().kernelspecs
    if name not in found:
        raise NotFound(f"no kernelspec {shown(name)}; this server has "
                       f"{', '.join(map(repr, found))}")
    return found[name]


@bp.get("/api/kernelspecs/<name>")
def kernelspec(name: str) -> Response:
    return json_response(replies.kernelspec(_known(name)))


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
    if not isinstance(name, str):
        raise BadRequest(f"name must be a kernelspec's name, not {shown(name)}")
    _known(name)
    env = body.get("env")
    if env is not None and not isinstance(env, dict):
        raise BadRequest("env must be an object")
    options = _options(env or {}, name)
    service = current_service()
    kernel_id = str(uuid.uuid4())  # jupyter_server routes only dashed UUIDs to a gateway
    service.create(kernel_id, options)
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


# The order channels requests arrive in: of two with one session_id, the newer is the live one.
_arrivals = itertools.count()


@bp.get("/api/kernels/<kernel_id>/channels", websocket=True)  # werkzeug routes upgrades only here
def channels(kernel_id: str) -> Response:
    arrived = next(_arrivals)  # first: under load this thread may reach attach after a newer one's
    service = current_service()
    service.describe(kernel_id, with_variables=False)  # 404 before the handshake, not after
    kernels = current_kernels()
    slot = kernels.reserve()
    try:
        try:
            ws = WebSocket.accept(request.environ, [V1], service.config["websocket_ping_interval"],
                                  service.config["max_body_bytes"])
        except HandshakeError as exc:
            raise BadRequest(str(exc)) from None
        try:
            Connection(ws, kernel_id, request.args.get("session_id", ""), service, kernels,
                       slot, arrived).serve()
        except Exception:  # the HTTP answer is long gone: close the socket, say why in the log
            log.exception("jupyter: the channels of kernel %r failed", kernel_id)
            ws.close(INTERNAL_ERROR, "internal error; see the server log")
    finally:
        slot.release()
    return HandedOver()


@bp.get("/api/kernels/<kernel_id>/channels")
@auth.public  # says only what the route is: no kernel is looked up, so nothing is revealed
def channels_without_upgrade(kernel_id: str) -> Response:
    """A plain GET on the WebSocket route: its Upgrade headers were lost on the way (a proxy)."""
    raise BadRequest("this is a WebSocket endpoint; the request came without Upgrade/Connection "
                     "headers (a proxy in front may drop them; see docs/deployment.md)")


@bp.errorhandler(KernelServerError)
@bp.errorhandler(HTTPException)
def render_error(exc: Exception) -> Response:
    """Jupyter's error shape: {"message", "reason"} (and our code, as the v1 API names it)."""
    headers: dict[str, str] = {}
    if isinstance(exc, KernelServerError):
        status, code, message = exc.status, exc.code, replies.error_message(exc)
        headers = replies.error_headers(exc)
    elif isinstance(exc, HTTPException):
        status, code = exc.code or 500, (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name or "error"
        if status == 413:
            message = PayloadTooLarge.for_limit(current_service().config["max_body_bytes"]).message
    else:
        raise exc
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = code
    response = json_response({"message": message, "reason": reason, "code": code}, status)
    response.headers.update(headers)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'token realm="kernelserver"'
    return response
