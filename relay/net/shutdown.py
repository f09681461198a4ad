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

if TYPE_CHECKING:
    from relay.net.connection import ClientConnection

FLUSH_SECONDS = 5.0
# A connection that sent nothing for this long has had every frame it sent read.
QUIET_SECONDS = 0.1
STALL_SECONDS = 0.5
CLOSE_SECONDS = 1.0
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

    def end(self) -> None:
        """Before the close handshake: it must read the client's close frame."""
        self._pong.cancel()
        ws = self.connection.ws
        ws.close_timeout = CLOSE_SECONDS
        transport = ws.transport
        if not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()


def stop_reading(ws: ServerConnection) -> None:
    transport = ws.transport
    if not transport.is_closing() and transport.is_reading():
        transport.pause_reading()


async def settle(connections: Iterable[ClientConnection]) -> None:
    """Wait until every connection has answered what it was sent before the stop (or
    cannot be answered), at most FLUSH_SECONDS; then ready them for a prompt close."""
    draining = [Draining(c) for c in connections]
    deadline = time.monotonic() + FLUSH_SECONDS
    try:
        while (now := time.monotonic()) < deadline:
            if all(d.done(now) for d in draining):
                return
            await asyncio.sleep(POLL_SECONDS)
    finally:
        for d in draining:
            d.end()


async def close(server: Server, connections: Iterable[ClientConnection]) -> None:
    """Close every connection with 1001; abort those whose handshake is not over within
    CLOSE_SECONDS (one already closing for another reason keeps its own, longer timeout)."""
    server.close(close_connections=True)
    try:
        await asyncio.wait_for(asyncio.shield(server.wait_closed()), CLOSE_SECONDS)
    except TimeoutError:
        for connection in connections:
            connection.ws.transport.abort()
        await server.wait_closed()
