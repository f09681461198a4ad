"""Client frames -> typed messages, and the relay's reply frames (NIP-01), without I/O."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from coincurve import PrivateKey

from relay.core.errors import (
    Blocked,
    ClientError,
    Duplicate,
    Invalid,
    MessageError,
    RateLimited,
    Restricted,
    Unsupported,
)
from relay.core.event import parse_event
from relay.core.filters import Filter, parse_filter
from relay.core.messages import (
    AuthMessage,
    CloseMessage,
    CountMessage,
    EventMessage,
    ReqMessage,
    auth_challenge,
    closed,
    count,
    encode_sub_id,
    eose,
    event_frame,
    notice,
    ok,
    parse_message,
    refusal,
)
from tests.nostr import Keys

ALICE = Keys(PrivateKey(bytes.fromhex("01" * 32)))
HEX = "ab" * 32


def signed(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("created_at", 1_700_000_000)
    return ALICE.sign(**kwargs)


def frame(message: Any) -> bytes:
    return orjson.dumps(message)


def refused(raw: bytes | str) -> MessageError:
    with pytest.raises(MessageError) as info:
        parse_message(raw)
    return info.value


def assert_notice(error: MessageError, prefix: str = "invalid") -> None:
    assert error.prefix == prefix
    assert error.event_id is None
    assert error.sub_id is None
    assert error.reason.startswith(f"{prefix}: ")


# --- valid messages -------------------------------------------------------------------


def test_event_message() -> None:
    obj = signed(kind=7, content="+", tags=[["e", HEX]])
    message = parse_message(frame(["EVENT", obj]))
    assert isinstance(message, EventMessage)
    assert message.event == parse_event(obj)
    assert message.event.raw == orjson.dumps(obj)


def test_str_and_bytes_frames_parse_alike() -> None:
    raw = frame(["EVENT", signed(content="héllo ✓")])
    assert parse_message(raw) == parse_message(raw.decode())


def test_event_signature_is_not_checked_here() -> None:
    """parse_message checks the form and the id; the signature is verified elsewhere."""
    obj = {**signed(), "sig": "00" * 64}
    message = parse_message(frame(["EVENT", obj]))
    assert isinstance(message, EventMessage)
    assert message.event.sig == "00" * 64


def test_req_message_with_one_filter() -> None:
    message = parse_message(frame(["REQ", "sub1", {"kinds": [1], "limit": 5}]))
    assert message == ReqMessage("sub1", (Filter(kinds=frozenset([1]), limit=5),))


def test_req_message_keeps_every_filter_in_order() -> None:
    filters: list[dict[str, Any]] = [{"authors": [HEX]}, {}, {"#t": ["x"], "since": 3}]
    message = parse_message(frame(["REQ", "s", *filters]))
    assert isinstance(message, ReqMessage)
    assert message.sub_id == "s"
    assert message.filters == tuple(parse_filter(f) for f in filters)


@pytest.mark.parametrize("sub_id", ["x", "a" * 64, "a" * 65, 'q"\\ é ✓ 🎉', " "])
def test_req_sub_id_is_kept_verbatim(sub_id: str) -> None:
    """Length against max_subid_length is the Session's check, not the parser's."""
    message = parse_message(frame(["REQ", sub_id, {}]))
    assert isinstance(message, ReqMessage)
    assert message.sub_id == sub_id


def test_req_unknown_filter_keys_are_ignored() -> None:
    message = parse_message(frame(["REQ", "s", {"kinds": [1], "future_field": True}]))
    assert message == ReqMessage("s", (Filter(kinds=frozenset([1])),))


def test_close_message() -> None:
    assert parse_message(frame(["CLOSE", "sub1"])) == CloseMessage("sub1")


def test_whitespace_between_tokens_is_allowed() -> None:
    assert parse_message(b' [ "CLOSE" ,\n\t"s" ] ') == CloseMessage("s")


# --- malformed frames: nothing can be correlated -> NOTICE -----------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[", b'["CLOSE","s"', b"[NaN]", b'["EVENT",\xff]', b'["CLOSE","s"] x'],
)
def test_not_json(raw: bytes) -> None:
    error = refused(raw)
    assert_notice(error)
    assert error.message == "message is not valid JSON"


@pytest.mark.parametrize(
    "raw", [b"{}", b'{"0":"EVENT"}', b'"EVENT"', b"1", b"null", b"true", b"[]"]
)
def test_not_a_non_empty_array(raw: bytes) -> None:
    error = refused(raw)
    assert_notice(error)
    assert error.message == "message must be a non-empty JSON array"


@pytest.mark.parametrize(
    "verb", [1, None, True, ["EVENT"], {"EVENT": 1}, "event", "Req", "auth", "EVENT ", ""]
)
def test_unknown_or_non_string_verb(verb: Any) -> None:
    error = refused(frame([verb, "s", {}]))
    assert_notice(error)
    assert error.message.startswith("unknown message type ")


def test_unknown_verb_is_cut_short_in_the_notice() -> None:
    error = refused(frame(["X" * 1000]))
    assert error.message == f"unknown message type {'X' * 32!r}"


# --- EVENT ----------------------------------------------------------------------------


def test_event_without_event() -> None:
    error = refused(frame(["EVENT"]))
    assert_notice(error)
    assert error.message == "EVENT takes one event"


def test_event_with_extra_element_is_refused_with_its_id() -> None:
    obj = signed()
    error = refused(frame(["EVENT", obj, {}]))
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", obj["id"], None)
    assert error.message == "EVENT takes one event"


def test_event_with_subscription_id_first_is_refused() -> None:
    """The relay-to-client form ["EVENT", sub, event] is not a valid client message."""
    obj = signed()
    error = refused(frame(["EVENT", "sub", obj]))
    assert_notice(error)


@pytest.mark.parametrize("value", [None, "event", 1, [], [["id", HEX]]])
def test_event_not_an_object(value: Any) -> None:
    error = refused(frame(["EVENT", value]))
    assert_notice(error)
    assert error.message == "event must be an object"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sig": "zz"}, "sig must be 128 lowercase hex characters"),
        ({"kind": -1}, "kind out of range"),
        ({"content": "tampered"}, "event id does not match its content"),
        ({"tags": [["e", 1]]}, "each tag must be an array of strings"),
        ({"pubkey": None}, "pubkey must be a string"),
    ],
)
def test_invalid_event_is_refused_with_its_id(change: dict[str, Any], message: str) -> None:
    obj = {**signed(), **change}
    error = refused(frame(["EVENT", obj]))
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", obj["id"], None)
    assert error.message == message


@pytest.mark.parametrize("claimed", ["abc", "A" * 64, "x", "é"])
def test_any_short_claimed_id_is_used_for_the_ok(claimed: str) -> None:
    """A malformed but plausible id is still the best thing to correlate the OK with."""
    error = refused(frame(["EVENT", {**signed(), "id": claimed}]))
    assert error.event_id == claimed
    assert error.prefix == "invalid"


@pytest.mark.parametrize("claimed", ["", "a" * 65, 1, None, ["a"]])
def test_unusable_claimed_id_falls_back_to_notice(claimed: Any) -> None:
    error = refused(frame(["EVENT", {**signed(), "id": claimed}]))
    assert_notice(error)


def test_missing_id_falls_back_to_notice() -> None:
    obj = signed()
    del obj["id"]
    error = refused(frame(["EVENT", obj]))
    assert_notice(error)
    assert error.message == "id must be a string"


# --- REQ ------------------------------------------------------------------------------


def test_req_without_subscription_id() -> None:
    error = refused(frame(["REQ"]))
    assert_notice(error)
    assert error.message == "REQ needs a non-empty subscription id"


@pytest.mark.parametrize("sub_id", [1, None, True, [], {}, ""])
def test_req_subscription_id_not_a_non_empty_string(sub_id: Any) -> None:
    """NIP-01: the subscription id is an arbitrary, non-empty string; none to CLOSE -> NOTICE."""
    error = refused(frame(["REQ", sub_id, {}]))
    assert_notice(error)
    assert error.message == "REQ needs a non-empty subscription id"


def test_req_without_filters_is_closed() -> None:
    """NIP-01 spells REQ as ["REQ", <subscription_id>, <filters1>, ...]: one at least."""
    error = refused(frame(["REQ", "sub1"]))
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", None, "sub1")
    assert error.message == "REQ needs at least one filter"


@pytest.mark.parametrize("bad", [None, 1, "x", [], [{}], True])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_req_filter_not_an_object_is_closed(bad: Any, position: int) -> None:
    filters: list[Any] = [{}, {}, {}]
    filters[position] = bad
    error = refused(frame(["REQ", "sub1", *filters]))
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", None, "sub1")
    assert error.message == "a filter must be an object"


def test_req_bad_filter_field_is_closed() -> None:
    error = refused(frame(["REQ", "s", {"ids": ["xyz"]}]))
    assert (error.prefix, error.sub_id) == ("invalid", "s")
    assert error.reason == "invalid: ids must hold 64 lowercase hex characters"


def test_req_with_a_bad_search_is_closed() -> None:
    error = refused(frame(["REQ", "s", {}, {"search": 7}]))
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", None, "s")


# --- CLOSE ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message", [["CLOSE"], ["CLOSE", "a", "b"], ["CLOSE", 1], ["CLOSE", None], ["CLOSE", ["a"]]]
)
def test_close_arity_and_type(message: list[Any]) -> None:
    error = refused(frame(message))
    assert_notice(error)
    assert error.message == "CLOSE takes one subscription id"


# --- NIP-45 COUNT and NIP-42 AUTH ------------------------------------------------------


def test_count_parses_like_a_req() -> None:
    message = parse_message(frame(["COUNT", "c1", {"kinds": [1]}, {"authors": [HEX]}]))
    assert message == CountMessage(
        "c1", (Filter(kinds=frozenset({1})), Filter(authors=frozenset({HEX})))
    )


def test_bad_count_filter_is_closed() -> None:
    error = refused(frame(["COUNT", "c1", {"kinds": "x"}]))
    assert json.loads(refusal(error)) == ["CLOSED", "c1", "invalid: kinds must be an array"]


@pytest.mark.parametrize("message", [["COUNT"], ["COUNT", 1, {}], ["COUNT", None]])
def test_count_without_readable_sub_id_is_a_notice(message: list[Any]) -> None:
    error = refused(frame(message))
    assert_notice(error)


def test_auth_carries_an_event() -> None:
    event = signed(kind=22242)
    message = parse_message(frame(["AUTH", event]))
    assert isinstance(message, AuthMessage)
    assert message.event.id == event["id"]


def test_bad_auth_event_is_answered_with_ok_false() -> None:
    event = {**signed(kind=22242), "content": "tampered"}
    error = refused(frame(["AUTH", event]))
    assert json.loads(refusal(error)) == [
        "OK",
        event["id"],
        False,
        "invalid: event id does not match its content",
    ]


def test_auth_challenge_and_count_frames() -> None:
    assert json.loads(auth_challenge("abc")) == ["AUTH", "abc"]
    assert json.loads(count("c", 3)) == ["COUNT", "c", {"count": 3}]


# --- reply encoders -------------------------------------------------------------------


def test_ok_accepted() -> None:
    reply = ok(HEX, True)
    assert reply == b'["OK","' + HEX.encode() + b'",true,""]'
    assert json.loads(reply) == ["OK", HEX, True, ""]


def test_ok_refused_with_reason() -> None:
    reply = ok(HEX, False, "blocked: no")
    assert reply == b'["OK","' + HEX.encode() + b'",false,"blocked: no"]'
    assert json.loads(reply) == ["OK", HEX, False, "blocked: no"]


def test_eose() -> None:
    assert eose("sub1") == b'["EOSE","sub1"]'


def test_closed() -> None:
    reply = closed("sub1", "error: shutting down idle subscription")
    assert reply == b'["CLOSED","sub1","error: shutting down idle subscription"]'
    assert json.loads(reply) == ["CLOSED", "sub1", "error: shutting down idle subscription"]


def test_notice() -> None:
    assert notice("invalid: x") == b'["NOTICE","invalid: x"]'


@pytest.mark.parametrize(
    "text", ['q"uote', "back\\slash", "new\nline", "nul\x00", "é ✓ 🎉", "\u2028"]
)
def test_encoders_escape_text(text: str) -> None:
    assert json.loads(ok(HEX, False, text)) == ["OK", HEX, False, text]
    assert json.loads(eose(text)) == ["EOSE", text]
    assert json.loads(closed(text, text)) == ["CLOSED", text, text]
    assert json.loads(notice(text)) == ["NOTICE", text]


def test_replies_are_compact_utf8() -> None:
    reply = notice("é ✓")
    assert reply == '["NOTICE","é ✓"]'.encode()
    assert b" " not in closed("a", "b")


SUB_IDS = [
    "sub1",
    'a"b',
    "a\\b",
    '\\"',
    "é",
    "✓🎉",
    "tab\there",
    "ctl\x01\x1f",
    "\u2028\u2029",
    "</script>",
]


@pytest.mark.parametrize("sub_id", SUB_IDS)
def test_encode_sub_id_is_a_json_string(sub_id: str) -> None:
    encoded = encode_sub_id(sub_id)
    assert encoded.startswith(b'"')
    assert encoded.endswith(b'"')
    assert json.loads(encoded) == sub_id


@pytest.mark.parametrize("sub_id", SUB_IDS)
def test_event_frame_round_trips(sub_id: str) -> None:
    obj = signed(content='say "hi" \\ é\n', tags=[["t", "✓"]])
    event = parse_event(obj)
    reply = event_frame(encode_sub_id(sub_id), event.raw)
    assert json.loads(reply) == ["EVENT", sub_id, obj]
    assert reply == orjson.dumps(["EVENT", sub_id, obj])


def test_event_frame_splices_the_raw_event_verbatim() -> None:
    event = parse_event(signed())
    reply = event_frame(b'"s"', event.raw)
    assert reply == b'["EVENT","s",' + event.raw + b"]"


# --- refusal(): the narrowest scope that can be named ---------------------------------


def test_refusal_with_event_id_is_ok_false() -> None:
    error = MessageError("bad", event_id=HEX)
    assert refusal(error) == ok(HEX, False, "invalid: bad")
    assert json.loads(refusal(error)) == ["OK", HEX, False, "invalid: bad"]


def test_refusal_with_sub_id_is_closed() -> None:
    error = MessageError("too many", prefix="restricted", sub_id="s1")
    assert json.loads(refusal(error)) == ["CLOSED", "s1", "restricted: too many"]


def test_refusal_with_neither_is_notice() -> None:
    assert json.loads(refusal(MessageError("huh"))) == ["NOTICE", "invalid: huh"]


def test_refusal_prefers_the_event_id() -> None:
    error = MessageError("both", event_id=HEX, sub_id="s1")
    assert json.loads(refusal(error))[0] == "OK"


def test_refusal_keeps_an_empty_sub_id() -> None:
    """An empty sub id is still a correlation: the parser never makes one, refusal() keeps it."""
    assert json.loads(refusal(MessageError("x", sub_id=""))) == ["CLOSED", "", "invalid: x"]


@pytest.mark.parametrize(
    ("error", "prefix"),
    [
        (ClientError("x"), "error"),
        (Invalid("x"), "invalid"),
        (Blocked("x"), "blocked"),
        (Duplicate("x"), "duplicate"),
        (Restricted("x"), "restricted"),
        (RateLimited("x"), "rate-limited"),
        (Unsupported("x"), "unsupported"),
    ],
)
def test_refusal_of_a_plain_client_error_is_a_notice(error: ClientError, prefix: str) -> None:
    assert json.loads(refusal(error)) == ["NOTICE", f"{prefix}: x"]


def test_wrap_keeps_message_and_prefix() -> None:
    error = MessageError.wrap(Unsupported("no search"), sub_id="s")
    assert (error.prefix, error.message, error.sub_id, error.event_id) == (
        "unsupported",
        "no search",
        "s",
        None,
    )
    assert error.reason == "unsupported: no search"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (["EVENT"], ["NOTICE", "invalid: EVENT takes one event"]),
        (["REQ", "s"], ["CLOSED", "s", "invalid: REQ needs at least one filter"]),
        (["REQ", "s", 1], ["CLOSED", "s", "invalid: a filter must be an object"]),
        (["CLOSE", 1], ["NOTICE", "invalid: CLOSE takes one subscription id"]),
        (["COUNT", "c"], ["CLOSED", "c", "invalid: COUNT needs at least one filter"]),
        (["PING"], ["NOTICE", "invalid: unknown message type 'PING'"]),
    ],
)
def test_parse_errors_to_reply_frames(message: list[Any], expected: list[Any]) -> None:
    assert json.loads(refusal(refused(frame(message)))) == expected


def test_invalid_event_to_ok_frame() -> None:
    obj = {**signed(), "content": "tampered"}
    reply = json.loads(refusal(refused(frame(["EVENT", obj]))))
    assert reply == ["OK", obj["id"], False, "invalid: event id does not match its content"]
