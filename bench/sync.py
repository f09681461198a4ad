"""`relay sync` against downloading everything with REQ, between two relays, in one run.

    python -m bench.sync [--events 100000] [--diff 0.01] [--workers 2]

Two databases hold `events` notes each, of which a share `diff` on each side is not on the
other (1% by default). A relay runs on the second one (`python -m relay`, default settings).
Measured against it, from the first database's side:

- REQ: every event of the peer, walked newest first by `until` windows of `max_limit`
  (what a client without NIP-77 does to learn what the peer holds), nothing stored;
- `relay sync` (both directions, NIP-77), as a process on the first database.

Prints bytes each way, round trips and seconds for both, and checks that the sync made both
sides hold the union. Uses the bench's cached pre-signed events (bench/data.py).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.data import ingest_events
from bench.relays import free_port
from relay.net.sync import Peer, SyncStats, walk

START_WITHIN = 60.0


def relay(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def import_into(db: Path, lines: list[bytes]) -> None:
    subprocess.run(
        relay("import", "--db", str(db), "--no-progress"),
        input=b"\n".join(lines) + b"\n",
        check=True,
        capture_output=True,
    )


def count(db: Path) -> int:
    done = subprocess.run(
        relay("export", "--db", str(db)), check=True, capture_output=True, timeout=600
    )
    return done.stdout.count(b"\n")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--diff", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    only = int(args.events * args.diff)
    common = args.events - only
    lines = ingest_events(common + 2 * only, args.workers, namespace="sync")
    shared, only_a, only_b = lines[:common], lines[common : common + only], lines[common + only :]
    with tempfile.TemporaryDirectory() as scratch:
        a, b = Path(scratch) / "a.sqlite", Path(scratch) / "b.sqlite"
        started = time.perf_counter()
        import_into(a, shared + only_a)
        import_into(b, shared + only_b)
        print(f"imported 2 x {args.events:,} events in {time.perf_counter() - started:.1f} s")
        port = free_port()
        url = f"ws://127.0.0.1:{port}"
        server = subprocess.Popen(
            relay("--host", "127.0.0.1", "--port", str(port), "--db", str(b)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(server, port)
            stats, events, seconds = asyncio.run(download_all(url, 5000))
            print(
                f"REQ everything: {events:,} events, {stats.sent_bytes:,} bytes sent, "
                f"{stats.received_bytes:,} received, {stats.rounds} round trips, {seconds:.1f} s"
            )
            started = time.perf_counter()
            done = subprocess.run(
                relay("sync", url, "--db", str(a)), capture_output=True, text=True, timeout=1800
            )
            seconds = time.perf_counter() - started
            summary = done.stderr.strip().splitlines()[-1]
            print(f"relay sync (exit {done.returncode}, {seconds:.1f} s): {summary}")
        finally:
            server.terminate()
            server.wait(60)
        union = common + 2 * only
        counts = count(a), count(b)
        print(f"after the sync: {counts[0]:,} and {counts[1]:,} events (union {union:,})")
        trips = re.search(r"in (\d+) round trips", summary)
        print(f"negentropy round trips: {trips.group(1) if trips else '?'}")
        return 0 if done.returncode == 0 and counts == (union, union) else 1


if __name__ == "__main__":
    sys.exit(main())
