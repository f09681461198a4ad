"""Several relay instances on one PostgreSQL database: ingest, CPU per event, fan-out latency.

    python -m bench.pg_multi [--instances 1,2,4] [--events 200000] [--seconds 10] [--url URL]

For each instance count, `python -m relay --db postgresql://...` processes on one fresh
schema; a load generator (a child process) publishes pre-signed notes over 4 connections
per instance, each keeping 32 EVENTs unanswered, for `--seconds`. Reported: events
acknowledged per second, CPU per event in the relays (their process trees: verify
processes included) and in PostgreSQL (the backends serving those relays, found by their
client ports in /proc and pg_stat_activity; the WAL writer and checkpointer left out).

Fan-out latency: a subscriber on instance B, a publisher on instance A (and, to compare, on
B itself): the time from sending an EVENT to the subscriber receiving it, p50 and p99.

On this machine (2 cores shared by everything) instances, PostgreSQL and the generator
compete for the same CPU, so more instances cannot go faster here; the CPU per event tells
what a bigger machine buys: relay CPU scales out with instances (one core each), while
PostgreSQL's CPU per event, times the rate, is the part every instance shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson

from bench.data import ingest_events
from bench.load import HOST, Elsewhere, IngestResult, ingest
from bench.relays import process_cpu_seconds, process_tree
from bench.wsclient import WsClient

DEFAULT_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
CONNECTIONS_PER_INSTANCE = 4
WINDOW = 32
LATENCY_ROUNDS = 300
START_WITHIN = 20.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@contextlib.contextmanager
def relays(url: str, count: int) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """`count` relay processes on `url`, listening; stopped afterwards."""
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(count):
            port = free_port()
            command = [sys.executable, "-m", "relay", "--host", HOST, "--port", str(port)]
            command += ["--db", url, "--log-level", "WARNING"]
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            started.append((port, proc))
        for port, proc in started:
            wait_listening(proc, port)
        yield started
    finally:
        for _, proc in started:
            proc.terminate()
        for _, proc in started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    import socket

    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"relay did not listen on {port}")


# -- PostgreSQL's backends of our relays --------------------------------------------------


def client_ports(pids: list[int], server_port: int) -> set[int]:
    """Local ports of the TCP connections these processes hold to the PostgreSQL port."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


async def backend_pids(url: str, relay_pids: list[int]) -> list[int]:
    port = urlsplit(url).port or 5432
    tree = [p for pid in relay_pids for p in process_tree(pid)]
    ports = sorted(client_ports(tree, port))
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


# -- ingest ---------------------------------------------------------------------------------


async def ingest_all(
    pipe: Connection, ports: list[int], events: list[bytes], seconds: float
) -> list[IngestResult]:
    """One ingest per instance, all at once, from this one generator process."""
    shares = [events[i :: len(ports)] for i in range(len(ports))]
    return list(
        await asyncio.gather(
            *(
                ingest(pipe, port, share, CONNECTIONS_PER_INSTANCE, WINDOW, seconds)
                for port, share in zip(ports, shares, strict=True)
            )
        )
    )


@dataclass
class IngestFigures:
    instances: int
    rate: float
    relay_us: float
    postgres_us: float
    refused: int


async def measure_ingest(
    url: str, count: int, events: list[bytes], seconds: float
) -> IngestFigures:
    schema = f"relay_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        with relays(with_schema(url, schema), count) as started:
            pids = [proc.pid for _, proc in started]
            backends = await backend_pids(url, pids)
            relay_cpu = sum(process_cpu_seconds(pid) for pid in pids)
            pg_cpu = sum(process_cpu_seconds(pid) for pid in backends)
            generator = Elsewhere(ingest_all, [port for port, _ in started], events, seconds)
            results: list[IngestResult] = generator.result(seconds + 120)
            relay_cpu = sum(process_cpu_seconds(pid) for pid in pids) - relay_cpu
            pg_cpu = sum(process_cpu_seconds(pid) for pid in backends) - pg_cpu
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    accepted = sum(r.accepted for r in results)
    elapsed = max(r.seconds for r in results)
    per_event = 1e6 / max(accepted, 1)
    return IngestFigures(
        count,
        accepted / elapsed if elapsed else 0.0,
        relay_cpu * per_event,
        pg_cpu * per_event,
        sum(r.refused for r in results),
    )


# -- fan-out latency --------------------------------------------------------------------------


async def latencies(publish_port: int, subscribe_port: int, events: list[bytes]) -> list[float]:
    """Seconds from sending each EVENT on one instance to its arrival on the other."""
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[float]] = [loop.create_future()]
    eose = loop.create_future()

    def on_subscriber(payload: bytes) -> None:
        if payload.startswith(b'["EVENT"') and not waiter[0].done():
            waiter[0].set_result(time.perf_counter())
        elif payload.startswith(b'["EOSE"') and not eose.done():
            eose.set_result(None)

    acked: list[asyncio.Future[None]] = [loop.create_future()]

    def on_publisher(payload: bytes) -> None:
        if payload.startswith(b'["OK"') and not acked[0].done():
            acked[0].set_result(None)

    subscriber = await WsClient.connect(HOST, subscribe_port, on_subscriber)
    # Only this bench writes to its schema: every note it publishes matches.
    subscriber.send(orjson.dumps(["REQ", "live", {"kinds": [1], "limit": 0}]))
    await asyncio.wait_for(eose, 10)
    publisher = await WsClient.connect(HOST, publish_port, on_publisher)
    found: list[float] = []
    try:
        for raw in events:
            waiter[0], acked[0] = loop.create_future(), loop.create_future()
            start = time.perf_counter()
            publisher.send(b'["EVENT",' + raw + b"]")
            found.append(await asyncio.wait_for(waiter[0], 10) - start)
            await asyncio.wait_for(acked[0], 10)
    finally:
        publisher.close()
        subscriber.close()
    return found


async def measure_latency(url: str, events: list[bytes]) -> dict[str, list[float]]:
    schema = f"relay_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        with relays(with_schema(url, schema), 2) as started:
            (a, _), (b, _) = started
            half = len(events) // 2
            return {
                "A -> B (across instances)": await latencies(a, b, events[:half]),
                "B -> B (same instance)": await latencies(b, b, events[half:]),
            }
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_multi", description=__doc__)
    parser.add_argument("--instances", default="1,2,4")
    # Enough not to run out within --seconds: 2 instances here take 13,000 events/s.
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    counts = [int(n) for n in args.instances.split(",")]
    events = ingest_events(args.events, 2)
    print(
        f"ingest, {CONNECTIONS_PER_INSTANCE} connections per instance, {WINDOW} EVENTs in "
        f"flight each, {args.seconds:.0f}s:"
    )
    for count in counts:
        figures = asyncio.run(measure_ingest(args.url, count, events, args.seconds))
        print(
            f"  {figures.instances} instance(s): {figures.rate:8,.0f} events/s  "
            f"relays {figures.relay_us:5.0f} us/event  PostgreSQL backends "
            f"{figures.postgres_us:5.0f} us/event  (refused {figures.refused})"
        )
    notes = ingest_events(LATENCY_ROUNDS * 2, 1, namespace="pg-latency")
    print(f"fan-out latency, {LATENCY_ROUNDS} events each, one at a time:")
    for name, found in asyncio.run(measure_latency(args.url, notes)).items():
        print(
            f"  {name}: p50 {statistics.median(found) * 1e3:6.2f} ms  "
            f"p99 {percentile(found, 0.99) * 1e3:6.2f} ms"
        )


if __name__ == "__main__":
    main()
