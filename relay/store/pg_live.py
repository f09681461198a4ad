"""Live events across relay instances on one PostgreSQL database: NOTIFY and LISTEN.

Sending. Each batch that stores events calls pg_notify once per stored event inside its
own transaction (store/postgres.py). PostgreSQL delivers a transaction's notifications
only once it has committed, never for one rolled back, and in commit order: a listener
hears of an event only when any reader can already find it. The payload is tagged with the
sending instance's id, so the sender skips its own (it broadcast them itself after the
commit), and carries the event's JSON when it fits under PostgreSQL's 8,000-byte payload
limit, else `#` and its id: the listener then reads the event (gone meanwhile: replaced,
deleted or expired, and then nothing is delivered, as nothing should be).

Listening. One connection per instance LISTENs; payloads go through one queue, handled
in order by one task, so events fetched by id are delivered in commit order too. When the
connection is lost (PostgreSQL restarted, a network cut), it reconnects with a growing
pause. Events committed while no connection listened do not reach this instance's live
subscribers; a subscriber's next REQ finds them, as after a dropped WebSocket.

Once and only once against a REQ's stored results: the session registers a subscription
before its query starts and holds live events back until EOSE, dropping any its pages
already carried. An event committed before the query's snapshot is in the results (and
if its notification comes after the subscription, dropped as already sent); one committed
after is not, and its notification, later still, is held and sent after EOSE.

The channel is named after the schema: notifications are per database, and instances on
other schemas of the same database (tests, a staging relay) must not hear each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from relay.core.event import Event, event_from_raw

log = logging.getLogger("relay.postgres")

# PostgreSQL refuses payloads of 8,000 bytes or more; this leaves room for the tag.
MAX_PAYLOAD_BYTES = 7900
# PostgreSQL's identifier limit (NAMEDATALEN - 1); pg_notify refuses longer channels.
MAX_CHANNEL_BYTES = 63
CONNECT_TIMEOUT = 10.0
NOTIFY_TIMEOUT = 5.0
RETRY_FIRST = 0.1
RETRY_MOST = 5.0
BY_ID = "#"

Deliver = Callable[[Event], None]
FetchRaw = Callable[[str], Awaitable[bytes | None]]


def channel_name(schema: str, prefix: str = "pyrelay_") -> str:
    """The NOTIFY channel of the relays on `schema` (events; moderation has its own prefix)."""
    name = f"{prefix}{schema}"
    if len(name.encode()) <= MAX_CHANNEL_BYTES:
        return name
    return prefix + hashlib.sha256(schema.encode()).hexdigest()[:40]


def payload(instance: str, event: Event) -> str:
    """`<instance> <json>` when it fits, else `<instance> #<id>`."""
    if len(instance) + 1 + len(event.raw) <= MAX_PAYLOAD_BYTES:
        return f"{instance} {event.raw.decode()}"
    return f"{instance} {BY_ID}{event.id}"


@dataclass(frozen=True)
class Notice:
    """One parsed payload: who sent it, and the event's JSON or, when too big, its id."""

    instance: str
    raw: bytes | None
    event_id: str | None


def parse_payload(text: str) -> Notice | None:
    instance, _, body = text.partition(" ")
    if not body:
        return None
    if body.startswith(BY_ID):
        return Notice(instance, None, body[len(BY_ID) :])
    return Notice(instance, body.encode(), None)


class LiveFeed:
    """One LISTEN connection handing other instances' stored events to `deliver`."""

    def __init__(
        self, dsn: str, channel: str, instance: str, fetch: FetchRaw, deliver: Deliver
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.instance = instance
        self.fetch = fetch
        self.deliver = deliver
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._conn: asyncpg.Connection | None = None
        # Set once LISTEN is in place; tests wait for it before publishing elsewhere.
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._handle())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _listen(self) -> None:
        pause = RETRY_FIRST
        while True:
            try:
                await self._listen_once()
                pause = RETRY_FIRST
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("live events from other instances: %s; retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MOST)

    async def _listen_once(self) -> None:
        """Listen until the connection is lost."""
        lost = asyncio.Event()
        conn = await asyncpg.connect(
            self.dsn,
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": "pyrelay-listen"},
        )
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self.channel, self._heard)
            self._conn = conn
            self.listening.set()
            await lost.wait()
            log.warning("live events from other instances: connection lost, reconnecting")
        finally:
            self._conn = None
            self.listening.clear()
            conn.terminate()

    async def notify(self, text: str) -> None:
        """Send a notification outside any transaction (ephemeral events); dropped while
        the connection is down, as an ephemeral event is to a subscriber not connected."""
        conn = self._conn
        if conn is None:
            return
        try:
            # Bounded: the client's OK waits for this.
            await conn.execute(
                "SELECT pg_notify($1, $2)", self.channel, text, timeout=NOTIFY_TIMEOUT
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("an ephemeral event did not reach the other instances: %s", exc)

    def _heard(self, _conn: object, _pid: int, _channel: str, text: object) -> None:
        if isinstance(text, str):
            self._queue.put_nowait(text)

    async def _handle(self) -> None:
        while True:
            text = await self._queue.get()
            try:
                await self._handle_one(text)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("a live event from another instance was not delivered: %s", exc)
            except Exception:
                # A malformed payload must not end live delivery for good.
                log.exception("a live event from another instance was not delivered")

    async def _handle_one(self, text: str) -> None:
        notice = parse_payload(text)
        if notice is None or notice.instance == self.instance:
            return
        raw = notice.raw
        if raw is None and notice.event_id is not None:
            raw = await self.fetch(notice.event_id)
        if raw is not None:
            self.deliver(event_from_raw(raw))
