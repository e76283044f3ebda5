"""The command line: the `cli` group and main(), with the commands of the modules beside it.

server.py: serve (under gunicorn, see kernelserver/web/serving.py), stop, token; cells.py: exec,
show, attach; check.py: check; namespaces.py: ls, history, interrupt, restart, rm; common.py:
what they share.

Only `serve` and `stop` import server modules: the client commands run on a laptop with the
client alone. Exit codes: 0 ok; 1 a cell or check failed, or what was asked for is not there;
2 a usage or connection error (server unreachable, token refused).
"""

from __future__ import annotations

import click

from .. import __version__
from .cells import attach, exec_, show
from .check import check
from .namespaces import history, interrupt, kernels, ls, restart, rm
from .server import serve, stop, token_

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kernelserver")
def cli() -> None:
    """kernelserver: run Python in named, persistent namespaces over HTTP."""


for command in (serve, stop, token_, exec_, check, ls, kernels, history, show, attach, interrupt,
                restart, rm):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kernelserver")
