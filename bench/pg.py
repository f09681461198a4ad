"""PostgreSQL databases for `python -m bench --store postgres`: one per run, and the stored
dataset's cached copy that each run's database is created from.

The dataset is loaded once per size and content into a database named
`pyrelay_bench_v<DATA_VERSION>_<size>_<fingerprint>` (the fingerprint is that of the cached
SQLite dataset's samples, which change with its content), reused while it exists. It is
filled under a temporary name and renamed when complete, so a database by that name is
always whole. Every run gets `CREATE DATABASE ... TEMPLATE` of it (a file copy), so runs
never see each other's writes.

Loading: the relay's own schema (PostgresStore.open runs its migration), then the events
of the cached JSON lines by COPY (asyncpg's copy_records_to_table), rows and tags encoded
by the store's own pg_batch.batch_args, each event's seq given explicitly so its tags can
refer to it; then VACUUM ANALYZE, as a long-running server would have by then.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import islice
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import DATA_VERSION
from bench.stores import Dataset
from relay.core.event import event_from_raw
from relay.store.pg_batch import batch_args
from relay.store.postgres import PostgresStore

COPY_CHUNK = 20_000
# CREATE DATABASE fails while another session is connected to its template, and a rename
# while the database has a session (the loader's, still closing): a few tries, 1 s apart.
CREATE_ATTEMPTS = 10
EVENT_COLUMNS = ["seq", "id", "pubkey", "created_at", "kind", "d_tag", "expiration", "raw"]
TAG_COLUMNS = ["seq", "name", "value", "created_at"]


def database_url(server: str, name: str) -> str:
    """`server` (a postgresql:// URL) with its database replaced by `name`."""
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class PgServer:
    """Creates and drops the bench's databases on the server at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def check(self) -> None:
        """Fail now, with the reason, if the server cannot be reached."""
        asyncio.run(self._execute("SELECT 1"))

    def fresh(self) -> str:
        """The URL of a new, empty database (the relay creates its schema)."""
        name = f"pyrelay_bench_run_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._create(name, None))
        return database_url(self.url, name)

    def copy_of(self, template: str) -> str:
        """The URL of a new database holding what database `template` holds."""
        name = f"pyrelay_bench_run_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._create(name, template))
        return database_url(self.url, name)

    def drop(self, url: str) -> None:
        asyncio.run(self._drop(database_name(url)))

    def dataset(self, dataset: Dataset, log: Callable[[str], None]) -> str:
        """The name of the database holding `dataset`, loaded first if not cached yet."""
        name = cached_name(dataset)
        if asyncio.run(self._exists(name)):
            return name
        partial = f"{name}_partial_{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        log(f"loading the {dataset.size:,}-event dataset into PostgreSQL database {name}")
        asyncio.run(self._create(partial, None))
        try:
            with open(dataset.events_path, "rb") as lines:
                loaded = asyncio.run(load(database_url(self.url, partial), lines, log))
            if loaded != _sqlite_count(dataset):
                raise RuntimeError(
                    f"PostgreSQL copy holds {loaded} events, the SQLite dataset"
                    f" {_sqlite_count(dataset)}"
                )
            asyncio.run(self._rename(partial, name))
        except BaseException:
            asyncio.run(self._drop(partial))
            raise
        log(f"loaded into PostgreSQL in {time.monotonic() - started:.0f} s")
        return name

    async def _execute(self, statement: str) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def _exists(self, name: str) -> bool:
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            found = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        finally:
            await conn.close()
        return found is not None

    async def _create(self, name: str, template: str | None) -> None:
        # FILE_COPY: the template's files copied as they are, not its every page through
        # the WAL (WAL_LOG, the default since PostgreSQL 15, is slower for a big template).
        source = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        await self._execute_when_unused(f"CREATE DATABASE {name}{source}")

    async def _execute_when_unused(self, statement: str) -> None:
        for attempt in range(CREATE_ATTEMPTS):
            try:
                await self._execute(statement)
                return
            except asyncpg.ObjectInUseError:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1.0)

    async def _drop(self, name: str) -> None:
        await self._execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    async def _rename(self, partial: str, name: str) -> None:
        try:
            await self._execute_when_unused(f"ALTER DATABASE {partial} RENAME TO {name}")
        except asyncpg.DuplicateDatabaseError:
            await self._drop(partial)  # another bench loaded the same dataset meanwhile


def cached_name(dataset: Dataset) -> str:
    fingerprint = hashlib.sha256(dataset.samples_path.read_bytes()).hexdigest()[:10]
    return f"pyrelay_bench_v{DATA_VERSION}_{dataset.size}_{fingerprint}"


async def load(url: str, lines: BinaryIO, log: Callable[[str], None]) -> int:
    """Fill the empty database at `url` with the events of `lines` (JSON, one a line);
    returns how many events it holds then."""
    store = PostgresStore(url, readers=1, search=False)
    await store.open()  # the relay's schema, search words marked as not filled in
    await store.close()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("ALTER TABLE events ALTER COLUMN seq SET GENERATED BY DEFAULT")
        loaded = 0
        for chunk in _chunks(lines, COPY_CHUNK):
            await _copy_chunk(conn, chunk, first_seq=loaded + 1)
            loaded += len(chunk)
            if loaded % 200_000 < len(chunk):
                log(f"  PostgreSQL copy: {loaded:,} events")
        await conn.execute("ALTER TABLE events ALTER COLUMN seq SET GENERATED ALWAYS")
        await conn.execute("SELECT setval(pg_get_serial_sequence('events', 'seq'), $1)", loaded)
        await conn.execute("VACUUM ANALYZE")
        stored: int = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    return stored


def _chunks(lines: BinaryIO, size: int) -> Iterator[list[bytes]]:
    while chunk := [line.rstrip(b"\n") for line in islice(lines, size)]:
        yield chunk


async def _copy_chunk(conn: asyncpg.Connection, chunk: list[bytes], first_seq: int) -> None:
    args = batch_args([event_from_raw(raw) for raw in chunk], with_search=False)
    seqs = range(first_seq, first_seq + len(chunk))
    rows = zip(
        seqs,
        args.ids,
        args.pubkeys,
        args.created,
        args.kinds,
        args.d_tags,
        args.expirations,
        args.raws,
        strict=True,
    )
    tags: list[tuple[int, str, bytes, int]] = []
    start = 0
    for seq, end, created in zip(seqs, args.tag_ends, args.created, strict=True):
        tags.extend(
            (seq, name, value, created)
            for name, value in zip(
                args.tag_names[start:end], args.tag_values[start:end], strict=True
            )
        )
        start = end
    async with conn.transaction():
        await conn.copy_records_to_table("events", records=list(rows), columns=EVENT_COLUMNS)
        await conn.copy_records_to_table("tags", records=tags, columns=TAG_COLUMNS)


def _sqlite_count(dataset: Dataset) -> int:
    db = sqlite3.connect(f"file:{dataset.pyrelay_db}?mode=ro", uri=True)
    try:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        db.close()
    return count
