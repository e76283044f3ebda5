"""Completion, inspection and is-complete for a namespace (Jupyter's complete/inspect/is_complete).

Worker side, and careful: it runs on the query thread while a cell may run, so it never calls
user code it does not have to. Names are looked up by attribute access only (no calls), as
rlcompleter does; a property that misbehaves is the one risk, as in every Python REPL. The
attributes offered are typed without even that (getattr_static). With an IPython shell in the
namespace (IPython syntax), magics complete and inspect too; of IPython, only the module of a
magic not loaded yet may be imported here (for its docstring).
"""

from __future__ import annotations

import builtins
import codeop
import importlib
import inspect
import io
import keyword
import re
import sys
import tokenize
import warnings
from typing import Any

_MISSING = object()
MAX_MATCHES = 500
MAX_DOC = 20_000
TYPES_KEY = "_jupyter_types_experimental"  # ipykernel's: each match's type, for the icons
_DOTTED = re.compile(r"[^\W\d]\w*(?:\.(?:[^\W\d]\w*)?)*\Z")
# A magic's % begins a line, or the right side of an assignment (x = %time f()); elsewhere a %
# is the modulo operator.
_MAGIC_ESCAPE = re.compile(r"(?:^|[\n=])[ \t]*(%%?)\Z")
_ARGUMENT = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
Match = tuple[str, str, str]  # text, type, signature


def _token_before(code: str, cursor_pos: int) -> tuple[str, int]:
    """The dotted name that ends at the cursor, and where it starts."""
    found = _DOTTED.search(code[:cursor_pos])
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


def _tokens(code: str) -> list[tokenize.TokenInfo]:
    """code's tokens, up to where it stops being Python (an open call, a !command...)."""
    found: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            found.append(token)
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def _shell(namespace: dict[str, Any]) -> Any:
    """The namespace's IPython shell, if it has one: the owner of its get_ipython (not called)."""
    module = sys.modules.get("IPython.core.interactiveshell")
    if module is None:
        return None
    shell = getattr(namespace.get("get_ipython"), "__self__", None)
    return shell if isinstance(shell, module.InteractiveShell) else None


def _magics(shell: Any) -> dict[str, dict[str, Any]]:
    """The shell's line and cell magics by name."""
    try:
        table = shell.magics_manager.lsmagic()
        return {kind: dict(table.get(kind, {})) for kind in ("line", "cell")}
    except Exception:  # a cell registering magics meanwhile
        return {"line": {}, "cell": {}}


def _magic_escape(code: str, start: int) -> str:
    """'%' or '%%' when the name that starts at start is a magic's, else ''."""
    found = _MAGIC_ESCAPE.search(code[:start])
    return found.group(1) if found else ""


def _kind(obj: Any) -> str:
    """A live object's type, in the words of ipykernel's completions (Jedi's)."""
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    return "function" if inspect.isroutine(obj) else "instance"


def _signature(obj: Any, bound: bool = False) -> str:
    """A callable's signature, without its first parameter when bound; '' if it has none."""
    try:
        signature = inspect.signature(obj)
    except Exception:
        return ""
    if bound:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    return str(signature)


def _typed(obj: Any) -> tuple[str, str]:
    kind = _kind(obj)
    return kind, _signature(obj) if kind == "function" else ""


def _member(obj: Any, name: str) -> tuple[str, str]:
    """An attribute's type and signature, found without running it (no property, no __getattr__)."""
    try:
        value = inspect.getattr_static(obj, name)
        if isinstance(value, (staticmethod, classmethod)):
            return "function", _signature(value.__func__, isinstance(value, classmethod))
        if not inspect.isroutine(value):
            return ("instance", "") if isinstance(value, property) else _typed(value)
        # A function found on the class of an instance is a method of it: no self.
        on_class = not (inspect.isclass(obj) or inspect.ismodule(obj)) and \
            inspect.getattr_static(type(obj), name, _MISSING) is value
        return "function", _signature(value, on_class and (inspect.isfunction(value)
                                                           or inspect.ismethoddescriptor(value)))
    except Exception:  # an attribute dir() lists and the object does not have, a strange class
        return "instance", ""


