"""NIP-77 frames (relay/core/messages.py): NEG-OPEN, NEG-MSG and NEG-CLOSE parsed, NEG-MSG
and NEG-ERR built, and each refusal answered at the narrowest scope (NEG-ERR with the
subscription id when it can be read, else NOTICE). Without I/O."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.errors import MessageError, NegRefused
from relay.core.filters import Filter
from relay.core.messages import (
    NegCloseMessage,
    NegMsgMessage,
    NegOpenMessage,
    neg_err,
    neg_msg,
    parse_message,
    refusal,
)

HEX = "ab" * 32
NOT_HEX = "invalid: a negentropy message is non-empty lowercase hex"
OPEN_SHAPE = "invalid: NEG-OPEN takes a subscription id, one filter and a message"


def parse(message: Any) -> Any:
    return parse_message(orjson.dumps(message), negentropy=True)


def answer_to(message: Any) -> list[Any]:
    with pytest.raises(MessageError) as info:
        parse(message)
    reply: list[Any] = json.loads(refusal(info.value))
    return reply


def test_neg_open() -> None:
    message = parse(["NEG-OPEN", "n1", {"kinds": [1], "authors": [HEX]}, "6100"])
    assert message == NegOpenMessage(
        "n1", Filter(kinds=frozenset([1]), authors=frozenset([HEX])), b"\x61\x00"
    )


def test_neg_msg_and_close() -> None:
    assert parse(["NEG-MSG", "n1", "61"]) == NegMsgMessage("n1", b"\x61")
    assert parse(["NEG-CLOSE", "n1"]) == NegCloseMessage("n1")


@pytest.mark.parametrize("verb", ["NEG-OPEN", "NEG-MSG", "NEG-CLOSE"])
def test_without_negentropy_the_verbs_stay_unknown(verb: str) -> None:
    """A connection that does not serve NIP-77 answers them as before: a NOTICE."""
    with pytest.raises(MessageError) as info:
        parse_message(orjson.dumps([verb, "n1", {}, "61"]))
    assert json.loads(refusal(info.value)) == ["NOTICE", f"invalid: unknown message type '{verb}'"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (["NEG-OPEN", "n", {}, "6"], NOT_HEX),
        (["NEG-OPEN", "n", {}, ""], NOT_HEX),
        (["NEG-OPEN", "n", {}, "6A"], NOT_HEX),
        (["NEG-OPEN", "n", {}, "61 00"], NOT_HEX),
        (["NEG-OPEN", "n", {}, 61], NOT_HEX),
        (["NEG-OPEN", "n", {"kinds": "1"}, "61"], "invalid: kinds must be an array"),
        (["NEG-OPEN", "n", [], "61"], "invalid: a filter must be an object"),
        # The older strfry form with an idSize before the message.
        (["NEG-OPEN", "n", {}, 32, "61"], OPEN_SHAPE),
        (["NEG-OPEN", "n", {}], OPEN_SHAPE),
        (["NEG-MSG", "n"], "invalid: NEG-MSG takes a subscription id and a message"),
        (["NEG-MSG", "n", "xyz1"], NOT_HEX),
        (["NEG-CLOSE", "n", "extra"], "invalid: NEG-CLOSE takes one subscription id"),
    ],
)  # fmt: skip
def test_refusals_with_a_subscription_id_are_neg_err(message: list[Any], reason: str) -> None:
    assert answer_to(message) == ["NEG-ERR", "n", reason]


@pytest.mark.parametrize(
    "message",
    [["NEG-OPEN"], ["NEG-OPEN", "", {}, "61"], ["NEG-MSG", 1, "61"], ["NEG-CLOSE", None]],
)
def test_refusals_without_a_subscription_id_are_notices(message: list[Any]) -> None:
    reply = answer_to(message)
    assert reply[0] == "NOTICE"
    assert reply[1] == f"invalid: {message[0]} needs a non-empty subscription id"


def test_neg_refused_is_a_message_error_with_its_sub_id() -> None:
    error = NegRefused.wrap(MessageError("too big", prefix="blocked"), sub_id="s")
    assert json.loads(refusal(error)) == ["NEG-ERR", "s", "blocked: too big"]


def test_reply_frames() -> None:
    assert json.loads(neg_msg("n1", b"\x61\x00\xff")) == ["NEG-MSG", "n1", "6100ff"]
    assert json.loads(neg_err("n1", "closed: idle")) == ["NEG-ERR", "n1", "closed: idle"]
    assert json.loads(neg_msg('q"\\', b"\x61")) == ["NEG-MSG", 'q"\\', "61"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=8)
    | st.just("6100"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["NEG-OPEN", "NEG-MSG", "NEG-CLOSE"]), st.lists(json_values, max_size=4))
def test_any_neg_frame_is_parsed_or_refused_as_a_client_error(verb: str, rest: list[Any]) -> None:
    try:
        parse([verb, *rest])
    except MessageError as error:
        reply = json.loads(refusal(error))
        assert reply[0] in ("NEG-ERR", "NOTICE")
        assert reply[-1].startswith("invalid: ")
