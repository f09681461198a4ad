"""Client frames -> typed messages; the relay's replies -> frame bytes."""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from typing import Any, Literal, overload

from relay.core import canonical
from relay.core.errors import ClientError, MessageError, NegRefused, ReqRefused
from relay.core.event import Event, parse_event
from relay.core.filters import Filter, parse_filter


@dataclass(frozen=True, slots=True)
class EventMessage:
    event: Event


@dataclass(frozen=True, slots=True)
class ReqMessage:
    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class CloseMessage:
    sub_id: str


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """NIP-42 `["AUTH", event]`: the client proves it holds a key."""

    event: Event


@dataclass(frozen=True, slots=True)
class CountMessage:
    """NIP-45 `["COUNT", sub_id, filter...]`: how many events match, not the events."""

    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class NegOpenMessage:
    """NIP-77 `["NEG-OPEN", sub_id, filter, hex]`: start reconciling the filter's events."""

    sub_id: str
    filter: Filter
    # The client's first negentropy message, hex-decoded (its binary form is not checked).
    message: bytes


@dataclass(frozen=True, slots=True)
class NegMsgMessage:
    """NIP-77 `["NEG-MSG", sub_id, hex]`: the client's next negentropy message."""

    sub_id: str
    message: bytes


@dataclass(frozen=True, slots=True)
class NegCloseMessage:
    """NIP-77 `["NEG-CLOSE", sub_id]`: the client is done with this negentropy session."""

    sub_id: str


NegMessage = NegOpenMessage | NegMsgMessage | NegCloseMessage
ClientMessage = EventMessage | ReqMessage | CloseMessage | AuthMessage | CountMessage
NEG_VERBS = frozenset({"NEG-OPEN", "NEG-MSG", "NEG-CLOSE"})
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})+")

# Verbs of NIPs this relay does not implement: refused with CLOSED so clients stop waiting.
SUBSCRIPTION_VERBS_UNSUPPORTED: frozenset[str] = frozenset()


@overload
def parse_message(frame: bytes | str, *, negentropy: Literal[False] = False) -> ClientMessage: ...


@overload
def parse_message(frame: bytes | str, *, negentropy: bool) -> ClientMessage | NegMessage: ...


def parse_message(frame: bytes | str, *, negentropy: bool = False) -> ClientMessage | NegMessage:
    """Parse one client frame; raises MessageError naming whom to answer.

    NIP-77 verbs are parsed only for a connection that serves them (`negentropy`);
    otherwise they are unknown message types, as to a relay that never heard of them.
    """
    try:
        data = canonical.loads(frame)
    except canonical.JSONDecodeError:
        raise MessageError("message is not valid JSON") from None
    if type(data) is not list or not data:
        raise MessageError("message must be a non-empty JSON array")
    verb = data[0]
    if verb == "EVENT":
        return _parse_event(data)
    if verb == "REQ":
        return _parse_req(data)
    if verb == "AUTH":
        return AuthMessage(_parse_event(data, "AUTH").event)
    if verb == "COUNT":
        req = _parse_req(data, "COUNT")
        return CountMessage(req.sub_id, req.filters)
    if verb == "CLOSE":
        if len(data) != 2 or type(data[1]) is not str:
            raise MessageError("CLOSE takes one subscription id")
        return CloseMessage(data[1])
    if negentropy and type(verb) is str and verb in NEG_VERBS:
        return parse_neg(data)
    if type(verb) is str and verb in SUBSCRIPTION_VERBS_UNSUPPORTED:
        sub_id = data[1] if len(data) > 1 and type(data[1]) is str else None
        raise MessageError(f"{verb} is not supported", prefix="unsupported", sub_id=sub_id)
    # reprlib stops at a few levels: str() of a deeply nested list would hit the recursion limit.
    shown = reprlib.repr(verb) if isinstance(verb, (list, dict)) else str(verb)
    raise MessageError(f"unknown message type {shown[:32]!r}")


def _parse_event(data: list[Any], verb: str = "EVENT") -> EventMessage:
    claimed_id = _claimed_event_id(data)
    if len(data) != 2:
        raise MessageError(f"{verb} takes one event", event_id=claimed_id)
    try:
        return EventMessage(parse_event(data[1]))
    except ClientError as exc:
        raise MessageError.wrap(exc, event_id=claimed_id) from None


def _claimed_event_id(data: list[Any]) -> str | None:
    """The id a bad EVENT claims, if it is a plausible one to correlate an OK with."""
    if len(data) >= 2 and type(data[1]) is dict:
        claimed = data[1].get("id")
        if type(claimed) is str and 0 < len(claimed) <= 64:
            return claimed
    return None


