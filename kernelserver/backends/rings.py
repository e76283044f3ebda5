"""A worker's printed text in shared memory, so it outlives the worker (os._exit, a segfault, SIGKILL).

Python's sys.stdout and sys.stderr in a worker write straight into a memory file (memfd) the server
holds too: where the small C module _ringtext is built, a TextIOWrapper whose write() copies the
text's UTF-8 bytes into the mapped pages itself (one memcpy per print, faster than the old private
buffer); else a write-through TextIOWrapper whose buffer's `write` is an mmap's own (C code, no
Python frame per print). Either way text is in shared pages the moment print() returns. The pipes
still carry what C code and subprocesses write, and in-band markers `R<gen>:<pos>` saying "the text
up to pos goes here", so the order of the two is kept as before; the worker writes them every 5 ms
while text flows (50 ms otherwise) and at each flush point. When the worker dies the server reads
what no marker announced yet: nothing printed is lost.

The price of the pure-Python path, measured in docs/performance.md: two C calls and a bytes object
per print instead of a copy into a private buffer, which makes printing many short lines slower than
the old 64 KiB block buffer; _ringtext removes it (big writes are faster either way: no pipe).

Layout of the memfd: one header page (per stream: the server's consumed generation and position),
then for each stream two halves of HALF bytes, sparse. The server reads with pread (the pages stay
the worker's memory, not the server's). A generation is one pass over a half: when a half holds
ROTATE_AT bytes and the server has finished the other one, the worker moves its writes to the other
half (one attribute store, or one C call: atomic under the GIL). The server, when it reads the first
marker of the new generation, makes the old half zeros again: its first KEEP bytes by writing zeros
(the pages stay, so the worker writes into them again without faulting fresh pages in, which costs
more than the copy itself), the rest by punching holes (the memory goes back). Zeros are what tells,
after a death, where the text ends. So a namespace that printed a lot holds at most 2 * KEEP per
stream once idle; one that prints little, a page or two. A server more than LAG_MAX behind makes the
next print wait for it, as a full pipe did.
"""

from __future__ import annotations

import codecs
import ctypes
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .linewriter import LineWriter

PAGE = mmap.PAGESIZE
HALF = 4 << 30  # address space, not memory: only written pages are memory
ROTATE_AT = 1 << 20  # a half this full moves on to the other, if the server is done with it
KEEP = 4 << 20  # per half: pages kept (as zeros) for the next pass; beyond, freed once read
LAG_MAX = 16 << 20  # more unread than this, and printing waits for the server (back-pressure)
WAIT_MAX = 1.0  # seconds a print waits for a server that does not read
STREAMS = ("stdout", "stderr")
READ_SIZE = 30_000  # the server's read: text pieces under allocator.LARGE_BLOCK reuse heap memory
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_HEADER_SLOT = 64  # bytes per stream in the header page


def size() -> int:
    """The memfd's size."""
    return PAGE + len(STREAMS) * 2 * HALF


def _offset(stream: int, half: int) -> int:
    return PAGE + (2 * stream + half) * HALF


def create() -> int:
    """A new memfd for one worker's rings (OSError where the system cannot make one)."""
    fd = os.memfd_create("kernelserver-output", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size())
    except OSError:
        os.close(fd)
        raise
    return fd


class _Head:
    """The server's progress on one stream, in the header page: (generation, position)."""

    def __init__(self, header: mmap.mmap, stream: int) -> None:
        self._gen = ctypes.c_uint64.from_buffer(header, stream * _HEADER_SLOT)
        self._pos = ctypes.c_uint64.from_buffer(header, stream * _HEADER_SLOT + 8)

    def get(self) -> tuple[int, int]:
        return int(self._gen.value), int(self._pos.value)

    def set(self, gen: int, pos: int) -> None:
        # Position first: a reader that sees the new generation never pairs it with an old position
        # from the wrong half (both only grow).
        self._pos.value = pos
        self._gen.value = gen


class _Sink:
    """The binary buffer under a TextIOWrapper: `write` is an mmap's (swapped on rotation)."""

    closed = False
    write: Callable[[Any], Any]

    def __init__(self, on_flush: Callable[[], None], fd: int) -> None:
        self._on_flush = on_flush
        self._fd = fd

    def fileno(self) -> int:
        # The stream's real fd (1 or 2): faulthandler and subprocesses write there directly.
        return self._fd

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        pass  # closing sys.stdout must not unmap what the server still reads

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self._on_flush()


