"""`relay sync` against rust-nostr's LocalRelay (PyPI nostr-sdk, run by bench/local_relay.py
in its own process): both directions at once, over NIP-77, which LocalRelay speaks (so
the `until` walk is tested against our relay with negentropy off, tests/test_sync.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, fetch_by_ids, free_port, url_of, wait_listening
from tests.nostr import Client, Keys
from tests.test_sync import publish, run_sync

LOCAL_RELAY = Path(__file__).resolve().parents[2] / "bench" / "local_relay.py"


@pytest.fixture
def local_relay() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(LOCAL_RELAY), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(proc, "127.0.0.1", port)
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


async def on_peer(url: str, ids: list[str]) -> set[str]:
    client = await Client.connect(url)
    try:
        return {e["id"] for e in await client.req("x", {"ids": ids})}
    finally:
        await client.close()


async def test_sync_both_ways_with_local_relay(
    start_relay: RelayFactory, tmp_path: Path, local_relay: str
) -> None:
    here: RelayServer = await start_relay(db=str(tmp_path / "here.sqlite"))
    keys = Keys()
    now = int(time.time())
    shared = [keys.sign(content=f"shared {n}", created_at=now - 900 + n) for n in range(40)]
    only_here = [keys.sign(content=f"here {n}", created_at=now - 700 + n) for n in range(15)]
    only_peer = [keys.sign(content=f"peer {n}", created_at=now - 600 + n) for n in range(20)]
    await publish(here, shared + only_here)
    peer = await Client.connect(local_relay)
    for event in shared + only_peer:
        assert (await peer.publish(event))[2] is True
    await peer.close()

    code, err = await run_sync(str(here.settings.db), local_relay)

    assert code == 0, err
    assert "does not reconcile" not in err, err  # LocalRelay speaks NIP-77
    found = await fetch_by_ids(url_of(here), *(e["id"] for e in only_peer))
    assert {e["id"] for e in found} == {e["id"] for e in only_peer}
    assert await on_peer(local_relay, [e["id"] for e in only_here]) == {e["id"] for e in only_here}
