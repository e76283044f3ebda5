"""Completion, inspection and is_complete without a server (the worker's query side)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from kernelserver.runner.executor import Executor
from kernelserver.runner.introspect import TYPES_KEY, complete, inspect_name, is_complete


class Exploding:
    """An object whose repr raises: inspection must still answer."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


NAMESPACE = {"alpha_one": 1, "alpha_two": "two", "obj": Exploding(), "_private": 0}


@pytest.mark.parametrize(("code", "expected"), [
    ("alph", ["alpha_one", "alpha_two"]),
    ("print(alpha_t", ["alpha_two"]),
    ("alpha_two.upp", ["alpha_two.upper"]),
    ("lambd", ["lambda"]),
    ("_priv", ["_private"]),
    ("nothing_like_this", []),
], ids=["prefix", "inside-call", "attribute", "keyword", "private-when-asked", "none"])
def test_completions(code: str, expected: list[str]) -> None:
    reply = complete(NAMESPACE, code, len(code))
    assert reply["status"] == "ok" and reply["matches"] == expected
    assert reply["cursor_end"] == len(code)


def test_private_names_are_hidden_unless_asked_for() -> None:
    assert "_private" not in complete(NAMESPACE, "", 0)["matches"]


def test_inspection_survives_a_broken_repr() -> None:
    reply = inspect_name(NAMESPACE, "obj", 1)
    assert reply["found"] and "<repr failed>" in reply["data"]["text/plain"]
    assert "An object whose repr raises" in reply["data"]["text/plain"]


@pytest.mark.parametrize(("code", "cursor"), [
    ("len(", 4), ("len(x, ", 7), ("len(alpha_one)", 14), ("print(len(alpha_one), ", 22), ("len", 1),
], ids=["open-call", "after-an-argument", "after-the-call", "inner-call-closed", "on-the-name"])
def test_inspection_finds_the_callable_of_the_call_the_cursor_is_in(code: str, cursor: int) -> None:
    reply = inspect_name(NAMESPACE, code, cursor)
    expected = "print(" if code.startswith("print") else "len(obj"
    assert reply["found"] and f"Signature: {expected}" in reply["data"]["text/plain"]


class Gadget:
    """Attributes of every kind: a property that must not run while it is typed."""

    runs = 0

    @property
    def reading(self) -> int:
        Gadget.runs += 1
        return 1

    def turn(self, degrees: int, fast: bool = False) -> None:
        """Turn it."""

    @classmethod
    def make(cls, size: int) -> Gadget:
        return cls()


def tune(pitch: float, *, octave: int = 4) -> None:
    """A function with a keyword-only parameter."""


TYPED = {"os": os, "Gadget": Gadget, "gadget": Gadget(), "tune": tune, "level": 3}


def typed(code: str, cursor: int | None = None) -> dict[str, tuple[str, str]]:
    """Each match's type and signature, checked against the reply's matches and cursor."""
    reply = complete(TYPED, code, len(code) if cursor is None else cursor)
    types = reply["metadata"][TYPES_KEY]
    assert [t["text"] for t in types] == reply["matches"]
    assert {(t["start"], t["end"]) for t in types} <= {(reply["cursor_start"], reply["cursor_end"])}
    return {t["text"]: (t["type"], t["signature"]) for t in types}


def test_each_match_has_its_type_as_ipykernel_gives_it() -> None:
    assert typed("o")["os"] == ("module", "")
    assert typed("o")["or"] == ("keyword", "")
    assert typed("Gad")["Gadget"] == ("class", "")
    assert typed("tu")["tune"] == ("function", "(pitch: 'float', *, octave: 'int' = 4) -> 'None'")
    assert typed("lev")["level"] == ("instance", "")
    assert typed("os.pa")["os.path"] == ("module", "")
    found = typed("gadget.")
    # Read from an instance, a method has no self; a property is typed without running it.
    assert found["gadget.turn"] == ("function", "(degrees: 'int', fast: 'bool' = False) -> 'None'")
    assert found["gadget.make"] == ("function", "(size: 'int') -> 'Gadget'")
    assert found["gadget.reading"] == ("instance", "") and Gadget.runs == 0
    assert typed("Gadget.tu")["Gadget.turn"][1].startswith("(self, degrees")


def test_the_parameters_of_the_open_call_complete_as_keywords() -> None:
    found = typed("tune(1, oct")
    assert found["octave="] == ("param", "") and list(found)[0] == "octave="  # first, as Jedi's
    assert list(typed("tune("))[:2] == ["pitch=", "octave="]
    assert "octave=" not in typed("tune(x + oct")  # inside an expression, not at an argument
    assert "octave=" not in typed("tune(pitch=oct")


def test_without_an_ipython_shell_percent_completes_nothing_magic() -> None:
    assert complete(NAMESPACE, "%ti", 3)["matches"] == []


@pytest.fixture
def ipython_namespace() -> Iterator[dict[str, Any]]:
    """The namespace of an Executor with IPython syntax, as a worker holds it."""
    pytest.importorskip("IPython")
    executor = Executor(on_display=lambda bundle, **extra: None, syntax="ipython")
    try:
        yield executor.namespace
    finally:
        executor.close()


@pytest.mark.parametrize(("code", "expected", "start"), [
    ("%ti", ["%time", "%%time", "%timeit", "%%timeit"], 0),
    ("%%ti", ["%%time", "%%timeit"], 0),
    ("x = %tim", ["%time", "%%time", "%timeit", "%%timeit"], 4),
    ("3 %ti", [], 3),
], ids=["line-or-cell", "cell-only", "assigned", "modulo"])
def test_magics_complete_in_an_ipython_namespace(ipython_namespace: dict[str, Any], code: str,
                                                 expected: list[str], start: int) -> None:
    reply = complete(ipython_namespace, code, len(code))
    assert reply["matches"] == expected and reply["cursor_start"] == start
    assert {t["type"] for t in reply["metadata"][TYPES_KEY]} <= {"magic"}


@pytest.mark.parametrize(("code", "cursor", "shown"), [
    ("%timeit", 3, "%timeit"), ("%%timeit", 4, "%%timeit"), ("timeit", 2, "%timeit"),
], ids=["line", "cell", "without-percent"])
def test_inspecting_a_magic_gives_its_docstring(ipython_namespace: dict[str, Any], code: str,
                                                cursor: int, shown: str) -> None:
    reply = inspect_name(ipython_namespace, code, cursor)
    text = reply["data"]["text/plain"]
    assert reply["found"] and f"Name:      {shown}" in text
    assert "Time execution of a Python statement or expression" in text


def test_names_still_win_over_magics(ipython_namespace: dict[str, Any]) -> None:
    ipython_namespace["timeit"] = 5
    assert "Value:     5" in inspect_name(ipython_namespace, "timeit", 2)["data"]["text/plain"]
    assert "Time execution" in inspect_name(ipython_namespace, "%timeit", 2)["data"]["text/plain"]


@pytest.mark.parametrize(("code", "status", "indent"), [
    ("x = 1", "complete", None),
    ("for i in range(3):", "incomplete", "    "),
    ("def f(:", "invalid", None),
    ("if True:\n    x = 1", "incomplete", "    "),
    ("if True:\n    x = 1\n", "complete", None),
    ("s = '''open", "incomplete", ""),
], ids=["statement", "block-opens", "syntax-error", "block-goes-on", "block-ended", "open-string"])
def test_is_complete(code: str, status: str, indent: str | None) -> None:
    reply = is_complete(code)
    assert reply["status"] == status
    if indent is not None:
        assert reply["indent"] == indent
