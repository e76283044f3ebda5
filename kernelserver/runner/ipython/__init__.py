"""IPython syntax in a namespace: magics, !commands, ?help, In/Out and display ids, on our own run.

kernelserver keeps running the cell (compile under ``<cell-N>``, its own event loop for top-level
await, its output streams, its interrupts, ``format_error``); the shell made here adds what IPython
adds: ``transform`` rewrites ``%magic``, ``%%cell``, ``!cmd``, ``x = !cmd`` and ``obj?`` into plain
Python calling ``get_ipython()``, and the shell behind it (an ``InteractiveShell``, one per process)
runs the magics, keeps ``In``/``Out``/``_``/``__``/``___``/``_N`` under the server's
execution_count and publishes IPython's displays through kernelserver's callbacks. IPython is
imported only by ``make_shell``/``transform``/``preload``: a namespace without it pays nothing.
``preload()`` in the fork server imports IPython and builds a shell there, inert; each worker's
``make_shell`` then binds that copy to its namespace (~1 ms instead of ~15 ms for a new one).

The callbacks a shell is made with:

``on_display(bundle, *, display_id=None, update=False, metadata=None)``
    bundle is a MIME bundle (str keys; text cut and binary base64-encoded by ``bound_bundle``, as
    for the Executor's displays). A plain ``display(x)`` calls ``on_display(bundle)`` alone, so a
    one-argument callback keeps working; ``display(x, display_id=True)`` adds ``display_id=<id>``
    (Jupyter's transient display_id); ``handle.update(y)`` / ``update_display`` adds
    ``display_id=<id>, update=True`` (Jupyter's update_display_data: replace every output with that
    id); metadata (image sizes...) is passed only when IPython gives some.
``on_clear(wait)``
    ``clear_output(wait=...)``: Jupyter's clear_output; with wait, clear when the next output comes.

``Executor(syntax="ipython")`` runs each cell so: ``code = transform(source, shell)``;
``shell.begin_cell(source, code, n)``; run ``code`` under ``<cell-n>``; ``shell.store_result(value)``
for a non-None last value (False: a trailing ``;`` hides it); ``shell.end_cell(error)``.

The modules: ``syntax`` the pre-check and transform (no IPython), ``commands`` the subprocesses of
``!cmd`` and ``%%bash`` (no IPython), ``frames`` the traceback cut; ``shell``, ``displays`` and
``magics`` import IPython and are imported only once a shell is made.
"""

from __future__ import annotations

import atexit
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from .syntax import INSTALL_HINT, IPythonSyntaxError, available, transform, uses_ipython_syntax

if TYPE_CHECKING:
    from .shell import ZMQInteractiveShell

__all__ = ["INSTALL_HINT", "MPL_BACKEND", "ClearSink", "DisplaySink", "IPythonSyntaxError", "Shell",
           "available", "make_shell", "preload", "transform", "uses_ipython_syntax"]

# The backend the worker selects (MPLBACKEND): runner/mpl_backend.py, whatever the package is named.
MPL_BACKEND = f"module://{__name__.rpartition('.')[0]}.mpl_backend"
# Loaded by IPython only when a cell first uses them (%time, %timeit, %cd, %pip, %matplotlib):
# preload() imports them too, so a worker's first such cell does not pay for the import.
_MAGIC_MODULES = ("IPython.core.magics.execution", "IPython.core.magics.osm",
                  "IPython.core.magics.packaging", "IPython.core.magics.pylab", "timeit")


class DisplaySink(Protocol):
    """on_display: a MIME bundle, with a display id and whether it replaces that display."""

    def __call__(self, bundle: dict[str, Any], *, display_id: str | None = None,
                 update: bool = False, metadata: dict[str, Any] | None = None) -> None: ...


ClearSink = Callable[[bool], None]  # on_clear(wait)


class Shell(Protocol):
    """What the Executor and the worker call on a namespace's shell."""

    user_ns_hidden: dict[str, Any]

    def transform(self, source: str) -> str:
        """The cell as plain Python (unchanged when it has no IPython syntax)."""
        ...

    def begin_cell(self, source: str, code: str, execution_count: int) -> None:
        """Before the cell runs: In[n], the execution count, pre_execute/pre_run_cell events."""
        ...

    def store_result(self, value: Any) -> bool:
        """Out[n], _, __, ___, _n for the cell's last value; False when a trailing ';' hides it."""
        ...

    def end_cell(self, error: BaseException | None = None) -> None:
        """After the cell: post_execute/post_run_cell events (autoreload, matplotlib...)."""
        ...

    def is_hidden(self, name: str) -> bool:
        """True for what the shell put in the namespace (In, Out, get_ipython...), as %who hides."""
        ...

    def close(self) -> None:
        """Unregister the shell from its process (get_ipython() is None again)."""
        ...


# The shell preload() built, inert, for the next make_shell of this process or of any process
# forked from it (each takes its own copy once): a worker then binds it to its namespace in ~1 ms
# where building one takes ~15 ms.
_TEMPLATE: list[ZMQInteractiveShell] = []


def preload() -> None:
    """Import IPython and build a shell (in the fork server), so each worker's make_shell is cheap.

    The shell is inert until a make_shell takes it: get_ipython() stays None and builtins stay
    as they were in this process.
    """
    if not available() or _TEMPLATE:
        return
    _TEMPLATE.append(_build())
    for name in _MAGIC_MODULES:
        importlib.import_module(name)


def _build() -> ZMQInteractiveShell:
    """A shell bound to no namespace, with none of its process-wide effects left in place."""
    from traitlets.config import Config

    from .procstate import process_state, restore_process_state
    from .shell import ZMQInteractiveShell

    config = Config()
    # No SQLite file and no saving thread: kernelserver keeps a namespace's history itself.
    config.HistoryManager.enabled = False
    # Tracebacks and ?-help are plain text for every client (ANSI colours would show as escapes).
    config.InteractiveShell.colors = "nocolor"
    before = process_state()
    try:
        shell = ZMQInteractiveShell(config=config, user_ns={})  # not .instance(): activate() does
        atexit.unregister(shell.atexit_operations)
    finally:
        restore_process_state(before)
    return shell


def make_shell(namespace: dict[str, Any], on_display: DisplaySink, on_clear: ClearSink | None = None,
               *, repr_limit: Callable[[], int] | None = None) -> Shell:
    """The IPython shell of a namespace (one per process); ImportError without IPython.

    repr_limit gives the limit a display is cut to (the Executor's, which a cell may change).
    """
    if not available():
        raise ImportError(INSTALL_HINT)
    from IPython.core.interactiveshell import InteractiveShell

    if InteractiveShell.initialized():
        # IPython's display(), page() and library code reach the one instance of the process.
        raise RuntimeError("this process has an IPython shell already; one per process")
    shell = _TEMPLATE.pop() if _TEMPLATE else _build()
    shell.kernelserver_activate(namespace, on_display, on_clear,
                                repr_limit or (lambda: 1024 * 1024))
    return cast(Shell, shell)
