"""Reading a request: its fields from JSON, a form or the query string, each checked and typed."""

from __future__ import annotations

import ast
import reprlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from flask import current_app, request
from werkzeug.exceptions import ClientDisconnected

from ..backends.base import Resources
from ..config import MIN_MEMORY_LIMIT, parse_size
from ..encoding import loads
from ..errors import (
    BadRequest,
    KernelServerError,
    LimitExceeded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from ..service import Service


def current_service() -> Service:
    """The service of the app handling this request."""
    service: Service = current_app.extensions["kernelserver"]
    return service


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 60, 60


def shown(value: Any) -> str:
    """A request's value as an error message names it: short, however long or deep it is."""
    # repr() of a list nested 990 levels (orjson reads 1024) recurses past Python's limit.
    return _SHOWN.repr(value)


def params() -> Mapping[str, Any]:
    """The request's fields, whichever way they were sent."""
    if request.method == "GET":
        return request.args
    try:
        return _body_params()
    except (TimeoutError, ClientDisconnected) as exc:
        _raise_what_the_server_said(exc)
        # werkzeug reports a read that timed out as a disconnect.
        raise RequestTimeout(
            f"the request body stopped arriving for "
            f"{current_service().config['request_read_timeout']:g} s; send it whole") from None


def _raise_what_the_server_said(exc: BaseException) -> None:
    """Raise the error the server (serving.py's worker) gave for a malformed body, if it did."""
    # werkzeug turns an error the WSGI input raises into ClientDisconnected; a body that was not
    # cut off but malformed (a chunk size that is not hex) is the client's 400, not a 408.
    said = exc.__context__
    if isinstance(exc, ClientDisconnected) and isinstance(said, KernelServerError):
        raise said from None


def read_body() -> bytes:
    """The whole request body; PayloadTooLarge past max_body_bytes, chunked bodies included."""
    try:
        raw = request.get_data(cache=True)
    except ClientDisconnected as exc:
        _raise_what_the_server_said(exc)
        raise
    if request.content_length is None and len(raw) >= current_app.config["MAX_CONTENT_LENGTH"]:
        # A chunked body has no length to refuse up front, and werkzeug stops reading it at the
        # limit without a word: the code cut there would run. Whatever follows means too large.
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise PayloadTooLarge.for_limit(current_app.config["MAX_CONTENT_LENGTH"])
    return raw


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (an empty body is an empty one)."""
    if not raw.strip():
        return {}
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _is_json(raw: bytes) -> bool:
    try:
        loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _body_params() -> Mapping[str, Any]:
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        return request.form  # werkzeug's multipart parser refuses an oversize body itself
    raw = read_body()  # read (and bounded) first: a form is then parsed from what was read
    if mimetype == "application/x-www-form-urlencoded":
        if raw.lstrip()[:1] in (b"{", b"[") and _is_json(raw):
            # curl -d sends a form unless told otherwise: the fields would be lost in the form.
            raise BadRequest("the body is JSON but its Content-Type says form (curl -d's "
                             "default): add -H 'Content-Type: application/json'")
        return request.form
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return json_object(raw)
    if not raw:
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


def field_optional_str(data: Mapping[str, Any], name: str) -> str | None:
    """An optional string field (absent or empty: None)."""
    value = data.get(name)
    if value is None or value == "":
        return None
    return field_str(data, name)


def field_choice(data: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    """An optional string field that must be one of choices."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise BadRequest(f"field {name!r} must be one of {', '.join(map(repr, choices))}, "
                         f"not {shown(value)}")
    return str(value)


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
        raise BadRequest(f"field {name!r} must be a number of seconds, not {shown(value)}") from None
    if not (0 <= number < 10**9):
        raise BadRequest(f"field {name!r} must be between 0 and 1e9 seconds")
    return number


