"""Relay-to-relay sync: the work behind `relay sync URL` and the live mirror's catch-up.

Reconciles a local set of events with a peer's by NIP-77 negentropy (we initiate, as a
client over one WebSocket), then downloads what is missing here (REQ by ids, in batches
under the peer's advertised limits) and uploads what is missing there (EVENT, counting
the OK answers per reason prefix). A peer that does not speak NIP-77 (NOTICE, NEG-ERR or
silence after NEG-OPEN) is walked instead: REQ pages newest first, `until` moving back,
until nothing new comes. What arrives is checked like any event (`Local.store`): the
command line verifies and commits through the store's `save_many` (relay/transfer.py's
StoreLocal), the mirror through RelayServer.ingest (relay/net/mirror.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import orjson
from websockets.asyncio.client import ClientConnection, connect

from relay.core import canonical
from relay.core.filters import Filter, parse_filter
from relay.core.negentropy import (
    DEFAULT_MAX_PEER_ITEMS,
    MIN_FRAME_SIZE_LIMIT,
    NegentropyClient,
    NegentropyError,
    ReconciliationBoundError,
    Storage,
    whole_set_message,
)
from relay.store.base import EventStore

DIRECTIONS = ("down", "up", "both")
# Ids per REQ when the peer advertises no smaller max_limit (ours refuses over 1,000 values,
# and a refused batch is split in two and asked again).
FETCH_BATCH = 1000
# Events per REQ page while walking a peer without NIP-77.
WALK_PAGE = 500
# Our negentropy frames when the peer advertises no max_message_length: under 64 KiB of
# hex, what most relays accept in one message. An advertised length is used in full:
# larger frames are fewer round trips.
FRAME_LIMIT = 30_000
# EVENTs sent before waiting for their OKs: enough that the peer's writer commits them in
# large batches (the relay acknowledges only after its commit).
UPLOAD_WINDOW = 256
# From this many items the reconciliation opens with the whole set's fingerprint and builds
# the Storage meanwhile (one round trip more, against seconds of waiting at a million).
EARLY_OPEN_ITEMS = 50_000
# Seconds for a peer's first NEG-MSG before it is taken not to speak NIP-77.
NEG_ANSWER_SECONDS = 5.0
# Seconds any later reply may take before the peer is given up on.
REPLY_SECONDS = 60.0
PROGRESS_SECONDS = 1.0
# One letter each: the peer repeats a REQ's subscription id in every EVENT it sends back
# (10,000 events of a sync at a million: 70 kB more for "sync-get").
NEG_SUB = "n"
FETCH_SUB = "g"
MAX_FRAME = 16 * 1024 * 1024
# Outcomes that settle a difference (see SyncStats.complete).
SETTLED = ("stored", "ok", "duplicate", "blocked")


class SyncError(Exception):
    """The peer could not be reached or broke off; the sync is incomplete."""


class Local(Protocol):
    """This relay's side: its set, its events by id, and the write path for downloads."""

    async def items(self, f: Filter) -> list[tuple[int, bytes]]: ...

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]: ...

    async def store(self, objs: Sequence[Any]) -> list[str]:
        """Store events received as JSON objects; per event "" (stored) or the reason."""
        ...


class StoreReads:
    """The local side's reads, straight from its store: the set to reconcile, and events
    by id to upload. The relay's mirror and the command line differ only in how they write."""

    def __init__(self, store: EventStore) -> None:
        self.events = store

    async def items(self, f: Filter) -> list[tuple[int, bytes]]:
        return await self.events.negentropy_items([f], int(time.time()))

    async def raw_events(self, ids: Sequence[bytes]) -> list[bytes]:
        if not ids:
            return []
        f = parse_filter({"ids": [i.hex() for i in ids], "limit": len(ids)})
        return await self.events.query([f], int(time.time()))


