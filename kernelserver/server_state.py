"""Everything one app owns: settings, token, registry, history, the data-dir lock."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

from . import tokenfile
from .backends import make_kernel_factory
from .config import is_loopback
from .errors import ExecutionNotFound, NamespaceNotFound
from .execution import Execution
from .history import History, HistoryError
from .probe import PROBE_CODE, parse_probe_output
from .registry import Registry, validate_id
from .results import ExecutionResult

PROBE_TTL = 30.0


class ServerLockError(RuntimeError):
    """Another kernelserver process already serves this data dir."""


class ServerState:
    """The app's one piece of state, kept in app.extensions["kernelserver"]."""

    def __init__(self, config: dict[str, Any], version: str) -> None:
        self.config = config
        self.version = version
        self.token: str | None = None if config["no_auth"] else config["token"]
        self.check_host = is_loopback(config["host"])
        self.allowed_hosts = frozenset(h.lower() for h in config["allowed_hosts"])
        self._lock_file = self._take_lock(Path(config["data_dir"]))
        try:
            self.history = History(config["data_dir"])
        except HistoryError:
            self._release_lock()
            raise
        if self.token:
            # For clients of this OS user on this machine (`kernelserver token`, the Client).
            tokenfile.write(config["data_dir"], config["host"], config["port"], self.token)
        self.backend = make_kernel_factory(config)
        self.registry = Registry(config, self.backend, self.history)
        self._closed = False
        self._close_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._probe_cache: tuple[float, dict[str, Any]] | None = None

    @staticmethod
    def _take_lock(data_dir: Path) -> IO[str]:
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(data_dir / "server.lock", "a+")  # noqa: SIM115 - held for the app's life
        except OSError as exc:
            raise HistoryError(
                f"cannot use the data dir {data_dir}: {exc.strerror}; choose another with "
                "--data-dir or KERNELSERVER_DATA_DIR"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ServerLockError(
                f"another kernelserver process already serves {data_dir}. Namespaces live in one "
                "process: run gunicorn with exactly one worker (-w 1, threads for concurrency), "
                "or give each server its own --data-dir"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def _release_lock(self) -> None:
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        finally:
            self._lock_file.close()

    def find_execution(self, namespace_id: str, n: int) -> Execution | ExecutionResult:
        """A live execution if the namespace still holds it, else the recorded one."""
        validate_id(namespace_id)
        live_namespace = None
        try:
            live_namespace = self.registry.get(namespace_id)
            return live_namespace.execution(n)
        except (NamespaceNotFound, ExecutionNotFound):
            pass
        self.history.flush(timeout=5.0)
        recorded = self.history.get(namespace_id, n)
        if recorded is not None:
            return recorded
        if live_namespace is None and not self.history.has(namespace_id):
            raise NamespaceNotFound(f"no namespace or history for {namespace_id!r}",
                                    id=namespace_id)
        raise ExecutionNotFound(f"no execution {n} in namespace {namespace_id!r}")

    def history_of(self, namespace_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` executions of a namespace, oldest first."""
        validate_id(namespace_id)
        self.history.flush(timeout=5.0)
        rows = self.history.list(namespace_id, limit)
        if not rows and namespace_id not in self.registry.ids():
            raise NamespaceNotFound(f"no namespace or history for {namespace_id!r}",
                                    id=namespace_id)
        return rows

    def limits(self) -> dict[str, Any]:
        """The limits a client cares about."""
        keys = ("max_body_bytes", "max_namespaces", "max_queued", "output_cap_bytes",
                "repr_limit_bytes", "interrupt_grace", "request_read_timeout")
        return {key: self.config[key] for key in keys}

    def probe(self) -> dict[str, Any]:
        """The environment probe, run in a fresh worker, cached for PROBE_TTL seconds."""
        with self._probe_lock:
            cached = self._probe_cache
            if cached is not None and time.monotonic() - cached[0] < PROBE_TTL:
                return cached[1]
            kernel = self.backend("probe")
            try:
                sink = Execution("probe", 0, PROBE_CODE, 1 << 24)
                sink.start()
                outcome = kernel.execute(PROBE_CODE, 0, sink, 120.0)
            finally:
                kernel.close()
            output = sink.stdout.getvalue()
            found = parse_probe_output(output)
            if found is None:
                detail = outcome.error.evalue if outcome.error else output[-300:]
                found = {"error": f"the probe failed: {detail}"}
            else:
                self._probe_cache = (time.monotonic(), found)
            return found

    def info(self) -> dict[str, Any]:
        """Server version, backend, limits and the environment probe for /info."""
        return {
            "version": self.version,
            "backend": self.config["backend"],
            "auth": self.token is not None,
            "limits": self.limits(),
            "namespaces": len(self.registry.ids()),
            "probe": self.probe(),
        }

    def close(self) -> None:
        """Stop every namespace, flush history and release the data dir."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.registry.close()
        close_backend = getattr(self.backend, "close", None)
        if close_backend is not None:
            close_backend()
        self.history.close()
        if self.token:
            tokenfile.remove(self.config["data_dir"], self.token)
        self._release_lock()
