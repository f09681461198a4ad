"""Faults: kill -9 during heavy ingest (repeated), a full disk, a read-only database, and
the database file deleted under the relay; what /health says of each."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from relay.core.event import Event, parse_event
from relay.net.server import RelayServer
from relay.store.base import SaveOutcome
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore, run_on_connection
from relay.store.sqlite_writes import prepare_database, purge_expired, save_batch
from relay.store.writer import StoreFailure, Writer
from tests.conftest import RelayFactory, RelayProcess, fetch_by_ids, url_of, wait_for
from tests.http_client import http_request
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


async def on_writer(relay: RelayServer, statement: str) -> None:
    """Test hook: run a PRAGMA on the store's writer connection."""
    store = relay.store
    assert isinstance(store, SqliteStore)
    await run_on_connection(store.writer, lambda db: db.execute(statement).fetchall())


async def fill_disk(relay: RelayServer) -> None:
    """SQLite's max_page_count makes the file 'full' at its current size (no root needed)."""
    store = relay.store
    assert isinstance(store, SqliteStore)

    def cap(db: sqlite3.Connection) -> None:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {int(pages)}")

    await run_on_connection(store.writer, cap)


async def free_disk(relay: RelayServer) -> None:
    await on_writer(relay, "PRAGMA max_page_count = 1073741823")


async def make_read_only(relay: RelayServer) -> None:
    # chmod cannot make a file read-only for root; query_only refuses every write alike.
    await on_writer(relay, "PRAGMA query_only = ON")


async def make_writable(relay: RelayServer) -> None:
    await on_writer(relay, "PRAGMA query_only = OFF")


Fault = Callable[[RelayServer], Awaitable[None]]
# Each fault, its repair, and SQLite's own words for it, which the log must show.
FAULTS: dict[str, tuple[Fault, Fault, str]] = {
    "full disk": (fill_disk, free_disk, "database or disk is full"),
    "read-only database": (make_read_only, make_writable, "attempt to write a readonly database"),
}


