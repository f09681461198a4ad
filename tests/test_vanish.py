"""NIP-62 requests to vanish: rules, both stores, and over the socket."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relay.core import vanish
from relay.core.errors import Blocked, Invalid
from relay.core.event import Event, parse_event
from relay.core.filters import Filter
from relay.store.base import EventStore, SaveOutcome
from tests.conftest import RelayFactory, url_of
from tests.http_client import fetch_info
from tests.nostr import Client, Keys

NOW = 1_700_000_000
URL = "wss://relay.example.com/"
ALICE, BOB = Keys(), Keys()


def signed(keys: Keys, created_at: int, kind: int = 1, **kw: Any) -> Event:
    return parse_event(keys.sign(kind=kind, created_at=created_at, **kw))


def request(keys: Keys, created_at: int, relay: str = "ALL_RELAYS") -> Event:
    return signed(keys, created_at, kind=62, content="bye", tags=[["relay", relay]])


@pytest.mark.parametrize(
    ("relay", "named"),
    [
        ("ALL_RELAYS", True),
        ("wss://Relay.Example.com", True),
        ("wss://relay.example.com/", True),
        ("wss://other.example.com/", False),
        ("all_relays", False),
        ("wss://evil@relay.example.com/", False),
        ("wss://relay.example.com/?x", False),
        ("wss://relay.example.com/#y", False),
        ("wss://evil@relay.example.com/?x#y", False),
    ],
)
def test_which_requests_name_this_relay(relay: str, named: bool) -> None:
    assert vanish.names_this_relay(request(ALICE, NOW, relay), URL) is named


def test_requests_this_relay_will_not_act_on_are_refused() -> None:
    with pytest.raises(Invalid):
        vanish.check_request(request(ALICE, NOW, "wss://other.example.com"), URL, True)
    with pytest.raises(Blocked):
        vanish.check_request(request(ALICE, NOW), URL, False)
    vanish.check_request(request(ALICE, NOW), URL, True)
    vanish.check_request(signed(ALICE, NOW), URL, False)


async def stored_ids(store: EventStore) -> set[str]:
    return {raw[7:71].decode() for raw in await store.query([Filter()], NOW + 100)}


async def test_vanish_erases_up_to_its_created_at(store: EventStore) -> None:
    old_note = signed(ALICE, NOW - 10)
    profile = signed(ALICE, NOW - 10, kind=0)
    deletion = signed(ALICE, NOW - 5, kind=5, tags=[["e", "ab" * 32]])
    wrap_to_alice = signed(BOB, NOW - 9, kind=1059, tags=[["p", ALICE.pubkey]])
    note_to_alice = signed(BOB, NOW - 9, kind=1, tags=[["p", ALICE.pubkey]])
    later_note = signed(ALICE, NOW + 10)
    later_wrap = signed(BOB, NOW + 10, kind=1059, tags=[["p", ALICE.pubkey]])
    events = [old_note, profile, deletion, wrap_to_alice, note_to_alice, later_note, later_wrap]
    await store.save_many(events, NOW)
    ask = request(ALICE, NOW)
    assert await store.save_many([ask], NOW) == [SaveOutcome.STORED]
    # Kept: others' events that are not gift wraps to her, later events, the request.
    assert await stored_ids(store) == {note_to_alice.id, later_note.id, later_wrap.id, ask.id}
    # What was erased stays erased; a new event of hers is welcome.
    again = await store.save_many([old_note, profile, wrap_to_alice, signed(ALICE, NOW + 20)], NOW)
    assert again == [SaveOutcome.VANISHED] * 3 + [SaveOutcome.STORED]


async def test_vanish_in_one_batch_with_the_events_it_erases(store: EventStore) -> None:
    before = signed(ALICE, NOW - 1)
    ask = request(ALICE, NOW)
    same_batch_old = signed(ALICE, NOW - 2, content="after the request, but older")
    outcomes = await store.save_many([before, ask, same_batch_old], NOW)
    assert outcomes == [SaveOutcome.STORED, SaveOutcome.STORED, SaveOutcome.VANISHED]
    assert await stored_ids(store) == {ask.id}


async def test_an_older_request_changes_nothing(store: EventStore) -> None:
    await store.save_many([request(ALICE, NOW)], NOW)
    kept = signed(ALICE, NOW + 5)
    await store.save_many([kept], NOW)
    assert await store.save_many([request(ALICE, NOW - 1)], NOW) == [SaveOutcome.VANISHED]
    assert kept.id in await stored_ids(store)


# --- over the socket --------------------------------------------------------------------


async def test_vanish_over_the_socket(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    now = int(time.time())
    note = ALICE.sign(created_at=now - 5)
    wrap = BOB.sign(kind=1059, content="x", tags=[["p", ALICE.pubkey]], created_at=now - 5)
    for event in (note, wrap):
        assert (await client.publish(event))[2] is True
    elsewhere = ALICE.sign(kind=62, tags=[["relay", "wss://other.example.com"]], created_at=now)
    reply = await client.publish(elsewhere)
    assert reply[2] is False
    assert reply[3].startswith("invalid: ")
    here = f"ws://127.0.0.1:{relay.port}"
    ask = ALICE.sign(kind=62, content="", tags=[["relay", here]], created_at=now)
    assert await client.publish(ask) == ["OK", ask["id"], True, ""]
    await client.auth(BOB, here + "/")
    assert await client.req("s", {"ids": [note["id"], wrap["id"], ask["id"]]}) == [ask]
    reply = await client.publish(note)
    assert reply[:3] == ["OK", note["id"], False]
    assert reply[3].startswith("blocked: ")
    assert 62 in (await fetch_info(relay))["supported_nips"]
    await client.close()


async def test_vanish_can_be_switched_off(start_relay: RelayFactory) -> None:
    relay = await start_relay(vanish_enabled=False)
    client = await Client.connect(url_of(relay))
    reply = await client.publish(ALICE.sign(kind=62, tags=[["relay", "ALL_RELAYS"]]))
    assert reply[2] is False
    assert reply[3].startswith("blocked: ")
    assert 62 not in (await fetch_info(relay))["supported_nips"]
    await client.close()