def _parse_req(data: list[Any], verb: str = "REQ") -> ReqMessage:
    if len(data) < 2 or type(data[1]) is not str or not data[1]:
        raise MessageError(f"{verb} needs a non-empty subscription id")
    sub_id = data[1]
    if len(data) < 3:
        raise ReqRefused(f"{verb} needs at least one filter", sub_id=sub_id)
    try:
        filters = tuple(parse_filter(obj) for obj in data[2:])
    except ClientError as exc:
        raise ReqRefused.wrap(exc, sub_id=sub_id) from None
    return ReqMessage(sub_id, filters)


def parse_neg(data: list[Any]) -> NegMessage:
    """A NEG-OPEN, NEG-MSG or NEG-CLOSE array; a refusal with a readable id is a NEG-ERR."""
    verb = data[0]
    if len(data) < 2 or type(data[1]) is not str or not data[1]:
        raise MessageError(f"{verb} needs a non-empty subscription id")
    sub_id = data[1]
    if verb == "NEG-CLOSE":
        if len(data) != 2:
            raise NegRefused("NEG-CLOSE takes one subscription id", sub_id=sub_id)
        return NegCloseMessage(sub_id)
    if verb == "NEG-MSG":
        if len(data) != 3:
            raise NegRefused("NEG-MSG takes a subscription id and a message", sub_id=sub_id)
        return NegMsgMessage(sub_id, _neg_payload(data[2], sub_id))
    if len(data) != 4:
        raise NegRefused(
            "NEG-OPEN takes a subscription id, one filter and a message", sub_id=sub_id
        )
    try:
        neg_filter = parse_filter(data[2])
    except ClientError as exc:
        raise NegRefused.wrap(exc, sub_id=sub_id) from None
    return NegOpenMessage(sub_id, neg_filter, _neg_payload(data[3], sub_id))


def _neg_payload(value: Any, sub_id: str) -> bytes:
    if type(value) is not str or not _LOWER_HEX.fullmatch(value):
        raise NegRefused("a negentropy message is non-empty lowercase hex", sub_id=sub_id)
    return bytes.fromhex(value)


def ok(event_id: str, accepted: bool, reason: str = "") -> bytes:
    return canonical.dumps(["OK", event_id, accepted, reason])


def eose(sub_id: str) -> bytes:
    return canonical.dumps(["EOSE", sub_id])


def closed(sub_id: str, reason: str) -> bytes:
    return canonical.dumps(["CLOSED", sub_id, reason])


def auth_challenge(challenge: str) -> bytes:
    return canonical.dumps(["AUTH", challenge])


def count(sub_id: str, n: int) -> bytes:
    return canonical.dumps(["COUNT", sub_id, {"count": n}])


def neg_msg(sub_id: str, message: bytes) -> bytes:
    """NIP-77 `["NEG-MSG", sub_id, hex]` carrying the relay's negentropy answer."""
    return canonical.dumps(["NEG-MSG", sub_id, message.hex()])


def neg_err(sub_id: str, reason: str) -> bytes:
    """NIP-77 `["NEG-ERR", sub_id, "prefix: ..."]`: the negentropy session is closed."""
    return canonical.dumps(["NEG-ERR", sub_id, reason])


def notice(text: str) -> bytes:
    return canonical.dumps(["NOTICE", text])


def event_frame(sub_id_json: bytes, raw_event: bytes) -> bytes:
    """`["EVENT",sub_id,event]` spliced from the stored event JSON, not re-encoded."""
    return b'["EVENT",' + sub_id_json + b"," + raw_event + b"]"


def event_frames(sub_id_json: bytes, raw_events: list[bytes]) -> list[bytes]:
    """`event_frame` for each of a query's results."""
    head = b'["EVENT",' + sub_id_json + b","
    return [head + raw + b"]" for raw in raw_events]


def encode_sub_id(sub_id: str) -> bytes:
    return canonical.dumps(sub_id)


def refusal(error: ClientError) -> bytes:
    """The protocol's answer to a refused frame, at the narrowest scope that can be named."""
    if isinstance(error, MessageError):
        if error.event_id is not None:
            return ok(error.event_id, False, error.reason)
        if error.sub_id is not None and isinstance(error, NegRefused):
            return neg_err(error.sub_id, error.reason)
        if error.sub_id is not None:
            return closed(error.sub_id, error.reason)
    return notice(error.reason)
