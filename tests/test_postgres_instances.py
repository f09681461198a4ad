"""Three relay processes on one PostgreSQL database, as behind one URL.

Each serves what any of them stored, stored and live; kill -9 of one while all three are
being written to leaves the other two serving, and every event any of them acknowledged
with OK true is there, whichever instance took it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from tests.conftest import PgRelayProcess
from tests.nostr import Client, Keys

PER_INSTANCE = 10


async def collect(client: Client, sub_id: str, count: int) -> list[str]:
    """The ids of the next `count` events of a subscription."""
    ids: list[str] = []
    while len(ids) < count:
        reply = await client.recv(10)
        assert reply[:2] == ["EVENT", sub_id], reply
        ids.append(reply[2]["id"])
    return ids


async def test_every_instance_serves_what_any_stored(
    pg_instances: Callable[[], PgRelayProcess],
) -> None:
    relays = [pg_instances() for _ in range(3)]
    keys = Keys()
    subscribers = [await Client.connect(r.url) for r in relays]
    publishers = [await Client.connect(r.url) for r in relays]
    try:
        for sub in subscribers:
            assert await sub.req("live", {"authors": [keys.pubkey]}) == []
        published: list[str] = []
        for n in range(PER_INSTANCE):
            for i, pub in enumerate(publishers):
                event = keys.sign(content=f"{i}/{n}")
                assert (await pub.publish(event))[2] is True
                published.append(event["id"])
        for sub in subscribers:
            # Live, each once: then the sentinel REQ's EOSE, nothing repeated before it.
            assert Counter(await collect(sub, "live", len(published))) == Counter(published)
            assert await sub.req("sentinel", {"ids": ["0" * 64]}) == []
        for sub in subscribers:
            stored = await sub.req("all", {"authors": [keys.pubkey], "limit": 1000})
            assert sorted(e["id"] for e in stored) == sorted(published)
    finally:
        for client in subscribers + publishers:
            await client.close()


async def stream(url: str, keys: Keys, count: int, acked: list[str], tag: str) -> None:
    """Publish `count` events without waiting for each OK; record those acknowledged with
    OK true. Ends early, without error, if the connection drops."""
    start = int(time.time()) - count
    events = [keys.sign(content=f"{tag} {n}", created_at=start + n) for n in range(count)]
    client = await Client.connect(url)
    try:

        async def send_all() -> None:
            for event in events:
                await client.send(["EVENT", event])
                # Leave the relay room to answer: OKs come while later events are sent.
                await asyncio.sleep(0.002)

        sender = asyncio.create_task(send_all())
        answered = 0
        while answered < count:
            reply: list[Any] = await client.recv(15)
            if reply[0] != "OK":
                continue
            answered += 1
            assert reply[2] is True, reply
            acked.append(reply[1])
        await sender
    except ConnectionClosed:
        pass
    finally:
        await client.close()


async def test_kill_one_instance_under_load(
    pg_instances: Callable[[], PgRelayProcess],
) -> None:
    a, b, c = (pg_instances() for _ in range(3))
    keys = Keys()
    count = 300
    acked: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    watcher = await Client.connect(a.url)
    try:
        await watcher.req("live", {"authors": [keys.pubkey], "#t": ["b"]})
        writers = [
            asyncio.create_task(stream(r.url, keys, count, acked[name], name))
            for name, r in (("a", a), ("b", b), ("c", c))
        ]
        deadline = time.monotonic() + 30
        while len(acked["c"]) < count // 5:
            assert time.monotonic() < deadline, "instance c acknowledged too little"
            await asyncio.sleep(0.01)
        c.kill()
        await asyncio.wait_for(asyncio.gather(*writers), 60)
        # The survivors took every event of theirs; c some, then its connection dropped.
        assert len(acked["a"]) == count
        assert len(acked["b"]) == count
        assert count // 5 <= len(acked["c"]) < count
        everything = acked["a"] + acked["b"] + acked["c"]
        for survivor in (a, b):
            reader = await Client.connect(survivor.url)
            try:
                found = await reader.req("all", {"authors": [keys.pubkey], "limit": 5000})
            finally:
                await reader.close()
            found_ids = {e["id"] for e in found}
            assert not set(everything) - found_ids, "an acknowledged event is missing"
        # Live fan-out between the survivors still works after the kill.
        late = keys.sign(content="after the kill", tags=[["t", "b"]])
        publisher = await Client.connect(b.url)
        try:
            assert (await publisher.publish(late))[2] is True
        finally:
            await publisher.close()
        assert await collect(watcher, "live", 1) == [late["id"]]
    finally:
        await watcher.close()
