"""The command line: serve (under gunicorn, see serving.py) and stop; the client commands exec,
check, ls, history, show, attach, interrupt, restart, rm; token.

Only `serve` and `stop` import server modules: the client commands run on a laptop with the
client alone. Exit codes: 0 ok; 1 a cell or check failed, or what was asked for is not there;
2 a usage or connection error (server unreachable, token refused).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from . import __version__, tokenfile
from .backends import BACKENDS
from .config import default_data_dir, is_loopback, load_config
from .errors import ExecutionNotFound, KernelServerError, NamespaceNotFound, Unauthorized
from .results import DisplayEvent, Event, ExecutionResult, OutputEvent, ResultEvent, StreamErrorEvent

if TYPE_CHECKING:
    from .client import Client

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
ELLIPSIS = "…"


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line to stderr and exit."""
    click.echo(f"kernelserver: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kernelserver")
def cli() -> None:
    """kernelserver: run Python in named, persistent namespaces over HTTP."""


def _preflight(config: dict[str, Any]) -> None:
    """Open the data dir and history once in this process, so problems are one clear line."""
    missing = BACKENDS[config["backend"]].missing()
    if missing:
        fail(f"--backend {config['backend']}: {missing}")
    from .datadir import ServerLockError, take_lock
    from .history import History, HistoryError

    try:
        lock = take_lock(Path(config["data_dir"]))
    except ServerLockError as exc:
        fail(str(exc), 1)  # names the server that holds it, and how to stop it
    except HistoryError as exc:
        fail(str(exc))
    try:
        History(config["data_dir"]).close()
    except HistoryError as exc:
        fail(str(exc))
    finally:
        lock.close()


@cli.command()
@click.option("--host", default=None, help="Address to bind [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [5000].")
@click.option("--token", default=None, help="Bearer token [env KERNELSERVER_TOKEN; else generated].")
@click.option("--no-auth", is_flag=True, default=None, help="No token (loopback only).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=None,
              help="Namespace backend [process].")
@click.option("--data-dir", default=None, help="History and lock directory "
              "[env KERNELSERVER_DATA_DIR; else the user data dir].")
@click.option("--ray-address", default=None, help="With --backend ray: the cluster to place "
              "namespaces on (auto, host:port, ray://host:port) [auto].")
@click.option("--allow-host", "allow_hosts", multiple=True,
              help="Extra Host header name to accept when bound to loopback (repeatable).")
@click.option("--allow-origin", "allow_origins", multiple=True,
              help="Web page origin (https://host:port, or *) allowed to open WebSockets besides "
              "the server's own pages (repeatable).")
