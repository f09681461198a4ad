"""Live mirroring: three relays following each other converge, do not loop events, and
one that was stopped catches up by negentropy on what was published while it was away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.config import ConfigError
from relay.net.server import RelayServer
from tests.conftest import RelayFactory, free_port, url_of
from tests.nostr import Client, Keys

CONVERGE_WITHIN = 20.0


async def served_by(relay: RelayServer, event_id: str) -> bool:
    client = await Client.connect(url_of(relay))
    try:
        return bool(await client.req("m", {"ids": [event_id]}))
    finally:
        await client.close()


async def wait_served(relay: RelayServer, event_id: str) -> None:
    deadline = time.monotonic() + CONVERGE_WITHIN
    while not await served_by(relay, event_id):
        assert time.monotonic() < deadline, f"{event_id[:8]} not mirrored to :{relay.port}"
        await asyncio.sleep(0.1)


async def start_three(start_relay: RelayFactory, tmp: Any) -> list[RelayServer]:
    ports = [free_port() for _ in range(3)]
    relays = []
    for n, port in enumerate(ports):
        peers = tuple(f"ws://127.0.0.1:{p}" for p in ports if p != port)
        relays.append(
            await start_relay(
                port=port, db=str(tmp / f"r{n}.sqlite"), mirror_peers=peers, **MIRROR_SETTINGS
            )
        )
    return relays


MIRROR_SETTINGS: dict[str, Any] = {"mirror_filter": '{"kinds":[1]}'}


async def test_three_relays_converge_without_loops_and_catch_up(
    start_relay: RelayFactory, tmp_path: Any
) -> None:
    a, b, c = await start_three(start_relay, tmp_path)
    keys = Keys()
    watcher = await Client.connect(url_of(c))
    await watcher.send(["REQ", "live", {"kinds": [1]}])
    assert await watcher.recv() == ["EOSE", "live"]
    # Every mirror has caught up once, so its live subscription is open.
    for relay in (a, b, c):
        assert relay.mirror is not None
        mirror = relay.mirror
        deadline = time.monotonic() + CONVERGE_WITHIN
        while min(mirror.caught_up.values()) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    note = keys.sign(content="to all three")
    publisher = await Client.connect(url_of(a))
    assert (await publisher.publish(note))[2] is True
    await wait_served(b, note["id"])
    await wait_served(c, note["id"])
    assert await watcher.recv(CONVERGE_WITHIN) == ["EVENT", "live", note]
    # Not again, from the other mirror: the next event the watcher sees is the sentinel.
    sentinel = keys.sign(content="sentinel")
    direct = await Client.connect(url_of(c))
    assert (await direct.publish(sentinel))[2] is True
    assert await watcher.recv(CONVERGE_WITHIN) == ["EVENT", "live", sentinel]

    # C goes away; what A gets meanwhile reaches C by negentropy when it is back.
    settings = c.settings
    await c.stop()
    missed = keys.sign(content="while c was away")
    assert (await publisher.publish(missed))[2] is True
    await wait_served(b, missed["id"])
    back = await start_relay(
        **{k: getattr(settings, k) for k in ("port", "db", "mirror_peers")}, **MIRROR_SETTINGS
    )
    await wait_served(back, missed["id"])
    for client in (watcher, publisher, direct):
        await client.close()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mirror_filter": "{"}, "not valid JSON"),
        ({"mirror_filter": "[]"}, "one JSON filter object"),
        ({"mirror_filter": '{"kinds":"x"}'}, "mirror_filter: "),
        ({"mirror_peers": ("http://127.0.0.1:1",)}, "not a ws:// or wss:// URL"),
    ],
)
async def test_bad_mirror_settings_stop_the_relay(
    start_relay: RelayFactory, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await start_relay(**overrides)
