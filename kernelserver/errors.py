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
    # Seconds a client should wait before asking again (the Retry-After header of a 429 or 503);
    # None where asking again soon would get the same answer.
    retry_after: ClassVar[int | None] = None

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


# Why a namespace id has no namespace, as far as the server knows (NamespaceNotFound.why).
WHY_UNKNOWN, WHY_DELETED, WHY_CULLED, WHY_RESTARTED = (
    "unknown", "deleted", "culled", "server_restarted")


class NamespaceNotFound(NotFound):
    """No namespace with that id; `why` and `history` say what became of it (details travel too)."""

    code = "namespace_not_found"

    @classmethod
    def missing(cls, namespace_id: str, why: str = WHY_UNKNOWN, history: bool = False,
                idle: float | None = None, cull_idle_after: float | None = None
                ) -> NamespaceNotFound:
        """The error for an id with no namespace: what happened, in words no front end owns."""
        name = repr(namespace_id)
        kept = "its history is kept" if history else ""
        if why == WHY_CULLED:
            message = (f"namespace {name} was deleted after {idle or 0:.0f} s idle "
                       f"(cull_idle_after {cull_idle_after or 0:g} s) to free its memory")
        elif why == WHY_DELETED:
            message = f"no namespace {name} now: it was deleted"
        elif why == WHY_RESTARTED:
            message = f"no namespace {name} now: namespaces do not survive a restart of the server"
            kept = "but its history does" if history else ""
        else:
            message = f"no namespace {name}"
        if kept:
            message += ("; " if why != WHY_RESTARTED else ", ") + kept
        details: dict[str, Any] = {"id": namespace_id, "why": why, "history": history}
        if why == WHY_CULLED:
            details.update(idle=round(idle or 0, 1), cull_idle_after=cull_idle_after)
        return cls(message, **details)

    @property
    def namespace_id(self) -> str | None:
        """The id asked for (also on the client: it comes back in the body's details)."""
        found = self.details.get("id")
        return found if isinstance(found, str) else None

    @property
    def why(self) -> str:
        """unknown, deleted, culled or server_restarted."""
        return str(self.details.get("why") or WHY_UNKNOWN)

    @property
    def history(self) -> bool:
        """Whether its recorded executions can still be read."""
        return bool(self.details.get("history"))


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

    @classmethod
    def for_limit(cls, limit: int) -> PayloadTooLarge:
        """The one 413 every front end and the serving layer answer."""
        return cls(f"request body too large: the limit is {limit} bytes (max_body_bytes)",
                   limit=limit)


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
    retry_after = 10  # a slot frees when someone deletes one or the culler (1 s checks) does

    @classmethod
    def for_limit(cls, limit: int) -> TooManyNamespaces:
        """The error for a create past max_namespaces (front ends add how to free one)."""
        return cls(f"namespace limit reached ({limit})", limit=limit)


class QueueFull(KernelServerError):
    """The namespace already has max_queued executions waiting."""

    status = 429
    code = "queue_full"
    retry_after = 1  # queued cells drain as fast as they run

    @classmethod
    def for_limit(cls, namespace_id: str, limit: int) -> QueueFull:
        """The error for a cell past max_queued."""
        return cls(f"namespace {namespace_id!r} already has {limit} executions queued; wait for "
                   "them or interrupt", id=namespace_id, limit=limit)


class NamespaceUnavailable(KernelServerError):
    """The namespace's worker could not be started or was shut down under the request."""

    status = 503
    code = "namespace_unavailable"
    retry_after = 2  # a restart or a new start of the id takes about that


class ServerUnavailable(KernelServerError):
    """The server answers but cannot run cells now (its backend cannot start a worker)."""

    status = 503
    code = "unavailable"
    retry_after = 5  # the probe is cached; a backend coming back is seen within seconds


class TooManyWebSockets(KernelServerError):
    """max_websockets WebSockets are open already."""

    status = 503
    code = "too_many_websockets"
    retry_after = 5  # a slot frees when another client closes its socket


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