@click.option("--threads", type=int, default=None, help="Concurrent requests [64].")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS certificate (PEM); serve HTTPS.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS private key (PEM).")
def serve(host: str | None, port: int | None, token: str | None, no_auth: bool | None,
          backend: str | None, data_dir: str | None, ray_address: str | None,
          allow_hosts: tuple[str, ...],
          allow_origins: tuple[str, ...], threads: int | None, certfile: str | None,
          keyfile: str | None) -> None:
    """Run the server under gunicorn and print its URL and token."""
    overrides = {"host": host, "port": port, "token": token, "no_auth": no_auth,
                 "backend": backend, "data_dir": data_dir, "threads": threads,
                 "ray_address": ray_address,
                 "allowed_hosts": allow_hosts or None, "allowed_origins": allow_origins or None}
    try:
        config = load_config(overrides)
    except ValueError as exc:
        fail(str(exc))
    if bool(certfile) != bool(keyfile):
        fail("--certfile and --keyfile go together")
    if config["no_auth"]:
        if not is_loopback(config["host"]):
            fail("--no-auth is refused unless --host is a loopback address")
        config["token"] = None
    elif not config["token"]:
        config["token"] = secrets.token_urlsafe(32)
        generated = True
    else:
        generated = False
    _preflight(config)
    _check_port(config["host"], config["port"])
    scheme = "https" if certfile else "http"
    shown_host = f"[{config['host']}]" if ":" in config["host"] else config["host"]
    url = f"{scheme}://{shown_host}:{config['port']}"
    click.echo(f"kernelserver {__version__} on {url} (backend: {config['backend']}, "
               f"data: {config['data_dir']})", err=True)
    if config["token"] and generated:
        click.echo(f"token (generated, shown once): {config['token']}", err=True)
        click.echo("try: curl -s -H " + shlex.quote(f"Authorization: Bearer {config['token']}")
                   + f" --data-urlencode 'code=1+1' {url}/execute", err=True)
    elif config["token"]:
        click.echo("token: from --token / KERNELSERVER_TOKEN", err=True)
        if token:
            click.echo("WARNING: --token is visible to other local users in the process list; "
                       "prefer KERNELSERVER_TOKEN, or let serve generate one", err=True)
    else:
        click.echo("WARNING: --no-auth: any local user or process can run code as you", err=True)
    # The fragment never reaches the server (nor its log); the page moves it to sessionStorage.
    if config["token"] and generated:
        click.echo(f"console: {url}/#token={config['token']}", err=True)
    else:
        click.echo(f"console: {url}/" + ("#token=$KERNELSERVER_TOKEN" if config["token"] else ""),
                   err=True)
    if config["token"]:
        shown_token = config["token"] if generated else "$KERNELSERVER_TOKEN"
        click.echo(f"jupyter: jupyter lab --gateway-url={url} --GatewayClient.auth_token="
                   f"{shown_token}", err=True)
    if not is_loopback(config["host"]):
        click.echo("WARNING: not bound to loopback: anyone who can reach this port and holds "
                   "the token can run code as this user", err=True)
    from .serving import gunicorn_options, run_gunicorn

    run_gunicorn(config, gunicorn_options(config, certfile, keyfile))


def _check_port(host: str, port: int) -> None:
    """Fail with one line, before anything is printed, if gunicorn could not bind host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As gunicorn binds: a port left in TIME_WAIT by a stopped server is free, a
            # listening one is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except socket.gaierror as exc:
        fail(f"cannot listen on --host {host}: {exc.strerror}", 1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is in use: another program listens there; choose "
                 "another with --port", 1)
        if exc.errno == errno.EACCES:
            fail(f"cannot listen on {host}:{port}: {exc.strerror} (ports below 1024 need "
                 "privileges); choose another with --port", 1)
        fail(f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port", 1)


def _error_line(exc: KernelServerError, url: str, sent_token: bool,
                namespace_id: str | None = None) -> tuple[str, int]:
    """What a CLI user reads for a client error, and the exit code."""
    if isinstance(exc, Unauthorized):
        if sent_token:
            return f"wrong token for {url}: {TOKEN_ADVICE}", 2
        return f"{url} wants a token and none was sent: {TOKEN_ADVICE}", 2
    if isinstance(exc, NamespaceNotFound):
        # The server's hints name HTTP routes; a CLI user gets the commands.
        message = re.sub(r"; create it (again )?with POST /env/create$", "", str(exc))
        message = re.sub(r"GET /env/history\?id=([\w.-]+)", r"`kernelserver history \1`", message)
        if "`kernelserver" not in message:
            message += " (`kernelserver ls` lists the namespaces)"
        return message, 1
    if isinstance(exc, ExecutionNotFound):
        return f"{exc} (`kernelserver history {namespace_id or 'ID'}` lists its cells)", 1
    return str(exc), 2


@contextmanager
def _session(url: str, token: str | None, data_dir: str | None,
             on_error: Callable[[str], None] | None = None,
             namespace_id: str | None = None) -> Iterator[Client]:
    """A Client for a command; its errors end the command with one line (after on_error)."""
    from .client import Client

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


@cli.command("exec")
@client_options
@click.option("--id", "namespace_id", default="default", show_default=True, help="Namespace id.")
@click.option("--timeout", type=float, default=None, help="Seconds before the cell is stopped.")
@click.option("--gpus", type=float, default=None,
              help="GPUs for a new namespace (ray backend: placed on a node with them free).")
@click.option("--cpus", type=float, default=None, help="CPUs for a new namespace (ray backend).")
@click.option("--memory", default=None, help="Memory limit of a new namespace, e.g. 16G.")
@click.argument("code")
def exec_(url: str, token: str | None, data_dir: str | None, as_json: bool, namespace_id: str,
          timeout: float | None, gpus: float | None, cpus: float | None, memory: str | None,
          code: str) -> None:
    """Run CODE (or - for stdin) in a namespace, streaming its output; exit 1 if it fails.

    --gpus, --cpus and --memory apply when this creates the namespace. --json prints the
    stream's events as NDJSON, the last one the result. Ctrl-C interrupts the cell."""
    if code == "-":
        code = sys.stdin.read()
    with _session(url, token, data_dir) as client:
        namespace = client.namespace(namespace_id, num_gpus=gpus, num_cpus=cpus, memory=memory)
        try:
            final = _follow(namespace.stream(code, timeout=timeout), as_json)
        except KeyboardInterrupt:
            namespace.interrupt()
            _write(sys.stderr)("\nkernelserver: interrupted the cell\n")
            sys.exit(130)
    _exit_with(final, as_json)


