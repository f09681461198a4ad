"""Live mirroring (`[mirror]` settings): this relay keeps a subscription open to each peer in
`mirror_peers` and stores what arrives through RelayServer.ingest, the write path of a
client's EVENT (checks, signature, store rules; an event already stored is a duplicate and
is not broadcast again, which is what keeps relays mirroring each other from looping).
On every (re)connect a NIP-77 down-sync (relay/net/sync.py) fetches what the peer got
while we were apart; lost connections are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.core import canonical
from relay.core.errors import ClientError
from relay.core.event import parse_event
from relay.core.filters import parse_filter
from relay.core.write_policy import Source
from relay.net.sync import Peer, StoreReads, SyncError, SyncStats, sync
from relay.store.base import EventStore

log = logging.getLogger("relay.mirror")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# A connection that lasted this long resets the backoff.
STABLE_SECONDS = 10.0
LIVE_SUB = "mirror-live"

Ingest = Callable[[Any, Source], Awaitable[tuple[bool, str]]]


def parse_mirror_filter(text: str) -> dict[str, Any]:
    """The `mirror_filter` setting as a filter object; raises ValueError."""
    try:
        obj = canonical.loads(text)
    except canonical.JSONDecodeError:
        raise ValueError(f"mirror_filter is not valid JSON: {text!r}") from None
    if not isinstance(obj, dict):
        raise ValueError("mirror_filter must be one JSON filter object")
    try:
        parse_filter(obj)
    except ClientError as error:
        raise ValueError(f"mirror_filter: {error.reason}") from None
    return obj


def check_peers(peers: Sequence[str]) -> None:
    """Each of `mirror_peers` is a WebSocket URL; raises ValueError."""
    for url in peers:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"mirror_peers: {url!r} is not a ws:// or wss:// URL")


class ServerLocal(StoreReads):
    """The running relay as the local side of a sync: its store, and ingest for writes."""

    def __init__(self, store: EventStore, ingest: Ingest) -> None:
        super().__init__(store)
        self.ingest = ingest

    async def store(self, objs: Sequence[Any]) -> list[str]:
        reasons: list[str] = []
        for obj in objs:
            reasons.append(await self.take(obj))
        return reasons

    async def take(self, obj: Any) -> str:
        """One event from a peer: "" when stored, otherwise the reason."""
        try:
            event = parse_event(obj)
        except ClientError as error:
            return error.reason
        accepted, reason = await self.ingest(event, Source("", int(time.time())))
        return "" if accepted and not reason else reason or "blocked: refused"


class Mirror:
    """One task per peer: live subscription, catch-up by negentropy, reconnect on loss."""

    def __init__(self, peers: Sequence[str], filter_obj: dict[str, Any], local: ServerLocal):
        self.peers = tuple(peers)
        self.filter = filter_obj
        self.local = local
        self.tasks: list[asyncio.Task[None]] = []
        # Per peer: completed catch-ups, for tests and logs.
        self.caught_up: dict[str, int] = {url: 0 for url in self.peers}

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._follow(url)) for url in self.peers]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []

    async def _follow(self, url: str) -> None:
        delay = BACKOFF_FIRST
        while True:
            started = time.monotonic()
            try:
                await self._session(url)
            except (SyncError, OSError, TimeoutError) as error:
                log.info("mirror %s: %s", url, error)
            except Exception:  # one peer's surprise must not end mirroring
                log.exception("mirror %s failed", url)
            if time.monotonic() - started > STABLE_SECONDS:
                delay = BACKOFF_FIRST
            # Jitter: relays restarted together do not reconnect in lockstep.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, url: str) -> None:
        """Subscribe first, then catch up: an event published in between is not missed."""
        peer = await Peer.connect(url, SyncStats())
        try:
            since = int(time.time())
            await peer.send(["REQ", LIVE_SUB, {**self.filter, "since": since, "limit": 0}])
            catch_up = asyncio.create_task(self._catch_up(url))
            try:
                await self._live(peer)
            finally:
                catch_up.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await catch_up
        finally:
            await peer.close()

    async def _catch_up(self, url: str) -> None:
        try:
            stats = await sync(self.local, url, self.filter, "down", err=None)
        except SyncError as error:
            log.info("mirror %s: catch-up failed: %s", url, error)
            return
        self.caught_up[url] += 1
        log.info("mirror %s: caught up, %s", url, stats.summary())

    async def _live(self, peer: Peer) -> None:
        while True:
            try:
                reply = await peer.recv(3600.0)
            except TimeoutError:
                continue
            if reply[0] == "EVENT" and len(reply) >= 3 and reply[1] == LIVE_SUB:
                reason = await self.local.take(reply[2])
                if reason and not reason.startswith("duplicate:"):
                    log.info("mirror: refused an event from %s: %s", peer.ws.remote_address, reason)
            elif reply[0] == "CLOSED" and len(reply) >= 2 and reply[1] == LIVE_SUB:
                raise SyncError(f"the peer closed the live subscription: {reply[2:]}")
