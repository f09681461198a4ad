"""SqliteStore and PostgresStore against MemoryStore, the oracle: same outcomes, same
answers, same order.

The property test feeds both stores the same random sequence of signed events (few keys,
few timestamps so that ties happen, replaceable and addressable kinds, NIP-09 deletions
of earlier events and addresses (gift wraps by their recipients too), NIP-40 expiration
tags) in random batches, with purges in between, and after every step asks both the same
random filters. The example tests
below pin the replacement and deletion rules on both backends.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from coincurve import PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.event import Event, parse_event
from relay.core.filters import Filter, parse_filter
from relay.store.base import EventStore, Purged, SaveOutcome
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore
from tests.nostr import Keys
from tests.pg import empty_tables, schema_url

# Fixed secrets: a failing example replays with the same ids, hence the same order.
KEYS = [Keys(PrivateKey(bytes([n]) * 32)) for n in (1, 2, 3)]
PUBKEYS = [k.pubkey for k in KEYS]
NOW = 1_700_000_000
BASE = NOW - 100
CREATED_AT = [BASE, BASE + 1, BASE + 2, BASE + 5]
KINDS = [1, 7, 0, 3, 10002, 30000, 30023, 20001, 5, 5, 62, 1059, 1059]
D_VALUES = ["", "a", "b"]
# Contents and NIP-50 queries: case, punctuation and words shared between contents.
CONTENTS = ["", "one", "two", "One two, three!", "two-one", "Ünïcode café"]
SEARCHES = ["one", "TWO", "one two", "three one", "café", "ünïcode", "zzz", "", "one include:x"]
T_VALUES = ["x", "y", "", "x\x00y"]
EXPIRATIONS = [None, None, None, NOW - 10, NOW, NOW + 1000, "soon"]
UNKNOWN_ID = "f" * 64


@dataclass
class Purge:
    pass


Step = list[Event] | Purge


@dataclass
class Scenario:
    steps: list[Step]
    queries: list[list[Filter]]
    events: list[Event] = field(default_factory=list)


def signed(
    keys: Keys, kind: int, created_at: int, tags: list[list[str]] | None = None, content: str = ""
) -> Event:
    return parse_event(keys.sign(kind=kind, content=content, tags=tags, created_at=created_at))


def address_of(event: Event) -> str | None:
    address = event.address
    return None if address is None else f"{address[0]}:{address[1]}:{address[2]}"


@st.composite
def new_event(draw: st.DrawFn, earlier: Sequence[Event]) -> Event:
    keys = draw(st.sampled_from(KEYS))
    kind = draw(st.sampled_from(KINDS))
    created_at = draw(st.sampled_from(CREATED_AT))
    tags: list[list[str]] = []
    earlier_ids = [e.id for e in earlier]
    wraps = [e for e in earlier if e.kind == 1059]
    if kind == 5 and wraps and draw(st.booleans()):
        # Often a gift wrap's recipient, the one key besides its author that may delete it.
        wrap = draw(st.sampled_from(wraps))
        keys = next(k for k in KEYS if k.pubkey == wrap.tag_value("p"))
        tags.append(["e", wrap.id])
    if kind == 5:
        # Mostly events whose deletion applies (the author's own, gift wraps to it);
        # sometimes anyone's.
        own = [
            e
            for e in earlier
            if e.pubkey == keys.pubkey or (e.kind == 1059 and ["p", keys.pubkey] in e.tags)
        ]
        anyones = not own or draw(st.integers(0, 3)) == 0
        pool: list[Event] = list(earlier) if anyones else own
        id_refs = st.sampled_from([*(e.id for e in pool), UNKNOWN_ID])
        for target in draw(st.lists(id_refs, max_size=3)):
            tags.append(["e", target])
        addresses = [a for a in map(address_of, pool) if a is not None]
        made_up = st.builds(
            lambda k, p, d: f"{k}:{p}:{d}",
            st.sampled_from([0, 30000, 30023, 1]),
            st.sampled_from(PUBKEYS),
            st.sampled_from(D_VALUES),
        )
        a_refs = st.sampled_from(addresses) | made_up if addresses else made_up
        for target in draw(st.lists(a_refs, max_size=2)):
            tags.append(["a", target])
    d_tag = draw(st.sampled_from([None, *D_VALUES]))
    if d_tag is not None and (30000 <= kind < 40000 or draw(st.booleans())):
        tags.append(["d", d_tag])
    for value in draw(st.lists(st.sampled_from(T_VALUES), max_size=2)):
        tags.append(["t", value])
    if kind == 1059 or draw(st.booleans()):
        # A gift wrap names its recipient: a key that may delete it.
        tags.append(["p", draw(st.sampled_from(PUBKEYS))])
    if earlier_ids and kind != 5 and draw(st.booleans()):
        tags.append(["e", draw(st.sampled_from(earlier_ids))])
    expiration = draw(st.sampled_from(EXPIRATIONS))
    if expiration is not None:
        tags.append(["expiration", str(expiration)])
    content = draw(st.sampled_from(CONTENTS))
    return signed(keys, kind, created_at, tags, content)


@st.composite
def filters(draw: st.DrawFn, events: Sequence[Event]) -> Filter:
    ids = [*sorted({e.id for e in events}), UNKNOWN_ID]
    obj: dict[str, Any] = {}

    def maybe() -> bool:
        return draw(st.integers(0, 4)) == 0

    if maybe():
        obj["ids"] = draw(st.lists(st.sampled_from(ids), max_size=4))
    if maybe():
        obj["authors"] = draw(st.lists(st.sampled_from(PUBKEYS), max_size=2))
    if maybe():
        obj["kinds"] = draw(st.lists(st.sampled_from(KINDS), max_size=3))
    if maybe():
        obj["#e"] = draw(st.lists(st.sampled_from(ids), max_size=2))
    if maybe():
        obj["#p"] = draw(st.lists(st.sampled_from(PUBKEYS), min_size=1, max_size=2))
    if maybe():
        obj["#d"] = draw(st.lists(st.sampled_from(D_VALUES), min_size=1, max_size=2))
    if maybe():
        obj["#t"] = draw(st.lists(st.sampled_from(T_VALUES), min_size=1, max_size=2))
    times = [BASE - 1, *CREATED_AT, BASE + 6]
    if maybe():
        obj["since"] = draw(st.sampled_from(times))
    if maybe():
        obj["until"] = draw(st.sampled_from(times))
    if maybe():
        # Ranked by relevance in SQLite and by time in memory: compared without a limit.
        obj["search"] = draw(st.sampled_from(SEARCHES))
    elif draw(st.booleans()):
        obj["limit"] = draw(st.sampled_from([0, 1, 2, 3, 10]))
    return parse_filter(obj)


@st.composite
def new_version(draw: st.DrawFn, replaceable: Sequence[Event]) -> Event:
    """Another version at the address of an earlier event, older or newer."""
    previous = draw(st.sampled_from(replaceable))
    keys = next(k for k in KEYS if k.pubkey == previous.pubkey)
    tags = [tag for tag in previous.tags if tag[0] == "d"]
    content = draw(st.sampled_from(["v1", "v2", "v3"]))
    return signed(keys, previous.kind, draw(st.sampled_from(CREATED_AT)), tags, content)


def deletion_targets(events: Sequence[Event]) -> list[Event]:
    """Earlier events that some kind 5 among `events` names, by id or by address."""
    named = {tag[1] for e in events if e.kind == 5 for tag in e.tags if tag[0] in ("e", "a")}
    return [e for e in events if e.id in named or address_of(e) in named]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    events: list[Event] = []
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 5))):
        if events and draw(st.integers(0, 5)) == 0:
            steps.append(Purge())
            continue
        batch: list[Event] = []
        for _ in range(draw(st.integers(1, 6))):
            targets = deletion_targets(events)
            choice = draw(st.integers(0, 9))
            if targets and choice == 0:
                event = draw(st.sampled_from(targets))  # deleted, or soon to be
            elif events and choice <= 2:
                event = draw(st.sampled_from(events))  # the same event again
            elif any(e.address for e in events) and choice <= 4:
                event = draw(new_version([e for e in events if e.address]))
            else:
                event = draw(new_event(events))
            batch.append(event)
            events.append(event)
        steps.append(batch)
    queries = draw(st.lists(st.lists(filters(events), min_size=1, max_size=3), max_size=4))
    # Everything, unlimited: the whole content of the store, in order.
    queries.append([Filter()])
    return Scenario(steps, queries, events)


async def observe(store: EventStore, queries: list[list[Filter]]) -> list[Any]:
    seen: list[Any] = []
    for query in queries:
        found = await store.query(query, NOW)
        # Search results are ranked differently (bm25 / time): compare them as sets.
        seen.append(sorted(found) if any(f.search for f in query) else found)
        seen.append(await store.count(query, NOW))
        # NIP-77 items: the same events as the query, as sorted (created_at, id) pairs.
        items = await store.negentropy_items(query, NOW)
        assert items == sorted(set(items))
        assert {i.hex() for _, i in items} == {parse_event_id(raw) for raw in found}
        seen.append(items)
    return seen


async def compare(scenario: Scenario, store: EventStore) -> None:
    memory = MemoryStore()
    for number, step in enumerate(scenario.steps):
        if isinstance(step, Purge):
            expected: Any = await memory.purge_expired(NOW)
            got: Any = await store.purge_expired(NOW)
        else:
            expected = await memory.save_many(step, NOW)
            got = await store.save_many(step, NOW)
        assert got == expected, f"step {number}: {step}"
        expected = await observe(memory, scenario.queries)
        got = await observe(store, scenario.queries)
        assert got == expected, f"after step {number}, queries {scenario.queries}"


async def run_on_sqlite(scenario: Scenario, path: Path) -> None:
    sqlite = SqliteStore(path, synchronous="OFF")
    await sqlite.open()
    try:
        await compare(scenario, sqlite)
    finally:
        await sqlite.close()


PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY_SETTINGS
@given(scenarios())
def test_sqlite_store_agrees_with_memory_store(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_on_sqlite(scenario, Path(tmp) / "relay.sqlite"))


async def test_postgres_store_agrees_with_memory_store() -> None:
    async with schema_url() as url:
        # Hypothesis runs each example to its end: here on a loop of its own, in a
        # thread, where one store serves every example (emptied in between).
        await asyncio.to_thread(check_postgres_store, url)


def check_postgres_store(url: str) -> None:
    loop = asyncio.new_event_loop()
    store = PostgresStore(url, readers=1, durable=False)
    admin = loop.run_until_complete(asyncpg.connect(url))
    try:
        loop.run_until_complete(store.open())

        @PROPERTY_SETTINGS
        @given(scenarios())
        def agrees(scenario: Scenario) -> None:
            loop.run_until_complete(empty_tables(admin))
            loop.run_until_complete(compare(scenario, store))

        agrees()
    finally:
        loop.run_until_complete(store.close())
        loop.run_until_complete(admin.close())
        loop.close()


# Example-based rules, on both backends.


async def ids_of(store: EventStore, *filters: Filter) -> list[str]:
    found = await store.query(list(filters) or [Filter()], NOW)
    return [parse_event_id(raw) for raw in found]


def parse_event_id(raw: bytes) -> str:
    return str(orjson.loads(raw)["id"])


async def save(store: EventStore, *events: Event) -> list[SaveOutcome]:
    return await store.save_many(list(events), NOW)


def same_second_pair(kind: int, tags: list[list[str]] | None = None) -> tuple[Event, Event]:
    a = signed(KEYS[0], kind, BASE, tags, "a")
    b = signed(KEYS[0], kind, BASE, tags, "b")
    low, high = sorted((a, b), key=lambda e: e.id)
    return low, high


@pytest.mark.parametrize(("kind", "tags"), [(0, None), (10002, None), (30023, [["d", "x"]])])
async def test_same_second_tie_keeps_lowest_id_in_either_order(
    store: EventStore, kind: int, tags: list[list[str]] | None
) -> None:
    low, high = same_second_pair(kind, tags)
    assert await save(store, high) == [SaveOutcome.STORED]
    assert await save(store, low) == [SaveOutcome.STORED]
    assert await ids_of(store) == [low.id]
    assert await save(store, high) == [SaveOutcome.STALE]
    assert await ids_of(store) == [low.id]


async def test_late_older_version_is_stale(store: EventStore) -> None:
    old = signed(KEYS[0], 30000, BASE, [["d", "x"]], "old")
    new = signed(KEYS[0], 30000, BASE + 1, [["d", "x"]], "new")
    assert await save(store, new) == [SaveOutcome.STORED]
    assert await save(store, old) == [SaveOutcome.STALE]
    assert await save(store, new) == [SaveOutcome.DUPLICATE]
    assert await ids_of(store) == [new.id]


async def test_versions_in_one_batch_are_applied_in_order(store: EventStore) -> None:
    old = signed(KEYS[0], 0, BASE, None, "old")
    new = signed(KEYS[0], 0, BASE + 1, None, "new")
    newest = signed(KEYS[0], 0, BASE + 2, None, "newest")
    outcomes = await save(store, old, newest, new)
    assert outcomes == [SaveOutcome.STORED, SaveOutcome.STORED, SaveOutcome.STALE]
    assert await ids_of(store) == [newest.id]


async def test_missing_d_tag_is_the_empty_address(store: EventStore) -> None:
    no_d = signed(KEYS[0], 30000, BASE, None, "no d")
    empty_d = signed(KEYS[0], 30000, BASE + 1, [["d", ""]], "empty d")
    other_d = signed(KEYS[0], 30000, BASE, [["d", "x"]], "x")
    assert await save(store, no_d, empty_d, other_d) == [SaveOutcome.STORED] * 3
    assert await ids_of(store) == [empty_d.id, other_d.id]


async def test_replaceable_address_is_per_author_and_kind(store: EventStore) -> None:
    events = [signed(k, kind, BASE) for k in KEYS[:2] for kind in (0, 3)]
    assert await save(store, *events) == [SaveOutcome.STORED] * 4
    assert len(await ids_of(store)) == 4


async def test_deletion_by_id_only_by_the_author(store: EventStore) -> None:
    target = signed(KEYS[0], 1, BASE, None, "target")
    by_other = signed(KEYS[1], 5, BASE + 1, [["e", target.id]])
    assert await save(store, target, by_other) == [SaveOutcome.STORED] * 2
    assert target.id in await ids_of(store)
    by_author = signed(KEYS[0], 5, BASE + 1, [["e", target.id]])
    assert await save(store, by_author) == [SaveOutcome.STORED]
    assert target.id not in await ids_of(store)
    assert await save(store, target) == [SaveOutcome.DELETED]


async def test_deletion_before_its_target_arrives(store: EventStore) -> None:
    target = signed(KEYS[0], 1, BASE, None, "late")
    deletion = signed(KEYS[0], 5, BASE + 1, [["e", target.id]])
    assert await save(store, deletion, target) == [SaveOutcome.STORED, SaveOutcome.DELETED]
    assert await ids_of(store) == [deletion.id]
    # Someone else's tombstone does not block another author's event with a referenced id.
    other = signed(KEYS[1], 1, BASE, None, "other")
    foreign = signed(KEYS[0], 5, BASE + 2, [["e", other.id]])
    assert await save(store, foreign, other) == [SaveOutcome.STORED, SaveOutcome.STORED]


async def test_the_recipient_of_a_gift_wrap_may_delete_it(store: EventStore) -> None:
    wrapper, recipient, stranger = KEYS
    wrap = signed(wrapper, 1059, BASE, [["p", recipient.pubkey]], "sealed")
    by_stranger = signed(stranger, 5, BASE + 1, [["e", wrap.id]])
    assert await save(store, wrap, by_stranger) == [SaveOutcome.STORED] * 2
    assert wrap.id in await ids_of(store)
    by_recipient = signed(recipient, 5, BASE + 1, [["e", wrap.id]])
    assert await save(store, by_recipient) == [SaveOutcome.STORED]
    assert wrap.id not in await ids_of(store)
    # The tombstone holds: published again, the wrap stays deleted.
    assert await save(store, wrap) == [SaveOutcome.DELETED]
    assert wrap.id not in await ids_of(store)


async def test_a_gift_wrap_deleted_by_its_recipient_before_it_arrives(store: EventStore) -> None:
    wrapper, recipient, stranger = KEYS
    wrap = signed(wrapper, 1059, BASE, [["p", recipient.pubkey]], "late")
    other = signed(wrapper, 1059, BASE, [["p", stranger.pubkey]], "not theirs")
    deletion = signed(recipient, 5, BASE + 1, [["e", wrap.id], ["e", other.id]])
    assert await save(store, deletion, wrap, other) == [
        SaveOutcome.STORED,
        SaveOutcome.DELETED,
        SaveOutcome.STORED,
    ]
    assert set(await ids_of(store)) == {deletion.id, other.id}
    # A p tag on any other kind gives no say over the event.
    note = signed(wrapper, 1, BASE, [["p", recipient.pubkey]], "a mention")
    mention_deletion = signed(recipient, 5, BASE + 2, [["e", note.id]])
    assert await save(store, note, mention_deletion) == [SaveOutcome.STORED] * 2
    assert await save(store, note) == [SaveOutcome.DUPLICATE]
    assert note.id in await ids_of(store)


async def test_deleting_a_deletion_has_no_effect(store: EventStore) -> None:
    target = signed(KEYS[0], 1, BASE, None, "target")
    first = signed(KEYS[0], 5, BASE + 1, [["e", target.id]])
    second = signed(KEYS[0], 5, BASE + 2, [["e", first.id]])
    assert await save(store, target, first, second) == [SaveOutcome.STORED] * 3
    assert await ids_of(store) == [second.id, first.id]


async def test_address_deletion_up_to_its_created_at(store: EventStore) -> None:
    tags = [["d", "x"]]
    version = signed(KEYS[0], 30000, BASE + 1, tags, "v1")
    address = f"30000:{KEYS[0].pubkey}:x"
    assert await save(store, version) == [SaveOutcome.STORED]
    foreign = signed(KEYS[1], 5, BASE + 2, [["a", address]])
    assert await save(store, foreign) == [SaveOutcome.STORED]
    assert version.id in await ids_of(store)
    deletion = signed(KEYS[0], 5, BASE + 2, [["a", address]])
    assert await save(store, deletion) == [SaveOutcome.STORED]
    assert version.id not in await ids_of(store)
    same_second = signed(KEYS[0], 30000, BASE + 2, tags, "v2")
    later = signed(KEYS[0], 30000, BASE + 5, tags, "v3")
    assert await save(store, version, same_second, later) == [
        SaveOutcome.DELETED,
        SaveOutcome.DELETED,
        SaveOutcome.STORED,
    ]
    assert await ids_of(store, Filter(kinds=frozenset({30000}))) == [later.id]


async def test_expired_events_are_hidden_then_purged(store: EventStore) -> None:
    past = signed(KEYS[0], 1, BASE, [["expiration", str(NOW - 1)]])
    boundary = signed(KEYS[0], 1, BASE, [["expiration", str(NOW)]])
    future = signed(KEYS[0], 1, BASE, [["expiration", str(NOW + 1)]])
    malformed = signed(KEYS[0], 1, BASE, [["expiration", "tomorrow"]])
    assert await save(store, past, boundary, future, malformed) == [SaveOutcome.STORED] * 4
    assert set(await ids_of(store)) == {future.id, malformed.id}
    assert await store.count([Filter()], NOW) == 2
    assert await store.purge_expired(NOW) == Purged(expired=2)
    assert await store.purge_expired(NOW) == Purged()
    assert set(await ids_of(store)) == {future.id, malformed.id}
    assert await store.query([Filter()], NOW + 1) == [malformed.raw]


async def test_several_filters_merge_without_duplicates(store: EventStore) -> None:
    events = [signed(KEYS[n % 2], 1, CREATED_AT[n % 3], None, str(n)) for n in range(6)]
    await save(store, *events)
    by_author = Filter(authors=frozenset({KEYS[0].pubkey}))
    all_limited = Filter(limit=2)
    newest_first = sorted(events, key=lambda e: (-e.created_at, e.id))
    two_newest = {e.id for e in newest_first[:2]}
    expected = [e.id for e in newest_first if e.pubkey == KEYS[0].pubkey or e.id in two_newest]
    assert await ids_of(store, by_author, all_limited) == expected
    assert await store.count([by_author, all_limited], NOW) == 6


async def test_uppercase_e_tag_is_not_a_reference(tmp_path: Path) -> None:
    target = signed(KEYS[0], 1, BASE, None, "target")
    deletion = signed(KEYS[0], 5, BASE + 1, [["e", target.id.upper()]])
    memory = MemoryStore()
    sqlite = SqliteStore(tmp_path / "s.sqlite")
    await sqlite.open()
    try:
        for backend in (memory, sqlite):
            await backend.save_many([target, deletion], NOW)
        assert await sqlite.query([Filter()], NOW) == await memory.query([Filter()], NOW)
    finally:
        await sqlite.close()
