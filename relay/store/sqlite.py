"""The embedded default store: SQLite in WAL mode through aiosqlite.

One connection writes; a small pool of read-only connections answers queries, so a
long query never holds up the writer (WAL readers see the last committed snapshot).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.core import vanish
from relay.core.canonical import loads
from relay.core.event import HEX64, Event, event_from_raw, newer
from relay.core.filters import Filter
from relay.store import rules, sql
from relay.store.base import QueryTimeout, SaveOutcome

# 2: events_fts (NIP-50 search), filled from the events when its triggers are created.
SCHEMA_VERSION = 2
# SQLite VM steps between two looks at a query's deadline.
PROGRESS_STEPS = 1000
# Readers map the database file into memory: a page already in the OS cache is then read
# without a system call and a copy into SQLite's own small cache, which is most of the
# SQL time of a query that fetches a few hundred rows from random pages. SQLite caps it
# at its compile-time maximum (2 GiB by default); pages past it are read as before.
READER_MMAP_BYTES = 1 << 40
T = TypeVar("T")


# A database whose search index was not kept (version 1, or opened with search off)
# gets it filled from the events it holds.
FILL_SEARCH_INDEX = """
BEGIN IMMEDIATE;
DELETE FROM events_fts;
INSERT INTO events_fts (rowid, content)
    SELECT seq, json_extract(CAST(raw AS TEXT), '$.content') FROM events;
COMMIT;
"""
# With search off the index is not kept: FTS5 triples the store's own cost of an insert.
DROP_SEARCH_INDEX = """
DROP TRIGGER IF EXISTS events_fts_insert;
DROP TRIGGER IF EXISTS events_fts_delete;
DELETE FROM events_fts;
"""


def load_schema() -> str:
    return resources.files("relay").joinpath("schema.sql").read_text(encoding="utf-8")


async def run_on_connection(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run `fn` with the raw sqlite3 connection on aiosqlite's own thread for it.

    A whole batch then costs one thread hop instead of one per statement. aiosqlite
    has no public name for this; `_execute` has been its dispatcher since 0.x.
    """

    def call() -> T:
        return fn(conn._conn)

    return await conn._execute(call)  # type: ignore[no-untyped-call, no-any-return]


async def _connect(database: str, **kwargs: Any) -> aiosqlite.Connection:
    """aiosqlite.connect, but a failed connect waits for aiosqlite's thread to end.

    On failure aiosqlite stops its thread without waiting for it; the thread then answers
    a future on an event loop that may be closed by then (a traceback on exit).
    """
    connection = aiosqlite.connect(database, **kwargs)
    try:
        return await connection
    except BaseException:
        await asyncio.to_thread(connection._thread.join, 5)
        raise


class SqliteStore:
    def __init__(
        self,
        path: str | Path,
        *,
        readers: int = 2,
        synchronous: str = "FULL",
        search: bool = True,
        query_timeout: float | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.search = search
        # Seconds a read may run before SQLite interrupts it (None: no limit).
        self.query_timeout = query_timeout
        self.reader_count = readers
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    async def open(self) -> None:
        try:
            await self._connect()
        except sqlite3.Error as exc:
            # Close what did open: its aiosqlite thread would keep the process alive.
            await self.close()
            raise OSError(f"cannot open database {self.path}: {exc}") from exc

    async def _connect(self) -> None:
        self._writer = writer = await _connect(self.path, isolation_level=None)
        await writer.execute("PRAGMA journal_mode = WAL")
        # FULL syncs the WAL at each commit: an acknowledged event survives power loss,
        # not only a killed process. Group commit keeps that affordable.
        await writer.execute(f"PRAGMA synchronous = {self.synchronous}")
        await writer.execute("PRAGMA busy_timeout = 5000")
        async with writer.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'events_fts_insert'"
        ) as cursor:
            index_was_kept = await cursor.fetchone() is not None
        await writer.executescript(load_schema())
        if not self.search:
            await writer.executescript(DROP_SEARCH_INDEX)
        elif not index_was_kept:
            await writer.executescript(FILL_SEARCH_INDEX)
        await writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        read_only_uri = f"file:{self.path}?mode=ro"
        for _ in range(self.reader_count):
            reader = await _connect(read_only_uri, uri=True, isolation_level=None)
            self._all_readers.append(reader)
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        return await run_on_connection(self.writer, lambda db: _save_batch(db, events))

    async def purge_expired(self, now: int) -> int:
        return await run_on_connection(self.writer, lambda db: _purge_expired(db, now))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader = await self._readers.get()
        if self.query_timeout is not None:
            fn = _with_deadline(fn, self.query_timeout)
        try:
            return await run_on_connection(reader, fn)
        finally:
            self._readers.put_nowait(reader)

    async def query(self, filters: Sequence[Filter], now: int) -> list[bytes]:
        reads = [sql.read_events(f, now) for f in filters if f.can_match]
        if not reads:
            return []
        return await self._read(lambda db: _run_reads(db, reads))

    async def count(self, filters: Sequence[Filter], now: int) -> int:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return 0
        statement, params = sql.count_events(matchable, now)
        return await self._read(lambda db: int(db.execute(statement, params).fetchone()[0]))


