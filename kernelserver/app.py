"""create_app(): the Flask factory, the v1 routes, auth, the Host check and the one error shape."""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import secrets
import select
import socket
import sys
import time
import weakref
from collections.abc import Iterator, Mapping
from importlib.resources import files
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request, stream_with_context
from werkzeug.exceptions import ClientDisconnected, HTTPException

from . import __version__
from .config import host_without_port, is_loopback, load_config
from .encoding import dumps, encode, is_large, iter_json, loads
from .errors import (
    BadRequest,
    HostNotAllowed,
    KernelServerError,
    LimitExceeded,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from .execution import Execution
from .results import FINISHED
from .server_state import ServerState

log = logging.getLogger("kernelserver")
bp = Blueprint("kernelserver", __name__)
PUBLIC_PATHS = frozenset({"/health", "/openapi.json"})
_HTTP_ERRORS: dict[int, type[KernelServerError]] = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _state() -> ServerState:
    state: ServerState = current_app.extensions["kernelserver"]
    return state


def _json(data: Any, status: int = 200) -> Response:
    if is_large(data):
        return Response(iter_json(data), status=status, mimetype="application/json")
    return Response(dumps(data), status=status, mimetype="application/json")


# -- request parameters: JSON object, urlencoded or multipart form, or query string --

def params() -> Mapping[str, Any]:
    """The request's fields, whichever way they were sent."""
    if request.method == "GET":
        return request.args
    try:
        return _body_params()
    except (TimeoutError, ClientDisconnected):
        # werkzeug reports a read that timed out as a disconnect.
        raise RequestTimeout(
            f"the request body stopped arriving for {_state().config['request_read_timeout']:g} s; "
            "send it whole") from None


def _body_params() -> Mapping[str, Any]:
    mimetype = request.mimetype
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form
    if mimetype == "application/json" or mimetype.endswith("+json"):
        raw = request.get_data(cache=True)
        if not raw.strip():
            return {}
        try:
            body = loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body
    if not request.get_data(cache=True):
        return request.args
    raise UnsupportedMediaType(
        f"unsupported Content-Type {mimetype!r}: send application/json or a form"
    )


def field_str(data: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A required (or defaulted) string field."""
    value = data.get(name, default)
    if value is None:
        raise BadRequest(f"missing field {name!r}")
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must be a string, not {type(value).__name__}")
    return value


def field_float(data: Mapping[str, Any], name: str) -> float | None:
    """An optional non-negative number (forms send it as text)."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest(f"field {name!r} must be a number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"field {name!r} must be a number of seconds, not {value!r}") from None
    if not (0 <= number < 10**9):
        raise BadRequest(f"field {name!r} must be between 0 and 1e9 seconds")
    return number


def field_int(data: Mapping[str, Any], name: str, default: int | None = None) -> int:
    """An integer field (forms and query strings send it as text)."""
    value = data.get(name, default)
    if value is None:
        raise BadRequest(f"missing field {name!r}")
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadRequest(f"field {name!r} must be an integer, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"field {name!r} must be an integer, not {value!r}") from None
    if not -(2**63) <= number < 2**63:  # SQLite's integers are 64-bit
        raise BadRequest(f"field {name!r} is out of range")
    return number


def field_limit(data: Mapping[str, Any], name: str) -> int | None:
    """An optional per-request size limit: 0 up to the server's setting of the same name."""
    if data.get(name) in (None, ""):
        return None
    value = field_int(data, name)
    ceiling = _state().config[name]
    if value < 0:
        raise BadRequest(f"field {name!r} must be 0 or more")
    if value > ceiling:
        raise LimitExceeded(f"{name} {value} is above this server's limit of {ceiling}; a request "
                            f"may only lower it (the server's setting {name} raises it)",
                            limit=name, max=ceiling)
    return value


def field_bool(data: Mapping[str, Any], name: str) -> bool:
    """An optional boolean field; forms may send true/false/1/0/yes/no."""
    value = data.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no",
                                                     "off", ""):
        return value.lower() in ("true", "1", "yes", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRequest(f"field {name!r} must be true or false, not {value!r}")


# -- guards --

@bp.before_app_request
def _guard() -> None:
    state = _state()
    if state.check_host:
        host = host_without_port(request.host)
        if not (is_loopback(host) or host.lower() in state.allowed_hosts):
            raise HostNotAllowed(
                f"Host {request.host!r} is not allowed: the server is bound to loopback; "
                "use --allow-host to accept another name"
            )
    if request.path in PUBLIC_PATHS or state.token is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), state.token.encode()):
        raise Unauthorized("wrong token")


# -- routes --

@bp.get("/health")
def health() -> Response:
    return _json({"status": "ok"})


@bp.post("/env/create")
def env_create() -> Response:
    namespace_id = field_str(params(), "id")
    _, created = _state().registry.create(namespace_id)
    return _json({"id": namespace_id, "created": created, "envs": _state().registry.ids()},
                 201 if created else 200)


@bp.post("/env/delete")
def env_delete() -> Response:
    namespace_id = field_str(params(), "id")
    _state().registry.delete(namespace_id)
    return _json({"id": namespace_id, "deleted": True, "envs": _state().registry.ids()})


@bp.post("/env/get")
def env_get() -> Response:
    namespace_id = field_str(params(), "id")
    return _json(_state().registry.get(namespace_id).info(with_variables=True))


@bp.get("/env/list")
def env_list() -> Response:
    return _json({"envs": [ns.info() for ns in _state().registry.list()]})


@bp.post("/env/interrupt")
def env_interrupt() -> Response:
    namespace_id = field_str(params(), "id")
    interrupted = _state().registry.get(namespace_id).interrupt()
    return _json({"id": namespace_id, "interrupted": interrupted})


