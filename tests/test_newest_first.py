"""Several authors' latest events, read in two steps (sql.NewestFirst), as MemoryStore says.

The cutoff step counts candidates from the index alone, so these examples aim at its edges:
ties on created_at across authors at the cutoff, expired events among the newest (which the
index cannot see), fewer candidates than the limit, since/until, authors without kinds.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey

from relay.core.event import Event, parse_event
from relay.core.filters import parse_filter
from relay.store import sql
from relay.store.memory import MemoryStore
from relay.store.sqlite import SqliteStore
from tests.nostr import Keys

KEYS = [Keys(PrivateKey(bytes([n]) * 32)) for n in range(1, 5)]
AUTHORS = [k.pubkey for k in KEYS]
NOW = 1_700_000_000


def events() -> list[Event]:
    """Four authors, kinds 1 and 7, few distinct timestamps (many ties), some expiring."""
    rng = random.Random(5)
    found = []
    for number in range(240):
        keys = rng.choice(KEYS)
        tags = []
        if number % 9 == 0:
            # Expired, and among the newest: the cutoff counts them, the read must not.
            tags.append(["expiration", str(NOW - 1)])
        raw = keys.sign(
            kind=rng.choice([1, 1, 7]),
            content=str(number),
            tags=tags,
            created_at=NOW - 100 + rng.randrange(12),
        )
        found.append(parse_event(raw))
    # Then one distinct second each, newest last, the newest three expired: no tie at the
    # cutoff makes up for them, so only the plain query can find the limit's worth.
    for number in range(12):
        tags = [["expiration", str(NOW - 1)]] if number >= 9 else []
        raw = KEYS[number % 2].sign(kind=1, content="late", tags=tags, created_at=NOW - 50 + number)
        found.append(parse_event(raw))
    return found


FILTERS: list[dict[str, Any]] = [
    {"authors": AUTHORS[:2], "kinds": [1], "limit": 5},  # expired ones at the top
    {"authors": AUTHORS[:2], "kinds": [1], "limit": 40},
    {"authors": AUTHORS, "kinds": [1], "until": NOW - 60, "limit": 1},
    {"authors": AUTHORS, "kinds": [1, 7], "until": NOW - 60, "limit": 25},
    {"authors": AUTHORS[:3], "until": NOW - 60, "limit": 30},
    {"authors": AUTHORS[:1], "kinds": [1, 7], "limit": 7},
    {"authors": AUTHORS, "kinds": [1], "limit": 500},  # fewer candidates than the limit
    {"authors": AUTHORS, "kinds": [1], "since": NOW - 95, "until": NOW - 91, "limit": 9},
    {"authors": AUTHORS, "kinds": [7], "until": NOW - 99, "limit": 3},
]


@pytest.mark.parametrize("filter_json", FILTERS)
async def test_two_step_read_agrees_with_memory_store(
    filter_json: dict[str, Any], tmp_path: Path
) -> None:
    f = parse_filter(filter_json)
    assert sql.newest_first(f, NOW) is not None
    memory = MemoryStore()
    sqlite = SqliteStore(tmp_path / "s.sqlite", synchronous="OFF")
    await sqlite.open()
    try:
        stored = events()
        assert await sqlite.save_many(stored, NOW) == await memory.save_many(stored, NOW)
        expected = await memory.query([f], NOW)
        assert expected
        assert await sqlite.query([f], NOW) == expected
        # Also as one filter of several, whose results are merged.
        other = parse_filter({"kinds": [7], "limit": 4})
        assert await sqlite.query([f, other], NOW) == await memory.query([f, other], NOW)
    finally:
        await sqlite.close()


@pytest.mark.parametrize(
    "filter_json",
    [
        {"authors": AUTHORS[:1], "limit": 10},  # one index range: walked in order already
        {"authors": AUTHORS[:1], "kinds": [1], "limit": 10},
        {"authors": AUTHORS, "kinds": [1]},  # no limit
        {"authors": AUTHORS, "kinds": [1], "limit": 0},
        {"authors": AUTHORS, "#t": ["x"], "limit": 10},  # tags are not in the index
        {"ids": ["a" * 64], "authors": AUTHORS, "limit": 10},
        {"kinds": [1, 7], "limit": 10},
    ],
)
def test_two_step_read_only_where_the_index_holds_the_whole_filter(
    filter_json: dict[str, Any],
) -> None:
    assert sql.newest_first(parse_filter(filter_json), NOW) is None