@dataclass(frozen=True)
class CheckRow:
    """One line of `kernelserver check`'s report."""

    check: str
    ok: bool
    found: str


def _requirement_row(spec: str, packages: dict[str, str]) -> CheckRow:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    try:
        requirement = Requirement(spec)
    except InvalidRequirement as exc:
        fail(f"bad --require {spec!r}: {exc}")
    installed = {canonicalize_name(name): version for name, version in packages.items()}
    version = installed.get(canonicalize_name(requirement.name))
    if version is None:
        return CheckRow(spec, False, "not installed")
    if requirement.specifier:
        try:
            satisfied = requirement.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            satisfied = False
        if not satisfied:
            return CheckRow(spec, False, f"{version} does not satisfy {requirement.specifier}")
    return CheckRow(spec, True, version)


def _gpu_row(probe: dict[str, Any]) -> CheckRow:
    gpus = probe.get("gpus", {})
    names = []
    for source in ("torch", "jax", "nvidia_smi"):
        devices = gpus.get(source, {}).get("devices", [])
        if devices:
            names = [f"{d.get('name')}" for d in devices]
            return CheckRow("gpu", True, f"{len(devices)} via {source}: {', '.join(names)}")
    torch = gpus.get("torch", {})
    why = "no GPU seen by torch, jax or nvidia-smi"
    if torch.get("error"):
        why += f" (torch: {torch['error']})"
    return CheckRow("gpu", False, why)


def _cluster_row(cluster: dict[str, Any]) -> CheckRow:
    """The Ray cluster the server places namespaces on: its live nodes and what they have."""
    if "error" in cluster:
        return CheckRow("cluster", False, f"the cluster does not answer: {cluster['error']}")
    alive = [node for node in cluster.get("nodes", []) if node.get("alive")]
    total, free = cluster.get("total", {}), cluster.get("available", {})
    parts = [f"{len(alive)} node(s)"] + [
        f"{free.get(key, 0):g} of {total[key]:g} {key} free" for key in ("GPU", "CPU") if key in total]
    return CheckRow("cluster", bool(alive), ", ".join(parts))


def _cluster_gpu_row(cluster: dict[str, Any]) -> CheckRow:
    """--gpu on a cluster: GPUs are the nodes', given to the namespaces that ask for them."""
    gpus = cluster.get("total", {}).get("GPU", 0)
    if not gpus:
        return CheckRow("gpu", False, "no GPU in the cluster")
    return CheckRow("gpu", True, f"{gpus:g} in the cluster (a namespace gets them with "
                    '"resources": {"num_gpus": N})')


