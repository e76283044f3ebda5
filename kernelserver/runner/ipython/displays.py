"""IPython's display machinery bound to the namespace's callbacks: display(), clear_output(), ?-help.

Importing this module imports IPython: only shell.py does, once IPython is wanted.
"""

from __future__ import annotations

import base64
import io
import sys
from typing import Any, cast

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher


class KernelDisplayPublisher(DisplayPublisher):
    """display(), update_display() and clear_output() to the namespace's callbacks
    (ipykernel's ZMQDisplayPublisher sends them as iopub messages)."""

    def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kwargs: Any) -> None:
        cast(Any, self.shell).kernelserver_publish(data, metadata, transient, update)

    def clear_output(self, wait: bool = False) -> None:
        cast(Any, self.shell).kernelserver_clear(bool(wait))


class KernelDisplayHook(DisplayHook):
    """Out, _, __, ___ as IPython keeps them; a direct call publishes a display (the cell's
    own value is the Executor's result, not a display)."""

    def write_output_prompt(self) -> None:
        pass  # no "Out[n]:" in the output: clients show the count themselves

    def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
        cast(Any, self.shell).kernelserver_publish(format_dict, md_dict, None, False)

    def finish_displayhook(self) -> None:
        self._is_active = False


def figure_png(figure: Any) -> bytes:
    """A matplotlib Figure as PNG bytes, for IPython's image/png formatter."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def encoded(value: Any) -> Any:
    """A value of IPython's MIME bundle in the form it travels in as JSON."""
    # IPython's formatters give images as bytes; they travel as base64 text (ipykernel's
    # encode_images and json_clean do the same).
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def page(shell: Any, data: Any, start: int = 0, screen_lines: int = 0,
         pager_cmd: Any = None) -> None:
    """IPython's show_in_pager hook: ?-help and %pdoc print to stdout (ipykernel pages them as a
    payload; our clients read stdout)."""
    text = data.get("text/plain", "") if isinstance(data, dict) else str(data)
    lines = text.splitlines()[max(0, start):]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
