"""Faults: kill -9 during heavy ingest (repeated) and a full or read-only database."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from relay.net.server import RelayServer
from relay.store.sqlite import SqliteStore, run_on_connection
from tests.conftest import RelayFactory, RelayProcess, fetch_by_ids, url_of, wait_for
from tests.nostr import Client, Keys

ROUNDS = 3
PUBLISHERS = 2
EVENTS_EACH = 400
# OKs to wait for before the kill: ingest is in full swing then.
KILL_AFTER_OKS = 150


def stored_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0].hex() for row in conn.execute("SELECT id FROM events")}


def integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def collect_oks(client: Client, oks: dict[str, bool]) -> None:
    """Every OK until the connection dies."""
    try:
        while True:
            frame = await client.recv(timeout=30)
            if frame[0] == "OK":
                oks[frame[1]] = frame[2]
    except (ConnectionClosed, OSError):
        return


async def send_until_dead(client: Client, events: list[dict[str, Any]]) -> None:
    try:
        for event in events:
            await client.send(["EVENT", event])
    except (ConnectionClosed, OSError):
        return


async def one_round(process: RelayProcess, round_no: int) -> set[str]:
    """Publish hard from several connections, kill -9 midway; the ids that got OK true."""
    await asyncio.to_thread(process.start)
    assert process.proc is not None
    keys = Keys()
    events = [
        [keys.sign(content=f"round {round_no} publisher {p} event {n}") for n in range(EVENTS_EACH)]
        for p in range(PUBLISHERS)
    ]
    clients = [await Client.connect(process.url) for _ in range(PUBLISHERS)]
    oks: dict[str, bool] = {}
    readers = [asyncio.create_task(collect_oks(c, oks)) for c in clients]
    senders = [
        asyncio.create_task(send_until_dead(c, e)) for c, e in zip(clients, events, strict=True)
    ]
    await wait_for(lambda: len(oks) >= KILL_AFTER_OKS, timeout=30)
    process.kill()
    await asyncio.gather(*readers, *senders)
    assert len(oks) < PUBLISHERS * EVENTS_EACH, "the kill came after the last OK"
    assert all(oks.values()), "a plain event was refused"
    return set(oks)


async def test_kill_9_during_ingest_repeated_loses_nothing_acknowledged(
    relay_process: Any,
) -> None:
    acknowledged: set[str] = set()
    for round_no in range(ROUNDS):
        process: RelayProcess = relay_process()  # the same database file every round
        acknowledged |= await one_round(process, round_no)
        assert integrity(process.db) == "ok"
        assert acknowledged <= stored_ids(process.db), "an acknowledged event is missing"
    final: RelayProcess = relay_process()
    await asyncio.to_thread(final.start)
    some = sorted(acknowledged)[:500]
    assert {e["id"] for e in await fetch_by_ids(final.url, *some)} == set(some)
    final.kill()


# --- a full disk ----------------------------------------------------------------------------


async def cap_database_size(relay: RelayServer, pages: int | None) -> None:
    """Test hook: SQLite's max_page_count makes the file 'full' at its current size."""
    store = relay.store
    assert isinstance(store, SqliteStore)

    def apply(db: sqlite3.Connection) -> None:
        limit = pages if pages is not None else db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {int(limit)}")

    await run_on_connection(store.writer, apply)


async def test_full_disk_refuses_with_error_keeps_reads_and_recovers(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    before = keys.sign(content="stored before the disk filled")
    assert (await client.publish(before))[2] is True

    await cap_database_size(relay, None)
    refused = []
    oks: dict[str, list[Any]] = {}
    for n in range(40):
        event = keys.sign(content=f"{n} " + "x" * 4000)
        oks[event["id"]] = await client.publish(event)
    refused = [i for i, ok in oks.items() if ok[2] is False]
    assert refused, "the database never filled up"
    for event_id in refused:
        assert oks[event_id][3].startswith("error: "), oks[event_id]
    # Reads still work, and nothing acknowledged is missing or refused is present.
    reader = await Client.connect(url_of(relay))
    found = {e["id"] for e in await reader.req("all", {"authors": [keys.pubkey], "limit": 100})}
    assert before["id"] in found
    assert {i for i, ok in oks.items() if ok[2] is True} <= found
    assert not found & set(refused)

    await cap_database_size(relay, 2**30)  # space returns
    after = keys.sign(content="stored after space returned")
    assert await client.publish(after) == ["OK", after["id"], True, ""]
    retried = keys.sign(content="x" * 4000)
    assert (await client.publish(retried))[2] is True
    assert {e["id"] for e in await reader.req("new", {"ids": [after["id"], retried["id"]]})} == {
        after["id"],
        retried["id"],
    }
    await reader.close()
    await client.close()
