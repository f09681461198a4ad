"""Every limitation the relay advertises in NIP-11 is the one it enforces.

Each test reads the advertised value from the running relay's NIP-11 document and probes
both sides of it. `COVERAGE` at the end maps each advertised name to its test, and a test
fails when the relay advertises a limitation no test here covers.
"""

from __future__ import annotations

import importlib
import secrets
import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay.net.server import TRANSPORT_SIZE_FACTOR, RelayServer
from tests.conftest import RelayFactory, url_of
from tests.http_client import fetch_limitation
from tests.nostr import Client, Keys, SubscriptionClosed


async def advertised(relay: RelayServer, name: str, configured: Any = None) -> Any:
    """The advertised value of one limitation; equal to the configured one when given."""
    value = (await fetch_limitation(relay))[name]
    if configured is not None:
        assert value == configured, f"{name}: advertised {value}, configured {configured}"
    return value


def event_frame_of_size(keys: Keys, size: int, char: str = "x") -> str:
    """An `["EVENT", event]` text frame of exactly `size` UTF-8 bytes, padded in content."""
    width = len(char.encode())
    base = len(orjson.dumps(["EVENT", keys.sign(content="")]))
    padding, rest = divmod(size - base, width)
    content = char * padding + "x" * rest
    frame = orjson.dumps(["EVENT", keys.sign(content=content)])
    assert len(frame) == size
    return frame.decode()


async def assert_alive(client: Client, keys: Keys) -> None:
    event = keys.sign(content=f"still here {secrets.token_hex(8)}")
    assert await client.publish(event) == ["OK", event["id"], True, ""]


# --- max_message_length -------------------------------------------------------------------


