"""create_app(): the Flask factory: the service, the guard, the blueprints, one error shape."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import sys
import weakref
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..config import is_loopback, load_config
from ..errors import (
    BadRequest,
    KernelServerError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)
from ..service import Service
from . import auth, console, jupyter, requestlog
from .api import bp as v1
from .params import current_service
from .streaming import json_response

log = logging.getLogger("kernelserver")
_HTTP_ERRORS: dict[int, type[KernelServerError]] = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def render_error(exc: KernelServerError) -> Response:
    """The answer for any API error: its status and the one JSON error body."""
    response = json_response(exc.to_dict(), exc.status)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="kernelserver"'
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # A refused request's body (a 408's included) may be unread and may never come:
        # gunicorn would hold a thread draining it before reusing the connection.
        response.headers["Connection"] = "close"
    return response


def _http_error(exc: HTTPException) -> Response:
    """werkzeug's own errors (routing, body size) in the same shape, with a useful message."""
    status = exc.code or 500
    cls = _HTTP_ERRORS.get(status)
    if cls is None:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = json_response(error_body(code, exc.description or exc.name), status)
    else:
        message = exc.description or exc.name
        if status == 413:
            message = (f"request body too large: the limit is "
                       f"{current_service().config['max_body_bytes']} bytes (max_body_bytes)")
        elif status == 404:
            message = f"no route {request.path!r}; see GET /openapi.json for the routes"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        response = render_error(cls(message))
    if status == 405:
        for name, value in exc.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.path)
    return render_error(KernelServerError("internal server error; see the server log"))


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The kernelserver Flask app; config overrides defaults and KERNELSERVER_* variables."""
    settings = load_config(config)
    # Read once, then gone: code run by the inprocess backend shares this environment, and
    # subprocesses would inherit it.
    os.environ.pop("KERNELSERVER_TOKEN", None)
    if settings["no_auth"] and not is_loopback(settings["host"]):
        raise ValueError("--no-auth is refused unless the server is bound to a loopback address")
    if settings["token"] is None and not settings["no_auth"]:
        settings["token"] = secrets.token_urlsafe(32)
        print(f"kernelserver: no token given; generated one: {settings['token']}", file=sys.stderr)
    app = Flask("kernelserver")
    app.config["MAX_CONTENT_LENGTH"] = settings["max_body_bytes"]
    app.config["MAX_FORM_MEMORY_SIZE"] = settings["max_body_bytes"]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    service = Service(settings, __version__)
    app.extensions["kernelserver"] = service
    # First: a request the guard refuses is timed and logged too.
    requestlog.install(app, settings["request_log"], settings["token"])
    auth.install(app, service.token, settings)
    # On SIGTERM serving.py runs these in order: cells are interrupted and their answers go out,
    # then WebSockets close (1001, going away), then what is still running is killed.
    app.extensions["kernelserver.on_stop"] = [lambda: service.stop(settings["interrupt_grace"])]
    app.register_blueprint(v1)
    jupyter.register(app, service)
    console.register(app)
    app.extensions["kernelserver.on_stop"].append(service.stop_namespaces)
    app.register_error_handler(KernelServerError, render_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    # Workers must not outlive the app: close them when the interpreter exits.
    ref = weakref.ref(service)

    def close_at_exit() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close_at_exit)
    return app
