"""A connection's outgoing frames: queued without blocking the sender, bounded in bytes."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Sequence

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay.net.deflate import release_compressors

# Frames handed to the socket in one write: a query's results or a commit's OKs go out
# together instead of one send (and one system call) per frame.
MAX_BATCH_BYTES = 256 * 1024
# FIN + text opcode, then the payload length (RFC 6455 5.2); a server does not mask.
_FIN_TEXT = 0x81
_SHORT_HEADERS = tuple(bytes((_FIN_TEXT, n)) for n in range(126))
_MEDIUM_HEADER = struct.Struct("!BBH")
_LONG_HEADER = struct.Struct("!BBQ")

log = logging.getLogger("relay.outbox")


class Flusher:
    """The outboxes that got frames during this turn of the event loop, flushed together
    at its end: one callback for a broadcast to a thousand connections, not one each.

    Shared by every outbox of a relay, it also hears of each one that overflows.
    """

    def __init__(self, on_overflow: Callable[[], None] | None = None) -> None:
        self._pending: list[Outbox] = []
        self.on_overflow = on_overflow

    def add(self, outbox: Outbox) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._run)
        self._pending.append(outbox)

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        for outbox in pending:
            try:
                outbox.flush()
            except Exception:
                # Our own bug: the other connections still get their frames.
                log.exception("could not flush an outbox")


class OutboxMeter:
    """Bytes queued in every outbox of the relay, and the queries waiting for it to drop."""

    def __init__(self) -> None:
        self.total = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, size: int) -> None:
        self.total += size

    def remove(self, size: int) -> None:
        self.total -= size
        if self._waiters:
            self._wake()

    async def wait_below(self, mark: int) -> None:
        if self.total <= mark:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((mark, future))
        try:
            await future
        finally:
            self._waiters = [(m, f) for m, f in self._waiters if f is not future]

    def _wake(self) -> None:
        for mark, future in self._waiters:
            if self.total <= mark and not future.done():
                future.set_result(None)


class Outbox:
    """Frames wait here until they are written to the transport, in the order put.

    Everything put during one turn of the event loop is written at the end of it in one
    write (`flush`, through the `Flusher`), without waking the sender task. The
    task takes over when the transport is paused (flow control) or the connection is no
    longer open, and waits for the transport to drain between its batches.
    """

    def __init__(
        self,
        ws: ServerConnection,
        max_bytes: int,
        on_overflow: Callable[[], None],
        flusher: Flusher | None = None,
        meter: OutboxMeter | None = None,
    ) -> None:
        self.ws = ws
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self._flusher = flusher or Flusher()
        self._meter = meter or OutboxMeter()
        self.queued_bytes = 0
        # Room promised to queries reading their next page (backpressure).
        self.reserved_bytes = 0
        # Resolved when room is made (frames written, a promise returned), for queries
        # waiting for their turn.
        self._room: asyncio.Future[None] | None = None
        self._frames: deque[bytes] = deque()
        # Set while the sender task is sending what is queued.
        self._ready = asyncio.Event()
        self._flush_scheduled = False
        self.closed = False

    def put(self, frame: bytes) -> None:
        """Queue a frame; a client that lets more than max_bytes pile up is dropped."""
        if self.closed:
            return
        if self.queued_bytes + len(frame) > self.max_bytes:
            self._overflow()
            return
        self._frames.append(frame)
        self._queued(len(frame))
        self._schedule_flush()

    def put_many(self, frames: Sequence[bytes]) -> None:
        """`put` each frame (a page of results): all of them, or an overflow."""
        if self.closed:
            return
        if len(frames) == 1:
            self.put(frames[0])
            return
        size = sum(map(len, frames))
        if self.queued_bytes + size > self.max_bytes:
            self._overflow()
            return
        self._frames.extend(frames)
        self._queued(size)
        self._schedule_flush()

    def _queued(self, size: int) -> None:
        self.queued_bytes += size
        self._meter.add(size)

    def _taken(self, size: int) -> None:
        self.queued_bytes -= size
        self._meter.remove(size)
        if self._room is not None:
            self._made_room()

    async def reserve(self, size: int) -> int:
        """Wait until a page of `size` bytes fits in half of the outbox with what is queued
        and promised, and promise it; returns the amount to `release` once it is queued.
        Stored results so never push out a client that reads, and live events and OKs
        keep the other half."""
        half = self.max_bytes // 2
        size = min(size, half)
        while not self.closed and self.queued_bytes + self.reserved_bytes + size > half:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        self.reserved_bytes += size
        return size

    def release(self, size: int) -> None:
        self.reserved_bytes -= size
        self._made_room()

    def _made_room(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def _overflow(self) -> None:
        self.closed = True
        self._frames.clear()
        self._taken(self.queued_bytes)
        self._ready.set()
        if self._flusher.on_overflow is not None:
            self._flusher.on_overflow()
        self.on_overflow()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._ready.is_set():
            self._flush_scheduled = True
            self._flusher.add(self)

    def flush(self) -> None:
        """Write what is queued now, unless the transport is paused or the task sends."""
        self._flush_scheduled = False
        if self.closed or self._ready.is_set():
            return
        ws = self.ws
        try:
            while self._frames and _writable(ws):
                write_text_frames(ws, self._take_batch())
        except Exception:
            # The transport failed under us: the task's send_context ends the connection.
            pass
        if self._frames:
            # Paused or closing: the task waits for the drain, or ends on ConnectionClosed.
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
            self.close()

    def close(self) -> None:
        """Nothing more will be sent: forget what is queued and wake a waiting query."""
        self.closed = True
        self._frames.clear()
        self._taken(self.queued_bytes)
        self._made_room()

    def _take_batch(self) -> list[bytes]:
        if self.queued_bytes <= MAX_BATCH_BYTES:
            batch = list(self._frames)
            self._frames.clear()
            self._taken(self.queued_bytes)
            return batch
        batch = []
        size = 0
        while self._frames and size < MAX_BATCH_BYTES:
            frame = self._frames.popleft()
            batch.append(frame)
            size += len(frame)
        self._taken(size)
        return batch

    @property
    def idle(self) -> bool:
        """Nothing queued or being sent (or nothing can be sent any more)."""
        return self.closed or not (self._frames or self._ready.is_set())


def _writable(ws: ServerConnection) -> bool:
    """Open, and the transport takes more without waiting (flow control)."""
    return ws.protocol.state is State.OPEN and not ws.paused and not ws.transport.is_closing()


def text_frames(frames: list[bytes]) -> bytes:
    """Each payload as an unmasked, final text frame, byte for byte as websockets'
    `Frame.serialize` writes it on the server side when no extension is in use."""
    if len(frames) == 1:
        return _header(len(frames[0])) + frames[0]
    parts: list[bytes] = []
    for frame in frames:
        parts.append(_header(len(frame)))
        parts.append(frame)
    return b"".join(parts)


def _header(size: int) -> bytes:
    if size < 126:
        return _SHORT_HEADERS[size]
    if size < 65536:
        return _MEDIUM_HEADER.pack(_FIN_TEXT, 126, size)
    return _LONG_HEADER.pack(_FIN_TEXT, 127, size)


def write_text_frames(ws: ServerConnection, frames: list[bytes]) -> None:
    """Write each frame as its own text message to an open connection, in one write.

    Without extensions the frames are built here: websockets' `protocol.send_text` costs
    about 3 us a frame, most of a query's time in Python. With one (permessage-deflate)
    they go through the protocol, which compresses them in order.
    """
    protocol = ws.protocol
    if protocol.extensions:
        for frame in frames:
            protocol.send_text(frame)
        release_compressors(protocol.extensions)
        ws.transport.writelines(protocol.data_to_send())
        return
    pending = protocol.data_to_send()  # websockets writes its own frames at once: none
    if pending:
        ws.transport.writelines(pending)
    ws.transport.write(text_frames(frames))


async def send_text_frames(ws: ServerConnection, frames: list[bytes]) -> None:
    """Send each frame as its own text message, all in one write to the transport.

    send_context is how websockets' own send does it: it checks the connection is open,
    and on exit writes what is left and waits while the transport is paused (flow control).
    """
    async with ws.send_context():
        write_text_frames(ws, frames)