async def test_max_message_length(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_message_length=4096)
    limit = await advertised(relay, "max_message_length", 4096)
    client = await Client.connect(url_of(relay))
    notice = ["NOTICE", f"invalid: message is longer than {limit} bytes"]

    at_limit = event_frame_of_size(keys, limit)
    await client.send_raw(at_limit)
    assert await client.recv() == ["OK", orjson.loads(at_limit)[1]["id"], True, ""]

    for size in (limit + 1, limit * TRANSPORT_SIZE_FACTOR):
        over = event_frame_of_size(keys, size)
        await client.send_raw(over)
        assert await client.recv() == notice
        assert await client.req("check", {"ids": [orjson.loads(over)[1]["id"]]}) == []
        await assert_alive(client, keys)

    big_req = orjson.dumps(["REQ", "big", {"authors": [keys.pubkey] * (limit // 60)}])
    assert len(big_req) > limit
    await client.send_raw(big_req.decode())
    assert await client.recv() == notice
    await assert_alive(client, keys)
    await client.close()


async def test_frame_beyond_the_transport_limit_closes_with_1009(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(max_message_length=4096)
    limit = await advertised(relay, "max_message_length", 4096)
    bystander = await Client.connect(url_of(relay))
    assert await bystander.req("live", {"authors": [keys.pubkey]}) == []
    client = await Client.connect(url_of(relay))
    await client.send_raw(event_frame_of_size(keys, limit * TRANSPORT_SIZE_FACTOR + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    # Nobody else is affected.
    event = keys.sign(content="after the big one")
    publisher = await Client.connect(url_of(relay))
    assert (await publisher.publish(event))[2] is True
    assert await bystander.recv() == ["EVENT", "live", event]
    await publisher.close()
    await bystander.close()


async def test_max_message_length_counts_utf8_bytes(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_message_length=4096)
    limit = await advertised(relay, "max_message_length", 4096)
    frame = event_frame_of_size(keys, limit + 300, char="\u20ac")  # 3 bytes each
    assert len(frame) < limit < len(frame.encode())
    client = await Client.connect(url_of(relay))
    await client.send_raw(frame)
    assert await client.recv() == ["NOTICE", f"invalid: message is longer than {limit} bytes"]
    await client.close()


# --- max_subscriptions --------------------------------------------------------------------


async def test_max_subscriptions(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_subscriptions=3)
    limit = await advertised(relay, "max_subscriptions", 3)
    client = await Client.connect(url_of(relay))
    filters: list[dict[str, Any]] = [{"kinds": [1]}, {"authors": [keys.pubkey]}, {"#t": ["limits"]}]
    for n in range(limit):
        assert await client.req(f"sub{n}", filters[n]) == []
    for _ in range(2):
        with pytest.raises(SubscriptionClosed) as refused:
            await client.req("extra", {"kinds": [1]})
        assert str(refused.value) == f"restricted: at most {limit} open subscriptions"
    # Replacing an open subscription does not count as one more.
    assert await client.req("sub0", {"kinds": [1]}) == []

    publisher = await Client.connect(url_of(relay))
    event = keys.sign(kind=1, tags=[["t", "limits"]])
    await publisher.publish(event)
    got = [await client.recv() for _ in range(limit)]
    assert sorted(frame[1] for frame in got) == [f"sub{n}" for n in range(limit)]
    assert all(frame == ["EVENT", frame[1], event] for frame in got)
    await client.expect_silence()
    await publisher.close()
    await client.close()


# --- max_filters --------------------------------------------------------------------------


async def test_max_filters(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_filters=2, max_subscriptions=2)
    limit = await advertised(relay, "max_filters", 2)
    client = await Client.connect(url_of(relay))
    event = keys.sign()
    await client.publish(event)
    assert await client.req("ok", *[{"ids": [event["id"]]}] * limit) == [event]
    await client.send(["REQ", "over", *[{"kinds": [n]} for n in range(limit + 1)]])
    assert await client.recv() == [
        "CLOSED",
        "over",
        f"invalid: a REQ may hold at most {limit} filters",
    ]
    # The refused REQ took no subscription slot; the connection goes on.
    assert await client.req("second", {"ids": [event["id"]]}) == [event]
    await assert_alive(client, keys)
    await client.close()


async def test_refused_replacement_closes_the_subscription(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(max_filters=2)
    limit = await advertised(relay, "max_filters", 2)
    client = await Client.connect(url_of(relay))
    assert await client.req("sub", {"kinds": [1]}) == []
    with pytest.raises(SubscriptionClosed):
        await client.req("sub", *[{"kinds": [n]} for n in range(limit + 1)])
    publisher = await Client.connect(url_of(relay))
    await publisher.publish(keys.sign(kind=1))
    await publisher.close()
    # NIP-01: CLOSED ends the subscription on the relay's side.
    await client.expect_silence()
    await client.close()


# --- max_limit and default_limit ----------------------------------------------------------


async def publish_history(client: Client, keys: Keys, count: int) -> list[dict[str, Any]]:
    base = int(time.time()) - 1000
    events = [keys.sign(content=str(i), created_at=base + i) for i in range(count)]
    for event in events:
        assert (await client.publish(event))[2] is True
    return events[::-1]  # newest first


async def test_max_limit_and_default_limit_apply_per_filter(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(max_limit=3, default_limit=2)
    max_limit = await advertised(relay, "max_limit", 3)
    default_limit = await advertised(relay, "default_limit", 2)
    client = await Client.connect(url_of(relay))
    other = Keys()
    mine = await publish_history(client, keys, 6)
    theirs = await publish_history(client, other, 6)
    got = await client.req(
        "two", {"authors": [keys.pubkey], "limit": 1000}, {"authors": [other.pubkey]}
    )
    assert {e["id"] for e in got} == {e["id"] for e in mine[:max_limit]} | {
        e["id"] for e in theirs[:default_limit]
    }
    # A limit under the maximum is kept as asked.
    assert await client.req("one", {"authors": [keys.pubkey], "limit": 1}) == mine[:1]
    await client.close()


async def test_default_limit_is_clamped_to_max_limit(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_limit=2, default_limit=10)
    max_limit = await advertised(relay, "max_limit", 2)
    await advertised(relay, "default_limit", 10)
    client = await Client.connect(url_of(relay))
    history = await publish_history(client, keys, 5)
    assert await client.req("s", {"authors": [keys.pubkey]}) == history[:max_limit]
    await client.close()


# --- max_subid_length ---------------------------------------------------------------------


async def test_max_subid_length(relay: RelayServer, client: Client, keys: Keys) -> None:
    limit = await advertised(relay, "max_subid_length")
    event = keys.sign()
    await client.publish(event)
    longest = "s" * limit
    assert await client.req(longest, {"ids": [event["id"]]}) == [event]
    too_long = "s" * (limit + 1)
    await client.send(["REQ", too_long, {"ids": [event["id"]]}])
    assert await client.recv() == [
        "CLOSED",
        too_long,
        f"invalid: subscription id is longer than {limit}",
    ]
    await client.expect_silence()
    await assert_alive(client, keys)


# --- max_event_tags -----------------------------------------------------------------------


async def test_max_event_tags(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_event_tags=10)
    limit = await advertised(relay, "max_event_tags", 10)
    client = await Client.connect(url_of(relay))
    fits = keys.sign(tags=[["t", str(n)] for n in range(limit)])
    assert await client.publish(fits) == ["OK", fits["id"], True, ""]
    over = keys.sign(tags=[["t", str(n)] for n in range(limit + 1)])
    assert await client.publish(over) == [
        "OK",
        over["id"],
        False,
        f"invalid: event has more than {limit} tags",
    ]
    assert await client.req("check", {"ids": [over["id"]]}) == []
    await client.close()


async def test_default_max_event_tags_is_enforced(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    limit = await advertised(relay, "max_event_tags")
    over = keys.sign(tags=[["t", "x"]] * (limit + 1))
    reply = await client.publish(over)
    assert reply[2] is False
    assert reply[3] == f"invalid: event has more than {limit} tags"


# --- max_content_length -------------------------------------------------------------------


async def test_max_content_length_counts_characters(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_content_length=100)
    limit = await advertised(relay, "max_content_length", 100)
    client = await Client.connect(url_of(relay))
    for content in ("x" * limit, "\u20ac" * limit, "\U0001f600" * limit):
        event = keys.sign(content=content)
        assert (await client.publish(event))[2] is True, content[:1]
    over = keys.sign(content="x" * (limit + 1))
    assert await client.publish(over) == [
        "OK",
        over["id"],
        False,
        f"invalid: content is longer than {limit} characters",
    ]
    assert await client.req("check", {"ids": [over["id"]]}) == []
    await client.close()


# --- created_at_lower_limit / created_at_upper_limit --------------------------------------

# Seconds of margin either side of a boundary, so that the clock moving on does not matter.
MARGIN = 120


async def test_created_at_lower_limit(relay: RelayServer, client: Client, keys: Keys) -> None:
    lower = await advertised(relay, "created_at_lower_limit")
    now = int(time.time())
    inside = keys.sign(created_at=now - lower + MARGIN)
    outside = keys.sign(created_at=now - lower - MARGIN)
    assert (await client.publish(inside))[2] is True
    assert (await client.publish(outside))[2:] == [
        False,
        "invalid: created_at is too far in the past",
    ]


async def test_created_at_upper_limit(relay: RelayServer, client: Client, keys: Keys) -> None:
    upper = await advertised(relay, "created_at_upper_limit")
    assert upper > MARGIN
    now = int(time.time())
    inside = keys.sign(created_at=now + upper - MARGIN)
    outside = keys.sign(created_at=now + upper + MARGIN)
    assert (await client.publish(inside))[2] is True
    assert (await client.publish(outside))[2:] == [
        False,
        "invalid: created_at is too far in the future",
    ]


# --- auth_required, payment_required, restricted_writes -----------------------------------


async def test_open_relay_needs_no_auth_or_payment(relay: RelayServer, keys: Keys) -> None:
    limitation = await fetch_limitation(relay)
    assert limitation["auth_required"] is False
    assert limitation["payment_required"] is False
    assert limitation["restricted_writes"] is False
    client = await Client.connect(url_of(relay))
    # No payment notice on connect (a NIP-42 challenge may come, but need not be answered).
    await client.expect_silence()
    now = int(time.time())
    published = []
    # Kind 4 is left out: direct messages are written freely but read only by their parties.
    for kind, tags in ((1, []), (7, []), (10002, []), (30023, [["d", "x"]]), (42, [])):
        author = Keys()
        event = author.sign(kind=kind, tags=tags, created_at=now - 1)
        assert await client.publish(event) == ["OK", event["id"], True, ""]
        published.append(event["id"])
    reader = await Client.connect(url_of(relay))
    assert {e["id"] for e in await reader.req("all", {"ids": published})} == set(published)
    await reader.close()
    await client.close()


# --- every advertised limitation is covered ----------------------------------------------

COVERAGE = {
    "max_message_length": "test_max_message_length",
    "max_subscriptions": "test_max_subscriptions",
    "max_filters": "test_max_filters",
    "max_limit": "test_max_limit_and_default_limit_apply_per_filter",
    "default_limit": "test_default_limit_is_clamped_to_max_limit",
    "max_subid_length": "test_max_subid_length",
    "max_event_tags": "test_max_event_tags",
    "max_content_length": "test_max_content_length_counts_characters",
    "created_at_lower_limit": "test_created_at_lower_limit",
    "created_at_upper_limit": "test_created_at_upper_limit",
    "auth_required": "test_open_relay_needs_no_auth_or_payment",
    "payment_required": "test_open_relay_needs_no_auth_or_payment",
    "restricted_writes": "test_open_relay_needs_no_auth_or_payment",
}


# Advertised only when enabled; tested in another module.
OPTIONAL_COVERAGE = {"min_pow_difficulty": ("tests.test_abuse_limits", "test_min_pow_difficulty")}


async def test_every_advertised_limitation_is_tested(relay: RelayServer) -> None:
    limitation = await fetch_limitation(relay)
    assert set(limitation) == set(COVERAGE), "advertised limitations and tests here differ"
    for name, test in COVERAGE.items():
        assert callable(globals().get(test)), f"{name}: no test function {test}"


async def test_every_optional_limitation_is_tested(start_relay: RelayFactory) -> None:
    relay = await start_relay(min_pow_difficulty=1)
    limitation = await fetch_limitation(relay)
    assert set(limitation) == set(COVERAGE) | set(OPTIONAL_COVERAGE)
    for name, (module, test) in OPTIONAL_COVERAGE.items():
        assert callable(getattr(importlib.import_module(module), test, None)), name
