"""A reconciliation against a misbehaving peer ends: one that never agrees, answering every
NEG-MSG with a fingerprint that matches nothing, and one that makes up new ids each round.
`relay sync` fails with exit code 1 and says why; the mirror logs it and goes on serving."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from relay.core.negentropy import (
    INFINITE_BOUND,
    Bound,
    Mode,
    NegentropyClient,
    Range,
    ReconciliationBoundError,
    Storage,
    encode_message,
)
from tests.conftest import RelayFactory, free_port, url_of
from tests.nostr import Client, Keys
from tests.test_sync import run_sync

# A peer's reply to any message: built fresh each time, so that nothing ever matches.
Reply = Callable[[], bytes]


def never_agrees() -> bytes:
    return encode_message([Range(INFINITE_BOUND, Mode.FINGERPRINT, os.urandom(16))])


def invents_ids() -> bytes:
    """Ids at timestamp 0 (nobody holds them), then a range that never matches."""
    ids = tuple(os.urandom(32) for _ in range(50))
    return encode_message(
        [
            Range(Bound(1), Mode.ID_LIST, ids=ids),
            Range(INFINITE_BOUND, Mode.FINGERPRINT, os.urandom(16)),
        ]
    )


class FakePeer:
    """Speaks just enough NIP-01 and NIP-77 to keep a reconciliation going."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.neg_messages = 0
        self.neg_closed = 0
        self.closed = asyncio.Event()

    async def handle(self, ws: ServerConnection) -> None:
        async for raw in ws:
            message: list[Any] = orjson.loads(raw)
            verb = message[0]
            if verb in ("NEG-OPEN", "NEG-MSG"):
                self.neg_messages += 1
                await ws.send(orjson.dumps(["NEG-MSG", message[1], self.reply().hex()]).decode())
            elif verb == "NEG-CLOSE":
                self.neg_closed += 1
                self.closed.set()
            elif verb == "REQ":
                await ws.send(orjson.dumps(["EOSE", message[1]]).decode())


@asynccontextmanager
async def fake_peer(reply: Reply) -> AsyncIterator[tuple[FakePeer, str]]:
    peer = FakePeer(reply)
    port = free_port()
    async with serve(peer.handle, "127.0.0.1", port):
        yield peer, f"ws://127.0.0.1:{port}"


def storage_of(count: int) -> Storage:
    return Storage((1_700_000_000 + n, os.urandom(32)) for n in range(count))


def reconcile_forever(client: NegentropyClient, reply: Reply) -> None:
    """Answer the client's every message the same way; 10,000 rounds would be far too many."""
    for _ in range(10_000):
        client.reconcile(reply())


@pytest.mark.parametrize("items", [0, 10, 5000])
def test_a_peer_that_never_agrees_is_given_up_on(items: int) -> None:
    client = NegentropyClient(storage_of(items), frame_size_limit=30_000)
    client.initiate()
    with pytest.raises(ReconciliationBoundError, match="rounds"):
        reconcile_forever(client, never_agrees)
    assert client.rounds == client.max_rounds() + 1


def test_a_peer_that_invents_ids_is_given_up_on() -> None:
    client = NegentropyClient(storage_of(100), frame_size_limit=30_000, max_peer_items=1000)
    client.initiate()
    with pytest.raises(ReconciliationBoundError, match="1,000 ids we lack"):
        reconcile_forever(client, invents_ids)
    # Every round reported its 50 new ids until the next would pass the bound.
    assert client.needed == 1000


def test_the_rounds_allowed_grow_with_the_set_and_the_ids_found() -> None:
    small = NegentropyClient(storage_of(10), 30_000)
    large = NegentropyClient(storage_of(5000), 30_000)
    assert small.max_rounds() < large.max_rounds()
    before = large.max_rounds()
    for reply in (invents_ids() for _ in range(20)):
        large.reconcile(reply)
    assert large.max_rounds() > before


@pytest.mark.parametrize("reply", [never_agrees, invents_ids])
async def test_relay_sync_against_a_misbehaving_peer_fails(tmp_path: Path, reply: Reply) -> None:
    async with fake_peer(reply) as (peer, url):
        code, err = await run_sync(str(tmp_path / "here.sqlite"), url, "--max-peer-items", "500")
    assert code == 1, err
    assert "reconciliation stopped" in err
    assert peer.neg_closed == 1
    assert peer.neg_messages < 200


async def test_the_mirror_logs_a_misbehaving_peer_and_goes_on(
    start_relay: RelayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with fake_peer(never_agrees) as (peer, url):
        relay = await start_relay(
            db=str(tmp_path / "here.sqlite"), mirror_peers=(url,), negentropy_enabled=True
        )
        await asyncio.wait_for(peer.closed.wait(), 30.0)
        rounds = peer.neg_messages
        client = await Client.connect(url_of(relay))
        try:
            assert (await client.publish(Keys().sign(content="still here")))[2] is True
        finally:
            await client.close()
    assert rounds < 200
    assert any("reconciliation stopped" in r.getMessage() for r in caplog.records)
