"""Which WebSocket of a Jupyter session is fed when two of its requests race to attach."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from kernelserver.service import Service
from kernelserver.web.jupyter.channels import Connection
from kernelserver.web.jupyter.kernels import Kernels


def connection(service: Service, kernels: Kernels, session: str, arrived: int) -> Connection:
    """A connection as the channels route makes one; never served, so what it would send stays
    queued (its socket only says which protocol it speaks)."""
    return Connection(cast(Any, SimpleNamespace(subprotocol=None)), "k", session, service, kernels,
                      arrived=arrived)


def test_a_newer_request_of_a_session_replaces_the_older_in_whichever_order_they_attach(
        make_service: Callable[..., Service]) -> None:
    service = make_service(backend="inprocess")
    service.create("k")
    kernels = Kernels(service, max_websockets=10)

    # In order: the reconnect replaces the socket its client left behind.
    left, back = connection(service, kernels, "s1", 1), connection(service, kernels, "s1", 2)
    kernel = kernels.attach(left)
    assert kernels.attach(back) is kernel
    assert kernel.connections == [back]

    # Under load the older request's thread can reach attach second (JupyterLab's gateway
    # client had opened and dropped it a moment before): it must not replace the newer one,
    # which the page reads, and is closed instead.
    older, newer = connection(service, kernels, "s2", 3), connection(service, kernels, "s2", 4)
    assert kernels.attach(newer) is kernel
    assert kernels.attach(older) is kernel
    assert kernel.connections == [back, newer]
    closes = [item for item in older._outbox if isinstance(item, tuple)]  # what its writer sends
    assert closes == [(1000, "replaced by a newer connection of the same session")]
    assert not [item for item in newer._outbox if isinstance(item, tuple)]
