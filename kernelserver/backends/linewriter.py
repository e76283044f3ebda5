"""A forked child's output: whole lines into the pipe, never into the parent's ring (rings.py)."""

from __future__ import annotations

import os
from typing import Any

PIPE_BUF = 4096  # POSIX: a pipe write of at most this many bytes is never interleaved


class LineWriter:
    """A forked child's stream: whole lines straight into the pipe, never into the parent's ring.

    Parent and child share one ring but not its position, so a child writing there overwrites
    the parent's text and confuses the server's reader for every later cell. A pipe is safe to
    share: a write of at most PIPE_BUF bytes lands whole, so each write here is whole lines of
    at most PIPE_BUF (a longer line goes alone, and only it may interleave with another's).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = bytearray()

    def write(self, data: Any) -> int:
        """Keep data; send the whole lines it completes."""
        count = len(data)
        self._pending += data
        if b"\n" in data or len(self._pending) > PIPE_BUF * 16:
            self._send(self._pending.rfind(b"\n") + 1 or len(self._pending))
        return count

    def flush(self) -> None:
        """Send everything, a partial last line too."""
        self._send(len(self._pending))

    def _send(self, end: int) -> None:
        view = memoryview(self._pending)
        start = 0
        try:
            while start < end:
                stop = end
                if stop - start > PIPE_BUF:  # cut after the last newline that fits, if any
                    cut = self._pending.rfind(b"\n", start, start + PIPE_BUF)
                    stop = cut + 1 if cut >= 0 else self._pending.find(b"\n", start, end) + 1 or end
                while start < stop:
                    start += os.write(self._fd, view[start:stop])
        finally:
            view.release()
            del self._pending[:start]