@dataclass
class SyncStats:
    """What a sync did, for the progress line, the summary and the exit code."""

    mode: str = "negentropy"
    compared: int = 0
    rounds: int = 0
    need: int = 0
    have: int = 0
    fetched: int = 0
    stored: Counter[str] = field(default_factory=Counter)
    uploaded: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    # Seconds per phase (reading the set, building its fingerprints, reconciling, ...).
    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.monotonic() - began

    @property
    def complete(self) -> bool:
        """Every difference settled: fetched and stored, sent and accepted, or refused by a
        store rule (`blocked:`, e.g. deleted by its author), which another run would not
        change. Invalid, unserved, rate-limited or failed events leave it incomplete."""
        stored_ok = sum(self.stored[key] for key in SETTLED)
        sent_ok = sum(self.uploaded[key] for key in SETTLED)
        return self.missing == 0 and stored_ok == self.fetched and sent_ok == self.have

    def summary(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.mode}: {self.compared:,} compared in {self.rounds} round trips; "
            f"down: {self.need:,} needed, {self.fetched:,} fetched ({_counts(self.stored)}), "
            f"{self.missing:,} not served; up: {self.have:,} needed ({_counts(self.uploaded)}); "
            f"{self.sent_bytes:,} bytes sent, {self.received_bytes:,} received "
            f"in {seconds:.1f} s ({_phases(self.phases)})"
        )


def _phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n:,} {k}" for k, n in sorted(counter.items())) or "none"


def outcome_key(accepted: bool, reason: str) -> str:
    """An OK answer (or store outcome) counted by its machine-readable prefix."""
    prefix = reason.split(":", 1)[0] if ":" in reason else ""
    if prefix == "duplicate":
        return "duplicate"
    if accepted:
        return "ok"
    return prefix or "refused"