@bp.post("/env/restart")
def env_restart() -> Response:
    namespace_id = field_str(params(), "id")
    namespace = _state().registry.get(namespace_id)
    namespace.restart()
    return _json(namespace.info(with_variables=True))


def _wait_answer(execution: Any, wait: float | None) -> Response:
    deadline = None if wait is None else time.monotonic() + wait
    # Wait in slices so no single wait is unbounded.
    while not execution.finished:
        remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
        if remaining <= 0:
            break
        execution.wait(remaining)
    answer = execution.to_dict()
    return _json(answer, 200 if answer["status"] in FINISHED else 202)


def _stream(execution: Execution, cancel_on_disconnect: bool, namespace: Any,
            replay: bool = False) -> Response:
    keepalive = _state().config["stream_keepalive"]
    sock = request.environ.get("gunicorn.socket")
    # Subscribed here, not when the body starts: nothing printed in between may be missed.
    subscription = execution.subscribe(replay)

    def generate() -> Iterator[bytes]:
        finished = False
        try:
            for event in subscription.events(keepalive, gone=lambda: client_gone(sock)):
                finished = event["event"] == "result"
                yield from encode(event)  # a result with 8 MiB of output goes out in pieces
        finally:
            # Reached on client disconnect too (the WSGI server closes the iterator).
            if not finished and cancel_on_disconnect and not execution.finished:
                namespace.interrupt()

    response = Response(stream_with_context(generate()), mimetype="application/x-ndjson")
    # A body that is never iterated (client gone at once) still releases its subscription.
    response.call_on_close(subscription.close)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    _set_nodelay()
    return response


def client_gone(sock: socket.socket | None) -> bool:
    """True once the client has closed its connection (a readable socket with nothing to read)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):  # ValueError: TLS sockets take no flags; rely on write errors
        return False


def _set_nodelay() -> None:
    # gunicorn exposes the connection's socket; small streamed lines must not wait on Nagle.
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


@bp.post("/")
@bp.post("/execute")
def execute() -> Response:
    data = params()
    namespace_id = field_str(data, "id", "default")
    code = field_str(data, "code")
    timeout = field_float(data, "timeout")
    wait = field_float(data, "wait")
    stream = field_bool(data, "stream")
    cancel = field_bool(data, "cancel_on_disconnect")
    output_cap = field_limit(data, "output_cap_bytes")
    repr_limit = field_limit(data, "repr_limit_bytes")
    namespace = _state().registry.get_or_create_default(namespace_id)
    # A caller that waits for the end may run the cell on its own thread (see submit).
    execution = namespace.submit(code, timeout, inline=wait is None and not stream,
                                 output_cap=output_cap, repr_limit=repr_limit)
    if stream:
        return _stream(execution, cancel, namespace)
    return _wait_answer(execution, wait)


@bp.get("/env/execution")
def env_execution() -> Response:
    data = params()
    namespace_id = field_str(data, "id")
    n = field_int(data, "n")
    wait = field_float(data, "wait")
    stream = field_bool(data, "stream")
    found = _state().find_execution(namespace_id, n)
    if isinstance(found, Execution):
        if stream:
            return _stream(found, False, None, replay=True)
        return _wait_answer(found, wait or 0.0)
    if stream:
        return Response(encode({"event": "result", **found.to_dict()}),
                        mimetype="application/x-ndjson")
    return _json(found.to_dict())


@bp.get("/env/history")
def env_history() -> Response:
    data = params()
    namespace_id = field_str(data, "id")
    limit = field_int(data, "limit", 100)
    if limit < 1:
        raise BadRequest("field 'limit' must be at least 1")
    return _json({"id": namespace_id, "executions": _state().history_of(namespace_id, limit)})


@bp.get("/openapi.json")
def openapi() -> Response:
    # Hand-written and shipped in the package; tests validate real answers against it.
    return Response(files("kernelserver").joinpath("openapi.json").read_bytes(),
                    mimetype="application/json")


@bp.get("/info")
def info() -> Response:
    return _json(_state().info())


# -- errors: one shape for everything --

def _error_response(exc: KernelServerError) -> Response:
    response = _json(exc.to_dict(), exc.status)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="kernelserver"'
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # A refused request's body (a 408's included) may be unread and may never come:
        # gunicorn would hold a thread draining it before reusing the connection.
        response.headers["Connection"] = "close"
    return response


def _handle_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    cls = _HTTP_ERRORS.get(status)
    if cls is None:
        code = (exc.name or "error").lower().replace(" ", "_")
        body = {"error": {"code": code, "message": exc.description or exc.name}}
        response = _json(body, status)
    else:
        message = exc.description or exc.name
        if status == 413:
            message = (f"request body too large: the limit is "
                       f"{_state().config['max_body_bytes']} bytes (max_body_bytes)")
        elif status == 404:
            message = f"no route {request.path!r}; see GET /openapi.json for the routes"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        response = _error_response(cls(message))
    if status == 405 and isinstance(exc, HTTPException):
        allow = exc.get_headers()
        for name, value in allow:
            if name.lower() == "allow":
                response.headers["Allow"] = value
    return response


def _handle_unexpected(exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.path)
    return _error_response(KernelServerError("internal server error; see the server log"))


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
    state = ServerState(settings, __version__)
    app.extensions["kernelserver"] = state
    app.register_blueprint(bp)
    app.register_error_handler(KernelServerError, _error_response)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_unexpected)
    # Workers must not outlive the app: close them when the interpreter exits.
    ref = weakref.ref(state)

    def close_at_exit() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close_at_exit)
    return app
