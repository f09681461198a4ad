"""Store-level durable ingest on PostgreSQL beside SQLite, without the network in front.

    python -m bench.pg_store [--events 20000] [--batch 150] [--runs 3] [--url URL]
                             [--banned 0]

Saves the same pre-signed kind-1 notes through each store's own save_many, in batches of
`--batch` with two in flight (as the relay's writer does), on an empty database: SQLite as
the relay runs it by default (write process, synchronous FULL), PostgreSQL
(relay/store/postgres.py, synchronous_commit on) in a fresh schema of the database at
--url (default: the tests' server). No WebSocket, no parsing, no signature checks.
`--banned N` puts N banned pubkeys and N banned event ids (none of the saved events') in
the NIP-86 moderation table first, which every PostgreSQL batch reads (postgres_v3.sql).

CPU per event: the relay process's own (for SQLite without its write process, which does
the SQLite work), and PostgreSQL's writer backend's, read from /proc (the server on this
machine); WAL writer and checkpointer are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from bench.data import ingest_events
from relay.core.event import Event, event_from_raw
from relay.store.base import EventStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore

DEFAULT_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
IN_FLIGHT = 2


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest(store: EventStore, events: Sequence[Event], batch: int) -> float:
    """Seconds to save every event, `batch` at a time, IN_FLIGHT batches in flight."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def save(chunk: Sequence[Event]) -> None:
        try:
            await store.save_many(chunk, int(time.time()))
        finally:
            slots.release()

    started = time.perf_counter()
    tasks = []
    for start in range(0, len(events), batch):
        await slots.acquire()
        tasks.append(asyncio.create_task(save(events[start : start + batch])))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def run_sqlite(events: Sequence[Event], batch: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as workdir:
        store = SqliteStore(Path(workdir) / "s.sqlite", search=False, write_process=True)
        await store.open()
        try:
            cpu = time.process_time()
            seconds = await ingest(store, events, batch)
            cpu = time.process_time() - cpu
        finally:
            await store.close()
    return len(events) / seconds, cpu / len(events) * 1e6, float("nan")


async def ban_strangers(store: PostgresStore, banned: int) -> None:
    """`banned` random pubkeys and as many event ids in the moderation table."""
    rows = [
        (table, os.urandom(32).hex())
        for table in ("banned_pubkeys", "banned_events")
        for _ in range(banned)
    ]
    await store._write(
        lambda conn: conn.executemany("INSERT INTO moderation (list, key) VALUES ($1, $2)", rows)
    )
    await store._write(lambda conn: conn.execute("ANALYZE moderation"))


async def run_postgres(
    url: str, events: Sequence[Event], batch: int, banned: int = 0
) -> tuple[float, float, float]:
    schema = f"relay_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    store = PostgresStore(f"{url}{separator}search_path={schema}", readers=1, search=False)
    try:
        await store.open()
        if banned:
            await ban_strangers(store, banned)
        backend = await store._write(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
        cpu, server_cpu = time.process_time(), process_cpu(backend)
        seconds = await ingest(store, events, batch)
        cpu, server_cpu = time.process_time() - cpu, process_cpu(backend) - server_cpu
    finally:
        await store.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    per_event = 1e6 / len(events)
    return len(events) / seconds, cpu * per_event, server_cpu * per_event


def describe(rate: float, cpu: float, server: float) -> str:
    if server != server:  # NaN: SQLite, whose work is in its write process
        return (
            f"{rate:8,.0f} events/s  relay CPU {cpu:4.0f} us/event (its write process not counted)"
        )
    return (
        f"{rate:8,.0f} events/s  relay CPU {cpu:4.0f} us/event"
        f"  + PostgreSQL writer backend {server:4.0f} us/event"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_store", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=150, help="events per commit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database to use")
    parser.add_argument(
        "--banned", type=int, default=0, help="banned pubkeys and event ids in the table"
    )
    args = parser.parse_args()
    events = [event_from_raw(raw) for raw in ingest_events(100_000, 2)[: args.events]]
    results: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "postgres": []}
    for _ in range(args.runs):
        # Alternated, so that whatever else loads the machine falls on both.
        results["sqlite"].append(asyncio.run(run_sqlite(events, args.batch)))
        results["postgres"].append(
            asyncio.run(run_postgres(args.url, events, args.batch, args.banned))
        )
        for name, runs in results.items():
            print(f"  {name}: {describe(*runs[-1])}")
    print(
        f"{args.events:,} events in batches of {args.batch}, {IN_FLIGHT} in flight, "
        f"medians of {args.runs}:"
    )
    for name, runs in results.items():
        medians = [statistics.median(column) for column in zip(*runs, strict=True)]
        print(f"  {name:8} {describe(*medians)}")


if __name__ == "__main__":
    main()
