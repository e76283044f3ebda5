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
    WHY_UNKNOWN,
    BadRequest,
    KernelServerError,
    MethodNotAllowed,
    NamespaceNotFound,
    NotFound,
    PayloadTooLarge,
    TooManyNamespaces,
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


def v1_hint(exc: KernelServerError) -> str:
    """What to do next, in v1 routes: appended to the core's message, which names none."""
    if isinstance(exc, NamespaceNotFound):
        # The core's message ends saying its history is kept, when it is.
        seen = f" (GET /env/history?id={exc.namespace_id})" if exc.history else ""
        again = "" if exc.why == WHY_UNKNOWN else "again "
        return f"{seen}; create it {again}with POST /env/create"
    if isinstance(exc, TooManyNamespaces):
        return "; delete one with POST /env/delete or raise max_namespaces"
    return ""


def v1_error_body(exc: KernelServerError) -> dict[str, Any]:
    """The v1 error body of exc: {"error": {"code", "message", ...details}}, with the v1 hint."""
    return error_body(exc.code, exc.message + v1_hint(exc), **exc.details)


def render_error(exc: KernelServerError) -> Response:
    """The answer for any API error: its status and the one JSON error body."""
    response = json_response(v1_error_body(exc), exc.status)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
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
            return render_error(PayloadTooLarge.for_limit(current_service().config["max_body_bytes"]))
        if status == 404:
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
    generated = settings["token"] is None and not settings["no_auth"]
    if generated:
        settings["token"] = secrets.token_urlsafe(32)
    app = Flask("kernelserver")
    app.config["MAX_CONTENT_LENGTH"] = settings["max_body_bytes"]
    app.config["MAX_FORM_MEMORY_SIZE"] = settings["max_body_bytes"]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The Service takes the data dir's lock: a refused one (a second gunicorn worker) raises
    # here, before the token is shown, so only the server that serves prints one.
    service = Service(settings, __version__)
    if generated:
        print(f"kernelserver: no token given; generated one: {settings['token']}", file=sys.stderr)
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
