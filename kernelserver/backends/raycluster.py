"""The Ray backend: each namespace is a Ray actor, placed by Ray with the resources it asked for.

The actor (ray_actor.py) runs kernelserver's own process kernel on its node; this side relays the
Kernel calls over Ray, `execute` as a streaming generator. Ray does the placing; the server keeps
its own deadlines on every call (a frozen node takes Ray about a minute to declare dead), and the
server outlives the cluster: a driver normally exits when the head is unreachable for a minute,
so the server raises that timeout before it connects, and reports the cluster's loss as 503s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from ..errors import NamespaceUnavailable
from ..results import Cell, Outcome
from .base import ExitReason, NamespaceOptions, OutputSink, refuse_other_pythons, timed_out

log = logging.getLogger("kernelserver")

CALL_TIMEOUT = 10.0  # seconds a query (variables, interrupt, details) may take
SILENCE_GRACE = 30.0  # seconds past a cell's own deadline before its node counts as lost
# A driver exits when the head is unreachable for this long (Ray's default: 60 s); the server must
# not die with the cluster, so it waits as long as it runs.
RECONNECT_TIMEOUT_S = str(10**7)

_ray: Any = None


def _import_ray() -> Any:
    global _ray
    if _ray is None:
        # Set, not defaulted: a driver that exits with its cluster takes the HTTP server along.
        os.environ["RAY_gcs_rpc_server_reconnect_timeout_s"] = RECONNECT_TIMEOUT_S
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        _ray = ray
    return _ray


# gunicorn's worker handlers (SIGTERM: graceful stop; SIGABRT: its timeout) that Ray's driver replaces
# in C: on `kernelserver stop` its handler dumped a native stack and died of SIGTERM, an [ERROR].
_KEPT_SIGNALS = (signal.SIGTERM, signal.SIGABRT)


@contextlib.contextmanager
def _python_keeps_signals() -> Iterator[None]:
    """Put back, after connecting, the Python handlers Ray's driver took over."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; and gunicorn set none on another
        return
    saved = {signum: signal.getsignal(signum) for signum in _KEPT_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: set outside Python, nothing of ours to put back
                signal.signal(signum, handler)


def _bounded(call: Callable[[], Any], timeout: float, what: str) -> Any:
    """call() on a helper thread, given up on after timeout s (TimeoutError): a call to the
    cluster's head blocks for as long as the head is gone."""
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))
        done.set()

    threading.Thread(target=run, name=f"ray-{what}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"the cluster did not answer {what} within {timeout:g} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _lost(exc: BaseException) -> str:
    """Why an actor call failed, in a line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first}"


class RayKernel:
    """A namespace's actor, seen from the server: the Kernel protocol over Ray calls."""

    runs_inline = True  # the code runs in a worker on the node; interrupts are signals to it

    def __init__(self, backend: RayBackend, namespace_id: str, options: NamespaceOptions) -> None:
        self._backend = backend
        self._id = namespace_id
        self._options = options
        self._lock = threading.Lock()
        self._actor: Any = None
        self._where: dict[str, Any] = {}
        self._dead_because: str | None = None  # the actor was lost; the next cell starts anew
        self._start()

    def _start(self) -> None:
        self._actor, self._where = self._backend.place(self._id, self._options)
        self._dead_because = None

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        ray = _ray
        actor = self._actor
        if actor is None:
            raise NamespaceUnavailable(f"namespace {self._id!r} has no actor")
        try:
            return ray.get(getattr(actor, method).remote(*args), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise NamespaceUnavailable(
                f"namespace {self._id!r}: its node did not answer {method} within {timeout:g} s"
            ) from None
        except ray.exceptions.RayError as exc:
            self._mark_lost(exc)
            raise NamespaceUnavailable(f"namespace {self._id!r} was lost: {_lost(exc)}") from None

    def _mark_lost(self, exc: BaseException) -> None:
        with self._lock:
            if self._dead_because is None:
                self._dead_because = _lost(exc)

    # -- execution --

    def execute(self, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        """Run the cell on the namespace's node, streaming its output into sink."""
        ray = _ray
        notice = None
        with self._lock:
            lost = self._dead_because
        if lost is not None:
            old = self._actor
            self._kill(old)
            notice = (f"[kernelserver: the namespace's node or actor was lost after the last cell "
                      f"({lost}); the namespace was restarted empty for this one]\n")
            try:
                self._start()  # waits for a place, bounded by start_timeout
            except NamespaceUnavailable as exc:
                return Outcome.failed("NamespaceUnavailable", f"{notice.strip()[1:-1]}; but it "
                                      f"could not start again: {exc}", restarted=True)
        if notice:
            sink.write_stderr(notice)
        actor = self._actor
        generator = actor.execute.options(num_returns="streaming").remote(cell, execution_count)
        # The node enforces the cell's timeout and kills past it; the server gives up on a node
        # that is silent (no output, no heartbeat) well after that.
        silence = (cell.timeout or 0) + self._backend.interrupt_grace + SILENCE_GRACE
        last_heard = time.monotonic()
        try:
            while True:
                ready, _ = ray.wait([generator], timeout=1.0)
                if not ready:
                    if time.monotonic() - last_heard > silence:
                        raise TimeoutError(f"no word from the node for {silence:g} s")
                    continue
                try:
                    ref = next(generator)
                except StopIteration:
                    raise RuntimeError("the actor ended the cell without an outcome") from None
                batch = ray.get(ref, timeout=CALL_TIMEOUT)
                last_heard = time.monotonic()
                for item in batch:
                    kind = item[0]
                    if kind == "o":
                        sink.write_stdout(item[1])
                    elif kind == "e":
                        sink.write_stderr(item[1])
                    elif kind == "d":
                        sink.add_display(*item[1:])
                    elif kind in ("c", "v"):
                        (sink.clear_output if kind == "c" else sink.publish_value)(item[1])
                    elif kind == "i":
                        sink.request_input(item[1], item[2], self._answer_input)
                    elif kind == "r":
                        return Outcome.from_dict(item[1])
        except (ray.exceptions.RayError, TimeoutError, RuntimeError) as exc:
            self._mark_lost(exc)
            self._kill(actor)
            outcome = Outcome.failed(
                "WorkerDied", f"the namespace's node or actor was lost while running the cell "
                f"({_lost(exc)}); the namespace will be restarted empty for the next cell",
                restarted=True)
            return timed_out(outcome, cell.timeout) if isinstance(exc, TimeoutError) else outcome

    def _answer_input(self, value: str) -> None:
        self._actor.provide_input.remote(value)

    # -- the rest of the Kernel protocol --

    def interrupt(self, execution_count: int) -> bool:
        """Relayed to the actor's process kernel (it keeps one for a cell still on its way)."""
        try:
            return bool(self._call("interrupt", execution_count))
        except NamespaceUnavailable:
            return False

    def is_alive(self) -> bool:
        with self._lock:
            if self._dead_because is not None:
                return False
        try:
            return bool(self._call("is_alive", timeout=5.0))
        except NamespaceUnavailable:
            return False

    def variables(self) -> list[dict[str, Any]]:
        try:
            return list(self._call("variables"))
        except NamespaceUnavailable:
            return []

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        try:
            return dict(self._call("complete", code, cursor_pos))
        except NamespaceUnavailable:
            return {"status": "ok", "matches": [], "cursor_start": cursor_pos,
                    "cursor_end": cursor_pos, "metadata": {}}

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        try:
            return dict(self._call("inspect", code, cursor_pos, detail_level))
        except NamespaceUnavailable:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    def restart(self) -> None:
        with self._lock:
            lost = self._dead_because is not None
        if lost:
            self._kill(self._actor)
            self._start()
            return
        self._call("restart", timeout=self._backend.start_timeout)

    def details(self) -> dict[str, Any]:
        """Where it runs (node, GPUs, resources) and its worker's pid and memory."""
        found: dict[str, Any] = {"node": {k: self._where.get(k) for k in
                                          ("node_id", "node_ip", "hostname")},
                                 "resources": self._where.get("resources", {}),
                                 "cuda_visible_devices": self._where.get("cuda_visible_devices")}
        try:
            found.update(self._call("details", timeout=5.0))
        except NamespaceUnavailable:
            found.update({"pid": None, "memory_rss": None})
        return found

    def close(self, reason: ExitReason = ExitReason.DELETED) -> None:
        """Stop the worker on its node, then the actor: its memory and GPU go back."""
        actor, self._actor = self._actor, None
        if actor is None:
            return
        try:
            _ray.get(actor.close.remote(reason), timeout=CALL_TIMEOUT)
        except Exception:  # lost already, or stuck: the kill below ends it either way
            pass
        self._kill(actor)

    @staticmethod
    def _kill(actor: Any) -> None:
        """Kill an actor (its fork server and workers die with it); never waits on the head."""
        if actor is None:
            return

        def kill() -> None:
            try:
                _ray.kill(actor, no_restart=True)
            except Exception:
                pass

        threading.Thread(target=kill, name="ray-kill", daemon=True).start()


class RayBackend:
    """Namespaces as Ray actors on an existing cluster (setting ray_address)."""

    name: ClassVar[str] = "ray"
    default_syntax: ClassVar[str | None] = None  # the server's setting

    def __init__(self, config: dict[str, Any]) -> None:
        ray = _import_ray()
        self.config = config
        self.options = {"repr_limit": config["repr_limit_bytes"]}
        self.interrupt_grace, self.start_timeout = (float(config["interrupt_grace"]),
                                                    float(config["start_timeout"]))
        address = config.get("ray_address") or "auto"
        with _python_keeps_signals():
            ray.init(address=address, namespace="kernelserver", logging_level=logging.WARNING,
                     log_to_driver=False, ignore_reinit_error=True)
        from .ray_actor import NamespaceActor

        # Threads: interrupt, input and queries come while execute streams.
        self._actor_class = ray.remote(max_concurrency=16)(NamespaceActor)
        log.info("ray backend: connected to %s", address)

    def validate(self, options: NamespaceOptions) -> None:  # what no node has room for waits
        refuse_other_pythons(options, "ray")

    def place(self, namespace_id: str, options: NamespaceOptions) -> tuple[Any, dict[str, Any]]:
        """A new actor for the namespace, started on a node with room for it (bounded wait)."""
        ray = _ray
        num_cpus, num_gpus, memory = options.resources.num_cpus, options.resources.num_gpus, (
            options.resources.memory if options.resources.memory is not None
            else self.config.get("memory_limit", 0))
        actor_options: dict[str, Any] = {"num_cpus": num_cpus or 0, "num_gpus": num_gpus or 0,
                                         "name": None, "max_restarts": 0,
                                         **({"memory": memory} if memory else {})}
        if not self.healthy():  # at once: waiting start_timeout for a head that is gone helps nobody
            raise NamespaceUnavailable(f"namespace {namespace_id!r} was not placed: the cluster's "
                                       "head does not answer (or has no live node)")
        actor = self._actor_class.options(**actor_options).remote(
            {**self.options, "syntax": options.syntax_in(self.config)}, self.interrupt_grace, memory,
            num_cpus, num_gpus)
        try:
            where = ray.get(actor.ready.remote(), timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            RayKernel._kill(actor)
            free = _free(ray)
            if free is None:
                raise NamespaceUnavailable(
                    f"namespace {namespace_id!r} was not placed within {self.start_timeout:g} s "
                    "(start_timeout): the cluster's head does not answer") from None
            raise NamespaceUnavailable(
                f"no node of the cluster had room for namespace {namespace_id!r} "
                f"({_asked(num_cpus, num_gpus, memory)}) within {self.start_timeout:g} s "
                f"(start_timeout); free: {free}") from None
        except ray.exceptions.RayError as exc:
            RayKernel._kill(actor)
            raise NamespaceUnavailable(
                f"namespace {namespace_id!r} could not start on the cluster: {_lost(exc)}") from None
        return actor, where

    def start_kernel(self, namespace_id: str, options: NamespaceOptions) -> RayKernel:
        """A kernel whose actor is placed and ready."""
        return RayKernel(self, namespace_id, options)

    def healthy(self) -> bool:
        """True while the cluster's head answers (within 2 s) and has a live node."""
        try:
            nodes = _bounded(_ray.nodes, 2.0, "nodes")
        except Exception:
            return False
        return any(node.get("Alive") for node in nodes)

    def memory_limit_method(self) -> str:
        """Each node keeps limits as the process backend does there."""
        return "per node (cgroup or watchdog)"

    def cluster(self) -> dict[str, Any]:
        """The cluster's nodes and resources, for /info and `kernelserver check`."""
        def ask() -> dict[str, Any]:
            nodes = [{"node_id": n["NodeID"], "node_ip": n.get("NodeManagerAddress"),
                      "alive": bool(n.get("Alive")), "resources": _pick(n.get("Resources", {}))}
                     for n in _ray.nodes()]
            return {"nodes": nodes, "total": _pick(_ray.cluster_resources()),
                    "available": _pick(_ray.available_resources())}

        try:
            return dict(_bounded(ask, 5.0, "cluster"))
        except Exception as exc:
            return {"error": _lost(exc)}

    def close(self) -> None:
        """Disconnect; actors owned by this driver die with the connection."""
        try:
            _bounded(_ray.shutdown, 5.0, "shutdown")  # with the head gone it would wait on it
        except Exception:
            pass


def _pick(resources: dict[str, Any]) -> dict[str, Any]:
    return {k: resources[k] for k in ("CPU", "GPU", "memory") if k in resources}


def _asked(num_cpus: float | None, num_gpus: float | None, memory: int) -> str:
    asked = [f"{num_gpus:g} GPU" if num_gpus else "", f"{num_cpus:g} CPU" if num_cpus else "",
             f"{memory >> 20} MiB" if memory else ""]
    return ", ".join(a for a in asked if a) or "no resources"


def _free(ray: Any) -> str | None:
    """What the cluster has free, in words (None when its head does not answer)."""
    try:
        free, total = (_pick(found) for found in _bounded(
            lambda: (ray.available_resources(), ray.cluster_resources()), 1.0, "resources"))
    except Exception:
        return None
    shown = [f"{free.get(key, 0):g} of {total[key]:g} {key}" for key in ("GPU", "CPU") if key in total]
    return ", ".join(shown) or "nothing"
