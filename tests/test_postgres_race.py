"""Several writers on one PostgreSQL database: every rule holds as with one writer.

Three worker processes (tests/pg_race_worker.py, each a PostgresStore with its own
connections, as three relay instances would have) get the events of a round at the same
moment, each its share in its own order and batches, and save them concurrently. Each
round's events conflict on purpose: versions of a replaceable and an addressable event,
two of them in the same second (the lowest id must win), deletions by id and by address
with their targets, a request to vanish with the author's events and a gift wrap to them,
the same event on every instance. The rounds are built so that the end state does not
depend on the order of arrival (checked on the reference store), so whatever the
interleaving, the database must end up holding exactly what one writer would have kept,
and no event may be STORED twice.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from relay.core.event import Event, parse_event
from relay.core.filters import Filter
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from tests.nostr import Keys
from tests.pg import schema_url

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3
ROUNDS = 25
NOW = 1_700_000_000  # the workers' `now` too
T = NOW - 1000


def signed(keys: Keys, kind: int, created_at: int, tags: list[list[str]], content: str) -> Event:
    return parse_event(keys.sign(kind=kind, content=content, tags=tags, created_at=created_at))


def round_events(rng: random.Random) -> list[Event]:
    """One round's conflicting events, on keys of its own."""
    author, deleter, vanisher, wrapper = Keys(), Keys(), Keys(), Keys()
    events: list[Event] = []
    # Replaceable and addressable versions: one older, two of the newest second.
    for kind, tags in ((0, []), (30000, [["d", "x"]])):
        events += [signed(author, kind, T, tags, "old")]
        events += [signed(author, kind, T + 1, tags, f"tie {n}") for n in range(2)]
    # NIP-09 by id: a note and its deletion; by address: an older version deleted, a
    # newer one kept.
    note = signed(deleter, 1, T, [], "doomed")
    events += [note, signed(deleter, 5, T + 1, [["e", note.id]], "")]
    address = f"30001:{deleter.pubkey}:y"
    events += [
        signed(deleter, 30001, T, [["d", "y"]], "deleted version"),
        signed(deleter, 5, T + 1, [["a", address]], ""),
        signed(deleter, 30001, T + 2, [["d", "y"]], "kept version"),
    ]
    # NIP-62: the author's earlier notes and a gift wrap to them go, a later note stays.
    events += [
        signed(vanisher, 1, T, [], "erased"),
        signed(wrapper, 1059, T, [["p", vanisher.pubkey]], "wrapped"),
        signed(vanisher, 62, T + 1, [["relay", "ALL_RELAYS"]], ""),
        signed(vanisher, 1, T + 2, [], "after"),
    ]
    rng.shuffle(events)
    return events


def shares(rng: random.Random, events: list[Event]) -> list[list[list[str]]]:
    """Each worker's batches: every event goes to one worker or more (duplicates), in an
    order of its own, cut into one to three batches."""
    per_worker: list[list[Event]] = [[] for _ in range(WORKERS)]
    for event in events:
        for worker in rng.sample(range(WORKERS), rng.choice([1, 1, 2, WORKERS])):
            per_worker[worker].append(event)
    batches: list[list[list[str]]] = []
    for mine in per_worker:
        rng.shuffle(mine)
        cuts = sorted(rng.sample(range(1, len(mine)), min(2, len(mine) - 1)))
        bounds = [0, *cuts, len(mine)] if mine else [0]
        batches.append([[e.raw.decode() for e in mine[a:b]] for a, b in itertools.pairwise(bounds)])
    return batches


async def one_writer_keeps(events: list[Event]) -> list[bytes]:
    store = MemoryStore()
    await store.save_many(events, NOW)
    return await store.query([Filter()], NOW)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with schema_url() as schema:
        # The schema exists before the workers race to open it.
        store = PostgresStore(schema, readers=1)
        await store.open()
        await store.close()
        yield schema


@pytest.fixture
def workers(url: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.pg_race_worker", url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(WORKERS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
        yield procs
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_round(procs: list[subprocess.Popen[bytes]], batches: list[list[list[str]]]) -> list[str]:
    """Send every worker its batches at once; the outcome names, in no particular order."""
    for proc, mine in zip(procs, batches, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(orjson.dumps(mine) + b"\n")
        proc.stdin.flush()
    outcomes: list[str] = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"a worker ended with {proc.wait(10)}"
        outcomes += [name for batch in orjson.loads(line) for name in batch]
    return outcomes


async def test_concurrent_instances_keep_the_single_writer_rules(
    url: str, workers: list[subprocess.Popen[bytes]]
) -> None:
    rng = random.Random(15)
    expected: list[bytes] = []
    for _ in range(ROUNDS):
        events = round_events(rng)
        kept = await one_writer_keeps(events)
        for _ in range(3):  # the round's end state is the same in any order
            assert await one_writer_keeps(rng.sample(events, len(events))) == kept
        expected += kept
        batches = shares(rng, events)
        sent = [orjson.loads(raw)["id"] for mine in batches for batch in mine for raw in batch]
        outcomes = await asyncio.to_thread(run_round, workers, batches)
        stored = Counter(i for i, name in zip(sent, outcomes, strict=True) if name == "STORED")
        assert max(stored.values()) == 1, "an event was STORED twice"
        kept_ids = {orjson.loads(raw)["id"] for raw in kept}
        assert kept_ids <= set(stored), "an event in the end state was never STORED"
    store = PostgresStore(url, readers=1)
    await store.open()
    try:
        found = await store.query([Filter()], NOW)
    finally:
        await store.close()
    assert sorted(found) == sorted(expected)
