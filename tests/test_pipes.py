"""The pipe demultiplexer: text, display places and END markers found in reads cut anywhere."""

from __future__ import annotations

import pytest

from kernelserver.backends import protocol
from kernelserver.backends.pipes import Item, OutputPipe

PREFIX = b"\x00\x1bKS-0123456789abcdef-"
D1 = protocol.marker(PREFIX, b"D1")
D2 = protocol.marker(PREFIX, b"D2")
END = protocol.marker(PREFIX, b"END")


def feed_in_pieces(pipe: OutputPipe, data: bytes, cuts: list[int]) -> list[Item]:
    """Feed data cut at these offsets; the items, adjacent text joined."""
    items: list[Item] = []
    start = 0
    for cut in [*cuts, len(data)]:
        items += pipe.feed(data[start:cut])
        start = cut
    return joined(items)


def joined(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        if isinstance(item, str) and out and isinstance(out[-1], str):
            out[-1] += item
        elif item != "":
            out.append(item)
    return out


def test_text_passes_through_and_utf8_split_across_reads_is_whole() -> None:
    pipe = OutputPipe(0, PREFIX)
    data = "héllo wörld 😀\n".encode()
    assert feed_in_pieces(pipe, data, [2, 3, 14, 15, 16]) == ["héllo wörld 😀\n"]


@pytest.mark.parametrize("cut", range(1, len(D1)), ids=lambda cut: f"cut-at-{cut}")
def test_a_display_marker_cut_anywhere_is_found_in_place(cut: int) -> None:
    pipe = OutputPipe(0, PREFIX)
    data = b"before\n" + D1 + b"after\n"
    assert feed_in_pieces(pipe, data, [7 + cut]) == ["before\n", 1, "after\n"]


def test_a_marker_cut_byte_by_byte_is_found() -> None:
    pipe = OutputPipe(0, PREFIX)
    data = b"a" + D1 + b"b" + D2 + b"c" + END
    assert feed_in_pieces(pipe, data, list(range(1, len(data)))) == ["a", 1, "b", 2, "c"]
    assert pipe.seen_end


def test_end_after_a_display_in_one_read_keeps_what_follows_for_the_next_cell() -> None:
    pipe = OutputPipe(0, PREFIX)
    assert pipe.feed(b"x" + D1 + END + b"late output\n") == ["x", 1]
    assert pipe.seen_end
    # What arrives after END (a thread still printing) belongs to the next cell, never lost.
    assert pipe.feed(b"more\n") == []
    assert pipe.reset() == b"late output\nmore\n"
    assert not pipe.seen_end
    assert pipe.feed(b"next cell\n") == ["next cell\n"]


def test_output_between_cells_comes_first_in_the_next_cell() -> None:
    pipe = OutputPipe(0, PREFIX)
    pipe.feed(b"cell 1\n" + END)
    pipe.feed(b"between\n")
    early = pipe.reset()
    assert joined(pipe.feed(early) + pipe.feed(b"cell 2\n" + END)) == ["between\ncell 2\n"]


def test_text_that_only_looks_like_a_marker_start_is_released() -> None:
    pipe = OutputPipe(0, PREFIX)
    items = pipe.feed(b"ab" + PREFIX[:5])  # could be a marker's start: held back
    assert joined(items) == ["ab"]
    assert joined(pipe.release_held()) == [PREFIX[:5].decode()]  # the cell ended: it was text
    pipe.feed(b"z" + PREFIX[:3])
    assert pipe.flush() == PREFIX[:3].decode()  # and at EOF


def test_an_unknown_tag_is_dropped_not_shown() -> None:
    pipe = OutputPipe(0, PREFIX)
    assert joined(pipe.feed(b"a" + protocol.marker(PREFIX, b"Zzz") + b"b")) == ["ab"]


def test_a_printed_fake_prefix_with_another_secret_is_plain_text() -> None:
    pipe = OutputPipe(0, PREFIX)
    forged = b"\x00\x1bKS-ffffffffffffffff-END\x00"
    assert joined(pipe.feed(b"a" + forged + b"b")) == [("a" + forged.decode() + "b")]
    assert not pipe.seen_end
