"""Prometheus metrics at /metrics after known traffic, on the relay's port or apart, or off;
the /stats figures; and the pieces behind them, without sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.core.event import parse_event
from relay.core.filters import Filter
from relay.net.metrics import Histogram, reason_prefix
from relay.net.reads import limit_hit
from relay.net.server import RelayServer
from relay.net.stats import EventRate
from relay.store.base import SaveOutcome
from tests.conftest import RelayFactory, url_of
from tests.http_client import Samples, http_request, metric, scrape
from tests.nostr import Client, Keys


async def known_traffic(relay: RelayServer, keys: Keys, notes: int) -> None:
    """A subscriber and a publisher: `notes` notes stored, one forged, one sent twice,
    one AUTH, and two REQs, one of which returns its full limit."""
    subscriber = await Client.connect(url_of(relay))
    publisher = await Client.connect(url_of(relay))
    try:
        assert await subscriber.req("live", {"kinds": [1], "limit": 0}) == []
        sent = [keys.sign(content=f"note {n}") for n in range(notes)]
        for event in sent:
            assert (await publisher.publish(event))[2] is True
        forged = keys.sign(content="forged")
        forged["sig"] = sent[0]["sig"]
        assert (await publisher.publish(forged))[2:] == [False, "invalid: bad signature"]
        assert (await publisher.publish(sent[0]))[2] is True  # a duplicate
        assert (await publisher.auth(keys, relay.auth.relay_url))[2] is True
        for event in sent:
            assert await subscriber.recv() == ["EVENT", "live", event]
        assert len(await publisher.req("all", {"kinds": [1], "limit": 100})) == notes
        assert len(await publisher.req("two", {"kinds": [1], "limit": 2})) == 2
    finally:
        await publisher.close()
        await subscriber.close()


async def test_metrics_count_known_traffic(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay()
    notes = 5
    await known_traffic(relay, keys, notes)
    watcher = await Client.connect(url_of(relay))
    try:
        samples = await scrape(relay.port)
    finally:
        await watcher.close()

    assert metric(samples, "relay_connections_opened_total") == 3
    assert metric(samples, "relay_connections_open") == 1  # the watcher
    assert metric(samples, "relay_events_received_total") == notes + 2
    assert metric(samples, "relay_events_stored_total") == notes
    assert metric(samples, "relay_events_refused_total", reason="invalid") == 1
    refused = sum(v for (name, _), v in samples.items() if name == "relay_events_refused_total")
    assert refused == 1
    assert metric(samples, "relay_ok_seconds_count") == notes + 2
    assert metric(samples, "relay_ok_seconds_bucket", le="+Inf") == notes + 2
    # The forged event never reached the writer; the duplicate did.
    assert metric(samples, "relay_commit_batch_events_sum") == notes + 1
    assert metric(samples, "relay_commit_seconds_count") == metric(
        samples, "relay_commit_batch_events_count"
    )
    assert metric(samples, "relay_fanout_deliveries_total") == notes
    # limit 0 runs no query; limit 100 finds fewer; limit 2 finds its full limit.
    assert metric(samples, "relay_query_seconds_count", limit_hit="false") == 1
    assert metric(samples, "relay_query_seconds_count", limit_hit="true") == 1
    assert metric(samples, "relay_auth_total", result="accepted") == 1
    assert metric(samples, "relay_auth_total", result="refused") == 0
    assert metric(samples, "relay_database_events") == notes
    assert metric(samples, "relay_database_bytes") > 0
    assert metric(samples, "relay_child_restarts_total", process="verify") == 0
    assert metric(samples, "relay_outbox_drops_total") == 0


async def scrape_until(relay: RelayServer, name: str, **labels: str) -> Samples:
    """/metrics once the sample is above 0 (the writer prunes beside the commit whose OK
    the client waited for, so it may not have finished yet); bounded."""
    for _ in range(200):
        samples = await scrape(relay.port)
        if metric(samples, name, **labels) > 0:
            return samples
        await asyncio.sleep(0.025)
    raise AssertionError(f"{name} {labels} stayed at 0")


async def test_pruned_events_are_counted_by_reason(start_relay: RelayFactory, keys: Keys) -> None:
    # Purged after every commit, so publishing one event makes the writer prune.
    relay = await start_relay(retention_max_age=("1:3600",), purge_interval=0)
    now = int(time.time())
    old = [parse_event(keys.sign(content=f"old {n}", created_at=now - 7200 - n)) for n in range(7)]
    # Stored as if before the rule existed: the relay refuses them when published now.
    assert await relay.store.save_many(old, now) == [SaveOutcome.STORED] * len(old)
    before = await scrape(relay.port)
    for reason in ("age", "budget", "expired"):
        assert metric(before, "relay_events_pruned_total", reason=reason) == 0
    client = await Client.connect(url_of(relay))
    try:
        fresh = keys.sign(content="fresh")
        assert (await client.publish(fresh))[2] is True
        samples = await scrape_until(relay, "relay_events_pruned_total", reason="age")
        assert [e["id"] for e in await client.req("all", {"authors": [keys.pubkey]})] == [
            fresh["id"]
        ]
    finally:
        await client.close()
    assert metric(samples, "relay_events_pruned_total", reason="age") == len(old)
    assert metric(samples, "relay_events_pruned_total", reason="budget") == 0
    assert metric(samples, "relay_events_pruned_total", reason="expired") == 0


async def test_a_refused_auth_is_counted(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    try:
        reply = await client.auth(keys, relay.auth.relay_url, challenge="not the challenge")
        assert reply[2] is False
    finally:
        await client.close()
    samples = await scrape(relay.port)
    assert metric(samples, "relay_auth_total", result="refused") == 1
    assert metric(samples, "relay_auth_total", result="accepted") == 0


async def test_metrics_can_be_switched_off(start_relay: RelayFactory) -> None:
    relay = await start_relay(metrics_enabled=False)
    response = await http_request(relay.port, path="/metrics")
    assert response.status == 404
    # The page's figures do not depend on the metrics.
    assert (await http_request(relay.port, path="/stats")).status == 200


async def test_metrics_on_a_listener_of_their_own(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(metrics_host="127.0.0.1")
    assert relay.metrics_port != relay.port
    client = await Client.connect(url_of(relay))
    try:
        assert (await client.publish(keys.sign()))[2] is True
    finally:
        await client.close()
    assert (await http_request(relay.port, path="/metrics")).status == 404
    samples = await scrape(relay.metrics_port)
    assert metric(samples, "relay_events_stored_total") == 1
    # Nothing but /metrics there, and no relay.
    assert (await http_request(relay.metrics_port, path="/")).status == 404
    with pytest.raises(Exception, match="404"):
        await Client.connect(f"ws://127.0.0.1:{relay.metrics_port}")


async def test_stats_show_the_page_figures(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    try:
        for n in range(3):
            assert (await client.publish(keys.sign(content=f"{n}")))[2] is True
        response = await http_request(relay.port, path="/stats")
    finally:
        await client.close()
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    stats: dict[str, Any] = response.json()
    assert stats == {"events": 3, "connections": 1, "events_per_minute": 3}


def test_stored_events_per_minute_are_counted_over_the_last_minute() -> None:
    rate = EventRate()
    rate.add(5, now=1000.0)
    rate.add(2, now=1030.5)
    assert rate.last_minute(now=1059.9) == 7
    assert rate.last_minute(now=1060.0) == 2  # the first second has left the window
    assert rate.last_minute(now=1091.0) == 0
    rate.committed([SaveOutcome.STORED, SaveOutcome.DUPLICATE, SaveOutcome.STORED])
    assert rate.last_minute() == 2


def test_reasons_are_counted_by_their_prefix_and_nothing_else() -> None:
    assert reason_prefix("invalid: bad signature") == "invalid"
    assert reason_prefix("auth-required: this kind") == "auth-required"
    assert reason_prefix("blocked") == "blocked"
    # A plugin's own words would otherwise make a label value each.
    assert reason_prefix("go away, 192.0.2.1") == "other"
    assert reason_prefix("") == "other"


def test_a_query_hit_its_limit_when_it_found_all_it_could() -> None:
    one = (Filter(limit=10),)
    assert limit_hit(one, 10, cap=10_000)
    assert not limit_hit(one, 9, cap=10_000)
    two = (Filter(limit=10), Filter(limit=5))
    assert not limit_hit(two, 10, cap=10_000)
    assert limit_hit(two, 15, cap=10_000)
    assert limit_hit((Filter(),), 50, cap=50)  # the REQ's own cap
    assert not limit_hit((Filter(),), 49, cap=50)


async def test_subscription_gauge_follows_its_hooks(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    for _ in range(3):
        relay.metrics.subscription_opened()
    relay.metrics.subscription_closed()
    assert metric(await scrape(relay.port), "relay_subscriptions_open") == 2


def test_histogram_buckets_are_cumulative_and_include_their_bound() -> None:
    histogram = Histogram((0.001, 0.01, 1))
    for seconds in (0.001, 0.005, 0.01, 3.0):
        histogram.observe(seconds)
    assert histogram.buckets() == [("0.001", 1), ("0.01", 3), ("1.0", 3), ("+Inf", 4)]
    assert histogram.total == pytest.approx(3.016)
