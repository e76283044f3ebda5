"""The commands that run or follow a cell and print its output: exec, show and attach."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import click

from ..results import DisplayEvent, Event, ExecutionResult, OutputEvent, ResultEvent, StreamErrorEvent
from .common import _print_json, _session, _write, client_options, fail, namespace_argument


def _event_json(event: Event) -> dict[str, Any]:
    """An event as the API's stream sends it (a result's output joined into strings)."""
    if isinstance(event, ResultEvent):
        return {"event": "result", **event.result.to_dict()}
    return event.to_dict()


def _follow(events: Iterable[Event], as_json: bool) -> ExecutionResult | None:
    """Print a cell's events as they come (or as NDJSON); its final result, if it came."""
    out, err = _write(sys.stdout), _write(sys.stderr)
    final: ExecutionResult | None = None
    for event in events:
        if as_json:
            out(json.dumps(_event_json(event)) + "\n")
        elif isinstance(event, OutputEvent):
            (out if event.stream == "stdout" else err)(event.text)
        elif isinstance(event, DisplayEvent):
            out(str(event.data.get("text/plain", "")) + "\n")
        elif isinstance(event, StreamErrorEvent):
            err(f"kernelserver: {event.message}\n")
        if isinstance(event, ResultEvent):
            final = event.result
    return final


def _print_end(final: ExecutionResult) -> None:
    """The value or the traceback a finished cell ends with, as exec prints them."""
    if final.result:
        _write(sys.stdout)(str(final.result.get("text/plain", "")) + "\n")
    if final.error:
        _write(sys.stderr)(final.error.traceback or f"{final.error.ename}: {final.error.evalue}\n")


def _exit_with(final: ExecutionResult | None, as_json: bool) -> NoReturn:
    """Print how the cell ended (not with --json: the stream's last line said it); exit 0 if ok."""
    if final is None:
        fail("the stream ended before the result")
    if not as_json:
        _print_end(final)
    sys.exit(0 if final.ok else 1)


@click.command("exec")
@client_options
@click.option("--id", "namespace_id", default="default", show_default=True, help="Namespace id.")
@click.option("--timeout", type=float, default=None, help="Seconds before the cell is stopped.")
@click.option("--gpus", type=float, default=None,
              help="GPUs for a new namespace (ray backend: placed on a node with them free).")
@click.option("--cpus", type=float, default=None, help="CPUs for a new namespace (ray backend).")
@click.option("--memory", default=None, help="Memory limit of a new namespace, e.g. 16G.")
@click.option("--syntax", type=click.Choice(["ipython", "python"]), default=None,
              help="What a new namespace's cells are written in (default: the server's, ipython).")
@click.option("--kernel", default=None,
              help="The environment a new namespace runs in (`kernelserver kernels` lists them).")
@click.argument("code")
def exec_(url: str, token: str | None, data_dir: str | None, as_json: bool, namespace_id: str,
          timeout: float | None, gpus: float | None, cpus: float | None, memory: str | None,
          syntax: str | None, kernel: str | None, code: str) -> None:
    """Run CODE (or - for stdin) in a namespace, streaming its output; exit 1 if it fails.

    --gpus, --cpus, --memory, --syntax and --kernel apply when this creates the namespace. --json prints the
    stream's events as NDJSON, the last one the result. Ctrl-C interrupts the cell."""
    if code == "-":
        code = sys.stdin.read()
    with _session(url, token, data_dir) as client:
        namespace = client.namespace(namespace_id, num_gpus=gpus, num_cpus=cpus, memory=memory,
                                     syntax=syntax, kernel=kernel)
        try:
            final = _follow(namespace.stream(code, timeout=timeout), as_json)
        except KeyboardInterrupt:
            namespace.interrupt()
            _write(sys.stderr)("\nkernelserver: interrupted the cell\n")
            sys.exit(130)
    _exit_with(final, as_json)


@click.command("show")
@client_options
@namespace_argument
@click.argument("n", type=int)
def show(url: str, token: str | None, data_dir: str | None, as_json: bool, namespace_id: str,
         n: int) -> None:
    """Print one cell's output; exit 1 if it failed.

    Cell N of namespace ID, running or finished: its stdout, displays and value go to stdout,
    its stderr and traceback to stderr."""
    with _session(url, token, data_dir, namespace_id=namespace_id) as client:
        result = client.namespace(namespace_id, create=False).execution(n)
    if as_json:
        # As the server answers /env/execution: the pinned result, and the cell's code.
        _print_json({**result.to_dict(), "code": result.code} if result.code else result.to_dict())
    else:
        out = _write(sys.stdout)
        out(result.stdout)
        for display in result.displays:
            out(str(display.get("text/plain", "")) + "\n")
        _write(sys.stderr)(result.stderr)
        _print_end(result)
    if not result.finished:
        click.echo(f"kernelserver: cell {n} in {namespace_id!r} is still {result.status}; follow "
                   f"it live with `kernelserver attach {namespace_id} {n}`", err=True)
        sys.exit(0)
    sys.exit(0 if result.ok else 1)


@click.command("attach")
@client_options
@namespace_argument
@click.argument("n", type=int, required=False)
def attach(url: str, token: str | None, data_dir: str | None, as_json: bool, namespace_id: str,
           n: int | None) -> None:
    """Follow a running cell live; Ctrl-C detaches.

    Follows cell N of namespace ID, else the one running there: prints what it printed so far,
    then the rest as it comes, and exits as exec would. Ctrl-C detaches: the cell goes on.
    --json prints the stream's events as NDJSON."""
    with _session(url, token, data_dir, namespace_id=namespace_id) as client:
        namespace = client.namespace(namespace_id, create=False)
        # A stream's first byte may take the server's keepalive interval to come: this request
        # first is what finds a hung server within the client timeout, or a wrong id at once.
        if n is None:
            n = namespace.info().get("running")
            if n is None:
                fail(f"nothing is running in {namespace_id!r}; `kernelserver history "
                     f"{namespace_id}` lists its cells, `kernelserver show {namespace_id} N` "
                     "prints one", 1)
        else:
            namespace.execution(n)
        try:
            final = _follow(namespace.attach(n), as_json)
        except KeyboardInterrupt:
            _write(sys.stderr)(f"\nkernelserver: detached; the cell is still running "
                               f"(kernelserver interrupt {namespace_id} stops it)\n")
            sys.exit(130)
    _exit_with(final, as_json)
