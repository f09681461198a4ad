"""NIP-01 filters: parse errors and matching rules."""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PrivateKey

from relay.core.errors import Invalid
from relay.core.event import Event, parse_event
from relay.core.filters import Filter, matches_any, most_results, parse_filter
from tests.nostr import Keys

ALICE = Keys(PrivateKey(bytes.fromhex("01" * 32)))
BOB = Keys(PrivateKey(bytes.fromhex("02" * 32)))
HEX = "ab" * 32


def event(
    keys: Keys = ALICE,
    kind: int = 1,
    created_at: int = 1000,
    tags: list[list[str]] | None = None,
    content: str = "",
) -> Event:
    return parse_event(keys.sign(kind=kind, content=content, tags=tags, created_at=created_at))


# --- parsing ------------------------------------------------------------------------------


def test_parse_all_fields() -> None:
    f = parse_filter(
        {
            "ids": [HEX],
            "authors": [ALICE.pubkey, BOB.pubkey],
            "kinds": [0, 1, 65535],
            "#e": ["x", "y"],
            "#T": ["z"],
            "since": 0,
            "until": 2**63 - 1,
            "limit": 10,
        }
    )
    assert f == Filter(
        ids=frozenset([HEX]),
        authors=frozenset([ALICE.pubkey, BOB.pubkey]),
        kinds=frozenset([0, 1, 65535]),
        tags=(("T", frozenset(["z"])), ("e", frozenset(["x", "y"]))),
        since=0,
        until=2**63 - 1,
        limit=10,
    )


def test_most_results_bounds_each_filter_by_its_limit_and_its_ids() -> None:
    two_ids = frozenset({"a" * 64, "b" * 64})
    assert most_results([Filter(limit=5), Filter(ids=two_ids, limit=10)]) == 7
    assert most_results([Filter(ids=two_ids)]) == 2
    assert most_results([Filter(ids=two_ids, limit=1), Filter(limit=0)]) == 1
    assert most_results([Filter(limit=5), Filter()]) is None


def test_parse_empty_filter() -> None:
    assert parse_filter({}) == Filter()


def test_unknown_keys_ignored() -> None:
    assert parse_filter({"foo": 1, "ids2": "x", "kinds": [1]}) == Filter(kinds=frozenset([1]))


def test_empty_lists_parse_to_empty_sets() -> None:
    f = parse_filter({"ids": [], "authors": [], "kinds": [], "#e": []})
    assert f.ids == frozenset()
    assert f.authors == frozenset()
    assert f.kinds == frozenset()
    assert f.tags == (("e", frozenset()),)


BAD_FILTERS: list[dict[str, Any]] = [
    {"ids": ["xyz" + HEX[3:]]},
    {"ids": [HEX[:-1]]},
    {"ids": [HEX[:8]]},
    {"ids": [HEX + "0"]},
    {"ids": [HEX.upper()]},
    {"ids": [1]},
    {"ids": [None]},
    {"ids": HEX},
    {"ids": None},
    {"ids": {HEX: 1}},
    {"authors": ["npub1xyz"]},
    {"authors": [HEX[:20]]},
    {"authors": ALICE.pubkey},
    {"authors": [ALICE.pubkey.upper()]},
    {"kinds": ["1"]},
    {"kinds": [1.0]},
    {"kinds": [True]},
    {"kinds": [-1]},
    {"kinds": [65536]},
    {"kinds": [None]},
    {"kinds": 1},
    {"kinds": "1"},
    {"#ee": ["x"]},
    {"#": ["x"]},
    {"#1": ["x"]},
    {"#\u00e9": ["x"]},
    {"#-": ["x"]},
    {"#e": "x"},
    {"#e": [1]},
    {"#e": [None]},
    {"#e": [["x"]]},
    {"#e": None},
    {"since": -1},
    {"since": 1.5},
    {"since": 1e3},
    {"since": "1"},
    {"since": True},
    {"since": None},
    {"until": -1},
    {"until": "1"},
    {"until": 2**63},
    {"limit": -1},
    {"limit": 1.0},
    {"limit": "10"},
    {"limit": False},
]


@pytest.mark.parametrize("obj", BAD_FILTERS)
def test_parse_errors(obj: dict[str, Any]) -> None:
    with pytest.raises(Invalid) as info:
        parse_filter(obj)
    assert type(info.value) is Invalid
    assert info.value.reason.startswith("invalid: ")


@pytest.mark.parametrize("obj", [None, [], "x", 1, [{"ids": []}]])
def test_filter_must_be_object(obj: Any) -> None:
    with pytest.raises(Invalid):
        parse_filter(obj)


@pytest.mark.parametrize("search", [None, 1, ["x"], "x" * 257, " ".join("abcdefghijklmnopq")])
def test_bad_search_is_invalid(search: Any) -> None:
    with pytest.raises(Invalid) as info:
        parse_filter({"kinds": [1], "search": search})
    assert info.value.reason.startswith("invalid: ")


def test_search_keeps_words_and_drops_extensions() -> None:
    f = parse_filter({"search": 'Nostr, RELAYS! include:spam language:en "x" OR NEAR(a b)'})
    assert f.search == ("nostr", "relays", "x", "or", "near", "a", "b")
    assert parse_filter({"search": ""}).search == ()
    assert parse_filter({}).search is None


# --- matching -----------------------------------------------------------------------------


