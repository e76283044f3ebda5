"""The token file: where a running server leaves its token for clients of the same OS user."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import default_data_dir, is_loopback

NAME = "token.json"


def path(data_dir: str | None = None) -> Path:
    """The token file of a data dir (KERNELSERVER_DATA_DIR, else the user data dir)."""
    return Path(data_dir or os.environ.get("KERNELSERVER_DATA_DIR") or default_data_dir()) / NAME


def write(data_dir: str, host: str, port: int, token: str) -> None:
    """Write the token, readable by this OS user only (0600 in a 0700 data dir)."""
    target = path(data_dir)
    temporary = target.with_name(f".{NAME}.{os.getpid()}")
    # Created 0600 from the start (never briefly world-readable); O_NOFOLLOW refuses a planted link.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, 0o600)
        json.dump({"host": host, "port": port, "token": token, "pid": os.getpid()}, handle)
    os.replace(temporary, target)


def remove(data_dir: str, token: str) -> None:
    """Remove the token file if it still holds this token (a newer server may have replaced it)."""
    data = read(data_dir)
    if data is not None and data.get("token") == token:
        path(data_dir).unlink(missing_ok=True)


def read(data_dir: str | None = None) -> dict[str, Any] | None:
    """The token file's contents, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("token"), str) else None


def token_for(url: str, data_dir: str | None = None) -> str | None:
    """The local server's token, when url points at it: loopback and the same port, never elsewhere."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname or not is_loopback(parts.hostname):
        return None  # a local token must never travel to another machine
    data = read(data_dir)
    if data is None or data.get("port") != port:
        return None
    token: str = data["token"]
    return token
