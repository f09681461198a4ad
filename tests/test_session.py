"""The connection's state machine (core/session.py), write policy and NIP-11, without I/O."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

import relay
from relay.core.auth import DM_KINDS, AuthPolicy
from relay.core.errors import ClientError, Invalid, MessageError
from relay.core.event import Event, event_from_raw
from relay.core.filters import Filter, parse_filter
from relay.core.limits import Limits
from relay.core.messages import CloseMessage, ReqMessage, refusal
from relay.core.negentropy import NegentropyServer, Storage
from relay.core.nip11 import RelayInfo, information_document
from relay.core.policy import check_write, default_write_checks
from relay.core.ratelimit import RateLimiter
from relay.core.session import (
    COUNT_DISABLED,
    EVENT_RATE,
    HELD_OVERFLOW,
    NEG_BUSY,
    NEG_IDLE,
    NEG_PENDING,
    Action,
    Authenticate,
    CancelQuery,
    Ingest,
    OpenNegentropy,
    QueryFailure,
    Reconcile,
    Send,
    Session,
    SessionPolicy,
    SharedBudget,
    StartCount,
    StartQuery,
    Unwatch,
    Watch,
    read_frame,
)
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


# --- the connection's state machine: frames and results in, actions out ------------------

WALL = float(NOW)


def session_with(**limits: Any) -> Session:
    return Session(SessionPolicy(limits=Limits(**limits)))


def receive(session: Session, message: list[Any]) -> list[Action]:
    return session.receive(json.dumps(message, ensure_ascii=False), WALL)


def replies(actions: list[Action]) -> list[list[Any]]:
    """The frames the actions send, decoded, in order."""
    return [json.loads(frame) for a in actions if isinstance(a, Send) for frame in a.frames]


def only_reply(actions: list[Action]) -> list[Any]:
    (reply,) = replies(actions)
    return reply


def query_of(actions: list[Action]) -> StartQuery:
    (start,) = [a for a in actions if isinstance(a, StartQuery)]
    return start


def stored(n: int, kind: int = 1, pubkey: str = PUBKEYS[0]) -> list[bytes]:
    """Stored event JSON, newest first, as the store hands it over."""
    return [
        orjson.dumps(
            {
                "id": f"{i:016x}" * 4,
                "pubkey": pubkey,
                "created_at": 100 - i,
                "kind": kind,
                "tags": [],
                "content": "",
                "sig": SIG,
            }
        )
        for i in range(1, n + 1)
    ]


def live_event(i: int, kind: int = 1, tags: list[list[str]] | None = None) -> Event:
    raw = orjson.dumps(
        {
            "id": f"{i:016x}" * 4,
            "pubkey": PUBKEYS[0],
            "created_at": 200,
            "kind": kind,
            "tags": tags or [],
            "content": "",
            "sig": SIG,
        }
    )
    return event_from_raw(raw)


def open_sub(session: Session, sub_id: str, *filters: dict[str, Any]) -> StartQuery:
    return query_of(receive(session, ["REQ", sub_id, *(filters or ({},))]))


# --- read_frame: the size limit is in bytes -------------------------------------------


def test_read_frame_parses_within_the_limit() -> None:
    assert read_frame('["CLOSE","s"]', Limits()) == CloseMessage("s")
    assert read_frame(b'["CLOSE","s"]', Limits()) == CloseMessage("s")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_read_frame_exactly_at_the_limit(as_bytes: bool) -> None:
    text = '["CLOSE","s"]'
    padded = text + " " * (40 - len(text))
    frame = padded.encode() if as_bytes else padded
    assert read_frame(frame, Limits(max_message_length=40)) == CloseMessage("s")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_read_frame_one_byte_over_the_limit(as_bytes: bool) -> None:
    text = '["CLOSE","s"]'
    padded = text + " " * (41 - len(text))
    with pytest.raises(MessageError) as info:
        read_frame(padded.encode() if as_bytes else padded, Limits(max_message_length=40))
    error = info.value
    assert (error.prefix, error.event_id, error.sub_id) == ("invalid", None, None)
    assert json.loads(refusal(error)) == ["NOTICE", "invalid: message is longer than 40 bytes"]


def test_read_frame_size_is_checked_before_parsing() -> None:
    """An oversized EVENT is refused for its size, not parsed (and not correlated)."""
    with pytest.raises(MessageError, match="longer than 20 bytes") as info:
        read_frame(b'["EVENT",{"id":"' + b"a" * 64 + b'"}]', Limits(max_message_length=20))
    assert info.value.event_id is None


@pytest.mark.parametrize(
    ("frame", "fits"),
    [
        (close_frame("é" * 4), True),  # 16 characters, 20 bytes
        (close_frame("é" * 10), False),  # 22 characters, 32 bytes
        (close_frame("é" * 8).encode(), False),  # 28 bytes
        (close_frame("✓" * 8), False),  # 20 characters, 36 bytes
        (close_frame("🎉" * 8), False),  # 20 characters, 44 bytes
    ],
)
def test_read_frame_counts_utf8_bytes(frame: str | bytes, fits: bool) -> None:
    limits = Limits(max_message_length=20)
    if fits:
        assert isinstance(read_frame(frame, limits), CloseMessage)
    else:
        with pytest.raises(MessageError, match="longer than 20 bytes"):
            read_frame(frame, limits)


@pytest.mark.parametrize("frame", ['["CLOSE","' + "\ud800" * 30 + '"]', '["CLOSE","\ud800"]'])
def test_read_frame_lone_surrogate_is_a_message_error(frame: str) -> None:
    with pytest.raises(MessageError):
        read_frame(frame, Limits(max_message_length=20 if len(frame) > 20 else 100))


def test_a_frame_over_the_limit_gets_a_notice_and_the_session_goes_on() -> None:
    session = session_with(max_message_length=40)
    assert only_reply(receive(session, ["CLOSE", "x" * 50])) == [
        "NOTICE",
        "invalid: message is longer than 40 bytes",
    ]
    assert receive(session, ["CLOSE", "s"]) == []


def test_binary_frame_gets_a_notice() -> None:
    reply = only_reply(session_with().receive(b'["REQ","s",{}]', WALL))
    assert reply[0] == "NOTICE"
    assert reply[1].startswith("invalid: ")


def test_signed_event_is_handed_to_ingest() -> None:
    obj = Keys().sign(created_at=NOW)
    (action,) = receive(session_with(), ["EVENT", obj])
    assert isinstance(action, Ingest)
    assert action.event.to_dict() == obj
    assert only_reply(session_with().ingested(obj["id"], True, "")) == ["OK", obj["id"], True, ""]


def test_bad_event_gets_ok_false_with_its_id() -> None:
    obj = {**Keys().sign(created_at=NOW), "content": "changed"}
    assert only_reply(receive(session_with(), ["EVENT", obj]))[:3] == ["OK", obj["id"], False]


# --- REQ: watch first, then the query; limits and clamping --------------------------


def test_req_watches_then_queries_with_clamped_filters() -> None:
    session = session_with(max_limit=10, default_limit=4)
    actions = receive(session, ["REQ", "s", {"kinds": [1], "limit": 50}, {"authors": [PUBKEYS[0]]}])
    filters = (
        Filter(kinds=frozenset([1]), limit=10),
        Filter(authors=frozenset([PUBKEYS[0]]), limit=4),
    )
    assert actions == [Watch("s", filters), StartQuery(1, filters)]
    assert session.subscriptions["s"].filters == filters


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, 500), (0, 0), (1, 1), (499, 499), (5000, 5000), (5001, 5000), (2**63 - 1, 5000)],
)
def test_limit_clamping(limit: int | None, expected: int) -> None:
    session = session_with(max_limit=5000, default_limit=500)
    filter_obj: dict[str, Any] = {"kinds": [1]} if limit is None else {"kinds": [1], "limit": limit}
    receive(session, ["REQ", "s", filter_obj])
    assert session.subscriptions["s"].filters == (Filter(kinds=frozenset([1]), limit=expected),)


def test_clamping_keeps_every_condition() -> None:
    obj = {"ids": [IDS[0]], "authors": [PUBKEYS[1]], "kinds": [3], "#e": ["x"], "since": 1}
    session = session_with(max_limit=2)
    receive(session, ["REQ", "s", {**obj, "until": 9, "limit": 99}])
    assert session.subscriptions["s"].filters == (parse_filter({**obj, "until": 9, "limit": 2}),)


def test_limit_zero_sends_eose_at_once_and_goes_live() -> None:
    session = session_with()
    actions = receive(session, ["REQ", "s", {"kinds": [1], "limit": 0}])
    assert [type(a) for a in actions] == [Watch, Send]
    assert replies(actions) == [["EOSE", "s"]]
    frame = session.live("s", live_event(1), private=False)
    assert frame is not None
    assert json.loads(frame)[:2] == ["EVENT", "s"]


@pytest.mark.parametrize(
    ("limits", "message", "prefix", "text"),
    [
        (
            {"max_subid_length": 8},
            ["REQ", "x" * 9, {}],
            "invalid",
            "subscription id is longer than 8",
        ),
        (
            {"max_filters": 3},
            ["REQ", "s", {}, {}, {}, {}],
            "invalid",
            "a REQ may hold at most 3 filters",
        ),
        (
            {"max_filter_values": 2},
            ["REQ", "s", {"kinds": [1, 2, 3]}],
            "invalid",
            "kinds holds more than 2 values",
        ),
        ({}, ["REQ", "s", {"search": "x"}], "unsupported", "search is not enabled on this relay"),
    ],
)
def test_req_refusals_close_with_their_prefix(
    limits: dict[str, int], message: list[Any], prefix: str, text: str
) -> None:
    session = session_with(**limits)
    actions = receive(session, message)
    assert replies(actions) == [["CLOSED", message[1], f"{prefix}: {text}"]]
    assert not any(isinstance(a, (Watch, StartQuery)) for a in actions)
    assert session.subscriptions == {}


def test_subscription_ids_count_characters_and_are_exact() -> None:
    session = session_with()
    open_sub(session, "é" * 64)
    open_sub(session, "Sub")
    assert receive(session, ["CLOSE", "sub"]) == []
    assert set(session.subscriptions) == {"é" * 64, "Sub"}


def test_max_subscriptions_and_closing_frees_a_slot() -> None:
    session = session_with(max_subscriptions=2)
    open_sub(session, "a")
    open_sub(session, "b")
    assert only_reply(receive(session, ["REQ", "c", {}])) == [
        "CLOSED",
        "c",
        "restricted: at most 2 open subscriptions",
    ]
    receive(session, ["CLOSE", "a"])
    open_sub(session, "c")
    assert set(session.subscriptions) == {"b", "c"}


# --- ordering rules -------------------------------------------------------------------


def test_live_events_are_held_back_until_eose() -> None:
    session = session_with()
    query = open_sub(session, "s", {"kinds": [1]})
    pages = stored(3)
    early, late = live_event(900), live_event(901)
    assert session.live("s", early, private=False) is None
    assert replies(session.query_page(query.query_id, pages[:2])) == [
        ["EVENT", "s", json.loads(raw)] for raw in pages[:2]
    ]
    assert session.live("s", late, private=False) is None
    session.query_page(query.query_id, pages[2:])
    assert replies(session.query_done(query.query_id)) == [
        ["EOSE", "s"],
        ["EVENT", "s", early.to_dict()],
        ["EVENT", "s", late.to_dict()],
    ]
    after = session.live("s", live_event(902), private=False)
    assert after is not None
    assert json.loads(after)[2]["id"] == f"{902:016x}" * 4


def test_a_held_event_already_sent_as_stored_is_not_sent_again() -> None:
    """A page may see a commit before its broadcast reaches the session."""
    session = session_with()
    query = open_sub(session, "s", {"kinds": [1]})
    event = live_event(7)
    session.query_page(query.query_id, [event.raw])
    assert session.live("s", event, private=False) is None
    assert replies(session.query_done(query.query_id)) == [["EOSE", "s"]]


@pytest.mark.parametrize("marked_last", [False, True])
def test_held_events_sent_on_any_page_are_not_sent_again(marked_last: bool) -> None:
    """Events of every page, the last one included (keyed only at EOSE when the driver
    marks it last), are left out of the held-back ones; the others are sent after EOSE."""
    session = session_with()
    query = open_sub(session, "s", {"kinds": [1]})
    first, middle, last, fresh = live_event(1), live_event(2), live_event(3), live_event(4)
    for event in (first, fresh, middle, last):
        assert session.live("s", event, private=False) is None
    session.query_page(query.query_id, [first.raw])
    session.query_page(query.query_id, [middle.raw])
    session.query_page(query.query_id, [last.raw], marked_last)
    assert replies(session.query_done(query.query_id)) == [
        ["EOSE", "s"],
        ["EVENT", "s", fresh.to_dict()],
    ]


def test_pages_before_the_last_keep_only_their_keys() -> None:
    """Only the last page may wait to be keyed: an earlier page's raw JSON is not kept
    while the query waits for the client to read (memory a page per query)."""
    session = session_with()
    query = open_sub(session, "s", {"kinds": [1]})
    page = [live_event(1).raw]
    session.query_page(query.query_id, page)
    sub = session.subscriptions["s"]
    assert sub.unkeyed == []
    assert len(sub.sent_ids) == 1


def test_a_replaced_req_ends_the_old_query_and_its_pages_are_dropped() -> None:
    session = session_with()
    old = open_sub(session, "s", {"kinds": [1]})
    actions = receive(session, ["REQ", "s", {"kinds": [2]}])
    new = query_of(actions)
    assert actions[:2] == [Unwatch("s"), CancelQuery(old.query_id)]
    assert actions[2] == Watch("s", new.filters)
    assert session.query_page(old.query_id, stored(2)) == []
    assert session.query_done(old.query_id) == []
    assert replies(session.query_done(new.query_id)) == [["EOSE", "s"]]


def test_close_cancels_the_query_and_nothing_more_is_sent() -> None:
    session = session_with()
    query = open_sub(session, "s")
    assert receive(session, ["CLOSE", "s"]) == [Unwatch("s"), CancelQuery(query.query_id)]
    assert session.query_page(query.query_id, stored(1)) == []
    assert session.query_done(query.query_id) == []
    assert session.live("s", live_event(1), private=False) is None
    assert receive(session, ["CLOSE", "s"]) == []


def test_a_refused_replacement_ends_the_old_subscription() -> None:
    session = session_with(max_filters=2)
    old = open_sub(session, "s", {"kinds": [1]})
    actions = receive(session, ["REQ", "s", {}, {}, {}])
    assert actions[:2] == [Unwatch("s"), CancelQuery(old.query_id)]
    assert replies(actions)[0][:2] == ["CLOSED", "s"]
    assert session.subscriptions == {}


def test_the_req_result_cap_cancels_the_query_and_sends_eose() -> None:
    session = session_with(max_req_results=3)
    query = open_sub(session, "s")
    assert len(replies(session.query_page(query.query_id, stored(2)))) == 2
    actions = session.query_page(query.query_id, stored(5)[2:])
    assert CancelQuery(query.query_id) in actions
    assert [r[0] for r in replies(actions)] == ["EVENT", "EOSE"]
    assert session.queries == {}


def test_a_failed_query_closes_its_subscription() -> None:
    session = session_with()
    query = open_sub(session, "s")
    actions = session.query_failed(query.query_id, QueryFailure.TIMEOUT)
    assert Unwatch("s") in actions
    assert replies(actions) == [
        ["CLOSED", "s", "error: the query took too long, narrow the filter"]
    ]
    assert session.subscriptions == {}


def test_end_cancels_everything_and_returns_the_budgets() -> None:
    shared = SharedBudget(100)
    session = Session(SessionPolicy(), shared_entries=shared)
    a = open_sub(session, "a", {"authors": PUBKEYS})
    b = open_sub(session, "b", {"kinds": [1, 2]})
    count = receive(session, ["COUNT", "c", {}])[0]
    assert isinstance(count, StartCount)
    assert shared.used == 5
    actions = session.end()
    assert set(actions) == {
        Unwatch("a"),
        Unwatch("b"),
        CancelQuery(a.query_id),
        CancelQuery(b.query_id),
        CancelQuery(count.query_id),
    }
    assert (shared.used, session.entries, session.queries) == (0, 0, {})


# --- budgets --------------------------------------------------------------------------


def test_live_entries_budget_refuses_and_frees() -> None:
    session = session_with(max_live_entries=5)
    open_sub(session, "a", {"#t": ["1", "2", "3"]})
    reply = only_reply(receive(session, ["REQ", "b", {"authors": PUBKEYS}]))
    assert reply[:2] == ["CLOSED", "b"]
    assert reply[2].startswith("restricted: ")
    open_sub(session, "b", {"kinds": [1, 2]})
    assert session.entries == 5
    receive(session, ["CLOSE", "a"])
    open_sub(session, "c", {"ids": IDS})
    assert session.entries == 5


def test_live_entries_budget_is_shared_by_the_relay() -> None:
    shared = SharedBudget(4)
    one = Session(SessionPolicy(), shared_entries=shared)
    two = Session(SessionPolicy(), shared_entries=shared)
    open_sub(one, "s", {"authors": PUBKEYS})
    reply = only_reply(receive(two, ["REQ", "s", {"kinds": [1, 2]}]))
    assert reply[:2] == ["CLOSED", "s"]
    assert reply[2].startswith("restricted: ")
    one.end()
    open_sub(two, "s", {"kinds": [1, 2]})


def test_queries_in_flight_budget_counts_req_and_count() -> None:
    session = session_with(max_queries_in_flight=2)
    open_sub(session, "a")
    (count,) = receive(session, ["COUNT", "c1", {}])
    assert isinstance(count, StartCount)
    reply = only_reply(receive(session, ["COUNT", "c2", {}]))
    assert reply == ["CLOSED", "c2", "rate-limited: at most 2 queries at once, wait for EOSE"]
    assert only_reply(session.count_done(count.query_id, 7)) == ["COUNT", "c1", {"count": 7}]
    assert isinstance(receive(session, ["COUNT", "c2", {}])[0], StartCount)


def test_a_subscription_without_a_query_takes_no_query_budget() -> None:
    session = session_with(max_queries_in_flight=1)
    open_sub(session, "a")
    actions = receive(session, ["REQ", "b", {"limit": 0}])
    assert replies(actions) == [["EOSE", "b"]]


def test_held_back_bytes_over_budget_close_the_subscription_at_eose() -> None:
    event = live_event(1)
    session = session_with(max_held_bytes=len(event.raw) * 2)
    query = open_sub(session, "s")
    for i in range(3):
        session.live("s", live_event(i), private=False)
    assert session.held_bytes == 0
    actions = session.query_done(query.query_id)
    assert Unwatch("s") in actions
    assert replies(actions) == [["CLOSED", "s", HELD_OVERFLOW]]


def test_req_rate_limit() -> None:
    session = Session(SessionPolicy(req_rate=1.0, req_burst=2))
    open_sub(session, "a")
    open_sub(session, "b")
    assert only_reply(receive(session, ["REQ", "c", {}]))[2].startswith("rate-limited: ")


def test_event_rate_limit_per_ip_and_the_exemption() -> None:
    limiter = RateLimiter(1.0, 1, clock=lambda: 0.0)
    obj = Keys().sign(created_at=NOW)
    limited = Session(SessionPolicy(), event_rate=limiter, ip="203.0.113.1")
    assert isinstance(receive(limited, ["EVENT", obj])[0], Ingest)
    assert only_reply(receive(limited, ["EVENT", obj]))[2:] == [False, EVENT_RATE]
    exempt = Session(SessionPolicy(), event_rate=limiter, ip="127.0.0.1", rate_exempt=True)
    assert isinstance(receive(exempt, ["EVENT", obj])[0], Ingest)


def test_count_disabled() -> None:
    session = Session(SessionPolicy(count_enabled=False))
    assert only_reply(receive(session, ["COUNT", "c", {}])) == ["CLOSED", "c", COUNT_DISABLED]


# --- auth and privacy -----------------------------------------------------------------


AUTH_ON = AuthPolicy(enabled=True, relay_url="ws://relay.example/")


def auth_event(keys: Keys, challenge: str, relay: str = "ws://relay.example/") -> dict[str, Any]:
    tags = [["relay", relay], ["challenge", challenge]]
    return keys.sign(kind=22242, created_at=NOW, tags=tags)


def test_the_challenge_comes_first_and_auth_is_checked_before_the_signature() -> None:
    session = Session(SessionPolicy(auth=AUTH_ON))
    assert replies(session.start()) == [["AUTH", session.auth.challenge]]
    keys = Keys()
    wrong = auth_event(keys, "not-it")
    assert only_reply(receive(session, ["AUTH", wrong]))[:3] == ["OK", wrong["id"], False]
    right = auth_event(keys, session.auth.challenge)
    (action,) = receive(session, ["AUTH", right])
    assert isinstance(action, Authenticate)
    assert only_reply(session.authenticated(action.event, True)) == ["OK", right["id"], True, ""]
    assert session.auth.pubkeys == {keys.pubkey}


def test_auth_with_a_bad_signature_or_our_failure() -> None:
    session = Session(SessionPolicy(auth=AUTH_ON))
    event = live_event(1, kind=22242)
    assert only_reply(session.authenticated(event, False))[2:] == [False, "invalid: bad signature"]
    assert only_reply(session.authenticated(event, None))[3].startswith("error: ")
    assert session.auth.pubkeys == set()


def test_dms_need_auth_and_reach_only_their_parties() -> None:
    session = Session(SessionPolicy(auth=AUTH_ON))
    actions = receive(session, ["REQ", "dm", {"kinds": [4]}])
    assert [r[0] for r in replies(actions)] == ["AUTH", "CLOSED"]
    assert replies(actions)[1][2].startswith("auth-required: ")
    session.auth.pubkeys.add(PUBKEYS[1])
    query = open_sub(session, "dm", {"kinds": [4]})
    others = stored(2, kind=4, pubkey=PUBKEYS[0])
    assert replies(session.query_page(query.query_id, others)) == []
    session.query_done(query.query_id)
    to_me = live_event(5, kind=4, tags=[["p", PUBKEYS[1]]])
    assert session.live("dm", live_event(6, kind=4), private=True) is None
    assert session.live("dm", to_me, private=True) is not None


@pytest.mark.parametrize("created_at", [7, 1_700_000_000, 10**15])
def test_a_filter_without_kinds_leaves_out_exactly_the_private_events(created_at: int) -> None:
    """Kinds that only share digits with a private kind, and content quoting one, are
    served; every private kind is not, unauthenticated, whatever the length of created_at
    (where the kind lies in the JSON) and whatever the order of the JSON's keys."""
    session = Session(SessionPolicy(auth=AUTH_ON))
    query = open_sub(session, "s", {"authors": [PUBKEYS[0]]})

    def event(kind: int, content: str = "", kind_first: bool = False) -> bytes:
        fields = {"id": f"{kind:064x}", "pubkey": PUBKEYS[0], "created_at": created_at}
        fields |= {"kind": kind, "tags": [["k", '"kind":4']], "content": content, "sig": SIG}
        if kind_first:
            fields = {"kind": fields.pop("kind"), **fields}
        return orjson.dumps(fields)

    public = [event(40), event(104), event(14000), event(0), event(1, '"kind":4,"a":{"kind":4}')]
    public.append(event(1, kind_first=True))
    served = [["EVENT", "s", orjson.loads(raw)] for raw in public]
    assert replies(session.query_page(query.query_id, public)) == served
    for kind in sorted(DM_KINDS):
        for private in (event(kind), event(kind, kind_first=True)):
            assert replies(session.query_page(query.query_id, [*public, private])) == served


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


