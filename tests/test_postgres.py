"""The PostgreSQL store's own behaviour: schema and migrations, search switched on later,
query timeouts, a lost connection, `--db postgresql://...`, two relay processes on one
database. The rules every store shares are in test_store_property.py (the `store`
fixture), the race between instances in test_postgres_race.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from relay.app import build_store
from relay.config import Settings
from relay.core.event import Event, parse_event
from relay.core.filters import Filter, parse_filter
from relay.store import pg_batch
from relay.store.base import QueryTimeout, SaveOutcome
from relay.store.postgres import (
    SAVE_BATCH,
    SCHEMA_VERSION,
    PostgresStore,
    describe,
    load_migration,
)
from relay.store.sqlite import SqliteStore
from tests.conftest import RelayProcess, free_port
from tests.nostr import Client, Keys

NOW = 1_700_000_000


def note(keys: Keys, content: str, created_at: int = NOW - 10, kind: int = 1) -> Event:
    return parse_event(keys.sign(kind=kind, content=content, created_at=created_at))


async def fetch(pg_url: str, sql: str) -> object:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_first_start_creates_the_schema_and_records_its_version(pg_url: str) -> None:
    stores = [PostgresStore(pg_url, readers=1) for _ in range(3)]
    # Instances starting together: one migrates, the others find it done.
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        await s.close()
    every_version = list(range(1, SCHEMA_VERSION + 1))
    assert await fetch(pg_url, "SELECT array_agg(version) FROM schema_version") == every_version
    again = PostgresStore(pg_url, readers=1)
    await again.open()
    await again.close()
    assert await fetch(pg_url, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION


async def test_a_version_1_database_is_migrated_keeping_its_events(pg_url: str) -> None:
    """A database a relay of schema version 1 made gets every later version."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        await conn.execute(load_migration(1))
        await conn.execute("INSERT INTO schema_version VALUES (1)")
    finally:
        await conn.close()
    old = PostgresStore(pg_url, readers=1)
    # Saving through the v1 schema's own function, before the migration runs.
    kept = note(Keys(), "from version 1")
    args = pg_batch.batch_args([kept], with_search=True).as_tuple()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.fetchval(SAVE_BATCH, *args)
    finally:
        await conn.close()
    await old.open()
    try:
        assert await old.query([Filter()], NOW) == [kept.raw]
    finally:
        await old.close()
    every_version = list(range(1, SCHEMA_VERSION + 1))
    assert await fetch(pg_url, "SELECT array_agg(version) FROM schema_version") == every_version
    assert await fetch(pg_url, "SELECT count(*) FROM moderation") == 0


async def test_a_version_2_database_gets_saves_that_apply_its_bans(pg_url: str) -> None:
    """Version 3 replaces relay_save_batch: the bans already in the table now hold in the
    database too, and what version 2 stored stays."""
    spammer = Keys()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        for version in (1, 2):
            await conn.execute(load_migration(version))
            await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
        await conn.execute(
            "INSERT INTO moderation VALUES ('banned_pubkeys', $1, 'spam')", spammer.pubkey
        )
        # Version 2's function stores a banned pubkey's event (only the relay checked).
        slipped = note(spammer, "stored by version 2")
        args = pg_batch.batch_args([slipped], with_search=True).as_tuple()
        assert await conn.fetchval(SAVE_BATCH, *args) == [0]
    finally:
        await conn.close()
    store = PostgresStore(pg_url, readers=1)
    await store.open()
    try:
        assert await store.save_many([note(spammer, "after")], NOW) == [SaveOutcome.BANNED_PUBKEY]
        assert await store.query([Filter()], NOW) == [slipped.raw]
    finally:
        await store.close()
    assert await fetch(pg_url, "SELECT array_agg(version) FROM schema_version") == [1, 2, 3]


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url, readers=1)
    await store.open()
    await store.close()
    await fetch(pg_url, "INSERT INTO schema_version VALUES (99) RETURNING version")
    with pytest.raises(OSError, match="schema version 99, newer"):
        await PostgresStore(pg_url, readers=1).open()


async def test_an_unreachable_server_is_an_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    store = PostgresStore(f"postgresql://relay:s3cret@127.0.0.1:{port}/relay")
    with pytest.raises(OSError, match=f"cannot open database postgresql://127.0.0.1:{port}/relay"):
        await store.open()
    assert "s3cret" not in describe(store.dsn)


def test_a_postgresql_url_selects_postgres_a_path_sqlite() -> None:
    assert isinstance(build_store(Settings(db="postgresql://u@h/db")), PostgresStore)
    assert isinstance(build_store(Settings(db="postgres://u@h/db")), PostgresStore)
    assert isinstance(build_store(Settings(db=":memory:")), SqliteStore)


