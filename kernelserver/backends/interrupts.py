"""Which cell a worker's SIGINT is for: the cell it was meant for, never the protocol or the next one."""

from __future__ import annotations

import os
import signal
import threading
import time

from . import proctree

RESIGNAL_FOR = 1.0  # seconds an interrupt is repeated while the cell's handler has not run


class Interruptible:
    """SIGINT raises KeyboardInterrupt only in the cell it was meant for, never in the protocol.

    The server names the cell to interrupt by its execution_count (op `interrupt` on the query
    socket, answered by the query thread): a running cell is signalled at once; one whose
    execute message is still on its way is remembered and never starts; one that has finished
    is left alone (the answer says so), so a late interrupt cannot reach the next cell.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the query thread's check-and-signal against start/finish
        self.running: int | None = None  # the execution_count of the cell running now
        self._started = 0  # the latest cell started (they start in increasing order)
        self._early: int | None = None  # an interrupt for a cell not started yet
        self._owed: int | None = None  # the cell a SIGINT was sent for, until the handler runs
        self._hit: int | None = None  # the cell the handler last raised an owed interrupt in
        self._main = threading.get_ident()  # made on the main thread, where cells run

    def start(self, execution_count: int) -> bool:
        """Cell execution_count starts; False when it was interrupted before (do not run it)."""
        with self._lock:
            self._started = max(self._started, execution_count)
            early, self._early = self._early, None
            if early == execution_count:
                return False
            self.running = execution_count
            return True

    def finish(self) -> None:
        """The cell ended; a SIGINT from now on is not for it."""
        with self._lock:
            self.running = None

    def interrupt(self, execution_count: int) -> bool:
        """From the query thread: interrupt that cell (now, or at its start); False once ended."""
        with self._lock:
            if self.running == execution_count:
                self._owed = execution_count
                # To the main thread itself: sent to the process, another thread (the flusher,
                # one of the cell's) may take it, and the cell's sleep or read never sees it.
                signal.pthread_kill(self._main, signal.SIGINT)
                _interrupt_group()
                return True
            if execution_count > self._started:  # its execute message is on its way
                self._early = execution_count
                return True
            return False

    def make_sure(self, execution_count: int) -> None:
        """Signal the cell again until its handler has taken the interrupt (bounded)."""
        # A SIGINT that lands after the interpreter's last check and before a blocking call
        # (the cell's first sleep) is seen only when that call returns; a second one ends it.
        delay, deadline = 0.002, time.monotonic() + RESIGNAL_FOR
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            with self._lock:
                if self.running != execution_count or self._owed != execution_count:
                    return  # taken, or the cell has ended
                if signal.getsignal(signal.SIGINT) != self.handler:
                    return  # the cell's own handler (or SIG_IGN): it gets one signal, as ever
                signal.pthread_kill(self._main, signal.SIGINT)

    def handler(self, signum: int, frame: object) -> None:
        # No lock here: the handler runs on the main thread, which may hold it already.
        owed, self._owed = self._owed, None
        running = self.running
        if running is None or (owed is not None and owed != running):
            return  # between cells, or a SIGINT sent for a cell that has finished since
        if owed is None and self._hit == running:
            return  # make_sure's repeat of one this cell has had already
        if owed is not None:
            self._hit = running
        raise KeyboardInterrupt


def _interrupt_group() -> None:
    """SIGINT what the cell started in the worker's process group, as a group signal would."""
    # os.system's shell, a subprocess; not the worker itself: its main thread had its own.
    group = os.getpgrp()
    for pid in proctree.descendants(os.getpid()):
        try:
            if os.getpgid(pid) == group:
                os.kill(pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass  # gone meanwhile
