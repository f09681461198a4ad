"""Interop with rust-nostr through its Python bindings (`nostr_sdk`, 0.45).

The SDK's client runs its networking on its own Rust runtime; its async methods are
awaited on the test's event loop, which the in-process relay shares. Every await on the
SDK is bounded by asyncio.wait_for, and every client is shut down after the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import nostr_sdk as sdk
import pytest

from relay.net.server import RelayServer
from tests.conftest import fetch_by_ids, url_of

T = TypeVar("T")
STEP = 10.0  # seconds, bound on any single wait

SdkClientFactory = Callable[[], Awaitable[Any]]


async def bounded(awaitable: Awaitable[T], what: str, seconds: float = STEP) -> T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        pytest.fail(f"nostr-sdk: {what} did not finish within {seconds:.1f} s")


@pytest.fixture
def relay_url(relay: RelayServer) -> Any:
    return sdk.RelayUrl.parse(url_of(relay))


@pytest.fixture
async def sdk_client(relay_url: Any) -> AsyncIterator[SdkClientFactory]:
    """Make nostr-sdk clients connected to the relay; all are shut down afterwards."""
    made: list[Any] = []

    async def factory() -> Any:
        client = sdk.ClientBuilder().build()
        made.append(client)
        await bounded(client.add_relay(relay_url), "add_relay")
        output = await bounded(client.try_connect(timedelta(seconds=5)), "try_connect")
        assert [str(u) for u in output.success] == [str(relay_url)], output.failed
        return client

    yield factory
    for client in made:
        await bounded(client.shutdown(), "shutdown")


def note(keys: Any, content: str, topic: str, created_at: int | None = None) -> Any:
    """A signed kind-1 event tagged ["t", topic]."""
    builder = sdk.EventBuilder(sdk.Kind(1), content).tags([sdk.Tag.hashtag(topic)])
    if created_at is not None:
        builder = builder.custom_created_at(sdk.Timestamp.from_secs(created_at))
    return builder.finalize(keys)


def as_dict(event: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(event.as_json())
    return result


def unique_topic() -> str:
    # Lowercase: the SDK lowercases hashtags in tags.
    return f"sdk{time.time_ns()}"


async def relay_messages(stream: Any, until: Callable[[Any], bool]) -> list[Any]:
    """Relay messages from a notification stream, up to and including the first `until`."""
    seen: list[Any] = []
    deadline = time.monotonic() + STEP
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"nostr-sdk: awaited message not seen; got {[m.as_json() for m in seen]}")
        item = await bounded(stream.next(), "notification", remaining)
        assert item is not None, "notification stream ended"
        if item.is_message():
            seen.append(item.message)
            if until(item.message.as_enum()):
                return seen


def is_eose(sub_id: str) -> Callable[[Any], bool]:
    return lambda m: m.is_end_of_stored_events() and m.subscription_id == sub_id


def frames_for(messages: list[Any], sub_id: str) -> list[list[Any]]:
    """The messages of one subscription as NIP-01 frames, in order of arrival."""
    frames = [json.loads(m.as_json()) for m in messages]
    return [f for f in frames if f[0] in ("EVENT", "EOSE", "CLOSED") and f[1] == sub_id]


async def test_published_event_is_accepted_and_stored(
    sdk_client: SdkClientFactory, relay_url: Any, relay: RelayServer
) -> None:
    client = await sdk_client()
    event = note(sdk.Keys.generate(), "hello from nostr-sdk", unique_topic())
    output = await bounded(client.send_event(event), "send_event")
    assert output.id.to_hex() == event.id().to_hex()
    assert dict(output.failed) == {}
    assert [str(u) for u in output.success] == [str(relay_url)]
    assert await fetch_by_ids(url_of(relay), event.id().to_hex()) == [as_dict(event)]


async def test_subscription_gets_stored_event_then_eose(
    sdk_client: SdkClientFactory, relay_url: Any
) -> None:
    topic = unique_topic()
    event = note(sdk.Keys.generate(), "stored", topic)
    writer, reader = await sdk_client(), await sdk_client()
    output = await bounded(writer.send_event(event), "send_event")
    assert dict(output.failed) == {}

    notifications = reader.notifications()
    target = sdk.ReqTarget.single(relay_url, [sdk.Filter().kind(sdk.Kind(1)).hashtag(topic)])
    subscribed = await bounded(reader.subscribe(target, "stored"), "subscribe")
    assert dict(subscribed.failed) == {}
    messages = await relay_messages(notifications, is_eose("stored"))
    assert frames_for(messages, "stored") == [
        ["EVENT", "stored", as_dict(event)],
        ["EOSE", "stored"],
    ]

    # The short-lived form gives the same stored event.
    fetched = await bounded(
        reader.fetch_events(
            sdk.ReqTarget.single(relay_url, [sdk.Filter().id(event.id())]),
            timedelta(seconds=5),
        ),
        "fetch_events",
    )
    assert [as_dict(e) for e in fetched] == [as_dict(event)]


async def test_live_event_from_another_client_arrives_after_eose(
    sdk_client: SdkClientFactory, relay_url: Any, relay: RelayServer
) -> None:
    topic = unique_topic()
    reader, writer = await sdk_client(), await sdk_client()
    notifications = reader.notifications()
    target = sdk.ReqTarget.single(relay_url, [sdk.Filter().kind(sdk.Kind(1)).hashtag(topic)])
    await bounded(reader.subscribe(target, "live"), "subscribe")
    before = await relay_messages(notifications, is_eose("live"))
    assert frames_for(before, "live") == [["EOSE", "live"]]

    event = note(sdk.Keys.generate(), "live", topic)
    output = await bounded(writer.send_event(event), "send_event")
    assert dict(output.failed) == {}

    def is_live_event(m: Any) -> bool:
        return bool(m.is_event_msg() and m.subscription_id == "live")

    after = await relay_messages(notifications, is_live_event)
    assert frames_for(after, "live") == [["EVENT", "live", as_dict(event)]]
    await bounded(reader.unsubscribe("live"), "unsubscribe")
    assert await fetch_by_ids(url_of(relay), event.id().to_hex()) == [as_dict(event)]


async def test_future_event_is_rejected_with_the_relays_reason(
    sdk_client: SdkClientFactory, relay_url: Any, relay: RelayServer
) -> None:
    client = await sdk_client()
    event = note(sdk.Keys.generate(), "from the future", unique_topic(), int(time.time()) + 3600)
    output = await bounded(client.send_event(event), "send_event")
    assert list(output.success) == []
    assert {str(u): reason for u, reason in output.failed.items()} == {
        str(relay_url): "invalid: created_at is too far in the future"
    }
    assert await fetch_by_ids(url_of(relay), event.id().to_hex()) == []


async def test_bad_signature_is_rejected_with_the_relays_reason(
    sdk_client: SdkClientFactory, relay_url: Any, relay: RelayServer
) -> None:
    client = await sdk_client()
    signed = as_dict(note(sdk.Keys.generate(), "tampered", unique_topic()))
    flipped = "1" if signed["sig"][-1] == "0" else "0"
    tampered = sdk.Event.from_json(json.dumps({**signed, "sig": signed["sig"][:-1] + flipped}))
    assert not tampered.verify()

    # Client.send_event checks signatures itself; a single Relay handle sends as given.
    with pytest.raises(sdk.NostrSdkError, match="Invalid signature"):
        await bounded(client.send_event(tampered), "send_event")
    relay_handle = await bounded(client.relay(relay_url), "relay")
    assert relay_handle is not None

    notifications = client.notifications()
    with pytest.raises(sdk.NostrSdkError) as refused:
        await bounded(
            relay_handle.send_event(tampered, True, timedelta(seconds=5)), "Relay.send_event"
        )
    assert "invalid: bad signature" in str(refused.value)

    def is_ok(m: Any) -> bool:
        return bool(m.is_ok())

    messages = await relay_messages(notifications, is_ok)
    assert json.loads(messages[-1].as_json()) == [
        "OK",
        signed["id"],
        False,
        "invalid: bad signature",
    ]
    assert await fetch_by_ids(url_of(relay), signed["id"]) == []


async def test_client_authenticates_by_itself_and_reads_its_dms(
    relay: RelayServer, relay_url: Any
) -> None:
    """NIP-42: the SDK answers the relay's challenge with its signer and gets its DMs; a
    client without a signer is refused them."""
    sender, recipient = sdk.Keys.generate(), sdk.Keys.generate()
    dm = (
        sdk.EventBuilder(sdk.Kind(4), "ciphertext?iv=AAAA")
        .tags([sdk.Tag.public_key(recipient.public_key())])
        .finalize(sender)
    )
    made: list[Any] = []
    try:
        writer = sdk.ClientBuilder().build()
        made.append(writer)
        await bounded(writer.add_relay(relay_url), "add_relay")
        await bounded(writer.try_connect(timedelta(seconds=5)), "try_connect")
        output = await bounded(writer.send_event(dm), "send_event")
        assert [str(u) for u in output.success] == [str(relay_url)], output.failed
        dm_filter = [sdk.Filter().kind(sdk.Kind(4)).pubkey(recipient.public_key())]
        anonymous = await bounded(
            writer.fetch_events(sdk.ReqTarget.single(relay_url, dm_filter), timedelta(seconds=5)),
            "fetch_events without auth",
        )
        assert list(anonymous) == []

        # The SDK calls the Python signer back from its own threads: on this loop.
        sdk.uniffi_set_event_loop(asyncio.get_running_loop())
        authenticator = sdk.SignerAuthenticator(recipient)
        reader = sdk.ClientBuilder().authenticator(authenticator).build()
        made.append(reader)
        await bounded(reader.add_relay(relay_url), "add_relay")
        await bounded(reader.try_connect(timedelta(seconds=5)), "try_connect")
        events = await bounded(
            reader.fetch_events(sdk.ReqTarget.single(relay_url, dm_filter), timedelta(seconds=5)),
            "fetch_events with auth",
        )
        assert [as_dict(e) for e in events] == [as_dict(dm)]
    finally:
        for client in made:
            await bounded(client.shutdown(), "shutdown")
        sdk.uniffi_set_event_loop(None)


@pytest.mark.parametrize("direction", ["DOWN", "UP", "BOTH"])
async def test_client_sync_reconciles_with_the_relay_by_negentropy(
    relay_url: Any, relay: RelayServer, direction: str, tmp_path: Path
) -> None:
    """rust-nostr's NIP-77 `Client.sync`: what it lacks comes down, what we lack goes up."""
    # The default client store only tracks ids; sync compares a real one. The SDK calls a
    # store given from Python back on this loop (else: 'timeout' once events come down).
    sdk.uniffi_set_event_loop(asyncio.get_running_loop())
    database = await bounded(sdk.NostrLmdb.open(str(tmp_path / "lmdb")), "open lmdb")
    client = sdk.ClientBuilder().database(database).build()
    try:
        await _sync_both_sides(client, database, relay_url, relay, direction)
    finally:
        await bounded(client.shutdown(), "shutdown")
        sdk.uniffi_set_event_loop(None)