def _code_row(client: Client, code: str) -> CheckRow:
    import secrets as _secrets

    namespace = client.namespace(f"check-{_secrets.token_hex(4)}")
    try:
        result = namespace.run(code, timeout=300)
    finally:
        namespace.delete()
    if result.status == "ok":
        shown = (result.result or {}).get("text/plain") or result.stdout.strip()[-80:] or "ran"
        return CheckRow("code", True, shown)
    error = result.error
    return CheckRow("code", False, f"{error.ename}: {error.evalue}" if error else result.status)


@cli.command()
@url_option
@token_option
@data_dir_option
@click.option("--require", "requirements", multiple=True, metavar="PKG[SPEC]",
              help="A package that must be installed, e.g. 'torch>=2.1' (repeatable).")
@click.option("--gpu", is_flag=True, help="Require at least one GPU (torch, jax or nvidia-smi).")
@click.option("--code", default=None, help="Code that must run without error.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def check(url: str, token: str | None, data_dir: str | None, requirements: tuple[str, ...],
          gpu: bool, code: str | None, as_json: bool) -> None:
    """Probe the server's environment for CI; exit 1 if a requirement fails."""
    rows: list[CheckRow] = []

    def report_failure(message: str) -> None:
        # A script reading --json gets a report even when the server could not be asked.
        if as_json:
            click.echo(json.dumps({"ok": False, "url": url, "error": message,
                                   "checks": [asdict(r) for r in rows]}, indent=2))

    with _session(url, token, data_dir, on_error=report_failure) as client:
        info = client.info()
        probe = info.get("probe", {})
        if "error" in probe:
            rows.append(CheckRow("probe", False, str(probe["error"])))
            probe = {}
        rows.append(CheckRow("server", True, f"kernelserver {info.get('version')} "
                             f"({info.get('backend')} backend) at {url}"))
        cluster = info.get("cluster")
        if cluster is not None:
            rows.append(_cluster_row(cluster))
        if probe:
            py = probe.get("python", {})
            rows.append(CheckRow("python", True, f"{py.get('version')} ({py.get('executable')})"))
        rows += [_requirement_row(spec, probe.get("packages", {})) for spec in requirements]
        if gpu:
            rows.append(_gpu_row(probe) if cluster is None else _cluster_gpu_row(cluster))
        if code is not None:
            rows.append(_code_row(client, code))
    ok = all(row.ok for row in rows)
    if as_json:
        click.echo(json.dumps({"ok": ok, "url": url, "checks": [asdict(r) for r in rows],
                               "probe": probe}, indent=2))
    else:
        width = max(len(row.check) for row in rows)
        for row in rows:
            click.echo(f"{row.check:<{width}}  {'ok  ' if row.ok else 'FAIL'}  {row.found}")
        failed = sum(not row.ok for row in rows)
        click.echo("all checks passed" if ok else f"{failed} check(s) failed")
    sys.exit(0 if ok else 1)


# -- a server's namespaces and their cells --


def _ago(stamp: object, now: datetime) -> str:
    """'3 s ago', '2 min ago', '5 h ago', '4 d ago' for an ISO 8601 time; '-' for none."""
    if not isinstance(stamp, str):
        return "-"
    try:
        # Python 3.10's fromisoformat does not read the Z the server writes.
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = max(0, int((now - then).total_seconds()))  # a server clock ahead reads "0 s ago"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _size(value: object) -> str:
    """Bytes in MiB (GiB from 1 GiB on); '-' when unknown."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    mib = value / 2**20
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.1f} MiB"


def _duration(ms: object) -> str:
    """'12 ms', '3.4 s', '5 min 7 s'; '-' while running."""
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    seconds = int(ms // 1000)
    return f"{seconds // 60} min {seconds % 60} s"


def _first_line(code: object) -> str:
    """A cell's first non-blank line, printable, with an ellipsis when more lines follow."""
    lines = [line for line in str(code or "").splitlines() if line.strip()]
    if not lines:
        return ""
    # The code is shown in a terminal: no escape sequences or carriage returns from it.
    first = "".join(c if c.isprintable() else " " for c in lines[0].expandtabs(4)).rstrip()
    return f"{first} {ELLIPSIS}" if len(lines) > 1 else first


