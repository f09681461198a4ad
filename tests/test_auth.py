"""NIP-42/NIP-70 decisions in relay/core/auth.py, without sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.core import auth
from relay.core.auth import AuthPolicy, AuthState
from relay.core.errors import AuthRequired, Blocked, ClientError, Invalid, Restricted
from relay.core.event import Event, parse_event
from relay.core.filters import Filter, parse_filter
from relay.core.limits import Limits
from relay.core.nip11 import RelayInfo, information_document, optional_nips
from tests.nostr import Keys

NOW = 1_700_000_000
URL = "wss://relay.example.com/"
ALICE, BOB, CAROL = Keys(), Keys(), Keys()


def event(keys: Keys = ALICE, **kwargs: Any) -> Event:
    kwargs.setdefault("created_at", NOW)
    return parse_event(keys.sign(**kwargs))


def auth_event(challenge: str, relay: str = URL, created_at: int = NOW, kind: int = 22242) -> Event:
    tags = [["relay", relay], ["challenge", challenge]]
    return event(kind=kind, content="", tags=tags, created_at=created_at)


def filters(*objs: dict[str, Any]) -> list[Filter]:
    return [parse_filter(obj) for obj in objs]


def authed(*keys: Keys) -> AuthState:
    state = AuthState()
    state.pubkeys.update(k.pubkey for k in keys)
    return state


# --- challenge and AUTH event ---------------------------------------------------------


def test_each_connection_gets_its_own_random_challenge() -> None:
    challenges = {AuthState().challenge for _ in range(50)}
    assert len(challenges) == 50
    assert all(len(c) >= 16 for c in challenges)


def test_a_good_auth_event_passes() -> None:
    auth.check_auth_event(auth_event("abc"), "abc", URL, NOW + 30)


@pytest.mark.parametrize(
    "relay",
    ["wss://relay.example.com", "WSS://Relay.Example.COM/", "wss://relay.example.com:443/"],
)
def test_relay_url_is_compared_normalized(relay: str) -> None:
    auth.check_auth_event(auth_event("abc", relay=relay), "abc", URL, NOW)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (auth_event("abc", kind=1), "kind"),
        (auth_event("other"), "challenge"),
        (auth_event("abc", relay="wss://evil.example.com/"), "another relay"),
        (auth_event("abc", relay="ws://relay.example.com/"), "another relay"),
        (auth_event("abc", relay="wss://relay.example.com/sub"), "another relay"),
        (auth_event("abc", relay="wss://evil@relay.example.com/"), "another relay"),
        (auth_event("abc", relay="wss://u:p@relay.example.com/"), "another relay"),
        (auth_event("abc", relay="wss://relay.example.com/?x"), "another relay"),
        (auth_event("abc", relay="wss://relay.example.com/?"), "another relay"),
        (auth_event("abc", relay="wss://relay.example.com/#y"), "another relay"),
        (auth_event("abc", relay="wss://evil@relay.example.com/?x#y"), "another relay"),
        (auth_event("abc", created_at=NOW - 601), "created_at"),
        (auth_event("abc", created_at=NOW + 601), "created_at"),
        (event(kind=22242, content="", tags=[["relay", URL]]), "challenge"),
        (event(kind=22242, content="", tags=[["challenge", "abc"]]), "another relay"),
    ],
)
def test_bad_auth_events_are_invalid(bad: Event, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        auth.check_auth_event(bad, "abc", URL, NOW)


def test_normalize_relay_url() -> None:
    assert auth.normalize_relay_url("WS://Host:80/") == "ws://host"
    assert auth.normalize_relay_url("ws://host:7447") == "ws://host:7447"
    assert auth.normalize_relay_url("wss://host/path/") == "wss://host/path"
    assert auth.normalize_relay_url("ws://host:99999") == "ws://host:99999"  # kept, unequal


# --- writes -----------------------------------------------------------------------------


def refusal(e: Event, state: AuthState, policy: AuthPolicy) -> ClientError | None:
    try:
        auth.check_write(e, state, policy)
    except ClientError as error:
        return error
    return None


def test_open_relay_takes_events_without_auth() -> None:
    assert refusal(event(), AuthState(), AuthPolicy()) is None


def test_writes_can_require_auth() -> None:
    policy = AuthPolicy(required_for_writes=True)
    assert isinstance(refusal(event(), AuthState(), policy), AuthRequired)
    # Any authenticated key may publish any author's (signed) event.
    assert refusal(event(ALICE), authed(BOB), policy) is None


def test_listed_kinds_require_auth() -> None:
    policy = AuthPolicy(required_kinds=frozenset({7}))
    assert isinstance(refusal(event(kind=7), AuthState(), policy), AuthRequired)
    assert refusal(event(kind=1), AuthState(), policy) is None
    assert refusal(event(kind=7), authed(BOB), policy) is None


def test_auth_events_are_never_published() -> None:
    error = refusal(auth_event("abc"), authed(ALICE), AuthPolicy())
    assert isinstance(error, Invalid)


def test_protected_event_needs_its_author_authenticated() -> None:
    protected = event(ALICE, tags=[["-"]])
    assert isinstance(refusal(protected, AuthState(), AuthPolicy()), AuthRequired)
    assert isinstance(refusal(protected, authed(BOB), AuthPolicy()), Restricted)
    assert refusal(protected, authed(BOB, ALICE), AuthPolicy()) is None
    assert isinstance(refusal(protected, authed(ALICE), AuthPolicy(enabled=False)), Blocked)


def test_any_tag_named_dash_is_the_protected_tag() -> None:
    assert auth.is_protected(event(tags=[["p", BOB.pubkey], ["-"]]))
    assert auth.is_protected(event(tags=[["-", ""]]))
    assert auth.is_protected(event(tags=[["-", "x", "y"]]))
    assert not auth.is_protected(event(tags=[["p", "-"], ["--"], ["t", "-"]]))
    assert not auth.is_protected(event(tags=[]))


def repost(inner: dict[str, Any], kind: int = 6, keys: Keys = BOB) -> Event:
    return event(keys, kind=kind, content=orjson.dumps(inner).decode(), tags=[["e", inner["id"]]])


def test_a_repost_embedding_a_protected_event_is_blocked() -> None:
    protected = ALICE.sign(tags=[["-"]])
    for kind in (6, 16):
        for state in (AuthState(), authed(ALICE, BOB)):
            for policy in (AuthPolicy(), AuthPolicy(enabled=False)):
                error = refusal(repost(protected, kind), state, policy)
                assert isinstance(error, Blocked), (kind, state, policy)
                assert "protected" in error.reason
    # Its author reposting it embedded is refused too: NIP-70 says summarily.
    assert isinstance(refusal(repost(protected, keys=ALICE), authed(ALICE), AuthPolicy()), Blocked)
    marked_with_a_value = ALICE.sign(kind=30023, tags=[["d", "a"], ["-", ""]])
    assert isinstance(refusal(repost(marked_with_a_value, 16), AuthState(), AuthPolicy()), Blocked)


def test_reposts_that_do_not_embed_a_protected_event_pass() -> None:
    protected = ALICE.sign(tags=[["-"]])
    # The way NIP-18 asks to repost a protected event: empty content, the e tag only.
    empty = event(BOB, kind=6, content="", tags=[["e", protected["id"]]])
    assert refusal(empty, AuthState(), AuthPolicy()) is None
    assert refusal(repost(ALICE.sign(tags=[["t", "-"]])), AuthState(), AuthPolicy()) is None
    assert refusal(repost(ALICE.sign(), 16), AuthState(), AuthPolicy()) is None
    for content in ("{not json", '{"tags": "-"}', '{"tags": [["-"]', "[1]", "-"):
        assert refusal(event(BOB, kind=6, content=content), AuthState(), AuthPolicy()) is None
    # Only reposts: a note quoting protected JSON in its text is its author's business.
    quoted = event(BOB, kind=1, content=orjson.dumps(protected).decode())
    assert refusal(quoted, AuthState(), AuthPolicy()) is None


# --- reads -------------------------------------------------------------------------------


def read_refusal(objs: list[dict[str, Any]], state: AuthState, policy: AuthPolicy) -> str | None:
    try:
        auth.check_read(filters(*objs), state, policy)
    except AuthRequired as error:
        return error.reason
    return None


def test_dm_kinds_need_auth_to_be_requested() -> None:
    for kind in sorted(auth.DM_KINDS):
        reason = read_refusal([{"kinds": [1, kind]}], AuthState(), AuthPolicy())
        assert reason is not None
        assert reason.startswith("auth-required: ")
    assert read_refusal([{"kinds": [4]}], authed(BOB), AuthPolicy()) is None


def test_filters_without_kinds_are_served_without_auth() -> None:
    # Clients ask {"ids": [...]} or {"#e": [...]} without kinds all the time: they are
    # served, and private events are left out of what they get (see may_read).
    assert read_refusal([{"#e": ["ab" * 32]}, {}], AuthState(), AuthPolicy()) is None


def test_dm_privacy_can_be_switched_off() -> None:
    assert read_refusal([{"kinds": [4]}], AuthState(), AuthPolicy(protect_dms=False)) is None
    assert read_refusal([{"kinds": [4]}], AuthState(), AuthPolicy(enabled=False)) is None


def test_reads_and_kinds_can_require_auth() -> None:
    assert read_refusal([{}], AuthState(), AuthPolicy(required_for_reads=True)) is not None
    kinds = AuthPolicy(required_kinds=frozenset({7}))
    assert read_refusal([{"kinds": [7]}], AuthState(), kinds) is not None
    assert read_refusal([{"kinds": [1]}], AuthState(), kinds) is None
    assert read_refusal([{"kinds": [7]}], authed(ALICE), kinds) is None


def test_only_the_parties_read_a_dm() -> None:
    dm = event(ALICE, kind=4, tags=[["p", BOB.pubkey]])
    kinds = auth.DM_KINDS
    assert auth.may_read(dm, {ALICE.pubkey}, kinds)
    assert auth.may_read(dm, {BOB.pubkey}, kinds)
    assert auth.may_read(dm, {CAROL.pubkey, BOB.pubkey}, kinds)
    assert not auth.may_read(dm, {CAROL.pubkey}, kinds)
    assert not auth.may_read(dm, set(), kinds)
    assert auth.may_read(event(kind=1), set(), kinds)
    assert auth.may_read(dm, set(), frozenset())


def test_readable_parts_match_exactly_the_readable_private_events() -> None:
    """The filters COUNT uses agree with may_read on every combination below."""
    candidates = [
        event(author, kind=kind, tags=[["p", to.pubkey]] if to else [])
        for author in (ALICE, BOB, CAROL)
        for to in (None, ALICE, BOB, CAROL)
        for kind in (1, 4, 1059)
    ]
    shapes: list[list[dict[str, Any]]] = [
        [{}],
        [{"kinds": [4]}],
        [{"authors": [BOB.pubkey]}, {"#p": [CAROL.pubkey]}],
    ]
    for objs in shapes:
        fs = filters(*objs)
        for readers in ({ALICE.pubkey}, {ALICE.pubkey, CAROL.pubkey}, set()):
            parts = auth.readable_parts(fs, readers, auth.DM_KINDS)
            private = auth.private_parts(fs, auth.DM_KINDS)
            for e in candidates:
                matched = any(f.matches(e) for f in fs)
                expected = (
                    matched and e.kind in auth.DM_KINDS and auth.may_read(e, readers, auth.DM_KINDS)
                )
                assert any(f.matches(e) for f in parts) == expected
                assert any(f.matches(e) for f in private) == (matched and e.kind in auth.DM_KINDS)


# --- NIP-11 ------------------------------------------------------------------------------


def test_nips_and_limitation_follow_the_policy() -> None:
    assert optional_nips(AuthPolicy(), count=True) == (42, 70, 45)
    assert optional_nips(AuthPolicy(enabled=False), count=False) == ()
    open_doc = information_document(RelayInfo(), Limits(), AuthPolicy())
    assert open_doc["limitation"]["auth_required"] is False
    assert open_doc["limitation"]["restricted_writes"] is False
    strict = AuthPolicy(required_for_reads=True, required_for_writes=True)
    doc = information_document(RelayInfo(), Limits(), strict)
    assert doc["limitation"]["auth_required"] is True
    assert doc["limitation"]["restricted_writes"] is True
    kinds = information_document(RelayInfo(), Limits(), AuthPolicy(required_kinds=frozenset({1})))
    assert kinds["limitation"]["restricted_writes"] is True
    off = AuthPolicy(enabled=False, required_for_reads=True, required_for_writes=True)
    off_doc = information_document(RelayInfo(), Limits(), off)
    assert off_doc["limitation"]["auth_required"] is False
    assert off_doc["limitation"]["restricted_writes"] is False