# --- NIP-77 negentropy ------------------------------------------------------------------


def neg_open(session: Session, sub_id: str, flt: dict[str, Any] | None = None) -> OpenNegentropy:
    (action,) = receive(session, ["NEG-OPEN", sub_id, flt or {}, "61"])
    assert isinstance(action, OpenNegentropy)
    return action


def test_neg_open_loads_then_each_message_is_answered_in_turn() -> None:
    session = session_with()
    opened = neg_open(session, "n", {"kinds": [1]})
    assert opened.filter == Filter(kinds=frozenset([1]))
    server = NegentropyServer(Storage([]))
    # A NEG-MSG before the set is loaded ends the session.
    assert replies(receive(session, ["NEG-MSG", "n", "61"])) == [["NEG-ERR", "n", NEG_PENDING]]
    assert session.neg_opened(opened.query_id, server, 0, b"\x61") == []
    opened = neg_open(session, "n")
    assert replies(session.neg_opened(opened.query_id, server, 0, b"\x61")) == [
        ["NEG-MSG", "n", "61"]
    ]
    (reconcile,) = receive(session, ["NEG-MSG", "n", "61"])
    assert isinstance(reconcile, Reconcile)
    assert reconcile.server is server
    assert replies(session.neg_answered(reconcile.query_id, b"\x61")) == [["NEG-MSG", "n", "61"]]
    assert receive(session, ["NEG-CLOSE", "n"]) == []
    assert session.negentropy == {}


def test_neg_open_on_an_open_id_cancels_the_old_load() -> None:
    session = session_with()
    old = neg_open(session, "n")
    actions = receive(session, ["NEG-OPEN", "n", {}, "61"])
    assert actions[0] == CancelQuery(old.query_id)
    assert isinstance(actions[1], OpenNegentropy)
    assert session.neg_opened(old.query_id, NegentropyServer(Storage([])), 0, b"\x61") == []


def test_negentropy_sets_share_the_relays_budget_and_idle_ones_end() -> None:
    shared = SharedBudget(10)
    policy = SessionPolicy(neg_idle_seconds=5)
    one, two = Session(policy, shared_neg_items=shared), Session(policy, shared_neg_items=shared)
    server = NegentropyServer(Storage([]))
    first = neg_open(one, "a")
    one.neg_opened(first.query_id, server, 8, b"\x61")
    second = neg_open(two, "b")
    assert replies(two.neg_opened(second.query_id, server, 8, b"\x61")) == [
        ["NEG-ERR", "b", NEG_BUSY]
    ]
    assert one.tick(WALL + 1) == []
    assert replies(one.tick(WALL + 6)) == [["NEG-ERR", "a", NEG_IDLE]]
    assert shared.used == 0