async def _sync_both_sides(
    client: Any, database: Any, relay_url: Any, relay: RelayServer, direction: str
) -> None:
    await bounded(client.add_relay(relay_url), "add_relay")
    await bounded(client.try_connect(timedelta(seconds=5)), "try_connect")
    keys = sdk.Keys.generate()
    topic = unique_topic()
    now = int(time.time())
    shared = [note(keys, f"shared {n}", topic, now - 300 + n) for n in range(20)]
    only_relay = [note(keys, f"relay {n}", topic, now - 200 + n) for n in range(15)]
    only_client = [note(keys, f"client {n}", topic, now - 100 + n) for n in range(10)]
    for event in shared + only_relay:
        output = await bounded(client.send_event(event), "send_event")
        assert dict(output.failed) == {}
    await bounded(database.wipe(), "wipe")  # send_event keeps a copy in the client's store
    for event in shared + only_client:
        await bounded(database.save_event(event), "save_event")

    options = sdk.SyncOptions().direction(getattr(sdk.SyncDirection, direction))
    hashtag = sdk.Filter().hashtag(topic)
    output = await bounded(client.sync(hashtag, opts=options), "sync", 30)

    assert dict(output.failed) == {}
    report = output.report
    down, up = direction in ("DOWN", "BOTH"), direction in ("UP", "BOTH")
    got = {i.to_hex() for i in report.received}
    assert got == (ids_of(only_relay) if down else set())
    assert {i.to_hex() for i in report.sent} == (ids_of(only_client) if up else set())
    on_relay = await fetch_by_ids(url_of(relay), *ids_of(only_client))
    assert {e["id"] for e in on_relay} == (ids_of(only_client) if up else set())
    for event in only_relay:
        found = await bounded(database.event_by_id(event.id()), "event_by_id")
        assert (found is not None) is down


def ids_of(events: list[Any]) -> set[str]:
    return {e.id().to_hex() for e in events}
