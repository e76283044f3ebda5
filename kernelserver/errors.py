"""One exception tree shared by server and client: each class carries its HTTP status and code."""

from __future__ import annotations

from typing import Any, ClassVar


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The body of every non-2xx answer of the v1 API: {"error": {"code", "message", ...}}."""
    return {"error": {"code": code, "message": message, **details}}


class KernelServerError(Exception):
    """Root of every kernelserver error; `status` and `code` say how it travels over HTTP."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    # Set by the client, as requests does: the HTTP answer it raised for (its headers carry
    # Retry-After on a 429 or 503), and the request that got it; None on the server.
    response: Any = None
    request: Any = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The body every non-2xx answer carries."""
        return error_body(self.code, self.message, **self.details)


class BadRequest(KernelServerError, ValueError):
    """The request is malformed: bad JSON, a wrong field type, a missing field."""

    status = 400
    code = "bad_request"


class InvalidNamespaceId(BadRequest):
    """The namespace id does not match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$."""

    code = "invalid_id"


class Unauthorized(KernelServerError, PermissionError):
    """The bearer token is missing or wrong."""

    status = 401
    code = "unauthorized"


class HostNotAllowed(KernelServerError, PermissionError):
    """The Host header is not a loopback name while the server is bound to loopback."""

    status = 403
    code = "host_not_allowed"


class NotFound(KernelServerError, LookupError):
    """No such route or resource."""

    status = 404
    code = "not_found"


class NamespaceNotFound(NotFound):
    """No namespace with that id."""

    code = "namespace_not_found"


class ExecutionNotFound(NotFound):
    """No execution with that number in that namespace."""

    code = "execution_not_found"


class MethodNotAllowed(KernelServerError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"


class LimitExceeded(BadRequest):
    """A request asked for more than a server limit allows (it may ask for less)."""

    code = "limit_exceeded"


class RequestTimeout(KernelServerError):
    """The client stopped sending its request body."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(KernelServerError):
    """The request body is larger than max_body_bytes."""

    status = 413
    code = "payload_too_large"


class HeadersTooLarge(KernelServerError):
    """The request's header block is larger than the server reads (answered by the worker)."""

    status = 431
    code = "headers_too_large"


class UnsupportedMediaType(KernelServerError):
    """The body is neither JSON nor a form."""

    status = 415
    code = "unsupported_media_type"


class TooManyNamespaces(KernelServerError):
    """Creating another namespace would pass max_namespaces."""

    status = 429
    code = "too_many_namespaces"


class QueueFull(KernelServerError):
    """The namespace already has max_queued executions waiting."""

    status = 429
    code = "queue_full"


class NamespaceUnavailable(KernelServerError):
    """The namespace's worker could not be started or was shut down under the request."""

    status = 503
    code = "namespace_unavailable"


class ServerUnavailable(KernelServerError):
    """The server answers but cannot run cells now (its backend cannot start a worker)."""

    status = 503
    code = "unavailable"


class TooManyWebSockets(KernelServerError):
    """max_websockets WebSockets are open already."""

    status = 503
    code = "too_many_websockets"


class OriginNotAllowed(KernelServerError, PermissionError):
    """A WebSocket upgrade from a web page of another origin (cross-site WebSocket hijacking)."""

    status = 403
    code = "origin_not_allowed"


class ConnectionFailed(KernelServerError, ConnectionError):
    """The client could not reach the server (refused, DNS, TLS, timeout)."""

    status = 0
    code = "connection_failed"


class CellError(KernelServerError):
    """Raised by ExecutionResult.raise_for_error(): the cell failed; the message holds its traceback."""

    status = 200
    code = "cell_error"


def _all_subclasses(cls: type[KernelServerError]) -> list[type[KernelServerError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def error_class(code: str, status: int) -> type[KernelServerError]:
    """The exception class for an error code, else the closest class for the HTTP status."""
    classes = _all_subclasses(KernelServerError)
    for cls in classes:
        if cls.code == code:
            return cls
    for cls in classes:
        if cls.status == status and cls.__bases__[0] is KernelServerError:
            return cls
    return KernelServerError
