"""What building an IPython shell changes in the whole process, saved and put back (no IPython)."""

from __future__ import annotations

import builtins
import sys
from typing import Any


def process_state() -> dict[str, Any]:
    """What InteractiveShell.__init__ changes in the process: builtins and the prompts in sys."""
    state = {f"builtins.{name}": getattr(builtins, name)
             for name in ("display", "__IPYTHON__") if hasattr(builtins, name)}
    state.update({f"sys.{name}": getattr(sys, name)
                  for name in ("ps1", "ps2", "ps3") if hasattr(sys, name)})
    return state


def restore_process_state(state: dict[str, Any]) -> None:
    """Put back what process_state saw."""
    for owner, name in ((builtins, "display"), (builtins, "__IPYTHON__"), (sys, "ps1"),
                        (sys, "ps2"), (sys, "ps3")):
        key = f"{owner.__name__}.{name}"
        if key in state:
            setattr(owner, name, state[key])
        elif hasattr(owner, name):
            delattr(owner, name)
