"""The worker's main loop: fd 1/2 are pipes the server reads; cells arrive on the control socket.

Runs in a process forked from the fork server. The main thread runs cells; a second thread
answers queries (variables) and exits the process when the server goes away.
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import fcntl
import functools
import getpass
import io
import multiprocessing.util  # loaded in the fork server: a worker pays nothing (see below)
import os
import signal
import socket
import struct
import sys
import termios
import threading
import time
import types
from collections import deque
from dataclasses import replace
from typing import Any

from ..results import ErrorInfo, Outcome
from ..runner import introspect
from ..runner.executor import Executor
from . import protocol, rings
from .interrupts import Interruptible
from .protocol import Op

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


FLUSH_INTERVAL = 0.05  # seconds printed text may wait in the worker before it is sent


class _ErrStream(io.TextIOWrapper):
    """stderr, line-buffered; it pushes (or marks) pending stdout first, so the two keep their order."""

    out: io.TextIOWrapper | None = None

    def write(self, text: str) -> int:
        if self.out is not None:
            self.out.flush()
        return super().write(text)


try:  # imported here, so the fork server has it loaded and a new worker pays nothing
    from ._ringtext import RingText as _RingText
except ImportError:  # built by pip where a C compiler is; rings.py works without it
    _RingText = None


# stderr over the C writer: made once, in the fork server, not per worker.
_RingErrStream = type("_RingErrStream", (_ErrStream, _RingText), {}) if _RingText else None


def _ring_text() -> type[io.TextIOWrapper] | None:
    """The C text writer of rings.py (one memcpy per print), where it was built and not refused."""
    if os.environ.get("KERNELSERVER_PURE_PYTHON_OUTPUT"):
        return None  # the fallback, on purpose (tests run both)
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None  # its copy relies on the GIL; setup.py does not build it there either
    ring_text: type[io.TextIOWrapper] | None = _RingText
    return ring_text


def _make_streams(ring_fd: int | None, prefix: bytes, out_pipe: int,
                  err_pipe: int) -> list[rings.RingWriter]:
    """sys.stdout/stderr for cells; with ring_fd, text goes into shared memory (see rings.py)."""
    writers: list[rings.RingWriter] = []
    if ring_fd is not None:
        try:
            header = rings.map_header(ring_fd)
            writers = [rings.RingWriter(ring_fd, header, index, fd, functools.partial(
                protocol.marker, prefix)) for index, fd in enumerate((out_pipe, err_pipe))]
        except (OSError, ValueError):  # no room for the mappings (an address-space limit)
            writers = []
        os.close(ring_fd)
    buffers: list[Any]
    ring_text = _ring_text() if writers else None
    if writers:
        # Every print lands in shared memory at once (an mmap's own write, no Python frame).
        buffers, write_through = [w.sink for w in writers], True
    else:
        # stdout block-buffered and flushed every FLUSH_INTERVAL (as ipykernel does): a pipe
        # write per printed line capped a printing cell at ~40 MB/s, block writes reach ~170.
        buffers = [io.BufferedWriter(io.FileIO(fd, "w", closefd=False), 1 << 16) for fd in (1, 2)]
        write_through = False
    text_class: type[io.TextIOWrapper] = ring_text or io.TextIOWrapper
    err_class: type[_ErrStream] = (_RingErrStream or _ErrStream) if ring_text else _ErrStream
    out = text_class(buffers[0], encoding="utf-8", errors="backslashreplace",
                     write_through=write_through)
    err = err_class(buffers[1], encoding="utf-8", errors="backslashreplace", line_buffering=True,
                    write_through=write_through)
    err.out = out
    if ring_text is not None:
        for writer, stream in zip(writers, (out, err), strict=True):
            writer.attach(stream)
    # The __std*__ originals too: code that restores them must still reach the pipes.
    sys.stdout = sys.__stdout__ = out  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = err  # type: ignore[misc]
    sys.stdin = sys.__stdin__ = open(os.devnull)  # type: ignore[misc]  # noqa: SIM115

    def tend_periodically() -> None:
        interval = FLUSH_INTERVAL
        while True:
            time.sleep(interval)
            try:
                # Markers (the server shows what was printed), rotation, back-pressure: checked
                # often while text flows, so what waits in memory stays a few MiB.
                came = any([writer.tend() for writer in writers])
                interval = FLUSH_INTERVAL / 10 if came else FLUSH_INTERVAL
                if not writers:
                    out.flush()
            except Exception:
                pass  # a closed or broken stdout: the cell's business, not the flusher's

    threading.Thread(target=tend_periodically, name="stdout-flusher", daemon=True).start()
    _flush_before_handing_over_fds(out)
    _keep_children_lines_whole(writers, out)
    return writers


# Run first by the -c program of every Python that multiprocessing starts (spawn, forkserver):
# such a Python's stdout on a pipe is block-buffered (or, under PYTHONUNBUFFERED, one write per
# write() call: print's text and its newline apart), and several of them writing one pipe cut
# each other's lines; line-buffered, each print is one write of whole lines.
_LINE_BUFFERED = ("import sys\nfor _s in (sys.stdout, sys.stderr):\n    try:\n"
                  "        _s.reconfigure(line_buffering=True, write_through=False)\n"
                  "    except Exception:\n"
                  "        pass\ndel _s\n")


def _keep_children_lines_whole(writers: list[rings.RingWriter], out: io.TextIOWrapper) -> None:
    """What the namespace's other processes print reaches the server whole, line by line."""
    def in_child() -> None:
        for writer in writers:
            writer.forked()  # off the parent's ring, into the pipe (see linewriter.py)
        if not writers:
            out.reconfigure(line_buffering=True)  # whole lines, not 64 KiB blocks, per write

    os.register_at_fork(after_in_child=in_child)
    spawnv_passfds = multiprocessing.util.spawnv_passfds

    @functools.wraps(spawnv_passfds)
    def line_buffered(path: Any, args: Any, passfds: Any) -> Any:
        args = list(args)
        for index in range(len(args) - 1):
            if args[index] == "-c" and not str(args[index + 1]).startswith(_LINE_BUFFERED):
                args[index + 1] = _LINE_BUFFERED + str(args[index + 1])
                break
        return spawnv_passfds(path, args, passfds)

    multiprocessing.util.spawnv_passfds = line_buffered


