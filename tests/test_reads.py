"""Paged, fair and interruptible reads: EventStore.query_pages, count and SqliteStore.read.

Pages joined are query()'s answer (the MemoryStore oracle's, for random data and filters, on
both stores) and each page keeps its bounds; a page holds one page in memory, not the
limits; readers go to another owner before a long queue of one owner's; a cancelled read
is interrupted inside SQLite or, still queued, never runs.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import threading
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.event import Event
from relay.core.filters import Filter, parse_filter
from relay.store.base import EventStore, QueryTimeout
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore
from relay.store.sqlite_reads import PagedQuery
from tests.test_store_property import KEYS, NOW, Purge, Scenario, scenarios, signed

# Never ends by itself: only an interrupt stops it.
FOREVER = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"


async def pages_of(
    store: EventStore, filters: Sequence[Filter], page_events: int, page_bytes: int
) -> list[list[bytes]]:
    return [
        page
        async for page in store.query_pages(
            filters, NOW, page_events=page_events, page_bytes=page_bytes
        )
    ]


def assert_bounded(pages: list[list[bytes]], page_events: int, page_bytes: int) -> None:
    for page in pages:
        assert 0 < len(page) <= page_events
        # A page ends after the event that crosses page_bytes, not later.
        assert sum(map(len, page[:-1])) < page_bytes


async def check_pages(scenario: Scenario, path: Path, page_events: int, page_bytes: int) -> None:
    memory = MemoryStore()
    sqlite = SqliteStore(path, synchronous="OFF")
    await sqlite.open()
    try:
        for step in scenario.steps:
            for store in (memory, sqlite):
                if isinstance(step, Purge):
                    await store.purge_expired(NOW)
                else:
                    await store.save_many(step, NOW)
        for query in scenario.queries:
            expected = await memory.query(query, NOW)
            for store in (memory, sqlite):
                pages = await pages_of(store, query, page_events, page_bytes)
                assert_bounded(pages, page_events, page_bytes)
                joined = [raw for page in pages for raw in page]
                if any(f.search for f in query):  # ranked differently: compared as sets
                    assert sorted(joined) == sorted(expected), query
                else:
                    assert joined == expected, query
    finally:
        await sqlite.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    scenario=scenarios(),
    page_events=st.integers(1, 4),
    page_bytes=st.sampled_from([1, 400, 1500, 1 << 20]),
)
def test_pages_join_into_the_oracles_answer(
    scenario: Scenario, page_events: int, page_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check_pages(scenario, Path(tmp) / "relay.sqlite", page_events, page_bytes))


def many_events(count: int, seed: int) -> list[Event]:
    """Three authors, two kinds, six seconds (ties everywhere), a few tags."""
    rng = random.Random(seed)
    found = []
    for number in range(count):
        tags = [["t", rng.choice("xyz")]] if rng.random() < 0.6 else []
        if tags and rng.random() < 0.3:  # two values of one tag: found twice, sent once
            tags.append(["t", rng.choice("xyz")])
        keys = rng.choice(KEYS)
        content = f"{seed}.{number}"
        found.append(signed(keys, rng.choice([1, 7]), NOW - rng.randrange(6), tags, content))
    return found


MANY_FILTERS: list[list[dict[str, Any]]] = [
    [{}],
    [{"limit": 37}],
    [{"authors": [KEYS[0].pubkey, KEYS[1].pubkey], "kinds": [1], "limit": 30}],
    [{"authors": [KEYS[0].pubkey, KEYS[1].pubkey], "limit": 45}, {"#t": ["x"], "limit": 20}],
    [{"#t": ["x", "y"], "limit": 50}, {"kinds": [7], "limit": 25}, {"kinds": [1, 7]}],
    [{"#t": [v]} for v in "xyz"] + [{"authors": [k.pubkey], "limit": 11} for k in KEYS],
    # Several kinds with a limit: read one kind at a time and merged (store/plans.py).
    [{"kinds": [1, 7], "limit": 40}],
    [{"kinds": [7, 1], "limit": 60, "since": NOW - 3}, {"kinds": [1], "limit": 9}],
    # Several values of a tag with a limit: read one value at a time, each event once.
    [{"#t": ["x", "y"], "limit": 40}],
    [{"#t": ["z", "x", "y"], "kinds": [1], "limit": 70}, {"#t": ["y", "z"], "limit": 9}],
]


@pytest.mark.parametrize("filters_json", MANY_FILTERS)
@pytest.mark.parametrize(("page_events", "page_bytes"), [(1, 1 << 20), (7, 1 << 20), (50, 2000)])
async def test_pages_of_a_larger_store_join_into_the_oracles_answer(
    filters_json: list[dict[str, Any]], page_events: int, page_bytes: int, tmp_path: Path
) -> None:
    filters = [parse_filter(f) for f in filters_json]
    events = many_events(300, seed=len(filters_json))
    memory = MemoryStore()
    sqlite = SqliteStore(tmp_path / "s.sqlite", synchronous="OFF")
    await sqlite.open()
    try:
        await memory.save_many(events, NOW)
        await sqlite.save_many(events, NOW)
        expected = await memory.query(filters, NOW)
        pages = await pages_of(sqlite, filters, page_events, page_bytes)
        assert len(pages) > 1
        assert_bounded(pages, page_events, page_bytes)
        assert [raw for page in pages for raw in page] == expected
        assert await sqlite.query(filters, NOW) == expected
    finally:
        await sqlite.close()


async def test_writes_between_pages_neither_repeat_nor_reorder(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", synchronous="OFF")
    await store.open()
    try:
        await store.save_many(many_events(60, seed=1), NOW)
        seen: list[bytes] = []
        later = many_events(40, seed=2)
        pages = store.query_pages([Filter()], NOW, page_events=10)
        async for page in pages:
            seen += page
            if later:  # newer, older and tied events land on both sides of the position
                await store.save_many(later[:10], NOW)
                del later[:10]
        keys = [(-obj["created_at"], obj["id"]) for obj in map(orjson.loads, seen)]
        assert keys == sorted(keys)
        assert len(set(seen)) == len(seen)
    finally:
        await store.close()


async def test_events_deleted_between_pages_are_not_sent(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", synchronous="OFF")
    await store.open()
    try:
        notes = [signed(KEYS[0], 1, NOW - n, None, f"note {n}") for n in range(20)]
        await store.save_many(notes, NOW)
        # One event a page (page_bytes=1): the second page reads ten keys ahead.
        pages = store.query_pages([Filter(kinds=frozenset({1}))], NOW, page_bytes=1)
        seen = [*await anext(pages), *await anext(pages)]
        deletion = signed(KEYS[0], 5, NOW, [["e", notes[3].id], ["e", notes[4].id]])
        await store.save_many([deletion], NOW)
        seen += [raw async for page in pages for raw in page]
        kept = [e.raw for n, e in enumerate(notes) if n not in (3, 4)]
        assert seen == kept
    finally:
        await store.close()


def big_events(groups: int, per_group: int, size: int) -> list[Event]:
    """`groups` kinds of `per_group` events of about `size` bytes each."""
    rng = random.Random(3)
    return [
        signed(KEYS[n % 3], 1000 + group, NOW - rng.randrange(50), None, f"{n}" + "x" * size)
        for group in range(groups)
        for n in range(per_group)
    ]


def test_a_page_holds_a_page_in_memory_not_the_limits(tmp_path: Path) -> None:
    """8 filters, each wanting 100 events of 16 KB (sorted by SQLite: two kinds each):
    12.8 MB in all, 1.6 MB per filter; no page of 64 KB may need more than 1 MB."""
    path = tmp_path / "s.sqlite"

    async def fill() -> None:
        store = SqliteStore(path, synchronous="OFF")
        await store.open()
        await store.save_many(big_events(8, 100, 16_000), NOW)
        await store.close()

    asyncio.run(fill())
    filters = [parse_filter({"kinds": [1000 + g, 2000 + g], "limit": 5000}) for g in range(8)]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    paged = PagedQuery(filters, NOW, page_events=500, page_bytes=64_000)
    tracemalloc.start()
    try:
        events = 0
        while not paged.finished:
            tracemalloc.reset_peak()
            events += len(paged.next_page(db))
            assert tracemalloc.get_traced_memory()[1] < 1_000_000
    finally:
        tracemalloc.stop()
        db.close()
    assert events == 800


@pytest.fixture
async def one_reader(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store with a single reader, so that who gets it next is the order of service."""
    store = SqliteStore(tmp_path / "s.sqlite", synchronous="OFF", readers=1)
    await store.open()
    yield store
    await store.close()


