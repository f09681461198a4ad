"""PostgreSQL storage through asyncpg, for several relay processes on one database.

Chosen with `--db postgresql://user@host/dbname` (relay/app.py). One connection writes,
a pool of `readers` connections answers queries; both come back by themselves when the
server restarts (asyncpg's pools reconnect on the next acquire).

Writes. A batch from the writer is one call of the server-side function relay_save_batch
(postgres_v1.sql; postgres_v3.sql's also applies the NIP-86 moderation table) inside one
transaction: one round trip applies every event in order, with the rules of
store/memory.py, and the outcomes are returned once COMMIT has returned
(synchronous_commit is forced on for the writer connection).

Several writers at once. Every rule of the store is about one pubkey: an address is
(kind, pubkey, d); a deletion or a request to vanish erases only its author's events
(and, for vanish, the gift wraps addressed to that author); a duplicate id has one author.
So each batch first takes a transaction-level advisory lock per pubkey it touches (the
authors, and each gift wrap's recipients), in sorted order, and holds them until its
commit. Two batches that share a pubkey, from this process or another, then run one after
the other, the second seeing everything the first committed (READ COMMITTED takes a fresh
snapshot per statement, after the lock was granted), so the end state is that of some
serial order: newest version wins ties to the lowest id, a deleted or vanished event
cannot come back, whatever instance it arrives on. Batches on disjoint pubkeys run in
parallel. Sorted acquisition means batches never wait on each other's advisory locks in a
cycle. The unique constraints (event id, one row per address) stay as a backstop.

Considered and not taken: SERIALIZABLE with retries would redo a whole batch of up to a
thousand events on any overlap, which the hot pubkeys of a busy relay would make common;
ON CONFLICT alone cannot express "keep the newer, ties to the lowest id" together with
the tombstone checks. A rare deadlock on row locks remains possible (a deletion by a gift
wrap's author racing a request to vanish by its recipient); PostgreSQL then aborts one
transaction, and that batch is retried whole, its rollback having left nothing behind.

Expired events are purged in chunks that skip rows a concurrent batch holds (FOR UPDATE
SKIP LOCKED), so a purge never waits on a writer; retention prunes the same way, one batch
per turn, one instance at a time (store/pg_retention.py). The NIP-86 moderation state is
a table of the database too, followed by every instance (store/pg_moderation.py).

NIP-50 search uses PostgreSQL's full-text search: each event's words (cut in Python by
core/search.py, see store/pg_batch.py) are stored as a tsvector with a GIN index, a
search is a tsquery of all its words, ranked by ts_rank. With search off the column is
left NULL; switched on again, the words of the events written meanwhile are filled in on
open. Every instance on one database should share the setting.

Live events across instances: each stored event is NOTIFYed inside its batch's
transaction and every instance LISTENs (store/pg_live.py, started by follow()).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Sequence
from importlib import resources
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relay.core.canonical import loads
from relay.core.event import Event
from relay.core.filters import Filter
from relay.core.retention import Retention
from relay.store import pg_batch, pg_live, pg_retention, pg_sql
from relay.store.base import (
    PAGE_BYTES,
    PAGE_EVENTS,
    Purged,
    QueryTimeout,
    SaveOutcome,
    TooManyItems,
    check_page_bounds,
    split_pages,
)
from relay.store.pg_moderation import PostgresModeration

log = logging.getLogger("relay.postgres")
T = TypeVar("T")
# Every connection of the store comes from one of its two pools.
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# 2: the NIP-86 moderation table (postgres_v2.sql); 3: relay_save_batch applies it.
SCHEMA_VERSION = 3
# Advisory lock key for migrations (b"pyrelay!"); pubkey keys collide with it only by
# chance, which would merely make a start wait for a batch.
MIGRATION_LOCK = int.from_bytes(b"pyrelay!", "big", signed=True)
CONNECT_TIMEOUT = 10.0
# Attempts at a batch that PostgreSQL aborted to break a deadlock.
SAVE_ATTEMPTS = 3
PURGE_CHUNK = 1000
FILL_CHUNK = 1000
# Rows per fetch of `relay export`'s server-side cursor: memory stays at one page.
EXPORT_PAGE = 2000

NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i"
FETCH_LIVE = "SELECT raw FROM events WHERE id = $1 AND (expiration IS NULL OR expiration > $2)"
SAVE_BATCH = "SELECT relay_save_batch(" + ", ".join(f"${n}" for n in range(1, 18)) + ")"


def describe(dsn: str) -> str:
    """The database's address without any password, for messages."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def load_migration(version: int) -> str:
    name = f"postgres_v{version}.sql"
    return resources.files("relay.store").joinpath(name).read_text(encoding="utf-8")


