"""Shell commands for !cmd, x = !cmd, %sx and %%bash: streamed as they come, stopped by an interrupt."""

from __future__ import annotations

import codecs
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

INTERRUPT_GRACE = 0.5  # seconds an interrupted command gets after SIGINT, then after SIGTERM


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Python children (pip among them) then print as they go rather than in 8 KiB blocks: we read
    # their pipes ourselves and forward each chunk as it comes.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def shell_program() -> str:
    """The shell !cmd runs in."""
    # $SHELL, as IPython's system and getoutput use; /bin/sh where that is unset or absent.
    import shutil  # here: at the top it costs every namespace 10 ms (it imports bz2 and lzma)

    return shutil.which(os.environ.get("SHELL") or "sh") or "/bin/sh"


def write_to(stream_name: str) -> Callable[[str], None]:
    """A sink writing to sys.<stream_name> as it is when written to (the namespace's stream)."""
    def write(text: str) -> None:
        stream = getattr(sys, stream_name)  # the namespace's stream at the time of writing
        stream.write(text)
        stream.flush()

    return write


def run_command(argv: list[str], *, out: Callable[[str], None],
                err: Callable[[str], None] | None, stdin: bytes | None = None) -> int:
    """Run argv in its own process group, each piece of its output to out/err as it comes.

    err None sends stderr with stdout (2>&1). Returns the exit code, negative for a signal (as
    IPython's _exit_code). A KeyboardInterrupt stops the whole group (SIGINT, SIGTERM, SIGKILL)
    and is raised again once it is gone.
    """
    # Its own group: an interrupt reaches every process of a pipeline, not only the shell; the
    # group stays in the worker's process tree, which delete kills whole.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if err is None else subprocess.PIPE,
                            env=_child_env(), start_new_session=True)
    try:
        _pump(proc, out, err, stdin)
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise KeyboardInterrupt from None  # a clean traceback: the cell's line, no selector frames
    except BaseException:
        _stop(proc)
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return -(code - 128) if code > 128 else code


def _pump(proc: subprocess.Popen[bytes], out: Callable[[str], None],
          err: Callable[[str], None] | None, stdin: bytes | None) -> None:
    """Feed stdin and forward stdout/stderr until both reach end of file (on this thread, so an
    interrupt lands here)."""
    sinks: dict[int, tuple[Callable[[str], None], Any]] = {}
    with selectors.DefaultSelector() as selector:
        for pipe, sink in ((proc.stdout, out), (proc.stderr, err)):
            if pipe is not None and sink is not None:
                sinks[pipe.fileno()] = (sink, codecs.getincrementaldecoder("utf-8")("replace"))
                selector.register(pipe.fileno(), selectors.EVENT_READ)
        pending = memoryview(stdin or b"")
        if proc.stdin is not None:
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while selector.get_map():
            for key, _ in selector.select():
                fd = int(key.fd)
                if fd in sinks:
                    data = os.read(fd, 1 << 16)
                    sink, decoder = sinks[fd]
                    text = decoder.decode(data, final=not data)
                    if text:
                        sink(text)
                    if not data:
                        selector.unregister(fd)
                    continue
                try:
                    pending = pending[os.write(fd, pending[:1 << 16]):]
                except BrokenPipeError:
                    pending = pending[:0]  # it stopped reading: the rest is not wanted
                except BlockingIOError:
                    continue
                if not pending:
                    selector.unregister(fd)
                    assert proc.stdin is not None
                    proc.stdin.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the command's process group: SIGINT as a terminal's Ctrl-C, then SIGTERM, then SIGKILL.
    A second interrupt while waiting goes straight to the next signal."""
    for signum, grace in ((signal.SIGINT, INTERRUPT_GRACE), (signal.SIGTERM, INTERRUPT_GRACE),
                          (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(grace)
            break
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the group's leader left behind
    except (ProcessLookupError, PermissionError):
        pass