def _with_deadline(
    fn: Callable[[sqlite3.Connection], T], seconds: float
) -> Callable[[sqlite3.Connection], T]:
    """`fn`, interrupted by SQLite's progress handler once it has run `seconds`."""

    def bounded(db: sqlite3.Connection) -> T:
        deadline = time.monotonic() + seconds
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        try:
            return fn(db)
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                raise QueryTimeout(f"query ran longer than {seconds}s") from exc
            raise
        finally:
            db.set_progress_handler(None, 0)

    return bounded


def _run_reads(db: sqlite3.Connection, reads: list[sql.Read]) -> list[bytes]:
    if len(reads) == 1:
        return _fetch(db, reads[0])
    # Several filters: merge, dropping events more than one filter found.
    found: dict[bytes, tuple[int, bytes, bytes]] = {}
    for read in reads:
        for raw in _fetch(db, read):
            if raw not in found:
                found[raw] = _sort_fields(raw)
    return [raw for _, _, raw in sorted(found.values())]


def _fetch(db: sqlite3.Connection, read: sql.Read) -> list[bytes]:
    """One filter's events, newest first; see sql.NewestFirst for the two-step read."""
    newest = read.newest
    if newest is not None:
        row = db.execute(*newest.cutoff).fetchone()
        if row is not None:
            rows = db.execute(*newest.bounded(row[0])).fetchall()
            if len(rows) >= newest.limit:
                # Newest first, ties by id: two stable sorts, the tie-break first.
                rows.sort(key=lambda r: r[1])
                rows.sort(key=lambda r: r[0], reverse=True)
                return [raw for _, _, raw in rows[: newest.limit]]
        # No cutoff: fewer candidates than the limit, which the plain query reads as cheaply.
    statement, params = read.plain
    return [raw for (raw,) in db.execute(statement, params)]


def _sort_fields(raw: bytes) -> tuple[int, bytes, bytes]:
    obj = loads(raw)
    return (-obj["created_at"], obj["id"].encode(), raw)


def _save_batch(db: sqlite3.Connection, events: Sequence[Event]) -> list[SaveOutcome]:
    db.execute("BEGIN IMMEDIATE")
    try:
        outcomes = [_save_one(db, event) for event in events]
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return outcomes


def _save_one(db: sqlite3.Connection, event: Event) -> SaveOutcome:
    event_id = bytes.fromhex(event.id)
    pubkey = bytes.fromhex(event.pubkey)
    if db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone():
        return SaveOutcome.DUPLICATE
    if (
        rules.can_be_deleted(event)
        and db.execute(
            "SELECT 1 FROM deleted_ids WHERE id = ? AND pubkey = ?", (event_id, pubkey)
        ).fetchone()
    ):
        return SaveOutcome.DELETED
    if _vanished(db, event):
        return SaveOutcome.VANISHED
    if event.kind == vanish.VANISH_KIND:
        _apply_vanish(db, event, pubkey)
    address = event.address
    d_tag = None
    if address is not None:
        d_tag = address[2]
        outcome = _replace_address(db, event, pubkey, d_tag)
        if outcome is not None:
            return outcome
    cursor = db.execute(
        "INSERT INTO events (id, pubkey, created_at, kind, d_tag, expiration, raw)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event_id, pubkey, event.created_at, event.kind, d_tag, event.expiration, event.raw),
    )
    seq = cursor.lastrowid
    db.executemany(
        "INSERT INTO tags (seq, name, value, created_at) VALUES (?, ?, ?, ?)",
        [(seq, name, value, event.created_at) for name, value in set(event.indexed_tags())],
    )
    if event.kind == rules.DELETION_KIND:
        _apply_deletion(db, event, pubkey)
    return SaveOutcome.STORED