async def test_search_switched_on_fills_the_words_written_while_off(pg_url: str) -> None:
    keys = Keys()
    store = PostgresStore(pg_url, readers=1, search=False)
    await store.open()
    await store.save_many([note(keys, "written while search was off")], NOW)
    assert await store.query([parse_filter({"search": "written"})], NOW) == []
    await store.close()
    store = PostgresStore(pg_url, readers=1)
    await store.open()
    try:
        await store.save_many([note(keys, "written while search was on")], NOW)
        assert len(await store.query([parse_filter({"search": "written off"})], NOW)) == 1
        assert len(await store.query([parse_filter({"search": "WRITTEN"})], NOW)) == 2
        assert await store.count([parse_filter({"search": "on"})], NOW) == 1
    finally:
        await store.close()


async def test_search_ranks_by_relevance(pg_url: str) -> None:
    keys = Keys()
    weak = note(keys, "nostr once, among many other words here", created_at=NOW - 1)
    strong = note(keys, "nostr nostr nostr", created_at=NOW - 2)
    store = PostgresStore(pg_url, readers=1)
    await store.open()
    try:
        await store.save_many([weak, strong], NOW)
        assert await store.query([parse_filter({"search": "nostr"})], NOW) == [
            strong.raw,
            weak.raw,
        ]
        assert await store.query([Filter()], NOW) == [weak.raw, strong.raw]
    finally:
        await store.close()


async def test_a_query_past_its_time_is_interrupted(pg_url: str) -> None:
    store = PostgresStore(pg_url, readers=1, query_timeout=0.05)
    await store.open()
    try:
        with pytest.raises(QueryTimeout):
            await store._read(lambda conn: conn.fetchval("SELECT pg_sleep(5)"))
        assert await store.query([Filter()], NOW) == []  # the reader is usable again
    finally:
        await store.close()


async def wait_for_row(conn: asyncpg.Connection, sql: str) -> None:
    """Until `sql` counts a row: the server's state has no event to wait on."""
    for _ in range(1000):
        if await conn.fetchval(sql) > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no row for {sql} in 10 s")


async def test_a_batch_cut_off_by_a_lost_connection_stores_nothing(pg_url: str) -> None:
    keys = Keys()
    event = note(keys, "during the outage")
    store = PostgresStore(pg_url, readers=1)
    await store.open()
    admin = await asyncpg.connect(pg_url)
    try:
        assert store._writer is not None
        async with store._writer.acquire() as conn:
            pid = conn.get_server_pid()
        # Hold the author's lock: the batch waits inside its transaction.
        await admin.execute("SELECT pg_advisory_lock($1)", pg_batch.lock_key(keys.pubkey))
        saving = asyncio.create_task(store.save_many([event], NOW))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        await wait_for_row(admin, waiting)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await saving
        await admin.execute("SELECT pg_advisory_unlock_all()")
        # Nothing of it was stored (STORED, not DUPLICATE), and the writer reconnected.
        assert await store.save_many([event], NOW) == [SaveOutcome.STORED]
        assert await store.query([Filter()], NOW) == [event.raw]
    finally:
        await admin.close()
        await store.close()


class PostgresRelayProcess(RelayProcess):
    """`python -m relay --db postgresql://...`."""

    def __init__(self, database: str) -> None:
        super().__init__(Path(), free_port())
        self.database = database

    @property
    def db_arg(self) -> str:
        return self.database


async def test_two_relay_processes_share_one_database(pg_url: str) -> None:
    a, b = PostgresRelayProcess(pg_url), PostgresRelayProcess(pg_url)
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        keys, now = Keys(), int(time.time())
        first, second = await Client.connect(a.url), await Client.connect(b.url)
        try:
            old = keys.sign(kind=0, content="old profile", created_at=now - 20)
            new = keys.sign(kind=0, content="new profile", created_at=now - 10)
            assert (await first.publish(new))[2] is True
            # The older version arrives through the other instance: it must not win.
            reply = await second.publish(old)
            assert reply[2:] == [False, "duplicate: have a newer version of this event"]
            assert await first.req("p", {"kinds": [0], "authors": [keys.pubkey]}) == [new]
            deletion = keys.sign(kind=5, tags=[["e", new["id"]]])
            assert (await second.publish(deletion))[2] is True
            assert await first.req("d", {"ids": [new["id"]]}) == []
            assert (await first.publish(new))[2:] == [
                False,
                "blocked: this event was deleted by its author",
            ]
        finally:
            await first.close()
            await second.close()
        assert await asyncio.to_thread(a.terminate) == 0
        assert await asyncio.to_thread(b.terminate) == 0
    finally:
        a.kill()
        b.kill()


async def test_query_pages_are_slices_of_the_query(pg_url: str) -> None:
    keys = Keys()
    events = [note(keys, f"note {n}", created_at=NOW - n) for n in range(7)]
    store = PostgresStore(pg_url, readers=1)
    await store.open()
    try:
        await store.save_many(events, NOW)
        size = len(events[0].raw)
        pages = [
            page
            async for page in store.query_pages(
                [Filter()], NOW, owner=object(), page_events=3, page_bytes=2 * size - 1
            )
        ]
        # A page ends after the event that crosses page_bytes: bytes bind before the count.
        assert [len(page) for page in pages] == [2, 2, 2, 1]
        assert [raw for page in pages for raw in page] == [e.raw for e in events]
    finally:
        await store.close()