def test_a_full_disk_is_the_error_raised_not_the_rollback_after_it(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself on SQLITE_FULL: the ROLLBACK that follows
    fails, and must not replace the error that says what is wrong."""
    db = sqlite3.connect(tmp_path / "full.sqlite", isolation_level=None)
    prepare_database(db, "NORMAL", search=False)
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    keys = Keys()
    batch = [parse_event(keys.sign(content=f"{n} " + "x" * 4000)) for n in range(3)]
    for _ in range(2):  # the next batch meets the same error, not a transaction left open
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            save_batch(db, batch)
    db.execute("PRAGMA max_page_count = 1073741823")
    assert save_batch(db, batch) == [SaveOutcome.STORED] * 3
    # What a rollback that failed leaves behind: the next write still begins.
    db.execute("BEGIN")
    assert purge_expired(db, 0) == 0
    assert save_batch(db, batch[:1]) == [SaveOutcome.DUPLICATE]
    db.close()


@pytest.mark.parametrize("fault", FAULTS)
async def test_unwritable_database_refuses_with_error_keeps_reads_and_recovers(
    start_relay: RelayFactory, keys: Keys, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    before = keys.sign(content="stored before the fault")
    assert (await client.publish(before))[2] is True

    break_it, repair, sqlite_error = FAULTS[fault]
    await break_it(relay)
    oks: dict[str, list[Any]] = {}
    for n in range(40):
        event = keys.sign(content=f"{n} " + "x" * 4000)
        oks[event["id"]] = await client.publish(event)
    refused = [i for i, ok in oks.items() if ok[2] is False]
    assert refused, "no write was refused"
    for event_id in refused:
        assert oks[event_id][3].startswith("error: "), oks[event_id]
    # Reads still work; nothing acknowledged is missing and nothing refused is there.
    reader = await Client.connect(url_of(relay))
    found = {e["id"] for e in await reader.req("all", {"authors": [keys.pubkey], "limit": 100})}
    assert before["id"] in found
    assert {i for i, ok in oks.items() if ok[2] is True} <= found
    assert not found & set(refused)
    # The operator reads what went wrong, not what went wrong while cleaning up.
    logged = [r.getMessage() for r in caplog.records if r.name == "relay.writer"]
    assert logged
    assert all(sqlite_error in line for line in logged), logged

    await repair(relay)
    after = keys.sign(content="x" * 4000)
    assert await client.publish(after) == ["OK", after["id"], True, ""]
    assert await reader.req("new", {"ids": [after["id"]]}) == [after]
    await reader.close()
    await client.close()


# --- a read that does not end -----------------------------------------------------------

# Seconds of work on one core (about 4 s here): far longer than the close takes.
LONG_READ = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 10000000)"
    " SELECT count(*) FROM n"
)


async def test_closing_the_store_interrupts_a_read_still_running(tmp_path: Path) -> None:
    """At shutdown a query whose REQ is gone must not hold the close for up to
    query_timeout: it is interrupted, not run to its end."""
    store = SqliteStore(tmp_path / "s.sqlite", readers=1)
    await store.open()
    started = threading.Event()

    def long_read(db: sqlite3.Connection) -> Any:
        started.set()
        return db.execute(LONG_READ).fetchone()

    reading = asyncio.create_task(store._read(long_read))
    assert await asyncio.to_thread(started.wait, 5)
    await asyncio.sleep(0.05)  # past started.set(): the statement is running
    await store.close()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        await reading


# --- /health -------------------------------------------------------------------------------


async def health(relay: RelayServer) -> int:
    return (await http_request(relay.port, path="/health")).status


async def test_health_fails_while_writes_fail_and_recovers_when_one_commits(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    assert await health(relay) == 200
    await fill_disk(relay)
    assert await health(relay) == 200  # nothing has been tried yet
    replies = [await client.publish(keys.sign(content=f"{n} " + "x" * 4000)) for n in range(40)]
    assert replies[-1][2] is False, "the disk never filled"
    assert await health(relay) == 503
    await free_disk(relay)
    assert await health(relay) == 503  # until a write shows it
    event = keys.sign(content="after")
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    assert await health(relay) == 200
    await client.close()


def move(source: Path, target: Path) -> None:
    source.rename(target)


def remove(path: Path) -> None:
    path.unlink()


def replace_with_copy(db: Path, copy: Path) -> None:
    """Another file at the same path, with the same content."""
    copy.write_bytes(db.read_bytes())
    db.unlink()
    copy.rename(db)


async def test_health_fails_once_the_database_file_is_deleted_or_replaced(
    start_relay: RelayFactory, tmp_path: Path, keys: Keys
) -> None:
    relay = await start_relay()
    db = Path(relay.settings.db)
    assert await health(relay) == 200
    move(db, tmp_path / "moved.sqlite")
    assert await health(relay) == 503
    move(tmp_path / "moved.sqlite", db)
    assert await health(relay) == 200  # put back, it is the same file again
    # What the relay writes from now on would not be in the file at its path.
    replace_with_copy(db, tmp_path / "copy.sqlite")
    assert await health(relay) == 503
    remove(db)
    assert await health(relay) == 503
    # Writes still commit (to the unlinked file): health does not rest on them alone.
    client = await Client.connect(url_of(relay))
    assert (await client.publish(keys.sign()))[2] is True
    assert await health(relay) == 503
    await client.close()


class FailingStore(MemoryStore):
    """Every commit fails while `broken`."""

    broken = True

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        return await super().save_many(events, now)


async def test_a_failed_commit_counts_for_the_window_or_until_a_commit_succeeds() -> None:
    clock = [1000.0]
    store = FailingStore()
    writer = Writer(store, purge_interval=0, clock=lambda: clock[0])
    writer.start()
    try:
        keys = Keys()
        assert not writer.failing(60)
        with pytest.raises(StoreFailure):
            await writer.save(parse_event(keys.sign(content="one")))
        assert writer.failing(60)
        clock[0] += 59
        assert writer.failing(60)
        clock[0] += 1
        assert not writer.failing(60)  # idle past the window: tried again
        with pytest.raises(StoreFailure):
            await writer.save(parse_event(keys.sign(content="two")))
        assert writer.failing(60)
        store.broken = False
        assert await writer.save(parse_event(keys.sign(content="three"))) is SaveOutcome.STORED
        assert not writer.failing(60)
    finally:
        await writer.close()
