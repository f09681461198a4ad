"""NIP-45 COUNT against the running relay: exact counts, REQ's limits and auth rules."""

from __future__ import annotations

import time
from typing import Any

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.http_client import fetch_info
from tests.nostr import Client, Keys

ALICE, BOB = Keys(), Keys()


async def count(client: Client, sub_id: str, *filters: dict[str, Any]) -> Any:
    await client.send(["COUNT", sub_id, *filters])
    return await client.recv()


async def publish_all(client: Client, *events: dict[str, Any]) -> None:
    for event in events:
        assert (await client.publish(event))[2] is True


async def test_count_is_exact_for_one_or_several_filters(client: Client) -> None:
    now = int(time.time())
    notes = [ALICE.sign(kind=1, content=f"{i}", created_at=now - i) for i in range(5)]
    reactions = [BOB.sign(kind=7, content=c, tags=[["e", notes[0]["id"]]]) for c in "+-"]
    await publish_all(client, *notes, *reactions)
    assert await count(client, "a", {"kinds": [1]}) == ["COUNT", "a", {"count": 5}]
    # `limit` does not cap a count.
    assert await count(client, "b", {"kinds": [1], "limit": 2}) == ["COUNT", "b", {"count": 5}]
    # Several filters are OR-ed; an event several match counts once.
    both = await count(client, "c", {"authors": [ALICE.pubkey]}, {"kinds": [1, 7]})
    assert both == ["COUNT", "c", {"count": 7}]
    tagged = await count(client, "d", {"#e": [notes[0]["id"]]}, {"since": now - 1, "kinds": [1]})
    assert tagged == ["COUNT", "d", {"count": 4}]
    assert await count(client, "e", {"ids": []}) == ["COUNT", "e", {"count": 0}]


async def test_expired_events_are_not_counted(client: Client) -> None:
    now = int(time.time())
    live = ALICE.sign(tags=[["expiration", str(now + 3600)]])
    expiring = ALICE.sign(tags=[["expiration", str(now + 1)]])
    await publish_all(client, live, expiring)
    assert await count(client, "x", {"authors": [ALICE.pubkey]}) == ["COUNT", "x", {"count": 2}]
    # Wait out the second expiration without asserting on time: poll the count.
    deadline = time.monotonic() + 10
    while (await count(client, "x", {"authors": [ALICE.pubkey]}))[2]["count"] != 1:
        assert time.monotonic() < deadline, "the expired event is still counted"


async def test_count_obeys_reqs_limits(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_filters=2, max_subid_length=8)
    client = await Client.connect(url_of(relay))
    reply = await count(client, "s", {}, {}, {})
    assert reply[:2] == ["CLOSED", "s"]
    assert reply[2].startswith("invalid: ")
    reply = await count(client, "x" * 9, {})
    assert reply[:2] == ["CLOSED", "x" * 9]
    assert await count(client, "ok", {}) == ["COUNT", "ok", {"count": 0}]
    await client.close()


async def test_count_of_dms_follows_who_may_read_them(relay: RelayServer) -> None:
    writer = await Client.connect(url_of(relay))
    carol = Keys()
    to_bob = ALICE.sign(kind=4, content="a?iv=b", tags=[["p", BOB.pubkey]])
    to_carol = ALICE.sign(kind=1059, content="w", tags=[["p", carol.pubkey]])
    note = ALICE.sign(kind=1)
    await publish_all(writer, to_bob, to_carol, note)
    anonymous = await Client.connect(url_of(relay))
    reply = await count(anonymous, "dm", {"kinds": [4]})
    assert anonymous.challenge is not None
    assert reply[:2] == ["CLOSED", "dm"]
    assert reply[2].startswith("auth-required: ")
    # Without kinds, private events are left out of the count as out of a REQ.
    assert await count(anonymous, "all", {}) == ["COUNT", "all", {"count": 1}]
    bob = await Client.connect(url_of(relay))
    await bob.auth(BOB, f"ws://127.0.0.1:{relay.port}/")
    assert await count(bob, "all", {}) == ["COUNT", "all", {"count": 2}]
    assert await count(bob, "dm", {"kinds": [4, 1059]}) == ["COUNT", "dm", {"count": 1}]
    alice = await Client.connect(url_of(relay))
    await alice.auth(ALICE, f"ws://127.0.0.1:{relay.port}/")
    assert await count(alice, "dm", {"kinds": [4, 1059]}) == ["COUNT", "dm", {"count": 2}]
    for c in (writer, anonymous, bob, alice):
        await c.close()


async def test_count_can_be_switched_off(start_relay: RelayFactory) -> None:
    relay = await start_relay(count_enabled=False)
    client = await Client.connect(url_of(relay))
    reply = await count(client, "s", {})
    assert reply[:2] == ["CLOSED", "s"]
    assert reply[2].startswith("unsupported: ")
    assert 45 not in (await fetch_info(relay))["supported_nips"]
    await client.close()


async def test_count_is_advertised_when_on(relay: RelayServer) -> None:
    assert 45 in (await fetch_info(relay))["supported_nips"]