def _cut(text: str, width: int) -> str:
    """text in at most width characters, an ellipsis marking the cut."""
    if len(text) <= width:
        return text
    return text[:width - 1] + ELLIPSIS if width > 0 else ""


def _table(header: list[str], rows: list[list[str]], flexible: int,
           right: frozenset[int] = frozenset()) -> list[str]:
    """Aligned lines that fit the terminal's width: the flexible column is cut to make room."""
    columns = shutil.get_terminal_size().columns
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    gap = "  "
    over = sum(widths) + len(gap) * (len(widths) - 1) - columns
    if over > 0:
        keep = min(widths[flexible], max(len(header[flexible]), 8))
        widths[flexible] = max(keep, widths[flexible] - over)
    lines = []
    for row in [header, *rows]:
        cells = [_cut(cell, width) for cell, width in zip(row, widths, strict=True)]
        cells = [cell.rjust(width) if i in right else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(cells, widths, strict=True))]
        lines.append(gap.join(cells).rstrip())
    return lines


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


namespace_argument = click.argument("namespace_id", metavar="ID")


@cli.command("ls")
@client_options
def ls(url: str, token: str | None, data_dir: str | None, as_json: bool) -> None:
    """List the server's namespaces.

    Their state, cells run, the running cell, memory and last activity."""
    with _session(url, token, data_dir) as client:
        envs = client.namespaces()
    if as_json:
        _print_json({"envs": envs})
        return
    if not envs:
        click.echo("no namespaces (`kernelserver exec --id ID CODE` creates one)", err=True)
        return
    now = datetime.now(timezone.utc)
    rows = [[str(env.get("id")), str(env.get("state")), str(env.get("execution_count", "-")),
             "-" if env.get("running") is None else str(env["running"]),
             _size(env.get("memory_rss")), _ago(env.get("last_activity"), now)] for env in envs]
    header = ["ID", "STATE", "CELLS", "RUNNING", "MEMORY", "LAST ACTIVITY"]
    for line in _table(header, rows, flexible=0, right=frozenset({2, 3, 4})):
        click.echo(line)


@cli.command("history")
@client_options
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the newest N cells [100].")
@namespace_argument
def history(url: str, token: str | None, data_dir: str | None, as_json: bool, limit: int | None,
            namespace_id: str) -> None:
    """List a namespace's past cells.

    Oldest first: number, status, duration and the first line of the code."""
    with _session(url, token, data_dir) as client:
        executions = client.namespace(namespace_id, create=False).history(limit)
    if as_json:
        _print_json({"id": namespace_id, "executions": executions})
        return
    if not executions:
        click.echo(f"no cells in {namespace_id!r} yet", err=True)
        return
    rows = [[str(row.get("execution_count")), str(row.get("status")),
             _duration(row.get("duration_ms")), _first_line(row.get("code"))]
            for row in executions]
    for line in _table(["N", "STATUS", "DURATION", "CODE"], rows, flexible=3,
                       right=frozenset({0, 2})):
        click.echo(line)


@cli.command("show")
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


@cli.command("attach")
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


@cli.command("interrupt")
@client_options
@namespace_argument
def interrupt(url: str, token: str | None, data_dir: str | None, as_json: bool,
              namespace_id: str) -> None:
    """Interrupt the cell running in a namespace.

    A KeyboardInterrupt in the cell; exit 1 if none was running."""
    with _session(url, token, data_dir) as client:
        interrupted = client.namespace(namespace_id, create=False).interrupt()
    if as_json:
        _print_json({"id": namespace_id, "interrupted": interrupted})
    elif interrupted:
        click.echo(f"interrupted the cell running in {namespace_id!r}")
    else:
        click.echo(f"kernelserver: nothing is running in {namespace_id!r}", err=True)
    sys.exit(0 if interrupted else 1)


@cli.command("restart")
@client_options
@namespace_argument
def restart(url: str, token: str | None, data_dir: str | None, as_json: bool,
            namespace_id: str) -> None:
    """Restart a namespace empty (history kept).

    A fresh, empty namespace under the same id; its history is kept."""
    with _session(url, token, data_dir) as client:
        info = client.namespace(namespace_id, create=False).restart()
    if as_json:
        _print_json(info)
    else:
        click.echo(f"restarted {namespace_id!r}: empty again, history kept")


