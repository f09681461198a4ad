"""The live-subscription index (relay/core/subscriptions.py), without I/O, and through a relay:
the same answer as trying every filter, identical filters checked once, filters that cannot
match a new event never checked, and nothing left behind when subscriptions end."""

from __future__ import annotations

import time
from itertools import combinations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import subscriptions
from relay.core.event import Event
from relay.core.filters import Filter, parse_filter
from relay.core.limits import Limits
from relay.core.subscriptions import Check, IndexStats, SubscriptionIndex, entries
from relay.net.server import RelayServer
from tests.conftest import url_of, wait_for
from tests.nostr import Client, Keys

IDS = ["01" * 32, "02" * 32, "03" * 32]
PUBKEYS = ["0a" * 32, "0b" * 32, "0c" * 32]
SIG = "00" * 64
NOW = 1_700_000_000
FAR = 2**40


def make_event(
    *,
    id: str = IDS[0],
    pubkey: str = PUBKEYS[0],
    created_at: int = 5,
    kind: int = 1,
    tags: list[list[str]] | None = None,
    content: str = "",
) -> Event:
    """An Event built directly: the index never looks at the id or signature."""
    return Event(id, pubkey, created_at, kind, tags or [], content, SIG)


def assert_empty(index: SubscriptionIndex[Any]) -> None:
    """Nothing is held: no subscription, entry, dict key, dormant filter or wake time."""
    assert index.stats() == IndexStats(0, 0, 0, 0, 0)
    assert not any(index._fields)
    assert not index._tags
    assert not index._dormant
    assert not index._wake_at
    assert not index._interned
    assert not index._subs


# --- matching, example by example ---------------------------------------------------


def index_with(*subs: tuple[str, str, tuple[dict[str, Any], ...]]) -> SubscriptionIndex[str]:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for owner, sub_id, filters in subs:
        index.add(owner, sub_id, tuple(parse_filter(f) for f in filters))
    return index


@pytest.mark.parametrize(
    ("obj", "hit", "miss"),
    [
        ({"ids": [IDS[0]]}, {"id": IDS[0]}, {"id": IDS[1]}),
        ({"authors": [PUBKEYS[1]]}, {"pubkey": PUBKEYS[1]}, {"pubkey": PUBKEYS[0]}),
        ({"kinds": [7]}, {"kind": 7}, {"kind": 1}),
        ({"#e": ["x"]}, {"tags": [["e", "x"]]}, {"tags": [["e", "y"]]}),
        ({"#e": ["x"]}, {"tags": [["p", "y"], ["e", "x", "wss://r"]]}, {"tags": [["E", "x"]]}),
        ({"#t": ["x"]}, {"tags": [["t", "y"], ["t", "x"]]}, {"tags": [["t"], ["x", "t"]]}),
        ({"since": 5}, {"created_at": 5}, {"created_at": 4}),
        ({"until": 5}, {"created_at": 5}, {"created_at": 6}),
        ({}, {"kind": 65535}, None),
    ],
)
def test_index_matches_by_each_field(
    obj: dict[str, Any], hit: dict[str, Any], miss: dict[str, Any] | None
) -> None:
    index = index_with(("c1", "s", (obj,)))
    assert index.matching(make_event(**hit)) == {("c1", "s")}
    if miss is not None:
        assert index.matching(make_event(**miss)) == set()


def test_index_checks_every_condition_not_just_the_indexed_one() -> None:
    index = index_with(
        ("c", "ids", ({"ids": [IDS[0]], "kinds": [2]},)),
        ("c", "authors", ({"authors": [PUBKEYS[0]], "#e": ["x"]},)),
        ("c", "tags", ({"#e": ["x"], "#p": ["y"]},)),
        ("c", "kinds", ({"kinds": [1], "until": 4},)),
    )
    event = make_event(id=IDS[0], pubkey=PUBKEYS[0], kind=1, created_at=5, tags=[["e", "x"]])
    assert index.matching(event) == {("c", "authors")}


def test_index_several_filters_are_or() -> None:
    index = index_with(("c", "s", ({"kinds": [1]}, {"authors": [PUBKEYS[1]]}, {"#t": ["n"]})))
    assert index.matching(make_event(kind=1)) == {("c", "s")}
    assert index.matching(make_event(kind=2, pubkey=PUBKEYS[1])) == {("c", "s")}
    assert index.matching(make_event(kind=2, tags=[["t", "n"]])) == {("c", "s")}
    assert index.matching(make_event(kind=2)) == set()


