"""The command line: serve (under gunicorn, see serving.py), exec, check, token.

Only `serve` imports the server: exec and check run on a laptop with the client alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__, tokenfile
from .backends import BACKENDS
from .config import is_loopback, load_config
from .errors import KernelServerError
from .results import DisplayEvent, ExecutionResult, OutputEvent, ResultEvent

url_option = click.option("--url", envvar="KERNELSERVER_URL", default="http://127.0.0.1:5000",
                          show_default=True, help="Server URL [env KERNELSERVER_URL].")
token_option = click.option("--token", envvar="KERNELSERVER_TOKEN", default=None,
                            help="Bearer token [env KERNELSERVER_TOKEN].")


def fail(message: str, code: int = 2) -> None:
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
    from .history import History, HistoryError
    from .service import ServerLockError, take_data_dir_lock

    try:
        lock = take_data_dir_lock(Path(config["data_dir"]))
    except (HistoryError, ServerLockError) as exc:
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


def _client(url: str, token: str | None) -> Any:
    from .client import Client

    return Client(url, token)


def _write(stream: Any) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


@cli.command("exec")
@url_option
@token_option
@click.option("--id", "namespace_id", default="default", show_default=True, help="Namespace id.")
@click.option("--timeout", type=float, default=None, help="Seconds before the cell is stopped.")
@click.option("--gpus", type=float, default=None,
              help="GPUs for a new namespace (ray backend: placed on a node with them free).")
@click.option("--cpus", type=float, default=None, help="CPUs for a new namespace (ray backend).")
@click.option("--memory", default=None, help="Memory limit of a new namespace, e.g. 16G.")
@click.argument("code")
def exec_(url: str, token: str | None, namespace_id: str, timeout: float | None, gpus: float | None,
          cpus: float | None, memory: str | None, code: str) -> None:
    """Run CODE (or - for stdin) in a namespace, streaming its output; exit 1 if it fails.

    --gpus, --cpus and --memory apply when this creates the namespace."""
    if code == "-":
        code = sys.stdin.read()
    out, err = _write(sys.stdout), _write(sys.stderr)
    final: ExecutionResult | None = None
    try:
        with _client(url, token) as client:
            namespace = client.namespace(namespace_id, num_gpus=gpus, num_cpus=cpus, memory=memory)
            try:
                for event in namespace.stream(code, timeout=timeout):
                    if isinstance(event, OutputEvent):
                        (out if event.stream == "stdout" else err)(event.text)
                    elif isinstance(event, DisplayEvent):
                        out(str(event.data.get("text/plain", "")) + "\n")
                    elif isinstance(event, ResultEvent):
                        final = event.result
            except KeyboardInterrupt:
                namespace.interrupt()
                err("\nkernelserver: interrupted the cell\n")
                sys.exit(130)
    except KernelServerError as exc:
        fail(str(exc))
    if final is None:
        fail("the stream ended before the result")
        return
    if final.result:
        out(str(final.result.get("text/plain", "")) + "\n")
    if final.error:
        err(final.error.traceback or f"{final.error.ename}: {final.error.evalue}\n")
    sys.exit(0 if final.ok else 1)


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
        raise  # unreachable: fail() exits
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


def _code_row(client: Any, code: str) -> CheckRow:
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
@click.option("--require", "requirements", multiple=True, metavar="PKG[SPEC]",
              help="A package that must be installed, e.g. 'torch>=2.1' (repeatable).")
@click.option("--gpu", is_flag=True, help="Require at least one GPU (torch, jax or nvidia-smi).")
@click.option("--code", default=None, help="Code that must run without error.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def check(url: str, token: str | None, requirements: tuple[str, ...], gpu: bool, code: str | None,
          as_json: bool) -> None:
    """Probe the server's environment for CI; exit 1 if a requirement fails."""
    rows: list[CheckRow] = []
    try:
        with _client(url, token) as client:
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
    except KernelServerError as exc:
        fail(str(exc))
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
