"""Databases holding the stored dataset, built once per size and cached; runs use copies."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from bench.data import DAY, HASHTAGS, DatasetShape, cache_dir, generate_dataset
from bench.relays import NostrRelay
from relay.core.event import event_from_raw
from relay.store.sqlite import SqliteStore


def shape_for(size: int) -> DatasetShape:
    # A year of history ending two days ago (relays refuse events older than a year).
    span = 300 * DAY
    return DatasetShape(size, int(time.time()) // DAY * DAY - 2 * DAY - span, span)


class Dataset:
    """The cached files for one dataset size: our DB, the events as JSON lines, samples."""

    def __init__(self, size: int) -> None:
        self.size = size
        base = cache_dir()
        self.events_path = base / f"dataset-{size}.jsonl"
        self.pyrelay_db = base / f"dataset-{size}.pyrelay.sqlite"
        self.nostr_relay_db = base / f"dataset-{size}.nostr-relay.sqlite"
        self.samples_path = base / f"dataset-{size}.samples.json"

    @property
    def ready(self) -> bool:
        return self.pyrelay_db.exists() and self.samples_path.exists()

    def build(self, workers: int, log: Any = print) -> None:
        """Sign the dataset and write it into our store with SqliteStore.save_many."""
        if self.ready:
            return
        started = time.monotonic()
        shape = shape_for(self.size)
        partial_db = self.pyrelay_db.with_suffix(".partial")
        for stale in (partial_db, Path(f"{partial_db}-wal"), Path(f"{partial_db}-shm")):
            stale.unlink(missing_ok=True)
        samples: dict[str, Any] = {"ids": [], "authors": {}, "popular": [], "shape": vars(shape)}
        rng = random.Random(1)
        with open(self.events_path.with_suffix(".partial"), "wb") as events_file:
            asyncio.run(self._fill(partial_db, shape, workers, events_file, samples, rng, log))
        self.events_path.with_suffix(".partial").rename(self.events_path)
        partial_db.rename(self.pyrelay_db)
        samples["authors"] = sorted(samples["authors"], key=samples["authors"].get, reverse=True)
        self.samples_path.write_bytes(orjson.dumps(samples))
        log(f"built the {self.size:,}-event dataset in {time.monotonic() - started:.0f} s")

    async def _fill(
        self,
        db: Path,
        shape: DatasetShape,
        workers: int,
        events_file: Any,
        samples: dict[str, Any],
        rng: random.Random,
        log: Any,
    ) -> None:
        store = SqliteStore(db, readers=1, synchronous="OFF", search=False)
        await store.open()
        try:
            done = 0
            now = int(time.time())
            for chunk in generate_dataset(shape, workers):
                events = [event_from_raw(raw) for raw in chunk]
                await store.save_many(events, now)
                events_file.write(b"\n".join(chunk) + b"\n")
                for event in events:
                    if event.kind == 1 and rng.random() < 0.001:
                        samples["ids"].append(event.id)
                    if event.kind == 7 and len(samples["popular"]) < 50:
                        samples["popular"].append(event.tags[0][1])
                    samples["authors"][event.pubkey] = samples["authors"].get(event.pubkey, 0) + 1
                done += len(chunk)
                if done % 100_000 < len(chunk):
                    log(f"  dataset: {done:,} of {shape.size:,} events stored")
            await store.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await store.close()

    def samples(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.samples_path.read_bytes())
        return data

    def copy_pyrelay_db(self, target: Path) -> Path:
        return copy_to_disk(self.pyrelay_db, target)

    def build_nostr_relay_db(self, workdir: Path) -> None:
        """Let nostr-relay create its schema, then insert the same events as its
        add_event would (events row, single-letter tags in `tags`)."""
        if self.nostr_relay_db.exists():
            return
        partial = self.nostr_relay_db.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        relay = NostrRelay(workdir)
        relay.start(partial)
        relay.stop()
        db = sqlite3.connect(partial)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        with open(self.events_path, "rb") as events:
            batch: list[dict[str, Any]] = []
            for line in events:
                batch.append(orjson.loads(line))
                if len(batch) >= 20_000:
                    _insert_nostr_relay(db, batch)
                    batch = []
            _insert_nostr_relay(db, batch)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        partial.rename(self.nostr_relay_db)

    def copy_nostr_relay_db(self, target: Path) -> Path:
        return copy_to_disk(self.nostr_relay_db, target)


def copy_to_disk(source: Path, target: Path) -> Path:
    """Copy, and wait until the copy is on disk. Otherwise the kernel writes the 1.3 GB back
    while the relay runs, and the relay's first fsync (a commit, or a checkpoint of the
    database file) waits for all of it: reads stalled 10-80 ms in the first seconds."""
    shutil.copyfile(source, target)
    with open(target, "rb+") as copy:
        os.fsync(copy.fileno())
    return target


def _insert_nostr_relay(db: sqlite3.Connection, events: list[dict[str, Any]]) -> None:
    # Replaceable kinds: nostr-relay keeps the newest; the dataset has one per author.
    db.executemany(
        "INSERT OR IGNORE INTO events (id, created_at, kind, pubkey, tags, sig, content)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                bytes.fromhex(e["id"]),
                e["created_at"],
                e["kind"],
                bytes.fromhex(e["pubkey"]),
                orjson.dumps(e["tags"]).decode(),
                bytes.fromhex(e["sig"]),
                e["content"],
            )
            for e in events
        ],
    )
    db.executemany(
        "INSERT OR IGNORE INTO tags (id, name, value) VALUES (?, ?, ?)",
        [
            (bytes.fromhex(e["id"]), name, value)
            for e in events
            for name, value in {
                (t[0], t[1] if len(t) > 1 else "") for t in e["tags"] if len(t[0]) == 1
            }
        ],
    )
    db.commit()


def query_shapes(samples: dict[str, Any], count: int) -> dict[str, list[dict[str, Any]]]:
    """`count` filters per shape, drawn from the dataset so that each finds events."""
    rng = random.Random(7)
    authors: list[str] = samples["authors"]
    busy = authors[: max(1, len(authors) // 10)]
    shape = samples["shape"]
    ids: list[str] = samples["ids"]
    popular: list[str] = samples["popular"]

    def window() -> dict[str, Any]:
        since = shape["start"] + rng.randrange(shape["span"] - 3600)
        return {"kinds": [1], "since": since, "until": since + 3600, "limit": 500}

    return {
        "by id": [{"ids": [rng.choice(ids)]} for _ in range(count)],
        "author latest 100": [{"authors": [rng.choice(busy)], "limit": 100} for _ in range(count)],
        "10 authors kind-1 latest 500": [
            {"authors": rng.sample(authors, min(10, len(authors))), "kinds": [1], "limit": 500}
            for _ in range(count)
        ],
        "#e thread, 100": [{"#e": [rng.choice(popular)], "limit": 100} for _ in range(count)],
        "#p mentions, 100": [{"#p": [rng.choice(busy)], "limit": 100} for _ in range(count)],
        "#t + kind 1, 100": [
            {"kinds": [1], "#t": [rng.choice(HASHTAGS)], "limit": 100} for _ in range(count)
        ],
        "kind 1 in 1-hour window": [window() for _ in range(count)],
        # A feed of notes, reposts and reactions scrolled back to some point in time.
        "kinds 1, 6, 7 latest 100 until a time": [
            {"kinds": [1, 6, 7], "until": until, "limit": 100}
            for until in (shape["start"] + rng.randrange(shape["span"]) for _ in range(count))
        ],
        # Two hashtags followed at once: several values of a tag are read one at a time.
        "#t, 2 hashtags, 100": [
            {"#t": rng.sample(HASHTAGS, 2), "limit": 100} for _ in range(count)
        ],
    }
