"""The store's own ceiling: durable writes alone, the way the write process makes them.

    python -m bench.store [--stored] [--batch 150] [--events 20000] [--runs 3]

Commits pre-signed kind-1 notes in batches through `sqlite_writes.save_batch` on a plain
sqlite3 connection, with the write process's settings (WAL, synchronous FULL, the checkpoint
thread): no WebSocket, no JSON parsing, no signature checks, no other process. On an empty
database, or (`--stored`) on a copy of the cached 1,000,000-event dataset that `python -m
bench` builds. Whatever the relay does on top, its durable ingest cannot beat this figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.data import ingest_events
from bench.stores import Dataset
from relay.core.event import event_from_raw
from relay.store.sqlite_writes import save_batch
from relay.store.write_process import open_writer

DATASET_SIZE = 1_000_000


def one_run(path: Path, raws: list[bytes], batch: int) -> tuple[float, float]:
    """(events per second, CPU microseconds per event) for one pass over `raws`."""
    events = [event_from_raw(raw) for raw in raws]
    db, checkpointer = open_writer(str(path), "FULL", search=False)
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(events), batch):
        save_batch(db, events[start : start + batch])
        checkpointer.after_commit(db)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    checkpointer.stop()
    db.close()
    return len(events) / seconds, cpu / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--stored", action="store_true", help="start from the 1M dataset")
    parser.add_argument("--batch", type=int, default=150, help="events per commit")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    raws = ingest_events(100_000, 2)[: args.events]
    dataset = Dataset(DATASET_SIZE)
    if args.stored and not dataset.ready:
        parser.error("no cached dataset: run `python -m bench --only stored` once first")
    rates, cpus = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as workdir:
            path = Path(workdir) / "store.sqlite"
            if args.stored:
                dataset.copy_pyrelay_db(path)
            rate, cpu = one_run(path, raws, args.batch)
        rates.append(rate)
        cpus.append(cpu)
        print(f"  {rate:,.0f} events/s, {cpu:.0f} us of CPU per event")
    where = "a database holding 1,000,000 events" if args.stored else "an empty database"
    print(
        f"store alone, {where}, batches of {args.batch}: "
        f"{statistics.median(rates):,.0f} events/s (median of {args.runs}), "
        f"{statistics.median(cpus):.0f} us of CPU per event"
    )


if __name__ == "__main__":
    main()
