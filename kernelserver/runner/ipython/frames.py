"""IPython's own frames cut from a cell's tracebacks (format_error cuts only the runner's)."""

from __future__ import annotations

import builtins
import os
import sys
import types


def strip_ipython_frames(exc: BaseException) -> BaseException:
    """exc with IPython's own frames (and this package's) cut from its tracebacks, chained ones too."""
    internal = _internal_prefixes()
    seen: set[int] = set()

    def strip(error: BaseException | None) -> None:
        if error is None or id(error) in seen:
            return
        seen.add(id(error))
        kept = []
        tb = error.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if not filename.startswith(internal):
                kept.append(tb)
            tb = tb.tb_next
        rebuilt = None
        for old in reversed(kept):
            rebuilt = types.TracebackType(rebuilt, old.tb_frame, old.tb_lasti, old.tb_lineno)
        error.__traceback__ = rebuilt
        strip(error.__cause__)
        strip(error.__context__)
        group = getattr(builtins, "BaseExceptionGroup", None)
        if group is not None and isinstance(error, group):
            for sub in error.exceptions:
                strip(sub)

    strip(exc)
    return exc


def _internal_prefixes() -> tuple[str, ...]:
    # timeit.py and <magic-timeit> are %timeit's machinery between the cell and the timed code.
    # And this package's (run_line_magic, system...), as format_error would: the exception
    # stands clean on its own, whoever formats it.
    prefixes = ["<decorator-gen-", "<magic-timeit>",
                os.path.dirname(os.path.abspath(__file__)) + os.sep]
    timeit = sys.modules.get("timeit")
    if timeit is not None and timeit.__file__:
        prefixes.append(os.path.abspath(timeit.__file__))
    for name in ("IPython", "traitlets"):
        module = sys.modules.get(name)
        if module is not None and module.__file__:
            prefixes.append(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
    return tuple(prefixes)
