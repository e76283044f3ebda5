"""What the server does, for every front end: namespaces, cells, subscriptions, history, the probe.

Front ends (the v1 HTTP API, the Jupyter kernel API, the console and the CLI through the
client) parse a request, call one method here and render what it returns, errors included:
exceptions carry ids and reasons, each front end words its own hint. Nothing here imports Flask.
"""

from __future__ import annotations

import fcntl
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import datadir, kernelspecs, tokenfile
from .backends import load_backend
from .backends.base import NamespaceOptions, Resources
from .backends.protocol import OLDEST
from .errors import (
    WHY_UNKNOWN,
    BadRequest,
    ExecutionNotFound,
    NamespaceNotFound,
    NamespaceUnavailable,
)
from .execution import Execution
from .history import History, HistoryError
from .namespace import Namespace
from .namespaceinfo import NamespaceInfo
from .registry import Registry, validate_id
from .results import Cell, Event, ResultEvent
from .runner.probe import PROBE_CODE, parse_probe_output
from .subscriptions import NamespaceEvent, NamespaceSubscription, Relay, Subscription

PROBE_TTL = 30.0
WAIT_SLICE = 1.0  # no single wait is unbounded, however long the caller is willing to wait



class CellStream:
    """One client's live view of a cell: its events, and what its leaving does to the cell."""

    def __init__(self, subscription: Subscription, keepalive: float,
                 on_abandon: Callable[[], object] | None) -> None:
        self.execution = subscription.execution
        self._subscription = subscription
        self._keepalive = keepalive
        self._on_abandon = on_abandon
        self._ended = False
        self._closed = False

    def events(self, gone: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        """The cell's events up to its result, with keepalives; stops once gone() says so."""
        try:
            for event in self._subscription.events(self._keepalive, gone=gone):
                self._ended = isinstance(event, ResultEvent)
                yield event
        finally:
            self.close()

    def close(self) -> None:
        """The client is done: unsubscribe, and cancel the cell if it asked for that (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._subscription.close()
        if not self._ended and self._on_abandon is not None and not self.execution.finished:
            self._on_abandon()


class Service:
    """The server's one piece of state, kept in app.extensions["kernelserver"]."""

    def __init__(self, config: dict[str, Any], version: str) -> None:
        self.config = config
        self.version = version
        # The credential every front end checks (auth.py), and the token file's content.
        self.token: str | None = None if config["no_auth"] else config["token"]
        self._lock_file = datadir.take_lock(Path(config["data_dir"]), config["host"], config["port"])
        try:
            self.history = History(config["data_dir"], config["history_keep"],
                                   config["history_max_age_days"])
        except HistoryError:
            self._release_lock()
            raise
        if self.token:
            # For clients of this OS user on this machine (`kernelserver token`, the Client).
            tokenfile.write(config["data_dir"], config["host"], config["port"], self.token)
        self.backend = load_backend(config)
        # The environments a namespace may run in, found once: a new conda env needs a restart.
        self.kernelspecs = kernelspecs.discover(kernelspecs.parse_setting(config["kernels"]))
        self.registry = Registry(config, self.backend, self.history)
        self._closed = False
        self._close_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._probe_cache: dict[str | None, tuple[float, dict[str, Any]]] = {}  # by kernel
        self._python_versions: dict[str, str] = {}  # by kernel: its interpreter's, once asked

    # -- namespaces --

    def create(self, namespace_id: str, options: NamespaceOptions | None = None) -> bool:
        """Start a namespace unless it exists; True if this call created it."""
        if options is not None:
            options = self.resolve_kernel(options)
            self.backend.validate(options)
        return self.registry.create(namespace_id, options)[1]

    def resolve_kernel(self, options: NamespaceOptions) -> NamespaceOptions:
        """The options with the kernel's interpreter filled in; BadRequest for an unknown one."""
        if options.kernel is None or options.kernel == kernelspecs.DEFAULT:
            return replace(options, kernel=None, python=None)
        if options.jupyter:
            return options  # resolved already (the Jupyter API's start resolves, then creates)
        spec = self.kernelspecs.get(options.kernel)
        if spec is None:
            raise BadRequest(f"no kernel {options.kernel!r}; this server has "
                             f"{', '.join(map(repr, self.kernelspecs))} (`kernelserver kernels` "
                             "lists them)")
        if not spec.jupyter:
            return replace(options, python=spec.python)
        # A Jupyter kernel runs as itself: it speaks its own language, and kernelserver cannot
        # hold its memory (docs/environments.md's table); asking for either is refused.
        if options.syntax is not None:
            raise BadRequest(f"syntax applies to kernelserver's Python worker; {spec.name!r} is a "
                             f"Jupyter kernel ({spec.language}) whose cells are its own language")
        if options.resources.memory:
            raise BadRequest(f"{spec.name!r} is a Jupyter kernel ({spec.language}), which "
                             "kernelserver cannot hold to a memory limit; create it without one")
        missing = kernelspecs.jupyter_missing(spec)
        if missing is not None:
            raise BadRequest(f"the {spec.name!r} kernel cannot start here: {missing}")
        return replace(options, python=None, jupyter=True, syntax=spec.language.lower(),
                       resources=replace(options.resources, memory=0))

    def delete(self, namespace_id: str) -> None:
        """Stop a namespace; its worker and memory are gone when this returns."""
        self.registry.delete(namespace_id)

    def ids(self) -> list[str]:
        """Every namespace id, sorted."""
        return self.registry.ids()

    def describe(self, namespace_id: str, with_variables: bool = True) -> NamespaceInfo:
        """One namespace's state, counters and (by default) variables."""
        return self.registry.get(namespace_id).info(with_variables)

    def kernel_facts(self, namespace_id: str) -> dict[str, Any]:
        """What runs a namespace, for Jupyter's kernel_info: a Jupyter kernel's own details (its
        language_info...), or the Python version of our worker's interpreter (asked once each)."""
        namespace = self.registry.get(namespace_id)
        spec = self.kernelspecs.get(namespace.kernel_name)
        if spec is None or spec.python is None:
            return namespace.info().details if spec is not None else {}
        if spec.name not in self._python_versions:
            if spec.source == "server":
                version = platform.python_version()
            else:  # one that cannot say (gone since): "", and kernel_info shows the server's
                found = kernelspecs.version_of(spec.python)
                version = "" if isinstance(found, str) else ".".join(map(str, found))
            self._python_versions[spec.name] = version
        return {"python_version": self._python_versions[spec.name]}

    def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace's info, without variables, sorted by id."""
        return [namespace.info() for namespace in self.registry.list()]

    def interrupt(self, namespace_id: str) -> bool:
        """KeyboardInterrupt in the running cell, else the next one accepted; False if none."""
        return self.registry.get(namespace_id).interrupt()

    def restart(self, namespace_id: str) -> NamespaceInfo:
        """A fresh, empty namespace under the same id; queued cells are cancelled."""
        namespace = self.registry.get(namespace_id)
        namespace.restart()
        return namespace.info(with_variables=True)

    def complete(self, namespace_id: str, code: str, cursor_pos: int) -> dict[str, Any]:
        """Completions for the name before the cursor, from the namespace (Jupyter's shape)."""
        return self.registry.get(namespace_id).complete(code, cursor_pos)

    def inspect(self, namespace_id: str, code: str, cursor_pos: int,
                detail_level: int = 0) -> dict[str, Any]:
        """Type, signature, value and docstring of the name at the cursor (Jupyter's shape)."""
        return self.registry.get(namespace_id).inspect(code, cursor_pos, detail_level)

    def subscribe(self, namespace_id: str) -> NamespaceSubscription:
        """Every event of every cell of a namespace from now on, whoever sent the cell."""
        return self.registry.get(namespace_id).subscribe()

    def relay(self, namespace_id: str, callback: Callable[[NamespaceEvent], None]) -> Relay:
        """The same events handed to callback on the publishing thread; it must never block."""
        return self.registry.get(namespace_id).relay(callback)

    # -- cells --

    def submit(self, namespace_id: str, cell: Cell, inline: bool = False, origin: object = None,
               stop_group: object = None) -> Execution:
        """Queue a cell (the default namespace is created on first use); its live Execution.

        With inline the caller's thread may run the cell itself and return once it is done;
        origin is kept on the Execution for the front end that sent it; cells of a stop_group
        still queued when one of them fails are aborted (see Namespace.submit).
        """
        return self.registry.get_or_create_default(namespace_id).submit(cell, inline, origin,
                                                                        stop_group)

    def wait(self, execution: Execution, seconds: float | None) -> bool:
        """Wait until the execution finishes or seconds pass (None: no limit); True if finished."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not execution.finished:
            remaining = WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            if remaining <= 0:
                break
            execution.wait(remaining)
        return execution.finished

    def stream(self, execution: Execution, cancel_on_disconnect: bool = False) -> CellStream:
        """A live feed of the execution from now on, its output so far first.

        Subscribed here, before the caller reads anything: nothing printed in between is missed.
        With cancel_on_disconnect, a client that leaves before the result cancels the cell.
        """
        subscription = execution.subscribe(replay=True)
        on_abandon = (lambda: self.cancel(execution)) if cancel_on_disconnect else None
        return CellStream(subscription, self.config["stream_keepalive"], on_abandon)

    def provide_input(self, execution: Execution, value: str) -> bool:
        """Answer the input() the execution waits in; False if it waits for none."""
        return execution.provide_input(value)

    def cancel(self, execution: Execution) -> bool:
        """Interrupt this execution if it runs, drop it if it is queued; False if it had ended."""
        try:
            namespace = self.registry.get(execution.id)
        except NamespaceNotFound:
            return False  # deleted: its cells are gone already
        return namespace.cancel(execution)

    # -- history --

    def execution(self, namespace_id: str, n: int) -> Execution:
        """Execution n of a namespace: live if still kept, else as recorded in history."""
        validate_id(namespace_id)
        live: Namespace | None = None
        try:
            live = self.registry.get(namespace_id)
            return live.execution(n)
        except (NamespaceNotFound, ExecutionNotFound):
            pass
        self.history.flush(timeout=5.0)
        recorded = self.history.get(namespace_id, n)
        if recorded is not None:
            return Execution.recorded(recorded)
        if live is None and not self.history.has(namespace_id):
            raise NamespaceNotFound(f"no namespace or history for {namespace_id!r}",
                                    id=namespace_id, why=WHY_UNKNOWN, history=False)
        raise ExecutionNotFound(f"no execution {n} in namespace {namespace_id!r}")

    def history_of(self, namespace_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` executions of a namespace, oldest first."""
        validate_id(namespace_id)
        self.history.flush(timeout=5.0)
        rows = self.history.list(namespace_id, limit)
        if not rows and namespace_id not in self.registry.ids():
            raise NamespaceNotFound(f"no namespace or history for {namespace_id!r}",
                                    id=namespace_id, why=WHY_UNKNOWN, history=False)
        unfinished = [row for row in rows if row["status"] in ("queued", "running")]
        if unfinished:
            # A row is written when a cell is submitted and when it ends; in between, the live
            # execution knows whether it still waits or runs.
            try:
                namespace = self.registry.get(namespace_id)
            except NamespaceNotFound:
                return rows
            for row in unfinished:
                try:
                    live = namespace.execution(row["execution_count"])
                except ExecutionNotFound:
                    continue
                row["status"], row["started_at"] = live.status, live.started_at
        return rows

    def prune_history(self, namespace_id: str, keep: int) -> int:
        """Delete a namespace's finished executions but the newest keep; how many went."""
        validate_id(namespace_id)
        if not self.history.has(namespace_id) and namespace_id not in self.registry.ids():
            raise NamespaceNotFound(f"no namespace or history for {namespace_id!r}",
                                    id=namespace_id, why=WHY_UNKNOWN, history=False)
        return self.history.prune(namespace_id, keep)

    # -- the server --

    def healthy(self) -> bool:
        """True when cells can run: the backend can start a worker now."""
        return self.backend.healthy()

    def limits(self) -> dict[str, Any]:
        """The limits a client cares about."""
        keys = ("max_body_bytes", "max_namespaces", "max_queued", "output_cap_bytes",
                "repr_limit_bytes", "interrupt_grace", "request_read_timeout", "memory_limit",
                "cull_idle_after")
        return {**{key: self.config[key] for key in keys},
                "memory_limit_method": self.backend.memory_limit_method()}

    def probe(self, kernel_name: str | None = None) -> dict[str, Any]:
        """The environment probe, run in a fresh worker of that kernel (None: the server's own),
        cached for PROBE_TTL seconds."""
        options = self.resolve_kernel(NamespaceOptions(Resources(memory=0), kernel=kernel_name))
        with self._probe_lock:
            cached = self._probe_cache.get(options.kernel)
            if cached is not None and time.monotonic() - cached[0] < PROBE_TTL:
                return cached[1]
            # The server's own look at its environment: not a namespace, not limited as one.
            try:
                kernel = self.backend.start_kernel("probe", options)
            except NamespaceUnavailable as exc:
                # A cluster still placing its first actor, no room for one: /info still answers
                # with the rest (the cluster's state says why), and the next call tries again.
                return {"error": f"the probe could not start: {exc.message}"}
            try:
                if options.jupyter:  # the probe is Python: a Jupyter kernel says what it is instead
                    facts = {"kernel": kernelspecs.jupyter_facts(kernel.details())}
                    self._probe_cache[options.kernel] = (time.monotonic(), facts)
                    return facts
                cell = Cell(PROBE_CODE, timeout=120.0)
                sink = Execution("probe", 0, cell, 1 << 24)
                sink.start()
                outcome = kernel.execute(cell, 0, sink)
            finally:
                kernel.close()
            output = sink.stdout.getvalue()
            found = parse_probe_output(output)
            if found is None:
                detail = outcome.error.evalue if outcome.error else output[-300:]
                found = {"error": f"the probe failed: {detail}"}
            else:
                self._probe_cache[options.kernel] = (time.monotonic(), found)
            return found

    def kernels(self) -> list[dict[str, Any]]:
        """Every environment a namespace can run in, with whether (and in which Python) it starts."""
        return kernelspecs.status_rows(list(self.kernelspecs.values()), OLDEST)

    def info(self, kernel_name: str | None = None) -> dict[str, Any]:
        """Server version, backend, limits, kernels and the environment probe (of that kernel)."""
        return {
            "kernels": [spec.to_dict() for spec in self.kernelspecs.values()],
            "version": self.version,
            "backend": self.config["backend"],
            "auth": self.token is not None,
            "limits": self.limits(),
            "namespaces": len(self.registry.ids()),
            "probe": self.probe(kernel_name),
            **({"cluster": cluster} if (cluster := self.backend.cluster()) is not None else {}),
        }

    def stop(self, grace: float) -> None:
        """The server is stopping: no queued cell runs, running ones are interrupted and get up to
        grace seconds to end, so every answer, stream and history row says how they ended."""
        running = [e for e in (ns.stop_cells() for ns in self.registry.list()) if e is not None]
        deadline = time.monotonic() + grace
        for execution in running:
            execution.wait(max(0.0, deadline - time.monotonic()))

    def stop_namespaces(self) -> None:
        """After stop(): kill what did not stop at its interrupt (stuck in C), now, well within
        the grace period the process manager gives, so its row is written with its output."""
        self.registry.close()

    def _release_lock(self) -> None:
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        finally:
            self._lock_file.close()

    def close(self) -> None:
        """Stop every namespace, flush history and release the data dir."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.registry.close()
        self.backend.close()
        self.history.close()
        if self.token:
            tokenfile.remove(self.config["data_dir"], self.token)
        self._release_lock()
