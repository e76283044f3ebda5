"""The IPython-syntax pre-check and transform: %magic, !cmd, obj? into plain Python (no IPython here)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Shell

INSTALL_HINT = "IPython syntax needs IPython: pip install 'kernelserver[notebook]'"


class IPythonSyntaxError(SyntaxError):
    """A cell uses IPython syntax (%, !, ?) and IPython is not installed."""


# Shown as plain `IPythonSyntaxError`, as the Executor shows StdinNotImplementedError.
IPythonSyntaxError.__module__ = "builtins"


def available() -> bool:
    """True when IPython can be imported here (checked without importing it)."""
    if "IPython" in sys.modules:
        return sys.modules["IPython"] is not None
    try:
        return importlib.util.find_spec("IPython") is not None
    except (ImportError, ValueError):
        return False


def _escape_at(source: str) -> int:
    """Where the first IPython escape may be, else -1.

    IPython recognises them only at the start of a line (%, %%, !, ?, after indentation), after
    an assignment (x = !cmd, x = %magic) and as a line's last token (obj?, obj??). Each %, ! and ?
    is found with str.find and checked against its own line: a multiline regex anchored with ^
    took 300 us on a 50-line cell, a character-class scan 30 us, this 2 us.
    """
    first = -1
    for char in "%!?":
        at = source.find(char)
        while at >= 0 and (first < 0 or at < first):
            before = source[source.rfind("\n", 0, at) + 1:at]
            if not before.strip():
                first = at
            elif char != "?":
                if before.rstrip().endswith("="):
                    first = at
            else:
                end = source.find("\n", at)
                if not source[at + 1:end if end >= 0 else len(source)].strip() and "#" not in before:
                    first = at
            at = source.find(char, at + 1)
    return first


def uses_ipython_syntax(source: str) -> bool:
    """Whether source may use IPython syntax; False is certain, True may be a false alarm (an
    escape inside a string), which costs the transform and changes nothing."""
    # Three C-speed scans settle almost every plain cell: 0.2 us on `1+1` or 50 lines.
    if "%" not in source and "!" not in source and "?" not in source:
        return False
    return _escape_at(source) >= 0


@functools.lru_cache(maxsize=1)
def _transformer() -> Any:
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def transform_with(manager: Any, source: str) -> str:
    """source through an IPython TransformerManager; as typed when it cannot be transformed."""
    try:
        return str(manager.transform_cell(source))
    except Exception:
        # As IPython does with a cell it cannot transform: run it as typed, and the compiler
        # reports what is wrong with it.
        return source


def transform(source: str, shell: Shell | None = None, filename: str = "<cell>") -> str:
    """The cell as plain Python; IPythonSyntaxError when it needs IPython and IPython is missing."""
    if shell is not None:
        return shell.transform(source)
    if not uses_ipython_syntax(source):
        return source
    if available():
        return transform_with(_transformer(), source)
    try:
        compile(source, filename, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True)
        return source  # a false alarm: `a % b` at a line's start, a '?' ending a string...
    except (SyntaxError, ValueError):
        pass
    at = _escape_at(source)
    lineno = source.count("\n", 0, at) + 1 if at >= 0 else 1
    line = source.splitlines()[lineno - 1] if source.strip() else ""
    raise IPythonSyntaxError(INSTALL_HINT, (filename, lineno, len(line) - len(line.lstrip()) + 1,
                                            line, lineno, len(line) + 1))

