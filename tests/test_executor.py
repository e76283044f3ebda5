"""The cell executor on its own: no server, no capture."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from kernelserver.execution import OutputBuffer
from kernelserver.runner.executor import Executor


@pytest.fixture
def ex() -> Iterator[Executor]:
    executor = Executor()
    yield executor
    executor.close()


def test_last_expression_is_the_result(ex: Executor) -> None:
    outcome = ex.run("x = 20\nx * 2 + 2", 1)
    assert outcome.status == "ok"
    assert outcome.result == {"text/plain": "42"}


@pytest.mark.parametrize("code", ["x = 1", "None", "print('a')", "def f():\n    return 1\n"],
                         ids=["assignment", "none", "print-returns-none", "def"])
def test_no_result_for_statements_and_none(ex: Executor, code: str) -> None:
    assert ex.run(code, 1).result is None


def test_whole_cell_is_one_unit(ex: Executor) -> None:
    outcome = ex.run("total = 0\nfor i in range(5):\n    total += i\n\ndef g():\n    return total\ng()", 1)
    assert outcome.result == {"text/plain": "10"}


def test_function_defined_in_one_cell_called_in_the_next(ex: Executor) -> None:
    ex.run("def square(v):\n    return v * v", 1)
    assert ex.run("square(7)", 2).result == {"text/plain": "49"}


def test_comprehensions_and_closures_see_namespace_variables(ex: Executor) -> None:
    ex.run("k = 3", 1)
    outcome = ex.run("[k * i for i in range(3)], (lambda: k)(), {i: k for i in range(1)}", 2)
    assert outcome.result == {"text/plain": "([0, 3, 6], 3, {0: 3})"}


def test_traceback_shows_cell_source_and_no_kernelserver_frames(ex: Executor) -> None:
    ex.run("def inner(x):\n    return 1 / x\n", 1)
    outcome = ex.run("a = 5\ninner(0)", 2)
    assert outcome.status == "error"
    assert outcome.error is not None
    tb = outcome.error.traceback
    assert outcome.error.ename == "ZeroDivisionError"
    assert 'File "<cell-2>", line 2' in tb and "inner(0)" in tb
    assert 'File "<cell-1>", line 2, in inner' in tb and "return 1 / x" in tb
    assert "kernelserver" not in tb and "executor.py" not in tb


def test_syntax_error_has_line_and_caret(ex: Executor) -> None:
    outcome = ex.run("x = 1\ny = (2 +\n", 7)
    assert outcome.status == "error" and outcome.error is not None
    assert outcome.error.ename == "SyntaxError"
    assert '<cell-7>", line 2' in outcome.error.traceback
    assert "^" in outcome.error.traceback
    assert "ast.py" not in outcome.error.traceback


def test_sys_exit_is_an_error_result(ex: Executor) -> None:
    outcome = ex.run("import sys\nsys.exit(3)", 1)
    assert outcome.status == "error" and outcome.error is not None
    assert outcome.error.ename == "SystemExit" and outcome.error.evalue == "3"
    assert ex.run("1 + 1", 2).result == {"text/plain": "2"}


def test_input_fails_at_once_with_a_clear_message(ex: Executor) -> None:
    outcome = ex.run("input('name? ')", 1)
    assert outcome.error is not None
    assert outcome.error.ename == "StdinNotImplementedError"
    assert "cannot read from stdin" in outcome.error.evalue


def test_keyboard_interrupt_is_interrupted(ex: Executor) -> None:
    assert ex.run("raise KeyboardInterrupt", 1).status == "interrupted"


def test_unicode_result(ex: Executor) -> None:
    assert ex.run("'héllo ✓ 日本 🐍'", 1).result == {"text/plain": "'héllo ✓ 日本 🐍'"}


def test_top_level_await_returns_value(ex: Executor) -> None:
    outcome = ex.run("import asyncio\nawait asyncio.sleep(0)\n6 * 7", 1)
    assert outcome.result == {"text/plain": "42"}


def test_event_loop_kept_across_cells(ex: Executor) -> None:
    ex.run("import asyncio\ntask = asyncio.ensure_future(asyncio.sleep(30))", 1)
    assert ex.run("await asyncio.sleep(0)\ntask.done()", 2).result == {"text/plain": "False"}
    ex.run("task.cancel()", 3)


def test_underscore_holds_last_result(ex: Executor) -> None:
    ex.run("40 + 2", 1)
    assert ex.run("_", 2).result == {"text/plain": "42"}


def test_variables_are_listed_safely(ex: Executor) -> None:
    ex.run("import os\nclass Bad:\n    def __repr__(self):\n        raise ValueError('no')\n"
           "b = Bad()\nn = 5\n_hidden = 1", 1)
    found = {v["name"]: v for v in ex.variables()}
    assert found["n"] == {"name": "n", "type": "int", "repr": "5"}
    assert "repr failed" in found["b"]["repr"]
    assert "os" not in found and "_hidden" not in found


def test_output_buffer_keeps_head_and_tail_with_marker() -> None:
    buffer = OutputBuffer(cap=100)
    for i in range(1000):
        buffer.write(f"{i:04d}\n")
    text = buffer.getvalue()
    assert buffer.truncated
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert "4900 characters dropped" in text
    assert buffer.total == 5000


def test_output_buffer_under_cap_is_exact() -> None:
    buffer = OutputBuffer(cap=1000)
    buffer.write("a" * 10)
    buffer.write("b" * 10)
    assert buffer.getvalue() == "a" * 10 + "b" * 10 and not buffer.truncated


def test_output_buffer_keeps_exactly_the_first_and_last_half_whatever_the_writes() -> None:
    rng = random.Random(7)
    for _ in range(300):
        cap = rng.choice([0, 1, 2, 11, 100, 5000, 300_000])
        buffer = OutputBuffer(cap)
        written = []
        for _ in range(rng.randint(0, 40)):
            # Mostly reads-sized pieces, now and then one far larger than the cap.
            size = rng.choice([1, 7, 4095, 65536, 200_000])
            written.append(chr(ord("a") + len(written) % 26) * size)
            buffer.write(written[-1])
        full = "".join(written)
        tail = cap // 2
        if len(full) <= cap:
            assert buffer.getvalue() == full and not buffer.truncated
            continue
        text = str(buffer.take())
        head, _, rest = text.partition("\n[kernelserver: output truncated: ")
        assert head == full[:cap - tail] and rest.endswith("kept]\n" + full[len(full) - tail:])
        assert buffer.dropped == len(full) - cap and buffer.total == len(full)
