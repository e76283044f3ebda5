"""The process backend: makes ProcessKernels, forked from a fork server per interpreter it owns,
and JupyterClientKernels for the installed Jupyter kernels of other languages."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from . import memory as memory_limits
from .base import NamespaceOptions, refuse_placement
from .forkserver import ForkServer, ForkServerError
from .process import ProcessKernel

if TYPE_CHECKING:
    from .base import Kernel
    from .jupyterkernel import KernelLoop

log = logging.getLogger("kernelserver")


class ProcessBackend:
    """Makes ProcessKernels, all forked from one fork server owned by this backend."""

    name: ClassVar[str] = "process"
    default_syntax: ClassVar[str | None] = None  # the server's setting

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.options = {"repr_limit": config["repr_limit_bytes"]}
        self._lock = threading.Lock()
        self.forkserver = ForkServer()
        self.forkserver.start()
        # One more per other environment a namespace runs in, started when first needed.
        self._others: dict[str, ForkServer] = {}
        self._limits: memory_limits.Limits | None = None  # made when first asked for
        self._kernel_loop: KernelLoop | None = None  # where Jupyter kernels are managed, once one is
        self._closed = False

    def live_forkserver(self, python: str | None = None) -> ForkServer:
        """The fork server of that interpreter (None: the server's), started anew if the last one
        died (a cell can kill it: every namespace's worker dies with it, and new ones must still
        start) or started for the first time."""
        with self._lock:
            if self._closed:
                # Stopping: a worker that died meanwhile must not bring a fork server back.
                raise ForkServerError("the server is stopping")
            current = self.forkserver if python is None else self._others.get(python)
            if current is None or not current.alive:
                if current is not None:
                    current.close()  # reaped already by its reader; releases the socket
                # Under the lock: one start per interpreter, however many namespaces ask.
                current = ForkServer(python=python)
                current.start()
                if python is None:
                    self.forkserver = current
                else:
                    self._others[python] = current
            return current

    def healthy(self) -> bool:
        """True when a worker can be started now (the fork server runs, or starts again)."""
        try:
            return self.live_forkserver().alive
        except ForkServerError:
            return False

    @property
    def limits(self) -> memory_limits.Limits:
        """Where namespaces' memory groups are made (found, and the server's cgroup made, on the
        first use: a server whose namespaces have no limit touches no cgroup)."""
        with self._lock:
            if self._limits is None:
                self._limits = memory_limits.Limits(self.config.get("memory_limit_method", "auto"),
                                                    server_pids=memory_limits.server_processes)
                log.info("%s", self._limits.why)
            return self._limits

    def validate(self, options: NamespaceOptions) -> None:
        """CPUs and GPUs are placed by the ray backend; here every namespace shares the box."""
        refuse_placement(options, "process", limits_memory=True)

    def cluster(self) -> dict[str, Any] | None:
        """Not a cluster."""
        return None

    def memory_limit_method(self) -> str:
        """'cgroup v2', 'cgroup v1' or 'watchdog'."""
        return self.limits.method

    def start_kernel(self, namespace_id: str, options: NamespaceOptions) -> Kernel:
        """A kernel with its worker forked and ready, in its memory group if it has a limit (or
        a Jupyter kernel, started)."""
        if options.jupyter and options.kernel is not None:
            return self._start_jupyter(options.kernel)
        limit = options.resources.memory
        if limit is None:
            limit = self.config.get("memory_limit", 0)
        group = self.limits.group(namespace_id, limit) if limit else None
        try:
            python = options.python
            return ProcessKernel(lambda: self.live_forkserver(python),
                                 {**self.options, "syntax": options.syntax_in(self.config)},
                                 self.config["interrupt_grace"], memory=group)
        except BaseException:
            if group is not None:
                group.close()
            raise

    def _start_jupyter(self, name: str) -> Kernel:
        # Imported here: jupyter_client (the `jupyter` extra) is needed only by these kernels.
        from .jupyterkernel import JupyterClientKernel, KernelLoop

        with self._lock:
            if self._closed:
                raise ForkServerError("the server is stopping")
            if self._kernel_loop is None:
                self._kernel_loop = KernelLoop()
            loop = self._kernel_loop
        return JupyterClientKernel(name, self.config["repr_limit_bytes"], self.config["interrupt_grace"],
                                   startup_timeout=self.config.get("start_timeout", 60.0), loop=loop)

    def close(self) -> None:
        """Stop the fork servers and the Jupyter kernels' loop; remove the server's memory cgroup."""
        with self._lock:
            self._closed = True
            self.forkserver.close()
            for other in self._others.values():
                other.close()
            limits, loop = self._limits, self._kernel_loop
        if loop is not None:
            loop.close()
        if limits is not None:
            limits.close()
