"""One client connection: frames in through the core, replies out through the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.core import messages
from relay.core.errors import MessageError, RateLimited, ReqRefused
from relay.core.event import Event
from relay.core.filters import Filter
from relay.core.messages import CloseMessage, EventMessage, ReqMessage
from relay.core.ratelimit import RateLimiter
from relay.core.session import Session
from relay.core.write_policy import Source
from relay.net.outbox import Outbox
from relay.store.base import QueryTimeout

if TYPE_CHECKING:
    from relay.net.server import RelayServer

log = logging.getLogger("relay.connection")

# EVENTs one connection may have waiting for their OK before the relay stops reading it.
MAX_EVENTS_IN_FLIGHT = 256
BINARY_NOTICE = messages.notice("invalid: binary frames are not supported, send JSON as text")
INTERNAL_ERROR_NOTICE = messages.notice("error: the relay failed on this message")
OVERFLOW_NOTICE = messages.notice("error: too many unread messages, disconnecting")
# Seconds the overflow NOTICE may take to reach the socket's buffer before the close.
OVERFLOW_NOTICE_SECONDS = 1.0


class ClientConnection:
    def __init__(self, ws: ServerConnection, relay: RelayServer, peer: str, ip: str = "") -> None:
        self.ws = ws
        self.relay = relay
        self.peer = peer
        self.ip = ip
        settings = relay.settings
        self.req_rate = RateLimiter(
            settings.req_rate_per_connection, settings.req_burst_per_connection
        )
        self.session = Session(relay.settings.limits)
        self.outbox = Outbox(ws, relay.settings.max_outbox_bytes, self._on_overflow)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._queries: dict[str, asyncio.Task[None]] = {}
        # Live events for a subscription whose stored events are still being sent.
        self._held: dict[str, list[Event]] = {}
        self._sub_ids_json: dict[str, bytes] = {}
        self.events_received = 0
        self.last_frame_at = time.monotonic()

    def send(self, frame: bytes) -> None:
        self.outbox.put(frame)

    async def run(self) -> None:
        sender = asyncio.create_task(self.outbox.run())
        try:
            async for frame in self.ws:
                await self.handle(frame)
        except ConnectionClosed:
            pass
        finally:
            self._forget_subscriptions()
            if self._in_flight:
                # Their events are queued for the writer and will be stored all the same.
                await asyncio.wait(self._in_flight)
            sender.cancel()

    def settled(self, quiet: float) -> bool:
        """Every frame read is answered and sent, and none came in the last `quiet` s."""
        return (
            not self._in_flight
            and self.outbox.idle
            and time.monotonic() - self.last_frame_at >= quiet
        )

    async def handle(self, frame: str | bytes) -> None:
        self.last_frame_at = time.monotonic()
        if isinstance(frame, bytes):
            self.send(BINARY_NOTICE)
            return
        try:
            message = self.session.receive(frame)
        except MessageError as error:
            self._refuse(error)
            return
        except Exception:
            # Our own bug: the client hears about it and the connection goes on.
            log.exception("could not parse a frame from %s", self.peer)
            self.send(INTERNAL_ERROR_NOTICE)
            return
        if isinstance(message, EventMessage):
            await self._accept_event(message.event)
        elif isinstance(message, ReqMessage):
            self._open(message)
        elif isinstance(message, CloseMessage):
            self._close(message.sub_id)

    def _refuse(self, error: MessageError) -> None:
        if isinstance(error, ReqRefused) and error.sub_id is not None:
            # The client reads CLOSED as the end of that id: a subscription it replaced ends.
            self._close(error.sub_id)
        self.send(messages.refusal(error))

    async def _accept_event(self, event: Event) -> None:
        self.events_received += 1
        if not self.relay.event_rate_per_ip.allow(self.ip):
            self.send(messages.ok(event.id, False, "rate-limited: too many events, slow down"))
            return
        if len(self._in_flight) >= MAX_EVENTS_IN_FLIGHT:
            # Stop reading until one is answered: TCP pushes back on the client.
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._ingest(event))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _ingest(self, event: Event) -> None:
        try:
            source = Source(self.ip, int(time.time()))
            accepted, reason = await self.relay.ingest(event, source)
        except Exception:
            # Every EVENT gets its OK, even when our own code fails on it.
            log.exception("could not ingest %s from %s", event.id, self.peer)
            accepted, reason = False, "error: the relay failed on this event, try again later"
        self.send(messages.ok(event.id, accepted, reason))

    def _open(self, req: ReqMessage) -> None:
        if not self.req_rate.allow(None):
            limited = RateLimited("too many subscriptions opened, slow down")
            self._refuse(ReqRefused.wrap(limited, sub_id=req.sub_id))
            return
        try:
            filters = self.session.open(req)
        except MessageError as error:
            self._refuse(error)
            return
        sub_id = req.sub_id
        self._cancel_query(sub_id)
        self._sub_ids_json[sub_id] = messages.encode_sub_id(sub_id)
        self._held[sub_id] = []
        # Live first, held back until EOSE: nothing committed meanwhile falls in a gap.
        self.relay.subscriptions.add(self, sub_id, filters)
        self._queries[sub_id] = asyncio.create_task(self._send_stored(sub_id, filters))

    async def _send_stored(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        try:
            stored = await self.relay.query(filters)
        except Exception as exc:
            if isinstance(exc, QueryTimeout):
                reason = "error: the query took too long, narrow the filter"
            else:
                log.exception("query failed for %s", self.peer)
                reason = "error: the query failed"
            self._queries.pop(sub_id, None)
            self._close(sub_id)
            self.send(messages.closed(sub_id, reason))
            return
        sub_id_json = self._sub_ids_json[sub_id]
        for raw in stored:
            self.send(messages.event_frame(sub_id_json, raw))
        self.send(messages.eose(sub_id))
        held = self._held.pop(sub_id, [])
        if held:
            already_sent = set(stored)
            for event in held:
                if event.raw not in already_sent:
                    self.send(messages.event_frame(sub_id_json, event.raw))
        self._queries.pop(sub_id, None)

    def deliver(self, sub_id: str, event: Event) -> None:
        """A live event for one of this connection's subscriptions."""
        held = self._held.get(sub_id)
        if held is not None:
            held.append(event)
            return
        sub_id_json = self._sub_ids_json.get(sub_id)
        if sub_id_json is not None:
            self.send(messages.event_frame(sub_id_json, event.raw))

    def _close(self, sub_id: str) -> None:
        self._cancel_query(sub_id)
        self.session.close(sub_id)
        self.relay.subscriptions.remove(self, sub_id)
        self._sub_ids_json.pop(sub_id, None)
        self._held.pop(sub_id, None)

    def _cancel_query(self, sub_id: str) -> None:
        task = self._queries.pop(sub_id, None)
        if task is not None:
            task.cancel()

    def _forget_subscriptions(self) -> None:
        for sub_id in list(self.session.subscriptions):
            self._close(sub_id)

    def _on_overflow(self) -> None:
        log.warning("%s is not reading its replies; disconnecting", self.peer)
        asyncio.get_running_loop().create_task(self._close_slow())

    async def _close_slow(self) -> None:
        # Past the queue: the transport buffers it even when the client reads nothing.
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await asyncio.wait_for(
                self.ws.send(OVERFLOW_NOTICE, text=True), OVERFLOW_NOTICE_SECONDS
            )
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code=1008, reason="too many unread messages")
