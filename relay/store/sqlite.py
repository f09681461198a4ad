"""The embedded default store: SQLite in WAL mode through aiosqlite.

One connection writes, on aiosqlite's thread or in a process of its own
(relay/store/write_process.py); a small pool of read-only connections answers queries,
so a long query never holds up the writer (WAL readers see the last committed snapshot).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from relay.child import ChildStartError
from relay.core.canonical import loads
from relay.core.event import Event
from relay.core.filters import Filter
from relay.store import sql, sqlite_writes
from relay.store.base import QueryTimeout, SaveOutcome, StoreStats, TooManyItems
from relay.store.sqlite_writes import SCHEMA_VERSION, load_schema
from relay.store.write_process import WriteProcess

__all__ = ["SCHEMA_VERSION", "SqliteStore", "load_schema", "run_on_connection"]

# SQLite VM steps between two looks at a query's deadline.
PROGRESS_STEPS = 1000
# Readers map the database file into memory: a page already in the OS cache is then read
# without a system call and a copy into SQLite's own small cache, which is most of the
# SQL time of a query that fetches a few hundred rows from random pages. SQLite caps it
# at its compile-time maximum (2 GiB by default); pages past it are read as before.
READER_MMAP_BYTES = 1 << 40
T = TypeVar("T")
COUNT_ALL = "SELECT count(*) FROM events"


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


class Writes(Protocol):
    """Where the store's writes run: aiosqlite's thread or the write process."""

    async def start(self) -> None: ...

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]: ...

    async def purge_expired(self, now: int) -> int: ...

    async def close(self) -> None: ...

    @property
    def restarts(self) -> int: ...


class ThreadWrites:
    """The writer connection on aiosqlite's thread, in the relay's own process."""

    def __init__(self, path: str, synchronous: str, search: bool) -> None:
        self.path = path
        self.synchronous = synchronous
        self.search = search
        self.connection: aiosqlite.Connection | None = None
        self.restarts = 0  # a thread is not restarted

    async def start(self) -> None:
        self.connection = await _connect(self.path, isolation_level=None)
        synchronous, search = self.synchronous, self.search
        await run_on_connection(
            self.connection, lambda db: sqlite_writes.prepare_database(db, synchronous, search)
        )

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        return await run_on_connection(
            self._open(), lambda db: sqlite_writes.save_batch(db, events)
        )

    async def purge_expired(self, now: int) -> int:
        return await run_on_connection(
            self._open(), lambda db: sqlite_writes.purge_expired(db, now)
        )

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    def _open(self) -> aiosqlite.Connection:
        if self.connection is None:
            raise RuntimeError("store is not open")
        return self.connection


class SqliteStore:
    def __init__(
        self,
        path: str | Path,
        *,
        readers: int = 2,
        synchronous: str = "FULL",
        search: bool = True,
        query_timeout: float | None = None,
        write_process: bool = False,
    ) -> None:
        self.path = os.path.abspath(path)
        self.search = search
        # Seconds a read may run before SQLite interrupts it (None: no limit).
        self.query_timeout = query_timeout
        self.reader_count = readers
        self.synchronous = synchronous
        self.writes: Writes = (
            WriteProcess(self.path, synchronous, search)
            if write_process
            else ThreadWrites(self.path, synchronous, search)
        )
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        # (device, inode) of the database file once open: see intact().
        self._file_id: tuple[int, int] | None = None

    async def open(self) -> None:
        try:
            await self._connect()
        except (sqlite3.Error, ChildStartError) as exc:
            # Close what did open: its aiosqlite thread would keep the process alive.
            await self.close()
            raise OSError(f"cannot open database {self.path}: {exc}") from exc

    async def _connect(self) -> None:
        # The writer creates the schema before any reader opens the file read-only.
        await self.writes.start()
        self._file_id = _file_id(self.path)
        read_only_uri = f"file:{self.path}?mode=ro"
        for _ in range(self.reader_count):
            reader = await _connect(read_only_uri, uri=True, isolation_level=None)
            self._all_readers.append(reader)
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            self._readers.put_nowait(reader)

    def intact(self) -> bool:
        """The database file is still at its path, and is the file the store opened.

        Deleted or replaced, the connections go on with the old file, so writes succeed
        and reads answer, but nothing of it survives a restart.
        """
        return self._file_id is not None and _file_id(self.path) == self._file_id

    async def close(self) -> None:
        self._file_id = None
        for reader in self._all_readers:
            # A query still running (its REQ gone with its connection) would hold the
            # close for up to query_timeout; interrupt() is safe from another thread.
            reader._conn.interrupt()
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        await self.writes.close()

    @property
    def writer(self) -> aiosqlite.Connection:
        """The writer connection when writes run on a thread (tests run PRAGMAs on it)."""
        if not isinstance(self.writes, ThreadWrites):
            raise RuntimeError("writes run in the write process")
        return self.writes._open()

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        return await self.writes.save_many(events, now)

    async def purge_expired(self, now: int) -> int:
        return await self.writes.purge_expired(now)

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

    async def stats(self) -> StoreStats:
        """Events stored, and the bytes of the database file and its WAL.

        A bare count(*) walks the leaves of the smallest index, not the rows: about
        20 ms for 1,000,000 events, on a reader thread.
        """
        events = await self._read(lambda db: int(db.execute(COUNT_ALL).fetchone()[0]))
        return StoreStats(events=events, bytes=_file_bytes(self.path, self.path + "-wal"))

    @property
    def process_restarts(self) -> int:
        return self.writes.restarts

    async def count(self, filters: Sequence[Filter], now: int) -> int:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return 0
        statement, params = sql.count_events(matchable, now)
        return await self._read(lambda db: int(db.execute(statement, params).fetchone()[0]))

    async def negentropy_items(
        self, filters: Sequence[Filter], now: int, max_items: int | None = None
    ) -> list[tuple[int, bytes]]:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return []
        return await self._read(lambda db: _negentropy_items(db, matchable, now, max_items))


def _negentropy_items(
    db: sqlite3.Connection, filters: list[Filter], now: int, cap: int | None
) -> list[tuple[int, bytes]]:
    """Every filter's items from one read transaction: one snapshot for all of them."""
    db.execute("BEGIN")
    try:
        expired = {event_id for (event_id,) in db.execute(sql.EXPIRED_IDS, [now])}
        # Expired rows may fill the cap of a read that does not exclude them itself.
        read_cap = None if cap is None else cap + 1 + len(expired)
        items: list[tuple[int, bytes]] = []
        for f in filters:
            rows = db.execute(*sql.negentropy_items(f, now, read_cap)).fetchall()
            if expired and f.limit is None:
                rows = [row for row in rows if row[1] not in expired]
            items.extend(rows)
    finally:
        if db.in_transaction:
            db.execute("COMMIT")
    if len(filters) > 1:
        items = sorted(set(items))
    if cap is not None and len(items) > cap:
        raise TooManyItems(cap)
    return items


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _file_bytes(*paths: str) -> int:
    """Their sizes added up; a missing one (no WAL yet) counts 0."""
    return sum(os.stat(path).st_size for path in paths if os.path.exists(path))


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
