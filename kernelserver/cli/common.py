"""What the commands share: client options, fail(), a session whose errors end in one line, JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ..errors import (
    ExecutionNotFound,
    KernelServerError,
    NamespaceNotFound,
    TooManyNamespaces,
    Unauthorized,
)

if TYPE_CHECKING:
    from ..client import Client

url_option = click.option("--url", envvar="KERNELSERVER_URL", default="http://127.0.0.1:5000",
                          show_default=True, help="Server URL [env KERNELSERVER_URL].")
token_option = click.option("--token", envvar="KERNELSERVER_TOKEN", default=None,
                            help="Bearer token [env KERNELSERVER_TOKEN; else the token file of a "
                            "server on this machine].")
data_dir_option = click.option("--data-dir", default=None, help="Data dir of a server on this "
                               "machine, whose token file to use [env KERNELSERVER_DATA_DIR; "
                               "else the user data dir].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
F = TypeVar("F", bound=Callable[..., Any])


def client_options(command: F) -> F:
    """--url, --token, --data-dir and --json: what every command that talks to a server takes."""
    for option in (json_option, data_dir_option, token_option, url_option):
        command = option(command)
    return command

# Where a CLI user gets the right token: said when the server refuses the one sent, or none.
TOKEN_ADVICE = ("the server prints its token when it starts, `kernelserver token` prints it on "
                "the server's machine, and a restarted server has a new one; pass it with --token "
                "or KERNELSERVER_TOKEN (or --data-dir D for a local server started with "
                "--data-dir D)")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line to stderr and exit."""
    click.echo(f"kernelserver: error: {message}", err=True)
    sys.exit(code)


def _error_line(exc: KernelServerError, url: str, sent_token: bool,
                namespace_id: str | None = None) -> tuple[str, int]:
    """What a CLI user reads for a client error, and the exit code."""
    if isinstance(exc, Unauthorized):
        if sent_token:
            return f"wrong token for {url}: {TOKEN_ADVICE}", 2
        return f"{url} wants a token and none was sent: {TOKEN_ADVICE}", 2
    if isinstance(exc, NamespaceNotFound):
        # The v1 renderer adds routes to the message; the CLI words its own hint from the
        # error's fields instead (the client rebuilt them from the body's details).
        message = _core_message(exc)
        if exc.history and exc.namespace_id:
            return f"{message} (`kernelserver history {exc.namespace_id}`)", 1
        return f"{message} (`kernelserver ls` lists the namespaces)", 1
    if isinstance(exc, TooManyNamespaces):
        return f"{_core_message(exc)}; delete one with `kernelserver rm ID`", 2
    if isinstance(exc, ExecutionNotFound):
        return f"{exc} (`kernelserver history {namespace_id or 'ID'}` lists its cells)", 1
    return str(exc), 2


def _core_message(exc: KernelServerError) -> str:
    """The core's own words for exc, rebuilt from its fields, without the server's v1 hint."""
    # The body's message is worded for v1 callers (routes); its details carry the fields the
    # core's message is made from, so the CLI words the hint itself instead of editing text.
    details = exc.details
    if isinstance(exc, NamespaceNotFound) and exc.namespace_id is not None and "why" in details:
        return NamespaceNotFound.missing(
            exc.namespace_id, exc.why, exc.history, idle=details.get("idle"),
            cull_idle_after=details.get("cull_idle_after")).message
    if isinstance(exc, TooManyNamespaces) and isinstance(details.get("limit"), int):
        return TooManyNamespaces.for_limit(details["limit"]).message
    return exc.message  # a server too old to send the fields


@contextmanager
def _session(url: str, token: str | None, data_dir: str | None,
             on_error: Callable[[str], None] | None = None,
             namespace_id: str | None = None) -> Iterator[Client]:
    """A Client for a command; its errors end the command with one line (after on_error)."""
    from ..client import Client

    client: Client | None = None
    try:
        try:
            client = Client(url, token, data_dir=data_dir)
        except ValueError as exc:  # a bad KERNELSERVER_CLIENT_TIMEOUT
            if on_error is not None:
                on_error(str(exc))
            fail(str(exc))
        with client:
            yield client
    except KernelServerError as exc:
        sent = client is not None and "Authorization" in client.session.headers
        message, code = _error_line(exc, url, sent, namespace_id)
        if on_error is not None:
            on_error(message)
        fail(message, code)


def _write(stream: Any) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


namespace_argument = click.argument("namespace_id", metavar="ID")