def _flush_before_handing_over_fds(out: io.TextIOWrapper) -> None:
    """Printed text goes out before a child process (or exec) writes to the same pipes."""
    def flush() -> None:
        try:
            out.flush()
        except Exception:
            pass

    def flushing(call: Any) -> Any:
        @functools.wraps(call)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flush()
            return call(*args, **kwargs)
        return wrapper

    os.register_at_fork(before=flush)
    for name in ("system", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp", "execvpe",
                 "execl", "execle", "execlp", "execlpe"):
        if hasattr(os, name):
            setattr(os, name, flushing(getattr(os, name)))
    import subprocess  # a cell's subprocess.run forks through _posixsubprocess, not os.fork

    subprocess.Popen._execute_child = flushing(subprocess.Popen._execute_child)  # type: ignore[attr-defined]


def _pipe_is_empty(fd: int) -> bool:
    """True when the server has read everything written to this pipe (FIONREAD is 0)."""
    try:
        waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return struct.unpack("i", waiting)[0] == 0


class _Inbox:
    """Messages from the server on the control socket, read in whole frames.

    The frame buffer outlives a read cut short by an interrupt (a cell waiting in input() is
    interruptible), so no message is ever half-read.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = protocol.FrameReader()
        self._ready: deque[dict[str, Any]] = deque()

    def next(self) -> dict[str, Any]:
        """The next message (blocking); ChannelClosed once the server is gone."""
        while not self._ready:
            data = self.sock.recv(1 << 16)
            if not data:
                raise protocol.ChannelClosed("channel closed")
            self._ready.extend(self._reader.feed(data))
        return self._ready.popleft()


def _query_loop(query: socket.socket, executor: Executor, interruptible: Interruptible) -> None:
    # SIGINT is for the main thread, where cells run: it must never pick this one.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    while True:
        try:
            message = protocol.recv(query)
        except (protocol.ChannelClosed, OSError):
            # The server is gone: nobody can ever collect our results or free us. Leave now.
            os._exit(0)
        op = message.get("op")
        signalled: int | None = None
        try:
            if op == Op.VARIABLES:
                reply: dict[str, Any] = {"ok": True, "variables": executor.variables()}
            elif op == Op.COMPLETE:
                reply = {"ok": True, "reply": introspect.complete(
                    executor.namespace, str(message["code"]), int(message["cursor_pos"]))}
            elif op == Op.INSPECT:
                reply = {"ok": True, "reply": introspect.inspect_name(
                    executor.namespace, str(message["code"]), int(message["cursor_pos"]),
                    int(message.get("detail_level", 0)))}
            elif op == Op.INTERRUPT:
                target = int(message["execution_count"])
                reply = {"ok": True, "interrupted": interruptible.interrupt(target)}
                signalled = target if reply["interrupted"] else None
            elif op == Op.PING:
                reply = {"ok": True, "pid": os.getpid()}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["seq"] = message.get("seq")
        try:
            protocol.send(query, reply)
        except OSError:
            os._exit(0)
        if signalled is not None:  # answered first: the server need not wait for this
            interruptible.make_sure(signalled)


def main(ctl: socket.socket, query: socket.socket, prefix: bytes, options: dict[str, Any],
         ring_fd: int | None = None) -> int:
    """Serve cells until told to stop or the server goes away; returns the exit code."""
    # Private copies of the output pipes (close-on-exec): markers reach the server even when a
    # cell points fd 1 or 2 elsewhere, and FIONREAD on them tells whether it has read it all.
    out_pipe, err_pipe = os.dup(1), os.dup(2)
    writers = _make_streams(ring_fd, prefix, out_pipe, err_pipe)
    # Non-interactive plots: figures come back as PNG displays, plt.show() never blocks.
    os.environ["MPLBACKEND"] = "module://kernelserver.runner.mpl_backend"
    # A segfault then leaves the Python stack of the crash in the cell's stderr.
    faulthandler.enable(file=sys.stderr, all_threads=False)
    main_module = types.ModuleType("__main__")
    main_module.__dict__["__builtins__"] = __builtins__
    # Cells run in __main__ as in IPython, so their classes pickle and multiprocessing works.
    sys.modules["__main__"] = main_module
    sys.argv = [""]
    send_lock = threading.Lock()
    display_seq = 0

    def place(message: dict[str, Any]) -> None:
        """A display (or a clear) sent, and its place among the printed text marked."""
        nonlocal display_seq
        _flush_all()  # text printed before the display goes into the pipe first
        display_seq += 1
        with send_lock:
            protocol.send(ctl, {"op": Op.DISPLAY, "seq": display_seq, **message})
        # Its place among the printed text: the server emits the display when it reads this.
        os.write(out_pipe, protocol.marker(prefix, b"D%d" % display_seq))

    def on_display(bundle: dict[str, Any], *, display_id: str | None = None, update: bool = False,
                   metadata: dict[str, Any] | None = None) -> None:
        if display_id is None:
            place({"data": bundle})
        else:
            place({"data": bundle, "display_id": display_id, "update": update})

    def on_clear(wait: bool) -> None:
        place({"clear": wait})

    def on_value(bundle: dict[str, Any]) -> None:
        place({"value": bundle})

    inbox = _Inbox(ctl)
    input_seq = 0

    def ask(prompt: str, password: bool) -> str:
        """input() in a cell that allows stdin: the server relays the prompt to the client."""
        nonlocal input_seq
        _flush_all()  # the prompt's context (what was printed) reaches the client first
        input_seq += 1
        with send_lock:
            protocol.send(ctl, {"op": Op.INPUT_REQUEST, "id": input_seq, "prompt": prompt,
                                "password": password})
        while True:
            message = inbox.next()  # an interrupt lands here and ends the cell
            if message.get("op") == Op.INPUT_REPLY and message.get("id") == input_seq:
                return str(message.get("value", ""))
            # Anything else (a late reply to an interrupted input()) is not for this prompt.

    executor = Executor(main_module.__dict__, repr_limit=options.get("repr_limit", 1 << 20),
                        on_display=on_display, syntax=options.get("syntax", "python"),
                        on_clear=on_clear, on_value=on_value)
    getpass.getpass = executor.getpass  # as ipykernel does
    interruptible = Interruptible()
    signal.signal(signal.SIGINT, interruptible.handler)
    threading.Thread(target=_query_loop, args=(query, executor, interruptible), name="query",
                     daemon=True).start()
    while True:
        try:
            message = inbox.next()
        except KeyboardInterrupt:
            continue
        except (protocol.ChannelClosed, OSError):
            return 0
        op = message.get("op")
        if op == Op.SHUTDOWN:
            break
        if op != Op.EXECUTE:
            continue
        execution_count = int(message["execution_count"])
        try:
            if interruptible.start(execution_count):
                outcome = executor.run(message["code"], execution_count, message.get("repr_limit"),
                                       stdin=ask if message.get("allow_stdin") else None)
                if message.get("user_expressions"):
                    outcome = replace(outcome, user_expressions=executor.evaluate(
                        message["user_expressions"]))
            else:
                outcome = Outcome("interrupted", error=ErrorInfo(
                    "KeyboardInterrupt", "the cell was interrupted before it started", ""))
            interruptible.finish()
        except KeyboardInterrupt:  # landed just outside the cell's own try block
            interruptible.running = None  # a plain store: no call, where another could land
            outcome = Outcome("interrupted", error=ErrorInfo("KeyboardInterrupt", "", ""),
                              truncated=executor.truncated)
        _flush_all()
        # The server must have read all of this cell's output before it answers. Pipes it has
        # already emptied say so at once ("drained"); otherwise END markers, read after the
        # rest, say it. Most cells print little, and skip two writes and two server wake-ups.
        drained = (_pipe_is_empty(out_pipe) and _pipe_is_empty(err_pipe)
                   and all(writer.consumed() for writer in writers))
        if not drained:
            os.write(out_pipe, protocol.marker(prefix, b"END"))
            os.write(err_pipe, protocol.marker(prefix, b"END"))
        reply = {"op": Op.RESULT, "drained": drained, **outcome.to_dict()}
        with send_lock:
            try:
                protocol.send(ctl, reply)
            except OSError:
                return 0
    atexit._run_exitfuncs()
    _flush_all()
    return 0
