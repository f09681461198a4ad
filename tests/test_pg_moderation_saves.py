"""NIP-86 on PostgreSQL, applied by the database itself (relay_save_batch, postgres_v3.sql).

A store never consults an instance's in-memory moderation state, so every save here
stands for an instance that has not heard of the change yet. What the moderation table
rules out is refused with the relay's own answer and neither stored nor announced; and a
batch in flight and a change are ordered: either the batch commits first and the ban
erases what it stored, or the batch waits for the change and sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from relay.core.event import Event, parse_event
from relay.core.filters import Filter
from relay.core.moderation import Change
from relay.store import pg_batch, pg_moderation
from relay.store.base import SaveOutcome
from relay.store.pg_moderation import PostgresModeration
from relay.store.postgres import SAVE_BATCH, PostgresStore
from tests.conftest import wait_for
from tests.nostr import Keys

NOW = 1_700_000_000


def note(keys: Keys, content: str = "hello") -> Event:
    return parse_event(keys.sign(content=content, created_at=NOW - 10))


def ban_pubkey(pubkey: str) -> Change:
    return Change("banned_pubkeys", pubkey, "spam", purge_pubkey=pubkey)


def ban_event(event_id: str) -> Change:
    return Change("banned_events", event_id, "illegal", purge_event=event_id)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url, readers=1, durable=False)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def stored(store: PostgresStore) -> list[bytes]:
    return await store.query([Filter()], NOW)


async def test_a_banned_pubkeys_events_are_refused_blocked(
    pg_url: str, store: PostgresStore
) -> None:
    spammer, other = Keys(), Keys()
    await PostgresModeration(pg_url).apply(ban_pubkey(spammer.pubkey))
    kept = note(other)
    outcomes = await store.save_many([note(spammer), kept], NOW)
    assert outcomes == [SaveOutcome.BANNED_PUBKEY, SaveOutcome.STORED]
    assert outcomes[0].reason == "blocked: this pubkey is banned here"
    assert await stored(store) == [kept.raw]


async def test_a_banned_event_is_refused_until_allowed_again(
    pg_url: str, store: PostgresStore
) -> None:
    event = note(Keys())
    moderation = PostgresModeration(pg_url)
    await moderation.apply(ban_event(event.id))
    [outcome] = await store.save_many([event], NOW)
    assert outcome is SaveOutcome.BANNED_EVENT
    assert outcome.reason == "blocked: this event is banned here"
    assert await stored(store) == []
    await moderation.apply(Change("banned_events", event.id, added=False))
    assert await store.save_many([event], NOW) == [SaveOutcome.STORED]


async def test_an_allowlist_admits_only_its_pubkeys(pg_url: str, store: PostgresStore) -> None:
    friend, stranger = Keys(), Keys()
    await PostgresModeration(pg_url).apply(Change("allowed_pubkeys", friend.pubkey))
    welcome = note(friend)
    outcomes = await store.save_many([note(stranger), welcome], NOW)
    assert outcomes == [SaveOutcome.NOT_ALLOWED, SaveOutcome.STORED]
    assert outcomes[0].reason == "restricted: only allowed pubkeys may publish here"
    assert await stored(store) == [welcome.raw]


async def test_a_refused_event_is_not_announced(pg_url: str, store: PostgresStore) -> None:
    spammer, other = Keys(), Keys()
    await PostgresModeration(pg_url).apply(ban_pubkey(spammer.pubkey))
    heard: list[Event] = []
    watcher = PostgresStore(pg_url, readers=1)
    await watcher.open()
    try:
        await watcher.follow(heard.append)
        marker = note(other, "after the spam")
        await store.save_many([note(spammer)], NOW)
        await store.save_many([marker], NOW)
        # Notifications come in commit order: the spam would have come first.
        await wait_for(lambda: len(heard) > 0)
        assert [event.id for event in heard] == [marker.id]
    finally:
        await watcher.close()


async def blocked_by(pg_url: str, pid: int) -> int:
    """How many backends wait for a lock the backend `pid` holds."""
    conn = await asyncpg.connect(pg_url)
    try:
        waiting: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        )
        return waiting
    finally:
        await conn.close()


async def until_blocked_by(pg_url: str, conn: asyncpg.Connection) -> None:
    pid = conn.get_server_pid()
    for _ in range(1000):
        if await blocked_by(pg_url, pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing came to wait for the open transaction")


def allow_someone_else(event: Event) -> Change:
    return Change("allowed_pubkeys", Keys().pubkey)


# Each change, as `banpubkey`, `banevent` and `allowpubkey` make it, against an event, and
# what it makes of that event.
CHANGES: dict[str, tuple[Callable[[Event], Change], SaveOutcome]] = {
    "banpubkey": (lambda event: ban_pubkey(event.pubkey), SaveOutcome.BANNED_PUBKEY),
    "banevent": (lambda event: ban_event(event.id), SaveOutcome.BANNED_EVENT),
    "allowpubkey": (allow_someone_else, SaveOutcome.NOT_ALLOWED),
}


@pytest.mark.parametrize("method", sorted(CHANGES))
async def test_a_batch_waiting_for_a_change_sees_it(
    pg_url: str, store: PostgresStore, method: str
) -> None:
    make_change, refused = CHANGES[method]
    event = note(Keys())
    conn = await asyncpg.connect(pg_url)
    try:
        # The change is written, not yet committed, when the batch comes.
        async with conn.transaction():
            await pg_moderation._write(conn, make_change(event))
            save = asyncio.create_task(store.save_many([event], NOW))
            await until_blocked_by(pg_url, conn)
        assert await save == [refused]
    finally:
        await conn.close()
    assert await stored(store) == []


@pytest.mark.parametrize("method", ["banevent", "banpubkey"])
async def test_a_ban_waits_for_a_batch_in_flight_and_erases_it(
    pg_url: str, store: PostgresStore, method: str
) -> None:
    make_change, _ = CHANGES[method]
    event = note(Keys())
    conn = await asyncpg.connect(pg_url)
    try:
        # The batch has stored the event, not yet committed, when the ban comes.
        async with conn.transaction():
            args = pg_batch.batch_args([event], with_search=True).as_tuple()
            assert await conn.fetchval(SAVE_BATCH, *args) == [0]
            ban = asyncio.create_task(PostgresModeration(pg_url).apply(make_change(event)))
            await until_blocked_by(pg_url, conn)
        assert await ban == 1
    finally:
        await conn.close()
    assert await stored(store) == []
    assert await store.save_many([event], NOW) == [CHANGES[method][1]]
