"""The output rings on their own: a worker's writer and the server's reader over one memfd."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kernelserver.backends import rings

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create (Linux)")


@dataclass
class Pair:
    """One stream's writer (as a worker has it) and reader (as the server has it)."""

    writer: rings.RingWriter
    reader: rings.RingReader
    out: io.TextIOWrapper
    markers: int  # the read end of the marker pipe
    fd: int  # the memfd

    def markers_sent(self) -> list[tuple[int, int]]:
        """The (gen, pos) markers written so far."""
        os.set_blocking(self.markers, False)
        try:
            data = os.read(self.markers, 1 << 20)
        except BlockingIOError:
            return []
        found = []
        for piece in data.split(b"<")[1:]:
            gen, _, pos = piece.split(b">")[0][1:].partition(b":")
            found.append((int(gen), int(pos)))
        return found

    def read_marked(self) -> str:
        """What the server takes for the markers sent so far."""
        return "".join(text for marker in self.markers_sent() for text in self.reader.take(*marker))

    def allocated(self) -> int:
        """Bytes of memory the memfd holds."""
        return os.fstat(self.fd).st_blocks * 512


try:
    from kernelserver.backends._ringtext import RingText  # type: ignore[import-not-found]
except ImportError:  # built by pip install where a C compiler is (CI has one)
    RingText = None

WRITERS = ["mmap", pytest.param("ringtext", marks=pytest.mark.skipif(
    RingText is None, reason="kernelserver/backends/_ringtext.c was not built (no C compiler)"))]


