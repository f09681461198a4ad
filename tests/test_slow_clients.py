"""Clients that stop reading, stop answering pings, or ask for too much at once."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from relay.config import Settings
from relay.net.server import RelayServer
from relay.store.sqlite import SqliteStore
from tests.conftest import RelayFactory, RelayProcess, url_of, wait_for
from tests.http_client import metric, scrape
from tests.nostr import Client, Keys
from tests.raw_ws import RawClient

OVERFLOW_NOTICE = ["NOTICE", "error: too many unread messages, disconnecting"]


async def publish_many(url: str, keys: Keys, count: int, size: int) -> None:
    client = await Client.connect(url)
    for n in range(count):
        assert (await client.publish(keys.sign(content=f"{n}:" + "x" * size)))[2] is True
    await client.close()


def flood(raw: RawClient, subscriptions: int, limit: int) -> None:
    """REQs whose stored events the client will not read."""
    for n in range(subscriptions):
        raw.send_json(["REQ", f"s{n}", {"kinds": [1], "limit": limit}])


def text_and_close(frames: list[tuple[int, bytes]]) -> tuple[list[Any], int | None]:
    texts = [orjson.loads(payload) for opcode, payload in frames if opcode == 0x1]
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    code = struct.unpack("!H", closes[0][:2])[0] if closes else None
    return texts, code


async def test_a_client_that_stops_reading_gets_a_notice_and_1008(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(max_outbox_bytes=64 * 1024, close_timeout=20)
    bystander = await Client.connect(url_of(relay))
    assert await bystander.req("live", {"authors": [keys.pubkey], "limit": 0}) == []
    raw = await RawClient.connect(relay.port)
    raw.send_json(["REQ", "all", {"kinds": [1], "limit": 0}])
    await raw.writer.drain()
    # Live events pile up for a client that reads nothing: about 16 MB of them, past
    # what the kernel's socket buffers take on loopback.
    await publish_many(url_of(relay), keys, 400, 40_000)
    await wait_for(lambda: any(c.outbox.closed for c in relay.connections), timeout=30)
    # Read now: what the kernel held, then the NOTICE and the close frame.
    texts, code = text_and_close(await raw.read_frames(timeout=30))
    raw.close()
    await wait_for(lambda: len(relay.connections) == 1, timeout=30)
    assert texts[-1] == OVERFLOW_NOTICE
    assert code == 1008
    assert metric(await scrape(relay.port), "relay_outbox_drops_total") == 1
    # Others go on.
    for _ in range(400):
        assert (await bystander.recv())[:2] == ["EVENT", "live"]
    event = keys.sign(content="after the slow one")
    await publish_one(url_of(relay), event)
    assert await bystander.recv() == ["EVENT", "live", event]
    await bystander.close()


async def test_a_reading_client_gets_a_result_many_times_its_outbox(
    start_relay: RelayFactory, keys: Keys
) -> None:
    """Stored results wait for the client to read them: no NOTICE, no disconnect."""
    relay = await start_relay(max_outbox_bytes=256 * 1024, query_page_bytes=64 * 1024)
    await publish_many(url_of(relay), keys, 70, 60_000)  # 4.2 MB, 16 times the outbox
    client = await Client.connect(url_of(relay))
    got = await client.req("feed", {"kinds": [1]}, {"authors": [keys.pubkey]})
    assert len(got) == 70
    assert {e["content"].split(":")[0] for e in got} == {str(n) for n in range(70)}
    assert got == sorted(got, key=lambda e: (-e["created_at"], e["id"]))
    assert await client.req("again", {"kinds": [1], "limit": 1}) == [got[0]]
    await client.close()


async def publish_one(url: str, event: dict[str, Any]) -> None:
    client = await Client.connect(url)
    assert (await client.publish(event))[2] is True
    await client.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_memory_stays_bounded_while_clients_refuse_to_read(
    relay_process: Any, keys: Keys
) -> None:
    # Their queries wait for them to read; pings (unanswered) end them.
    process: RelayProcess = relay_process(
        {
            "RELAY_MAX_OUTBOX_BYTES": str(256 * 1024),
            "RELAY_MAX_SUBSCRIPTIONS": "500",
            "RELAY_MAX_QUERIES_IN_FLIGHT": "500",
            "RELAY_PING_INTERVAL": "1",
            "RELAY_PING_TIMEOUT": "1",
            "RELAY_CLOSE_TIMEOUT": "1",
        }
    )
    process.start()
    assert process.proc is not None
    pid = process.proc.pid
    await publish_many(process.url, keys, 50, 8000)  # 400 kB per REQ below

    async def one_round(clients: int) -> list[int | None]:
        raws = [await RawClient.connect(process.port) for _ in range(clients)]
        for raw in raws:
            flood(raw, 120, 50)  # about 48 MB each if the relay buffered it all
            await raw.writer.drain()
        # Measured while the relay still holds whatever it keeps for them.
        await asyncio.sleep(0.5)
        rss.append(rss_kib(pid))
        codes = []
        for raw in raws:
            codes.append(text_and_close(await raw.read_frames(timeout=60))[1])
            raw.close()
        return codes

    rss: list[int] = []
    await one_round(1)  # warm up: caches, allocator arenas
    codes = await one_round(4)  # ~190 MB of replies nobody reads
    assert rss[1] - rss[0] < 40 * 1024, f"RSS grew from {rss[0]} to {rss[1]} KiB"
    # 1011: the keepalive ping went unanswered.
    assert codes == [1011] * 4
    # Still serving.
    event = keys.sign(content="still up")
    await publish_one(process.url, event)


async def test_dead_peer_is_dropped_and_idle_subscriber_kept(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(ping_interval=0.1, ping_timeout=0.1, close_timeout=0.1)
    subscriber = await Client.connect(url_of(relay))  # answers pings, sends nothing
    assert await subscriber.req("live", {"authors": [keys.pubkey]}) == []
    dead = await RawClient.connect(relay.port)  # never answers a ping
    dead.send_json(["REQ", "dead", {"kinds": [1]}])
    await wait_for(lambda: len(relay.connections) == 1, timeout=10)
    await asyncio.sleep(1.0)  # idle for many ping intervals
    event = keys.sign(content="for the patient")
    await publish_one(url_of(relay), event)
    assert await subscriber.recv() == ["EVENT", "live", event]
    dead.close()
    await subscriber.close()


async def test_long_queries_are_interrupted_and_others_still_answered(
    tmp_path: Path, keys: Keys
) -> None:
    settings = Settings(host="127.0.0.1", port=0, db=str(tmp_path / "q.sqlite"))
    # A deadline every query of more than a few thousand SQLite steps misses.
    store = SqliteStore(settings.db, readers=1, synchronous="NORMAL", query_timeout=1e-9)
    relay = RelayServer(replace(settings, query_timeout=1e-9), store)
    await relay.start()
    try:
        await publish_many(url_of(relay), keys, 300, 10)
        hog = await Client.connect(url_of(relay))
        other = await Client.connect(url_of(relay))
        await hog.send(["REQ", "all", {"limit": 300}, {"kinds": [1], "limit": 300}])
        target = keys.sign(content="find me")
        await publish_one(url_of(relay), target)
        assert await hog.recv() == [
            "CLOSED",
            "all",
            "error: the query took too long, narrow the filter",
        ]
        await hog.send(["COUNT", "n", {"kinds": [1]}])
        assert await hog.recv() == [
            "CLOSED",
            "n",
            "error: the count took too long, narrow the filter",
        ]
        # A narrow query on the same single reader connection is answered.
        assert await other.req("one", {"ids": [target["id"]]}) == [target]
        # The subscription was closed: no live events for it.
        await publish_one(url_of(relay), keys.sign(content="later"))
        await hog.expect_silence()
        await hog.close()
        await other.close()
    finally:
        await relay.stop()
