"""The pinned v1 routes (DESIGN.md section 3): parse the request, call the service, render."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from flask import Blueprint, Response

from ..backends.base import SYNTAXES, NamespaceOptions
from ..errors import ServerUnavailable
from ..results import Cell
from . import requestlog
from .params import (
    current_service,
    field_bool,
    field_choice,
    field_code,
    field_float,
    field_int,
    field_limit,
    field_optional_str,
    field_resources,
    field_str,
    field_stream,
    params,
)
from .streaming import execution_response, json_response, stream_response

bp = Blueprint("v1", __name__)


def namespace_of(data: Mapping[str, Any], default: str | None = None) -> str:
    """The request's namespace id, noted for the request log."""
    namespace_id = field_str(data, "id", default)
    requestlog.note(id=namespace_id)
    return namespace_id


@bp.get("/health")
def health() -> Response:
    if not current_service().healthy():
        raise ServerUnavailable("the server cannot start a worker now; see its log")
    return json_response({"status": "ok"})


@bp.post("/env/create")
def env_create() -> Response:
    data = params()
    namespace_id = namespace_of(data)
    options = NamespaceOptions(field_resources(data),
                               cull_idle_after=field_float(data, "cull_idle_after"),
                               syntax=field_choice(data, "syntax", SYNTAXES),
                               kernel=field_optional_str(data, "kernel"))
    service = current_service()
    created = service.create(namespace_id, options)
    # An existing namespace keeps the limits it was made with: the answer says which.
    limits = service.describe(namespace_id, with_variables=False).limits()
    return json_response({"id": namespace_id, "created": created, "envs": service.ids(), **limits},
                         201 if created else 200)


@bp.post("/env/delete")
def env_delete() -> Response:
    namespace_id = namespace_of(params())
    service = current_service()
    service.delete(namespace_id)
    return json_response({"id": namespace_id, "deleted": True, "envs": service.ids()})


@bp.post("/env/get")
def env_get() -> Response:
    namespace_id = namespace_of(params())
    return json_response(current_service().describe(namespace_id).to_dict())


@bp.get("/env/list")
def env_list() -> Response:
    return json_response({"envs": [info.to_dict() for info in current_service().namespaces()]})


@bp.post("/env/interrupt")
def env_interrupt() -> Response:
    namespace_id = namespace_of(params())
    return json_response({"id": namespace_id,
                          "interrupted": current_service().interrupt(namespace_id)})


@bp.post("/env/restart")
def env_restart() -> Response:
    namespace_id = namespace_of(params())
    return json_response(current_service().restart(namespace_id).to_dict())


@bp.post("/")
@bp.post("/execute")
def execute() -> Response:
    data = params()
    namespace_id = namespace_of(data, "default")
    code = field_code(data)
    timeout = field_float(data, "timeout")
    wait = field_float(data, "wait")
    stream = field_stream(data)
    cancel = field_bool(data, "cancel_on_disconnect")
    cell = Cell(code, timeout, output_cap=field_limit(data, "output_cap_bytes"),
                repr_limit=field_limit(data, "repr_limit_bytes"))
    service = current_service()
    if stream:
        execution = service.submit(namespace_id, cell)
        requestlog.note(execution_count=execution.execution_count)
        return stream_response(service.stream(execution, cancel_on_disconnect=cancel),
                               as_text=stream == "text")
    # A caller that waits for the end may run the cell on its own thread (see Namespace.submit).
    execution = service.submit(namespace_id, cell, inline=wait is None)
    requestlog.note(execution_count=execution.execution_count)
    service.wait(execution, wait)
    return execution_response(execution)


@bp.get("/env/execution")
def env_execution() -> Response:
    data = params()
    namespace_id = namespace_of(data)
    n = field_int(data, "n")
    requestlog.note(execution_count=n)
    wait = field_float(data, "wait")
    stream = field_stream(data)
    service = current_service()
    execution = service.execution(namespace_id, n)
    if stream:
        return stream_response(service.stream(execution), as_text=stream == "text")
    service.wait(execution, wait or 0.0)
    # 200 running or finished, as DESIGN.md pins it: the execution exists and is what was asked
    # for; its status says whether it has finished (202 is the submit's "wait ran out").
    answer = execution.to_dict()
    answer["code"] = execution.code  # the whole code, which /env/history only previews
    return json_response(answer)


@bp.get("/env/history")
def env_history() -> Response:
    data = params()
    namespace_id = namespace_of(data)
    limit = field_int(data, "limit", 100, minimum=1)
    return json_response({"id": namespace_id,
                          "executions": current_service().history_of(namespace_id, limit)})


@bp.delete("/env/history")
def env_history_delete() -> Response:
    data = params()
    namespace_id = namespace_of(data)
    keep = field_int(data, "keep", 0, minimum=0)
    deleted = current_service().prune_history(namespace_id, keep)
    return json_response({"id": namespace_id, "deleted": deleted, "kept": keep})


@bp.get("/openapi.json")
def openapi() -> Response:
    # Hand-written and shipped in the package; tests validate real answers against it.
    return Response(files("kernelserver.web").joinpath("openapi.json").read_bytes(),
                    mimetype="application/json")


@bp.get("/info")
def info() -> Response:
    # ?kernel=NAME: the probe of that environment (`kernelserver check --kernel NAME`).
    return json_response(current_service().info(field_optional_str(params(), "kernel")))


@bp.get("/kernels")
def kernels() -> Response:
    return json_response({"kernels": current_service().kernels()})
