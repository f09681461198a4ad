"""A connection's outgoing frames: queued without blocking the sender, bounded in bytes."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

# Frames handed to the socket in one write: a query's results or a commit's OKs go out
# together instead of one send (and one system call) per frame.
MAX_BATCH_BYTES = 256 * 1024


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
                    await send_text_frames(self.ws, self._take_batch())
                self._ready.clear()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True

    def _take_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        while self._frames and size < MAX_BATCH_BYTES:
            frame = self._frames.popleft()
            batch.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return batch

    @property
    def idle(self) -> bool:
        """Nothing queued or being sent (or nothing can be sent any more)."""
        return self.closed or not self._ready.is_set()


async def send_text_frames(ws: ServerConnection, frames: list[bytes]) -> None:
    """Send each frame as its own text message, all in one write to the transport.

    `ws.send` writes and drains once per message, which costs most of the time of a
    query's results. send_context is how websockets' own send does it: it checks the
    connection is open, and on exit writes what is left and waits while the transport
    is paused (flow control).
    """
    async with ws.send_context():
        for frame in frames:
            ws.protocol.send_text(frame)
        ws.transport.writelines(ws.protocol.data_to_send())