@pytest.fixture(params=WRITERS)
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Each way a worker prints: the mmap's own write, or the C writer's copy."""
    fd = rings.create()
    header = rings.map_header(fd)
    read_end, write_end = os.pipe()
    writer = rings.RingWriter(fd, header, 0, write_end, lambda tag: b"<" + tag + b">")
    reader = rings.RingReader(fd, header, 0)
    out: io.TextIOWrapper
    if request.param == "ringtext":
        out = RingText(writer.sink, encoding="utf-8", errors="backslashreplace", write_through=True)
        writer.attach(out)
    else:
        out = io.TextIOWrapper(writer.sink, encoding="utf-8",  # type: ignore[arg-type]
                               errors="backslashreplace", write_through=True)
    yield Pair(writer, reader, out, read_end, fd)
    out.close()  # its last flush marks into the pipe: before the pipe goes
    reader.close()
    os.close(read_end)
    os.close(write_end)
    os.close(fd)


def test_marked_text_is_taken_in_order_across_halves(pair: Pair) -> None:
    sent = []
    for number in range(5):
        chunk = f"{number}" * (rings.ROTATE_AT // 2 + 7)
        print(chunk, file=pair.out, end="")
        sent.append(chunk)
        pair.writer.tend()  # marks, and moves to the other half once the server has caught up
        assert pair.read_marked() == chunk
    assert pair.writer.gen >= 2  # it went round: both halves were written twice


def test_what_no_marker_announced_is_read_after_death(pair: Pair) -> None:
    print("announced", file=pair.out)
    pair.writer.tend()
    assert pair.read_marked() == "announced\n"
    print("never announced é", file=pair.out, end="")  # and no newline
    assert pair.reader.rest() == "never announced é"


def test_after_death_the_rest_spans_the_half_it_moved_to(pair: Pair) -> None:
    big = "a" * (rings.ROTATE_AT + 100)
    print(big, file=pair.out, end="")
    pair.writer.tend()
    assert pair.read_marked() == big
    print("b" * 10, file=pair.out, end="")
    pair.writer.tend()  # rotates: the tail of the first half gets its marker
    print("c" * 10, file=pair.out, end="")  # in the second half, unmarked
    pair.markers_sent()  # the server never read that last marker before the worker died
    assert pair.reader.rest() == "b" * 10 + "c" * 10


def test_a_second_pass_over_a_half_never_shows_the_first(pair: Pair) -> None:
    for _ in range(2):  # back in the first half, over text read long ago
        print("x" * (rings.ROTATE_AT + 1), file=pair.out, end="")
        pair.writer.tend()
        pair.read_marked()
        pair.writer.tend()
    print("short", file=pair.out, end="")
    assert pair.reader.rest() == "short"


def test_read_pages_beyond_keep_go_back(pair: Pair) -> None:
    before = pair.allocated()
    print("z" * (rings.KEEP + (8 << 20)), file=pair.out, end="")
    assert pair.allocated() >= before + rings.KEEP + (8 << 20)
    pair.writer.tend()
    pair.read_marked()
    pair.reader.release()
    assert pair.allocated() <= before + rings.KEEP + (64 << 10)


def test_a_server_far_behind_makes_printing_wait(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rings, "LAG_MAX", 1 << 20)
    monkeypatch.setattr(rings, "WAIT_MAX", 5.0)
    print("p" * (2 << 20), file=pair.out, end="")
    pair.writer.tend()  # 2 MiB unread: the next print waits

    def server_catches_up() -> None:
        time.sleep(0.3)  # a duration, not a wait: how long the printer must be held back
        pair.read_marked()

    catcher = threading.Thread(target=server_catches_up)
    catcher.start()
    started = time.monotonic()
    print("q", file=pair.out, end="")
    waited = time.monotonic() - started
    catcher.join(10)
    assert 0.25 < waited < 4
    pair.writer.tend()
    assert pair.read_marked() == "q"
    started = time.monotonic()
    print("r", file=pair.out, end="")  # caught up: no wait
    assert time.monotonic() - started < 0.1


def test_text_bytes_and_odd_strings_land_in_order(pair: Pair) -> None:
    """What the C writer copies itself and what it hands to the TextIOWrapper share one position."""

    class Tagged(str):
        pass

    pair.out.write("ascii, ")
    pair.out.write("ünïcödé ✓, ")
    pair.out.buffer.write(b"bytes, ")
    pair.out.write("lone \udc80 surrogate, ")
    pair.out.write(Tagged("a str subclass"))
    pair.out.writelines([", ", "lines\n"])
    pair.writer.tend()
    assert pair.read_marked() == ("ascii, ünïcödé ✓, bytes, lone \\udc80 surrogate, "
                                  "a str subclass, lines\n")
    assert isinstance(pair.out, io.TextIOWrapper) and pair.out.encoding == "utf-8"


def test_a_line_buffered_stream_marks_each_line_at_once(pair: Pair) -> None:
    """stderr is line-buffered: each line's marker goes into the pipe as it is printed, so text
    that C code writes to the same pipe right after lands after it, as in a terminal."""
    pair.out.reconfigure(line_buffering=True)
    print("python line", file=pair.out)
    assert pair.markers_sent() == [(0, len("python line\n"))]  # no flusher tick needed
    assert pair.reader.take(0, len("python line\n")).__next__() == "python line\n"


def test_settings_the_direct_copy_cannot_honour_are_honoured(pair: Pair) -> None:
    pair.out.reconfigure(newline="\r\n")
    pair.out.write("a\nb")
    pair.out.reconfigure(newline="\n")
    pair.out.write("\nc")
    pair.writer.tend()
    assert pair.read_marked() == "a\r\nb\nc"


def test_wrapping_the_stream_again_keeps_printing_into_the_ring(pair: Pair) -> None:
    pair.out.write("before ")
    pair.out.__init__(pair.writer.sink, encoding="utf-8", write_through=True)  # type: ignore[misc]
    pair.out.write("after")
    pair.writer.tend()
    assert pair.read_marked() == "before after"


def test_printing_big_non_ascii_text_keeps_no_copy_of_it(pair: Pair) -> None:
    import sys

    text = "é" * 1_000_000
    size = sys.getsizeof(text)
    pair.out.write(text)
    assert sys.getsizeof(text) == size  # no UTF-8 copy cached in the str for its whole life
    pair.writer.tend()
    assert pair.read_marked() == text
