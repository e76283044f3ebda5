"""The dictionary of named namespaces: create (one start per id), get, delete, list, limits."""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from .backends.base import Backend, ExitReason, NamespaceOptions
from .errors import (
    WHY_CULLED,
    WHY_DELETED,
    WHY_RESTARTED,
    WHY_UNKNOWN,
    InvalidNamespaceId,
    NamespaceNotFound,
    TooManyNamespaces,
)
from .history import History
from .namespace import Namespace

log = logging.getLogger("kernelserver")
CULL_CHECK = 1.0  # seconds between looks for namespaces idle past their cull_idle_after
CLOSE_ALL_WAIT = 12.0  # a second close() waits this long for the first (gunicorn's grace is 15 s)
CULLED_REMEMBERED = 1000  # culled (and deleted) ids whose 404 says so

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_ID = "default"


def validate_id(namespace_id: object) -> str:
    """The id if it is a valid namespace id, else InvalidNamespaceId."""
    if not isinstance(namespace_id, str) or not ID_PATTERN.fullmatch(namespace_id):
        shown = repr(namespace_id) if len(repr(namespace_id)) <= 80 else repr(namespace_id)[:77] + "..."
        raise InvalidNamespaceId(
            f"invalid namespace id {shown}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return namespace_id


class Registry:
    """All namespaces of one app, by id, starting ones included."""

    def __init__(self, config: dict[str, Any], backend: Backend,
                 history: History | None = None) -> None:
        self.config = config
        self.backend = backend
        self.history = history
        self._namespaces: dict[str, Namespace] = {}
        self._lock = threading.Lock()
        # id -> (idle seconds, cull_idle_after) of a culled namespace, for its 404
        self._culled: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # ids deleted since the server started, so their 404 can say so (the newest only)
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._stop = threading.Event()
        self._all_closed = threading.Event()  # set once close() has closed every namespace
        self._culler = threading.Thread(target=self._cull_loop, name="culler", daemon=True)
        self._culler.start()

    def create(self, namespace_id: str, options: NamespaceOptions | None = None
               ) -> tuple[Namespace, bool]:
        """The namespace with that id, started if new; the bool says whether this call created it.

        Callers that ask for an id while it starts wait for that same start (at most
        start_timeout seconds); a start that fails or takes longer fails all of them.
        """
        validate_id(namespace_id)
        chosen = options or NamespaceOptions()
        if chosen.syntax is None:  # decided here, so the namespace and its kernel agree
            chosen = replace(chosen, syntax=self.backend.default_syntax or self.config["syntax"])
        with self._lock:
            namespace = self._namespaces.get(namespace_id)
            created = namespace is None
            if namespace is None:
                if len(self._namespaces) >= self.config["max_namespaces"]:
                    raise TooManyNamespaces.for_limit(self.config["max_namespaces"])
                namespace = Namespace(
                    namespace_id, lambda: self.backend.start_kernel(namespace_id, chosen),
                    self.config, self.history, on_failed=self._forget, options=chosen)
                self._namespaces[namespace_id] = namespace
                self._culled.pop(namespace_id, None)
                self._deleted.pop(namespace_id, None)
        namespace.wait_started(self.config["start_timeout"])
        return namespace, created

    def _forget(self, namespace: Namespace) -> None:
        """Drop a namespace whose start failed, freeing its id for a new try."""
        with self._lock:
            if self._namespaces.get(namespace.id) is namespace:
                del self._namespaces[namespace.id]

    def get(self, namespace_id: str) -> Namespace:
        """The namespace (it may still be starting), else NamespaceNotFound saying why there is none."""
        validate_id(namespace_id)
        with self._lock:
            found = self._namespaces.get(namespace_id)
        if found is None:
            raise self._missing(namespace_id)
        return found

    def _missing(self, namespace_id: str) -> NamespaceNotFound:
        """Why there is no such namespace, as far as the server knows (front ends say what to do)."""
        culled = self._culled.get(namespace_id)
        if culled:
            idle, after = culled
            return NamespaceNotFound.missing(namespace_id, WHY_CULLED, self.history is not None,
                                             idle=idle, cull_idle_after=after)
        with self._lock:
            deleted = namespace_id in self._deleted
        if self.history is not None:
            self.history.flush(timeout=2.0)  # the last cells' rows may still be queued
        kept = self.history is not None and self.history.has(namespace_id)
        if deleted:
            return NamespaceNotFound.missing(namespace_id, WHY_DELETED, kept)
        # Rows of an id this server never saw deleted: an earlier server ran it.
        return NamespaceNotFound.missing(namespace_id, WHY_RESTARTED if kept else WHY_UNKNOWN, kept)

    def get_or_create_default(self, namespace_id: str) -> Namespace:
        """The namespace; the default one is created on first use."""
        if namespace_id == DEFAULT_ID:
            return self.create(namespace_id)[0]
        return self.get(namespace_id)

    def delete(self, namespace_id: str) -> None:
        """Stop the namespace and free its resources before returning."""
        validate_id(namespace_id)
        with self._lock:
            namespace = self._namespaces.pop(namespace_id, None)
            if namespace is not None:
                self._deleted[namespace_id] = None
                while len(self._deleted) > CULLED_REMEMBERED:
                    self._deleted.popitem(last=False)
        if namespace is None:
            raise self._missing(namespace_id)
        namespace.close()

    def ids(self) -> list[str]:
        """Every namespace id, sorted."""
        with self._lock:
            return sorted(self._namespaces)

    def list(self) -> list[Namespace]:
        """Every namespace, sorted by id."""
        with self._lock:
            return [self._namespaces[k] for k in sorted(self._namespaces)]

    def cull_idle(self) -> tuple[str, ...]:
        """Delete every namespace idle past its cull_idle_after (never one with a cell queued or
        running); the ids it deleted. Their history stays readable."""
        culled: tuple[str, ...] = ()
        for namespace in self.list():
            after = namespace.cull_idle_after
            if after <= 0:
                continue
            idle = namespace.idle_for()
            if idle < after:
                continue
            with self._lock:
                if self._namespaces.get(namespace.id) is not namespace:
                    continue
                del self._namespaces[namespace.id]
                self._culled[namespace.id] = (idle, after)
                while len(self._culled) > CULLED_REMEMBERED:
                    self._culled.popitem(last=False)
            log.info("namespace %r culled after %.0f s idle (cull_idle_after %g s)",
                     namespace.id, idle, after)
            namespace.close()
            culled += (namespace.id,)
        return culled

    def _cull_loop(self) -> None:
        while not self._stop.wait(CULL_CHECK):
            try:
                self.cull_idle()
            except Exception:  # the culler must outlive one namespace's failure to close
                log.exception("idle culling failed")

    def close(self) -> None:
        """Close every namespace (server shutdown), all at once; a second call waits for the
        first's to end (gunicorn's exit hook comes while the stop hooks' close may still run, and
        a Jupyter kernel's polite shutdown takes a while: the process must not exit under it)."""
        with self._lock:
            first = not self._stop.is_set()
            self._stop.set()
            namespaces = list(self._namespaces.values())
            self._namespaces.clear()
        if not first:
            self._all_closed.wait(CLOSE_ALL_WAIT)
            return
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(32, len(namespaces))),
                                    thread_name_prefix="close") as pool:
                for done in [pool.submit(ns.close, reason=ExitReason.STOPPED) for ns in namespaces]:
                    if done.exception() is not None:  # one that fails must not keep others open
                        log.error("closing a namespace failed: %s", done.exception())
        finally:
            self._all_closed.set()