def test_index_reports_a_subscription_once_even_if_several_filters_match() -> None:
    index = index_with(("c", "s", ({}, {"kinds": [1]}, {"ids": [IDS[0]]}, {"#e": ["x", "y"]})))
    event = make_event(tags=[["e", "x"], ["e", "y"], ["e", "x"]])
    assert index.matching(event) == {("c", "s")}


def test_index_owners_and_sub_ids() -> None:
    index = index_with(
        ("c1", "s", ({"kinds": [1]},)),
        ("c2", "s", ({"kinds": [1]},)),
        ("c1", "t", ({"kinds": [2]},)),
        ("c2", "u", ({},)),
    )
    assert len(index) == 4
    assert index.matching(make_event(kind=1)) == {("c1", "s"), ("c2", "s"), ("c2", "u")}
    assert index.matching(make_event(kind=2)) == {("c1", "t"), ("c2", "u")}


def test_index_filters_that_cannot_match_are_never_returned() -> None:
    index = index_with(
        ("c", "empty-ids", ({"ids": []},)),
        ("c", "empty-tag", ({"#e": []},)),
        ("c", "window", ({"since": 9, "until": 1},)),
    )
    assert len(index) == 3
    assert index.matching(make_event(tags=[["e", "x"]])) == set()


def test_index_add_replaces_the_filters() -> None:
    index = index_with(("c", "s", ({"kinds": [1]},)), ("c", "s", ({"kinds": [2]},)))
    assert len(index) == 1
    assert index.matching(make_event(kind=1)) == set()
    assert index.matching(make_event(kind=2)) == {("c", "s")}


def test_index_remove() -> None:
    index = index_with(("c", "s", ({"kinds": [1]},)), ("c", "t", ({"kinds": [1]},)))
    index.remove("c", "s")
    assert index.matching(make_event(kind=1)) == {("c", "t")}
    index.remove("c", "s")  # unknown: no error
    index.remove("other", "t")  # another owner's id: untouched
    assert len(index) == 1


def test_index_remove_owner() -> None:
    index = index_with(
        ("c1", "a", ({},)),
        ("c1", "b", ({"kinds": [1]},)),
        ("c2", "a", ({},)),
    )
    index.remove_owner("c1", ["a", "b", "never-opened"])
    assert len(index) == 1
    assert index.matching(make_event(kind=1)) == {("c2", "a")}


def test_index_leaves_no_empty_buckets() -> None:
    index = index_with(
        ("c", "a", ({"ids": IDS}, {"authors": PUBKEYS}, {"#e": ["x", "y"]}, {"kinds": [1, 2]})),
        ("c", "b", ({}, {}, {"kinds": [1]})),
    )
    index.matching(make_event(tags=[["e", "x"]]))
    index.remove_owner("c", ["a", "b"])
    assert len(index) == 0
    assert_empty(index)


# --- the same answer as trying every filter ------------------------------------------

TAG_NAMES = ["e", "p", "t", "E"]
VALUES = ["a", "b", "c"]
KINDS = [0, 1, 30000]
# Edges of since and until: none, small clock values, beyond any event, the largest allowed.
TIMES = [None, None, *range(8), FAR, 2**63 - 1]
CREATED_AT = [*range(9), FAR, 2**63 - 1]
CONTENTS = ["", "hello", "hello world", "Hello, World!"]


def subsets(items: list[Any]) -> list[frozenset[Any]]:
    """Every non-empty subset, then the empty one, which matches nothing."""
    return [frozenset(c) for n in range(1, len(items) + 1) for c in combinations(items, n)] + [
        frozenset()
    ]


@st.composite
def filters_st(draw: st.DrawFn) -> Filter:
    """Any mix of fields, so that every field leads the filing in some filters."""

    def maybe(options: list[Any]) -> Any:
        return draw(st.none() | st.sampled_from(options))

    tags = draw(
        st.dictionaries(st.sampled_from(TAG_NAMES), st.sampled_from(subsets(VALUES)), max_size=2)
    )
    return Filter(
        ids=maybe(subsets(IDS)),
        authors=maybe(subsets(PUBKEYS)),
        kinds=maybe(subsets(KINDS)),
        tags=tuple(sorted(tags.items())),
        since=draw(st.sampled_from(TIMES)),
        until=draw(st.sampled_from(TIMES)),
        limit=draw(st.sampled_from([None, 0, 10])),
        search=draw(st.sampled_from([None, None, None, (), ("hello",), ("hello", "world")])),
    )


