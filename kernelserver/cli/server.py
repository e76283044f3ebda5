"""The commands for the server on this machine: serve, stop, token; the checks serve makes first."""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from .. import __version__, tokenfile
from ..backends import BACKENDS
from ..config import default_data_dir, is_loopback, load_config
from .common import _print_json, fail, json_option


def _preflight(config: dict[str, Any]) -> None:
    """Open the data dir and history once in this process, so problems are one clear line."""
    missing = BACKENDS[config["backend"]].missing()
    if missing:
        fail(f"--backend {config['backend']}: {missing}")
    from ..datadir import ServerLockError, take_lock
    from ..history import History, HistoryError

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


@click.command()
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
@click.option("--kernel", "kernels", multiple=True, metavar="NAME=PYTHON",
              help="Another Python environment namespaces may run in, e.g. "
              "torch=/opt/conda/envs/torch/bin/python (repeatable; kernelspecs and conda "
              "environments are found without it).")
@click.option("--threads", type=int, default=None, help="Concurrent requests [64].")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS certificate (PEM); serve HTTPS.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS private key (PEM).")
def serve(host: str | None, port: int | None, token: str | None, no_auth: bool | None,
          backend: str | None, data_dir: str | None, ray_address: str | None,
          allow_hosts: tuple[str, ...],
          allow_origins: tuple[str, ...], kernels: tuple[str, ...], threads: int | None,
          certfile: str | None, keyfile: str | None) -> None:
    """Run the server under gunicorn and print its URL and token.

    Every other setting (limits, timeouts, the request log, ...) is a KERNELSERVER_* environment
    variable: see docs/settings.md, or the settings table in the README."""
    overrides = {"host": host, "port": port, "token": token, "no_auth": no_auth,
                 "backend": backend, "data_dir": data_dir, "threads": threads,
                 "ray_address": ray_address,
                 "allowed_hosts": allow_hosts or None, "allowed_origins": allow_origins or None,
                 "kernels": kernels or None}
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
    # A token that was given is never printed: under a service manager this stderr is a log
    # (docs/security.md). `kernelserver token` prints it for this user on this machine.
    if config["token"] and generated:
        click.echo(f"console: {url}/#token={config['token']}", err=True)
        click.echo(f"jupyter: jupyter lab --gateway-url={url} --GatewayClient.auth_token="
                   f"{config['token']}", err=True)
    elif config["token"]:
        ask = "kernelserver token"
        if Path(config["data_dir"]) != Path(default_data_dir()):
            ask += f" --data-dir {shlex.quote(str(config['data_dir']))}"
        click.echo(f"console: open {url}/ and paste your token (`{ask}` prints it)", err=True)
        click.echo(f"jupyter: jupyter lab --gateway-url={url} "
                   f"--GatewayClient.auth_token=\"$({ask})\"", err=True)
    else:
        click.echo(f"console: {url}/", err=True)
        click.echo(f"jupyter: jupyter lab --gateway-url={url}", err=True)
    if not is_loopback(config["host"]):
        click.echo("WARNING: not bound to loopback: anyone who can reach this port and holds "
                   "the token can run code as this user", err=True)
    from ..web.serving import gunicorn_options, run_gunicorn

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


@click.command("stop")
@click.option("--data-dir", default=None, help="The server's data dir "
              "[env KERNELSERVER_DATA_DIR; else the user data dir].")
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for it to stop.")
@json_option
def stop(data_dir: str | None, timeout: float, as_json: bool) -> None:
    """Stop the local server cleanly.

    The server running from the data dir on this machine gets SIGTERM; exit 1 if none runs
    there, or if it still runs after --timeout."""
    from ..datadir import describe, holder

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


@click.command("token")
@click.option("--data-dir", default=None, help="The server's data dir "
              "[env KERNELSERVER_DATA_DIR; else the user data dir].")
def token_(data_dir: str | None) -> None:
    """Print the token of the server running from this data dir (same OS user only)."""
    from ..datadir import holder

    where = tokenfile.path(data_dir)
    data = tokenfile.read(data_dir)
    if data is None:
        fail(f"no token file at {where}: no server is running from that data dir, or it was "
             "started with --no-auth (or pass --data-dir)", 1)
    # The data dir's lock, as `stop` asks it: held by the server that wrote the token file for
    # as long as that process lives, and let go by the kernel whatever ends it (kill -9 too).
    # A pid alone says nothing: a killed server's pid lives on as a zombie, or another
    # process's.
    info = holder(where.parent)
    pid = data.get("pid")
    if info is None or (pid is not None and info.get("pid") != pid):
        address = f"{data['host']}:{data['port']}" if data.get("host") and data.get("port") else ""
        shown = ", ".join(part for part in (address, f"pid {pid}" if pid else "") if part)
        fail(f"the kernelserver recorded in {where}" + (f" ({shown})" if shown else "")
             + " is not running: it stopped without removing its token file (killed?); start "
             "it again with `kernelserver serve`", 1)
    click.echo(data["token"])
