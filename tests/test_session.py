"""Per-connection session, write policy and NIP-11, without I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

import relay
from relay.core.errors import ClientError, Invalid, MessageError
from relay.core.event import Event
from relay.core.filters import Filter, parse_filter
from relay.core.limits import Limits
from relay.core.messages import CloseMessage, EventMessage, ReqMessage, refusal
from relay.core.nip11 import RelayInfo, information_document
from relay.core.policy import check_write, default_write_checks
from relay.core.session import Session
from tests.nostr import Keys

IDS = ["01" * 32, "02" * 32, "03" * 32]
PUBKEYS = ["0a" * 32, "0b" * 32, "0c" * 32]
SIG = "00" * 64
NOW = 1_700_000_000


def make_event(
    *,
    id: str = IDS[0],
    pubkey: str = PUBKEYS[0],
    created_at: int = 5,
    kind: int = 1,
    tags: list[list[str]] | None = None,
    content: str = "",
) -> Event:
    """An Event built directly: the index and the policy never look at the id or signature."""
    return Event(id, pubkey, created_at, kind, tags or [], content, SIG)


def req(sub_id: str, *filters: dict[str, Any]) -> ReqMessage:
    return ReqMessage(sub_id, tuple(parse_filter(f) for f in filters or ({},)))


def close_frame(sub_id: str) -> str:
    return json.dumps(["CLOSE", sub_id], ensure_ascii=False, separators=(",", ":"))


# --- Session.receive: the size limit is in bytes ----------------------------------------


def test_receive_parses_within_the_limit() -> None:
    session = Session(Limits())
    assert session.receive('["CLOSE","s"]') == CloseMessage("s")
    assert session.receive(b'["CLOSE","s"]') == CloseMessage("s")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_receive_exactly_at_the_limit(as_bytes: bool) -> None:
    text = '["CLOSE","s"]'
    padded = text + " " * (40 - len(text))
    session = Session(Limits(max_message_length=40))
    assert session.receive(padded.encode() if as_bytes else padded) == CloseMessage("s")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_receive_one_byte_over_the_limit(as_bytes: bool) -> None:
    text = '["CLOSE","s"]'
    padded = text + " " * (41 - len(text))
    session = Session(Limits(max_message_length=40))
    with pytest.raises(MessageError) as info:
        session.receive(padded.encode() if as_bytes else padded)
    error = info.value
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", None, None)
    assert error.message == "message is longer than 40 bytes"
    assert json.loads(refusal(error)) == ["NOTICE", "invalid: message is longer than 40 bytes"]


def test_receive_size_is_checked_before_parsing() -> None:
    """An oversized EVENT is refused for its size, not parsed (and not correlated)."""
    session = Session(Limits(max_message_length=20))
    with pytest.raises(MessageError, match="longer than 20 bytes") as info:
        session.receive(b'["EVENT",{"id":"' + b"a" * 64 + b'"}]')
    assert info.value.event_id is None


def test_receive_multibyte_str_within_the_byte_limit() -> None:
    frame = close_frame("é" * 4)  # 16 characters, 20 bytes
    assert (len(frame), len(frame.encode())) == (16, 20)
    session = Session(Limits(max_message_length=20))
    assert session.receive(frame) == CloseMessage("é" * 4)


def test_receive_multibyte_str_over_the_limit_in_characters_too() -> None:
    frame = close_frame("é" * 10)  # 22 characters, 32 bytes
    session = Session(Limits(max_message_length=20))
    with pytest.raises(MessageError, match="longer than 20 bytes"):
        session.receive(frame)


def test_receive_multibyte_bytes_are_counted_as_bytes() -> None:
    frame = close_frame("é" * 8).encode()  # 28 bytes
    with pytest.raises(MessageError, match="longer than 20 bytes"):
        Session(Limits(max_message_length=20)).receive(frame)


@pytest.mark.parametrize("char", ["é", "✓", "🎉"])
def test_receive_str_over_the_limit_in_bytes_only(char: str) -> None:
    frame = close_frame(char * 8)  # 20 characters, 28 to 44 bytes
    assert len(frame) == 20
    assert len(frame.encode()) > 20
    with pytest.raises(MessageError, match="longer than 20 bytes"):
        Session(Limits(max_message_length=20)).receive(frame)


def test_receive_oversized_str_with_lone_surrogate_is_a_message_error() -> None:
    frame = '["CLOSE","' + "\ud800" * 30 + '"]'
    with pytest.raises(MessageError):
        Session(Limits(max_message_length=20)).receive(frame)


def test_receive_lone_surrogate_within_the_limit_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="not valid JSON"):
        Session(Limits()).receive('["CLOSE","\ud800"]')


def test_receive_signed_event() -> None:
    obj = Keys().sign(created_at=NOW)
    message = Session(Limits()).receive(json.dumps(["EVENT", obj]))
    assert isinstance(message, EventMessage)
    assert message.event.to_dict() == obj


def test_receive_returns_typed_messages() -> None:
    session = Session(Limits())
    assert isinstance(session.receive('["REQ","s",{}]'), ReqMessage)
    with pytest.raises(MessageError):
        session.receive('["EVENT",{}]')
    assert session.subscriptions == {}  # receive() parses; open() registers


# --- Session.open / close -------------------------------------------------------------


def test_open_registers_and_returns_the_filters() -> None:
    session = Session(Limits())
    filters = session.open(req("s", {"kinds": [1], "limit": 3}, {"authors": [PUBKEYS[0]]}))
    assert filters == (
        Filter(kinds=frozenset([1]), limit=3),
        Filter(authors=frozenset([PUBKEYS[0]]), limit=500),
    )
    assert session.subscriptions == {"s": filters}


def assert_closed_with(error: MessageError, sub_id: str, prefix: str) -> None:
    assert (error.prefix, error.event_id, error.sub_id) == (prefix, None, sub_id)
    assert json.loads(refusal(error))[:2] == ["CLOSED", sub_id]
    assert json.loads(refusal(error))[2].startswith(f"{prefix}: ")


def test_subscription_id_at_max_length() -> None:
    session = Session(Limits(max_subid_length=8))
    session.open(req("x" * 8))
    assert "x" * 8 in session.subscriptions


def test_subscription_id_length_counts_characters() -> None:
    """NIP-01: a subscription id is a string of max length 64 chars."""
    session = Session(Limits())
    session.open(req("é" * 64))
    session.open(req("🎉" * 64))
    assert len(session.subscriptions) == 2


def test_subscription_id_over_max_length() -> None:
    session = Session(Limits(max_subid_length=8))
    with pytest.raises(MessageError) as info:
        session.open(req("x" * 9))
    assert_closed_with(info.value, "x" * 9, "invalid")
    assert info.value.message == "subscription id is longer than 8"
    assert session.subscriptions == {}


def test_filters_at_max_count() -> None:
    session = Session(Limits(max_filters=3))
    assert len(session.open(req("s", {}, {}, {}))) == 3


def test_filters_over_max_count() -> None:
    session = Session(Limits(max_filters=3))
    with pytest.raises(MessageError) as info:
        session.open(req("s", {}, {}, {}, {}))
    assert_closed_with(info.value, "s", "invalid")
    assert info.value.message == "a REQ may hold at most 3 filters"
    assert session.subscriptions == {}


def test_max_subscriptions() -> None:
    session = Session(Limits(max_subscriptions=2))
    session.open(req("a"))
    session.open(req("b"))
    with pytest.raises(MessageError) as info:
        session.open(req("c"))
    assert_closed_with(info.value, "c", "restricted")
    assert info.value.message == "at most 2 open subscriptions"
    assert set(session.subscriptions) == {"a", "b"}


def test_replacing_a_subscription_is_not_a_new_one() -> None:
    session = Session(Limits(max_subscriptions=2))
    session.open(req("a", {"kinds": [1]}))
    session.open(req("b"))
    replaced = session.open(req("a", {"kinds": [2]}))
    assert session.subscriptions == {"a": replaced, "b": session.subscriptions["b"]}
    assert replaced == (Filter(kinds=frozenset([2]), limit=500),)


def test_closing_frees_a_slot() -> None:
    session = Session(Limits(max_subscriptions=1))
    session.open(req("a"))
    assert session.close("a") is True
    session.open(req("b"))
    assert set(session.subscriptions) == {"b"}


def test_close_returns_whether_it_was_open() -> None:
    session = Session(Limits())
    assert session.close("nope") is False
    session.open(req("s"))
    assert session.close("s") is True
    assert session.close("s") is False
    assert session.subscriptions == {}


def test_subscription_ids_are_case_and_byte_exact() -> None:
    session = Session(Limits())
    session.open(req("Sub"))
    assert session.close("sub") is False
    assert session.close("Sub ") is False
    assert session.close("Sub") is True


def test_refused_replacement_does_not_leave_the_old_subscription_open() -> None:
    session = Session(Limits(max_filters=2))
    session.open(req("s", {"kinds": [1]}))
    with pytest.raises(MessageError) as info:
        session.open(req("s", {}, {}, {}))
    assert info.value.sub_id == "s"
    assert "s" not in session.subscriptions


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, 500), (0, 0), (1, 1), (499, 499), (5000, 5000), (5001, 5000), (2**63 - 1, 5000)],
)
def test_limit_clamping(limit: int | None, expected: int) -> None:
    session = Session(Limits(max_limit=5000, default_limit=500))
    (f,) = session.open(ReqMessage("s", (Filter(kinds=frozenset([1]), limit=limit),)))
    assert f.limit == expected
    assert f == Filter(kinds=frozenset([1]), limit=expected)


def test_default_limit_is_itself_clamped() -> None:
    session = Session(Limits(max_limit=10, default_limit=100))
    assert session.open(req("s", {}))[0].limit == 10


def test_limit_clamped_per_filter() -> None:
    session = Session(Limits(max_limit=10, default_limit=4))
    filters = session.open(req("s", {"limit": 50}, {}, {"limit": 0}, {"limit": 7}))
    assert [f.limit for f in filters] == [10, 4, 0, 7]


def test_clamping_keeps_every_condition() -> None:
    obj = {"ids": [IDS[0]], "authors": [PUBKEYS[1]], "kinds": [3], "#e": ["x"], "since": 1}
    (f,) = Session(Limits(max_limit=2)).open(req("s", {**obj, "until": 9, "limit": 99}))
    assert f == parse_filter({**obj, "until": 9, "limit": 2})


def test_sessions_are_independent() -> None:
    one, two = Session(Limits(max_subscriptions=1)), Session(Limits(max_subscriptions=1))
    one.open(req("s"))
    two.open(req("s"))
    assert one.close("s") is True
    assert "s" in two.subscriptions


def test_receive_then_open() -> None:
    session = Session(Limits(max_subscriptions=1, max_limit=3))
    message = session.receive('["REQ","feed",{"kinds":[1],"limit":10}]')
    assert isinstance(message, ReqMessage)
    assert session.open(message) == (Filter(kinds=frozenset([1]), limit=3),)


# --- write policy ---------------------------------------------------------------------

POLICY_LIMITS = Limits(
    max_content_length=10,
    max_event_tags=3,
    created_at_lower_limit=100,
    created_at_upper_limit=10,
)


def check(event: Event, limits: Limits = POLICY_LIMITS, now: int = NOW) -> None:
    check_write(default_write_checks(limits), event, now)


def refused_by_policy(event: Event, limits: Limits = POLICY_LIMITS) -> ClientError:
    with pytest.raises(ClientError) as info:
        check(event, limits)
    assert isinstance(info.value, Invalid)
    assert info.value.prefix == "invalid"
    return info.value


def test_policy_accepts_an_ordinary_event() -> None:
    check(make_event(created_at=NOW, content="hi", tags=[["t", "x"]]))


@pytest.mark.parametrize("content", ["x" * 10, "é" * 10, "🎉" * 10, ""])
def test_content_at_max_length_in_characters(content: str) -> None:
    """NIP-11: max_content_length counts unicode characters, not bytes."""
    check(make_event(created_at=NOW, content=content))


def test_content_over_max_length() -> None:
    error = refused_by_policy(make_event(created_at=NOW, content="é" * 11))
    assert error.reason == "invalid: content is longer than 10 characters"


def test_tags_at_max_count() -> None:
    check(make_event(created_at=NOW, tags=[["t", str(n)] for n in range(3)]))


def test_tags_over_max_count() -> None:
    error = refused_by_policy(make_event(created_at=NOW, tags=[["t"]] * 4))
    assert error.reason == "invalid: event has more than 3 tags"


@pytest.mark.parametrize("created_at", [NOW - 100, NOW, NOW + 10])
def test_created_at_window_boundaries_accepted(created_at: int) -> None:
    check(make_event(created_at=created_at))


def test_created_at_too_old() -> None:
    error = refused_by_policy(make_event(created_at=NOW - 101))
    assert error.reason == "invalid: created_at is too far in the past"


@pytest.mark.parametrize("created_at", [NOW + 11, 2**63 - 1])
def test_created_at_too_new(created_at: int) -> None:
    error = refused_by_policy(make_event(created_at=created_at))
    assert error.reason == "invalid: created_at is too far in the future"


def test_created_at_zero_refused_by_default_limits() -> None:
    error = refused_by_policy(make_event(created_at=0), Limits())
    assert error.message == "created_at is too far in the past"


@pytest.mark.parametrize("expiration", [NOW, NOW - 1, 0])
def test_expired_event_refused(expiration: int) -> None:
    """NIP-40: an event is expired at its expiration timestamp."""
    error = refused_by_policy(make_event(created_at=NOW, tags=[["expiration", str(expiration)]]))
    assert error.reason == "invalid: event has expired"


@pytest.mark.parametrize("expiration", [str(NOW + 1), "soon", "", "-5", str(NOW - 1) + ".0"])
def test_unexpired_or_malformed_expiration_accepted(expiration: str) -> None:
    check(make_event(created_at=NOW, tags=[["expiration", expiration]]))


def test_checks_run_in_order() -> None:
    event = make_event(created_at=0, content="x" * 11, tags=[["t"]] * 4)
    assert refused_by_policy(event).message == "content is longer than 10 characters"
    no_content = make_event(created_at=0, tags=[["t"]] * 4)
    assert refused_by_policy(no_content).message == "event has more than 3 tags"


def test_check_write_with_custom_checks() -> None:
    calls: list[str] = []

    def first(event: Event, now: int) -> None:
        calls.append("first")

    def second(event: Event, now: int) -> None:
        calls.append("second")
        raise Invalid("second says no")

    def third(event: Event, now: int) -> None:
        calls.append("third")

    with pytest.raises(Invalid, match="second says no"):
        check_write([first, second, third], make_event(), NOW)
    assert calls == ["first", "second"]
    check_write([], make_event(), NOW)


# --- NIP-11 information document -------------------------------------------------------


def test_information_document_with_every_field() -> None:
    info = RelayInfo(
        name="test relay",
        description="for tests",
        pubkey=PUBKEYS[0],
        contact="mailto:ops@example.com",
        icon="https://example.com/icon.png",
    )
    limits = Limits(max_message_length=1000, max_subscriptions=3, max_limit=50)
    doc = information_document(info, limits)
    assert doc == {
        "name": "test relay",
        "description": "for tests",
        "pubkey": PUBKEYS[0],
        "contact": "mailto:ops@example.com",
        "icon": "https://example.com/icon.png",
        "supported_nips": [1, 9, 11, 40],
        "software": "https://pypi.org/project/pyrelay-nostr/",
        "version": relay.__version__,
        "limitation": limits.advertised(),
    }
    assert doc["limitation"]["max_message_length"] == 1000
    assert doc["limitation"]["max_subscriptions"] == 3
    assert doc["limitation"]["max_limit"] == 50


def test_information_document_omits_empty_optional_fields() -> None:
    """NIP-11: any field may be omitted; an empty name or contact says nothing."""
    doc = information_document(RelayInfo(name="only a name"), Limits())
    assert set(doc) == {"name", "supported_nips", "software", "version", "limitation"}
    assert set(information_document(RelayInfo(), Limits())) == {
        "supported_nips",
        "software",
        "version",
        "limitation",
    }


def test_information_document_types() -> None:
    doc = information_document(RelayInfo(), Limits())
    assert all(type(nip) is int for nip in doc["supported_nips"])
    assert 1 in doc["supported_nips"]
    assert 11 in doc["supported_nips"]
    assert isinstance(doc["version"], str)
    assert doc["software"].startswith("https://")
    assert doc["limitation"]["auth_required"] is False
    assert doc["limitation"]["payment_required"] is False


def test_information_document_is_json() -> None:
    doc = information_document(RelayInfo(name="é ✓", description='a "b"'), Limits())
    assert json.loads(json.dumps(doc)) == doc


def test_information_document_is_fresh_each_time() -> None:
    first = information_document(RelayInfo(), Limits())
    first["supported_nips"].append(99)
    first["limitation"]["max_limit"] = -1
    second = information_document(RelayInfo(), Limits())
    assert 99 not in second["supported_nips"]
    assert second["limitation"]["max_limit"] == Limits().max_limit