# Mostly indexable (name, value) pairs; then tags no `#x` filter can match, and a longer one.
tag_st = st.sampled_from(
    [[name, value] for name in TAG_NAMES for value in VALUES]
    + [["e"], ["alt", "a"], ["ee", "a"], ["", "a"], ["a", "e"], ["e", "a", "extra"]]
)
events_st = st.builds(
    make_event,
    id=st.sampled_from(IDS),
    pubkey=st.sampled_from(PUBKEYS),
    created_at=st.sampled_from(CREATED_AT),
    kind=st.sampled_from(KINDS),
    tags=st.lists(tag_st, max_size=4),
    content=st.sampled_from(CONTENTS),
)


@st.composite
def event_for(draw: st.DrawFn, f: Filter) -> Event:
    """An event meant to pass `f`, where it can: a random event rarely reaches a tag bucket."""

    def pick(options: list[Any], wanted: frozenset[Any] | None) -> Any:
        return draw(st.sampled_from(sorted(wanted) if wanted else options))

    low, high = f.since or 0, 8 if f.until is None else f.until
    created_at = draw(st.sampled_from([low, high, min(low + 1, high)])) if low <= high else low
    tags = [[name, pick(VALUES, values)] for name, values in f.tags]
    return make_event(
        id=pick(IDS, f.ids),
        pubkey=pick(PUBKEYS, f.authors),
        created_at=created_at,
        kind=pick(KINDS, f.kinds),
        tags=draw(st.permutations(tags + draw(st.lists(tag_st, max_size=2)))),
        content=draw(st.sampled_from(CONTENTS)),
    )


owners_st = st.sampled_from(["c1", "c2"])
sub_ids_st = st.sampled_from(["s1", "s2", "s3"])
operations_st = st.lists(
    st.tuples(st.just("add"), owners_st, sub_ids_st, st.lists(filters_st(), min_size=1, max_size=3))
    | st.tuples(st.just("remove"), owners_st, sub_ids_st)
    | st.tuples(st.just("remove_owner"), owners_st)
    | st.tuples(st.just("match"), events_st)
    | st.tuples(st.just("match_live"), st.just(None)),
    max_size=14,
)


@settings(max_examples=400, deadline=None)
@given(operations=operations_st, data=st.data())
def test_index_matches_brute_force(operations: list[tuple[Any, ...]], data: st.DataObject) -> None:
    """Between adds and removes, each event gets exactly the subscriptions that trying every
    filter of every one finds; dormant filters wake as events arrive in any order."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    model: dict[tuple[str, str], list[Filter]] = {}
    for op in operations:
        if op[0] == "add":
            _, owner, sub_id, filters = op
            index.add(owner, sub_id, tuple(filters))
            model[(owner, sub_id)] = filters
        elif op[0] == "remove":
            _, owner, sub_id = op
            index.remove(owner, sub_id)
            model.pop((owner, sub_id), None)
        elif op[0] == "remove_owner":
            _, owner = op
            sub_ids = [s for o, s in model if o == owner]
            index.remove_owner(owner, sub_ids)
            for sub_id in sub_ids:
                del model[(owner, sub_id)]
        else:
            event = op[1]
            live = [f for filters in model.values() for f in filters]
            if event is None and live:
                event = data.draw(event_for(data.draw(st.sampled_from(live))))
            if event is None:
                continue
            expected = {key for key, fs in model.items() if any(f.matches(event) for f in fs)}
            assert index.matching(event) == expected
        assert len(index) == len(model)
    for owner in ("c1", "c2"):
        index.remove_owner(owner, ["s1", "s2", "s3"])
    assert_empty(index)


# --- identical filters share one check; filters that cannot match are not checked -----


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[Filter]:
    """The filter of every check the index runs, in order (a spy on compiled checks)."""
    calls: list[Filter] = []
    real = subscriptions.compile_check

    def counting(f: Filter, field: int, tag: str | None) -> Check:
        check = real(f, field, tag)

        def counted(event: Event, tags: Any) -> bool:
            calls.append(f)
            return check is None or check(event, tags)

        return counted

    monkeypatch.setattr(subscriptions, "compile_check", counting)
    return calls


def attack(index: SubscriptionIndex[str], make_filter: Any, connections: int = 20) -> None:
    """Issue 12's attack 4: connections x 32 subscriptions x 16 filters."""
    for c in range(connections):
        for s in range(32):
            index.add(f"c{c}", f"s{s}", tuple(make_filter(c, s, n) for n in range(16)))


