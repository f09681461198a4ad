"""Live events across relay instances on one PostgreSQL database (NOTIFY / LISTEN).

Two `python -m relay` processes on one schema: a subscriber on B gets what A stores,
small or too big for a notification, once, and a REQ opened on B while A publishes a
stream gets every event exactly once, stored or live. Exactly once is shown with a
sentinel: the events come in commit order (store/pg_live.py), so the sentinel, published
last, must come right after the events it follows, with nothing repeated in between.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from relay.core.event import parse_event
from relay.net.server import RelayServer
from relay.store import pg_live
from relay.store.postgres import PostgresStore
from tests.conftest import PgRelayProcess, RelayFactory, url_of, wait_for
from tests.nostr import Client, Keys
from tests.pg import SERVER

# Over PostgreSQL's 8,000-byte payload: carried by id, fetched by the listener.
BIG_CONTENT = "x" * 10_000


async def next_event(client: Client, sub_id: str) -> dict[str, Any]:
    reply = await client.recv()
    assert reply[:2] == ["EVENT", sub_id], reply
    event: dict[str, Any] = reply[2]
    return event


# --- the payload, without a database ---------------------------------------------------


def test_small_event_travels_in_the_payload() -> None:
    event = parse_event(Keys().sign(content="hello"))
    notice = pg_live.parse_payload(pg_live.payload("inst", event))
    assert notice == pg_live.Notice("inst", event.raw, None)


def test_big_event_travels_as_its_id() -> None:
    event = parse_event(Keys().sign(content=BIG_CONTENT))
    text = pg_live.payload("inst", event)
    assert len(text.encode()) <= pg_live.MAX_PAYLOAD_BYTES
    assert pg_live.parse_payload(text) == pg_live.Notice("inst", None, event.id)


def test_payload_at_the_limit() -> None:
    """The JSON travels up to MAX_PAYLOAD_BYTES in all, one byte more goes by id."""
    keys = Keys()
    base = len(parse_event(keys.sign(content="", created_at=1)).raw) + len("inst ")
    fits = parse_event(keys.sign(content="a" * (pg_live.MAX_PAYLOAD_BYTES - base), created_at=1))
    over = parse_event(keys.sign(content="a" * (pg_live.MAX_PAYLOAD_BYTES - base + 1)))
    assert len(pg_live.payload("inst", fits).encode()) == pg_live.MAX_PAYLOAD_BYTES
    assert pg_live.parse_payload(pg_live.payload("inst", fits)).raw == fits.raw  # type: ignore[union-attr]
    assert pg_live.parse_payload(pg_live.payload("inst", over)).event_id == over.id  # type: ignore[union-attr]


def test_malformed_payload_is_ignored() -> None:
    assert pg_live.parse_payload("no-body") is None


def test_channel_is_per_schema_and_a_valid_identifier() -> None:
    assert pg_live.channel_name("a") != pg_live.channel_name("b")
    long = pg_live.channel_name("s" * 63)
    assert len(long.encode()) <= pg_live.MAX_CHANNEL_BYTES
    assert long != pg_live.channel_name("s" * 62 + "t")


# --- two relay processes on one database ---------------------------------------------------


async def test_subscriber_on_b_gets_events_published_on_a_once(
    pg_instances: Callable[[], PgRelayProcess],
) -> None:
    a, b = pg_instances(), pg_instances()
    keys = Keys()
    sub = await Client.connect(b.url)
    pub = await Client.connect(a.url)
    try:
        assert await sub.req("live", {"authors": [keys.pubkey]}) == []
        small = keys.sign(content="small")
        big = keys.sign(content=BIG_CONTENT)
        sentinel = keys.sign(content="sentinel")
        for event in (small, big, sentinel):
            assert (await pub.publish(event))[2] is True
        received = [await next_event(sub, "live") for _ in range(3)]
        assert [e["id"] for e in received] == [small["id"], big["id"], sentinel["id"]]
        assert received[1]["content"] == BIG_CONTENT
    finally:
        await sub.close()
        await pub.close()


async def test_ephemeral_event_crosses_instances(
    pg_instances: Callable[[], PgRelayProcess],
) -> None:
    a, b = pg_instances(), pg_instances()
    keys = Keys()
    sub = await Client.connect(b.url)
    pub = await Client.connect(a.url)
    try:
        await sub.req("eph", {"authors": [keys.pubkey], "kinds": [20001]})
        ephemeral = keys.sign(kind=20001, content="now or never")
        assert (await pub.publish(ephemeral))[2] is True
        assert (await next_event(sub, "eph"))["id"] == ephemeral["id"]
    finally:
        await sub.close()
        await pub.close()


async def test_rejected_and_duplicate_events_are_not_sent_across(
    pg_instances: Callable[[], PgRelayProcess],
) -> None:
    """Only what a batch STORED is notified: a duplicate or an older replaceable version,
    sent to A again, never reaches B's subscriber a second time."""
    a, b = pg_instances(), pg_instances()
    keys = Keys()
    sub = await Client.connect(b.url)
    pub = await Client.connect(a.url)
    try:
        await sub.req("live", {"authors": [keys.pubkey]})
        newer = keys.sign(kind=0, content="newer", created_at=int(time.time()) - 10)
        older = keys.sign(kind=0, content="older", created_at=int(time.time()) - 20)
        assert (await pub.publish(newer))[2] is True
        assert (await pub.publish(newer))[3].startswith("duplicate:")
        assert (await pub.publish(older))[2] is False
        sentinel = keys.sign(content="sentinel")
        assert (await pub.publish(sentinel))[2] is True
        assert (await next_event(sub, "live"))["id"] == newer["id"]
        assert (await next_event(sub, "live"))["id"] == sentinel["id"]
    finally:
        await sub.close()
        await pub.close()