def match(obj: dict[str, Any], e: Event) -> bool:
    return parse_filter(obj).matches(e)


def test_empty_filter_matches_everything() -> None:
    assert match({}, event())
    assert match({}, event(BOB, kind=30000, created_at=0, tags=[["d", "x"]]))


def test_ids() -> None:
    e = event()
    assert match({"ids": [e.id]}, e)
    assert match({"ids": [HEX, e.id]}, e)
    assert not match({"ids": [HEX]}, e)


def test_authors() -> None:
    e = event(ALICE)
    assert match({"authors": [ALICE.pubkey]}, e)
    assert match({"authors": [BOB.pubkey, ALICE.pubkey]}, e)
    assert not match({"authors": [BOB.pubkey]}, e)


def test_kinds() -> None:
    e = event(kind=7)
    assert match({"kinds": [7]}, e)
    assert match({"kinds": [1, 7]}, e)
    assert not match({"kinds": [1, 70]}, e)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ({"since": 1000}, True),
        ({"since": 999}, True),
        ({"since": 1001}, False),
        ({"until": 1000}, True),
        ({"until": 1001}, True),
        ({"until": 999}, False),
        ({"since": 1000, "until": 1000}, True),
        ({"since": 1001, "until": 999}, False),
        ({"since": 0}, True),
    ],
)
def test_since_until_inclusive(window: dict[str, int], expected: bool) -> None:
    assert match(window, event(created_at=1000)) is expected


def test_tag_matches_first_value_only() -> None:
    e = event(tags=[["e", "x", "y"], ["p", "q"]])
    assert match({"#e": ["x"]}, e)
    assert not match({"#e": ["y"]}, e)
    assert not match({"#e": ["e"]}, e)
    assert match({"#p": ["q"]}, e)
    assert not match({"#p": ["x"]}, e)


def test_tag_needs_a_value() -> None:
    e = event(tags=[["e"]])
    assert not match({"#e": [""]}, e)
    assert match({"#e": [""]}, event(tags=[["e", ""]]))


def test_tag_any_value_of_any_tag_with_the_name() -> None:
    e = event(tags=[["t", "a"], ["t", "b"]])
    assert match({"#t": ["b"]}, e)
    assert match({"#t": ["z", "a"]}, e)
    assert not match({"#t": ["c"]}, e)


def test_tag_names_are_case_sensitive() -> None:
    e = event(tags=[["E", "x"]])
    assert match({"#E": ["x"]}, e)
    assert not match({"#e": ["x"]}, e)


def test_tag_values_exact() -> None:
    e = event(tags=[["t", "Nostr"]])
    assert not match({"#t": ["nostr"]}, e)
    assert not match({"#t": ["Nost"]}, e)
    assert not match({"#t": ["Nostr "]}, e)


def test_several_tags_are_all_required() -> None:
    e = event(tags=[["e", "x"], ["p", "y"]])
    assert match({"#e": ["x"], "#p": ["y"]}, e)
    assert not match({"#e": ["x"], "#p": ["z"]}, e)
    assert not match({"#e": ["x"], "#t": ["y"]}, e)


def test_all_conditions_are_required() -> None:
    e = event(ALICE, kind=1, created_at=1000, tags=[["t", "a"]])
    full = {
        "ids": [e.id],
        "authors": [ALICE.pubkey],
        "kinds": [1],
        "#t": ["a"],
        "since": 1000,
        "until": 1000,
    }
    assert match(full, e)
    for key, wrong in [
        ("ids", [HEX]),
        ("authors", [BOB.pubkey]),
        ("kinds", [2]),
        ("#t", ["b"]),
        ("since", 1001),
        ("until", 999),
    ]:
        assert not match({**full, key: wrong}, e), key


def test_limit_does_not_affect_matching() -> None:
    assert match({"limit": 0}, event())


@pytest.mark.parametrize("key", ["ids", "authors", "kinds", "#e"])
def test_empty_list_matches_nothing(key: str) -> None:
    e = event(tags=[["e", "x"]])
    f = parse_filter({key: []})
    assert not f.matches(e)
    assert not f.can_match


def test_can_match() -> None:
    assert parse_filter({}).can_match
    assert parse_filter({"since": 5, "until": 5}).can_match
    assert not parse_filter({"since": 6, "until": 5}).can_match
    assert parse_filter({"limit": 0}).can_match


def test_matches_any() -> None:
    e = event(kind=1)
    assert matches_any([parse_filter({"kinds": [2]}), parse_filter({"kinds": [1]})], e)
    assert not matches_any([parse_filter({"kinds": [2]}), parse_filter({"ids": []})], e)
    assert not matches_any([], e)


def test_with_limit_keeps_conditions() -> None:
    f = parse_filter({"kinds": [1], "#t": ["a"], "since": 3, "until": 9, "limit": 5})
    g = f.with_limit(7)
    assert g.limit == 7
    assert (g.ids, g.authors, g.kinds, g.tags, g.since, g.until) == (
        None,
        None,
        frozenset([1]),
        (("t", frozenset(["a"])),),
        3,
        9,
    )
    assert f.with_limit(None).limit is None


def test_filters_are_hashable() -> None:
    a = parse_filter({"kinds": [1, 2], "#e": ["x"]})
    b = parse_filter({"#e": ["x"], "kinds": [2, 1]})
    assert a == b
    assert len({a, b}) == 1