def test_identical_filters_are_checked_once_for_all_their_subscribers(
    checked: list[Filter],
) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    # The limit differs from filter to filter: it does not matter to live matching.
    attack(index, lambda c, s, n: parse_filter({"kinds": [1], "since": 3, "limit": n}))
    found = index.matching(make_event(kind=1, created_at=5))
    assert found == {(f"c{c}", f"s{s}") for c in range(20) for s in range(32)}
    assert len(checked) == 1
    assert index.stats().distinct_filters == 1
    assert index.matching(make_event(kind=1, created_at=2)) == set()
    assert index.matching(make_event(kind=2, created_at=5)) == set()
    assert len(checked) == 2


def test_a_shared_filter_stays_until_its_last_subscriber_goes() -> None:
    index = index_with(("c1", "s", ({"kinds": [1]},)), ("c2", "s", ({"kinds": [1], "limit": 5},)))
    index.remove("c1", "s")
    assert index.matching(make_event(kind=1)) == {("c2", "s")}
    index.remove("c2", "s")
    assert_empty(index)


@pytest.mark.parametrize("distinct", [False, True])
def test_since_beyond_every_event_is_never_checked(checked: list[Filter], distinct: bool) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.matching(make_event(created_at=NOW))
    attack(
        index,
        lambda c, s, n: parse_filter(
            {"kinds": [1], "since": FAR + (c * 512 + s * 16 + n if distinct else 0), "limit": 0}
        ),
    )
    index.add("reader", "feed", (parse_filter({"kinds": [1]}),))
    assert index.matching(make_event(kind=1, created_at=NOW + 1)) == {("reader", "feed")}
    assert checked == [parse_filter({"kinds": [1]})]
    stats = index.stats()
    assert (stats.filed_values, stats.dormant_filters) == (1, 10240 if distinct else 1)


def test_a_dormant_filter_wakes_when_an_event_reaches_its_since(checked: list[Filter]) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.matching(make_event(created_at=NOW))
    index.add("c", "s", (parse_filter({"kinds": [1], "since": NOW + 10}),))
    assert index.stats().dormant_filters == 1
    assert index.matching(make_event(created_at=NOW + 9)) == set()
    assert checked == []
    assert index.matching(make_event(created_at=NOW + 10)) == {("c", "s")}
    assert index.stats().dormant_filters == 0
    # Awake for good, and still checked: an event dated before since does not match.
    assert index.matching(make_event(created_at=NOW + 3)) == set()
    assert len(checked) == 2
    # since reached by an event already seen: filed at once.
    index.add("c", "t", (parse_filter({"kinds": [1], "since": NOW + 5}),))
    assert index.stats().dormant_filters == 0
    index.remove("c", "s")
    index.remove("c", "t")
    assert_empty(index)


def test_removing_dormant_filters_leaves_no_wake_times() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for n in range(100):
        index.add("c", f"s{n}", (parse_filter({"since": FAR + n}),))
    for n in range(99):
        index.remove("c", f"s{n}")
    assert index.stats().wake_times <= 2
    assert index.matching(make_event(created_at=FAR + 99)) == {("c", "s99")}
    index.remove("c", "s99")
    assert_empty(index)


def test_filters_whose_until_has_passed_are_not_checked(checked: list[Filter]) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for n in range(1, 101):
        index.add("c", f"s{n}", (parse_filter({"kinds": [1], "since": 1, "until": n}),))
    assert index.matching(make_event(kind=1, created_at=1000)) == set()
    assert checked == []
    found = index.matching(make_event(kind=1, created_at=50))
    assert found == {("c", f"s{n}") for n in range(50, 101)}
    assert sorted(f.until or 0 for f in checked) == list(range(50, 101))