def _attribute_matches(namespace: dict[str, Any], token: str) -> list[Match]:
    base, _, prefix = token.rpartition(".")
    obj = _lookup(namespace, base)
    if obj is _MISSING:
        return []
    try:
        names = [n for n in dir(obj) if isinstance(n, str) and n.startswith(prefix)]
    except Exception:
        return []
    shown = sorted(n for n in names if prefix.startswith("_") or not n.startswith("_"))
    return [(f"{base}.{n}", *_member(obj, n)) for n in shown[:MAX_MATCHES]]


def _name_matches(namespace: dict[str, Any], prefix: str) -> list[Match]:
    names = set(namespace) | set(dir(builtins)) | set(keyword.kwlist)
    shown = sorted(n for n in names if isinstance(n, str) and n.startswith(prefix)
                   and (prefix.startswith("_") or not n.startswith("_")))[:MAX_MATCHES]
    found: list[Match] = []
    for name in shown:
        if keyword.iskeyword(name):
            found.append((name, "keyword", ""))
            continue
        obj = namespace.get(name, _MISSING)
        found.append((name, *_typed(getattr(builtins, name) if obj is _MISSING else obj)))
    return found


def _open_call(head: str) -> str:
    """The dotted name of the call whose next argument starts at the end of head, else ''."""
    names: list[str] = []
    opened: list[str] = []  # per open bracket: the name called, '' for none
    last = None
    for token in _tokens(head):
        if token.type == tokenize.NAME:
            if last is not None and last.string == "." and names:
                names[-1] += "." + token.string
            else:
                names.append(token.string)
        elif token.type == tokenize.OP and token.string in "([{":
            called = token.string == "(" and last is not None and last.type == tokenize.NAME
            opened.append(names[-1] if called and names else "")
        elif token.type == tokenize.OP and token.string in ")]}" and opened:
            opened.pop()
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER):
            last = token
    at_argument = last is not None and last.type == tokenize.OP and last.string in "(,"
    return opened[-1] if opened and at_argument else ""


def _param_matches(namespace: dict[str, Any], head: str, prefix: str) -> list[Match]:
    """name= for the parameters of the call whose argument starts at the end of head."""
    call = _open_call(head)
    func = _lookup(namespace, call) if call else _MISSING
    if func is _MISSING or not callable(func):
        return []
    try:
        parameters = inspect.signature(func).parameters.values()
    except Exception:
        return []
    return [(f"{p.name}=", "param", "") for p in parameters
            if p.kind in _ARGUMENT and p.name.startswith(prefix)]


def complete(namespace: dict[str, Any], code: str, cursor_pos: int) -> dict[str, Any]:
    """Jupyter's complete_reply content for the name before the cursor, each match typed."""
    cursor_pos = max(0, min(cursor_pos, len(code)))
    token, start = _token_before(code, cursor_pos)
    shell = _shell(namespace)
    escape = _magic_escape(code, start) if shell is not None and "." not in token else ""
    if escape:
        start -= len(escape)
        magics = _magics(shell)
        names = [f"%%{n}" for n in magics["cell"] if n.startswith(token)]
        if escape == "%":  # %% asks for a cell magic
            names += [f"%{n}" for n in magics["line"] if n.startswith(token)]
        matches = [(n, "magic", "") for n in sorted(names, key=lambda n: (n.lstrip("%"), len(n)))]
    elif "." in token:
        matches = _attribute_matches(namespace, token)
    else:
        matches = _param_matches(namespace, code[:start], token) + _name_matches(namespace, token)
    matches = matches[:MAX_MATCHES]
    types = [{"start": start, "end": cursor_pos, "text": text, "type": kind, "signature": signature}
             for text, kind, signature in matches]
    return {"status": "ok", "matches": [text for text, _, _ in matches], "cursor_start": start,
            "cursor_end": cursor_pos, "metadata": {TYPES_KEY: types}}


