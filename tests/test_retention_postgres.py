"""Retention on PostgreSQL: the rules of test_retention.py on PostgresStore, the storage
budget turned into a number of events (the tables do not shrink), one instance pruning at
a time, rows a writer holds skipped instead of waited for, and the metric."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import orjson
import pytest

from relay.core.event import Event, parse_event
from relay.core.filters import parse_filter
from relay.core.retention import Retention
from relay.store.base import Purged, SaveOutcome
from relay.store.pg_retention import PRUNE_LOCK, SIZE
from relay.store.postgres import PostgresStore
from tests import test_metrics
from tests.conftest import RelayFactory
from tests.nostr import Keys
from tests.test_retention import HOUR, NOW, event

OpenStore = Callable[..., Any]


@pytest.fixture
def relay_backend() -> str:
    return "postgres"


@pytest.fixture
async def open_store(pg_url: str) -> AsyncIterator[OpenStore]:
    opened: list[PostgresStore] = []

    async def factory(retention: Retention, **kw: Any) -> PostgresStore:
        store = PostgresStore(pg_url, readers=1, retention=retention, durable=False, **kw)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def stored(store: PostgresStore, **filter: Any) -> set[str]:
    found = await store.query([parse_filter({**filter, "limit": 5000})], NOW)
    return {parse_event(orjson.loads(raw)).id for raw in found}


async def test_old_events_of_a_ruled_kind_go_one_batch_at_a_time(open_store: OpenStore) -> None:
    store = await open_store(Retention(kind_ages=((1, HOUR),), batch=2))
    old = [event(age=2 * HOUR + i) for i in range(3)]
    young = event(age=10)
    other = event(kind=7, age=5 * HOUR)
    profile = event(kind=0, age=5 * HOUR)
    await store.save_many([*old, young, other, profile], NOW)
    assert await store.purge_expired(NOW) == Purged(aged=2)
    assert await store.purge_expired(NOW) == Purged(aged=1)
    assert await store.purge_expired(NOW) == Purged()
    assert await stored(store) == {young.id, other.id, profile.id}


async def test_default_age_spares_kept_kinds_and_kinds_with_their_own_rule(
    open_store: OpenStore,
) -> None:
    store = await open_store(Retention(kind_ages=((1, 10 * HOUR),), default_age=HOUR))
    note = event(age=2 * HOUR)
    reaction = event(kind=7, age=2 * HOUR)
    kept = [event(kind=k, age=9 * HOUR) for k in (0, 3, 10002)]
    expiring = event(age=60, tags=[["expiration", str(NOW - 1)]])
    await store.save_many([note, reaction, *kept, expiring], NOW)
    assert await store.purge_expired(NOW) == Purged(expired=1, aged=1)
    assert await stored(store) == {note.id, *(e.id for e in kept)}


async def test_pruning_keeps_search_and_tombstones(open_store: OpenStore, pg_url: str) -> None:
    store = await open_store(Retention(kind_ages=((5, HOUR), (1, 3 * HOUR))), search=True)
    target = event(content="findme", age=10)
    deletion = event(kind=5, age=2 * HOUR, tags=[["e", target.id]])
    old_note = event(content="findme too", age=4 * HOUR, tags=[["t", "old"]])
    await store.save_many([target, old_note], NOW)
    await store.save_many([deletion], NOW)
    assert await store.purge_expired(NOW) == Purged(aged=2)
    assert await stored(store, search="findme") == set()
    assert await stored(store) == set()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM tags") == 0
    finally:
        await conn.close()
    # The NIP-09 tombstone outlives its pruned request.
    assert await store.save_many([target], NOW) == [SaveOutcome.DELETED]


def sizeable(age: int, kind: int = 1) -> Event:
    """An event of about 2 KB that does not compress (TOAST would shrink repeated text)."""
    return event(kind=kind, age=age, content=os.urandom(1000).hex())


async def size_of(pg_url: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return int(await conn.fetchval(SIZE))
    finally:
        await conn.close()


async def prune_all(store: PostgresStore) -> int:
    """Purge until nothing more goes; how many went over the budget."""
    over_budget = 0
    for _ in range(100):
        purged = await store.purge_expired(NOW)
        assert purged.aged == 0
        if not purged.pruned:
            return over_budget
        over_budget += purged.over_budget
    raise AssertionError("pruning does not end")


async def test_over_the_budget_the_oldest_go_and_the_rest_stays(
    open_store: OpenStore, pg_url: str
) -> None:
    events = [sizeable(age=10_000 - i) for i in range(300)]
    profile = sizeable(age=20_000, kind=0)
    unpruned = await open_store(Retention())
    await unpruned.save_many([*events, profile], NOW)
    budget = await size_of(pg_url) // 2
    store = await open_store(Retention(budget_bytes=budget, batch=50))
    pruned = await prune_all(store)
    left = await stored(store)
    assert profile.id in left
    kept = [e for e in events if e.id in left]
    assert pruned == len(events) - len(kept)
    # About half: the deleted rows' space is not given back, and pruning must not go on
    # until every prunable event is gone waiting for the size to come down.
    assert len(events) // 4 < len(kept) < len(events) * 3 // 4
    gone = [e for e in events if e.id not in left]
    assert max(e.created_at for e in gone) <= min(e.created_at for e in kept)
    # New events take the freed room: pruning keeps the count where it was.
    newer = [sizeable(age=100 - i) for i in range(40)]
    await store.save_many(newer, NOW)
    assert await prune_all(store) == 40
    assert len(await stored(store)) == len(kept) + 1


async def test_one_instance_prunes_at_a_time(open_store: OpenStore, pg_url: str) -> None:
    rules = Retention(kind_ages=((1, HOUR),))
    store = await open_store(rules)
    await store.save_many([event(age=2 * HOUR + i) for i in range(5)], NOW)
    other_instance = await asyncpg.connect(pg_url)
    try:
        await other_instance.execute("SELECT pg_advisory_lock($1)", PRUNE_LOCK)
        # Another instance holds the turn: this one leaves the pruning to it.
        assert await store.purge_expired(NOW) == Purged()
        await other_instance.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)
        assert await store.purge_expired(NOW) == Purged(aged=5)
    finally:
        await other_instance.close()


async def test_rows_a_writer_holds_are_skipped_not_waited_for(
    open_store: OpenStore, pg_url: str
) -> None:
    store = await open_store(Retention(kind_ages=((1, HOUR),)))
    held, free = event(age=2 * HOUR), event(age=3 * HOUR)
    await store.save_many([held, free], NOW)
    writer = await asyncpg.connect(pg_url)
    try:
        async with writer.transaction():
            await writer.execute(
                "SELECT 1 FROM events WHERE id = $1 FOR UPDATE", bytes.fromhex(held.id)
            )
            # Bounded so that a prune waiting on the lock fails the test instead of hanging.
            assert await asyncio.wait_for(store.purge_expired(NOW), 10) == Purged(aged=1)
        assert await store.purge_expired(NOW) == Purged(aged=1)
    finally:
        await writer.close()
    assert await stored(store) == set()


async def test_the_pruned_counter_on_postgresql(start_relay: RelayFactory) -> None:
    await test_metrics.test_pruned_events_are_counted_by_reason(start_relay, Keys())
