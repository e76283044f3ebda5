"""Namespace backends: where a namespace's code actually runs."""

from __future__ import annotations

from typing import Any

from .base import Kernel, KernelOutcome, OutputSink


def make_kernel_factory(config: dict[str, Any]) -> Any:
    """A callable id → started Kernel for the configured backend."""
    if config["backend"] == "inprocess":
        from .inprocess import InProcessBackend

        return InProcessBackend(config)
    from .process import ProcessBackend

    return ProcessBackend(config)


__all__ = ["Kernel", "KernelOutcome", "OutputSink", "make_kernel_factory"]
