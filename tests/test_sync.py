"""`relay sync URL`: two instances of this relay, each holding events the other lacks, synced
down, up and both ways by NIP-77, and by walking `until` windows against a relay with
negentropy off. The command runs as a real process on the database of a running relay."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.core.event import parse_event
from relay.net import sync as sync_module
from relay.net.server import RelayServer
from relay.transfer import ImportRules, StoreLocal
from tests.conftest import RelayFactory, fetch_by_ids, url_of
from tests.nostr import Client, Keys

NOW = int(time.time())
SYNC_WITHIN = 60.0


@dataclass
class Pair:
    here: RelayServer
    peer: RelayServer
    shared: list[dict[str, Any]]
    only_here: list[dict[str, Any]]
    only_peer: list[dict[str, Any]]
    author: Keys


async def publish(relay: RelayServer, events: list[dict[str, Any]]) -> None:
    client = await Client.connect(url_of(relay))
    for event in events:
        assert (await client.publish(event))[2] is True, event
    await client.close()


async def run_sync(db: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "sync",
        *args,
        "--db",
        db,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), SYNC_WITHIN)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, err.decode()


async def served(relay: RelayServer, events: list[dict[str, Any]]) -> set[str]:
    # In tens: a peer may have max_limit 10.
    found: set[str] = set()
    for start in range(0, len(events), 10):
        chunk = events[start : start + 10]
        found.update(e["id"] for e in await fetch_by_ids(url_of(relay), *(e["id"] for e in chunk)))
    return found


def ids(events: list[dict[str, Any]]) -> set[str]:
    return {e["id"] for e in events}


async def make_pair(start_relay: RelayFactory, tmp_path: Path, **peer_settings: Any) -> Pair:
    here = await start_relay(db=str(tmp_path / "here.sqlite"))
    peer = await start_relay(db=str(tmp_path / "peer.sqlite"), **peer_settings)
    keys = Keys()
    shared = [keys.sign(content=f"shared {n}", created_at=NOW - 900 + n) for n in range(60)]
    only_here = [keys.sign(content=f"here {n}", created_at=NOW - 700 + n) for n in range(25)]
    # Several per second on the peer: the walk's `until` windows must not lose them.
    only_peer = [keys.sign(content=f"peer {n}", created_at=NOW - 600 + n // 3) for n in range(35)]
    await publish(here, shared + only_here)
    await publish(peer, shared + only_peer)
    return Pair(here, peer, shared, only_here, only_peer, keys)


def db_of(relay: RelayServer) -> str:
    return str(relay.settings.db)


async def test_down_fetches_what_is_missing_and_refuses_a_forged_event(
    start_relay: RelayFactory, tmp_path: Path
) -> None:
    pair = await make_pair(start_relay, tmp_path)
    keys = Keys()
    # On the peer's disk without passing its checks: a valid id with another event's signature.
    genuine = keys.sign(content="genuine")
    forged = {**keys.sign(content="forged"), "sig": genuine["sig"]}
    await pair.peer.store.save_many([parse_event(forged)], NOW)
    # On the peer, the author deletes one of the events only here, and someone else another.
    victim, survivor = pair.only_here[0], pair.only_here[1]
    by_author = pair.author.sign(kind=5, tags=[["e", victim["id"]]], content="")
    by_other = keys.sign(kind=5, tags=[["e", survivor["id"]]], content="")
    await publish(pair.peer, [by_author, by_other])

    code, err = await run_sync(db_of(pair.here), url_of(pair.peer), "--direction", "down")

    assert code == 1, err  # the forged event did not get across
    assert "1 invalid" in err, err
    assert await served(pair.here, pair.only_peer) == ids(pair.only_peer)
    assert await served(pair.here, [forged]) == set()
    assert await served(pair.here, [victim]) == set()  # deleted by its author, via save_many
    assert await served(pair.here, pair.only_here[1:]) == ids(pair.only_here[1:])
    # Down only: the peer was not written to.
    assert await served(pair.peer, pair.only_here) == set()


async def test_up_sends_what_the_peer_lacks(start_relay: RelayFactory, tmp_path: Path) -> None:
    pair = await make_pair(start_relay, tmp_path)
    code, err = await run_sync(db_of(pair.here), url_of(pair.peer), "--direction", "up")
    assert code == 0, err
    assert "25 ok" in err, err
    assert await served(pair.peer, pair.only_here) == ids(pair.only_here)
    assert await served(pair.here, pair.only_peer) == set()


@pytest.mark.parametrize("negentropy", [True, False])
async def test_both_ways_converge(
    start_relay: RelayFactory, tmp_path: Path, negentropy: bool
) -> None:
    # max_limit 10 on the peer: the walk needs many `until` windows, ids go in batches of 10.
    pair = await make_pair(start_relay, tmp_path, negentropy_enabled=negentropy, max_limit=10)
    code, err = await run_sync(db_of(pair.here), url_of(pair.peer), "--filter", '{"kinds":[1]}')
    assert code == 0, err
    assert ("walking its events" in err) is not negentropy, err
    everything = pair.shared + pair.only_here + pair.only_peer
    assert await served(pair.here, everything) == ids(everything)
    assert await served(pair.peer, everything) == ids(everything)
    # A second run finds nothing to do.
    code, err = await run_sync(db_of(pair.here), url_of(pair.peer))
    assert code == 0, err
    assert "0 needed, 0 fetched" in err, err
    assert "up: 0 needed" in err, err


async def test_a_large_set_opens_with_its_whole_fingerprint(
    start_relay: RelayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process, with the threshold at one item: the path a set of 50,000 or more takes.
    monkeypatch.setattr(sync_module, "EARLY_OPEN_ITEMS", 1)
    pair = await make_pair(start_relay, tmp_path)
    local = StoreLocal(pair.here.store, ImportRules(pair.here.settings.public_url(0)))
    stats = await sync_module.sync(local, url_of(pair.peer), {}, "both", err=None)
    assert stats.complete
    assert "fingerprints (waited for)" in stats.phases
    assert (stats.need, stats.have) == (len(pair.only_peer), len(pair.only_here))
    everything = pair.shared + pair.only_here + pair.only_peer
    assert await served(pair.here, everything) == ids(everything)
    assert await served(pair.peer, everything) == ids(everything)


async def test_a_peer_that_cannot_be_reached_fails(tmp_path: Path) -> None:
    code, err = await run_sync(str(tmp_path / "x.sqlite"), "ws://127.0.0.1:9")
    assert code == 1
    assert "cannot connect" in err
    code, err = await run_sync(str(tmp_path / "x.sqlite"), "http://127.0.0.1:9")
    assert code == 2


async def test_an_event_deleted_here_is_not_brought_back(
    start_relay: RelayFactory, tmp_path: Path
) -> None:
    here = await start_relay(db=str(tmp_path / "here.sqlite"))
    peer = await start_relay(db=str(tmp_path / "peer.sqlite"))
    keys = Keys()
    note = keys.sign(content="regretted")
    await publish(peer, [note])
    await publish(here, [note, keys.sign(kind=5, tags=[["e", note["id"]]], content="")])
    assert await served(here, [note]) == set()

    code, err = await run_sync(db_of(here), url_of(peer))

    # Refused by the deletion, which is settled, not a failure; the deletion went up.
    assert code == 0, err
    assert "1 blocked" in err, err
    assert await served(here, [note]) == set()
    assert await served(peer, [note]) == set()
