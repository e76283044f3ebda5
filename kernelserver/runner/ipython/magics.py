"""The magics kernelserver changes: %%script/%%bash on its own subprocess, usage errors shown clean.

Importing this module imports IPython: only shell.py does, once IPython is wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from subprocess import CalledProcessError
from typing import Any, cast

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import cell_magic, magics_class
from IPython.core.magics.script import ScriptMagics, script_args
from IPython.utils.process import arg_split

from .commands import run_command, write_to


class CleanUsageError(UsageError):
    """A magic's usage error, shown as IPython shows it: `UsageError: message`, no frames of
    IPython, no module path (still an IPython UsageError to `except`)."""


CleanUsageError.__name__ = CleanUsageError.__qualname__ = "UsageError"
CleanUsageError.__module__ = "builtins"


@magics_class
class KernelScriptMagics(ScriptMagics):
    """%%script, %%bash, %%sh...: our interruptible subprocess, output to the namespace's
    streams as it comes (IPython's runs an asyncio loop on a thread of its own)."""

    @magic_arguments.magic_arguments()
    @script_args
    @cell_magic("script")  # type: ignore[arg-type]
    def shebang(self, line: str, cell: str) -> None:
        """Run a cell via a shell command (%%script bash, %%bash, %%sh...)."""
        argv = arg_split(line, posix=True)
        args, cmd = self.shebang.parser.parse_known_args(argv)
        if args.bg or args.proc:
            return super().shebang(line, cell)
        ns = cast(Any, self.shell).user_ns
        sinks: list[Callable[[str], None]] = []
        for name, stream in ((args.out, "stdout"), (args.err, "stderr")):
            if name:
                ns[name] = ""

                def keep(text: str, name: str = name) -> None:
                    ns[name] += text

                sinks.append(keep)
            else:
                sinks.append(write_to(stream))
        body = cell if cell.endswith("\n") else cell + "\n"
        try:
            code = run_command(cmd, out=sinks[0], err=sinks[1], stdin=body.encode("utf-8"))
        except FileNotFoundError:
            print(f"Couldn't find program: {cmd[0]!r}")  # IPython's words
            return None
        if args.raise_error and code != 0:
            raise CalledProcessError(code, cell)
        return None


# ScriptMagics' own (%killbgscripts) with ours over them.
for _kind in ("line", "cell"):
    KernelScriptMagics.magics[_kind] = {**ScriptMagics.magics[_kind],
                                        **KernelScriptMagics.magics[_kind]}
