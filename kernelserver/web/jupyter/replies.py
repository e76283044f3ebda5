"""The content of the kernel's replies and models, in the shapes Jupyter clients check."""

from __future__ import annotations

import fnmatch
import platform
from typing import Any

from ... import __version__
from ...errors import KernelServerError, NamespaceNotFound, TooManyNamespaces
from ...kernelspecs import KernelSpec
from ...results import ErrorInfo, ExecutionResult
from ...service import Service
from .wire import PROTOCOL_VERSION

KERNEL_NAME = "python3"
MAX_HISTORY = 1000


def kernel_info(details: dict[str, Any] | None = None) -> dict[str, Any]:
    """kernel_info_reply content (answered by the server itself, at once) from Service.kernel_facts:
    the Python of the namespace's environment, or a Jupyter kernel's own language_info."""
    python = (details or {}).get("python_version") or platform.python_version()
    language = (details or {}).get("language_info")
    if language:
        name = language.get("name", "?")
        return {"status": "ok", "protocol_version": PROTOCOL_VERSION,
                "implementation": (details or {}).get("implementation") or "kernelserver",
                "implementation_version": (details or {}).get("implementation_version") or __version__,
                "language_info": language, "help_links": [],
                "banner": f"kernelserver {__version__}: {name} {language.get('version', '')} in a "
                          "Jupyter kernel"}
    return {
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "kernelserver",
        "implementation_version": __version__,
        "language_info": {"name": "python", "version": python, "mimetype": "text/x-python",
                          "codemirror_mode": {"name": "ipython", "version": 3},
                          "pygments_lexer": "ipython3", "nbconvert_exporter": "python",
                          "file_extension": ".py"},
        "banner": f"kernelserver {__version__}: Python {python} in a kernelserver namespace",
        "help_links": [],
    }


def kernelspec(spec: KernelSpec) -> dict[str, Any]:
    """A kernelspec as Jupyter lists it: an environment a kernelserver namespace runs in."""
    return {"name": spec.name, "resources": {}, "spec": {
        "argv": [],  # never launched from a command: a namespace is started by the server
        "display_name": spec.display_name, "language": spec.language,
        "interrupt_mode": "message", "env": {},
        "metadata": {"kernelserver": {"version": __version__, "python": spec.python,
                                      "source": spec.source}}}}


def traceback_lines(error: ErrorInfo) -> list[str]:
    """A traceback as Jupyter sends it: a list of lines (a one-line summary when there is none)."""
    lines = error.traceback.rstrip("\n").split("\n") if error.traceback else []
    return lines or [f"{error.ename}: {error.evalue}"]


def error_content(error: ErrorInfo) -> dict[str, Any]:
    """The ename / evalue / traceback of an error reply or an iopub error."""
    return {"ename": error.ename, "evalue": error.evalue, "traceback": traceback_lines(error)}


def error_hint(exc: KernelServerError) -> str:
    """What to do next, in the Jupyter API's words: appended to the core's message."""
    if isinstance(exc, NamespaceNotFound):
        # A kernel id is a fresh UUID per start: a gone kernel is never started again.
        return "; start a new kernel with POST /api/kernels"
    if isinstance(exc, TooManyNamespaces):
        return "; shut one down with DELETE /api/kernels/{kernel_id} or raise max_namespaces"
    return ""


def error_message(exc: KernelServerError) -> str:
    """The message a Jupyter client reads for a refused request: the core's, then its hint."""
    return exc.message + error_hint(exc)


def error_headers(exc: KernelServerError) -> dict[str, str]:
    """Headers a Jupyter REST error answer adds: Retry-After on a 429 or 503 worth retrying."""
    return {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}


def failure(exc: KernelServerError) -> dict[str, Any]:
    """A reply's content for a request the server refused (a full queue, a deleted namespace)."""
    message = error_message(exc)
    return {"status": "error", "ename": type(exc).__name__, "evalue": message,
            "traceback": [f"{type(exc).__name__}: {message}"]}


def execute_reply(result: ExecutionResult, user_expressions: dict[str, Any] | None,
                  ran: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """execute_reply content and metadata: ok, error (timeouts and interrupts too) or aborted."""
    metadata: dict[str, Any] = {"started": result.started_at, "dependencies_met": True,
                                "engine": "kernelserver"}
    if not ran:  # cancelled, or its namespace went away, before it ran
        metadata["status"] = "aborted"
        return {"status": "aborted"}, metadata
    content: dict[str, Any] = {"status": "ok" if result.ok else "error",
                               "execution_count": result.execution_count,
                               "user_expressions": user_expressions or {}, "payload": []}
    if result.error is not None and not result.ok:
        content.update(error_content(result.error))
    metadata["status"] = content["status"]
    return content, metadata


def history(service: Service, namespace_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """history_reply content from the namespace's recorded executions."""
    kind = request.get("hist_access_type", "tail")
    with_output = bool(request.get("output"))
    rows = service.history_of(namespace_id, MAX_HISTORY) if kind in ("tail", "range", "search") else []
    if kind == "range":
        start, stop = int(request.get("start") or 0), request.get("stop")
        rows = [r for r in rows if r["execution_count"] >= start
                and (stop is None or r["execution_count"] < int(stop))]
    elif kind == "search":
        pattern = str(request.get("pattern") or "*")
        rows = [r for r in rows if fnmatch.fnmatchcase(r["code"], pattern)]
        if request.get("unique"):
            newest = {r["code"]: r for r in rows}  # later rows replace earlier ones
            rows = sorted(newest.values(), key=lambda r: int(r["execution_count"]))
    n = request.get("n")
    if kind in ("tail", "search") and isinstance(n, int) and n >= 0:
        rows = rows[-n:] if n else []
    entries: list[list[Any]] = []
    for row in rows:
        entry: Any = row["code"]
        if with_output:
            entry = [row["code"], _output_of(service, namespace_id, row["execution_count"])]
        entries.append([0, row["execution_count"], entry])
    return {"status": "ok", "history": entries}


def _output_of(service: Service, namespace_id: str, n: int) -> str | None:
    try:
        result = service.execution(namespace_id, n).snapshot()
    except KernelServerError:
        return None
    return (result.result or {}).get("text/plain")
