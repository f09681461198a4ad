"""Retention: per-kind maximum age, kinds never pruned, the storage budget; pruning in
batches by the writer, with the search index and the tombstones kept consistent."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import ConfigError, Settings, from_mapping, validate
from relay.core.event import Event, parse_event
from relay.core.filters import parse_filter
from relay.core.retention import Retention, parse_max_ages
from relay.store.base import Purged, SaveOutcome
from relay.store.sqlite import SqliteStore
from relay.store.writer import Writer
from tests.conftest import RelayFactory, url_of
from tests.nostr import Client, Keys

NOW = int(time.time())
HOUR = 3600
AUTHOR = Keys()


def event(kind: int = 1, age: int = 0, content: str = "x", **kw: Any) -> Event:
    return parse_event(AUTHOR.sign(kind=kind, content=content, created_at=NOW - age, **kw))


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[SqliteStore] = []

    async def factory(retention: Retention, **kw: Any) -> SqliteStore:
        store = SqliteStore(tmp_path / "r.sqlite", retention=retention, **kw)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def stored(store: SqliteStore, **filter: Any) -> set[str]:
    found = await store.query([parse_filter({**filter, "limit": 5000})], NOW)
    return {parse_event(orjson.loads(raw)).id for raw in found}


def test_max_ages_parse_kinds_and_a_default() -> None:
    assert parse_max_ages(("1:3600", "*:86400", " 7 : 60 ")) == (((1, 3600), (7, 60)), 86400)
    for bad in ("1", "x:5", "1:-5", "1:0", "70000:5", "1:abc"):
        with pytest.raises(ValueError, match=r"kind|seconds"):
            parse_max_ages((bad,))


def test_settings_build_the_rules_and_refuse_bad_ones() -> None:
    settings = from_mapping(
        Settings(), {"retention_max_age": "1:3600,*:60", "storage_budget_bytes": "1000"}, "env"
    )
    rules = validate(settings).retention
    assert rules.max_age(1) == 3600
    assert rules.max_age(7) == 60
    assert rules.max_age(0) == 0  # kept for ever by default: profiles
    assert rules.max_age(10002) == 0
    assert rules.budget_bytes == 1000
    with pytest.raises(ConfigError, match="retention_max_age"):
        validate(from_mapping(Settings(), {"retention_max_age": "one:5"}, "env"))


def test_rules_survive_the_write_process_command_line() -> None:
    rules = Retention(((1, 5), (7, 9)), 60, frozenset({0}), 123, 10)
    assert Retention.decode(rules.encode()) == rules


async def test_old_events_of_a_ruled_kind_go_one_batch_at_a_time(
    open_store: Callable[..., Any],
) -> None:
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
    open_store: Callable[..., Any],
) -> None:
    store = await open_store(Retention(kind_ages=((1, 10 * HOUR),), default_age=HOUR))
    note = event(age=2 * HOUR)
    reaction = event(kind=7, age=2 * HOUR)
    kept = [
        event(kind=0, age=9 * HOUR),
        event(kind=3, age=9 * HOUR),
        event(kind=10002, age=9 * HOUR),
    ]
    await store.save_many([note, reaction, *kept], NOW)
    assert await store.purge_expired(NOW) == Purged(aged=1)
    assert await stored(store) == {note.id, *(e.id for e in kept)}


def used_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


async def test_over_the_budget_the_oldest_prunable_events_go_first(
    open_store: Callable[..., Any], tmp_path: Path
) -> None:
    events = [event(age=1000 - i, content="y" * 2000) for i in range(300)]
    profile = event(kind=0, age=5000, content="z" * 2000)
    unpruned = await open_store(Retention())
    await unpruned.save_many([*events, profile], NOW)
    await unpruned.close()
    path = tmp_path / "r.sqlite"
    budget = used_bytes(path) // 2
    store = await open_store(Retention(budget_bytes=budget, batch=50))
    rounds = over_budget = 0
    while (purged := await store.purge_expired(NOW)).pruned:
        assert purged.aged == 0  # no age rule: every one went for the budget
        over_budget += purged.over_budget
        rounds += 1
        assert rounds < 50, "pruning does not end"
    assert used_bytes(path) <= budget
    left = await stored(store)
    assert profile.id in left
    kept_notes = [e for e in events if e.id in left]
    assert 0 < len(kept_notes) < len(events)
    assert over_budget == len(events) - len(kept_notes)
    # What is left is the newest: no kept note is older than a pruned one.
    pruned = [e for e in events if e.id not in left]
    assert max(e.created_at for e in pruned) <= min(e.created_at for e in kept_notes)


async def test_pruning_keeps_the_search_index_and_tombstones(
    open_store: Callable[..., Any], tmp_path: Path
) -> None:
    store = await open_store(Retention(kind_ages=((5, HOUR), (1, 3 * HOUR))), search=True)
    target = event(content="findme", age=10)
    deletion = event(kind=5, age=2 * HOUR, tags=[["e", target.id]])
    old_note = event(content="findme too", age=4 * HOUR)
    await store.save_many([target, old_note], NOW)
    await store.save_many([deletion], NOW)
    assert await store.purge_expired(NOW) == Purged(aged=2)  # the deletion request and the old note
    db = sqlite3.connect(tmp_path / "r.sqlite")
    try:
        rows = db.execute("SELECT count(*) FROM events").fetchone()[0]
        indexed = db.execute("SELECT count(*) FROM events_fts").fetchone()[0]
    finally:
        db.close()
    assert rows == indexed == 0
    assert await stored(store, search="findme") == set()
    # The NIP-09 tombstone outlives its pruned request.
    assert await store.save_many([target], NOW) == [SaveOutcome.DELETED]


async def test_the_write_process_prunes_with_the_same_rules(
    open_store: Callable[..., Any],
) -> None:
    store = await open_store(Retention(kind_ages=((1, HOUR),)), write_process=True)
    old, young = event(age=2 * HOUR), event(age=5)
    await store.save_many([old, young], NOW)
    assert await store.purge_expired(NOW) == Purged(aged=1)
    assert await stored(store) == {young.id}


async def test_the_writer_comes_back_at_once_while_batches_are_full(
    open_store: Callable[..., Any],
) -> None:
    store = await open_store(Retention(kind_ages=((1, HOUR),), batch=3))
    await store.save_many([event(age=2 * HOUR + i) for i in range(10)], NOW)
    # An hour between periodic purges: only the full-batch rule can empty it in time.
    writer = Writer(store, purge_interval=HOUR, prune_batch=3)
    writer.start()
    try:
        for _ in range(500):  # bounded: 10 s at most
            if not await stored(store):
                break
            await asyncio.sleep(0.02)
        assert await stored(store) == set()
        # Ingest goes on beside it.
        assert await writer.save(event(age=1)) is SaveOutcome.STORED
    finally:
        await writer.close()


async def test_the_relay_refuses_an_event_already_past_its_age(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay(retention_max_age=("1:3600",))
    client = await Client.connect(url_of(relay))
    try:
        reply = await client.publish(AUTHOR.sign(kind=1, created_at=NOW - 2 * HOUR))
        assert reply[2] is False
        assert reply[3].startswith("blocked:")
        assert (await client.publish(AUTHOR.sign(kind=1, created_at=NOW - 60)))[2] is True
        assert (await client.publish(AUTHOR.sign(kind=0, created_at=NOW - 9 * HOUR)))[2] is True
    finally:
        await client.close()


async def test_a_queued_event_is_saved_before_the_backlog_is_pruned(
    open_store: Callable[..., Any],
) -> None:
    store = await open_store(Retention(kind_ages=((1, HOUR),), batch=3))
    backlog = [event(age=2 * HOUR + i) for i in range(300)]
    await store.save_many(backlog, NOW)
    writer = Writer(store, purge_interval=HOUR, prune_batch=3)
    fresh = event(age=1)
    saving = asyncio.ensure_future(writer.save(fresh))
    await asyncio.sleep(0)  # the event is queued before the writer's first turn
    writer.start()
    try:
        assert await saving is SaveOutcome.STORED
        # Saved after a batch or two of pruning, not after all hundred of them.
        assert len(await stored(store)) > 200
    finally:
        await writer.close()
