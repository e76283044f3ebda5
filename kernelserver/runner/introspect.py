"""Completion, inspection and is-complete for a namespace (Jupyter's complete/inspect/is_complete).

Worker side, and careful: it runs on the query thread while a cell may run, so it never calls
user code it does not have to. Names are looked up by attribute access only (no calls), as
rlcompleter does; a property that misbehaves is the one risk, as in every Python REPL.
"""

from __future__ import annotations

import builtins
import codeop
import inspect
import keyword
import re
import warnings
from typing import Any

_NAME_AT = re.compile(r"[A-Za-z_][\w.]*")
_MISSING = object()
MAX_MATCHES = 500
MAX_DOC = 20_000


def _token_before(code: str, cursor_pos: int) -> tuple[str, int]:
    """The dotted name that ends at the cursor, and where it starts."""
    head = code[:cursor_pos]
    found = re.search(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]?\w*)*$", head)
    if found is None:
        return "", cursor_pos
    return found.group(0), found.start()


def _lookup(namespace: dict[str, Any], dotted: str) -> Any:
    """The object a dotted name refers to, by attribute access only; _MISSING if there is none."""
    parts = dotted.split(".")
    obj = namespace.get(parts[0], _MISSING)
    if obj is _MISSING:
        obj = getattr(builtins, parts[0], _MISSING)
    for part in parts[1:]:
        if obj is _MISSING:
            break
        try:
            obj = getattr(obj, part)
        except Exception:
            return _MISSING
    return obj


def complete(namespace: dict[str, Any], code: str, cursor_pos: int) -> dict[str, Any]:
    """Jupyter's complete_reply content for the name before the cursor."""
    cursor_pos = max(0, min(cursor_pos, len(code)))
    token, start = _token_before(code, cursor_pos)
    matches: list[str] = []
    if "." in token:
        base, _, prefix = token.rpartition(".")
        obj = _lookup(namespace, base)
        if obj is not _MISSING:
            try:
                names = dir(obj)
            except Exception:
                names = []
            matches = [f"{base}.{n}" for n in names
                       if n.startswith(prefix) and (prefix.startswith("_") or not n.startswith("_"))]
    else:
        candidates = set(namespace) | set(dir(builtins)) | set(keyword.kwlist)
        matches = [n for n in candidates
                   if n.startswith(token) and (token.startswith("_") or not n.startswith("_"))]
    matches = sorted(matches)[:MAX_MATCHES]
    return {"status": "ok", "matches": matches, "cursor_start": start, "cursor_end": cursor_pos,
            "metadata": {}}


def _name_at(code: str, cursor_pos: int) -> str:
    """The dotted name under (or just before) the cursor."""
    for found in _NAME_AT.finditer(code):
        if found.start() <= cursor_pos <= found.end():
            return found.group(0).rstrip(".")
    token, _ = _token_before(code, cursor_pos)
    return token.rstrip(".")


def _describe(obj: Any, name: str, detail_level: int) -> str:
    lines = [f"Type:      {type(obj).__name__}"]
    if callable(obj):
        try:
            lines.append(f"Signature: {name}{inspect.signature(obj)}")
        except (TypeError, ValueError):
            pass
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)):
        try:
            shown = repr(obj)
        except Exception:
            shown = "<repr failed>"
        lines.append(f"Value:     {shown[:1000]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = inspect.getdoc(obj)
    if doc:
        lines.append(f"Docstring:\n{doc[:MAX_DOC]}")
    if detail_level > 0:
        try:
            lines.append(f"Source:\n{inspect.getsource(obj)[:MAX_DOC]}")
        except (OSError, TypeError):
            pass
    return "\n".join(lines)


def inspect_name(namespace: dict[str, Any], code: str, cursor_pos: int,
                 detail_level: int = 0) -> dict[str, Any]:
    """Jupyter's inspect_reply content: type, signature, value and docstring of the name at the cursor."""
    name = _name_at(code, max(0, min(cursor_pos, len(code))))
    obj = _lookup(namespace, name) if name else _MISSING
    if obj is _MISSING:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    return {"status": "ok", "found": True, "data": {"text/plain": _describe(obj, name, detail_level)},
            "metadata": {}}


def is_complete(code: str) -> dict[str, Any]:
    """Jupyter's is_complete_reply content: complete, incomplete (with an indent) or invalid."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = codeop.compile_command(code, "<cell>", "exec")
    except (SyntaxError, ValueError, OverflowError):
        return {"status": "invalid"}
    if compiled is None:
        last = code.rstrip("\n").split("\n")[-1] if code.strip() else ""
        indent = last[:len(last) - len(last.lstrip())]
        if last.rstrip().endswith(":"):
            indent += "    "
        return {"status": "incomplete", "indent": indent}
    if code.endswith("\n") or "\n" not in code.strip():
        return {"status": "complete"}
    # A multi-line block without a blank line after it may still grow (as IPython decides).
    last = code.split("\n")[-1]
    if last.startswith((" ", "\t")):
        return {"status": "incomplete", "indent": last[:len(last) - len(last.lstrip())]}
    return {"status": "complete"}
