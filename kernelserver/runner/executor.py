"""One cell: compile as a unit, run in the namespace dict, return the last value or a clean traceback."""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import linecache
import os
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from ..results import ErrorInfo, Outcome
from .display import (
    bound_bundle,
    current_publisher,
    describe_variable,
    figures_open,
    flush_figures,
    is_user_variable,
    mimebundle,
    recording_cuts,
)

if TYPE_CHECKING:
    from .ipython import ClearSink, Shell

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ASYNC_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
VARIABLES_SECONDS = 3.0  # all the reprs of one /env/get: well inside the query channel's timeout


class StdinNotImplementedError(RuntimeError):
    """input() was called; cells cannot read from stdin."""


# Shown as plain `StdinNotImplementedError`, as IPython names it, not with our module path.
StdinNotImplementedError.__module__ = "builtins"


def cell_filename(execution_count: int) -> str:
    """The pseudo-file name a cell is compiled under."""
    return f"<cell-{execution_count}>"


def _is_ours(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _strip_frames(te: traceback.TracebackException, seen: set[int]) -> None:
    # asyncio frames sit between our runner and the cell when a cell awaits; they are noise too.
    if id(te) in seen:
        return
    seen.add(id(te))
    kept = [
        f for f in te.stack
        if not _is_ours(f.filename) and not (f.filename.startswith(os.path.dirname(asyncio.__file__)))
    ]
    te.stack = traceback.StackSummary.from_list(kept)
    for linked in (te.__cause__, te.__context__):
        if linked is not None:
            _strip_frames(linked, seen)
    for sub in getattr(te, "exceptions", None) or ():
        _strip_frames(sub, seen)


def format_error(exc: BaseException, *, with_stack: bool = True) -> ErrorInfo:
    """The error of a cell, its traceback cut to the user's own frames."""
    tb = exc.__traceback__ if with_stack else None
    te = traceback.TracebackException(type(exc), exc, tb, compact=True)
    _strip_frames(te, set())
    text = "".join(te.format())
    try:
        evalue = str(exc)
    except Exception:
        evalue = "<str() of the exception failed>"
    return ErrorInfo(ename=type(exc).__name__, evalue=evalue, traceback=text)


def _no_input(prompt: object = "", password: bool = False) -> str:
    raise StdinNotImplementedError(
        "input() is not available: kernelserver cells cannot read from stdin; "
        "put the value in the code instead (Jupyter clients may allow it with allow_stdin)"
    )


Stdin = Callable[[str, bool], str]  # (prompt, password) -> the line the client typed
Syntax = Literal["python", "ipython"]  # what a cell may be written in


class Executor:
    """A namespace: one globals dict, an execution counter, and an event loop for top-level await.

    syntax="ipython" runs cells through the namespace's IPython shell (kernelserver.runner.ipython):
    magics, !cmd, obj?, In/Out; on_display then also gets display_id/update/metadata keywords,
    on_clear gets clear_output(wait). Without IPython installed such a namespace runs plain Python
    and a cell using IPython syntax fails with an IPythonSyntaxError naming the extra to install.
    """

    def __init__(
        self,
        namespace: dict[str, Any] | None = None,
        *,
        repr_limit: int = 1024 * 1024,
        on_display: Callable[..., None] | None = None,
        syntax: Syntax = "python",
        on_clear: ClearSink | None = None,
        on_value: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if syntax not in ("python", "ipython"):
            raise ValueError(f"syntax must be 'python' or 'ipython', not {syntax!r}")
        self.namespace: dict[str, Any] = namespace if namespace is not None else {}
        self.repr_limit = repr_limit
        # Whether the repr limit cut the last cell's result or a display. Also an attribute, not
        # only in the Outcome, so it is known even when an interrupt escapes the cell.
        self.truncated = False
        self.on_display = on_display or (lambda bundle: None)
        # The cell's value, published before the figures it drew (else it goes with the answer).
        self.on_value = on_value or (lambda bundle: None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stdin: Stdin = _no_input  # the running cell's, when it may ask for input
        user_builtins = dict(vars(builtins))
        user_builtins["input"] = self.input
        user_builtins["display"] = self.display
        self.namespace.setdefault("__name__", "__main__")
        self.namespace["__builtins__"] = user_builtins
        self.syntax: Syntax = syntax
        # The namespace's IPython shell: None under python syntax, and without IPython installed.
        self.shell: Shell | None = None
        self._ipython: types.ModuleType | None = None  # kernelserver.runner.ipython, when wanted
        self._error: BaseException | None = None  # the running cell's error, for the shell's end_cell
        if syntax == "ipython":
            # Imported here, not at the top: a python-syntax namespace loads none of it.
            from . import ipython

            self._ipython = ipython
            if ipython.available():
                # After the builtins above: the shell puts IPython's display() in that dict.
                self.shell = ipython.make_shell(self.namespace, self._publish, on_clear,
                                                repr_limit=lambda: self.repr_limit)

    def _publish(self, bundle: dict[str, Any], **extra: Any) -> None:
        # Through the attribute at each display: on_display may be replaced after the shell is made.
        self.on_display(bundle, **extra)

    def input(self, prompt: object = "") -> str:
        """The input() builtin of a namespace: a line from the client, if the cell allows it."""
        return self._stdin(str(prompt), False)

    def getpass(self, prompt: str = "Password: ", stream: object = None) -> str:
        """getpass.getpass in a namespace: like input(), not echoed by the client."""
        return self._stdin(str(prompt), True)

    def display(self, *objs: Any, **kwargs: Any) -> None:
        """The display() builtin of a namespace: each object's MIME bundle goes out as a display."""
        raw = kwargs.get("raw", False)
        for obj in objs:
            if raw and isinstance(obj, dict):
                self.on_display(bound_bundle(obj, self.repr_limit))
            else:
                self.on_display(mimebundle(obj, self.repr_limit))

    def _compile(self, source: str, filename: str) -> tuple[types.CodeType | None, types.CodeType | None]:
        tree = ast.parse(source, filename=filename, mode="exec")
        last: ast.Expression | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body[-1].value)
            tree.body.pop()
        body = compile(tree, filename, "exec", flags=_ASYNC_FLAGS, dont_inherit=True) if tree.body else None
        value = compile(last, filename, "eval", flags=_ASYNC_FLAGS, dont_inherit=True) if last else None
        return body, value

    def _execute(self, body: types.CodeType | None, value_code: types.CodeType | None) -> Any:
        parts = [c for c in (body, value_code) if c is not None]
        if not any(c.co_flags & inspect.CO_COROUTINE for c in parts):
            if body is not None:
                exec(body, self.namespace)
            return eval(value_code, self.namespace) if value_code is not None else None

        async def whole_cell() -> Any:
            # If any part awaits, the whole cell runs inside the loop, as in IPython, so code
            # before the await sees a running loop too.
            value = None
            for code in parts:
                value = eval(code, self.namespace)
                if code.co_flags & inspect.CO_COROUTINE:
                    value = await value
            return value if value_code is not None else None

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(whole_cell())

    def run(self, source: str, execution_count: int, repr_limit: int | None = None,
            stdin: Stdin | None = None) -> Outcome:
        """Compile and run one cell; user errors come back as data, never raised.

        repr_limit, when given, replaces the namespace's own for this cell only; with stdin,
        input() and getpass ask it for a line, else they fail at once.
        """
        filename = cell_filename(execution_count)
        code = source
        if self._ipython is not None:
            try:
                code = self._ipython.transform(source, self.shell, filename)
            except SyntaxError as exc:  # IPythonSyntaxError: IPython syntax, IPython missing
                return Outcome("error", error=format_error(exc, with_stack=False))
            except Exception as exc:  # noqa: BLE001 - an extension's input transformer failed
                return Outcome("error", error=format_error(exc))
        # The source as typed, as IPython caches it: a traceback shows `!ls`, not get_ipython().
        lines = source.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        # mtime None keeps linecache.checkcache() from evicting the entry.
        linecache.cache[filename] = (len(source), None, lines, filename)
        token = current_publisher.set(self.on_display)
        own_limit = self.repr_limit
        if repr_limit is not None:
            self.repr_limit = repr_limit
        self.truncated = False
        self._stdin = stdin or _no_input
        try:
            with recording_cuts() as cuts:
                try:
                    if self.shell is None:
                        outcome = self._run(code, filename)
                    else:
                        outcome = self._run_in_shell(self.shell, source, code, execution_count,
                                                     filename)
                finally:
                    self.truncated = bool(cuts)
        finally:
            current_publisher.reset(token)
            self.repr_limit = own_limit
            self._stdin = _no_input
            self._error = None  # its traceback holds the cell's frames
        return replace(outcome, truncated=True) if self.truncated else outcome

    def _run_in_shell(self, shell: Shell, source: str, code: str, execution_count: int,
                      filename: str) -> Outcome:
        """_run between the shell's begin_cell and end_cell: In, Out, _ and IPython's events."""
        shell.begin_cell(source, code, execution_count)
        try:
            outcome = self._run(code, filename)
        except BaseException as exc:  # an interrupt landing between _run's own handlers
            shell.end_cell(exc)
            raise
        shell.end_cell(self._error)
        return outcome

    def _run(self, source: str, filename: str) -> Outcome:
        try:
            body, value_code = self._compile(source, filename)
        except (SyntaxError, ValueError) as exc:
            self._error = exc
            # Only the compiler's frames are on the stack here; the caret line says it all.
            return Outcome("error", error=format_error(exc, with_stack=False))
        try:
            value = self._execute(body, value_code)
        except KeyboardInterrupt as exc:
            self._error = exc
            self._flush_figures()
            return Outcome("interrupted", error=format_error(exc))
        except BaseException as exc:  # noqa: BLE001 - SystemExit and all are user errors here
            self._error = exc
            self._flush_figures()
            return Outcome("error", error=format_error(exc))
        if value is None:
            self._flush_figures()
            return Outcome("ok")
        shell = self.shell
        if shell is None:
            self.namespace["_"] = value
        try:
            # The shell keeps Out[n] and rotates _, __, ___ (leaving a `_` the user set alone).
            if shell is not None and not shell.store_result(value):
                self._flush_figures()
                return Outcome("ok")  # a trailing ';' hides the value
            bundle = mimebundle(value, self.repr_limit)
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._flush_figures()
            return Outcome("error", error=format_error(exc))
        if figures_open():
            # As ipykernel: the value (execute_result) before the figures the cell drew, which
            # are published after it. Only then: a plain cell's value travels with its answer.
            self.on_value(bundle)
        self._flush_figures()
        return Outcome("ok", result=bundle)

    def _flush_figures(self) -> None:
        try:
            flush_figures(self.repr_limit)
        except Exception:  # a broken matplotlib must not turn a finished cell into a crash
            pass

    def evaluate(self, expressions: dict[str, str]) -> dict[str, Any]:
        """Jupyter's user_expressions: each expression's MIME bundle, or its error."""
        found: dict[str, Any] = {}
        for name, expression in expressions.items():
            try:
                value = eval(compile(str(expression), "<user_expression>", "eval"), self.namespace)
                found[str(name)] = {"status": "ok", "data": mimebundle(value, self.repr_limit),
                                    "metadata": {}}
            except BaseException as exc:  # noqa: BLE001 - reported, as IPython does
                error = format_error(exc)
                found[str(name)] = {"status": "error", "ename": error.ename, "evalue": error.evalue,
                                    "traceback": error.traceback.splitlines()}
        return found

    def variables(self, repr_limit: int = 200, seconds: float = VARIABLES_SECONDS) -> list[dict[str, Any]]:
        """Name, type and a short safe repr of each user variable, made in about seconds at most."""
        deadline = time.monotonic() + seconds
        # In, Out, get_ipython, exit...: what the shell put there is not the user's, as %who says.
        hidden = self.shell.is_hidden if self.shell is not None else None
        found = []
        for name, value in list(self.namespace.items()):
            if is_user_variable(name, value) and not (hidden is not None and hidden(name)):
                found.append(describe_variable(name, value, repr_limit,
                                               max(0.0, deadline - time.monotonic())))
        return found

    def close(self) -> None:
        """Close the shell and the event loop, and drop the namespace's references."""
        if self.shell is not None:
            self.shell.close()  # get_ipython() is None again: another namespace may make one
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()
        self.namespace.clear()
