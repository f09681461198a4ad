"""`relay sync` against downloading everything with REQ, between two relays, in one run.

    python -m bench.sync [--events 100000 1000000] [--diff 0.01] [--runs 3] [--workers 2]

For each size: two copies of the bench's cached dataset database (bench/stores.py: notes,
replies, reactions, reposts, articles, profiles and follow lists over 300 days, signed
once and cached), from each of which a share `diff` of the events is removed, a different
one on each side (every 100th by seq on one, the next one on the other, by default), so
each side holds events the other lacks and together they hold the whole dataset. A relay
(`python -m relay`, default settings) runs on the second. Measured against it, from the
first database's side:

- REQ: every event of the peer, walked newest first by `until` windows of 5,000 (what a
  client without NIP-77 does to learn what the peer holds), nothing stored;
- `relay sync` (both directions, NIP-77), as a process on the first database; its summary
  line gives the seconds per phase.

Prints bytes each way, round trips and seconds for both, and checks that both sides hold
the whole dataset afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.relays import free_port
from bench.stores import Dataset
from relay.net.sync import Peer, SyncStats, walk

START_WITHIN = 60.0


def relay(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def remove_share(db: Path, every: int, offset: int) -> int:
    """Remove the events whose seq is `offset` modulo `every` (and their tags), as if
    they had never arrived; returns how many are left."""
    conn = sqlite3.connect(db)
    try:
        gone = "SELECT seq FROM events WHERE seq % ? = ?"
        conn.execute(f"DELETE FROM tags WHERE seq IN ({gone})", (every, offset))
        conn.execute(f"DELETE FROM events WHERE seq IN ({gone})", (every, offset))
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


async def download_all(url: str, page: int) -> tuple[SyncStats, int, float]:
    stats = SyncStats()
    started = time.perf_counter()
    peer = await Peer.connect(url, stats)
    events = 0
    try:
        async for batch in walk(peer, {}, page, None):
            events += len(batch)
    finally:
        await peer.close()
    return stats, events, time.perf_counter() - started


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the relay exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the relay did not listen")


@dataclass
class Figures:
    size: int
    each: tuple[int, int]
    req_events: int
    req_sent: int
    req_received: int
    req_rounds: int
    req_seconds: float
    sync_sent: int
    sync_received: int
    sync_rounds: int
    sync_seconds: float
    summary: str
    after: tuple[int, int]
    ok: bool


def measure(size: int, every: int, workers: int, scratch: Path) -> Figures:
    dataset = Dataset(size)
    dataset.build(workers)
    a, b = scratch / f"a-{size}.sqlite", scratch / f"b-{size}.sqlite"
    dataset.copy_pyrelay_db(a)
    dataset.copy_pyrelay_db(b)
    each = remove_share(a, every, 0), remove_share(b, every, 1)
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    server = subprocess.Popen(
        relay("--host", "127.0.0.1", "--port", str(port), "--db", str(b)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(server, port)
        req, events, req_seconds = asyncio.run(download_all(url, 5000))
        started = time.perf_counter()
        done = subprocess.run(
            relay("sync", url, "--db", str(a)), capture_output=True, text=True, timeout=1800
        )
        sync_seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(60)
    summary = done.stderr.strip().splitlines()[-1]
    sent = re.search(r"([\d,]+) bytes sent", summary)
    received = re.search(r"([\d,]+) received", summary)
    trips = re.search(r"in (\d+) round trips", summary)
    after = count(a), count(b)
    for db in (a, b):
        db.unlink()
    return Figures(
        size=size,
        each=each,
        req_events=events,
        req_sent=req.sent_bytes,
        req_received=req.received_bytes,
        req_rounds=req.rounds,
        req_seconds=req_seconds,
        sync_sent=int(sent.group(1).replace(",", "")) if sent else 0,
        sync_received=int(received.group(1).replace(",", "")) if received else 0,
        sync_rounds=int(trips.group(1)) if trips else 0,
        sync_seconds=sync_seconds,
        summary=summary,
        after=after,
        ok=done.returncode == 0 and after == (size, size),
    )


def report(f: Figures) -> None:
    full = f.req_sent + f.req_received
    both = f.sync_sent + f.sync_received
    print(
        f"\n{f.size:,}-event dataset, {f.each[0]:,} and {f.each[1]:,} held "
        f"({f.size - f.each[1]:,} and {f.size - f.each[0]:,} only on one side)"
    )
    print("| | bytes received | bytes sent | round trips | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| REQ everything ({f.req_events:,} events, nothing stored) | {f.req_received:,} "
        f"| {f.req_sent:,} | {f.req_rounds} | {f.req_seconds:.1f} |"
    )
    print(
        f"| `relay sync` both ways | {f.sync_received:,} | {f.sync_sent:,} "
        f"| {f.sync_rounds} | {f.sync_seconds:.1f} |"
    )
    print(
        f"sync vs REQ: {100 * f.sync_received / max(f.req_received, 1):.1f}% of the bytes "
        f"received, {100 * both / max(full, 1):.1f}% of both ways together, "
        f"{f.sync_seconds / max(f.req_seconds, 1e-9):.2f}x the time"
    )
    print(f"relay sync's summary: {f.summary}")
    print(f"after the sync: {f.after[0]:,} and {f.after[1]:,} events (dataset {f.size:,})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000])
    parser.add_argument("--diff", type=float, default=0.01, help="share missing on each side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="fresh copies each; medians")
    args = parser.parse_args()
    every = max(2, round(1 / args.diff))
    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.events:
            runs = [measure(size, every, args.workers, Path(scratch)) for _ in range(args.runs)]
            for figures in runs:
                report(figures)
                ok = ok and figures.ok
            if len(runs) > 1:
                print(
                    f"\n{size:,}: medians of {len(runs)} runs: REQ everything "
                    f"{statistics.median(f.req_seconds for f in runs):.1f} s, relay sync "
                    f"{statistics.median(f.sync_seconds for f in runs):.1f} s, sync bytes "
                    f"{statistics.median(f.sync_sent + f.sync_received for f in runs):,.0f}"
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
