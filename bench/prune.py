"""Retention pruning beside ingest: does a backlog of events to prune stall new writes?

    python -m bench.prune [--backlog 100000] [--events 20000] [--batch 100] [--in-flight 500]
                          [--runs 1] [--postgres URL]

Fills a fresh SQLite store (write process, synchronous FULL), or with --postgres a fresh
schema of that PostgreSQL database (synchronous_commit on), with `--backlog` kind-1 notes
two days old, then saves `--events` new notes through the relay's Writer with a 1-hour
retention on kind 1, `--in-flight` saves outstanding at once, while the writer prunes the
backlog `--batch` events per transaction. The same run without a backlog is the baseline,
run alternately with it `--runs` times. Prints the ingest rate and save latencies (p50,
p99, max) of each run, and what was pruned; with several runs, the medians and the ratios
of the backlog's figures to the baseline's. The store does not check signatures: the
events carry random ids and zero signatures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

import asyncpg

from relay.core.canonical import dumps
from relay.core.event import Event, event_from_raw
from relay.core.retention import Retention
from relay.store.base import EventStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore
from relay.store.writer import Writer

HOUR = 3600
PUBKEY = "11" * 32


def fake_events(count: int, created_at: int) -> list[Event]:
    return [
        event_from_raw(
            dumps(
                {
                    "id": os.urandom(32).hex(),
                    "pubkey": PUBKEY,
                    "created_at": created_at,
                    "kind": 1,
                    "tags": [["t", "bench"]],
                    "content": "a note of about a hundred bytes, " * 3,
                    "sig": "00" * 64,
                }
            )
        )
        for _ in range(count)
    ]


@dataclass(frozen=True)
class Run:
    rate: float  # new events saved per second
    p50: float  # save latency, seconds
    p99: float
    most: float
    pruned: int

    def line(self, backlog: int) -> str:
        return (
            f"backlog {backlog:>7}: {self.rate:8.0f} events/s, save latency "
            f"p50 {self.p50 * 1e3:6.1f} ms, p99 {self.p99 * 1e3:6.1f} ms, "
            f"max {self.most * 1e3:6.1f} ms; pruned during the run: {self.pruned}"
        )


async def one_run(
    store: EventStore, old_left: OldLeft, backlog: int, events: int, batch: int, in_flight: int
) -> Run:
    now = int(time.time())
    await store.open()
    for start in range(0, backlog, 5000):
        await store.save_many(fake_events(min(5000, backlog - start), now - 2 * 24 * HOUR), now)
    new = fake_events(events, now)
    writer = Writer(store, purge_interval=HOUR, prune_batch=batch)
    latencies: list[float] = []
    gate = asyncio.Semaphore(in_flight)

    async def save(event: Event) -> None:
        async with gate:
            started = time.perf_counter()
            await writer.save(event)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    writer.start()
    await asyncio.gather(*(save(event) for event in new))
    seconds = time.perf_counter() - started
    await writer.close()
    await store.close()
    latencies.sort()
    pruned = backlog - await old_left(now - HOUR)
    p99 = latencies[int(len(latencies) * 0.99)]
    return Run(events / seconds, statistics.median(latencies), p99, latencies[-1], pruned)


OldLeft = Callable[[int], Awaitable[int]]


@asynccontextmanager
async def sqlite_store(retention: Retention) -> AsyncIterator[tuple[EventStore, OldLeft]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.sqlite"
        # search off, as the relay runs by default (search_enabled = false).
        store = SqliteStore(path, write_process=True, search=False, retention=retention)

        async def old_left(before: int) -> int:
            db = sqlite3.connect(path)
            query = "SELECT count(*) FROM events WHERE created_at < ?"
            try:
                return int(db.execute(query, (before,)).fetchone()[0])
            finally:
                db.close()

        yield store, old_left


@asynccontextmanager
async def postgres_store(
    url: str, retention: Retention
) -> AsyncIterator[tuple[EventStore, OldLeft]]:
    schema = f"relay_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    store = PostgresStore(
        f"{url}{separator}search_path={schema}", readers=1, search=False, retention=retention
    )

    async def old_left(before: int) -> int:
        query = f"SELECT count(*) FROM {schema}.events WHERE created_at < $1"
        return int(await admin.fetchval(query, before))

    try:
        yield store, old_left
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def measure(args: argparse.Namespace, backlog: int) -> Run:
    retention = Retention(kind_ages=((1, HOUR),), batch=args.batch)
    opened = postgres_store(args.postgres, retention) if args.postgres else sqlite_store(retention)
    async with opened as (store, old_left):
        return await one_run(store, old_left, backlog, args.events, args.batch, args.in_flight)


def median_run(runs: list[Run]) -> Run:
    columns = zip(*(astuple(run) for run in runs), strict=True)
    rate, p50, p99, most, pruned = (statistics.median(column) for column in columns)
    return Run(rate, p50, p99, most, int(pruned))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prune")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--postgres", default="", help="a PostgreSQL URL (default: SQLite)")
    args = parser.parse_args()
    runs: dict[int, list[Run]] = {0: [], args.backlog: []}
    for _ in range(args.runs):
        # Alternated, so that whatever else loads the machine falls on both.
        for backlog, done in runs.items():
            done.append(asyncio.run(measure(args, backlog)))
            print(done[-1].line(backlog), flush=True)
    if args.runs > 1:
        medians = {backlog: median_run(done) for backlog, done in runs.items()}
        print(f"medians of {args.runs}:")
        for backlog, run in medians.items():
            print(run.line(backlog))
        base, loaded = medians[0], medians[args.backlog]
        print(
            f"with the backlog / without: rate {loaded.rate / base.rate:.2f}, "
            f"p99 {loaded.p99 / base.p99:.2f}"
        )


if __name__ == "__main__":
    main()