class Progress:
    """A stderr line at most once a second: on a terminal rewritten, otherwise appended."""

    def __init__(self, stats: SyncStats, err: TextIO | None) -> None:
        self.stats = stats
        self.err = err
        self.shown = 0.0

    def show(self, phase: str, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.err is None or (not force and now - self.shown < PROGRESS_SECONDS):
            return
        self.shown = now
        rate = done / max(now - self.stats.started, 1e-9)
        s = self.stats
        text = (
            f"sync {phase}: compared {s.compared:,}, needed here {s.need:,}, "
            f"needed there {s.have:,}, fetched {s.fetched:,}, "
            f"sent {sum(s.uploaded.values()):,}, {rate:,.0f}/s"
        )
        print(text, file=self.err, flush=True)


class Peer:
    """One WebSocket to the peer: JSON frames, byte counts, replies routed by caller."""

    def __init__(self, ws: ClientConnection, stats: SyncStats) -> None:
        self.ws = ws
        self.stats = stats

    @classmethod
    async def connect(cls, url: str, stats: SyncStats) -> Peer:
        try:
            ws = await connect(url, open_timeout=10, max_size=MAX_FRAME, close_timeout=2)
        except (OSError, TimeoutError, ValueError) as error:
            raise SyncError(f"cannot connect to {url}: {error}") from error
        except Exception as error:  # websockets' handshake errors (InvalidStatus, ...)
            raise SyncError(f"cannot connect to {url}: {error}") from error
        return cls(ws, stats)

    async def send(self, message: list[Any]) -> None:
        frame = orjson.dumps(message)
        self.stats.sent_bytes += len(frame)
        try:
            await self.ws.send(frame.decode())
        except Exception as error:
            raise SyncError(f"the peer closed the connection: {error}") from error

    async def recv(self, seconds: float) -> list[Any]:
        """The next frame that is a JSON array (AUTH challenges and noise are skipped)."""
        while True:
            try:
                frame = await asyncio.wait_for(self.ws.recv(), seconds)
            except TimeoutError:
                raise
            except Exception as error:
                raise SyncError(f"the peer closed the connection: {error}") from error
            self.stats.received_bytes += len(frame)
            try:
                reply = orjson.loads(frame)
            except orjson.JSONDecodeError:
                continue
            if type(reply) is list and reply and reply[0] != "AUTH":
                return reply

    async def close(self) -> None:
        await self.ws.close()


# -- the peer's limits ----------------------------------------------------------------


@dataclass(frozen=True)
class PeerLimits:
    fetch_batch: int = FETCH_BATCH
    frame_limit: int = FRAME_LIMIT


def http_url(url: str) -> str:
    if url.startswith("wss://"):
        return "https://" + url[6:]
    if url.startswith("ws://"):
        return "http://" + url[5:]
    return url


def _read_nip11(url: str) -> dict[str, Any]:
    request = urllib.request.Request(http_url(url), headers={"Accept": "application/nostr+json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        document = json.loads(response.read(1 << 20))
    return document if isinstance(document, dict) else {}


async def peer_limits(url: str) -> PeerLimits:
    """Batch and frame sizes under what the peer's NIP-11 document advertises, if any."""
    try:
        document = await asyncio.to_thread(_read_nip11, url)
    except (OSError, ValueError):
        return PeerLimits()
    limitation = document.get("limitation")
    if not isinstance(limitation, dict):
        return PeerLimits()
    batch, frame = FETCH_BATCH, FRAME_LIMIT
    max_limit = limitation.get("max_limit")
    if type(max_limit) is int and max_limit > 0:
        batch = min(batch, max_limit)
    length = limitation.get("max_message_length")
    if type(length) is int and length > 0:
        # Hex doubles the bytes; keep room for the frame around them.
        frame = max(MIN_FRAME_SIZE_LIMIT, (length - 256) // 2)
        # Each id is 67 bytes of JSON in a REQ.
        batch = max(1, min(batch, (length - 256) // 67))
    return PeerLimits(batch, frame)


# -- negentropy -----------------------------------------------------------------------


class NotSupported(Exception):
    """The peer does not reconcile this filter with us (why, for the progress line)."""


async def _neg_reply(peer: Peer, sub_id: str, seconds: float, first: bool) -> bytes:
    while True:
        try:
            reply = await peer.recv(seconds)
        except TimeoutError:
            if first:
                raise NotSupported(f"no answer to NEG-OPEN in {seconds:g} s") from None
            raise SyncError("the peer stopped answering NEG-MSG") from None
        verb = reply[0]
        if verb == "NOTICE" and first:
            raise NotSupported(f"NOTICE {reply[1:]!r}")
        if len(reply) < 3 or reply[1] != sub_id:
            continue
        if verb == "NEG-ERR":
            if first:
                raise NotSupported(f"NEG-ERR {reply[2]!r}")
            raise SyncError(f"the peer ended the reconciliation: {reply[2]}")
        if verb == "NEG-MSG" and isinstance(reply[2], str):
            try:
                return bytes.fromhex(reply[2])
            except ValueError:
                raise SyncError("the peer sent a NEG-MSG that is not hex") from None


async def reconcile(
    peer: Peer,
    filter_obj: dict[str, Any],
    items: list[tuple[int, bytes]],
    frame_limit: int,
    answer_seconds: float = NEG_ANSWER_SECONDS,
    max_peer_items: int = DEFAULT_MAX_PEER_ITEMS,
) -> tuple[list[bytes], list[bytes]]:
    """NIP-77 as the initiator: (ids we have and the peer lacks, ids the peer has and we lack).

    A large set opens with its whole fingerprint, and its Storage (the sort and the prefix
    sums, seconds at a million items) is built on a thread while the peer reads and builds
    its own. Raises NotSupported when the peer's first answer is not a NEG-MSG.
    """
    stats = peer.stats
    building: asyncio.Task[Storage] | None = None
    client: NegentropyClient | None = None
    if len(items) >= EARLY_OPEN_ITEMS:
        with stats.timed("fingerprints"):
            first = await asyncio.to_thread(whole_set_message, items)
        building = asyncio.create_task(asyncio.to_thread(Storage, items))
    else:
        with stats.timed("fingerprints"):
            client = NegentropyClient(
                await asyncio.to_thread(Storage, items), frame_limit, max_peer_items
            )
        first = client.initiate()
    sub_id = NEG_SUB
    have: list[bytes] = []
    need: list[bytes] = []
    try:
        await peer.send(["NEG-OPEN", sub_id, filter_obj, first.hex()])
        message = await _neg_reply(peer, sub_id, answer_seconds, first=True)
        if building is not None:
            with stats.timed("fingerprints (waited for)"):
                client = NegentropyClient(await building, frame_limit, max_peer_items)
    finally:
        if building is not None and client is None:
            building.cancel()
    assert client is not None
    while True:
        stats.rounds += 1
        try:
            following, got_have, got_need = client.reconcile(message)
        except ReconciliationBoundError as error:
            await peer.send(["NEG-CLOSE", sub_id])
            raise SyncError(f"reconciliation stopped: {error}") from None
        except NegentropyError as error:
            await peer.send(["NEG-CLOSE", sub_id])
            raise SyncError(f"the peer's NEG-MSG is malformed: {error}") from None
        have.extend(got_have)
        need.extend(got_need)
        if following is None:
            await peer.send(["NEG-CLOSE", sub_id])
            return have, need
        await peer.send(["NEG-MSG", sub_id, following.hex()])
        message = await _neg_reply(peer, sub_id, REPLY_SECONDS, first=False)


# -- REQ: by ids, and walking back by `until` -----------------------------------------


async def request(peer: Peer, sub_id: str, filter_obj: dict[str, Any]) -> list[Any] | str:
    """The events of one REQ up to EOSE, or the CLOSED reason."""
    await peer.send(["REQ", sub_id, filter_obj])
    events: list[Any] = []
    while True:
        try:
            reply = await peer.recv(REPLY_SECONDS)
        except TimeoutError:
            raise SyncError(f"no EOSE for {sub_id} in {REPLY_SECONDS:g} s") from None
        if len(reply) < 2 or reply[1] != sub_id:
            continue
        if reply[0] == "EVENT" and len(reply) >= 3 and isinstance(reply[2], dict):
            events.append(reply[2])
        elif reply[0] == "EOSE":
            await peer.send(["CLOSE", sub_id])
            return events
        elif reply[0] == "CLOSED":
            return str(reply[2]) if len(reply) > 2 else "closed"


async def fetch_ids(peer: Peer, ids: Sequence[bytes]) -> tuple[list[Any], int]:
    """The peer's events with these ids: (events, round trips). A refused batch is split."""
    wanted = {i.hex() for i in ids}
    result = await request(peer, FETCH_SUB, {"ids": sorted(wanted), "limit": len(wanted)})
    if isinstance(result, str):
        if len(ids) == 1:
            return [], 1
        middle = len(ids) // 2
        first, trips_a = await fetch_ids(peer, ids[:middle])
        second, trips_b = await fetch_ids(peer, ids[middle:])
        return first + second, 1 + trips_a + trips_b
    # Only what was asked for: a peer might send more, or twice.
    kept = []
    for obj in result:
        event_id = obj.get("id")
        if event_id in wanted:
            wanted.discard(event_id)
            kept.append(obj)
    return kept, 1


async def walk(
    peer: Peer, filter_obj: dict[str, Any], page: int, err: TextIO | None
) -> AsyncIterator[list[Any]]:
    """Every event of the peer matching the filter, newest first, page by page, once each."""
    seen: set[str] = set()
    until: int | None = filter_obj.get("until")
    while True:
        query = {**filter_obj, "limit": page}
        if until is not None:
            query["until"] = until
        result = await request(peer, "sync-walk", query)
        peer.stats.rounds += 1
        if isinstance(result, str):
            raise SyncError(f"the peer refused REQ: {result}")
        fresh = [e for e in result if isinstance(e.get("id"), str) and e["id"] not in seen]
        stamps = [e["created_at"] for e in result if type(e.get("created_at")) is int]
        if fresh:
            seen.update(e["id"] for e in fresh)
            yield fresh
        if not stamps:
            return
        oldest = min(stamps)
        if not fresh:
            if until is None or oldest < until or until <= 0:
                return
            # A full page within one second: step past it (its other events are missed).
            if err is not None:
                print(f"sync: more than {page} events at created_at {until}", file=err)
            oldest = until - 1
        until = oldest


# -- upload ---------------------------------------------------------------------------


async def upload(
    peer: Peer, raws: Sequence[bytes], counts: Counter[str], progress: Progress
) -> None:
    """EVENT each raw event, up to UPLOAD_WINDOW unanswered, and count the OKs."""
    waiting: set[str] = set()
    pending = list(raws)
    pending.reverse()
    while pending or waiting:
        while pending and len(waiting) < UPLOAD_WINDOW:
            raw = pending.pop()
            obj = canonical.loads(raw)
            waiting.add(obj["id"])
            frame = b'["EVENT",' + raw + b"]"
            peer.stats.sent_bytes += len(frame)
            try:
                await peer.ws.send(frame.decode())  # text: bytes would go as a binary frame
            except Exception as error:
                raise SyncError(f"the peer closed the connection: {error}") from error
        try:
            reply = await peer.recv(REPLY_SECONDS)
        except TimeoutError:
            counts["timeout"] += len(waiting) + len(pending)
            return
        if reply[0] == "OK" and len(reply) >= 3 and reply[1] in waiting:
            waiting.discard(reply[1])
            reason = str(reply[3]) if len(reply) > 3 else ""
            counts[outcome_key(reply[2] is True, reason)] += 1
            progress.show("upload", sum(counts.values()))


# -- the whole sync -------------------------------------------------------------------


async def sync(
    local: Local,
    url: str,
    filter_obj: dict[str, Any],
    direction: str = "both",
    err: TextIO | None = sys.stderr,
    answer_seconds: float = NEG_ANSWER_SECONDS,
    stats: SyncStats | None = None,
    max_peer_items: int = DEFAULT_MAX_PEER_ITEMS,
) -> SyncStats:
    """Reconcile with the peer at `url` and transfer what `direction` asks for; the peer
    may report at most `max_peer_items` ids we lack (a bound on a misbehaving one)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    stats = stats or SyncStats()
    progress = Progress(stats, err)
    limits = await peer_limits(url)
    local_filter = parse_filter(filter_obj)
    with stats.timed("set"):
        items = await local.items(local_filter)
    peer = await Peer.connect(url, stats)
    try:
        try:
            with stats.timed("reconcile"):
                have, need = await reconcile(
                    peer, filter_obj, items, limits.frame_limit, answer_seconds, max_peer_items
                )
        except NotSupported as why:
            if err is not None:
                print(f"sync: {url} does not reconcile ({why}); walking its events", file=err)
            stats.mode = "walk"
            await _walk_sync(peer, local, filter_obj, items, direction, limits, progress)
            return stats
        stats.compared = len(items)
        stats.have = len(have) if direction != "down" else 0
        stats.need = len(need) if direction != "up" else 0
        progress.show("reconciled", stats.compared, force=True)
        await _transfer(
            peer,
            url,
            local,
            need if direction != "up" else [],
            have if direction != "down" else [],
            limits,
            progress,
        )
    finally:
        await peer.close()
    progress.show("done", stats.fetched + stats.have, force=True)
    return stats


async def _transfer(
    peer: Peer,
    url: str,
    local: Local,
    need: Sequence[bytes],
    have: Sequence[bytes],
    limits: PeerLimits,
    progress: Progress,
) -> None:
    """Download on this connection and upload on a second one at the same time: the peer
    serves REQs while its writer commits what we send, and we store while it sends."""
    stats = progress.stats

    async def download() -> None:
        with stats.timed("download"):
            await _download(peer, local, need, limits.fetch_batch, progress)

    async def upload() -> None:
        with stats.timed("upload"):
            uploader = peer if not need else await Peer.connect(url, stats)
            try:
                await _upload(uploader, local, have, progress)
            finally:
                if uploader is not peer:
                    await uploader.close()

    jobs = ([download()] if need else []) + ([upload()] if have else [])
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one failed: the other stops too
            task.cancel()


async def _download(
    peer: Peer, local: Local, need: Sequence[bytes], batch: int, progress: Progress
) -> None:
    """REQ by ids, batch after batch; each batch is stored while the next one is fetched."""
    stats = progress.stats
    storing: asyncio.Task[None] | None = None
    try:
        for start in range(0, len(need), batch):
            wanted = need[start : start + batch]
            objs, trips = await fetch_ids(peer, wanted)
            stats.rounds += trips
            stats.fetched += len(objs)
            stats.missing += len(wanted) - len(objs)
            if storing is not None:
                await storing
            storing = asyncio.create_task(_store(local, objs, stats))
            progress.show("download", stats.fetched)
        if storing is not None:
            await storing
    finally:
        if storing is not None and not storing.done():
            storing.cancel()


async def _store(local: Local, objs: Sequence[Any], stats: SyncStats) -> None:
    for reason in await local.store(objs):
        stats.stored["stored" if not reason else outcome_key(False, reason)] += 1


async def _upload(peer: Peer, local: Local, have: Sequence[bytes], progress: Progress) -> None:
    for start in range(0, len(have), 1000):
        raws = await local.raw_events(have[start : start + 1000])
        await upload(peer, raws, progress.stats.uploaded, progress)


async def _walk_sync(
    peer: Peer,
    local: Local,
    filter_obj: dict[str, Any],
    items: list[tuple[int, bytes]],
    direction: str,
    limits: PeerLimits,
    progress: Progress,
) -> None:
    """Without NIP-77: every peer event is seen; new ones are stored, ours not seen sent."""
    stats = progress.stats
    mine = {event_id for _, event_id in items}
    theirs: set[bytes] = set()
    page = min(WALK_PAGE, limits.fetch_batch)
    async for events in walk(peer, filter_obj, page, progress.err):
        stats.compared += len(events)
        new = []
        for obj in events:
            try:
                event_id = bytes.fromhex(obj["id"])
            except (ValueError, TypeError):
                continue
            theirs.add(event_id)
            if event_id not in mine:
                new.append(obj)
        if direction != "up" and new:
            stats.need += len(new)
            stats.fetched += len(new)
            await _store(local, new, stats)
        progress.show("walk", stats.compared)
    if direction != "down":
        have = [event_id for _, event_id in items if event_id not in theirs]
        stats.have = len(have)
        await _upload(peer, local, have, progress)
