"""The commands about a server's namespaces: ls, history, interrupt, restart, rm; their tables."""

from __future__ import annotations

import shutil
import sys
from datetime import datetime, timezone

import click

from .common import _print_json, _session, client_options, namespace_argument

ELLIPSIS = "…"


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


@click.command("ls")
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


@click.command("kernels")
@client_options
def kernels(url: str, token: str | None, data_dir: str | None, as_json: bool) -> None:
    """List the environments a namespace can run in; exit 1 if one cannot start.

    Each one's name (for --kernel), where it was found, its Python and version (or, for a Jupyter
    kernel of another language, that language and its program)."""
    with _session(url, token, data_dir) as client:
        found = client.kernels()
    if as_json:
        _print_json({"kernels": found})
    else:
        rows = [[str(k["name"]), str(k["source"]), str(k.get("version") or "-"),
                 "yes" if k["starts"] else f"no: {k.get('why')}",
                 str(k["python"]) if k.get("python") else f"{k.get('language')} kernel: {k.get('argv0')}"]
                for k in found]
        for line in _table(["NAME", "FOUND IN", "PYTHON", "STARTS", "RUNS"], rows,
                           flexible=4):
            click.echo(line)
    sys.exit(0 if all(k["starts"] for k in found) else 1)


@click.command("history")
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


@click.command("interrupt")
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


@click.command("restart")
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


@click.command("rm")
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
