"""The embedded default store: SQLite in WAL mode through aiosqlite.

One connection writes, on aiosqlite's thread or in a process of its own
(relay/store/write_process.py); a small pool of read-only connections answers queries,
so a long query never holds up the writer (WAL readers see the last committed snapshot).
The readers go round robin between the relay's connections (store/readers.py), one slice
at a time: a query is read page by page (store/sqlite_reads.py), each page one slice, and
a cancelled slice is interrupted inside SQLite.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiosqlite

from relay.child import ChildStartError
from relay.core.event import Event
from relay.core.filters import Filter
from relay.core.retention import Retention
from relay.store import sql, sqlite_reads, sqlite_writes
from relay.store.base import (
    PAGE_BYTES,
    PAGE_EVENTS,
    Purged,
    QueryTimeout,
    SaveOutcome,
    StoreStats,
    TooManyItems,
    check_page_bounds,
    split_pages,
)
from relay.store.readers import FairPool
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
NO_RETENTION = Retention()
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

    async def purge_expired(self, now: int) -> Purged: ...

    async def close(self) -> None: ...

    @property
    def restarts(self) -> int: ...


class ThreadWrites:
    """The writer connection on aiosqlite's thread, in the relay's own process."""

    def __init__(
        self, path: str, synchronous: str, search: bool, retention: Retention = NO_RETENTION
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.search = search
        self.retention = retention
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

    async def purge_expired(self, now: int) -> Purged:
        retention = self.retention
        return await run_on_connection(
            self._open(), lambda db: sqlite_writes.purge(db, now, retention)
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
        retention: Retention = NO_RETENTION,
    ) -> None:
        self.path = os.path.abspath(path)
        self.search = search
        # Seconds a read may run before SQLite interrupts it (None: no limit).
        self.query_timeout = query_timeout
        self.reader_count = readers
        self.synchronous = synchronous
        self.writes: Writes = (
            WriteProcess(self.path, synchronous, search, retention)
            if write_process
            else ThreadWrites(self.path, synchronous, search, retention)
        )
        self._pool: FairPool[aiosqlite.Connection] = FairPool()
        self._all_readers: list[aiosqlite.Connection] = []
        # Slices stopped by interrupt() because their task was cancelled (CLOSE, a
        # replaced REQ, a closed connection): for tests and the operator's curiosity.
        self.interrupted = 0
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
            await run_on_connection(reader, _prepare_reader)
            self._pool.add(reader)

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

    async def purge_expired(self, now: int) -> Purged:
        return await self.writes.purge_expired(now)

    async def query(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> list[bytes]:
        return [raw async for page in self.query_pages(filters, now, owner=owner) for raw in page]

    async def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        *,
        owner: Hashable | None = None,
        page_events: int = PAGE_EVENTS,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        """See EventStore.query_pages; query_timeout bounds each page (each slice)."""
        check_page_bounds(page_events, page_bytes)
        owner = object() if owner is None else owner
        matchable = [f for f in filters if f.can_match and f.limit != 0]
        if any(f.search for f in matchable):
            # NIP-50 results are ranked by relevance, not by time: no keyset to go on from.
            found = await self.read(lambda db: sqlite_reads.read_all(db, matchable, now), owner)
            for page in split_pages(found, page_events, page_bytes):
                yield page
            return
        paged = sqlite_reads.PagedQuery(matchable, now, page_events, page_bytes)
        while not paged.finished:
            page = await self.read(paged.next_page, owner)
            if page:
                yield page

    async def stats(self) -> StoreStats:
        """Events stored, and the bytes of the database file and its WAL.

        A bare count(*) walks the leaves of the smallest index, not the rows: about
        20 ms for 1,000,000 events, on a reader thread.
        """
        events = await self.read(lambda db: int(db.execute(COUNT_ALL).fetchone()[0]))
        return StoreStats(events=events, bytes=_file_bytes(self.path, self.path + "-wal"))

    @property
    def process_restarts(self) -> int:
        return self.writes.restarts

    async def count(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> int:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return 0
        owner = object() if owner is None else owner
        return await self.read(lambda db: sqlite_reads.count(db, matchable, now), owner)

    async def negentropy_items(
        self, filters: Sequence[Filter], now: int, max_items: int | None = None
    ) -> list[tuple[int, bytes]]:
        matchable = [f for f in filters if f.can_match]
        if not matchable:
            return []
        return await self.read(lambda db: _negentropy_items(db, matchable, now, max_items))

    async def read(self, fn: Callable[[sqlite3.Connection], T], owner: Hashable | None = None) -> T:
        """Run `fn` on a reader, which `owner` gets in its fair turn: one slice.

        Cancelled while it waits, the slice never runs. Cancelled while it runs, SQLite is
        interrupted, and the reader goes back to the pool only once its thread has left
        `fn`, so the next slice does not queue behind the abandoned one.
        """
        owner = object() if owner is None else owner
        reader = await self._pool.acquire(owner)
        job = _Slice(fn, self.query_timeout)
        try:
            result = await run_on_connection(reader, job.run)
        except asyncio.CancelledError:
            loop = asyncio.get_running_loop()
            job.abandon(
                reader,
                on_loop=lambda: self._slice_abandoned(job, owner, reader),
                on_thread=lambda: loop.call_soon_threadsafe(
                    self._slice_abandoned, job, owner, reader
                ),
            )
            raise
        except BaseException:
            self._pool.release(owner, reader)
            raise
        self._pool.release(owner, reader)
        return result

    def _slice_abandoned(
        self, job: _Slice[Any], owner: Hashable, reader: aiosqlite.Connection
    ) -> None:
        if job.interrupted:
            self.interrupted += 1
        self._pool.release(owner, reader)


def _prepare_reader(db: sqlite3.Connection) -> None:
    # Each statement is run to its end: one left pending (PRAGMA mmap_size returns a row)
    # would keep SQLite from clearing an interrupt() once its statement has stopped, and
    # every later statement on this reader would be interrupted too.
    db.execute("PRAGMA busy_timeout = 5000").fetchall()
    db.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}").fetchall()


class SliceInterrupted(Exception):
    """A slice stopped because the task that wanted it was cancelled."""


class _Slice(Generic[T]):
    """One slice on a reader's thread, stoppable from the event loop (`abandon`) and by
    query_timeout: SQLite's progress handler looks at both every PROGRESS_STEPS steps."""

    def __init__(self, fn: Callable[[sqlite3.Connection], T], timeout: float | None) -> None:
        self.fn = fn
        self.timeout = timeout
        self.cancelled = False
        self.interrupted = False  # stopped inside SQLite because it was cancelled
        # Whether the thread has left `fn`, and what it must call then if abandoned:
        # decided under the lock, so the reader is released exactly once.
        self._lock = threading.Lock()
        self._finished = False
        self._then: Callable[[], object] | None = None

    def abandon(
        self,
        reader: aiosqlite.Connection,
        on_loop: Callable[[], object],
        on_thread: Callable[[], object],
    ) -> None:
        """The awaiting task was cancelled: stop SQLite, and hand the reader back (call
        `on_loop` now when the thread is done with it, else `on_thread` from the thread
        once it has left `fn`)."""
        with self._lock:
            self.cancelled = True
            if not self._finished:
                self._then = on_thread
                # Stops the running statement at once (thread-safe); the progress handler
                # stops one that starts after this call, which interrupt() would let run.
                reader._conn.interrupt()
                return
        on_loop()

    def run(self, db: sqlite3.Connection) -> T:
        try:
            if self.cancelled:
                raise SliceInterrupted("cancelled before it started")
            return self._bounded(db)
        finally:
            with self._lock:
                self._finished = True
                then = self._then
            if then is not None:
                then()

    def _bounded(self, db: sqlite3.Connection) -> T:
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if deadline is None:
            db.set_progress_handler(lambda: self.cancelled, PROGRESS_STEPS)
        else:
            db.set_progress_handler(
                lambda: self.cancelled or time.monotonic() > deadline, PROGRESS_STEPS
            )
        try:
            return self.fn(db)
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                raise
            if self.cancelled:
                self.interrupted = True
                raise SliceInterrupted("cancelled while it ran") from exc
            if deadline is not None and time.monotonic() > deadline:
                raise QueryTimeout(f"query ran longer than {timeout}s") from exc
            raise  # interrupted by the store closing
        finally:
            db.set_progress_handler(None, 0)


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
    else:
        items.sort()  # ids come descending within a second (sql.negentropy_items)
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
