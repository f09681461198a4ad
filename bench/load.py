"""The load generator's workloads; each runs in its own process (see `run_elsewhere`).

Every workload reports the CPU seconds its own process used, so a table can show that the
generator was not what limited the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from bench.wsclient import WsClient, text_frame

HOST = "127.0.0.1"


def raise_file_limit() -> None:
    """Many connections need many descriptors: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _child(fn: Callable[..., Any], args: tuple[Any, ...], pipe: Connection) -> None:
    raise_file_limit()
    _install_loop()
    try:
        pipe.send(("ok", asyncio.run(fn(pipe, *args))))
    except BaseException as exc:  # reported to the parent, which raises it
        pipe.send(("error", repr(exc)))


class Elsewhere:
    """A workload running in a child process; `message()` reads what it sends meanwhile."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(target=_child, args=(fn, args, child_end), daemon=True)
        self.process.start()

    def message(self, timeout: float = 600) -> Any:
        if not self.pipe.poll(timeout):
            raise TimeoutError("the load generator did not answer")
        status, value = self.pipe.recv()
        if status == "error":
            raise RuntimeError(f"load generator failed: {value}")
        return value

    def send(self, value: Any) -> None:
        self.pipe.send(("ok", value))

    def result(self, timeout: float = 600) -> Any:
        value = self.message(timeout)
        self.process.join(10)
        return value


def run_elsewhere(fn: Callable[..., Any], *args: Any, timeout: float = 600) -> Any:
    return Elsewhere(fn, *args).result(timeout)


# -- ingest ---------------------------------------------------------------------------------


@dataclass
class _Sender:
    client: WsClient | None
    frames: list[bytes]
    next: int = 0


@dataclass
class IngestResult:
    accepted: int
    refused: int
    seconds: float
    generator_cpu: float
    refusals: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


async def ingest(
    _pipe: Connection,
    port: int,
    events: list[bytes],
    connections: int,
    window: int,
    duration: float,
) -> IngestResult:
    """Publish `events` over `connections`, each keeping `window` EVENTs unanswered."""
    loop = asyncio.get_running_loop()
    senders = [
        _Sender(None, [text_frame(b'["EVENT",' + raw + b"]") for raw in events[i::connections]])
        for i in range(connections)
    ]
    done = loop.create_future()
    counts = {"ok": 0, "refused": 0, "answered": 0, "sent": 0}
    refusals: list[str] = []
    deadline = [0.0]
    last = [0.0]

    def on_message_for(sender: _Sender) -> Callable[[bytes], None]:
        def on_message(payload: bytes) -> None:
            if not payload.startswith(b'["OK"'):
                return
            reply = orjson.loads(payload)
            now = time.perf_counter()
            if now <= deadline[0]:
                last[0] = now
                if reply[2] is True:
                    counts["ok"] += 1
                else:
                    counts["refused"] += 1
                    if len(refusals) < 5:
                        refusals.append(str(reply[3]))
            counts["answered"] += 1
            if sender.next < len(sender.frames) and now < deadline[0]:
                assert sender.client is not None
                sender.client.send_frame(sender.frames[sender.next])
                sender.next += 1
                counts["sent"] += 1
            if counts["answered"] == counts["sent"] and not done.done():
                done.set_result(None)

        return on_message

    for sender in senders:
        sender.client = await WsClient.connect(HOST, port, on_message_for(sender))
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    deadline[0] = start + duration
    for sender in senders:
        assert sender.client is not None
        for frame in sender.frames[:window]:
            sender.client.send_frame(frame)
        sender.next = min(window, len(sender.frames))
        counts["sent"] += sender.next
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, duration + 30)
    end = min(last[0], deadline[0]) if last[0] else time.perf_counter()
    cpu = cpu_seconds() - cpu_before
    for sender in senders:
        if sender.client is not None:
            sender.client.close()
    return IngestResult(counts["ok"], counts["refused"], end - start, cpu, refusals)


# -- queries --------------------------------------------------------------------------------


@dataclass
class QueryResult:
    latencies: dict[str, list[float]]  # seconds to EOSE, per shape
    events: dict[str, int]  # stored events received, per shape
    errors: list[str]


async def queries(
    _pipe: Connection, port: int, shapes: dict[str, list[dict[str, Any]]], warmup: int
) -> QueryResult:
    """Each filter as one REQ on one connection, one at a time: seconds until EOSE."""
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"events": 0, "done": None, "error": None}

    def on_message(payload: bytes) -> None:
        if payload.startswith(b'["EVENT"'):
            state["events"] += 1
        elif payload.startswith((b'["EOSE"', b'["CLOSED"', b'["NOTICE"')):
            if not payload.startswith(b'["EOSE"'):
                state["error"] = payload.decode(errors="replace")[:200]
            if state["done"] is not None and not state["done"].done():
                state["done"].set_result(None)

    client = await WsClient.connect(HOST, port, on_message)
    result = QueryResult({}, {}, [])
    for name, filters in shapes.items():
        latencies: list[float] = []
        received = 0
        for number, flt in enumerate(filters):
            state.update(events=0, done=loop.create_future(), error=None)
            start = time.perf_counter()
            client.send(orjson.dumps(["REQ", "q", flt]))
            await asyncio.wait_for(state["done"], 60)
            elapsed = time.perf_counter() - start
            client.send(b'["CLOSE","q"]')
            if state["error"] and len(result.errors) < 5:
                result.errors.append(f"{name}: {state['error']}")
            if number >= warmup:
                latencies.append(elapsed)
                received += state["events"]
        result.latencies[name] = latencies
        result.events[name] = received
    client.close()
    return result


# -- fan-out --------------------------------------------------------------------------------


@dataclass
class FanoutResult:
    latencies: list[float]  # seconds from publish until every subscriber had the event
    delivered_per_second: float
    generator_cpu: float
    missing: int


async def fanout(
    _pipe: Connection,
    port: int,
    subscribers: int,
    matching: dict[str, Any],
    nonmatching: list[dict[str, Any]],
    events: list[bytes],
    rounds: int,
    stream_seconds: float,
) -> FanoutResult:
    """`subscribers` connections subscribed to `matching` (plus the `nonmatching` filters,
    each as its own subscription); one publisher sends `events`."""
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"got": 0, "want": subscribers, "all": None, "eose": 0}
    wanted_eose = subscribers * (1 + len(nonmatching))
    subscribed = asyncio.Event()

    def on_subscriber_message(payload: bytes) -> None:
        if payload.startswith(b'["EVENT"'):
            state["got"] += 1
            waiter = state["all"]
            if state["got"] >= state["want"] and waiter is not None and not waiter.done():
                waiter.set_result(time.perf_counter())
        elif payload.startswith(b'["EOSE"'):
            state["eose"] += 1
            if state["eose"] >= wanted_eose:
                subscribed.set()

    clients = []
    for _ in range(subscribers):
        client = await WsClient.connect(HOST, port, on_subscriber_message)
        client.send(orjson.dumps(["REQ", "live", {**matching, "limit": 0}]))
        for number, flt in enumerate(nonmatching):
            client.send(orjson.dumps(["REQ", f"other{number}", {**flt, "limit": 0}]))
        clients.append(client)
    await asyncio.wait_for(subscribed.wait(), 120)

    acks: dict[str, Any] = {"count": 0, "waiter": None}

    def on_publisher_message(payload: bytes) -> None:
        if payload.startswith(b'["OK"'):
            acks["count"] += 1
            waiter = acks["waiter"]
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    publisher = await WsClient.connect(HOST, port, on_publisher_message)
    frames = [text_frame(b'["EVENT",' + raw + b"]") for raw in events]
    latencies, missing = [], 0
    for frame in frames[:rounds]:
        state.update(got=0, all=loop.create_future())
        acks["waiter"] = loop.create_future()
        start = time.perf_counter()
        publisher.send_frame(frame)
        try:
            latencies.append(await asyncio.wait_for(state["all"], 10) - start)
        except TimeoutError:
            missing += 1
        await asyncio.wait_for(acks["waiter"], 10)
    # Steady stream: the publisher keeps a few events in flight, as fast as they are taken.
    state.update(got=0, all=None, want=float("inf"))
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    sent = 0
    stream = frames[rounds:]
    window = 8
    while sent < len(stream) and time.perf_counter() - start < stream_seconds:
        while sent - (acks["count"] - rounds) < window and sent < len(stream):
            publisher.send_frame(stream[sent])
            sent += 1
        acks["waiter"] = loop.create_future()
        await asyncio.wait_for(acks["waiter"], 10)
    elapsed = time.perf_counter() - start
    delivered = state["got"]
    cpu = cpu_seconds() - cpu_before
    publisher.close()
    for client in clients:
        client.close()
    return FanoutResult(latencies, delivered / elapsed, cpu / elapsed, missing)


# -- idle connections -------------------------------------------------------------------------


async def idle_connections(pipe: Connection, port: int, count: int, offer_deflate: bool) -> int:
    """Open `count` connections, tell the parent, hold them until it answers."""
    clients = []
    for start in range(0, count, 100):
        batch = [
            WsClient.connect(HOST, port, lambda _: None, offer_deflate)
            for _ in range(start, min(start + 100, count))
        ]
        clients.extend(await asyncio.gather(*batch))
    pipe.send(("ok", len(clients)))
    # The parent measures the relay meanwhile; its answer arrives on the pipe.
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    for client in clients:
        client.close()
    await asyncio.sleep(0.2)
    return len(clients)
