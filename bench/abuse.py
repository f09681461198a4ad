"""`python -m bench.abuse`: issue 12's six hostile-client attacks, each against a fresh relay.

Every attack starts the real relay (`python -m relay`, default settings, its own database in a
temporary directory), runs one attack from a load-generator process (`bench.load.Elsewhere`)
while this process watches the relay's resident memory, stops the relay and prints the figure
beside the issue's target as a Markdown table. Each attack has its own time limit and is
reported as "timed out" past it. Attacks 2 and 3 use a copy of the cached 200,000-event
dataset (`bench/stores.py`). Progress goes to stderr, the table to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from coincurve import PrivateKey

from bench.data import HASHTAGS, WORDS, ingest_events, secret, sign
from bench.load import HOST, Elsewhere, IngestResult, ingest, run_elsewhere
from bench.relays import PyRelay, process_tree, resident_bytes
from bench.stores import Dataset
from bench.wsclient import WsClient

MB = 1024 * 1024
# Seconds each attack may take, relay start and stop included, before it is "timed out".
ATTACK_SECONDS = 120.0
# Seconds a relay gets to exit after SIGTERM before it is killed.
STOP_SECONDS = 15.0
# Seconds the relay is left alone after start or after a load, before memory is read.
SETTLE_SECONDS = 1.0
# Seconds after the attacker leaves at which memory must have come back.
AFTER_SECONDS = 5.0
DATASET_SIZE = 200_000

# Probing readers (attacks 2 and 3): one REQ by id every PROBE_INTERVAL s, each on its own
# connection opened beforehand, from the attack's start until it is over (at least
# PROBE_MIN_SECONDS, at most PROBE_MAX_SECONDS); a probe unanswered PROBE_GRACE s after the
# last one was sent counts with the time it had waited (a lower bound).
PROBE_INTERVAL = 0.1
PROBE_MIN_SECONDS = 1.0
PROBE_MAX_SECONDS = 15.0
PROBE_GRACE = 10.0

# Attack 1: values are base-36 numbers, distinct across the whole attack, 4 characters.
LIVE_REQS = 32
LIVE_FILTERS = 16
LIVE_VALUES = 1000
# Attack 2.
COUNTS = 300
# Attack 3: six heavy REQs, each ended HEAVY_CANCEL_AFTER s later, by CLOSE or replacement.
HEAVY_ROUNDS = 6
HEAVY_FILTERS = 8
HEAVY_CANCEL_AFTER = 0.3
# Attack 4.
TAX_CONNECTIONS = 20
TAX_SUBSCRIPTIONS = 32
TAX_FILTERS = 16
PUBLISH_IN_FLIGHT = 8
PUBLISH_SECONDS = 5.0
PUBLISH_EVENTS = 6000  # per phase: more than the relay publishes in PUBLISH_SECONDS
# Attacks 5 and 6: notes of ~124 KB within the default limits (content <= 65,536
# characters, each tag value <= 4,096, the event <= 131,072 bytes).
BIG_CONTENT = 65_000
BIG_TAGS = 15
BIG_TAG_VALUE = 4_000
FEED_NOTES = 70
HUGE_CLIENTS = 6
HUGE_NOTES = 400
# A reader at a normal pace: 5 MB/s (40 Mbit/s), well below what loopback would carry.
READ_BYTES_PER_SECOND = 5 * MB
READ_SECONDS = 60.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the relay and its memory ---------------------------------------------------------------


def relay_rss(pid: int) -> int:
    """Resident bytes of the relay and its child processes (write and verify processes)."""
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += resident_bytes(each)
    return total


@contextlib.contextmanager
def fresh_relay(workdir: Path, db: Path) -> Iterator[PyRelay]:
    """The relay with default settings on its own database; stopped (or killed) after."""
    relay = PyRelay(workdir)
    relay.start(db)
    try:
        yield relay
    finally:
        _stop(relay)


def _stop(relay: PyRelay) -> None:
    proc = relay.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log(f"  the relay did not exit {STOP_SECONDS:.0f} s after SIGTERM; killed")
        for pid in reversed(process_tree(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def elsewhere(fn: Callable[..., Any], *args: Any) -> Iterator[Elsewhere]:
    """A load-generator process that is killed if the attack ends before it does."""
    holder = Elsewhere(fn, *args)
    try:
        yield holder
    finally:
        if holder.process.is_alive():
            holder.process.kill()
        holder.process.join(5)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"over {self.seconds:.0f} s")
        return left


def wait_watching(holder: Elsewhere, pid: int, deadline: Deadline) -> tuple[Any, int]:
    """The load generator's next message, and the relay's peak memory until it came."""
    peak = relay_rss(pid)
    while not holder.pipe.poll(min(0.1, deadline.left())):
        peak = max(peak, relay_rss(pid))
    return holder.message(1), max(peak, relay_rss(pid))


def _mb(size: float) -> str:
    return f"{size / MB:+.0f} MB"


# -- what the load generator runs -------------------------------------------------------------


def prefixes(reasons: list[str]) -> str:
    """`restricted: 32` from a list of CLOSED reasons."""
    counts: dict[str, int] = {}
    for reason in reasons:
        prefix = reason.split(":", 1)[0] if ":" in reason else reason[:40]
        counts[prefix] = counts.get(prefix, 0) + 1
    return ", ".join(f"{prefix}: {n}" for prefix, n in counts.items())


@dataclass
class Replies:
    """What the relay answered to a batch of REQs (or COUNTs)."""

    answered: int = 0
    closed: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    disconnected: int = 0


def _tally(replies: Replies, payload: bytes) -> bool:
    """Counts an answer to a REQ or COUNT; True when `payload` was one."""
    if payload.startswith((b'["EOSE"', b'["COUNT"')):
        replies.answered += 1
        return True
    if payload.startswith(b'["CLOSED"'):
        replies.answered += 1
        replies.closed.append(str(orjson.loads(payload)[2]))
        return True
    if payload.startswith(b'["NOTICE"') and len(replies.notices) < 5:
        replies.notices.append(str(orjson.loads(payload)[1])[:100])
    return False


def distinct_tag_reqs(connection: int) -> list[bytes]:
    """Attack 1: LIVE_REQS REQs of LIVE_FILTERS filters, each with LIVE_VALUES `#t` values
    that no other filter holds, and `limit: 0` (live only)."""
    frames = []
    value = connection * LIVE_REQS * LIVE_FILTERS * LIVE_VALUES
    for number in range(LIVE_REQS):
        filters = []
        for _ in range(LIVE_FILTERS):
            values = [_base36(value + n) for n in range(LIVE_VALUES)]
            value += LIVE_VALUES
            filters.append({"#t": values, "limit": 0})
        frames.append(orjson.dumps(["REQ", f"live{number}", *filters]))
    return frames


def _base36(number: int) -> str:
    digits = string.digits + string.ascii_lowercase
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = digits[digit] + out
        if not number:
            return out


def future_since_reqs(connection: int) -> list[bytes]:
    """Attack 4: subscriptions to kind 1 whose `since` no event can reach.

    Every filter of the attack differs (`since` is 2**40 plus its number): identical filters
    of one REQ are one entry in the live index, and a hostile client would not send those.
    """
    first = connection * TAX_SUBSCRIPTIONS * TAX_FILTERS
    frames = []
    for number in range(TAX_SUBSCRIPTIONS):
        filters = [
            {"kinds": [1], "since": 2**40 + first + number * TAX_FILTERS + f, "limit": 0}
            for f in range(TAX_FILTERS)
        ]
        frames.append(orjson.dumps(["REQ", f"tax{number}", *filters]))
    return frames


async def hold_subscriptions(
    pipe: Connection, port: int, connections: int, make_reqs: Callable[[int], list[bytes]]
) -> Replies:
    """Open `connections`, send each its REQs, report the answers, hold them until told."""
    replies = Replies()
    clients = []
    all_reqs = [make_reqs(number) for number in range(connections)]
    expected = sum(len(reqs) for reqs in all_reqs)
    everything_answered = asyncio.Event()

    def on_message(payload: bytes) -> None:
        if _tally(replies, payload) and replies.answered >= expected:
            everything_answered.set()

    for reqs in all_reqs:
        client = await WsClient.connect(HOST, port, on_message)
        for req in reqs:
            client.send(req)
        clients.append(client)
    # Done when everything is answered, or when the relay has closed every connection.
    answered = asyncio.ensure_future(everything_answered.wait())
    all_closed = asyncio.gather(*(client.closed for client in clients))
    await asyncio.wait((answered, all_closed), return_when=asyncio.FIRST_COMPLETED)
    answered.cancel()
    replies.disconnected = sum(1 for client in clients if client.closed.done())
    pipe.send(("ok", replies))
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)
    return replies


class ReadingClient(WsClient):
    """A client that reads at `rate` bytes a second (pausing the socket when ahead), and
    keeps the close code the relay sent."""

    def __init__(self, on_message: Callable[[bytes], None], rate: float) -> None:
        super().__init__(on_message)
        self.rate = rate
        self.received = 0
        self.started = time.monotonic()
        self.close_code: int | None = None

    def begin(self) -> None:
        self.received = 0
        self.started = time.monotonic()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.received += len(data)
        ahead = self.received / self.rate - (time.monotonic() - self.started)
        if ahead > 0.01 and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(ahead, self._resume)

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _frame(self, first: int, payload: bytes) -> None:
        if first & 0x0F == 0x8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        super()._frame(first, payload)


@dataclass
class Reader:
    """What one reading client got."""

    events: int = 0
    eose: bool = False
    done: asyncio.Event | None = None
    seconds: float = 0.0
    replies: Replies = field(default_factory=Replies)
    close_code: int | None = None


async def read_results(
    pipe: Connection, port: int, clients: int, flt: dict[str, Any], rate: float
) -> list[Reader]:
    """`clients` connections each send one REQ and read its result at `rate` bytes/s."""
    readers = [Reader(done=asyncio.Event()) for _ in range(clients)]
    connections = [await _reading_client(port, reader, rate) for reader in readers]
    req = orjson.dumps(["REQ", "feed", flt])
    start = time.monotonic()
    for client in connections:
        client.begin()
        client.send(req)

    async def finished(reader: Reader, client: ReadingClient) -> None:
        assert reader.done is not None
        answered = asyncio.ensure_future(reader.done.wait())
        await asyncio.wait((answered, client.closed), return_when=asyncio.FIRST_COMPLETED)
        answered.cancel()
        reader.seconds = time.monotonic() - start

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(finished(r, c) for r, c in zip(readers, connections, strict=True))),
            READ_SECONDS,
        )
    for reader, client in zip(readers, connections, strict=True):
        reader.done = None  # an asyncio.Event does not cross the pipe
        reader.close_code = client.close_code
        reader.replies.disconnected = int(client.closed.done())
    pipe.send(("ok", readers))
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    for client in connections:
        client.close()
    await asyncio.sleep(0.2)
    return readers


async def _reading_client(port: int, reader: Reader, rate: float) -> ReadingClient:
    def on_message(payload: bytes) -> None:
        if payload.startswith(b'["EVENT"'):
            reader.events += 1
        elif _tally(reader.replies, payload):
            reader.eose = payload.startswith(b'["EOSE"')
            assert reader.done is not None
            reader.done.set()

    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: ReadingClient(on_message, rate), HOST, port)
    await client.opened
    return client


@dataclass
class Probes:
    """REQs by id of a bystander during an attack, and what the attacker got meanwhile."""

    latencies: list[float]  # seconds to EOSE
    unanswered: list[float]  # seconds waited by probes still unanswered at the end
    attack: Replies
    attack_seconds: float | None  # until the attack was over, if it was


class Attacker:
    """The attacking connection: `send_attack` runs the attack, `over` says when it is."""

    def __init__(self, expected_answers: int) -> None:
        self.replies = Replies()
        self.expected = expected_answers
        self.sent_all_at: float | None = None
        self.over_at: float | None = None
        self.client: WsClient | None = None

    def on_message(self, payload: bytes) -> None:
        _tally(self.replies, payload)
        if self.expected and self.replies.answered >= self.expected and self.over_at is None:
            self.over_at = time.monotonic()

    def over(self) -> bool:
        return self.over_at is not None and time.monotonic() >= self.over_at


async def _send_counts(attacker: Attacker) -> None:
    """Attack 2: COUNTS x COUNT of every kind-1 note, at once."""
    assert attacker.client is not None
    for number in range(COUNTS):
        attacker.client.send(orjson.dumps(["COUNT", f"c{number}", {"kinds": [1]}]))
    attacker.sent_all_at = time.monotonic()


async def _send_heavy_reqs(attacker: Attacker) -> None:
    """Attack 3: a heavy REQ, ended HEAVY_CANCEL_AFTER s later by its replacement (the next
    heavy REQ under the same id) or by CLOSE, in turn, HEAVY_ROUNDS times."""
    assert attacker.client is not None
    for number in range(HEAVY_ROUNDS):
        filters = [
            # Every hashtag of the dataset (about 24% of its events carry one), padded to
            # LIVE_VALUES values; the padding differs per filter so none is a duplicate.
            {"#t": [*HASHTAGS, *(f"x{number}-{f}-{n}" for n in range(800))], "limit": 5000}
            for f in range(HEAVY_FILTERS)
        ]
        attacker.client.send(orjson.dumps(["REQ", "heavy", *filters]))
        await asyncio.sleep(HEAVY_CANCEL_AFTER)
        if number % 2 == 1:
            attacker.client.send(b'["CLOSE","heavy"]')
    attacker.sent_all_at = time.monotonic()
    # Over one second after the last CLOSE: the relay has stopped hearing from it.
    attacker.over_at = attacker.sent_all_at + 1.0


ATTACK_SENDERS = {"counts": (_send_counts, COUNTS), "heavy": (_send_heavy_reqs, 0)}


async def probe_during(_pipe: Connection, port: int, ids: list[str], attack: str) -> Probes:
    """Run `attack` on one connection while bystanders send REQs by id on others."""
    send_attack, expected = ATTACK_SENDERS[attack]
    loop = asyncio.get_running_loop()
    most = int(PROBE_MAX_SECONDS / PROBE_INTERVAL) + 1
    answered_at: list[float | None] = [None] * most
    sent_at: list[float] = []
    all_answered = asyncio.Event()

    def on_probe_message(number: int) -> Callable[[bytes], None]:
        def on_message(payload: bytes) -> None:
            if payload.startswith((b'["EOSE"', b'["CLOSED"')) and answered_at[number] is None:
                answered_at[number] = time.monotonic()
                if all(answered_at[n] is not None for n in range(len(sent_at))):
                    all_answered.set()

        return on_message

    probes = []
    for start in range(0, most, 50):
        batch = [
            WsClient.connect(HOST, port, on_probe_message(n))
            for n in range(start, min(start + 50, most))
        ]
        probes.extend(await asyncio.gather(*batch))
    attacker = Attacker(expected)
    attacker.client = await WsClient.connect(HOST, port, attacker.on_message)
    started = time.monotonic()
    attack_task = loop.create_task(send_attack(attacker))
    for number, probe in enumerate(probes):
        due = started + (number + 1) * PROBE_INTERVAL
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        elapsed = due - started
        if elapsed > PROBE_MAX_SECONDS or (elapsed > PROBE_MIN_SECONDS and attacker.over()):
            break
        all_answered.clear()
        sent_at.append(time.monotonic())
        probe.send(orjson.dumps(["REQ", "probe", {"ids": [ids[number % len(ids)]]}]))
    if any(answered_at[n] is None for n in range(len(sent_at))):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_answered.wait(), PROBE_GRACE)
    now = time.monotonic()
    latencies, unanswered = [], []
    for number, sent in enumerate(sent_at):
        answer = answered_at[number]
        if answer is None:
            unanswered.append(now - sent)
        else:
            latencies.append(answer - sent)
    attack_task.cancel()
    over = attacker.over_at - started if attacker.over_at is not None else None
    attacker.client.close()
    for probe in probes:
        probe.close()
    await asyncio.sleep(0.2)
    return Probes(latencies, unanswered, attacker.replies, over)


# -- the attacks, run from this process -------------------------------------------------------


@dataclass
class Row:
    attack: str
    figure: str
    target: str
    met: bool | None


@dataclass
class Context:
    workdir: Path
    workers: int
    dataset_size: int
    dataset: Dataset | None = None

    def fresh_db(self, name: str) -> Path:
        return self.workdir / f"{name}.sqlite"

    def dataset_db(self, name: str) -> Path:
        assert self.dataset is not None
        return self.dataset.copy_pyrelay_db(self.workdir / f"{name}.sqlite")


def attack_live_filters(ctx: Context, deadline: Deadline) -> tuple[str, bool]:
    """(1) one connection fills the live index with distinct `#t` values."""
    with fresh_relay(ctx.workdir, ctx.fresh_db("live-filters")) as relay:
        time.sleep(SETTLE_SECONDS)
        baseline = relay_rss(relay.pid)
        with elsewhere(hold_subscriptions, relay.port, 1, distinct_tag_reqs) as holder:
            replies, peak = wait_watching(holder, relay.pid, deadline)
            time.sleep(SETTLE_SECONDS)
            peak = max(peak, relay_rss(relay.pid))
            holder.send("leave")
            holder.result(deadline.left())
        time.sleep(AFTER_SECONDS)
        after = relay_rss(relay.pid)
    refused = len(replies.closed)
    figure = (
        f"{_mb(peak - baseline)} during, {_mb(after - baseline)} {AFTER_SECONDS:.0f} s after"
        f" (baseline {baseline / MB:.0f} MB); {refused} of {LIVE_REQS} REQs CLOSED"
        + (f" ({prefixes(replies.closed)})" if refused else "")
        + _notices(replies)
    )
    met = (peak - baseline < 64 * MB and after - baseline < 32 * MB) or refused == LIVE_REQS
    return figure, met


def _notices(replies: Replies) -> str:
    text = ""
    if replies.notices:
        text += f"; NOTICE {replies.notices[0]!r}"
    if replies.disconnected:
        text += f"; {replies.disconnected} disconnected"
    return text


def attack_counts(ctx: Context, deadline: Deadline) -> tuple[str, bool]:
    """(2) one connection queues COUNTS counts of every kind-1 note."""
    return _probed_attack(ctx, deadline, "counts")


def attack_cancelled_queries(ctx: Context, deadline: Deadline) -> tuple[str, bool]:
    """(3) heavy REQs, each CLOSEd or replaced 0.3 s later."""
    return _probed_attack(ctx, deadline, "heavy")


def _probed_attack(ctx: Context, deadline: Deadline, attack: str) -> tuple[str, bool]:
    assert ctx.dataset is not None
    ids: list[str] = ctx.dataset.samples()["ids"]
    with fresh_relay(ctx.workdir, ctx.dataset_db(attack)) as relay:
        time.sleep(SETTLE_SECONDS)
        with elsewhere(probe_during, relay.port, ids, attack) as holder:
            probes: Probes = holder.result(deadline.left())
    waits = probes.latencies + probes.unanswered
    p50, p99 = _percentile(waits, 0.5), _percentile(waits, 0.99)
    # A probe still waiting at the end only gives a lower bound of its wait.
    p50_bound = ">= " if p50 in probes.unanswered else ""
    p99_bound = ">= " if p99 in probes.unanswered else ""
    replies = probes.attack
    if attack == "counts":
        done = f"{replies.answered} of {COUNTS} COUNTs answered"
    else:
        done = f"{HEAVY_ROUNDS} heavy REQs sent, {replies.answered} EOSE/CLOSED"
    over = probes.attack_seconds
    figure = (
        f"REQ by id p50 {p50_bound}{p50:.2f} s, p99 {p99_bound}{p99:.2f} s"
        f" ({len(waits)} probes, {len(probes.unanswered)} unanswered after"
        f" {PROBE_GRACE:.0f} s); {done}"
        + (f" in {over:.1f} s" if over is not None and attack == "counts" else "")
        + (f" ({prefixes(replies.closed)})" if replies.closed else "")
        + _notices(replies)
    )
    return figure, bool(waits) and p50 < 1.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def attack_publish_tax(ctx: Context, deadline: Deadline) -> tuple[str, bool]:
    """(4) kind-1 publishing with and without connections full of never-matching filters."""
    events = ingest_events(2 * PUBLISH_EVENTS, ctx.workers, namespace="abuse")
    with fresh_relay(ctx.workdir, ctx.fresh_db("publish-tax")) as relay:
        time.sleep(SETTLE_SECONDS)
        alone = _publish(relay.port, events[:PUBLISH_EVENTS], deadline)
        with elsewhere(
            hold_subscriptions, relay.port, TAX_CONNECTIONS, future_since_reqs
        ) as holder:
            replies: Replies = holder.message(deadline.left())
            taxed = _publish(relay.port, events[PUBLISH_EVENTS:], deadline)
            holder.send("leave")
            holder.result(deadline.left())
    ratio = taxed.rate / alone.rate if alone.rate else math.nan
    subscriptions = TAX_CONNECTIONS * TAX_SUBSCRIPTIONS
    figure = (
        f"{ratio:.0%}: {taxed.rate:,.0f} events/s with {TAX_CONNECTIONS} attackers"
        f" ({subscriptions - len(replies.closed)} of {subscriptions} subscriptions open),"
        f" {alone.rate:,.0f} without"
        + (f"; CLOSED {prefixes(replies.closed)}" if replies.closed else "")
        + _refusals(alone, taxed)
    )
    return figure, ratio >= 0.5


def _publish(port: int, events: list[bytes], deadline: Deadline) -> IngestResult:
    result: IngestResult = run_elsewhere(
        ingest, port, events, 1, PUBLISH_IN_FLIGHT, PUBLISH_SECONDS, timeout=deadline.left()
    )
    return result


def _refusals(*results: IngestResult) -> str:
    refused = sum(r.refused for r in results)
    reasons = [reason for r in results for reason in r.refusals]
    return f"; {refused} refused ({reasons[0]})" if refused else ""


def big_notes(count: int) -> list[bytes]:
    """`count` kind-1 notes of ~124 KB each, dated in the last minutes, within the limits."""
    key = PrivateKey(secret("abuse-big", 0))
    pubkey = str(key.public_key_xonly.format().hex())
    rng = random.Random(12)
    filler = " ".join(rng.choice(WORDS) for _ in range(BIG_CONTENT // 4))
    tag_filler = hashlib.sha256(b"abuse").hexdigest() * (BIG_TAG_VALUE // 64 + 1)
    now = int(time.time())
    notes = []
    for index in range(count):
        content = f"{index} {filler}"[:BIG_CONTENT]
        tags = [["alt", tag_filler[:BIG_TAG_VALUE]] for _ in range(BIG_TAGS)]
        notes.append(sign(key, pubkey, now - index, 1, tags, content))
    return notes


def _store_big_notes(port: int, count: int, deadline: Deadline) -> None:
    """Published through the relay itself: proof that they are within its default limits."""
    notes = big_notes(count)
    result: IngestResult = run_elsewhere(
        ingest, port, notes, 1, PUBLISH_IN_FLIGHT, 60.0, timeout=deadline.left()
    )
    if result.accepted != count:
        raise RuntimeError(
            f"the relay stored {result.accepted} of {count} big notes: {result.refusals[:1]}"
        )


def attack_big_feed(ctx: Context, deadline: Deadline) -> tuple[str, bool]:
    """(5) a reader of the global feed, whose result is larger than the outbox."""
    with fresh_relay(ctx.workdir, ctx.fresh_db("big-feed")) as relay:
        _store_big_notes(relay.port, FEED_NOTES, deadline)
        flt = {"kinds": [1]}
        with elsewhere(read_results, relay.port, 1, flt, READ_BYTES_PER_SECOND) as holder:
            readers: list[Reader] = holder.message(deadline.left())
            holder.send("leave")
            holder.result(deadline.left())
    reader = readers[0]
    figure = (
        f"{reader.events} of {FEED_NOTES} events, EOSE {'yes' if reader.eose else 'no'},"
        f" over after {reader.seconds:.2f} s"
        + _notices(reader.replies)
        + (f" (close code {reader.close_code})" if reader.close_code else "")
        + (f"; CLOSED {prefixes(reader.replies.closed)}" if reader.replies.closed else "")
    )
    met = (
        reader.events == FEED_NOTES
        and reader.eose
        and not reader.replies.notices
        and not reader.replies.disconnected
    )
    return figure, met


def attack_huge_results(ctx: Context, deadline: Deadline) -> tuple[str, bool]:
    """(6) several clients each asking for hundreds of big notes."""
    with fresh_relay(ctx.workdir, ctx.fresh_db("huge-results")) as relay:
        _store_big_notes(relay.port, HUGE_NOTES, deadline)
        time.sleep(SETTLE_SECONDS)
        baseline = relay_rss(relay.pid)
        flt = {"kinds": [1], "limit": HUGE_NOTES}
        args = (relay.port, HUGE_CLIENTS, flt, READ_BYTES_PER_SECOND)
        with elsewhere(read_results, *args) as holder:
            readers, peak = wait_watching(holder, relay.pid, deadline)
            holder.send("leave")
            holder.result(deadline.left())
        time.sleep(AFTER_SECONDS)
        after = relay_rss(relay.pid)
    got = [r.events for r in readers]
    dropped = sum(1 for r in readers if r.replies.disconnected)
    figure = (
        f"{_mb(peak - baseline)} peak, {_mb(after - baseline)} {AFTER_SECONDS:.0f} s after they"
        f" left (baseline {baseline / MB:.0f} MB); events read per client {got},"
        f" {sum(r.eose for r in readers)} EOSE, {dropped} disconnected"
    )
    return figure, peak - baseline < 128 * MB


@dataclass(frozen=True)
class Attack:
    title: str
    target: str
    run: Callable[[Context, Deadline], tuple[str, bool]]
    needs_dataset: bool = False


ATTACKS: dict[int, Attack] = {
    1: Attack(
        f"1. {LIVE_REQS} REQs x {LIVE_FILTERS} filters x {LIVE_VALUES} distinct #t values,"
        " limit 0, one connection",
        "memory < +64 MB during, < +32 MB 5 s after; or refused with CLOSED",
        attack_live_filters,
    ),
    2: Attack(
        f"2. {COUNTS} x COUNT {{kinds:[1]}} on one connection, {DATASET_SIZE:,}-event db",
        "another client's REQ by id p50 < 1 s",
        attack_counts,
        needs_dataset=True,
    ),
    3: Attack(
        f"3. heavy REQ ({HEAVY_FILTERS} x #t of 1000 values, limit 5000) CLOSEd or replaced"
        f" {HEAVY_CANCEL_AFTER} s later, {HEAVY_ROUNDS} times",
        "another client's REQ by id p50 < 1 s",
        attack_cancelled_queries,
        needs_dataset=True,
    ),
    4: Attack(
        f"4. kind-1 publish ({PUBLISH_IN_FLIGHT} in flight) with {TAX_CONNECTIONS} connections"
        f" x {TAX_SUBSCRIPTIONS} subs x {TAX_FILTERS} filters, kind 1, since 2^40 + n",
        "rate >= 50% of the rate without them",
        attack_publish_tax,
    ),
    5: Attack(
        f"5. {FEED_NOTES} notes of ~124 KB, REQ {{kinds:[1]}} read at 5 MB/s",
        f"all {FEED_NOTES} events and EOSE, no NOTICE or disconnect",
        attack_big_feed,
    ),
    6: Attack(
        f"6. {HUGE_CLIENTS} clients x REQ for {HUGE_NOTES} notes of ~124 KB, read at 5 MB/s",
        "memory < +128 MB",
        attack_huge_results,
    ),
}


def run_attack(number: int, ctx: Context, seconds: float) -> Row:
    attack = ATTACKS[number]
    log(f"attack {attack.title}")
    started = time.monotonic()
    try:
        figure, met = attack.run(ctx, Deadline(seconds))
    except TimeoutError:
        return Row(attack.title, f"timed out after {seconds:.0f} s", attack.target, False)
    except Exception as exc:  # one broken attack still leaves the others' figures
        return Row(attack.title, f"failed: {exc!r}"[:300], attack.target, None)
    log(f"  {figure} ({time.monotonic() - started:.0f} s)")
    return Row(attack.title, figure, attack.target, met)


def markdown(rows: list[Row]) -> str:
    lines = ["| attack | figure | target | met? |", "|---|---|---|---|"]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(f"| {row.attack} | {row.figure} | {row.target} | {met} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        type=int,
        choices=sorted(ATTACKS),
        metavar="N",
        help="run only attack N (1-6; repeatable)",
    )
    parser.add_argument(
        "--dataset",
        type=int,
        default=DATASET_SIZE,
        help=f"events in the stored dataset of attacks 2 and 3 (default {DATASET_SIZE:,})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=ATTACK_SECONDS,
        help=f"seconds each attack may take (default {ATTACK_SECONDS:.0f})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    numbers = sorted(set(args.only or ATTACKS))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pyrelay-abuse-"))
    ctx = Context(workdir, os.cpu_count() or 2, args.dataset)
    try:
        if any(ATTACKS[n].needs_dataset for n in numbers):
            ctx.dataset = Dataset(args.dataset)
            log(f"preparing the {args.dataset:,}-event dataset (cached after the first run)")
            ctx.dataset.build(ctx.workers, log)
        rows = [run_attack(n, ctx, args.timeout) for n in numbers]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(rows))
    print()
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, default settings, one run"
        f" each; `python -m bench.abuse` took {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
