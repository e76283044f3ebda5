"""The one settings table: defaults, then KERNELSERVER_* environment, then explicit overrides."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import kernelspecs
from .backends import BACKENDS
from .backends.base import SYNTAXES

MIB = 1024 * 1024
MIN_MEMORY_LIMIT = 64 * MIB  # as backends.memory.MIN_LIMIT: a worker's interpreter needs ~30 MiB


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_size(value: object) -> int:
    """Bytes from an int or a string like '512M', '2G', '1.5GiB' (ValueError when neither)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string such as '2G'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        raise ValueError("a size is a number of bytes or a string such as '2G'")
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", value.lower())
    if not found:
        raise ValueError(f"{value!r} is not a size: use bytes or a string such as '512M' or '2G'")
    number, unit = float(found.group(1)), found.group(2)
    return int(number * (1024 ** " kmgt".index(unit or " ")))


def _parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def default_data_dir() -> str:
    """The platform's per-user data directory for kernelserver."""
    if sys.platform == "darwin":
        return str(Path.home() / "Library" / "Application Support" / "kernelserver")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "kernelserver")


@functools.lru_cache(maxsize=64)  # asked on every request, nearly always with one same value
def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (brackets and case ignored)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_without_port(host_header: str) -> str:
    """The name part of a Host header: `[::1]:5000` → `[::1]`, `box:80` → `box`."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Setting:
    """One configurable value: its name, default, parser and help text."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        """The environment variable that overrides the default."""
        return "KERNELSERVER_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", str, "Address to bind. Anything but loopback exposes the server."),
    Setting("port", 5000, int, "TCP port to listen on."),
    Setting("token", None, str, "Bearer token clients must send; generated and printed if unset."),
    Setting("no_auth", False, _parse_bool, "Disable the token check (refused unless host is loopback)."),
    Setting("backend", "process", str, "Namespace backend: " + ", ".join(
        f"`{name}` ({entry.help})" for name, entry in BACKENDS.items()) + "."),
    Setting("data_dir", None, str, "Directory for history and the server lock "
            "(default: the platform's user data directory)."),
    Setting("allowed_hosts", (), _parse_list, "Extra Host header names accepted when bound to "
            "loopback (comma-separated)."),
    Setting("allowed_origins", (), _parse_list, "Web page origins (e.g. `https://lab.example:8888`, "
            "or `*`) allowed to open WebSockets besides the server's own; others get 403 "
            "(comma-separated)."),
    Setting("max_body_bytes", 16 * MIB, int, "Largest request body (and WebSocket message) "
            "accepted; larger gets 413 (1009 on a WebSocket)."),
    Setting("max_namespaces", 32, int, "Most namespaces alive at once; past it /env/create gets 429."),
    Setting("max_queued", 64, int, "Most executions waiting in one namespace's queue; past it 429."),
    Setting("output_cap_bytes", 8 * MIB, int, "Output kept per stream per execution; head and tail "
            "are kept around a marker and `truncated` is true. A request may ask for less; more gets "
            "400 `limit_exceeded`."),
    Setting("repr_limit_bytes", 1 * MIB, int, "Longest repr kept for a result or display: longer "
            "text is cut with a marker, a longer image or JSON value dropped with a note, and "
            "`truncated` is true. A request may ask for less; more gets 400 `limit_exceeded`."),
    Setting("start_timeout", 60.0, float, "Seconds a new namespace may take to start; past it the "
            "start is abandoned and its callers get 503 `namespace_unavailable`."),
    Setting("interrupt_grace", 2.0, float, "Seconds a timed-out cell gets to stop after its "
            "interrupt before its worker is killed."),
    Setting("threads", 64, int, "gunicorn threads: concurrent requests, including waiting ones "
            "and open WebSockets."),
    Setting("max_websockets", None, int, "Most WebSockets open at once (each holds a thread); "
            "below `threads`, so plain requests always have some (default: half of them); past it "
            "503."),
    Setting("websocket_ping_interval", 25.0, float, "Seconds between pings on a quiet WebSocket; "
            "a peer that does not answer within as long again is dropped."),
    Setting("request_read_timeout", 15.0, float, "Seconds a request's headers may take in all, "
            "and one read of its body may wait; past it the connection is dropped (a stalled body "
            "gets 408), so stalled clients cannot pin threads."),
    Setting("stream_keepalive", 10.0, float, "Seconds of silence after which a stream gets a "
            "keepalive event (proxies drop idle connections)."),
    Setting("syntax", "ipython", str, "What cells are written in, unless a namespace asks: `ipython` "
            "(magics, `!cmd`, `obj?`, In/Out, where IPython is installed; plain Python otherwise) "
            "or `python` (plain Python, nothing added). The inprocess backend, one process for "
            "all namespaces, gives IPython only to a namespace that asks for it."),
    Setting("kernels", (), _parse_list, "Other Python environments namespaces may run in, as "
            "`NAME=PYTHON` (comma-separated; e.g. `torch=/opt/conda/envs/torch/bin/python`); "
            "Python kernelspecs and conda environments are found without it. `kernelserver "
            "kernels` lists them all."),
    Setting("keep_executions", 4, int, "Finished executions per namespace kept in memory "
            "(older ones are read from history)."),
    Setting("ray_address", "auto", str, "With the ray backend: the cluster to place namespaces "
            "on (`auto`: the one this machine belongs to; `host:port`; `ray://host:port`)."),
    Setting("memory_limit", 0, parse_size, "Default memory limit per namespace (its worker and "
            "every process it starts; bytes, or `512M`, `2G`); 0 for none. A cell that goes past it "
            "is stopped with `MemoryLimitExceeded` and the namespace restarted. `/env/create` may "
            "set a namespace's own (`memory_limit`)."),
    Setting("memory_limit_method", "auto", str, "How limits are kept: `cgroup` (v2, else v1, "
            "under the server's own cgroup; exact), `watchdog` (the server samples memory every "
            "0.1 s and kills past the limit), or `auto` (cgroup where the system lets the server "
            "make groups, else watchdog). GET /info says which is in use."),
    Setting("history_keep", 0, int, "Executions kept in history per namespace, the newest; 0 all. "
            "Older ones (their code and output) are deleted within a minute; their numbers are "
            "never handed out again. `DELETE /env/history` prunes one namespace now."),
    Setting("history_max_age_days", 0.0, float, "Days an execution stays in history; 0 forever."),
    Setting("request_log", "text", str, "One line per request on stderr: method, path, status, "
            "duration, namespace, execution count (never the token, the query string or the "
            "code): `text`, `json` (one object a line), or `off`."),
    Setting("cull_idle_after", 0.0, float, "Seconds a namespace may sit idle (no cell queued or "
            "running) before it is deleted to free its memory and GPU; 0 never. Its history stays "
            "readable. `/env/create` may set a namespace's own (`cull_idle_after`)."),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def load_config(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Resolve every setting: table default, then KERNELSERVER_* variable, then overrides."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        value = setting.default
        raw = environ.get(setting.env)
        if raw is not None and raw != "":
            try:
                value = setting.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{setting.env}: {exc}") from None
        config[setting.name] = value
    for name, value in (overrides or {}).items():
        if name not in _BY_NAME:
            raise ValueError(f"unknown setting {name!r}")
        if value is not None:
            config[name] = value
    if config["data_dir"] is None:
        config["data_dir"] = default_data_dir()
    if config["backend"] not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"not {config['backend']!r}")
    if config["syntax"] not in SYNTAXES:
        raise ValueError(f"syntax must be one of {', '.join(map(repr, SYNTAXES))}, "
                         f"not {config['syntax']!r}")
    config["kernels"] = tuple(config["kernels"])
    kernelspecs.parse_setting(config["kernels"])  # a bad entry stops the server, in one line
    config["allowed_hosts"] = tuple(config["allowed_hosts"])
    config["allowed_origins"] = tuple(config["allowed_origins"])
    if config["max_websockets"] is None:
        config["max_websockets"] = config["threads"] // 2
    if not 0 <= config["max_websockets"] < config["threads"]:
        raise ValueError(f"max_websockets ({config['max_websockets']}) must be below threads "
                         f"({config['threads']}): each WebSocket holds a thread")
    if config["memory_limit_method"] not in ("auto", "cgroup", "watchdog"):
        raise ValueError("memory_limit_method must be auto, cgroup or watchdog, not "
                         f"{config['memory_limit_method']!r}")
    config["memory_limit"] = parse_size(config["memory_limit"])
    if config["memory_limit"] and config["memory_limit"] < MIN_MEMORY_LIMIT:
        raise ValueError(f"memory_limit must be 0 (none) or at least {MIN_MEMORY_LIMIT // MIB} MiB")
    if config["request_log"] not in ("text", "json", "off"):
        raise ValueError(f"request_log must be text, json or off, not {config['request_log']!r}")
    if config["history_keep"] < 0 or config["history_max_age_days"] < 0:
        raise ValueError("history_keep and history_max_age_days must be 0 (no limit) or more")
    if config["cull_idle_after"] < 0:
        raise ValueError("cull_idle_after must be 0 (never) or more seconds")
    if config["websocket_ping_interval"] <= 0:
        raise ValueError("websocket_ping_interval must be more than 0 seconds")
    return config


def settings_markdown() -> str:
    """The settings reference as a Markdown table, rendered from SETTINGS."""
    lines = ["| setting | environment | default | what it does |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "(generated)" if s.name == "token" else s.default
        if s.name == "data_dir":
            default = "(user data dir)"
        if s.name == "max_websockets":
            default = "(threads / 2)"
        lines.append(f"| `{s.name}` | `{s.env}` | `{default}` | {s.help} |")
    return "\n".join(lines) + "\n"
