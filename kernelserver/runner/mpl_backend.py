"""A non-interactive matplotlib backend: Agg rendering, and show() publishes PNG displays.

Selected in workers with MPLBACKEND=module://kernelserver.runner.mpl_backend, as matplotlib-inline does
for Jupyter. show() never blocks.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

from .display import flush_figures

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*args: Any, **kwargs: Any) -> None:
    """Publish the open figures as displays and close them."""
    flush_figures()