class RingWriter:
    """The worker's side of one stream: the text file to print to, and its markers."""

    def __init__(self, fd: int, header: mmap.mmap, stream: int, marker_fd: int,
                 marker: Callable[[bytes], bytes]) -> None:
        self._halves = [mmap.mmap(fd, HALF, offset=_offset(stream, half)) for half in (0, 1)]
        self._head = _Head(header, stream)
        self._marker_fd = marker_fd
        self._marker = marker
        self._lock = threading.Lock()
        self.gen = 0
        self._marked = 0
        self._previous_end = 0
        self.sink = _Sink(self.mark, 1 + stream)
        self.sink.write = self._halves[0].write
        self._text: Any = None  # the RingText printing into the ring itself, once attached

    @property
    def _current(self) -> mmap.mmap:
        return self._halves[self.gen % 2]

    def attach(self, text: Any) -> None:
        """Let text (a _ringtext.RingText over this sink) copy prints into the ring itself; what
        it declines, and bytes written to its buffer, come back here at the same position."""
        with self._lock:
            text._target(self._current, self._current.tell())
            self.sink.write = text._write_bytes
            self._text = text

    def _tell(self) -> int:
        """Bytes written into the current half."""
        return int(self._text._tell()) if self._text is not None else self._current.tell()

    def _writer(self) -> Callable[[Any], Any]:
        """The sink's write when printing is not held back."""
        return self._text._write_bytes if self._text is not None else self._current.write

    def forked(self) -> None:
        """In a child forked from the worker: print whole lines into the pipe from now on."""
        # The parent's flusher may have held this lock at the fork; the child has no flusher.
        self._lock = threading.Lock()
        child = LineWriter(self.sink.fileno())
        self.sink.write = child.write
        self.sink._on_flush = child.flush
        if self._text is not None:
            self._text._set_fast(False)  # its prints go through the sink's write too

    def mark(self) -> None:
        """Tell the server, in the pipe, that the text printed so far goes here."""
        with self._lock:
            self._mark_locked()

    def _mark_locked(self) -> None:
        pos = self._tell()
        if pos != self._marked:
            os.write(self._marker_fd, self._marker(b"R%d:%d" % (self.gen, pos)))
            self._marked = pos

    def consumed(self) -> bool:
        """True when the server has read everything marked so far."""
        return self._head.get() == (self.gen, self._marked)

    def tend(self) -> bool:
        """The flusher's tick: mark, move to the other half when this one is full enough, and
        make the next print wait for a server that fell far behind; True if text came."""
        with self._lock:
            came = self._tell() != self._marked
            self._mark_locked()
            if self._marked >= ROTATE_AT and self._head.get()[0] == self.gen:
                self._rotate()
            if self._lag() > LAG_MAX:
                self.sink.write = self._slow_write
                if self._text is not None:
                    self._text._set_fast(False)  # its prints go through the sink's write too
            return came

    def _lag(self) -> int:
        """Bytes printed that the server has not read yet."""
        head_gen, head_pos = self._head.get()
        behind = self._previous_end if head_gen != self.gen else 0
        return self._tell() + behind - head_pos

    def _rotate(self) -> None:
        following = self._halves[(self.gen + 1) % 2]
        following.seek(0)
        previous = self._current
        if self._text is not None:
            # One call that writes nothing meanwhile: it swaps the half and says where the
            # previous one ended.
            end = int(self._text._target(following, 0))
        else:
            # One attribute store: a print runs wholly in C under the GIL, so it lands in one
            # half or the other, never between; after this line none lands in the previous one.
            self.sink.write = following.write
            end = previous.tell()
        if end != self._marked:
            os.write(self._marker_fd, self._marker(b"R%d:%d" % (self.gen, end)))
        self.gen += 1
        self._marked = 0
        self._previous_end = end

    def _slow_write(self, data: Any) -> int:
        """The first print after the server fell LAG_MAX behind: it waits until the server has
        caught up halfway (as a full pipe makes a writer wait), then printing is fast again.

        The flusher goes on marking meanwhile, which is what lets the server catch up; a server
        that does not read for WAIT_MAX seconds gets the text anyway (memory, not a hang)."""
        deadline = time.monotonic() + WAIT_MAX
        while self._lag() > LAG_MAX // 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        with self._lock:
            if self.sink.write == self._slow_write:
                self.sink.write = self._writer()
                if self._text is not None:
                    self._text._set_fast(True)
            return int(self._writer()(data))


