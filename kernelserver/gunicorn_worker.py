"""gunicorn's gthread worker with a read timeout, so stalled clients cannot pin every thread.

gthread hands a connection to a thread as soon as some bytes arrive; the thread then blocks until
the whole request is read. Without a socket timeout (kernelserver runs gunicorn with timeout=0 so
long cells live), a client that sends half a request and stalls holds that thread forever, and
`threads` such clients starve the server. Each read now waits at most `request_read_timeout`.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.gthread import ThreadWorker


class ReadTimeoutWorker(ThreadWorker):
    """ThreadWorker whose connections time out on a read that gets nothing for too long."""

    read_timeout: float = 15.0

    def handle(self, conn: Any) -> Any:
        init = conn.init
        timeout = self.read_timeout

        def init_with_timeout() -> None:
            init()
            conn.sock.settimeout(timeout)

        conn.init = init_with_timeout
        return super().handle(conn)


def worker_class(read_timeout: float) -> type[ReadTimeoutWorker]:
    """A worker class bound to this read timeout (gunicorn takes a class, not an instance)."""
    return type("KernelserverWorker", (ReadTimeoutWorker,), {"read_timeout": read_timeout})
