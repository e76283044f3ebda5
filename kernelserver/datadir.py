"""The data dir's lock: one server per data dir, and who holds it (for `stop` and clear errors)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from .history import HistoryError

LOCK_NAME = "server.lock"


class ServerLockError(RuntimeError):
    """Another kernelserver process already serves this data dir."""


def take_lock(data_dir: Path, host: str | None = None, port: int | None = None) -> IO[str]:
    """Lock the data dir for this process and say who holds it (HistoryError / ServerLockError
    say why not)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the app's life
    except OSError as exc:
        raise HistoryError(
            f"cannot use the data dir {data_dir}: {exc.strerror}; choose another with "
            "--data-dir or KERNELSERVER_DATA_DIR"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ServerLockError(_held_message(data_dir)) from None
    handle.truncate(0)
    # The server process, and the one `kernelserver serve` started (gunicorn's master): the
    # one to signal to stop it.
    json.dump({"pid": os.getpid(), "parent": os.getppid(), "host": host, "port": port}, handle)
    handle.flush()
    return handle


def holder(data_dir: Path) -> dict[str, Any] | None:
    """Who holds the data dir's lock now (pid, parent, host, port), or None if no server does."""
    path = data_dir / LOCK_NAME
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                pass  # held: read who holds it
            else:
                return None  # nobody holds it
            text = handle.read()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError:  # an older server wrote its bare pid
        data = {"pid": int(text) if text.strip().isdigit() else None}
    return data if isinstance(data, dict) else {}


def describe(info: dict[str, Any]) -> str:
    """'the kernelserver on 127.0.0.1:5000 (pid 123)', as far as the lock tells."""
    where = f" on {info['host']}:{info['port']}" if info.get("host") and info.get("port") else ""
    pid = f" (pid {info['pid']})" if info.get("pid") else ""
    return f"the kernelserver{where}{pid}"


def _held_message(data_dir: Path) -> str:
    info = holder(data_dir) or {}
    if info.get("parent") == os.getppid() and info.get("pid") != os.getpid():
        # A sibling worker of the same gunicorn: the namespaces would be split between them.
        return (f"another worker of this gunicorn already serves {data_dir}. Namespaces live "
                "in one process: run gunicorn with exactly one worker (-w 1, threads for "
                "concurrency), or give each server its own --data-dir")
    return (f"the data dir {data_dir} is in use by {describe(info)}: one server per data dir. "
            f"Stop it (kernelserver stop --data-dir {data_dir}), or give this server its own "
            "--data-dir")