def _vanished(db: sqlite3.Connection, event: Event) -> bool:
    """Whether a stored request to vanish covers `event` (see vanish.erased_by)."""
    pubkeys = {event.pubkey}
    if event.kind == vanish.GIFT_WRAP_KIND:
        pubkeys.update(p for p in event.tag_values("p") if HEX64.fullmatch(p))
    vanished = {}
    for key in pubkeys:
        row = db.execute(
            "SELECT until FROM vanished WHERE pubkey = ?", (bytes.fromhex(key),)
        ).fetchone()
        if row is not None:
            vanished[key] = row[0]
    return bool(vanished) and vanish.erased_by(event, vanished)


def _apply_vanish(db: sqlite3.Connection, request: Event, pubkey: bytes) -> None:
    """Erase the author's events and the gift wraps to them, up to the request (NIP-62)."""
    until = request.created_at
    own = db.execute(
        "SELECT seq FROM events WHERE pubkey = ? AND created_at <= ?", (pubkey, until)
    ).fetchall()
    wraps = db.execute(
        "SELECT e.seq FROM tags t JOIN events e ON e.seq = t.seq"
        " WHERE t.name = 'p' AND t.value = ? AND e.kind = ? AND e.created_at <= ?",
        (request.pubkey, vanish.GIFT_WRAP_KIND, until),
    ).fetchall()
    seqs = sorted({seq for (seq,) in own + wraps})
    for start in range(0, len(seqs), 500):
        _delete_seqs(db, seqs[start : start + 500])
    db.execute(
        "INSERT INTO vanished (pubkey, until) VALUES (?, ?)"
        " ON CONFLICT (pubkey) DO UPDATE SET until = max(until, excluded.until)",
        (pubkey, until),
    )


def _replace_address(
    db: sqlite3.Connection, event: Event, pubkey: bytes, d_tag: str
) -> SaveOutcome | None:
    """Make way for a new version at the event's address, or say why it cannot be stored."""
    row = db.execute(
        "SELECT until FROM deleted_addresses WHERE pubkey = ? AND kind = ? AND d_tag = ?",
        (pubkey, event.kind, d_tag),
    ).fetchone()
    if row is not None and rules.address_tombstone_applies(event, row[0]):
        return SaveOutcome.DELETED
    row = db.execute(
        "SELECT seq, raw FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?",
        (pubkey, event.kind, d_tag),
    ).fetchone()
    if row is None:
        return None
    if not newer(event, event_from_raw(row[1])):
        return SaveOutcome.STALE
    _delete_seqs(db, [row[0]])
    return None


def _apply_deletion(db: sqlite3.Connection, deletion: Event, pubkey: bytes) -> None:
    targets = rules.deletion_targets(deletion)
    for target in targets.ids:
        if not HEX64.fullmatch(target):
            continue  # not an event id; bytes.fromhex would also take "AB" or "a b"
        target_id = bytes.fromhex(target)
        rows = db.execute(
            "SELECT seq FROM events WHERE id = ? AND pubkey = ? AND kind != ?",
            (target_id, pubkey, rules.DELETION_KIND),
        ).fetchall()
        _delete_seqs(db, [seq for (seq,) in rows])
        db.execute(
            "INSERT OR IGNORE INTO deleted_ids (id, pubkey) VALUES (?, ?)", (target_id, pubkey)
        )
    for kind, d_tag in targets.addresses:
        rows = db.execute(
            "SELECT seq FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?"
            " AND created_at <= ? AND kind != ?",
            (pubkey, kind, d_tag, targets.until, rules.DELETION_KIND),
        ).fetchall()
        _delete_seqs(db, [seq for (seq,) in rows])
        db.execute(
            "INSERT INTO deleted_addresses (pubkey, kind, d_tag, until) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pubkey, kind, d_tag) DO UPDATE SET until = max(until, excluded.until)",
            (pubkey, kind, d_tag, targets.until),
        )


def _delete_seqs(db: sqlite3.Connection, seqs: list[int]) -> None:
    if not seqs:
        return
    marks = ",".join("?" * len(seqs))
    db.execute(f"DELETE FROM tags WHERE seq IN ({marks})", seqs)
    db.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)


def _purge_expired(db: sqlite3.Connection, now: int) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        seqs = [
            seq
            for (seq,) in db.execute(
                "SELECT seq FROM events WHERE expiration IS NOT NULL AND expiration <= ?", (now,)
            )
        ]
        for start in range(0, len(seqs), 500):
            _delete_seqs(db, seqs[start : start + 500])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(seqs)
