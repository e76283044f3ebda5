"""The namespace's IPython shell: an InteractiveShell that runs magics and keeps In/Out for our cells.

Importing this module imports IPython: the package imports it only in make_shell and preload.
"""

from __future__ import annotations

import atexit
import builtins
import json
import os
import sys
from collections.abc import Callable
from subprocess import CalledProcessError
from typing import TYPE_CHECKING, Any, cast

from IPython.core.error import UsageError
from IPython.core.interactiveshell import (
    ExecutionInfo,
    ExecutionResult,
    InteractiveShell,
    InteractiveShellABC,
)
from IPython.display import display
from IPython.utils.text import LSString, SList
from traitlets import Any as AnyTrait
from traitlets import CBool, Type

from ..display import bound_bundle
from ..executor import format_error
from . import MPL_BACKEND
from .commands import run_command, shell_program, write_to
from .displays import KernelDisplayHook, KernelDisplayPublisher, encoded, figure_png, page
from .frames import strip_ipython_frames
from .magics import CleanUsageError, KernelScriptMagics
from .procstate import process_state, restore_process_state
from .syntax import transform_with, uses_ipython_syntax

if TYPE_CHECKING:
    from . import ClearSink, DisplaySink


class _Exit:
    """exit() and quit() in a namespace with a shell: SystemExit, the cell's error."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Use {self.name}() to end the cell with SystemExit"

    def __call__(self, code: object = None) -> None:
        raise SystemExit(code)


class ZMQInteractiveShell(InteractiveShell):
    """A namespace's IPython shell, named as ipykernel's is: notebook checks by name (rich,
    pandas, the common `get_ipython().__class__.__name__` snippet) see a kernel."""

    displayhook_class = Type(KernelDisplayHook)
    display_pub_class = Type(KernelDisplayPublisher)
    # ipykernel's shell has the trait; ours is None: no comms, so widgets cannot work here.
    # Nor is 'IPKernelApp' put in the config (ipykernel does, for tqdm's older check): tqdm.auto
    # picks its text bar, which our streams carry, not a widget nobody could show.
    kernel = AnyTrait(None, allow_none=True)
    autoindent = CBool(False)  # as ipykernel: no meaning without a terminal

    # -- kernelserver's hooks -------------------------------------------------------------

    def kernelserver_activate(self, namespace: dict[str, Any], on_display: DisplaySink,
                              on_clear: ClearSink | None,
                              repr_limit: Callable[[], int]) -> None:
        """Bind to the namespace and become the process's shell (what __init__ and
        InteractiveShell.instance() do to the process, done here, once)."""
        self._ks_on_display = on_display
        self._ks_on_clear = on_clear
        self._ks_repr_limit = repr_limit
        self._ks_info: Any = None
        self._ks_source = ("", "")  # the running cell's source, as typed and as run
        self._ks_inputs = ("", "", "")  # the raw inputs of the last three cells: _i, _ii, _iii
        self._ks_closed = False
        self._ks_saved = process_state()
        for cls in type(self)._walk_mro():
            cast(Any, cls)._instance = self  # as instance() registers it, for get_ipython()
        # __IPYTHON__ and display in builtins, as init_builtins; the trap __init__ made is kept
        # (a new one is a traitlets Configurable: 1 ms of a namespace's start).
        builtins.__dict__.update(__IPYTHON__=True, display=display)
        self.init_prompts()
        atexit.register(self.atexit_operations)
        main = sys.modules.get("__main__")
        # The worker's __main__ module is the namespace's: IPython then uses it as the user
        # module (pickle finds the cells' classes); else a module of IPython's over the dict.
        user_module = main if main is not None and vars(main) is namespace else None
        self.init_create_namespaces(user_module, None if user_module is not None else namespace)
        self.init_user_ns()
        hook = self.displayhook
        self.user_ns.update({"_": hook._, "__": hook.__, "___": hook.___})
        cast(Any, self.history_manager).dir_hist[:] = [os.getcwd()]
        self.Completer.namespace = self.user_ns
        self.Completer.global_namespace = self.user_global_ns
        # What every cell reads, kept out of traitlets: each trait read is ~1 us, a set with
        # its notification ~10 us, and a plain cell must pay nothing measurable (issue 24).
        self._ks_ns, self._ks_hidden = self.user_ns, self.user_ns_hidden
        self._ks_history = cast(Any, self.history_manager)
        self._ks_hook = cast(Any, self.displayhook)
        self._ks_callbacks = cast(Any, self.events).callbacks
        self._ks_traits = cast(Any, self)._trait_values
        # IPython's own listeners on every cell, done inline by begin_cell/end_cell instead
        # (with them an event is dispatched each cell; without, only an extension's are).
        for event, own in (("pre_execute", self._clear_warning_registry),
                           ("pre_execute", cast(Any, self.display_pub)._on_pre_execute),
                           ("post_execute", cast(Any, self.display_pub)._on_post_execute)):
            if own in self._ks_callbacks[event]:
                cast(Any, self.events).unregister(event, own)
        # get_ipython, a builtin for library code, for the life of the shell: IPython traps
        # it in around each cell (7 us a cell), and a library's thread between cells would
        # not find it.
        self.builtin_trap.__enter__()
        own = self.user_ns.get("__builtins__")
        if isinstance(own, dict):
            # The Executor gives a namespace its own builtins dict: IPython's display()
            # (display_id, _ipython_display_, metadata) and __IPYTHON__ go in there too.
            own["display"] = display
            own["__IPYTHON__"] = True

    def init_display_formatter(self) -> None:
        super().init_display_formatter()
        # A matplotlib Figure given to display() is a PNG, as the Executor's own displays
        # make it (matplotlib_inline registers the same for %matplotlib inline).
        png = cast(Any, self.display_formatter).formatters["image/png"]
        png.for_type_by_name("matplotlib.figure", "Figure", figure_png)

    def init_hooks(self) -> None:
        super().init_hooks()
        self.set_hook("show_in_pager", page, 99)  # ipykernel sets its payload pager here

    def kernelserver_publish(self, data: Any, metadata: Any, transient: Any,
                             update: bool) -> None:
        bundle = bound_bundle({str(k): encoded(v) for k, v in dict(data).items()},
                              self._ks_repr_limit())
        extra: dict[str, Any] = {}
        display_id = (transient or {}).get("display_id")
        if display_id is not None:
            extra["display_id"] = str(display_id)
        if update:
            extra["update"] = True
        if metadata:
            try:
                json.dumps(metadata)
                extra["metadata"] = dict(metadata)
            except (TypeError, ValueError):
                pass  # metadata that cannot travel is left out, the data still goes
        self._ks_on_display(bundle, **extra)

    def kernelserver_clear(self, wait: bool) -> None:
        if self._ks_on_clear is not None:
            self._ks_on_clear(wait)

    def transform(self, source: str) -> str:
        """The cell as plain Python: IPython's transforms, then any an extension added."""
        if not uses_ipython_syntax(source) and not self.input_transformers_post:
            return source
        cell = transform_with(self.input_transformer_manager, source)
        lines = cell.splitlines(keepends=True)
        for step in self.input_transformers_post:
            lines = step(lines)
        return "".join(lines)

    def begin_cell(self, source: str, code: str, execution_count: int) -> None:
        """Before the cell runs: In[n], the execution count, the pre_* events."""
        # IPython counts the running cell as done (run_cell_async), so Out[n] is this cell.
        # Straight into the trait's value: nothing observes it, and notifying costs ~10 us.
        self._ks_traits["execution_count"] = execution_count + 1
        history = self._ks_history
        parsed, raw = history.input_hist_parsed, history.input_hist_raw
        # In[n] is the n-th entry: counts this shell never saw (python-syntax cells, cells
        # of an earlier worker) are empty, so In[3] is still cell 3.
        while len(parsed) < execution_count:
            parsed.append("")
            raw.append("")
        # HistoryManager.store_inputs, less its traits and database cache (10 us a cell):
        # In/_ih the transformed code, _i/_ii/_iii the raw inputs before this one, _iN this.
        source = source.rstrip("\n")
        parsed.append(code.rstrip("\n"))
        raw.append(source)
        last = self._ks_inputs
        names = {"_i": last[0], "_ii": last[1], "_iii": last[2], f"_i{execution_count}": source}
        self._ks_inputs = (source, last[0], last[1])
        self._ks_ns.update(names)
        self._ks_hidden.update(names)
        self._ks_ns.pop("__warningregistry__", None)  # InteractiveShell._clear_warning_registry
        cast(Any, self.display_pub)._in_post_execute = False  # DisplayPublisher._on_pre_execute
        self._ks_source = (source, code)
        self._ks_info = None
        self._trigger("pre_execute")
        if self._ks_callbacks["pre_run_cell"]:
            self._ks_info = ExecutionInfo(source, True, False, True, None, transformed_cell=code)
            self.events.trigger("pre_run_cell", self._ks_info)

    def _trigger(self, event: str, *args: Any) -> None:
        # Most cells have no listener for most events: skip the dispatch (1-2 us each).
        if self._ks_callbacks[event]:
            self.events.trigger(event, *args)

    def store_result(self, value: Any) -> bool:
        """Out[n], _, __, ___, _n for the cell's value; False when a trailing ';' hides it."""
        hook = self._ks_hook
        hook.check_for_underscore()
        history = self._ks_history
        # quiet() tokenizes the cell (20 us): only a cell with a ';' can end in one.
        if value is None or (";" in history.input_hist_parsed[-1] and hook.quiet()):
            return False
        # DisplayHook.update_user_ns, step for step, less its ~20 trait reads (15 us a cell).
        ns, hidden = self._ks_ns, self._ks_hidden
        out = ns.get("_oh", history.output_hist)
        if not hook.cache_size or value is out:
            return True
        if hook.do_full_cache and len(out) >= hook.cache_size:
            hook.cull_cache()
        # _, __ and ___ move only while none of them is the user's own.
        rotate = True
        for name in ("_", "__", "___"):
            if name in ns and ns[name] is not (hidden[name] if name in hidden
                                               else getattr(hook, name)):
                rotate = False
        hook.___, hook.__, hook._ = hook.__, hook._, value
        if rotate and "_" not in builtins.__dict__:  # gettext's _ is left alone
            unders = {"_": hook._, "__": hook.__, "___": hook.___}
            ns.update(unders)
            hidden.update(unders)
        if hook.do_full_cache:
            count = self._ks_traits["execution_count"] - 1
            ns[f"_{count}"] = hidden[f"_{count}"] = out[count] = value
        return True

    def end_cell(self, error: BaseException | None = None) -> None:
        """After the cell: the post_* events (autoreload, matplotlib's draw)."""
        info = self._ks_info or ExecutionInfo(self._ks_source[0], True, False, True, None,
                                              transformed_cell=self._ks_source[1])
        result = ExecutionResult(info)
        result.execution_count = self._ks_traits["execution_count"] - 1
        result.error_in_exec = error
        traits = self._ks_traits  # as for execution_count: set without notifying, nobody observes
        traits["last_execution_succeeded"] = error is None
        traits["last_execution_result"] = result
        cast(Any, self.display_pub)._in_post_execute = True  # DisplayPublisher._on_post_execute
        self._trigger("post_execute")
        self._trigger("post_run_cell", result)

    def is_hidden(self, name: str) -> bool:
        """True for what the shell put in the namespace, as %who leaves it out."""
        hidden = self.user_ns_hidden
        return name in hidden and self.user_ns.get(name) is hidden[name]

    def close(self) -> None:
        """Unregister from the process: get_ipython() is None again, builtins as before."""
        if self._ks_closed:
            return
        self._ks_closed = True
        self.builtin_trap.__exit__(None, None, None)
        atexit.unregister(self.atexit_operations)
        for magics in list(self.magics_manager.registry.values()):
            if isinstance(magics, KernelScriptMagics):  # made if a cell used %%script
                atexit.unregister(magics.kill_bg_processes)
        if self.history_manager is not None:
            self.history_manager.close()
        restore_process_state(self._ks_saved)
        if type(self)._instance is self:
            type(self).clear_instance()

    # -- IPython's, changed ----------------------------------------------------------------

    def init_sys_modules(self) -> None:
        # The worker has put the namespace's module in sys.modules already; elsewhere (tests,
        # the in-process backend) the process's __main__ is not ours to replace.
        pass

    def init_user_ns(self) -> None:
        super().init_user_ns()  # at start and after %reset
        # exit()/quit() end the cell with SystemExit, as in a python-syntax cell (IPython's
        # ExitAutocall asks a terminal to leave, and ipykernel's asks the front end).
        for name in ("exit", "quit"):
            self.user_ns[name] = self.user_ns_hidden[name] = _Exit(name)

    def init_virtualenv(self) -> None:
        pass  # as ipykernel: a namespace runs in the environment it was started in

    def init_magics(self) -> None:
        super().init_magics()
        manager = self.magics_manager
        if not hasattr(manager, "register_lazy"):  # an IPython before lazy magics
            self.register_magics(KernelScriptMagics)
            return
        # IPython declares %%script, %%bash... lazily; made at the first use, as IPython's
        # would be (making one builds 8 argument parsers: 5 ms a shell).
        ours = f"{KernelScriptMagics.__module__}:KernelScriptMagics"
        for kind in ("line", "cell"):
            for name, magic in list(manager.magics[kind].items()):
                if str(getattr(magic, "spec", "")).endswith(":ScriptMagics"):
                    manager.register_lazy(name, ours, kind)

    def enable_gui(self, gui: Any = None) -> None:
        if gui:
            print(f"kernelserver: no GUI event loop runs here; {gui!r} has no effect",
                  file=sys.stderr)

    def enable_matplotlib(self, gui: Any = None) -> tuple[str, str]:
        """%matplotlib: figures are PNG displays through our backend, whatever was asked."""
        import matplotlib

        if gui not in (None, "auto", "inline"):
            print(f"kernelserver: figures are shown inline as PNG displays; "
                  f"%matplotlib {gui} is not available here", file=sys.stderr)
        # Peek without resolving the backend (resolving imports pyplot), as
        # matplotlib_inline does.
        if dict.__getitem__(matplotlib.rcParams, "backend") != MPL_BACKEND:
            matplotlib.use(MPL_BACKEND)
        self.pylab_gui_select = "inline"
        return "inline", MPL_BACKEND

    def system(self, cmd: str) -> None:
        """!cmd: run in the shell, output to the namespace's streams as it comes."""
        if cmd.rstrip().endswith("&"):
            raise OSError("Background processes not supported.")  # IPython's refusal
        cmd = self.var_expand(cmd, depth=1)
        code = run_command([shell_program(), "-c", cmd], out=write_to("stdout"),
                           err=write_to("stderr"))
        # Not returned, as IPython: a value would become the cell's result.
        self.user_ns["_exit_code"] = code
        if self.system_raise_on_error and code != 0:
            raise CalledProcessError(code, cmd)

    system_piped = system  # system_raw stays IPython's: os.system-like, for `&` (its docs)

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        """x = !cmd, %sx: stdout and stderr together, as an SList (or LSString)."""
        if cmd.rstrip().endswith("&"):
            raise OSError("Background processes not supported.")
        cmd = self.var_expand(cmd, depth=depth + 1)
        chunks: list[str] = []
        code = run_command([shell_program(), "-c", cmd], out=chunks.append, err=None)
        self.user_ns["_exit_code"] = code
        if self.system_raise_on_error and code != 0:
            raise CalledProcessError(code, cmd)
        text = "".join(chunks)
        return SList(text.splitlines()) if split else LSString(text)

    def run_line_magic(self, magic_name: str, line: str, _stack_depth: int = 1) -> Any:
        try:
            # One frame more between the magic and the user's frame: ours.
            return super().run_line_magic(magic_name, line, _stack_depth + 1)
        except CleanUsageError:
            raise
        except UsageError as exc:
            raise CleanUsageError(str(exc)) from None
        except BaseException as exc:
            raise strip_ipython_frames(exc)  # noqa: B904 - the same exception, its frames cut

    def run_cell_magic(self, magic_name: str, line: str, cell: str) -> Any:
        try:
            return super().run_cell_magic(magic_name, line, cell)
        except CleanUsageError:
            raise
        except UsageError as exc:
            raise CleanUsageError(str(exc)) from None
        except BaseException as exc:
            raise strip_ipython_frames(exc)  # noqa: B904

    def showtraceback(self, exc_tuple: Any = None, filename: Any = None, tb_offset: Any = None,
                      exception_only: bool = False, running_compiled_code: bool = False) -> None:
        """An error IPython caught itself (a failing repr, %%time's cell, %run's script):
        our traceback, cut as the cell's are, to stderr; never IPython's."""
        exc = (exc_tuple or sys.exc_info())[1]
        if exc is None:
            return
        if isinstance(exc, UsageError):
            text = f"UsageError: {exc}\n"
        else:
            text = format_error(strip_ipython_frames(exc),
                                with_stack=not exception_only).traceback
        sys.stderr.write(text)
        sys.stderr.flush()

    def showsyntaxerror(self, filename: Any = None, running_compiled_code: bool = False) -> None:
        self.showtraceback(exception_only=True)

    def showindentationerror(self) -> None:
        self.showtraceback(exception_only=True)


InteractiveShellABC.register(ZMQInteractiveShell)
