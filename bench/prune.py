"""Retention pruning beside ingest: does a backlog of events to prune stall new writes?

    python -m bench.prune [--backlog 100000] [--events 20000] [--batch 100] [--in-flight 500]

Fills a fresh SQLite store (write process, synchronous FULL) with `--backlog` kind-1 notes
two days old, then saves `--events` new notes through the relay's Writer with a 1-hour
retention on kind 1, `--in-flight` saves outstanding at once, while the writer prunes the
backlog `--batch` events per transaction. The same run without a backlog is the baseline.
Prints the ingest rate and save latencies (p50, p99, max) of both, and what was pruned.
The store does not check signatures: the events carry random ids and zero signatures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from relay.core.canonical import dumps
from relay.core.event import Event, event_from_raw
from relay.core.retention import Retention
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


async def one_run(path: Path, backlog: int, events: int, batch: int, in_flight: int) -> str:
    now = int(time.time())
    retention = Retention(kind_ages=((1, HOUR),), batch=batch)
    # search off, as the relay runs by default (search_enabled = false).
    store = SqliteStore(path, write_process=True, search=False, retention=retention)
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
    pruned = backlog - _old_left(path, now)
    return (
        f"backlog {backlog:>7}: {events / seconds:8.0f} events/s, save latency "
        f"p50 {statistics.median(latencies) * 1e3:6.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:6.1f} ms, "
        f"max {latencies[-1] * 1e3:6.1f} ms; pruned during the run: {pruned}"
    )


def _old_left(path: Path, now: int) -> int:
    db = sqlite3.connect(path)
    query = "SELECT count(*) FROM events WHERE created_at < ?"
    try:
        return int(db.execute(query, (now - HOUR,)).fetchone()[0])
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prune")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=500)
    args = parser.parse_args()
    for backlog in (0, args.backlog):
        with tempfile.TemporaryDirectory() as folder:
            line = asyncio.run(
                one_run(Path(folder) / "p.sqlite", backlog, args.events, args.batch, args.in_flight)
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