@cli.command("rm")
@client_options
@namespace_argument
def rm(url: str, token: str | None, data_dir: str | None, as_json: bool, namespace_id: str) -> None:
    """Delete a namespace and its worker.

    Its worker and memory are gone when this returns; its history is kept."""
    with _session(url, token, data_dir) as client:
        answer = client.namespace(namespace_id, create=False).delete()
    if as_json:
        _print_json(answer)
    else:
        click.echo(f"deleted {namespace_id!r}")


# -- the local server --


def _runs_server(pid: int) -> bool:
    """True when pid's command line names kernelserver or gunicorn."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False  # no such process
        try:  # no /proc (macOS): ask ps
            command = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                                     text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return False
    except OSError:
        return False
    command = command.lower()
    return "kernelserver" in command or "gunicorn" in command


def _stop_target(info: dict[str, Any]) -> int | None:
    """The process to send SIGTERM: gunicorn's master when it runs the server, else the server."""
    # A worker stopped alone would be replaced by its master, with a fresh token; the master
    # stops its worker, which writes its cells' final rows, and exits. The command-line check
    # keeps a recycled pid (or a shell that ran the server some other way) from being signalled.
    parent, pid = info.get("parent"), info.get("pid")
    if isinstance(parent, int) and parent > 1 and _runs_server(parent):
        return parent
    return pid if isinstance(pid, int) and pid > 0 else None


@cli.command("stop")
@click.option("--data-dir", default=None, help="The server's data dir "
              "[env KERNELSERVER_DATA_DIR; else the user data dir].")
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for it to stop.")
@json_option
def stop(data_dir: str | None, timeout: float, as_json: bool) -> None:
    """Stop the local server cleanly.

    The server running from the data dir on this machine gets SIGTERM; exit 1 if none runs
    there, or if it still runs after --timeout."""
    from .datadir import describe, holder

    where = Path(data_dir or os.environ.get("KERNELSERVER_DATA_DIR") or default_data_dir())

    def stop_failed(message: str) -> NoReturn:
        if as_json:
            _print_json({"stopped": False, "data_dir": str(where), "error": message})
        fail(message, 1)

    info = holder(where)
    if info is None:
        stop_failed(f"no kernelserver is running from the data dir {where} (another data dir: "
                    "--data-dir)")
    target = _stop_target(info)
    if target is None:
        stop_failed(f"the lock in {where} does not say which process holds it; stop that "
                    "server by hand")
    try:
        os.kill(target, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited meanwhile: the wait below sees the lock free
    except PermissionError:
        stop_failed(f"not allowed to stop {describe(info)}: it runs as another user")
    deadline = time.monotonic() + timeout
    while holder(where) is not None:
        if time.monotonic() >= deadline:
            stop_failed(f"{describe(info)} is still running {timeout:g} s after SIGTERM (it may "
                        "be finishing its cells); wait longer with --timeout")
        time.sleep(0.1)
    if as_json:
        _print_json({"stopped": True, "data_dir": str(where), "server": info})
    else:
        click.echo(f"stopped {describe(info)}")


@cli.command("token")
@click.option("--data-dir", default=None, help="The server's data dir "
              "[env KERNELSERVER_DATA_DIR; else the user data dir].")
def token_(data_dir: str | None) -> None:
    """Print the token of the server running from this data dir (same OS user only)."""
    where = tokenfile.path(data_dir)
    data = tokenfile.read(data_dir)
    if data is None:
        fail(f"no token file at {where}: no server is running from that data dir, or it was "
             "started with --no-auth (or pass --data-dir)", 1)
        return
    if not _pid_alive(data.get("pid")):
        fail(f"{where} is left from a server that is no longer running", 1)
    click.echo(data["token"])


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kernelserver")


if __name__ == "__main__":
    main()