def field_int(data: Mapping[str, Any], name: str, default: int | None = None,
              minimum: int | None = None) -> int:
    """An integer field (forms and query strings send it as text), at least minimum if given."""
    value = data.get(name, default)
    if value is None:
        raise BadRequest(f"missing field {name!r}")
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadRequest(f"field {name!r} must be an integer, not {shown(value)}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"field {name!r} must be an integer, not {shown(value)}") from None
    if not -(2**63) <= number < 2**63:  # SQLite's integers are 64-bit
        raise BadRequest(f"field {name!r} is out of range")
    if minimum is not None and number < minimum:
        raise BadRequest(f"field {name!r} must be at least {minimum}")
    return number


def field_limit(data: Mapping[str, Any], name: str) -> int | None:
    """An optional per-request size limit: 0 up to the server's setting of the same name."""
    if data.get(name) in (None, ""):
        return None
    value = field_int(data, name)
    ceiling = current_service().config[name]
    if value < 0:
        raise BadRequest(f"field {name!r} must be 0 or more")
    if value > ceiling:
        raise LimitExceeded(f"{name} {value} is above this server's limit of {ceiling}; a request "
                            f"may only lower it (the server's setting {name} raises it)",
                            limit=name, max=ceiling)
    return value


def field_memory(data: Mapping[str, Any], name: str) -> int | None:
    """An optional memory limit in bytes: a number, or text such as '512M' or '2G'; 0 for none."""
    value = data.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) > 64:  # no size is that long: not echoed whole
        raise BadRequest(f"field {name!r}: {shown(value)} is not a size: use bytes or a string "
                         "such as '512M' or '2G'")
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise BadRequest(f"field {name!r}: {exc}") from None
    if size and not MIN_MEMORY_LIMIT <= size < 2**63:
        raise BadRequest(f"field {name!r} must be 0 (none) or at least {MIN_MEMORY_LIMIT >> 20} MiB "
                         "(a worker's interpreter alone takes ~30 MiB)")
    return size


RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory")


def field_resources(data: Mapping[str, Any]) -> Resources:
    """A namespace's `resources` ({"num_gpus": 1, "num_cpus": 4, "memory": "16G"}, a JSON text
    in a form) with `memory_limit`, which is the same memory."""
    value = data.get("resources")
    if isinstance(value, str) and value.strip():
        try:
            value = loads(value)
        except ValueError:
            raise BadRequest("field 'resources' must be a JSON object") from None
    if value in (None, ""):
        value = {}
    if not isinstance(value, Mapping):
        raise BadRequest("field 'resources' must be an object such as "
                         '{"num_gpus": 1, "num_cpus": 4, "memory": "16G"}')
    unknown = sorted(set(value) - set(RESOURCE_KEYS))
    if unknown:
        raise BadRequest(f"resources {unknown} are not known: use {', '.join(RESOURCE_KEYS)}")
    counts = {name: _count(value, name) for name in ("num_cpus", "num_gpus")}
    memory = field_memory(value, "memory")
    limit = field_memory(data, "memory_limit")
    if memory is not None and limit is not None and memory != limit:
        raise BadRequest("resources.memory and memory_limit are the same thing and differ here; "
                         "give one")
    return Resources(memory=limit if memory is None else memory, **counts)


def _count(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"resources.{name} must be a number, not {shown(value)}")
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"resources.{name} must be a number, not {shown(value)}") from None
    if not 0 <= number <= 4096:
        raise BadRequest(f"resources.{name} must be between 0 and 4096")
    return number


def field_stream(data: Mapping[str, Any]) -> str | None:
    """How to stream the answer: "ndjson", "text", or None for one JSON answer.

    `stream: true` streams NDJSON, `stream: "text"` plain text; `Accept: text/plain` (preferred
    to JSON) asks for the text stream too, unless the request says `stream: false`."""
    if data.get("stream") == "text":
        return "text"
    explicit = data.get("stream") not in (None, "")
    wanted = field_bool(data, "stream")
    if explicit and not wanted:
        return None
    # Most clients send no Accept or */*: parse the header only when it names text/plain.
    prefers_text = "text/plain" in request.headers.get("Accept", "") and (
        request.accept_mimetypes.best_match(
            ["application/json", "application/x-ndjson", "text/plain"]) == "text/plain")
    if prefers_text:
        return "text"
    return "ndjson" if wanted else None


def field_code(data: Mapping[str, Any]) -> str:
    """The code field; a form body whose '+' became spaces gets a hint instead of a SyntaxError."""
    code = field_str(data, "code")
    if request.mimetype != "application/x-www-form-urlencoded" or b"+" not in read_body():
        return code
    if _compiles(code):
        return code
    literal = dict(parse_qsl(read_body().decode("latin-1").replace("+", "%2B"),
                             keep_blank_values=True)).get("code")
    if literal is not None and literal != code and _compiles(literal):
        raise BadRequest(
            "field 'code' does not compile as received: in a form body '+' means a space, so "
            f"{literal[:40]!r} arrived as {code[:40]!r}. Send it with curl's --data-urlencode "
            "'code=…' (which encodes '+'), or as JSON")
    return code


def _compiles(code: str) -> bool:
    try:
        compile(code, "<cell>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


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
    raise BadRequest(f"field {name!r} must be true or false, not {shown(value)}")
