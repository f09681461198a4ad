"""Per-connection and relay-wide budgets through a real socket: each refusal carries its
prefix, and what a closed subscription or connection held is given back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayFactory, RelayProcess, url_of, wait_for
from tests.nostr import Client, Keys, SubscriptionClosed
from tests.raw_ws import RawClient

AUTHORS = [f"{n:064x}" for n in range(1, 12)]


async def test_live_filter_entries_per_connection(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_live_entries=10)
    client = await Client.connect(url_of(relay))
    with pytest.raises(SubscriptionClosed, match=r"^restricted: "):
        await client.req("big", {"authors": AUTHORS})
    assert await client.req("a", {"authors": AUTHORS[:6]}) == []
    with pytest.raises(SubscriptionClosed, match=r"^restricted: "):
        await client.req("b", {"#t": ["x", "y", "z", "w", "v"]})
    # Replacing a subscription gives its entries back first.
    assert await client.req("a", {"authors": AUTHORS[:10]}) == []
    await client.send(["CLOSE", "a"])
    assert await client.req("b", {"#t": ["x", "y", "z", "w", "v"]}) == []
    await client.close()


async def test_live_filter_entries_of_the_whole_relay(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_live_entries_total=15)
    first = await Client.connect(url_of(relay))
    second = await Client.connect(url_of(relay))
    assert await first.req("s", {"authors": AUTHORS[:10]}) == []
    with pytest.raises(SubscriptionClosed, match=r"^restricted: "):
        await second.req("s", {"authors": AUTHORS[:10]})
    await first.close()
    # The connection's entries come back when it ends.
    await wait_for(lambda: relay.live_entries.used == 0)
    assert await second.req("s", {"authors": AUTHORS[:10]}) == []
    await second.close()


async def test_queries_in_flight_refused_with_rate_limited(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_queries_in_flight=1)
    keys = Keys()
    client = await Client.connect(url_of(relay))
    for n in range(20):
        assert (await client.publish(keys.sign(content=str(n))))[2] is True
    raw = await RawClient.connect(relay.port)
    # One write: the relay reads every COUNT before the first can finish.
    for n in range(30):
        raw.send_json(["COUNT", f"c{n}", {"kinds": [1]}])
    await raw.writer.drain()
    answers: dict[str, list[Any]] = {}
    while len(answers) < 30:
        reply = await raw.read_json()
        if reply[0] != "AUTH":
            answers[reply[1]] = reply
    refused = [a for a in answers.values() if a[0] == "CLOSED"]
    assert refused, "30 COUNTs sent at once never had two in flight"
    assert all(a[2] == "rate-limited: at most 1 queries at once, wait for EOSE" for a in refused)
    assert all(a[2] == {"count": 20} for a in answers.values() if a[0] == "COUNT")
    # The budget comes back: one more COUNT, alone, is answered.
    raw.send_json(["COUNT", "last", {"kinds": [1]}])
    assert await raw.read_json() == ["COUNT", "last", {"count": 20}]
    raw.close()
    await client.close()


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the write and verify processes)."""
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def heavy_connections(port: int, count: int) -> list[RawClient]:
    """`count` connections, each holding its whole live-filter budget (20 REQs x 1000
    distinct #t values = 20,000 entries), every REQ answered."""
    clients = []
    for c in range(count):
        raw = await RawClient.connect(port)
        for s in range(20):
            values = [f"c{c}s{s}v{v}" for v in range(1000)]
            raw.send_json(["REQ", f"s{s}", {"#t": values, "limit": 0}])
        await raw.writer.drain()
        clients.append(raw)
    for raw in clients:
        answered = 0
        while answered < 20:
            reply = await raw.read_json(30)
            assert reply[0] in ("AUTH", "EOSE"), reply
            answered += reply[0] == "EOSE"
    return clients


async def test_memory_comes_back_when_heavy_connections_close(relay_process: Any) -> None:
    """50 connections at their live-filter budget, closed: the index is emptied, most of
    the memory is returned, and a second round reuses it instead of growing."""
    process: RelayProcess = relay_process()
    process.start()
    assert process.proc is not None
    pid = process.proc.pid
    baseline = rss_mib(pid)
    rounds = []
    for _ in range(2):
        clients = await heavy_connections(process.port, 50)
        peak = rss_mib(pid)
        for raw in clients:
            raw.close()
        await asyncio.sleep(4)  # disconnects seen, then the heap trimmed (net/trim.py)
        rounds.append((peak, rss_mib(pid)))
    (first_peak, first_after), (second_peak, second_after) = rounds
    assert first_after - baseline < (first_peak - baseline) / 2, (baseline, rounds)
    assert second_peak < first_peak + 16, (baseline, rounds)
    assert second_after < first_after + 16, (baseline, rounds)
