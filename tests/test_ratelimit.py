"""Token buckets (sans-I/O, stepped clock) and the rate limits of the running relay."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from relay.core.ratelimit import RateLimiter
from tests.conftest import RelayFactory, url_of, wait_for
from tests.http_client import http_request
from tests.nostr import Client, Keys, SubscriptionClosed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.49
    assert limiter.allow("a") is False
    clock.now += 0.01  # half a second at 2/s: one token
    assert limiter.allow("a") is True
    assert limiter.allow("a") is False
    clock.now += 100  # never more than the burst
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_keys_have_separate_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=FakeClock())
    assert limiter.allow("a") is True
    assert limiter.allow("a") is False
    assert limiter.allow("b") is True


def test_rate_zero_allows_everything_and_keeps_nothing() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=FakeClock())
    assert all(limiter.allow(n) for n in range(1000))
    assert len(limiter) == 0


def test_clock_going_backwards_adds_no_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.allow("a") is True
    clock.now -= 50
    assert limiter.allow("a") is False


def test_memory_is_bounded_however_many_keys() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=5, clock=clock, max_keys=100)
    for n in range(10_000):
        limiter.allow(n)
    assert len(limiter) == 100
    # The newest keys are the ones kept: their buckets are still spent.
    assert limiter.allow(9_999) is True


def test_refilled_buckets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    for n in range(50):
        limiter.allow(n)
    clock.now += 10  # every bucket is full again
    limiter.allow("new")
    assert len(limiter) == 1


# --- the running relay ---------------------------------------------------------------------
# These relays exempt no address: by default 127.0.0.1 (every test client) is exempt.


async def test_loopback_is_exempt_by_default(start_relay: RelayFactory) -> None:
    """The single user on their own machine never meets the public relay's rates."""
    relay = await start_relay(
        event_rate_per_ip=0.001,
        event_burst_per_ip=1,
        req_rate_per_connection=0.001,
        req_burst_per_connection=1,
        max_connections_per_ip=1,
    )
    first = await Client.connect(url_of(relay))
    second = await Client.connect(url_of(relay))
    for n in range(3):
        assert (await first.publish(Keys().sign(content=str(n))))[2] is True
        assert await second.req(f"s{n}", {"kinds": [1], "limit": 0}) == []
    await first.close()
    await second.close()


async def test_events_per_ip(start_relay: RelayFactory) -> None:
    relay = await start_relay(event_rate_per_ip=0.001, event_burst_per_ip=3, rate_limit_exempt=())
    burst = relay.settings.event_burst_per_ip
    first = await Client.connect(url_of(relay))
    second = await Client.connect(url_of(relay))  # same IP: the same bucket
    for n in range(burst):
        event = Keys().sign(content=str(n))
        assert (await (first if n % 2 else second).publish(event))[2] is True
    refused = Keys().sign(content="one too many")
    assert await first.publish(refused) == [
        "OK",
        refused["id"],
        False,
        "rate-limited: too many events, slow down",
    ]
    assert await second.req("check", {"ids": [refused["id"]]}) == []
    await first.close()
    await second.close()


async def test_events_per_pubkey(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(event_rate_per_pubkey=0.001, event_burst_per_pubkey=2)
    burst = relay.settings.event_burst_per_pubkey
    client = await Client.connect(url_of(relay))
    for n in range(burst):
        assert (await client.publish(keys.sign(content=str(n))))[2] is True
    refused = keys.sign(content="one too many")
    assert await client.publish(refused) == [
        "OK",
        refused["id"],
        False,
        "rate-limited: too many events from this pubkey",
    ]
    # Another key on the same connection still publishes.
    assert (await client.publish(Keys().sign()))[2] is True
    await client.close()


async def test_bad_signatures_do_not_spend_a_pubkeys_bucket(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(event_rate_per_pubkey=0.001, event_burst_per_pubkey=1)
    client = await Client.connect(url_of(relay))
    forged = keys.sign(content="forged")
    forged["sig"] = "00" * 64
    for _ in range(3):
        assert (await client.publish(forged))[3] == "invalid: bad signature"
    assert (await client.publish(keys.sign()))[2] is True
    await client.close()


async def test_reqs_per_connection(start_relay: RelayFactory) -> None:
    relay = await start_relay(
        req_rate_per_connection=0.001, req_burst_per_connection=3, rate_limit_exempt=()
    )
    burst = relay.settings.req_burst_per_connection
    client = await Client.connect(url_of(relay))
    for n in range(burst):
        assert await client.req(f"s{n}", {"kinds": [1]}) == []
    with pytest.raises(SubscriptionClosed) as refused:
        await client.req("over", {"kinds": [1]})
    assert str(refused.value) == "rate-limited: too many subscriptions opened, slow down"
    # The bucket is per connection.
    other = await Client.connect(url_of(relay))
    assert await other.req("s", {"kinds": [1]}) == []
    await other.close()
    await client.close()


async def test_connections_per_ip_refused_with_429(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_connections_per_ip=2, rate_limit_exempt=())
    cap = relay.settings.max_connections_per_ip
    clients = [await Client.connect(url_of(relay)) for _ in range(cap)]
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    response = await http_request(relay.port, headers=upgrade)
    assert response.status == 429
    assert int(response.headers["retry-after"]) > 0
    # Plain HTTP (NIP-11) is not a connection slot.
    nip11 = await http_request(relay.port, headers={"Accept": "application/nostr+json"})
    assert nip11.status == 200
    # A slot freed is a slot available.
    await clients.pop().close()
    await wait_for(lambda: len(relay.connections) < cap)
    replacement = await Client.connect(url_of(relay))
    assert (await replacement.publish(Keys().sign()))[2] is True
    for client in [*clients, replacement]:
        await client.close()


async def test_trusted_proxy_header_names_the_client(start_relay: RelayFactory) -> None:
    relay = await start_relay(
        max_connections_per_ip=1, trusted_proxy_header="X-Forwarded-For", rate_limit_exempt=()
    )
    url = url_of(relay)
    # Behind a proxy every client comes from 127.0.0.1; the header tells them apart.
    a = await Client.connect(
        url, additional_headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}
    )
    b = await Client.connect(url, additional_headers={"X-Forwarded-For": "198.51.100.2"})
    assert {c.ip for c in relay.connections} == {"198.51.100.1", "198.51.100.2"}
    # The last entry is the one the proxy vouches for: same address, over the cap.
    with pytest.raises(InvalidStatus, match="429"):
        await Client.connect(url, additional_headers={"X-Forwarded-For": "1.2.3.4, 198.51.100.2"})
    await a.close()
    await b.close()


async def test_proxy_header_ignored_unless_configured(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_connections_per_ip=1, rate_limit_exempt=())
    url = url_of(relay)
    a = await Client.connect(url, additional_headers={"X-Forwarded-For": "198.51.100.1"})
    assert {c.ip for c in relay.connections} == {"127.0.0.1"}
    with pytest.raises(InvalidStatus, match="429"):
        await Client.connect(url, additional_headers={"X-Forwarded-For": "198.51.100.2"})
    await a.close()