class Gate:
    """Holds a reader on its thread until opened: a slice that runs as long as a test likes."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, db: sqlite3.Connection) -> None:
        self.entered.set()
        self.opened.wait(30)

    async def hold(self, store: SqliteStore, owner: str) -> asyncio.Task[None]:
        task = asyncio.create_task(store.read(self, owner))
        assert await asyncio.to_thread(self.entered.wait, 30)
        return task


async def test_another_owners_query_goes_before_a_queue_of_heavy_ones(
    one_reader: SqliteStore,
) -> None:
    store = one_reader
    await store.save_many(many_events(50, seed=4), NOW)
    finished: list[str] = []

    async def count(owner: str, name: str) -> None:
        await store.count([Filter(kinds=frozenset({1}))], NOW, owner=owner)
        finished.append(name)

    async def query(owner: str, name: str) -> None:
        await store.query([parse_filter({"ids": ["0" * 64]})], NOW, owner=owner)
        finished.append(name)

    gate = Gate()
    running = await gate.hold(store, "attacker")
    heavy = [asyncio.create_task(count("attacker", f"count {n}")) for n in range(50)]
    await asyncio.sleep(0)
    victim = asyncio.create_task(query("victim", "by id"))
    await asyncio.sleep(0)
    gate.opened.set()
    await asyncio.gather(running, *heavy, victim)
    assert finished == ["by id", *(f"count {n}" for n in range(50))]


@pytest.mark.timeout(60)
async def test_cancelling_a_running_read_interrupts_sqlite(one_reader: SqliteStore) -> None:
    store = one_reader
    started = threading.Event()

    def forever(db: sqlite3.Connection) -> Any:
        started.set()
        return db.execute(FOREVER).fetchone()

    task = asyncio.create_task(store.read(forever, "attacker"))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The only reader serves the next read: the endless statement was stopped inside SQLite.
    assert await store.count([Filter()], NOW, owner="victim") == 0
    assert store.interrupted == 1


async def test_a_cancelled_read_holds_its_reader_until_its_thread_is_done(
    one_reader: SqliteStore,
) -> None:
    store = one_reader
    gate = Gate()  # busy in Python, where no interrupt reaches: the thread goes on
    running = await gate.hold(store, "a")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    ran: list[str] = []
    following = asyncio.create_task(store.read(lambda db: ran.append("next"), "b"))
    await asyncio.sleep(0)
    # The reader's thread is still inside the abandoned slice: nobody else gets it yet.
    assert store._pool.free == 0
    assert store._pool.waiting == 1
    assert ran == []
    gate.opened.set()
    await following
    assert ran == ["next"]
    assert store.interrupted == 0  # it ended by itself, not inside SQLite


@pytest.mark.timeout(60)
async def test_query_timeout_bounds_each_slice(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", readers=1, query_timeout=0.05)
    await store.open()
    try:
        with pytest.raises(QueryTimeout):
            await store.read(lambda db: db.execute(FOREVER).fetchone(), "owner")
        assert store.interrupted == 0  # a timeout, not a cancellation
        assert await store.count([Filter()], NOW) == 0
    finally:
        await store.close()


async def test_a_read_cancelled_while_queued_never_runs(one_reader: SqliteStore) -> None:
    store = one_reader
    ran: list[str] = []
    gate = Gate()
    running = await gate.hold(store, "a")
    queued = asyncio.create_task(store.read(lambda db: ran.append("cancelled"), "b"))
    paging = asyncio.create_task(pages_of(store, [Filter()], 10, 1 << 20))
    await asyncio.sleep(0)
    assert store._pool.waiting == 2
    queued.cancel()
    paging.cancel()
    await asyncio.sleep(0)
    assert store._pool.waiting == 0
    gate.opened.set()
    await running
    await store.read(lambda db: ran.append("later"), "c")
    assert ran == ["later"]
    for task in (queued, paging):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert store.interrupted == 0  # nothing had started


async def test_closing_the_pages_early_holds_no_reader_and_no_snapshot(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", synchronous="OFF", readers=1)
    await store.open()
    try:
        await store.save_many(many_events(50, seed=5), NOW)
        pages = store.query_pages([Filter(), Filter(kinds=frozenset({7}))], NOW, page_events=5)
        first = await anext(pages)
        assert len(first) == 5
        # Between pages no statement is open: a write and a full checkpoint go through,
        # which a reader still inside its first snapshot would block.
        await store.save_many(many_events(5, seed=6), NOW)
        checkpoint = await store.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert await checkpoint.fetchone() == (0, 0, 0)  # not busy, the WAL emptied
        await pages.aclose()
        assert store._pool.free == 1
        assert await store.count([Filter()], NOW) == 55
    finally:
        await store.close()


async def test_page_bounds_must_hold_something(store: EventStore) -> None:
    for page_events, page_bytes in ((0, 100), (10, 0)):
        with pytest.raises(ValueError, match="at least one"):
            await pages_of(store, [Filter()], page_events, page_bytes)
