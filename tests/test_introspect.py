"""Completion, inspection and is_complete without a server (the worker's query side)."""

from __future__ import annotations

import pytest

from kernelserver.runner.introspect import complete, inspect_name, is_complete


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
