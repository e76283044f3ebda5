"""sys.stdout and sys.stderr in a cell behave as real text streams, the same on both backends."""

from __future__ import annotations

import pytest

from helpers import ApiClient


def test_writing_bytes_to_stdout_is_a_type_error_in_the_cell(api: ApiClient) -> None:
    # The inprocess backend used to take the bytes, then fail the whole answer with a 500.
    data = api.run("import sys\nprint('before')\nsys.stdout.write(b'x')")
    assert data["status"] == "error"
    assert data["error"]["ename"] == "TypeError"
    assert "must be str, not bytes" in data["error"]["evalue"]
    assert data["stdout"] == "before\n"
    assert api.run("print('still fine')")["stdout"] == "still fine\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_streams_are_writable_text_files(api: ApiClient, stream: str) -> None:
    code = (f"import io, sys\ns = sys.{stream}\n"
            "(s.writable(), s.readable(), s.isatty(), isinstance(s, io.TextIOBase), s.write('ab'))")
    data = api.run(code)
    assert data["result"] == {"text/plain": "(True, False, False, True, 2)"}
    assert data[stream] == "ab"


def test_writelines_and_print_to_a_stream(api: ApiClient) -> None:
    data = api.run("import sys\nsys.stdout.writelines(['a\\n', 'b\\n'])\nprint('c', file=sys.stderr)")
    assert data["stdout"] == "a\nb\n" and data["stderr"] == "c\n"
