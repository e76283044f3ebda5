"""The Ray actor of one namespace: kernelserver's own process kernel, on the node Ray picked.

Cells never run in the actor itself (Ray cannot stop a running actor task, blocks SIGINT in its
workers, and a crash would lose the last output): the actor starts a fork server and a worker on
its node, exactly as the process backend does on one box, and relays the Kernel calls. So an
interrupt is a real SIGINT, a stuck cell is killed by the same escalation, a crash is reported
with its output and its reason, and the actor's death takes the fork server and every worker
with it (their parent-death signal).

This module is imported on every node of the cluster: kernelserver must be installed there.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..results import Cell, Outcome
from .base import ExitReason
from .forkserver import ForkServer
from .memory import Limits
from .process import ProcessKernel

BATCH_BYTES = 1 << 20  # text gathered into one streamed item at most
BATCH_WAIT = 0.005  # seconds an item waits for more output to go with it
IDLE_ITEM = 1.0  # seconds without output after which a heartbeat item goes (the driver's deadline)

# What the actor streams for a cell: ("o", text), ("e", text), ("d", bundle[, display_id,
# update]), ("c", wait) for clear_output, ("i", prompt, password) for input(), ("h",) a
# heartbeat, and last ("r", outcome dict).
Item = tuple[Any, ...]


class _Sink:
    """A running cell's output, queued for the streaming generator."""

    def __init__(self, items: queue.Queue[Item], actor: NamespaceActor) -> None:
        self._items = items
        self._actor = actor

    def write_stdout(self, text: str) -> None:
        self._items.put(("o", text))

    def write_stderr(self, text: str) -> None:
        self._items.put(("e", text))

    def add_display(self, bundle: dict[str, Any], display_id: str | None = None,
                    update: bool = False) -> None:
        self._items.put(("d", bundle) if display_id is None else ("d", bundle, display_id, update))

    def clear_output(self, wait: bool = False) -> None:
        self._items.put(("c", wait))

    def publish_value(self, bundle: dict[str, Any]) -> None:
        self._items.put(("v", bundle))

    def request_input(self, prompt: str, password: bool, reply: Callable[[str], None]) -> None:
        self._actor.pending_input = reply
        self._items.put(("i", prompt, password))


class NamespaceActor:
    """One namespace's kernel on a Ray node (wrapped with ray.remote by the driver)."""

    def __init__(self, options: dict[str, Any], interrupt_grace: float, memory_limit: int,
                 num_cpus: float | None, num_gpus: float | None) -> None:
        # A namespace given no GPU must not see them all (Ray leaves CUDA_VISIBLE_DEVICES unset
        # then); one given CPUs gets threads for them (Ray sets OMP_NUM_THREADS=1 below 2 CPUs).
        if not num_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if num_cpus:
            os.environ["OMP_NUM_THREADS"] = str(max(1, int(num_cpus)))
        else:
            os.environ.pop("OMP_NUM_THREADS", None)
        self._lock = threading.Lock()
        self._forkserver = ForkServer()
        self._forkserver.start()
        self._limits = Limits() if memory_limit else None
        group = self._limits.group("ray", memory_limit) if self._limits else None
        self.kernel = ProcessKernel(self._live_forkserver, options, interrupt_grace, memory=group)
        self.pending_input: Callable[[str], None] | None = None
        self._resources = {"num_cpus": num_cpus, "num_gpus": num_gpus,
                           "memory": memory_limit or None}

    def _live_forkserver(self) -> ForkServer:
        with self._lock:
            if not self._forkserver.alive:
                self._forkserver.close()
                self._forkserver = ForkServer()
                self._forkserver.start()
            return self._forkserver

    def ready(self) -> dict[str, Any]:
        """Where it runs: node, host, worker pid, GPUs."""
        import ray

        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "actor_pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "resources": {k: v for k, v in self._resources.items() if v is not None}}

    def execute(self, cell: Cell, execution_count: int) -> Iterator[list[Item]]:
        """Run a cell; yields its output in batches as it comes, the outcome last."""
        items: queue.Queue[Item] = queue.Queue()

        def run() -> None:
            try:
                outcome = self.kernel.execute(cell, execution_count, _Sink(items, self))
            except Exception as exc:  # reported as the cell's error, never lost
                outcome = Outcome.failed("KernelServerError", f"the namespace's actor failed: {exc}")
            items.put(("r", outcome.to_dict()))

        threading.Thread(target=run, name="cell", daemon=True).start()
        while True:
            try:
                first = items.get(timeout=IDLE_ITEM)
            except queue.Empty:
                yield [("h",)]
                continue
            batch, size = [first], _size(first)
            done = first[0] == "r"
            while not done and size < BATCH_BYTES:
                try:
                    item = items.get(timeout=BATCH_WAIT)
                except queue.Empty:
                    break
                batch.append(item)
                size += _size(item)
                done = item[0] == "r"
            yield _coalesce(batch)
            if done:
                return

    def provide_input(self, value: str) -> bool:
        """The client's line for the cell waiting in input()."""
        reply, self.pending_input = self.pending_input, None
        if reply is None:
            return False
        reply(value)
        return True

    def interrupt(self, execution_count: int) -> bool:
        """That cell's interrupt, as the process kernel aims it (before it starts, too)."""
        return self.kernel.interrupt(execution_count)

    def is_alive(self) -> bool:
        return self.kernel.is_alive()

    def restart(self) -> None:
        self.kernel.restart()

    def variables(self) -> list[dict[str, Any]]:
        return self.kernel.variables()

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        return self.kernel.complete(code, cursor_pos)

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        return self.kernel.inspect(code, cursor_pos, detail_level)

    def details(self) -> dict[str, Any]:
        return self.kernel.details()

    def close(self, reason: ExitReason) -> None:
        """Stop the worker and the fork server (the driver kills the actor after)."""
        self.kernel.close(reason)
        with self._lock:
            self._forkserver.close()
        if self._limits is not None:
            self._limits.close()


def _size(item: Item) -> int:
    return len(item[1]) if item[0] in ("o", "e") else 256


def _coalesce(batch: list[Item]) -> list[Item]:
    """Neighbouring text of one stream as one item (fewer, bigger pickles)."""
    merged: list[Item] = []
    run: list[str] = []
    for item in [*batch, ("end",)]:
        if run and not (item[0] in ("o", "e") and item[0] == merged[-1][0]):
            merged[-1] = (merged[-1][0], "".join(run))
            run = []
        if item[0] in ("o", "e"):
            if not run:
                merged.append((item[0], ""))
            run.append(item[1])
        elif item[0] != "end":
            merged.append(item)
    return merged
