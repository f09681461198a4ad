"""Stopping the connections: answer what each client sent before the stop, then close.

Every frame a client sent before the relay began to stop is answered (refused, once the
relay no longer accepts events) and the answers are written before the close frame.
Waiting for that must not take long under load, when clients keep sending and some do
not read:

- The relay pings each client as it begins to stop. A client's pong comes after every
  frame it sent before it saw the ping, so once the pong is in, nothing more is owed: the
  relay stops reading that connection, and it goes quiet once what it read is answered.
  Without this, a client that never pauses kept the relay reading (and refusing) it
  until the deadline.
- A connection is done when nothing is in flight, its answers are written and it sent
  nothing for `QUIET_SECONDS` (`ClientConnection.settled`): also the end for a client
  that does not answer pings.
- A client that does not read cannot be given its answers: once its transport has taken
  nothing for `STALL_SECONDS`, the relay stops waiting for it.
- At most `FLUSH_SECONDS` in all (a client that keeps sending and never reads cannot be
  told from one whose earlier frames are still arriving).

Then the close handshakes get `CLOSE_SECONDS` in all rather than `close_timeout` (10 s by
default), which a client that does not read, and so never sees the close frame, used to
take in full; what is still open after that is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConcurrencyError, ConnectionClosed
from websockets.frames import CloseCode

if TYPE_CHECKING:
    from relay.net.connection import ClientConnection

FLUSH_SECONDS = 5.0
# A connection that sent nothing for this long has had every frame it sent read.
QUIET_SECONDS = 0.1
STALL_SECONDS = 0.5
# A client that reads but is behind on its replies needs time to reach the close frame; a
# clean-clone CI run showed 1 s too short for one (close code 1006 instead of 1001).
CLOSE_SECONDS = 2.0
POLL_SECONDS = 0.01


class Draining:
    """One connection while the relay stops: its ping, and whether it still reads."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.caught_up = False
        self._pong = asyncio.create_task(self._ping())
        # Since when the transport has been full without taking anything, and its size.
        self._stalled_since: float | None = None
        self._buffered = 0

    async def _ping(self) -> None:
        ws = self.connection.ws
        with contextlib.suppress(ConnectionClosed, ConcurrencyError):
            await (await ws.ping())
            self.caught_up = True
            stop_reading(ws)

    def done(self, now: float) -> bool:
        if self.caught_up:
            # websockets resumes reading as its queue of frames drains (flow control).
            stop_reading(self.connection.ws)
        return self.connection.settled(QUIET_SECONDS) or self._stalled(now)

    def _stalled(self, now: float) -> bool:
        """Its transport is full and has taken nothing for STALL_SECONDS."""
        ws = self.connection.ws
        if not ws.paused:
            self._stalled_since = None
            return False
        buffered = ws.transport.get_write_buffer_size()
        if self._stalled_since is None or buffered < self._buffered:
            self._stalled_since = now
        self._buffered = buffered
        return now - self._stalled_since >= STALL_SECONDS

    def start_closing(self) -> asyncio.Task[None]:
        """Send the close frame (1001), its handshake bounded by CLOSE_SECONDS; the task
        writes the frame in its first step."""
        self._pong.cancel()
        ws = self.connection.ws
        ws.close_timeout = CLOSE_SECONDS
        return asyncio.create_task(ws.close(CloseCode.GOING_AWAY))

    def read_again(self) -> None:
        """Once the close frame is out: the client's close frame must be read. What comes
        before it is handled, but no answer can follow the close frame."""
        transport = self.connection.ws.transport
        if not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()


def stop_reading(ws: ServerConnection) -> None:
    transport = ws.transport
    if not transport.is_closing() and transport.is_reading():
        transport.pause_reading()


async def stop(server: Server | None, connections: Iterable[ClientConnection]) -> None:
    """Answer what each connection was sent before the stop, then close them all."""
    draining = [Draining(c) for c in connections]
    await _settle(draining)
    await _close(server, draining)


async def _settle(draining: list[Draining]) -> None:
    """Until every connection has answered what it was sent before the stop (or cannot
    be answered), at most FLUSH_SECONDS."""
    deadline = time.monotonic() + FLUSH_SECONDS
    while (now := time.monotonic()) < deadline:
        if all(d.done(now) for d in draining):
            return
        await asyncio.sleep(POLL_SECONDS)


async def _close(server: Server | None, draining: list[Draining]) -> None:
    """Close every connection with 1001, then read again for the clients' close frames
    (reading first, a client that kept sending buried the close frame under answers to
    what came after); abort what is still open after CLOSE_SECONDS, connections already
    closing for another reason (a full outbox) with close_timeout included."""
    closing = [d.start_closing() for d in draining]
    await asyncio.sleep(0)  # each task writes its close frame
    for d in draining:
        d.read_again()
    if server is not None:
        server.close(close_connections=True)  # and the handshakes not yet in the set
    try:
        await asyncio.wait_for(asyncio.gather(*closing), CLOSE_SECONDS)
    except TimeoutError:
        for d in draining:
            d.connection.ws.transport.abort()
    if server is not None:
        await server.wait_closed()
