"""NIP-09 deletion requests against the running relay."""

from __future__ import annotations

import time
from typing import Any

from relay.net.server import RelayServer
from tests.conftest import url_of
from tests.nostr import Client, Keys

DELETED_PREFIX = "blocked: "


def deletion(keys: Keys, tags: list[list[str]], created_at: int | None = None) -> dict[str, Any]:
    return keys.sign(kind=5, content="published by accident", tags=tags, created_at=created_at)


async def ids_of(client: Client, *filters: dict[str, Any]) -> set[str]:
    return {event["id"] for event in await client.req("check", *filters)}


async def test_e_tags_delete_the_authors_events(client: Client, keys: Keys) -> None:
    base = int(time.time()) - 100
    first, second, kept = (keys.sign(content=str(i), created_at=base + i) for i in range(3))
    for event in (first, second, kept):
        assert (await client.publish(event))[2] is True
    request = deletion(keys, [["e", first["id"]], ["e", second["id"]], ["k", "1"]])
    assert await client.publish(request) == ["OK", request["id"], True, ""]
    assert await ids_of(client, {"kinds": [1], "authors": [keys.pubkey]}) == {kept["id"]}
    assert await ids_of(client, {"ids": [first["id"], second["id"]]}) == set()


async def test_deletion_request_itself_is_stored_and_served(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    target = keys.sign()
    await client.publish(target)
    listener = await Client.connect(url_of(relay))
    assert await listener.req("deletions", {"kinds": [5]}) == []
    request = deletion(keys, [["e", target["id"]]])
    assert (await client.publish(request))[2] is True
    assert await listener.recv() == ["EVENT", "deletions", request]
    await listener.close()
    assert await client.req("d", {"kinds": [5], "authors": [keys.pubkey]}) == [request]
    assert await client.req("e", {"#e": [target["id"]]}) == [request]


async def test_deletion_by_another_pubkey_deletes_nothing(client: Client, keys: Keys) -> None:
    target = keys.sign(content="mine")
    await client.publish(target)
    stranger = Keys()
    # Requested before the event exists as well: that must not block the real author later.
    future_target = keys.sign(content="not yet published", created_at=target["created_at"] - 1)
    request = deletion(stranger, [["e", target["id"]], ["e", future_target["id"]]])
    assert (await client.publish(request))[2] is True
    assert await client.publish(future_target) == ["OK", future_target["id"], True, ""]
    assert await ids_of(client, {"authors": [keys.pubkey]}) == {
        target["id"],
        future_target["id"],
    }
    # The stranger's request is an ordinary stored event all the same.
    assert await ids_of(client, {"kinds": [5]}) == {request["id"]}


async def test_deleted_event_published_again_is_refused(client: Client, keys: Keys) -> None:
    target = keys.sign()
    await client.publish(target)
    await client.publish(deletion(keys, [["e", target["id"]]]))
    again = await client.publish(target)
    assert again[:3] == ["OK", target["id"], False]
    assert again[3].startswith(DELETED_PREFIX)
    assert await ids_of(client, {"ids": [target["id"]]}) == set()


async def test_deletion_arriving_before_its_target_blocks_it(client: Client, keys: Keys) -> None:
    target = keys.sign(content="late")
    await client.publish(deletion(keys, [["e", target["id"]]]))
    refused = await client.publish(target)
    assert refused[2] is False
    assert refused[3].startswith(DELETED_PREFIX)
    assert await ids_of(client, {"ids": [target["id"]]}) == set()


async def test_deleted_event_is_not_broadcast_when_republished(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    target = keys.sign()
    await client.publish(target)
    await client.publish(deletion(keys, [["e", target["id"]]]))
    listener = await Client.connect(url_of(relay))
    assert await listener.req("live", {"authors": [keys.pubkey], "kinds": [1]}) == []
    assert (await client.publish(target))[2] is False
    await listener.expect_silence()
    await listener.close()


async def test_malformed_e_tags_are_ignored(client: Client, keys: Keys) -> None:
    target = keys.sign()
    await client.publish(target)
    request = deletion(keys, [["e", "not hex"], ["e"], ["e", "ab"], ["e", target["id"]]])
    assert (await client.publish(request))[2] is True
    assert await ids_of(client, {"ids": [target["id"]]}) == set()


async def test_a_tag_deletes_addressable_versions_up_to_its_created_at(
    client: Client, keys: Keys
) -> None:
    now = int(time.time())
    address = f"30023:{keys.pubkey}:post"
    old = keys.sign(kind=30023, content="v1", tags=[["d", "post"]], created_at=now - 60)
    other_d = keys.sign(kind=30023, content="x", tags=[["d", "other"]], created_at=now - 60)
    for event in (old, other_d):
        assert (await client.publish(event))[2] is True
    request = deletion(keys, [["a", address], ["k", "30023"]], created_at=now - 30)
    assert (await client.publish(request))[2] is True
    assert await ids_of(client, {"kinds": [30023], "authors": [keys.pubkey]}) == {other_d["id"]}

    # Versions dated up to the deletion stay deleted, whenever they arrive.
    for created_at in (now - 45, now - 30):
        stale = keys.sign(kind=30023, content="v", tags=[["d", "post"]], created_at=created_at)
        refused = await client.publish(stale)
        assert refused[2] is False
        assert refused[3].startswith(DELETED_PREFIX)
    assert (await client.publish(old))[2] is False

    # A version dated after the deletion request is a new event and is kept.
    newer = keys.sign(kind=30023, content="v2", tags=[["d", "post"]], created_at=now - 10)
    assert await client.publish(newer) == ["OK", newer["id"], True, ""]
    assert await client.req("a", {"kinds": [30023], "#d": ["post"]}) == [newer]


async def test_a_tag_does_not_delete_versions_newer_than_the_request(
    client: Client, keys: Keys
) -> None:
    now = int(time.time())
    current = keys.sign(kind=30023, tags=[["d", "post"]], created_at=now - 5)
    await client.publish(current)
    request = deletion(keys, [["a", f"30023:{keys.pubkey}:post"]], created_at=now - 20)
    assert (await client.publish(request))[2] is True
    assert await client.req("a", {"kinds": [30023], "authors": [keys.pubkey]}) == [current]


async def test_a_tag_of_another_pubkey_deletes_nothing(client: Client, keys: Keys) -> None:
    now = int(time.time())
    article = keys.sign(kind=30023, tags=[["d", "post"]], created_at=now - 20)
    await client.publish(article)
    stranger = Keys()
    request = deletion(stranger, [["a", f"30023:{keys.pubkey}:post"]], created_at=now - 10)
    assert (await client.publish(request))[2] is True
    assert await client.req("a", {"kinds": [30023]}) == [article]
    # Nor does it block the author's later versions dated before the stranger's request.
    later = keys.sign(kind=30023, content="v2", tags=[["d", "post"]], created_at=now - 15)
    assert (await client.publish(later))[2] is True
    assert await client.req("b", {"kinds": [30023]}) == [later]


async def test_a_tag_deletes_a_replaceable_event(client: Client, keys: Keys) -> None:
    now = int(time.time())
    metadata = keys.sign(kind=0, content='{"name":"old"}', created_at=now - 30)
    relays = keys.sign(kind=10002, tags=[["r", "wss://relay.example"]], created_at=now - 30)
    for event in (metadata, relays):
        await client.publish(event)
    request = deletion(keys, [["a", f"0:{keys.pubkey}:"]], created_at=now - 20)
    assert (await client.publish(request))[2] is True
    assert await ids_of(client, {"authors": [keys.pubkey], "kinds": [0, 10002]}) == {relays["id"]}
    older = keys.sign(kind=0, content='{"name":"older"}', created_at=now - 25)
    assert (await client.publish(older))[3].startswith(DELETED_PREFIX)
    newer = keys.sign(kind=0, content='{"name":"new"}', created_at=now - 10)
    assert (await client.publish(newer))[2] is True
    assert await client.req("m", {"authors": [keys.pubkey], "kinds": [0]}) == [newer]


async def test_e_tag_deletes_one_version_of_an_addressable_event(
    client: Client, keys: Keys
) -> None:
    now = int(time.time())
    version = keys.sign(kind=30023, tags=[["d", "post"]], created_at=now - 20)
    await client.publish(version)
    assert (await client.publish(deletion(keys, [["e", version["id"]]])))[2] is True
    assert await client.req("a", {"kinds": [30023]}) == []
    # Only that event is gone: the address takes new versions.
    newer = keys.sign(kind=30023, content="v2", tags=[["d", "post"]], created_at=now - 10)
    assert (await client.publish(newer))[2] is True
    assert await client.req("b", {"kinds": [30023]}) == [newer]


async def test_deleting_a_deletion_request_has_no_effect(client: Client, keys: Keys) -> None:
    """NIP-09: "Publishing a deletion request event against a deletion request has no effect"."""
    now = int(time.time())
    target = keys.sign(created_at=now - 30)
    await client.publish(target)
    first = deletion(keys, [["e", target["id"]]], created_at=now - 20)
    await client.publish(first)
    undo = deletion(keys, [["e", first["id"]]], created_at=now - 10)
    assert (await client.publish(undo))[2] is True
    # Both requests are still served, and the target stays deleted.
    assert await ids_of(client, {"kinds": [5], "authors": [keys.pubkey]}) == {
        first["id"],
        undo["id"],
    }
    assert await ids_of(client, {"ids": [target["id"]]}) == set()
    assert (await client.publish(target))[2] is False


async def test_deletion_request_named_before_it_arrives_is_still_stored(
    client: Client, keys: Keys
) -> None:
    target = keys.sign(created_at=int(time.time()) - 30)
    await client.publish(target)
    first = deletion(keys, [["e", target["id"]]])
    # A request naming `first` before `first` itself reaches the relay.
    await client.publish(deletion(keys, [["e", first["id"]]], created_at=first["created_at"] - 1))
    assert await client.publish(first) == ["OK", first["id"], True, ""]
    assert await ids_of(client, {"ids": [first["id"]]}) == {first["id"]}
    assert await ids_of(client, {"ids": [target["id"]]}) == set()


async def test_the_recipient_of_a_gift_wrap_deletes_it(relay: RelayServer) -> None:
    wrapper, recipient, stranger = Keys(), Keys(), Keys()
    wrap = wrapper.sign(kind=1059, content="sealed", tags=[["p", recipient.pubkey]])
    client = await Client.connect(url_of(relay))
    assert (await client.publish(wrap))[2] is True
    assert (await client.auth(recipient, f"ws://127.0.0.1:{relay.port}/"))[2] is True
    assert (await client.publish(deletion(stranger, [["e", wrap["id"]]])))[2] is True
    assert await ids_of(client, {"kinds": [1059]}) == {wrap["id"]}
    assert (await client.publish(deletion(recipient, [["e", wrap["id"]]])))[2] is True
    assert await ids_of(client, {"kinds": [1059]}) == set()
    reply = await client.publish(wrap)
    assert reply[2] is False
    assert reply[3].startswith(DELETED_PREFIX)
    assert await ids_of(client, {"kinds": [1059]}) == set()
    await client.close()
