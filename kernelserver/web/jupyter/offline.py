"""What a disconnected Jupyter session missed, kept (bounded) for when it comes back."""

from __future__ import annotations

import time
from collections import deque

from .wire import Message, Pending, weight

# What a disconnected session may miss and still get on reconnect (jupyter_server's
# buffer_offline_messages, bounded): messages, their bytes, and for how long.
OFFLINE_MESSAGES = 2000
OFFLINE_BYTES = 32 << 20
OFFLINE_SECONDS = 600.0
MAX_OFFLINE_SESSIONS = 16


class OfflineBuffer:
    """What one disconnected session missed, kept (bounded) until it reconnects or expires."""

    def __init__(self, cut: bool = False) -> None:
        self.messages: deque[Pending] = deque()
        self.size = 0
        self.dropped = 0
        self.cut = cut  # it was dropped for falling behind: its replay says so first
        self.since = time.monotonic()

    def add(self, message: Message) -> None:
        """Keep message (printed text merged into the text kept last); the oldest go once the
        buffer is full."""
        size = weight(message)
        if not (self.messages and self.messages[-1].merge(message, size)):
            self.messages.append(Pending(message, size))
        self.size += size
        while self.messages and (len(self.messages) > OFFLINE_MESSAGES or self.size > OFFLINE_BYTES):
            self.size -= self.messages.popleft().size
            self.dropped += 1

    def replay(self) -> list[Message]:
        """What the session missed, in order (printed text merged), for when it comes back."""
        return [pending.final() for pending in self.messages]
