"""NIP-42 AUTH, DM privacy and NIP-70 protected events against the running relay."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.http_client import fetch_info
from tests.nostr import Client, Keys, SubscriptionClosed

ALICE, BOB, CAROL = Keys(), Keys(), Keys()


def public_url(relay: RelayServer) -> str:
    return f"ws://127.0.0.1:{relay.port}/"


async def connect(relay: RelayServer) -> Client:
    return await Client.connect(url_of(relay))


async def expect_auth_then(client: Client) -> Any:
    """An auth-required refusal comes right after a fresh AUTH challenge."""
    first = await client.recv_any()
    assert first[0] == "AUTH"
    assert first[1] == client.challenge
    return await client.recv()


async def test_challenge_on_connect_and_auth_ok(relay: RelayServer) -> None:
    client = await connect(relay)
    frame = await client.recv_any()
    assert frame[0] == "AUTH"
    assert isinstance(frame[1], str)
    assert len(frame[1]) >= 16
    ok = await client.auth(ALICE, public_url(relay))
    assert ok[2:] == [True, ""]
    await client.close()


async def test_challenges_differ_per_connection(relay: RelayServer) -> None:
    a, b = await connect(relay), await connect(relay)
    first, second = await a.recv_any(), await b.recv_any()
    assert first[1] != second[1]
    # One connection's challenge does not authenticate another.
    ok = await b.auth(ALICE, public_url(relay), challenge=first[1])
    assert ok[2] is False
    assert ok[3].startswith("invalid: ")
    await a.close()
    await b.close()


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        ([["relay", "ws://elsewhere.example.com/"]], "another relay"),
        ([["relay", "ws://evil@127.0.0.1:{port}/?x#y"]], "another relay"),
        ([], "another relay"),
    ],
)
async def test_bad_auth_is_refused(relay: RelayServer, tags: list[list[str]], why: str) -> None:
    client = await connect(relay)
    await client.recv_any()
    tags = [[name, value.format(port=relay.port)] for name, value in tags]
    event = ALICE.sign(22242, "", [*tags, ["challenge", client.challenge or ""]])
    await client.send(["AUTH", event])
    reply = await client.recv()
    assert reply[:3] == ["OK", event["id"], False]
    assert why in reply[3]
    await client.close()


async def test_auth_with_a_bad_signature_is_refused(relay: RelayServer) -> None:
    client = await connect(relay)
    await client.recv_any()
    challenge = client.challenge or ""
    event = ALICE.sign(22242, "", [["relay", public_url(relay)], ["challenge", challenge]])
    event["sig"] = BOB.sign(22242, "", [])["sig"]
    await client.send(["AUTH", event])
    assert await client.recv() == ["OK", event["id"], False, "invalid: bad signature"]
    await client.close()


async def test_configured_relay_url_is_the_one_checked(start_relay: RelayFactory) -> None:
    relay = await start_relay(relay_url="wss://Relay.Example.com")
    client = await connect(relay)
    assert (await client.auth(ALICE, public_url(relay)))[2] is False
    assert (await client.auth(ALICE, "wss://relay.example.com/"))[2] is True
    await client.close()


async def test_auth_can_be_switched_off(start_relay: RelayFactory) -> None:
    relay = await start_relay(auth_enabled=False)
    client = await connect(relay)
    await client.send(["REQ", "s", {"kinds": [4]}])
    # No challenge, and DMs are not guarded: the first frame is the EOSE.
    assert await client.recv_any() == ["EOSE", "s"]
    event = ALICE.sign(22242, "", [["relay", public_url(relay)], ["challenge", "x"]])
    await client.send(["AUTH", event])
    reply = await client.recv_any()
    assert reply[:3] == ["OK", event["id"], False]
    assert reply[3].startswith("unsupported: ")
    info = await fetch_info(relay)
    assert not {42, 70} & set(info["supported_nips"])
    await client.close()


async def test_nip11_advertises_auth_settings(start_relay: RelayFactory) -> None:
    relay = await start_relay(auth_required_for_reads=True, auth_required_for_writes=True)
    info = await fetch_info(relay)
    assert {42, 70} <= set(info["supported_nips"])
    assert info["limitation"]["auth_required"] is True
    assert info["limitation"]["restricted_writes"] is True


async def test_writes_can_require_auth(start_relay: RelayFactory) -> None:
    relay = await start_relay(auth_required_for_writes=True)
    client = await connect(relay)
    note = ALICE.sign()
    await client.send(["EVENT", note])
    reply = await expect_auth_then(client)
    assert reply[:3] == ["OK", note["id"], False]
    assert reply[3].startswith("auth-required: ")
    assert (await client.auth(BOB, public_url(relay)))[2] is True
    assert await client.publish(note) == ["OK", note["id"], True, ""]
    await client.close()


async def test_reads_can_require_auth(start_relay: RelayFactory) -> None:
    relay = await start_relay(auth_required_for_reads=True)
    client = await connect(relay)
    for verb in ("REQ", "COUNT"):
        await client.send([verb, "s", {"kinds": [1]}])
        reply = await expect_auth_then(client)
        assert reply[:2] == ["CLOSED", "s"]
        assert reply[2].startswith("auth-required: ")
    await client.auth(ALICE, public_url(relay))
    assert await client.req("s", {"kinds": [1]}) == []
    await client.close()


async def test_listed_kinds_require_auth(start_relay: RelayFactory) -> None:
    relay = await start_relay(auth_required_kinds=(7,))
    client = await connect(relay)
    reaction = ALICE.sign(kind=7, content="+")
    assert (await client.publish(reaction))[3].startswith("auth-required: ")
    assert (await client.publish(ALICE.sign(kind=1)))[2] is True
    with pytest.raises(SubscriptionClosed, match="auth-required"):
        await client.req("s", {"kinds": [7]})
    await client.auth(ALICE, public_url(relay))
    assert (await client.publish(reaction))[2] is True
    assert [e["id"] for e in await client.req("s", {"kinds": [7]})] == [reaction["id"]]
    await client.close()


async def test_auth_events_are_not_published(relay: RelayServer) -> None:
    client = await connect(relay)
    watcher = await connect(relay)
    await watcher.req("all", {})
    event = ALICE.sign(22242, "", [["relay", public_url(relay)], ["challenge", "x"]])
    reply = await client.publish(event)
    assert reply[2] is False
    assert reply[3].startswith("invalid: ")
    await watcher.expect_silence()
    await client.close()
    await watcher.close()


# --- direct messages ------------------------------------------------------------------


async def publish_dms(relay: RelayServer) -> dict[str, dict[str, Any]]:
    client = await connect(relay)
    dms = {
        "alice_to_bob": ALICE.sign(kind=4, content="?iv=x", tags=[["p", BOB.pubkey]]),
        "wrap_to_bob": CAROL.sign(kind=1059, content="sealed", tags=[["p", BOB.pubkey]]),
        "carol_to_alice": CAROL.sign(kind=4, content="?iv=y", tags=[["p", ALICE.pubkey]]),
        "note": ALICE.sign(kind=1, content="public", tags=[["p", BOB.pubkey]]),
    }
    for event in dms.values():
        assert (await client.publish(event))[2] is True
    await client.close()
    return dms


async def test_dm_request_without_auth_is_closed(relay: RelayServer) -> None:
    await publish_dms(relay)
    client = await connect(relay)
    for kinds in ([4], [1, 1059], [14]):
        await client.send(["REQ", "dms", {"kinds": kinds}])
        reply = await expect_auth_then(client)
        assert reply[:2] == ["CLOSED", "dms"]
        assert reply[2].startswith("auth-required: ")
    await client.close()


async def test_filters_without_kinds_leave_out_private_events(relay: RelayServer) -> None:
    dms = await publish_dms(relay)
    client = await connect(relay)
    ids = [e["id"] for e in dms.values()]
    assert [e["id"] for e in await client.req("s", {"ids": ids})] == [dms["note"]["id"]]
    got = await client.req("p", {"#p": [BOB.pubkey]})
    assert [e["id"] for e in got] == [dms["note"]["id"]]
    await client.close()


async def test_authenticated_parties_read_only_their_dms(relay: RelayServer) -> None:
    dms = await publish_dms(relay)
    bob = await connect(relay)
    await bob.auth(BOB, public_url(relay))
    got = {e["id"] for e in await bob.req("dms", {"kinds": [4, 1059]})}
    assert got == {dms["alice_to_bob"]["id"], dms["wrap_to_bob"]["id"]}
    alice = await connect(relay)
    await alice.auth(ALICE, public_url(relay))
    got = {e["id"] for e in await alice.req("dms", {"kinds": [4, 1059]})}
    assert got == {dms["alice_to_bob"]["id"], dms["carol_to_alice"]["id"]}
    stranger = await connect(relay)
    await stranger.auth(Keys(), public_url(relay))
    assert await stranger.req("dms", {"kinds": [4, 1059]}) == []
    for c in (bob, alice, stranger):
        await c.close()


async def test_several_keys_on_one_connection(relay: RelayServer) -> None:
    dms = await publish_dms(relay)
    client = await connect(relay)
    assert (await client.auth(BOB, public_url(relay)))[2] is True
    assert (await client.auth(CAROL, public_url(relay)))[2] is True
    got = {e["id"] for e in await client.req("dms", {"kinds": [4, 1059]})}
    assert got == {dms["alice_to_bob"]["id"], dms["wrap_to_bob"]["id"], dms["carol_to_alice"]["id"]}
    await client.close()


async def test_live_dms_go_only_to_their_parties(relay: RelayServer) -> None:
    bob, stranger, anonymous = await connect(relay), await connect(relay), await connect(relay)
    await bob.auth(BOB, public_url(relay))
    await stranger.auth(CAROL, public_url(relay))
    assert await bob.req("live", {"kinds": [4]}) == []
    assert await stranger.req("live", {"kinds": [4]}) == []
    assert await anonymous.req("live", {}) == []
    dm = ALICE.sign(kind=4, content="?iv=z", tags=[["p", BOB.pubkey]])
    sender = await connect(relay)
    assert (await sender.publish(dm))[2] is True
    assert await bob.recv() == ["EVENT", "live", dm]
    await stranger.expect_silence()
    await anonymous.expect_silence()
    for c in (bob, stranger, anonymous, sender):
        await c.close()


async def test_dm_privacy_can_be_switched_off(start_relay: RelayFactory) -> None:
    relay = await start_relay(dm_privacy=False)
    dms = await publish_dms(relay)
    client = await connect(relay)
    got = {e["id"] for e in await client.req("dms", {"kinds": [4]})}
    assert got == {dms["alice_to_bob"]["id"], dms["carol_to_alice"]["id"]}
    await client.close()


# --- NIP-70 protected events ----------------------------------------------------------


async def test_protected_event_from_its_authenticated_author(relay: RelayServer) -> None:
    client = await connect(relay)
    protected = ALICE.sign(kind=1, content="only from me", tags=[["-"]])
    await client.send(["EVENT", protected])
    reply = await expect_auth_then(client)
    assert reply[:3] == ["OK", protected["id"], False]
    assert reply[3].startswith("auth-required: ")
    await client.auth(BOB, public_url(relay))
    reply = await client.publish(protected)
    assert reply[2] is False
    assert reply[3].startswith("restricted: ")
    await client.auth(ALICE, public_url(relay))
    assert await client.publish(protected) == ["OK", protected["id"], True, ""]
    reader = await connect(relay)
    assert [e["id"] for e in await reader.req("s", {"ids": [protected["id"]]})] == [protected["id"]]
    await client.close()
    await reader.close()


@pytest.mark.parametrize("tag", [["-"], ["-", ""], ["-", "anything"]])
async def test_protected_events_refused_when_auth_is_off(
    start_relay: RelayFactory, tag: list[str]
) -> None:
    relay = await start_relay(auth_enabled=False)
    client = await connect(relay)
    reply = await client.publish(ALICE.sign(tags=[tag]))
    assert reply[2] is False
    assert reply[3].startswith("blocked: ")
    await client.close()


async def test_a_repost_embedding_a_protected_event_is_refused(relay: RelayServer) -> None:
    protected = ALICE.sign(kind=1, content="only from me", tags=[["-"]])
    client = await connect(relay)
    await client.recv_any()  # the challenge
    assert (await client.auth(ALICE, public_url(relay)))[2] is True
    assert (await client.publish(protected))[2] is True
    embedded = BOB.sign(
        kind=6, content=orjson.dumps(protected).decode(), tags=[["e", protected["id"]]]
    )
    reply = await client.publish(embedded)
    assert reply[:3] == ["OK", embedded["id"], False]
    assert reply[3].startswith("blocked: ")
    empty = BOB.sign(kind=6, content="", tags=[["e", protected["id"]]])
    assert await client.publish(empty) == ["OK", empty["id"], True, ""]
    reader = await connect(relay)
    found = await reader.req("s", {"kinds": [6], "authors": [BOB.pubkey]})
    assert [e["id"] for e in found] == [empty["id"]]
    await client.close()
    await reader.close()
