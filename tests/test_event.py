"""The event model: field checks, id check, signatures, kind classes, d tag, expiration."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from coincurve import PrivateKey

from relay.core.errors import Invalid
from relay.core.event import Event, KindClass, event_from_raw, kind_class, newer, parse_event
from relay.core.signature import verify, verify_many
from tests.nostr import Keys
from tests.test_canonical import REAL_EVENTS

ALICE = Keys(PrivateKey(bytes.fromhex("01" * 32)))
BOB = Keys(PrivateKey(bytes.fromhex("02" * 32)))


def signed(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("created_at", 1_700_000_000)
    return ALICE.sign(**kwargs)


def with_id(obj: dict[str, Any]) -> dict[str, Any]:
    """Recompute the id by hand (hashlib over orjson of the preimage array) for a changed event."""
    preimage = orjson.dumps(
        [0, obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"]]
    )
    return {**obj, "id": hashlib.sha256(preimage).hexdigest()}


# --- well-formed events ---------------------------------------------------------------


def test_valid_event_parses_to_all_fields() -> None:
    obj = signed(kind=7, content="+", tags=[["e", "ab" * 32], ["p", BOB.pubkey, "wss://x"]])
    event = parse_event(obj)
    assert event.to_dict() == obj
    assert event.raw == orjson.dumps(obj)
    assert verify(event)


def test_raw_holds_fields_in_canonical_order_even_if_received_shuffled() -> None:
    obj = signed()
    shuffled = {key: obj[key] for key in reversed(list(obj))}
    event = parse_event(shuffled)
    assert event.raw == orjson.dumps(obj)
    assert event.raw.startswith(b'{"id":"' + obj["id"].encode() + b'","pubkey":')


def test_unknown_extra_fields_are_not_kept() -> None:
    obj = signed()
    event = parse_event({**obj, "extra": 1, "seenOn": ["x"]})
    assert event.raw == orjson.dumps(obj)


@pytest.mark.parametrize("frame", REAL_EVENTS)
def test_real_events_verify(frame: bytes) -> None:
    assert verify(parse_event(orjson.loads(frame)))


def test_event_from_raw_roundtrip() -> None:
    event = parse_event(signed(tags=[["d", "x"]], kind=30000))
    again = event_from_raw(event.raw)
    assert again == event
    assert again.raw == event.raw


@pytest.mark.parametrize("created_at", [0, 2**63 - 1])
def test_created_at_bounds_accepted(created_at: int) -> None:
    assert parse_event(signed(created_at=created_at)).created_at == created_at


@pytest.mark.parametrize("kind", [0, 65535])
def test_kind_bounds_accepted(kind: int) -> None:
    assert parse_event(signed(kind=kind)).kind == kind


def test_empty_content_and_tags_accepted() -> None:
    event = parse_event(signed(content="", tags=[]))
    assert (event.content, event.tags) == ("", [])


# --- field checks -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["id", "pubkey", "created_at", "kind", "tags", "content", "sig"])
def test_missing_field(name: str) -> None:
    obj = signed()
    del obj[name]
    with pytest.raises(Invalid, match=name):
        parse_event(obj)


@pytest.mark.parametrize("obj", [None, [], "event", 1, [["id", "x"]]])
def test_not_an_object(obj: Any) -> None:
    with pytest.raises(Invalid, match="object"):
        parse_event(obj)


WRONG_TYPES: list[tuple[str, Any]] = [
    ("id", None),
    ("id", 1),
    ("id", ["ab" * 32]),
    ("pubkey", None),
    ("pubkey", 5),
    ("sig", None),
    ("sig", {"a": 1}),
    ("created_at", "1700000000"),
    ("created_at", None),
    ("created_at", True),
    ("created_at", 1.0),
    ("created_at", [1]),
    ("kind", True),
    ("kind", False),
    ("kind", "1"),
    ("kind", None),
    ("kind", 1.0),
    ("tags", None),
    ("tags", {}),
    ("tags", "e"),
    ("content", None),
    ("content", 1),
    ("content", ["hello"]),
    ("content", True),
]


@pytest.mark.parametrize(("name", "value"), WRONG_TYPES)
def test_wrong_json_type(name: str, value: Any) -> None:
    obj = signed()
    obj[name] = value
    with pytest.raises(Invalid, match=name):
        parse_event(obj)


@pytest.mark.parametrize("number", [b"1e3", b"1000.0", b"1.7e9", b"-0.0"])
@pytest.mark.parametrize("name", [b"created_at", b"kind"])
def test_float_numbers_from_json_are_refused(name: bytes, number: bytes) -> None:
    obj = signed()
    frame = orjson.dumps(obj)
    value = str(obj[name.decode()]).encode()
    frame = frame.replace(b'"' + name + b'":' + value, b'"' + name + b'":' + number)
    parsed = orjson.loads(frame)
    assert type(parsed[name.decode()]) is float
    with pytest.raises(Invalid, match=name.decode()):
        parse_event(parsed)


def test_integer_too_big_for_64_bits_from_json_is_refused() -> None:
    frame = orjson.dumps(signed()).replace(
        b'"created_at":1700000000', b'"created_at":1' + b"0" * 25
    )
    with pytest.raises(Invalid, match="created_at"):
        parse_event(orjson.loads(frame))


@pytest.mark.parametrize("kind", [65536, -1, 2**40])
def test_kind_out_of_range(kind: int) -> None:
    with pytest.raises(Invalid, match="kind"):
        parse_event(signed(kind=kind))


@pytest.mark.parametrize("created_at", [-1, -1_700_000_000, 2**63])
def test_created_at_out_of_range(created_at: int) -> None:
    with pytest.raises(Invalid, match="created_at"):
        parse_event(with_id({**signed(), "created_at": created_at}))


def _hex_variants(value: str) -> list[str]:
    return [
        value.upper(),
        value[:-1] + "A" if not value[-1].isdigit() else value[:-1] + "F",
        value[:-1],
        value + "0",
        value[:-1] + "g",
        "",
        " " + value[1:],
        "0x" + value[2:],
    ]


@pytest.mark.parametrize("name", ["id", "pubkey", "sig"])
@pytest.mark.parametrize("variant", range(8))
def test_malformed_hex(name: str, variant: int) -> None:
    obj = signed()
    bad = _hex_variants(obj[name])[variant]
    assert bad != obj[name]
    obj[name] = bad
    if name == "pubkey":
        obj = {**with_id(obj), "pubkey": bad}
    with pytest.raises(Invalid, match=name):
        parse_event(obj)


def test_uppercase_pubkey_refused_even_with_matching_id() -> None:
    obj = with_id({**signed(), "pubkey": ALICE.pubkey.upper()})
    with pytest.raises(Invalid, match="pubkey"):
        parse_event(obj)


BAD_TAGS: list[Any] = [
    [["e", 1]],
    [["e", None]],
    [["e", ["x"]]],
    [["e", True]],
    [["e", {"a": "b"}]],
    [[1, "x"]],
    ["e"],
    [None],
    [{"e": "x"}],
    [["e", "x"], "p"],
    [["e", "x"], [["p"]]],
    [["e", 1.5]],
]


@pytest.mark.parametrize("tags", BAD_TAGS)
def test_tags_must_be_lists_of_strings(tags: Any) -> None:
    obj = signed()
    obj["tags"] = tags
    with pytest.raises(Invalid, match="tag"):
        parse_event(obj)


# --- id check -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("content", "tampered"),
        ("created_at", 1_700_000_001),
        ("kind", 2),
        ("tags", [["t", "x"]]),
        ("pubkey", BOB.pubkey),
    ],
)
def test_id_mismatch(name: str, value: Any) -> None:
    obj = signed()
    obj[name] = value
    with pytest.raises(Invalid, match="id does not match"):
        parse_event(obj)


def test_id_of_other_event_refused() -> None:
    obj = signed(content="a")
    obj["id"] = signed(content="b")["id"]
    with pytest.raises(Invalid, match="id does not match"):
        parse_event(obj)


def test_lone_surrogate_refused_as_invalid() -> None:
    obj = signed()
    obj["content"] = "\ud800"
    with pytest.raises(Invalid, match="UTF-8"):
        parse_event(obj)
    obj = signed()
    obj["tags"] = [["t", "\udfff"]]
    with pytest.raises(Invalid, match="UTF-8"):
        parse_event(obj)


# --- signatures ---------------------------------------------------------------------------


def test_good_signature_verifies() -> None:
    assert verify(parse_event(signed()))
    assert verify(parse_event(BOB.sign(created_at=5)))


@pytest.mark.parametrize("position", [0, 31, 63, 64, 100, 127])
def test_tampered_signature(position: int) -> None:
    obj = signed()
    sig = obj["sig"]
    flipped = "0" if sig[position] != "0" else "1"
    obj["sig"] = sig[:position] + flipped + sig[position + 1 :]
    assert not verify(parse_event(obj))


def test_signature_from_another_key() -> None:
    obj = with_id({**signed(), "pubkey": BOB.pubkey})
    obj["sig"] = ALICE.secret.sign_schnorr(bytes.fromhex(obj["id"])).hex()
    event = parse_event(obj)
    assert not verify(event)


def test_signature_of_another_event() -> None:
    obj = signed(content="a")
    obj["sig"] = signed(content="b")["sig"]
    assert not verify(parse_event(obj))


@pytest.mark.parametrize(
    "pubkey",
    [
        # x = 5: x^3 + 7 is not a square mod p, no point has this x.
        "0000000000000000000000000000000000000000000000000000000000000005",
        "0000000000000000000000000000000000000000000000000000000000000000",
        # x >= p.
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f",
    ],
)
def test_pubkey_not_on_curve(pubkey: str) -> None:
    obj = with_id({**signed(), "pubkey": pubkey})
    assert not verify(parse_event(obj))


@pytest.mark.parametrize(
    "sig",
    [
        "00" * 64,
        "ff" * 64,
        # r = p, s = 1
        "fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f" + "00" * 31 + "01",
    ],
)
def test_degenerate_signatures(sig: str) -> None:
    obj = signed()
    obj["sig"] = sig
    assert not verify(parse_event(obj))


def test_verify_many() -> None:
    good = parse_event(signed(content="good"))
    bad_obj = signed(content="bad")
    bad_obj["sig"] = signed(content="other")["sig"]
    assert verify_many([good, parse_event(bad_obj), good]) == [True, False, True]


# --- kind classes -------------------------------------------------------------------------

KIND_CLASSES = [
    (0, KindClass.REPLACEABLE),
    (1, KindClass.REGULAR),
    (2, KindClass.REGULAR),
    (3, KindClass.REPLACEABLE),
    (4, KindClass.REGULAR),
    (5, KindClass.REGULAR),
    (9999, KindClass.REGULAR),
    (10000, KindClass.REPLACEABLE),
    (19999, KindClass.REPLACEABLE),
    (20000, KindClass.EPHEMERAL),
    (29999, KindClass.EPHEMERAL),
    (30000, KindClass.ADDRESSABLE),
    (39999, KindClass.ADDRESSABLE),
    (40000, KindClass.REGULAR),
    (65535, KindClass.REGULAR),
]


@pytest.mark.parametrize(("kind", "expected"), KIND_CLASSES)
def test_kind_class(kind: int, expected: KindClass) -> None:
    assert kind_class(kind) is expected
    event = parse_event(signed(kind=kind, tags=[["d", "x"]]))
    assert event.kind_class is expected
    assert event.is_ephemeral is (expected is KindClass.EPHEMERAL)


@pytest.mark.parametrize(("kind", "expected"), KIND_CLASSES)
def test_address(kind: int, expected: KindClass) -> None:
    event = parse_event(signed(kind=kind, tags=[["d", "x"]]))
    if expected is KindClass.REPLACEABLE:
        assert event.address == (kind, ALICE.pubkey, "")
    elif expected is KindClass.ADDRESSABLE:
        assert event.address == (kind, ALICE.pubkey, "x")
    else:
        assert event.address is None


# --- d tag --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([], ""),
        ([["d", "abc"]], "abc"),
        ([["d", ""]], ""),
        ([["d", "first"], ["d", "second"]], "first"),
        ([["e", "x"], ["d", "v", "extra"]], "v"),
        ([["d"]], ""),
        ([["D", "upper"]], ""),
        ([["dd", "x"]], ""),
        ([["x", "d"]], ""),
    ],
)
def test_d_tag(tags: list[list[str]], expected: str) -> None:
    event = parse_event(signed(kind=30000, tags=tags))
    assert event.d_tag == expected
    assert event.address == (30000, ALICE.pubkey, expected)


# --- expiration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([], None),
        ([["expiration", "1700000000"]], 1_700_000_000),
        ([["expiration", "0"]], 0),
        ([["expiration", "0042"]], 42),
        ([["expiration", "1700000000", "extra"]], 1_700_000_000),
        ([["t", "x"], ["expiration", "123"]], 123),
        ([["expiration"]], None),
        ([["expiration", ""]], None),
        ([["expiration", "abc"]], None),
        ([["expiration", "-5"]], None),
        ([["expiration", "+5"]], None),
        ([["expiration", "1.5"]], None),
        ([["expiration", "1e9"]], None),
        ([["expiration", " 123"]], None),
        ([["expiration", "123 "]], None),
        ([["expiration", "\uff11\uff12"]], None),  # fullwidth digits
        ([["expiration", "\u0661\u0662"]], None),  # Arabic-Indic digits
        ([["expiration", "9" * 19]], None),
        ([["Expiration", "123"]], None),
    ],
)
def test_expiration(tags: list[list[str]], expected: int | None) -> None:
    assert parse_event(signed(tags=tags)).expiration == expected


# --- newer --------------------------------------------------------------------------------


def make(created_at: int, event_id: str) -> Event:
    return Event(event_id, ALICE.pubkey, created_at, 0, [], "", "00" * 64)


LOW = "0" * 63 + "1"
HIGH = "f" * 64


def test_newer_later_created_at_wins_whatever_the_id() -> None:
    assert newer(make(2, HIGH), make(1, LOW))
    assert not newer(make(1, LOW), make(2, HIGH))
    assert newer(make(2, LOW), make(1, HIGH))
    assert not newer(make(1, HIGH), make(2, LOW))


def test_newer_tie_lowest_id_wins() -> None:
    assert newer(make(5, LOW), make(5, HIGH))
    assert not newer(make(5, HIGH), make(5, LOW))
    mid = "8" + "0" * 63
    assert newer(make(5, LOW), make(5, mid))
    assert newer(make(5, mid), make(5, HIGH))


def test_newer_is_irreflexive() -> None:
    assert not newer(make(5, LOW), make(5, LOW))


def test_newer_with_real_signed_events() -> None:
    a = parse_event(signed(kind=0, content="a"))
    b = parse_event(signed(kind=0, content="b"))
    low, high = sorted([a, b], key=lambda e: e.id)
    assert newer(low, high)
    assert not newer(high, low)


# --- indexed tags -------------------------------------------------------------------------


def test_indexed_tags_only_single_ascii_letters_with_a_value() -> None:
    tags = [
        ["e", "1"],
        ["E", "2"],
        ["t", "3", "more"],
        ["p"],
        ["ex", "4"],
        ["1", "5"],
        ["\u00e9", "6"],
        ["", "7"],
        ["e", "8"],
    ]
    event = parse_event(signed(tags=tags))
    assert event.indexed_tags() == [("e", "1"), ("E", "2"), ("t", "3"), ("e", "8")]