class RingReader:
    """The server's side of one stream: the text between markers, and what is left at death.

    It reads with pread, not through a mapping: the pages stay the worker's (its memory, in its
    namespace's count), never the server's.
    """

    def __init__(self, fd: int, header: mmap.mmap, stream: int) -> None:
        self._fd = fd
        self._stream = stream
        self._head: _Head | None = _Head(header, stream)
        self.gen = 0
        self.pos = 0
        self._released = 0
        # Reads land in one buffer and decode from it: a fresh bytes object per read, and the
        # incremental decoder's copy of it, each cost a 64 KiB allocation (page faults: the server
        # maps allocations this big, allocator.py) for text that is copied once more anyway.
        self._buffer = memoryview(bytearray(READ_SIZE))
        self._partial = b""  # an unfinished UTF-8 sequence at the end of the last read

    def _read(self, half: int, start: int, end: int) -> bytes:
        return os.pread(self._fd, end - start, _offset(self._stream, half) + start)

    def take(self, gen: int, pos: int) -> Iterator[str]:
        """The text a marker announces (up to pos in generation gen), a read's worth at a time:
        never a copy of all a fast cell printed between two markers."""
        if gen > self.gen:
            self._clear(self.gen % 2, 0, self.pos)  # the old half is done: zeros for its next pass
            self.gen, self.pos, self._released = gen, 0, 0
        while gen == self.gen and self.pos < pos:
            end = min(pos, self.pos + READ_SIZE)
            text = self._decode_range(gen % 2, self.pos, end)
            self.pos = end
            if self._head is not None:
                self._head.set(self.gen, self.pos)
            if text:
                yield text

    def rest(self) -> str:
        """After the worker died: what it printed that no marker announced (zeros end it)."""
        half = self.gen % 2
        text = self._decode_range(half, self.pos, self._written_end(half, self.pos))
        following = 1 - half
        if self._read(following, 0, 1) not in (b"", b"\0"):
            # It had moved to the other half before its last marker.
            text += self._decode_range(following, 0, self._written_end(following, 0))
        partial, self._partial = self._partial, b""
        return text + codecs.utf_8_decode(partial, "replace", True)[0]

    def _decode_range(self, half: int, start: int, end: int) -> str:
        """The text of [start, end) of a half, read a buffer's worth at a time."""
        pieces = []
        while start < end:
            count = os.preadv(self._fd, [self._buffer[:min(end - start, READ_SIZE)]],
                              _offset(self._stream, half) + start)
            if count <= 0:
                break
            start += count
            data: Any = self._buffer[:count]
            if self._partial:
                data = self._partial + data
            text, used = codecs.utf_8_decode(data, "replace", False)
            self._partial = bytes(data[used:])
            pieces.append(text)
        return "".join(pieces)

    def _written_end(self, half: int, start: int) -> int:
        """Where written text ends: the first whole page of zeros after start (pages never written
        are zeros; text with a page of NULs in it is not a case worth a protocol)."""
        page = start - start % PAGE
        while page < HALF and self._read(half, page, page + PAGE).strip(b"\0"):
            page += PAGE
        end = max(start, page)
        if end > start:  # within the last page with text: after its last byte
            last = self._read(half, max(start, end - PAGE), end)
            end -= len(last) - len(last.rstrip(b"\0"))
        return end

    def release(self) -> None:
        """After a cell: give back the pages of what was read beyond KEEP (the worker writes
        further on, never below), so a namespace that printed a lot holds little once idle."""
        upto = self.pos - self.pos % PAGE
        if upto > self._released:
            self._clear(self.gen % 2, self._released, upto)
            self._released = upto

    def _clear(self, half: int, start: int, end: int) -> None:
        """Zeros in [start, end) of a half: written over below KEEP, punched out above it."""
        base = _offset(self._stream, half)
        while start < min(end, KEEP):
            start += os.pwrite(self._fd, _ZEROS[:min(end, KEEP) - start], base + start)
        if end > start and _fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                      base + start, end - start) != 0:
            while start < end:  # zeros, where pages cannot be freed
                start += os.pwrite(self._fd, _ZEROS[:end - start], base + start)

    def close(self) -> None:
        """Let go of the header (its ctypes views pin the mapping's buffer)."""
        self._head = None


_ZEROS = memoryview(bytes(1 << 20))
_libc: Any = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return int(_libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)))
    except (OSError, AttributeError):
        return -1


def map_header(fd: int) -> mmap.mmap:
    """The header page."""
    return mmap.mmap(fd, PAGE, offset=0)
