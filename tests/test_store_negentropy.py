"""EventStore.negentropy_items on both backends: the (created_at, id) pairs NIP-77 reconciles.

The differential test in test_store_property.py compares the two stores on random
scenarios; these pin the rules: ascending order with ties by id, expired events left out
before they are purged, a filter's `limit` taken as REQ takes it, several filters merged
without duplicates, and the cap that turns a too-large filter into TooManyItems.
"""

from __future__ import annotations

import pytest

from relay.core.event import Event, parse_event
from relay.core.filters import Filter, parse_filter
from relay.store.base import EventStore, TooManyItems
from tests.nostr import Keys

NOW = 1_700_000_000
KEYS = Keys()


def note(created_at: int, content: str = "", tags: list[list[str]] | None = None) -> Event:
    return parse_event(KEYS.sign(kind=1, content=content, tags=tags, created_at=created_at))


def pairs(*events: Event) -> list[tuple[int, bytes]]:
    return sorted((e.created_at, bytes.fromhex(e.id)) for e in events)


async def test_items_ascend_by_time_then_id(store: EventStore) -> None:
    events = [note(NOW - 10, str(n)) for n in range(5)] + [note(NOW - 20), note(NOW - 5)]
    await store.save_many(events, NOW)
    items = await store.negentropy_items([Filter()], NOW)
    assert items == pairs(*events)
    assert [t for t, _ in items] == [NOW - 20, *[NOW - 10] * 5, NOW - 5]


async def test_expired_events_are_left_out_before_the_purge(store: EventStore) -> None:
    live = note(NOW - 10, "live", [["expiration", str(NOW + 100)]])
    expired = note(NOW - 10, "gone", [["expiration", str(NOW - 1)]])
    plain = note(NOW - 9)
    await store.save_many([live, expired, plain], NOW - 50)
    assert await store.negentropy_items([Filter()], NOW) == pairs(live, plain)
    assert await store.negentropy_items([Filter(limit=5)], NOW) == pairs(live, plain)
    assert await store.negentropy_items([Filter()], NOW, max_items=2) == pairs(live, plain)


async def test_a_limit_keeps_the_newest_as_req_does(store: EventStore) -> None:
    events = [note(NOW - n) for n in range(10)]
    await store.save_many(events, NOW)
    newest = await store.negentropy_items([parse_filter({"limit": 3})], NOW)
    assert newest == pairs(*events[:3])
    assert await store.negentropy_items([parse_filter({"limit": 0})], NOW) == []


async def test_filters_are_merged_once_each(store: EventStore) -> None:
    tagged = note(NOW - 3, "t", [["t", "x"]])
    other = note(NOW - 2)
    await store.save_many([tagged, other], NOW)
    filters = [parse_filter({"#t": ["x"]}), parse_filter({"kinds": [1]}), parse_filter({"ids": []})]
    assert await store.negentropy_items(filters, NOW) == pairs(tagged, other)
    assert await store.negentropy_items([parse_filter({"kinds": [7]})], NOW) == []


async def test_more_than_max_items_is_refused(store: EventStore) -> None:
    await store.save_many([note(NOW - n) for n in range(6)], NOW)
    assert len(await store.negentropy_items([Filter()], NOW, max_items=6)) == 6
    with pytest.raises(TooManyItems) as info:
        await store.negentropy_items([Filter()], NOW, max_items=5)
    assert info.value.cap == 5
    with pytest.raises(TooManyItems):
        await store.negentropy_items([Filter(limit=100)], NOW, max_items=5)
    assert len(await store.negentropy_items([Filter(limit=5)], NOW, max_items=5)) == 5
