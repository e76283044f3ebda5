"""The dictionary of named namespaces: create/get/delete/list, a FIFO runner per namespace, limits."""

from __future__ import annotations

import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .backends.base import Kernel
from .errors import (
    ExecutionNotFound,
    InvalidNamespaceId,
    NamespaceNotFound,
    NamespaceUnavailable,
    QueueFull,
    TooManyNamespaces,
)
from .execution import Execution, utcnow_iso
from .history import History
from .results import ErrorInfo

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


class Namespace:
    """One named namespace: its kernel, its queue of executions and the thread that runs them."""

    def __init__(self, namespace_id: str, kernel: Kernel, config: dict[str, Any],
                 history: History | None = None) -> None:
        self.id = namespace_id
        self.kernel = kernel
        self.config = config
        self.created_at = utcnow_iso()
        self.last_activity = self.created_at
        self.history = history
        # execution_count never repeats for an id: continue after what history holds.
        self._next_count = (history.max_count(namespace_id) if history else 0) + 1
        self._lock = threading.Lock()
        self._queue: queue.Queue[Execution | None] = queue.Queue()
        self._executions: OrderedDict[int, Execution] = OrderedDict()
        self._current: Execution | None = None
        self._pending = 0  # submitted and not finished: queued, or running here or inline
        self._run_lock = threading.Lock()  # held by whichever thread runs a cell
        self._closed = False
        self._runner = threading.Thread(target=self._run_loop, name=f"ns-{namespace_id}",
                                        daemon=True)
        self._runner.start()

    @property
    def state(self) -> str:
        """dead once closed; busy while cells are queued or running; else idle."""
        if self._closed:
            return "dead"
        return "busy" if self._pending else "idle"

    @property
    def execution_count(self) -> int:
        """The number of the latest submitted execution (0 before any)."""
        return self._next_count - 1

    def submit(self, code: str, timeout: float | None, inline: bool = False,
               output_cap: int | None = None, repr_limit: int | None = None) -> Execution:
        """Queue a cell; it runs after every cell submitted before it.

        output_cap and repr_limit, when given, replace the server's limits for this cell.

        With inline, a cell submitted to an idle namespace runs in the calling thread, which
        returns once it has finished: a caller that waits for the end anyway saves two thread
        hand-offs. Only backends whose cells run in another process allow it.
        """
        with self._lock:
            if self._closed:
                raise NamespaceUnavailable(f"namespace {self.id!r} is being deleted")
            if self._queue.qsize() >= self.config["max_queued"]:
                raise QueueFull(
                    f"namespace {self.id!r} already has {self.config['max_queued']} executions "
                    "queued; wait for them or interrupt"
                )
            cap = self.config["output_cap_bytes"] if output_cap is None else output_cap
            execution = Execution(self.id, self._next_count, code, cap, timeout, repr_limit)
            self._next_count += 1
            self._executions[execution.execution_count] = execution
            self._forget_old()
            self.last_activity = utcnow_iso()
            if self.history is not None:
                self.history.record_submitted(self.id, execution.execution_count, code,
                                              execution.submitted_at)
            run_here = inline and self._pending == 0 and self.kernel.runs_inline
            self._pending += 1
            if not run_here:
                self._queue.put(execution)
        if run_here:
            self._run_one(execution)
        return execution

    def _forget_old(self) -> None:
        keep = self.config["keep_executions"]
        while len(self._executions) > keep:
            oldest = next(iter(self._executions.values()))
            if not oldest.finished:
                break
            self._executions.popitem(last=False)

    def execution(self, n: int) -> Execution:
        """A kept execution by number, else ExecutionNotFound."""
        with self._lock:
            found = self._executions.get(n)
        if found is None:
            raise ExecutionNotFound(f"no execution {n} in namespace {self.id!r}")
        return found

    def _run_loop(self) -> None:
        while True:
            execution = self._queue.get()
            if execution is None:
                return
            self._run_one(execution)

    def _run_one(self, execution: Execution) -> None:
        with self._run_lock:
            with self._lock:
                closed = self._closed
                if not closed:
                    self._current = execution
            if closed:
                execution.finish("error", error=ErrorInfo(
                    "NamespaceDeleted", f"namespace {self.id!r} was deleted before the cell ran", ""))
            else:
                execution.start()
                try:
                    outcome = self.kernel.execute(execution.code, execution.execution_count,
                                                  execution, execution.timeout, execution.repr_limit)
                    execution.finish(outcome.status, outcome.result, outcome.error, outcome.restarted,
                                     outcome.truncated)
                except Exception as exc:  # a backend bug must not kill the runner
                    execution.finish("error", error=ErrorInfo(
                        "KernelServerError", f"internal error running the cell: {exc}", ""))
            with self._lock:
                self._current = None
                self._pending -= 1
                self.last_activity = utcnow_iso()
        self._record(execution)

    def _record(self, execution: Execution) -> None:
        final = execution.final
        if self.history is not None and final is not None:
            self.history.record_finished(final)

    def interrupt(self) -> bool:
        """Interrupt the running cell, if any."""
        with self._lock:
            running = self._current is not None
        return running and self.kernel.interrupt()

    def restart(self) -> None:
        """Cancel what is queued, stop what runs, and give the namespace a fresh kernel."""
        self._cancel_queued("NamespaceRestarted", "was restarted")
        self.kernel.restart()
        self.last_activity = utcnow_iso()

    def _cancel_queued(self, ename: str, what: str) -> None:
        while True:
            try:
                execution = self._queue.get_nowait()
            except queue.Empty:
                return
            if execution is None:
                self._queue.put(None)
                return
            with self._lock:
                self._pending -= 1
            execution.finish("error", error=ErrorInfo(
                ename, f"namespace {self.id!r} {what} before the cell ran", ""))
            self._record(execution)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the runner and release the kernel; waits (bounded) for the running cell to end."""
        with self._lock:
            self._closed = True
        self._cancel_queued("NamespaceDeleted", "was deleted")
        self.kernel.close()
        self._queue.put(None)
        self._runner.join(timeout)

    def info(self, with_variables: bool = False) -> dict[str, Any]:
        """The namespace info of /env/get and /env/list."""
        data: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "execution_count": self.execution_count,
            "created_at": self.created_at,
            "last_activity": self.last_activity,
        }
        data.update(self.kernel.details())
        if with_variables:
            data["variables"] = self.kernel.variables()
        return data


class Registry:
    """All namespaces of one app, by id."""

    def __init__(self, config: dict[str, Any], kernel_factory: Callable[[str], Kernel],
                 history: History | None = None) -> None:
        self.config = config
        self._factory = kernel_factory
        self.history = history
        self._namespaces: dict[str, Namespace] = {}
        self._starting: set[str] = set()
        self._lock = threading.Lock()
        self._created = threading.Condition(self._lock)

    def create(self, namespace_id: str) -> tuple[Namespace, bool]:
        """The namespace with that id, started if new; the bool says whether it was created."""
        validate_id(namespace_id)
        with self._lock:
            # Another request may be starting this very id; wait for it rather than start two.
            self._created.wait_for(lambda: namespace_id not in self._starting, timeout=60)
            existing = self._namespaces.get(namespace_id)
            if existing is not None:
                return existing, False
            if len(self._namespaces) + len(self._starting) >= self.config["max_namespaces"]:
                raise TooManyNamespaces(
                    f"namespace limit reached ({self.config['max_namespaces']}); delete one with "
                    "POST /env/delete or raise max_namespaces"
                )
            self._starting.add(namespace_id)
        # Start outside the lock: a slow start must not block other namespaces.
        try:
            kernel = self._factory(namespace_id)
            namespace = Namespace(namespace_id, kernel, self.config, self.history)
        except NamespaceUnavailable:
            raise
        except Exception as exc:
            raise NamespaceUnavailable(f"could not start namespace {namespace_id!r}: {exc}") from None
        finally:
            with self._lock:
                self._starting.discard(namespace_id)
                self._created.notify_all()
        with self._lock:
            self._namespaces[namespace_id] = namespace
        return namespace, True

    def get(self, namespace_id: str) -> Namespace:
        """The namespace, else NamespaceNotFound saying how to create it."""
        validate_id(namespace_id)
        with self._lock:
            found = self._namespaces.get(namespace_id)
        if found is None:
            raise NamespaceNotFound(
                f"no namespace {namespace_id!r}; create it with POST /env/create",
                id=namespace_id,
            )
        return found

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
        if namespace is None:
            raise NamespaceNotFound(f"no namespace {namespace_id!r}", id=namespace_id)
        namespace.close()

    def ids(self) -> list[str]:
        """Every namespace id, sorted."""
        with self._lock:
            return sorted(self._namespaces)

    def list(self) -> list[Namespace]:
        """Every namespace, sorted by id."""
        with self._lock:
            return [self._namespaces[k] for k in sorted(self._namespaces)]

    def close(self) -> None:
        """Delete every namespace (server shutdown)."""
        with self._lock:
            namespaces = list(self._namespaces.values())
            self._namespaces.clear()
        for namespace in namespaces:
            namespace.close()
