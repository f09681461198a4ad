"""NIP-77 negentropy through a real socket: reconciliation against the relay's stored set,
the version byte, replacement, budgets, private kinds and idle sessions."""

from __future__ import annotations

import time
from typing import Any

import pytest

from relay.core.negentropy import NegentropyClient, Storage
from tests.conftest import RelayFactory, url_of
from tests.http_client import http_request
from tests.nostr import Client, Keys

NOW = int(time.time())
# The first message of a client holding nothing.
EMPTY = NegentropyClient(Storage([]), 0).initiate().hex()


async def publish(client: Client, events: list[dict[str, Any]]) -> None:
    for event in events:
        assert (await client.publish(event))[2] is True


def items_of(events: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    return sorted((e["created_at"], bytes.fromhex(e["id"])) for e in events)


async def reconcile(
    client: Client, sub_id: str, flt: dict[str, Any], mine: list[tuple[int, bytes]]
) -> tuple[set[bytes], set[bytes], int]:
    """Run a whole reconciliation as the initiator: (have, need, rounds)."""
    negentropy = NegentropyClient(Storage(mine), 4096)
    await client.send(["NEG-OPEN", sub_id, flt, negentropy.initiate().hex()])
    have: set[bytes] = set()
    need: set[bytes] = set()
    rounds = 0
    while True:
        reply = await client.recv()
        assert reply[:2] == ["NEG-MSG", sub_id], reply
        rounds += 1
        following, got_have, got_need = negentropy.reconcile(bytes.fromhex(reply[2]))
        have.update(got_have)
        need.update(got_need)
        if following is None:
            await client.send(["NEG-CLOSE", sub_id])
            return have, need, rounds
        await client.send(["NEG-MSG", sub_id, following.hex()])


async def test_reconciliation_finds_exactly_the_difference(start_relay: RelayFactory) -> None:
    # The relay's frames are (8448 - 256) / 2 = 4096 bytes, like the client's.
    relay = await start_relay(max_message_length=8448)
    client = await Client.connect(url_of(relay))
    keys = Keys()
    shared = [keys.sign(content=f"shared {n}", created_at=NOW - 1000 + n) for n in range(300)]
    only_relay = [keys.sign(content=f"relay {n}", created_at=NOW - 1000 + n) for n in range(150)]
    only_client = [keys.sign(content=f"client {n}", created_at=NOW - 500 + n) for n in range(25)]
    other_kind = keys.sign(kind=7, content="+")
    await publish(client, shared + only_relay + [other_kind])
    have, need, rounds = await reconcile(
        client, "sync", {"kinds": [1]}, items_of(shared + only_client)
    )
    assert have == {bytes.fromhex(e["id"]) for e in only_client}
    assert need == {bytes.fromhex(e["id"]) for e in only_relay}
    assert rounds >= 2  # 4096-byte frames: the relay's 150 ids cannot all go at once
    await client.close()


async def test_nip11_lists_77_and_another_version_gets_ours(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    info = await http_request(relay.port, headers={"Accept": "application/nostr+json"})
    assert 77 in info.json()["supported_nips"]
    client = await Client.connect(url_of(relay))
    await client.send(["NEG-OPEN", "v", {}, "62"])
    assert await client.recv() == ["NEG-MSG", "v", "61"]
    off = await start_relay(negentropy_enabled=False, db=str(relay.settings.db) + ".off")
    info = await http_request(off.port, headers={"Accept": "application/nostr+json"})
    assert 77 not in info.json()["supported_nips"]
    await client.close()


async def test_neg_open_on_an_open_id_replaces_it(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    keys = Keys()
    events = [keys.sign(content=str(n)) for n in range(5)]
    await publish(client, events)
    first = NegentropyClient(Storage([]), 0)
    await client.send(["NEG-OPEN", "s", {"kinds": [1]}, first.initiate().hex()])
    assert (await client.recv())[:2] == ["NEG-MSG", "s"]
    # Same id, another filter: a new session, answered over its own set.
    _, need, _ = await reconcile(client, "s", {"kinds": [7]}, [])
    assert need == set()
    _, need, _ = await reconcile(client, "s", {"kinds": [1]}, [])
    assert need == {bytes.fromhex(e["id"]) for e in events}
    await client.close()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (["NEG-MSG", "nope", "61"], "closed: no such negentropy session"),
        (["NEG-OPEN", "s", {}, "6"], "invalid: "),
        (["NEG-OPEN", "s", {}, "61FF"], "invalid: "),
        (["NEG-OPEN", "s", {"search": "x"}, "61"], "unsupported: "),
    ],
)
async def test_bad_negentropy_frames_get_neg_err(
    start_relay: RelayFactory, message: list[Any], reason: str
) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    await client.send(message)
    reply = await client.recv()
    assert reply[:2] == ["NEG-ERR", message[1]]
    assert reply[2].startswith(reason)
    # The connection goes on.
    assert await client.req("after", {"limit": 1}) == []
    await client.close()


async def test_a_set_over_the_cap_is_blocked(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_neg_items=5)
    client = await Client.connect(url_of(relay))
    await publish(client, [Keys().sign(content=str(n)) for n in range(6)])
    await client.send(["NEG-OPEN", "big", {"kinds": [1]}, EMPTY])
    reply = await client.recv()
    assert reply[:2] == ["NEG-ERR", "big"]
    assert reply[2].startswith("blocked: ")
    # Narrower: fine.
    await client.send(["NEG-OPEN", "small", {"kinds": [1], "limit": 5}, EMPTY])
    assert (await client.recv())[:2] == ["NEG-MSG", "small"]
    await client.close()


async def test_sessions_per_connection_are_capped(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_neg_sessions=1)
    client = await Client.connect(url_of(relay))
    await client.send(["NEG-OPEN", "a", {}, EMPTY])
    assert (await client.recv())[:2] == ["NEG-MSG", "a"]
    await client.send(["NEG-OPEN", "b", {}, EMPTY])
    reply = await client.recv()
    assert reply[:2] == ["NEG-ERR", "b"]
    assert reply[2].startswith("rate-limited: ")
    await client.send(["NEG-CLOSE", "a"])
    await client.send(["NEG-OPEN", "b", {}, EMPTY])
    assert (await client.recv())[:2] == ["NEG-MSG", "b"]
    await client.close()


async def test_private_kinds_need_auth_and_only_their_parties_ids(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay()
    url = url_of(relay)
    alice, bob, carol = Keys(), Keys(), Keys()
    publisher = await Client.connect(url)
    to_bob = alice.sign(kind=4, tags=[["p", bob.pubkey]], content="hi bob")
    to_carol = alice.sign(kind=4, tags=[["p", carol.pubkey]], content="hi carol")
    await publish(publisher, [to_bob, to_carol])
    client = await Client.connect(url)
    await client.send(["NEG-OPEN", "dm", {"kinds": [4]}, EMPTY])
    reply = await client.recv()
    assert reply[:2] == ["NEG-ERR", "dm"]
    assert reply[2].startswith("auth-required: ")
    assert (await client.auth(bob, relay.auth.relay_url))[2] is True
    _, need, _ = await reconcile(client, "dm", {"kinds": [4]}, [])
    assert need == {bytes.fromhex(to_bob["id"])}
    await client.close()
    await publisher.close()


async def test_idle_sessions_are_closed(start_relay: RelayFactory) -> None:
    relay = await start_relay(neg_idle_seconds=0.2)
    client = await Client.connect(url_of(relay))
    await client.send(["NEG-OPEN", "idle", {}, EMPTY])
    assert (await client.recv())[:2] == ["NEG-MSG", "idle"]
    reply = await client.recv(timeout=5)
    assert reply[:2] == ["NEG-ERR", "idle"]
    assert reply[2].startswith("closed: ")
    await client.close()
