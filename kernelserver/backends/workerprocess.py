"""One worker process as the server holds it: its pid, its sockets and pipes, and signals to it."""

from __future__ import annotations

import fcntl
import os
import secrets
import selectors
import signal
import socket
import threading
from typing import Any

from . import protocol, rings
from .base import ExitReason
from .forkserver import ForkServer, ForkServerError
from .pipes import OutputPipe
from .policy import describe_status
from .protocol import Op

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
QUERY_TIMEOUT = 10.0  # seconds any query but an interrupt may take


class WorkerProcess:
    """One worker process: its pid, its sockets and pipes, and signals to it."""

    def __init__(self, forkserver: ForkServer, options: dict[str, Any]) -> None:
        self.forkserver = forkserver
        self.prefix = b"\x00\x1bKS-" + secrets.token_hex(8).encode() + b"-"
        ctl, ctl_child = socket.socketpair()
        query, query_child = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)  # only our read ends; the worker's write ends stay blocking
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)  # fewer wake-ups on big output
            except OSError:
                pass
        child_fds = [ctl_child.fileno(), query_child.fileno(), out_w, err_w]
        # Printed text in shared memory, readable after the worker is gone (rings.py); without
        # it (no memfd, no address space) the pipes carry it as before.
        self.rings: list[rings.RingReader] = []
        self._ring_fd: int | None = None
        self._ring_header: Any = None
        try:
            self._ring_fd = rings.create()
            self._ring_header = rings.map_header(self._ring_fd)
            self.rings = [rings.RingReader(self._ring_fd, self._ring_header, i) for i in (0, 1)]
            child_fds.append(self._ring_fd)
        except (OSError, ValueError):
            self._close_rings()
        try:
            self.pid = forkserver.spawn(child_fds, self.prefix, options)
        except ForkServerError:
            for sock in (ctl, query):
                sock.close()
            for fd in (out_r, err_r):
                os.close(fd)
            self._close_rings()
            raise
        finally:
            ctl_child.close()
            query_child.close()
            os.close(out_w)
            os.close(err_w)
        self.ctl = ctl
        self.query = query
        self.query.settimeout(QUERY_TIMEOUT)
        self.query_lock = threading.Lock()
        self._query_seq = 0
        self.ctl_lock = threading.Lock()
        self.stdout = OutputPipe(out_r, self.prefix)
        self.stderr = OutputPipe(err_r, self.prefix)
        self.reader = protocol.FrameReader()
        # One selector for the worker's life: making one per cell cost four syscalls a cell.
        self.selector = selectors.DefaultSelector()
        for stream in (self.stdout, self.stderr):
            self.selector.register(stream.fd, selectors.EVENT_READ, stream)
        self.selector.register(self.ctl, selectors.EVENT_READ, None)
        self.expected_exit: ExitReason | None = None  # why we are stopping it, when we are
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def status(self) -> int | None:
        """The raw wait status once the process has exited."""
        return self.forkserver.exit_status(self.pid)

    def is_alive(self) -> bool:
        """True until the fork server has reaped the process (or died, taking it along)."""
        return self.status is None and not self.forkserver.lost

    def how_it_ended(self) -> str:
        """'exited with code 3', 'was killed by SIGSEGV', or how its fork server took it along."""
        if self.status is None and self.forkserver.lost:
            return "was killed when its fork server died"
        return describe_status(self.status)

    def signal(self, signum: int) -> None:
        """Send a signal to the worker's process group (its subprocesses too)."""
        if not self.is_alive():
            return  # never signal a pid that may have been reused
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            try:
                os.kill(self.pid, signum)  # not yet its own group leader
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int | None:
        """Wait up to timeout for the process to exit; its raw status, or None."""
        return self.forkserver.wait(self.pid, timeout)

    def shutdown(self, grace: float = 1.0) -> int | None:
        """Stop it, escalating: interrupt, shutdown request, SIGTERM, SIGKILL; bounded waits."""
        if self.is_alive():
            self.signal(signal.SIGINT)
            try:
                self.tell({"op": Op.SHUTDOWN})
            except OSError:
                pass
            steps = ((grace, None), (grace, signal.SIGTERM), (5.0, signal.SIGKILL))
            for wait_for, signum in steps:
                if signum is not None:
                    self.signal(signum)
                if self.wait(wait_for) is not None:
                    break
        # Stragglers in its group (a subprocess it started) must not outlive it either.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.status

    def kill(self) -> int | None:
        """SIGKILL the process group and wait for the exit."""
        self.signal(signal.SIGKILL)
        return self.wait(5.0)

    def ask(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A request/reply on the query channel (answered even while a cell runs)."""
        with self.query_lock:
            self._query_seq += 1
            if timeout is not None:
                self.query.settimeout(timeout)
            try:
                protocol.send(self.query, {**message, "seq": self._query_seq})
                while True:
                    reply = protocol.recv(self.query)
                    # A reply that comes after its asker timed out belongs to nobody: skip it.
                    if reply.get("seq") == self._query_seq:
                        return reply
            finally:
                if timeout is not None:
                    self.query.settimeout(QUERY_TIMEOUT)

    def tell(self, message: dict[str, Any]) -> None:
        """Send on the control channel (from any thread: a cell, a shutdown, an input reply)."""
        with self.ctl_lock:
            self.ctl.sendall(protocol.encode(message))

    def close(self) -> None:
        """Release the parent's ends of the sockets and pipes (once, whoever calls)."""
        with self._close_lock:  # closing a fd twice could close a file that reused its number
            if self._closed:
                return
            self._closed = True
        self.selector.close()
        self.ctl.close()
        self.query.close()
        os.close(self.stdout.fd)
        os.close(self.stderr.fd)
        self._close_rings()
        self.forkserver.forget(self.pid)

    def _close_rings(self) -> None:
        readers, self.rings = self.rings, []
        while readers:
            readers.pop().close()
        if self._ring_header is not None:
            self._ring_header.close()
            self._ring_header = None
        if self._ring_fd is not None:
            os.close(self._ring_fd)  # the memory goes when the worker's mappings go too
            self._ring_fd = None
