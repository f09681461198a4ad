"""NIP-40 expiration against the running relay, and the purge of expired events."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.nostr import Client, Keys

EXPIRED_REASON = "invalid: event has expired"
# Seconds an expiring test event lives, give or take the current second: 2 to 3 s.
LIFETIME = 3


def expiring(keys: Keys, expiration: int | str, **kwargs: Any) -> dict[str, Any]:
    tags = [["expiration", str(expiration)], *kwargs.pop("tags", [])]
    return keys.sign(tags=tags, **kwargs)


def stored_rows(relay: RelayServer, event_id: str) -> tuple[int, int]:
    """(events rows, tags rows) of one event, read from the database file, read-only."""
    with contextlib.closing(
        sqlite3.connect(f"file:{relay.settings.db}?mode=ro", uri=True, timeout=5)
    ) as db:
        found = db.execute("SELECT seq FROM events WHERE id = ?", (bytes.fromhex(event_id),))
        seqs = [seq for (seq,) in found]
        tags = sum(
            db.execute("SELECT count(*) FROM tags WHERE seq = ?", (seq,)).fetchone()[0]
            for seq in seqs
        )
    return len(seqs), tags


async def poll(
    condition: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1
) -> bool:
    """Await `condition()` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


async def test_expired_event_is_refused_and_not_stored(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    listener = await Client.connect(url_of(relay))
    assert await listener.req("live", {"authors": [keys.pubkey]}) == []
    now = int(time.time())
    for expiration in (now - 1, now - 3600, 1):
        event = expiring(keys, expiration, created_at=now - 7200, content=str(expiration))
        assert await client.publish(event) == ["OK", event["id"], False, EXPIRED_REASON]
        assert await client.req("check", {"ids": [event["id"]]}) == []
        assert stored_rows(relay, event["id"]) == (0, 0)
    await listener.expect_silence()
    await listener.close()


async def test_expiring_event_is_served_until_it_expires(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    listener = await Client.connect(url_of(relay))
    assert await listener.req("live", {"authors": [keys.pubkey]}) == []
    expiration = int(time.time()) + LIFETIME
    event = expiring(keys, expiration, tags=[["t", "soon"]])
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    assert await listener.recv() == ["EVENT", "live", event]
    await listener.close()
    assert await client.req("before", {"ids": [event["id"]]}) == [event]
    assert await client.req("by-tag", {"#t": ["soon"]}) == [event]

    async def gone() -> bool:
        return await client.req("after", {"authors": [keys.pubkey]}) == []

    assert await poll(gone, timeout=LIFETIME + 3), "expired event still served"
    # Not before its time: NIP-40 expiration is the second the event stops being valid.
    assert time.time() >= expiration
    assert await client.req("by-tag-after", {"#t": ["soon"]}) == []


async def test_expired_event_is_not_served_while_still_stored(
    start_relay: RelayFactory, keys: Keys
) -> None:
    # The first purge runs with the first commit; the next one is an hour away.
    relay = await start_relay(purge_interval=3600)
    client = await Client.connect(url_of(relay))
    event = expiring(keys, int(time.time()) + LIFETIME)
    assert (await client.publish(event))[2] is True

    async def gone() -> bool:
        return await client.req("after", {"ids": [event["id"]]}) == []

    assert await poll(gone, timeout=LIFETIME + 3)
    assert stored_rows(relay, event["id"])[0] == 1
    # And a REQ without ids does not find it either, nor count it against a limit.
    kept = keys.sign(content="kept", created_at=event["created_at"] - 1)
    await client.publish(kept)
    assert await client.req("all", {"limit": 1}) == [kept]
    await client.close()


async def test_purge_removes_expired_events_from_the_database(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(purge_interval=0)
    client = await Client.connect(url_of(relay))
    event = expiring(keys, int(time.time()) + LIFETIME, tags=[["t", "purge"], ["p", keys.pubkey]])
    forever = keys.sign(content="never expires")
    for e in (event, forever):
        assert (await client.publish(e))[2] is True
    assert stored_rows(relay, event["id"]) == (1, 2)

    async def gone() -> bool:
        return await client.req("after", {"ids": [event["id"]]}) == []

    assert await poll(gone, timeout=LIFETIME + 3)
    # The purge runs with the writer, after a commit: give it one.
    assert (await client.publish(keys.sign(content="trigger")))[2] is True

    async def purged() -> bool:
        return stored_rows(relay, event["id"]) == (0, 0)

    assert await poll(purged, timeout=3), "expired event still in the database"
    assert stored_rows(relay, forever["id"])[0] == 1
    await client.close()


async def test_purge_runs_on_an_idle_relay(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(purge_interval=1)
    client = await Client.connect(url_of(relay))
    event = expiring(keys, int(time.time()) + LIFETIME)
    assert (await client.publish(event))[2] is True
    await client.close()

    async def purged() -> bool:
        return stored_rows(relay, event["id"]) == (0, 0)

    assert await poll(purged, timeout=LIFETIME + 3), "expired event never purged without writes"


@pytest.mark.parametrize(
    "tag",
    [
        ["expiration", "soon"],
        ["expiration", ""],
        ["expiration", "1.5"],
        ["expiration", "-1"],
        ["expiration", " 1"],
        ["expiration", "\u0661"],  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes
        ["expiration", "9" * 19],
        ["expiration"],
    ],
)
async def test_malformed_expiration_counts_as_none(
    start_relay: RelayFactory, keys: Keys, tag: list[str]
) -> None:
    relay = await start_relay(purge_interval=0)
    client = await Client.connect(url_of(relay))
    event = keys.sign(tags=[tag])
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    # Another commit runs a purge: the event is not taken for expired.
    await client.publish(keys.sign(content="trigger"))
    assert await client.req("check", {"ids": [event["id"]]}) == [event]
    assert stored_rows(relay, event["id"])[0] == 1
    await client.close()