async def migrate(conn: Conn) -> None:
    """Bring the schema to SCHEMA_VERSION; instances starting together take turns."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if current > SCHEMA_VERSION:
            raise OSError(
                f"the database has schema version {current}, newer than this relay's "
                f"{SCHEMA_VERSION}: upgrade the relay"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await conn.execute(load_migration(version))
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            log.info("database schema migrated to version %d", version)


class PostgresStore:
    def __init__(
        self,
        dsn: str,
        *,
        readers: int = 2,
        query_timeout: float | None = None,
        search: bool = True,
        durable: bool = True,
        retention: Retention | None = None,
    ) -> None:
        self.dsn = dsn
        self.retention = retention or Retention()
        # False only for tests: a commit returns before its WAL reaches the disk.
        self.durable = durable
        self.reader_count = readers
        self.query_timeout = query_timeout
        self.search = search
        self._writer: asyncpg.Pool | None = None
        self._readers: asyncpg.Pool | None = None
        # One batch or purge chunk at a time, in the order the writer hands them over.
        self._write_lock = asyncio.Lock()
        # Tags this instance's notifications, so it skips its own (store/pg_live.py).
        self.instance = uuid.uuid4().hex[:16]
        self.channel = ""
        self._feed: pg_live.LiveFeed | None = None

    async def open(self) -> None:
        try:
            await self._connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await self.close()
            raise OSError(f"cannot open database {describe(self.dsn)}: {exc}") from exc

    async def _connect(self) -> None:
        self._writer = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=1,
            timeout=CONNECT_TIMEOUT,
            # OK true means committed to disk, whatever the server's default says.
            server_settings={
                "synchronous_commit": "on" if self.durable else "off",
                "application_name": "pyrelay",
            },
        )
        async with self._writer.acquire() as conn:
            await migrate(conn)
            self.channel = pg_live.channel_name(await conn.fetchval("SELECT current_schema()"))
            await self._prepare_search(conn)
        reader_settings = {"application_name": "pyrelay", "default_transaction_read_only": "on"}
        if self.query_timeout is not None:
            reader_settings["statement_timeout"] = str(max(1, int(self.query_timeout * 1000)))
        self._readers = await asyncpg.create_pool(
            self.dsn,
            min_size=self.reader_count,
            max_size=self.reader_count,
            timeout=CONNECT_TIMEOUT,
            server_settings=reader_settings,
        )

    async def follow(self, deliver: pg_live.Deliver) -> None:
        """Hand every event other instances store from now on to `deliver`, after its
        commit; stopped by close(). Returns once LISTEN is in place (or, the server being
        unreachable, after CONNECT_TIMEOUT, the feed retrying on its own)."""
        self._feed = pg_live.LiveFeed(self.dsn, self.channel, self.instance, self._fetch, deliver)
        self._feed.start()
        try:
            await asyncio.wait_for(self._feed.listening.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("live events from other instances: not listening yet, still trying")

    async def announce(self, event: Event) -> None:
        """Tell the other instances of an ephemeral event (never stored: one too big for
        a notification reaches this instance's subscribers only)."""
        if (
            self._feed is not None
            and len(self.instance) + 1 + len(event.raw) <= pg_live.MAX_PAYLOAD_BYTES
        ):
            await self._feed.notify(pg_live.payload(self.instance, event))

    async def _fetch(self, event_id: str) -> bytes | None:
        """A stored, unexpired event's JSON, for a notification too big to carry it."""
        now = int(time.time())
        raw: bytes | None = await self._read(
            lambda conn: conn.fetchval(FETCH_LIVE, bytes.fromhex(event_id), now)
        )
        return raw

    def intact(self) -> bool:
        """Open: the database lives on its server, which reports failures as failed commits
        (the writer's health), not as a file gone from under it."""
        return self._writer is not None

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.close()
            self._feed = None
        for pool in (self._readers, self._writer):
            if pool is not None:
                await pool.close()
        self._readers = self._writer = None

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        if not events:
            return []
        args = pg_batch.batch_args(events, self.search).as_tuple()
        notices = [pg_live.payload(self.instance, event) for event in events]
        async with self._write_lock:
            codes = await self._write(lambda conn: _save_batch(conn, args, self.channel, notices))
        return pg_batch.outcomes_of(codes)

    async def purge_expired(self, now: int) -> Purged:
        """Every expired event, then one retention batch (store/pg_retention.py)."""
        expired = 0
        while True:
            # A chunk per transaction: batches get the writer between chunks.
            async with self._write_lock:
                chunk: int = await self._write(
                    lambda conn: conn.fetchval(
                        "SELECT relay_purge_expired($1, $2)", now, PURGE_CHUNK
                    )
                )
            expired += chunk
            if chunk < PURGE_CHUNK:
                break
        retention = self.retention
        if not retention.enabled:
            return Purged(expired=expired)
        # Counting the events for the budget is slow on a large table: on a reader, before
        # the writer's turn, so that saves do not wait for it.
        plan = await self._read(lambda conn: pg_retention.budget_plan(conn, retention.budget_bytes))
        async with self._write_lock:
            pruned = await self._write(lambda conn: pg_retention.prune(conn, now, retention, plan))
        return Purged(expired=expired) + pruned

    def moderation_store(self) -> PostgresModeration:
        """The NIP-86 state in this database, shared with every instance on it."""
        return PostgresModeration(self.dsn)

    async def query(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> list[bytes]:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return []
        statement, params = pg_sql.select_events(matchable, now)
        rows = await self._read(lambda conn: conn.fetch(statement, *params))
        return [row[0] for row in rows]

    async def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        *,
        owner: Hashable | None = None,
        page_events: int = PAGE_EVENTS,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        """query() cut into pages (EventStore.query_pages' bounds). Read in one statement:
        asyncpg's pool hands connections out as they come, with no owner's turn."""
        check_page_bounds(page_events, page_bytes)
        for page in split_pages(await self.query(filters, now), page_events, page_bytes):
            yield page

    async def count(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> int:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return 0
        statement, params = pg_sql.count_events(matchable, now)
        found: int = await self._read(lambda conn: conn.fetchval(statement, *params))
        return found

    async def negentropy_items(
        self, filters: Sequence[Filter], now: int, max_items: int | None = None
    ) -> list[tuple[int, bytes]]:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return []
        statement, params = pg_sql.negentropy_items(matchable, now, max_items)
        rows = await self._read(lambda conn: conn.fetch(statement, *params))
        if max_items is not None and len(rows) > max_items:
            raise TooManyItems(max_items)
        return [(row[0], row[1]) for row in rows]

    async def _write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self._writer is None:
            raise RuntimeError("store is not open")
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                async with self._writer.acquire() as conn:
                    return await fn(conn)
            except asyncpg.DeadlockDetectedError:
                if attempt == SAVE_ATTEMPTS:
                    raise
                log.warning("a write was aborted to break a deadlock; retrying it")
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self._readers is None:
            raise RuntimeError("store is not open")
        try:
            async with self._readers.acquire() as conn:
                return await fn(conn)
        except asyncpg.QueryCanceledError as exc:
            raise QueryTimeout(f"query ran longer than {self.query_timeout}s") from exc

    async def _prepare_search(self, conn: Conn) -> None:
        """Record whether every event has its search words; fill them in when search is
        on and some were written with it off."""
        state = await conn.fetchval("SELECT value FROM relay_meta WHERE key = 'search_words'")
        if not self.search:
            if state != "partial":
                await _set_meta(conn, "search_words", "partial")
            return
        if state == "partial":
            filled = await _fill_search_words(conn)
            log.info("search words filled in for %d events written with search off", filled)
        if state != "complete":
            await _set_meta(conn, "search_words", "complete")


async def _save_batch(
    conn: Conn, args: tuple[Any, ...], channel: str, notices: list[str]
) -> list[int]:
    """Save a batch; in the same transaction notify the events it stored, so other
    instances hear of them after the commit, never before, never for a rollback."""
    async with conn.transaction():
        codes: list[int] = await conn.fetchval(SAVE_BATCH, *args)
        stored = [
            text
            for text, code in zip(notices, codes, strict=True)
            if pg_batch.OUTCOMES[code].broadcast
        ]
        if stored:
            await conn.execute(NOTIFY, channel, stored)
    return codes


async def _set_meta(conn: Conn, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ($1, $2)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key,
        value,
    )


async def _fill_search_words(conn: Conn) -> int:
    last, filled = 0, 0
    while True:
        rows = await conn.fetch(
            "SELECT seq, raw FROM events WHERE seq > $1 AND search IS NULL ORDER BY seq LIMIT $2",
            last,
            FILL_CHUNK,
        )
        if not rows:
            return filled
        seqs = [row[0] for row in rows]
        vectors = [pg_batch.search_vector(str(loads(row[1])["content"])) for row in rows]
        await conn.execute(
            "UPDATE events SET search = v.words::tsvector"
            " FROM unnest($1::bigint[], $2::text[]) AS v(seq, words) WHERE events.seq = v.seq",
            seqs,
            vectors,
        )
        last, filled = seqs[-1], filled + len(rows)


# -- the command line's reads: `relay export`, and which search setting an import keeps --


async def _connect_once(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": "pyrelay"}
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise OSError(f"cannot open database {describe(dsn)}: {exc}") from exc


async def export_pages(
    dsn: str, f: Filter, now: int, page: int = EXPORT_PAGE
) -> AsyncGenerator[list[bytes], None]:
    """Raw JSON of the live events matching `f`, in `relay export`'s order (pg_sql), page
    by page from one snapshot: a REPEATABLE READ, read-only transaction whose server-side
    cursor hands over `page` rows at a time, so memory stays flat however large the
    database, and writers carry on meanwhile. Database errors come out as OSError."""
    conn = await _connect_once(dsn)
    statement, params = pg_sql.export_events(f, now)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(statement, *params)
            while rows := await cursor.fetch(page):
                yield [row[0] for row in rows]
    except asyncpg.PostgresError as exc:
        raise OSError(f"database {describe(dsn)}: {exc}") from exc
    finally:
        await conn.close()


async def search_words_state(dsn: str) -> str | None:
    """Whether the database keeps every event's search words ("complete"), not all of them
    ("partial", an instance runs with search off), or None before any relay created it."""
    conn = await _connect_once(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('relay_meta')") is None:
            return None
        state: str | None = await conn.fetchval(
            "SELECT value FROM relay_meta WHERE key = 'search_words'"
        )
        return state
    except asyncpg.PostgresError as exc:
        raise OSError(f"database {describe(dsn)}: {exc}") from exc
    finally:
        await conn.close()
