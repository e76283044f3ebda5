"""The worker's main loop: fd 1/2 are pipes the server reads; cells arrive on the control socket.

Runs in a process forked from the fork server. The main thread runs cells; a second thread
answers queries (variables) and exits the process when the server goes away.
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import io
import os
import signal
import socket
import sys
import threading
import types
from typing import Any

from ..executor import Executor
from . import protocol

_libc: Any = None
try:
    _libc = ctypes.CDLL(None)
except OSError:  # pragma: no cover - no libc symbols; C buffers just flush at exit
    pass


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if _libc is not None:
        # printf output sits in libc's buffer (pipes are fully buffered) until flushed.
        _libc.fflush(None)


class _Interruptible:
    """SIGINT raises KeyboardInterrupt only while a cell runs, never inside the protocol."""

    def __init__(self) -> None:
        self.running = False

    def handler(self, signum: int, frame: object) -> None:
        if self.running:
            raise KeyboardInterrupt


def _make_streams() -> None:
    def wrap(fd: int) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w", closefd=False)
        # Line-buffered like a terminal: print() reaches the pipe as one write per line, and
        # flush() (tqdm calls it) pushes a partial line out at once.
        return io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16), encoding="utf-8",
                                errors="backslashreplace", line_buffering=True)

    # The __std*__ originals too: code that restores them must still reach the pipes.
    sys.stdout = sys.__stdout__ = wrap(1)  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = wrap(2)  # type: ignore[misc]
    sys.stdin = sys.__stdin__ = open(os.devnull)  # type: ignore[misc]  # noqa: SIM115


def _query_loop(query: socket.socket, executor: Executor) -> None:
    while True:
        try:
            message = protocol.recv(query)
        except (protocol.ChannelClosed, OSError):
            # The server is gone: nobody can ever collect our results or free us. Leave now.
            os._exit(0)
        op = message.get("op")
        try:
            if op == "variables":
                reply: dict[str, Any] = {"ok": True, "variables": executor.variables()}
            elif op == "ping":
                reply = {"ok": True, "pid": os.getpid()}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            protocol.send(query, reply)
        except OSError:
            os._exit(0)


def main(ctl: socket.socket, query: socket.socket, prefix: bytes, options: dict[str, Any]) -> int:
    """Serve cells until told to stop or the server goes away; returns the exit code."""
    _make_streams()
    # Non-interactive plots: figures come back as PNG displays, plt.show() never blocks.
    os.environ["MPLBACKEND"] = "module://kernelserver.mpl_backend"
    # A segfault then leaves the Python stack of the crash in the cell's stderr.
    faulthandler.enable(file=sys.stderr, all_threads=False)
    main_module = types.ModuleType("__main__")
    main_module.__dict__["__builtins__"] = __builtins__
    # Cells run in __main__ as in IPython, so their classes pickle and multiprocessing works.
    sys.modules["__main__"] = main_module
    sys.argv = [""]
    send_lock = threading.Lock()
    display_seq = 0

    def on_display(bundle: dict[str, Any]) -> None:
        nonlocal display_seq
        _flush_all()  # text printed before the display goes into the pipe first
        display_seq += 1
        with send_lock:
            protocol.send(ctl, {"op": "display", "seq": display_seq, "data": bundle})
        # Its place among the printed text: the server emits the display when it reads this.
        os.write(1, protocol.marker(prefix, b"D%d" % display_seq))

    executor = Executor(main_module.__dict__, repr_limit=options.get("repr_limit", 1 << 20),
                        on_display=on_display)
    interruptible = _Interruptible()
    signal.signal(signal.SIGINT, interruptible.handler)
    threading.Thread(target=_query_loop, args=(query, executor), name="query",
                     daemon=True).start()
    while True:
        try:
            message = protocol.recv(ctl)
        except KeyboardInterrupt:
            continue
        except (protocol.ChannelClosed, OSError):
            return 0
        op = message.get("op")
        if op == "shutdown":
            break
        if op != "execute":
            continue
        outcome: Any = None
        try:
            interruptible.running = True
            outcome = executor.run(message["code"], int(message["execution_count"]))
            interruptible.running = False
        except KeyboardInterrupt:
            interruptible.running = False
        _flush_all()
        # The END markers tell the server it has read all of this cell's output from both pipes.
        os.write(1, protocol.marker(prefix, b"END"))
        os.write(2, protocol.marker(prefix, b"END"))
        if outcome is None:
            reply = {"op": "result", "status": "interrupted", "result": None,
                     "error": {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ""}}
        else:
            reply = {"op": "result", "status": outcome.status, "result": outcome.result,
                     "error": outcome.error.to_dict() if outcome.error else None}
        with send_lock:
            try:
                protocol.send(ctl, reply)
            except OSError:
                return 0
    atexit._run_exitfuncs()
    _flush_all()
    return 0