async def test_req_on_b_during_a_stream_on_a_gets_each_event_once(
    pg_instances: Callable[[], PgRelayProcess],
) -> None:
    """Events committed before the query's snapshot come stored, the rest live after EOSE;
    none is missing and none comes twice, whichever side of the snapshot it fell on."""
    a, b = pg_instances(), pg_instances()
    keys = Keys()
    before, during, after = 40, 150, 20
    opened, eosed = asyncio.Event(), asyncio.Event()
    published: list[str] = []
    start = int(time.time()) - 1000

    async def publish_stream() -> None:
        pub = await Client.connect(a.url)
        try:
            for n in range(before + during + after):
                if n == before:
                    opened.set()
                if n == before + during:
                    # These are certainly after the query: the live path is exercised.
                    await asyncio.wait_for(eosed.wait(), 30)
                event = keys.sign(content=f"stream {n}", created_at=start + n)
                assert (await pub.publish(event))[2] is True
                published.append(event["id"])
        finally:
            await pub.close()

    publisher = asyncio.create_task(publish_stream())
    sub = await Client.connect(b.url)
    try:
        await asyncio.wait_for(opened.wait(), 30)
        stored = await sub.req("stream", {"authors": [keys.pubkey], "limit": 1000})
        eosed.set()
        live: list[dict[str, Any]] = []
        total = before + during + after
        while len(stored) + len(live) < total:
            live.append(await next_event(sub, "stream"))
        await publisher
        ids = [e["id"] for e in stored + live]
        assert Counter(ids) == Counter(published)
        assert len(stored) >= before
        assert len(live) >= after
        # Nothing more: a REQ's EOSE comes next, not a late duplicate.
        assert await sub.req("sentinel", {"ids": ["0" * 64]}) == []
    finally:
        publisher.cancel()
        await sub.close()


# --- in-process: the listener comes back by itself ----------------------------------------


@pytest.fixture
def relay_backend() -> str:
    """start_relay's relays on PostgreSQL, all on one schema: instances of one relay."""
    return "postgres"


def listener_pid(relay: RelayServer) -> int | None:
    store = relay.store
    assert isinstance(store, PostgresStore)
    feed = store._feed
    conn = None if feed is None else feed._conn
    return None if conn is None else conn.get_server_pid()


async def test_listener_reconnects_after_its_connection_is_killed(
    start_relay: RelayFactory,
) -> None:
    a, b = await start_relay(), await start_relay()
    old = listener_pid(b)
    assert old is not None
    admin = await asyncpg.connect(SERVER)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old)
    finally:
        await admin.close()
    await wait_for(lambda: listener_pid(b) not in (None, old))
    keys = Keys()
    sub = await Client.connect(url_of(b))
    pub = await Client.connect(url_of(a))
    try:
        await sub.req("live", {"authors": [keys.pubkey]})
        event = keys.sign(content="after the reconnect")
        assert (await pub.publish(event))[2] is True
        assert (await next_event(sub, "live"))["id"] == event["id"]
    finally:
        await sub.close()
        await pub.close()
