"""The limits added for abuse control, each probed at its value and one past it.

Limits NIP-11 has a field for are read from the running relay's NIP-11 document; the
others (event size, tag value length, values per filter, results per REQ) have no NIP-11
field, so the test reads them from the relay's settings.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from relay.core.canonical import serialize
from relay.core.event import parse_event
from relay.core.pow import difficulty
from tests.conftest import RelayFactory, url_of
from tests.http_client import fetch_info, fetch_limitation
from tests.nostr import Client, Keys, SubscriptionClosed


def raw_size(event: dict[str, Any]) -> int:
    return len(parse_event(event).raw)


def event_of_size(keys: Keys, size: int) -> dict[str, Any]:
    """A signed event whose stored JSON is exactly `size` bytes."""
    base = raw_size(keys.sign(content="", created_at=1_700_000_000 + size % 1000))
    event = keys.sign(content="x" * (size - base), created_at=1_700_000_000 + size % 1000)
    assert raw_size(event) == size
    return event


async def test_max_event_size(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_event_size=2000, created_at_lower_limit=10**10)
    limit = relay.settings.max_event_size
    assert "max_event_size" not in await fetch_limitation(relay)  # NIP-11 has no field
    client = await Client.connect(url_of(relay))
    fits = event_of_size(keys, limit)
    assert await client.publish(fits) == ["OK", fits["id"], True, ""]
    over = event_of_size(keys, limit + 1)
    assert await client.publish(over) == [
        "OK",
        over["id"],
        False,
        f"invalid: event is larger than {limit} bytes",
    ]
    assert await client.req("check", {"ids": [over["id"]]}) == []
    await client.close()


async def test_max_tag_value_length(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_tag_value_length=50)
    limit = relay.settings.max_tag_value_length
    client = await Client.connect(url_of(relay))
    fits = keys.sign(tags=[["t", "v" * limit], ["x", "a", "\u20ac" * limit]])
    assert await client.publish(fits) == ["OK", fits["id"], True, ""]
    for tags in (
        [["t", "v" * (limit + 1)]],
        [["x", "a", "b" * (limit + 1)]],
        [["n" * (limit + 1)]],
    ):
        over = keys.sign(tags=tags)
        assert await client.publish(over) == [
            "OK",
            over["id"],
            False,
            f"invalid: a tag value is longer than {limit} characters",
        ]
    await client.close()


def hex64(n: int) -> str:
    return f"{n:064x}"


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("ids", lambda n: [hex64(i) for i in range(n)]),
        ("authors", lambda n: [hex64(i) for i in range(n)]),
        ("kinds", lambda n: list(range(100, 100 + n))),  # no DM kinds: those need AUTH
        ("#t", lambda n: [f"tag{i}" for i in range(n)]),
    ],
)
async def test_max_filter_values(start_relay: RelayFactory, field: str, values: Any) -> None:
    relay = await start_relay(max_filter_values=5)
    limit = relay.settings.max_filter_values
    client = await Client.connect(url_of(relay))
    assert await client.req("fits", {field: values(limit)}) == []
    await client.send(["REQ", "over", {"kinds": [1]}, {field: values(limit + 1)}])
    assert await client.recv() == [
        "CLOSED",
        "over",
        f"invalid: {field} holds more than {limit} values",
    ]
    await client.expect_silence()
    await client.close()


async def test_max_req_results_caps_a_req_across_its_filters(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(max_req_results=5, max_limit=4)
    cap = relay.settings.max_req_results
    client = await Client.connect(url_of(relay))
    base = int(time.time()) - 100
    events = [
        keys.sign(kind=k, content=str(i), created_at=base + i) for i, k in enumerate([1, 7] * 4)
    ]
    for event in events:
        assert (await client.publish(event))[2] is True
    # Two filters of 4 each would find 8; the REQ as a whole gets the newest 5.
    got = await client.req("two", {"kinds": [1], "limit": 100}, {"kinds": [7], "limit": 100})
    newest = sorted(events, key=lambda e: -e["created_at"])
    assert [e["id"] for e in got] == [e["id"] for e in newest[:cap]]
    # At the cap exactly, nothing is cut.
    got = await client.req("one", {"kinds": [1, 7], "limit": 4}, {"ids": [newest[4]["id"]]})
    assert [e["id"] for e in got] == [e["id"] for e in newest[:cap]]
    await client.close()


# --- NIP-13 proof of work ------------------------------------------------------------------


def mine(keys: Keys, bits: int, target: int | None = None) -> dict[str, Any]:
    """A signed event whose id has exactly `bits` leading zero bits."""
    created_at = int(time.time())
    for nonce in range(10**7):
        tag = ["nonce", str(nonce)] + ([str(target)] if target is not None else [])
        digest = hashlib.sha256(serialize(keys.pubkey, created_at, 1, [tag], "pow")).hexdigest()
        if difficulty(digest) == bits:
            return keys.sign(content="pow", tags=[tag], created_at=created_at)
    raise AssertionError("no nonce found")


async def test_min_pow_difficulty(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(min_pow_difficulty=6)
    minimum = (await fetch_limitation(relay))["min_pow_difficulty"]
    assert minimum == 6
    assert 13 in (await fetch_info(relay))["supported_nips"]
    client = await Client.connect(url_of(relay))
    enough = mine(keys, minimum, target=minimum)
    assert await client.publish(enough) == ["OK", enough["id"], True, ""]
    short = mine(keys, minimum - 1)
    assert await client.publish(short) == [
        "OK",
        short["id"],
        False,
        f"pow: difficulty {minimum - 1} is less than {minimum}",
    ]
    # Mined for a lower target and lucky: NIP-13 lets the relay refuse the commitment.
    lucky = mine(keys, minimum + 1, target=minimum - 1)
    assert await client.publish(lucky) == [
        "OK",
        lucky["id"],
        False,
        f"pow: committed target {minimum - 1} is less than {minimum}",
    ]
    assert await client.req("check", {"ids": [short["id"], lucky["id"]]}) == []
    await client.close()


async def test_no_pow_required_by_default(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay()
    assert "min_pow_difficulty" not in await fetch_limitation(relay)
    assert 13 not in (await fetch_info(relay))["supported_nips"]
    client = await Client.connect(url_of(relay))
    event = keys.sign()
    assert difficulty(event["id"]) < 60
    assert (await client.publish(event))[2] is True
    await client.close()


async def test_subscriptions_refused_for_values_keep_the_connection(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(max_filter_values=2)
    client = await Client.connect(url_of(relay))
    with pytest.raises(SubscriptionClosed):
        await client.req("s", {"authors": [hex64(1), hex64(2), hex64(3)]})
    event = keys.sign()
    assert (await client.publish(event))[2] is True
    await client.close()


@pytest.mark.parametrize(
    ("settings", "restricted"),
    [
        ({}, False),
        ({"pubkey_denylist": ("a" * 64,), "kind_denylist": (4,)}, False),  # anti-spam only
        ({"pubkey_allowlist": ("a" * 64,)}, True),
        ({"kind_allowlist": (1,)}, True),
        ({"min_pow_difficulty": 1}, True),
    ],
)
async def test_restricted_writes_advertised_for_allowlists_and_pow(
    start_relay: RelayFactory, settings: dict[str, Any], restricted: bool
) -> None:
    relay = await start_relay(**settings)
    assert (await fetch_limitation(relay))["restricted_writes"] is restricted
