"""A connection's outgoing frames: queued without blocking the sender, bounded in bytes."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed


class Outbox:
    def __init__(
        self, ws: ServerConnection, max_bytes: int, on_overflow: Callable[[], None]
    ) -> None:
        self.ws = ws
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self.queued_bytes = 0
        self._frames: deque[bytes] = deque()
        # Set from a put until every frame queued is handed to the socket.
        self._ready = asyncio.Event()
        self.closed = False

    def put(self, frame: bytes) -> None:
        """Queue a frame; a client that lets more than max_bytes pile up is dropped."""
        if self.closed:
            return
        if self.queued_bytes + len(frame) > self.max_bytes:
            self.closed = True
            self._frames.clear()
            self.queued_bytes = 0
            self._ready.set()
            self.on_overflow()
            return
        self._frames.append(frame)
        self.queued_bytes += len(frame)
        self._ready.set()

    async def run(self) -> None:
        try:
            while not self.closed:
                await self._ready.wait()
                while self._frames:
                    frame = self._frames.popleft()
                    self.queued_bytes -= len(frame)
                    await self.ws.send(frame, text=True)
                self._ready.clear()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True

    @property
    def idle(self) -> bool:
        """Nothing queued or being sent (or nothing can be sent any more)."""
        return self.closed or not self._ready.is_set()