def _token_at(code: str, cursor_pos: int) -> tuple[str, int]:
    """The dotted name to inspect at the cursor, and where it starts: the name under it, else
    the callable of the call it is in (`len(` and `len(x, ` give len), as IPython's
    token_at_cursor picks it."""
    line_starts = [0]
    for line in code.split("\n"):
        line_starts.append(line_starts[-1] + len(line) + 1)
    tokens = _tokens(code)
    names: list[tuple[str, int]] = []
    calls: list[tuple[str, int]] = []
    closing: tuple[str, int] | None = None
    outer: tuple[str, int] | None = None
    on_name = hit = False
    for i, token in enumerate(tokens):
        begin = line_starts[token.start[0] - 1] + token.start[1]
        closing = None
        if begin > cursor_pos:
            break
        on_name = token.type == tokenize.NAME and not keyword.iskeyword(token.string)
        if on_name:
            before = tokens[i - 1] if i else None
            if names and before is not None and before.type == tokenize.OP and before.string == ".":
                names[-1] = (f"{names[-1][0]}.{token.string}", names[-1][1])
            else:
                names.append((token.string, begin))
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            if after is not None and after.type == tokenize.OP and after.string == "=":
                names.pop()  # not the left side of an assignment
                on_name = False
            if not calls:
                outer = names[-1] if names else None
        elif token.type == tokenize.OP and token.string == "(" and names:
            calls.append(names[-1])
        elif token.type == tokenize.OP and token.string == ")" and calls:
            closing = calls.pop()
        if line_starts[token.end[0] - 1] + token.end[1] > cursor_pos:
            hit = True
            break
    chosen = (names[-1] if on_name and hit else closing or (calls[-1] if calls else None) or outer
              or (names[-1] if names else None))
    return chosen if chosen is not None else ("", cursor_pos)


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


def _magic_function(magic: Any, kind: str, name: str) -> Any:
    """The function behind a magic; for one IPython has not loaded yet, the method of its class
    (from IPython's own modules, or one imported already), else None."""
    if type(magic).__name__ != "LazyMagic":
        return magic
    # Only what is in its __dict__: any other attribute of the stand-in loads the magic into
    # the shell, on this thread, while a cell may run.
    module, _, owner = str(vars(magic).get("spec", "")).partition(":")
    if owner and module.startswith("IPython.") and module not in sys.modules:
        try:
            importlib.import_module(module)  # no user code: the fork server preloads most
        except Exception:
            return None
    cls = getattr(sys.modules.get(module), owner, None) if owner else None
    method = getattr(cls, "magics", {}).get(kind, {}).get(name)
    return getattr(cls, method, None) if isinstance(method, str) else None


def _describe_magic(shell: Any, name: str, escape: str) -> str | None:
    """A magic's kind and docstring (a line magic before a cell one, unless %% asks); None if no
    magic has the name."""
    magics = _magics(shell)
    for kind in ("cell",) if escape == "%%" else ("line", "cell"):
        magic = magics[kind].get(name, None)
        if magic is None:
            continue
        lines = [f"Type:      {kind} magic", f"Name:      {'%%' if kind == 'cell' else '%'}{name}"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            function = _magic_function(magic, kind, name)
            doc = inspect.getdoc(function) if function is not None else None
        lines.append(f"Docstring:\n{doc[:MAX_DOC]}" if doc else
                     "Docstring: <none, or not loaded until the magic is first used>")
        return "\n".join(lines)
    return None


def inspect_name(namespace: dict[str, Any], code: str, cursor_pos: int,
                 detail_level: int = 0) -> dict[str, Any]:
    """Jupyter's inspect_reply content: type, signature, value and docstring of the name at the
    cursor (or of the callable whose parentheses it is in), or a magic's docstring."""
    name, start = _token_at(code, max(0, min(cursor_pos, len(code))))
    shell = _shell(namespace)
    escape = _magic_escape(code, start) if shell is not None else ""
    text = None
    if name and not escape:
        obj = _lookup(namespace, name)
        text = None if obj is _MISSING else _describe(obj, name, detail_level)
    if text is None and name and shell is not None and "." not in name:
        text = _describe_magic(shell, name, escape)  # as IPython: `timeit?` finds %timeit too
    if text is None:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}


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