def test_until_older_than_any_acceptable_event_is_not_filed() -> None:
    lower = Limits().created_at_lower_limit
    oldest = NOW - lower - subscriptions.PAST_MARGIN
    index: SubscriptionIndex[str] = SubscriptionIndex(lower)
    index.add("c", "gone", (parse_filter({"until": oldest - 1}),), now=NOW)
    index.add("c", "edge", (parse_filter({"until": oldest}),), now=NOW)
    assert len(index) == 2
    assert index.stats().distinct_filters == 1
    assert index.matching(make_event(created_at=oldest - 1)) == {("c", "edge")}
    # Without a clock nothing can be known to be too old.
    index.add("c", "gone", (parse_filter({"until": oldest - 1}),))
    assert index.matching(make_event(created_at=oldest - 1)) == {("c", "edge"), ("c", "gone")}


def test_an_entry_under_several_tag_values_of_one_event_is_checked_once(
    checked: list[Filter],
) -> None:
    index = index_with(("c", "s", ({"#e": ["x", "y", "z"], "kinds": [1]},)))
    event = make_event(kind=1, tags=[["e", "x"], ["e", "y"], ["e", "z"], ["e", "x"]])
    assert index.matching(event) == {("c", "s")}
    assert len(checked) == 1


# --- filing: the field with the fewest values, and the live-filter budget ------------


@pytest.mark.parametrize(
    ("obj", "filed"),
    [
        ({}, 1),
        ({"kinds": [1, 2, 3]}, 3),
        ({"kinds": [1], "#t": ["a", "b"]}, 2),
        ({"authors": PUBKEYS, "#p": ["x"]}, 1),
        ({"ids": IDS, "authors": PUBKEYS[:2], "#e": ["a", "b", "c"]}, 2),
        ({"#t": [str(n) for n in range(1000)], "#e": ["a", "b"]}, 2),
        ({"ids": []}, 0),
        ({"since": 9, "until": 1}, 0),
    ],
)
def test_entries_counts_the_values_a_filter_is_filed_under(obj: dict[str, Any], filed: int) -> None:
    f = parse_filter(obj)
    assert entries([f]) == filed
    assert entries([f, f]) == 2 * filed
    index = index_with(("c", "s", (obj,)))
    assert index.stats().filed_values == filed


def test_many_tag_values_are_filed_and_freed() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for s in range(32):
        values = [f"{s}-{n}" for n in range(1000)]
        index.add("c", f"s{s}", (parse_filter({"#t": values, "limit": 0}),))
    assert index.stats().filed_values == 32_000
    assert index.matching(make_event(tags=[["t", "7-999"]])) == {("c", "s7")}
    index.remove_owner("c", [f"s{s}" for s in range(32)])
    assert_empty(index)


# --- through a relay ---------------------------------------------------------------------


async def test_relay_delivers_to_every_identical_subscription_and_not_to_junk(
    relay: RelayServer, keys: Keys
) -> None:
    url = url_of(relay)
    a, b, publisher = [await Client.connect(url) for _ in range(3)]
    try:
        now = int(time.time())
        await a.req("junk", {"kinds": [1], "since": FAR, "limit": 0})
        await a.req("ancient", {"kinds": [1], "until": 1000, "limit": 0})
        await a.req("feed1", {"kinds": [1], "limit": 0})
        await a.req("feed2", {"kinds": [1], "limit": 0})
        await b.req("feed", {"kinds": [1], "limit": 0})
        await b.req("recent", {"kinds": [1], "since": now - 60, "limit": 0})
        stats = relay.subscriptions.stats()
        assert (stats.subscriptions, stats.distinct_filters) == (6, 3)
        event = keys.sign(created_at=now)
        assert (await publisher.publish(event))[2] is True
        for client, sub_ids in ((a, ["feed1", "feed2"]), (b, ["feed", "recent"])):
            frames = [await client.recv() for _ in sub_ids]
            assert sorted(frames) == [["EVENT", sub_id, event] for sub_id in sub_ids]
        # Nothing more for the junk or ancient subscriptions: the sentinel's EOSE comes next.
        await a.send(["REQ", "sentinel", {"ids": ["ff" * 32]}])
        assert await a.recv() == ["EOSE", "sentinel"]
    finally:
        for client in (a, b, publisher):
            await client.close()
    await wait_for(lambda: not len(relay.subscriptions))
    assert_empty(relay.subscriptions)
