"""One client connection: frames in through the core, replies out through the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.core import auth, messages
from relay.core.errors import (
    AuthRequired,
    ClientError,
    MessageError,
    RateLimited,
    ReqRefused,
    Unsupported,
)
from relay.core.event import Event, event_from_raw
from relay.core.filters import Filter
from relay.core.messages import AuthMessage, CloseMessage, CountMessage, EventMessage, ReqMessage
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
        self.outbox = Outbox(ws, relay.settings.max_outbox_bytes, self._on_overflow, relay.flusher)
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
        if self.relay.auth.enabled:
            # NIP-42: the challenge is there before the client needs it.
            self.send(messages.auth_challenge(self.session.auth.challenge))
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
        elif isinstance(message, AuthMessage):
            self._start(self._authenticate(message.event))
        elif isinstance(message, CountMessage):
            self._count(message)

    def _refuse(self, error: MessageError) -> None:
        if isinstance(error, ReqRefused) and error.sub_id is not None:
            # The client reads CLOSED as the end of that id: a subscription it replaced ends.
            self._close(error.sub_id)
        if error.prefix == AuthRequired.prefix:
            # NIP-42: a fresh reminder of the challenge comes before every auth-required.
            self.send(messages.auth_challenge(self.session.auth.challenge))
        self.send(messages.refusal(error))

    async def _accept_event(self, event: Event) -> None:
        self.events_received += 1
        if not self.relay.event_rate_per_ip.allow(self.ip):
            self.send(messages.ok(event.id, False, "rate-limited: too many events, slow down"))
            return
        try:
            auth.check_write(event, self.session.auth, self.relay.auth)
        except ClientError as error:
            self._refuse(MessageError.wrap(error, event_id=event.id))
            return
        if len(self._in_flight) >= MAX_EVENTS_IN_FLIGHT:
            # Stop reading until one is answered: TCP pushes back on the client.
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        self._start(self._ingest(event))

    def _start(self, work: Coroutine[None, None, None]) -> None:
        """Run `work` as a task the connection waits for before it ends (and at shutdown)."""
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _authenticate(self, event: Event) -> None:
        if not self.relay.auth.enabled:
            accepted, reason = False, "unsupported: this relay does not use NIP-42 AUTH"
        else:
            try:
                accepted, reason = await self.relay.authenticate(event, self.session.auth)
            except Exception:
                log.exception("could not check AUTH %s from %s", event.id, self.peer)
                accepted, reason = False, "error: the relay failed on this AUTH, try again"
        self.send(messages.ok(event.id, accepted, reason))

    async def _ingest(self, event: Event) -> None:
        try:
            source = Source(self.ip, int(time.time()))
            accepted, reason = await self.relay.ingest(event, source)
        except Exception:
            # Every EVENT gets its OK, even when our own code fails on it.
            log.exception("could not ingest %s from %s", event.id, self.peer)
            accepted, reason = False, "error: the relay failed on this event, try again later"
        self.send(messages.ok(event.id, accepted, reason))

    def _rate_limited(self, sub_id: str) -> bool:
        """Takes a token from the connection's REQ/COUNT bucket; refuses when it is empty."""
        if self.req_rate.allow(None):
            return False
        limited = RateLimited("too many subscriptions opened, slow down")
        self._refuse(ReqRefused.wrap(limited, sub_id=sub_id))
        return True

    def _open(self, req: ReqMessage) -> None:
        if self._rate_limited(req.sub_id):
            return
        try:
            self._check_read(req.sub_id, req.filters)
            filters = self.session.open(req)
        except MessageError as error:
            self._refuse(error)
            return
        sub_id = req.sub_id
        self._cancel_query(sub_id)
        self._sub_ids_json[sub_id] = messages.encode_sub_id(sub_id)
        self._held[sub_id] = []
        # Live first, held back until EOSE: nothing committed meanwhile falls in a gap.
        self.relay.subscriptions.add(self, sub_id, filters, int(time.time()))
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
        stored = self._readable(filters, stored)
        self.outbox.put_many(messages.event_frames(sub_id_json, stored))
        self.send(messages.eose(sub_id))
        held = self._held.pop(sub_id, [])
        if held:
            already_sent = set(stored)
            for event in held:
                if event.raw not in already_sent:
                    self.send(messages.event_frame(sub_id_json, event.raw))
        self._queries.pop(sub_id, None)

    def _check_read(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        try:
            searching = any(f.search is not None for f in filters)
            if searching and not self.relay.settings.search_enabled:
                raise Unsupported("search is not enabled on this relay")
            auth.check_read(filters, self.session.auth, self.relay.auth)
        except ClientError as error:
            raise ReqRefused.wrap(error, sub_id=sub_id) from None

    def _readable(self, filters: tuple[Filter, ...], stored: list[bytes]) -> list[bytes]:
        """Stored results without the private events this connection may not read."""
        dm_kinds = self.relay.auth.dm_kinds
        if not auth.could_return_private(filters, dm_kinds):
            return stored
        readers = self.session.auth.pubkeys
        return [
            raw
            for raw in stored
            if _kind_of(raw) not in dm_kinds
            or auth.may_read(event_from_raw(raw), readers, dm_kinds)
        ]

    def _count(self, request: CountMessage) -> None:
        if not self.relay.settings.count_enabled:
            self.send(messages.closed(request.sub_id, "unsupported: COUNT is not enabled here"))
            return
        if self._rate_limited(request.sub_id):
            return
        try:
            self._check_read(request.sub_id, request.filters)
            filters = self.session.count(request)
        except MessageError as error:
            self._refuse(error)
            return
        self._start(self._send_count(request.sub_id, filters))

    async def _send_count(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        try:
            n = await self.relay.count(filters, self.session.auth.pubkeys)
        except QueryTimeout:
            self.send(messages.closed(sub_id, "error: the count took too long, narrow the filter"))
            return
        except Exception:
            log.exception("count failed for %s", self.peer)
            self.send(messages.closed(sub_id, "error: the count failed"))
            return
        self.send(messages.count(sub_id, n))

    def deliver(self, sub_id: str, event: Event, private: bool) -> None:
        """A live event for one of this connection's subscriptions; `private`: its kind
        is one of the direct messages only their parties may read."""
        if private and not auth.may_read(
            event, self.session.auth.pubkeys, self.relay.auth.dm_kinds
        ):
            return
        held = self._held.get(sub_id)
        if held is not None:
            held.append(event)
            return
        sub_id_json = self._sub_ids_json.get(sub_id)
        if sub_id_json is not None:
            self.outbox.put(messages.event_frame(sub_id_json, event.raw))

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


# The first `"kind":` with a raw quote is the event's own: inside strings quotes are escaped.
_KIND_FIELD = re.compile(rb'"kind":(\d+)')


def _kind_of(raw: bytes) -> int:
    """The kind of stored event JSON, without parsing the whole event."""
    found = _KIND_FIELD.search(raw)
    return int(found.group(1)) if found else -1
