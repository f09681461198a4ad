"""The sans-I/O side of NIP-86: the NIP-98 check and the methods' plans, without I/O."""

from __future__ import annotations

import base64
import json
import time

import pytest
from coincurve import PrivateKey

from relay.admin import auth_header
from relay.core.errors import Blocked, Restricted
from relay.core.event import parse_event
from relay.core.moderation import (
    Change,
    ModerationState,
    RpcError,
    check_http_auth,
    decode_change,
    encode_change,
    plan,
)
from tests.nostr import Keys

URL = "https://relay.example.com/"
BODY = b'{"method":"supportedmethods","params":[]}'
NOW = int(time.time())


def check(header: str, admins: frozenset[str], body: bytes = BODY, now: int = NOW) -> str:
    return check_http_auth(
        header,
        urls=[URL, "wss://relay.example.com/"],
        method="POST",
        body=body,
        admins=admins,
        now=now,
    )


def test_a_valid_token_names_its_admin() -> None:
    admin = PrivateKey()
    pubkey = admin.public_key_xonly.format().hex()
    assert check(auth_header(admin, URL, "POST", BODY, NOW), frozenset({pubkey})) == pubkey
    # The ws:// form of the URL, and no trailing slash, are the same relay.
    header = auth_header(admin, "wss://relay.example.com", "POST", BODY, NOW)
    assert check(header, frozenset({pubkey})) == pubkey


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("", "missing"),
        ("Bearer abc", "missing"),
        ("Nostr !!!", "base64"),
        ("Nostr " + base64.b64encode(b"[1]").decode(), "Authorization event"),
    ],
)
def test_malformed_headers_are_refused(header: str, why: str) -> None:
    with pytest.raises(Restricted, match=why):
        check(header, frozenset())


def test_each_field_of_the_token_is_checked() -> None:
    admin = PrivateKey()
    admins = frozenset({admin.public_key_xonly.format().hex()})
    cases = {
        "too old": auth_header(admin, URL, "POST", BODY, NOW - 61),
        "u tag": auth_header(admin, "https://elsewhere.example/", "POST", BODY, NOW),
        "method": auth_header(admin, URL, "PUT", BODY, NOW),
        "payload": auth_header(admin, URL, "POST", b"other", NOW),
        "not an admin": auth_header(PrivateKey(), URL, "POST", BODY, NOW),
    }
    for why, header in cases.items():
        with pytest.raises(Restricted, match=why):
            check(header, admins)
    wrong_kind = Keys(admin).sign(kind=1, tags=[["u", URL], ["method", "POST"]])
    header = "Nostr " + base64.b64encode(json.dumps(wrong_kind).encode()).decode()
    with pytest.raises(Restricted, match="kind 27235"):
        check(header, admins, body=b"")


def test_a_forged_signature_is_refused() -> None:
    admin = PrivateKey()
    token = json.loads(base64.b64decode(auth_header(admin, URL, "POST", BODY, NOW)[6:]))
    token["sig"] = "00" * 64
    header = "Nostr " + base64.b64encode(json.dumps(token).encode()).decode()
    with pytest.raises(Restricted, match="signature"):
        check(header, frozenset({admin.public_key_xonly.format().hex()}))


def test_plans_change_the_state_only_when_applied() -> None:
    state = ModerationState()
    pubkey = "ab" * 32
    result, change = plan(state, "banpubkey", [pubkey, "spam"])
    assert result is True
    assert change == Change("banned_pubkeys", pubkey, "spam", True, purge_pubkey=pubkey)
    assert plan(state, "listbannedpubkeys", [])[0] == []
    state.apply(change)
    assert plan(state, "listbannedpubkeys", []) == ([{"pubkey": pubkey, "reason": "spam"}], None)
    event = parse_event(Keys().sign())
    state.apply(Change("allowed_kinds", "7"))
    with pytest.raises(Restricted, match="kind 1"):
        state.check(event)
    state.apply(Change("allowed_kinds", "7", added=False))
    state.check(event)
    state.apply(Change("banned_events", event.id))
    with pytest.raises(Blocked, match="event"):
        state.check(event)


def test_ip_addresses_are_normalised() -> None:
    state = ModerationState()
    _, change = plan(state, "blockip", ["::FFFF:1.2.3.4"])
    assert change is not None
    assert change.key == "1.2.3.4"
    state.apply(change)
    assert state.ip_blocked("::ffff:1.2.3.4")
    assert state.ip_blocked("1.2.3.4")
    assert not state.ip_blocked("1.2.3.5")
    _, change = plan(state, "blockip", ["2001:DB8::1"])
    assert change is not None
    assert change.key == "2001:db8::1"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("banpubkey", []),
        ("banpubkey", ["AB" * 32]),
        ("banpubkey", ["ab" * 32, 5]),
        ("allowkind", [-1]),
        ("allowkind", [True]),
        ("changerelayname", [None]),
        ("changerelayname", ["x" * 1001]),
        ("unblockip", ["localhost"]),
        ("nosuch", []),
        (None, []),
        ("supportedmethods", {}),
    ],
)
def test_bad_calls_raise_rpc_errors(method: object, params: object) -> None:
    with pytest.raises(RpcError):
        plan(ModerationState(), method, params)


def test_changes_to_turn_one_state_into_another() -> None:
    mine, theirs = ModerationState(), ModerationState()
    for change in (
        Change("banned_pubkeys", "a" * 64, "spam"),
        Change("banned_pubkeys", "b" * 64, "old reason"),
        Change("allowed_kinds", "1"),
        Change("info", "name", "Mine"),
    ):
        mine.apply(change)
    for change in (
        Change("banned_pubkeys", "b" * 64, "new reason"),
        Change("allowed_kinds", "7"),
        Change("blocked_ips", "10.0.0.1", "abuse"),
    ):
        theirs.apply(change)
    changes = mine.changes_to(theirs)
    for change in changes:
        mine.apply(change)
    assert mine == theirs
    assert mine.changes_to(theirs) == []
    # Only what differs: the unchanged entries are not touched again.
    assert len(changes) == 6


@pytest.mark.parametrize(
    "change",
    [
        Change("banned_pubkeys", "a" * 64, "spam \u00e9\u2603"),
        Change("allowed_kinds", "30023", "", added=False),
        Change("info", "description", "a calm place"),
    ],
)
def test_a_change_travels_as_json(change: Change) -> None:
    assert decode_change(encode_change(change)) == change


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        '["nosuchlist", "k", "", true]',
        '["allowed_kinds", "x", "", true]',
        '["banned_pubkeys", "k", "", "yes"]',
        '["banned_pubkeys", 5, "", true]',
    ],
)
def test_anything_else_is_not_a_change(text: str) -> None:
    assert decode_change(text) is None
