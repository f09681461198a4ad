"""PostgreSQL restarted under load, with two relay instances on it: no false OK true, and
the relays come back by themselves.

    python -m bench.pg_restart [--seconds 12] [--down 2]

Runs a private PostgreSQL cluster (initdb in a temporary directory, as the `postgres`
user, on a free port) so that restarting it disturbs nobody else's server. Two relays
on it; a publisher on each sends notes one after another for `--seconds`, a subscriber on
B follows A's notes live. A third of the way in, the cluster is stopped (fast mode: open
transactions are rolled back) and started again `--down` seconds later.

Checked and reported: every note acknowledged OK true is in the database afterwards (a
false OK true would be missing); refusals while it was down are `error:`; both relays
take notes again after the restart, and B's subscriber gets A's notes again (its LISTEN
reconnected), with the seconds from the restart to the first such note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson
from coincurve import PrivateKey
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.data import sign
from bench.pg_multi import free_port, relays

BIN = Path("/usr/lib/postgresql")


def pg_bin(name: str) -> str:
    found = sorted(BIN.glob(f"*/bin/{name}"))
    if not found:
        raise SystemExit(f"{name} not found under {BIN}")
    return str(found[-1])


def as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[tuple[str, Path, int]]:
    """A throwaway cluster: (its URL, its data directory, its port), removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="pg-restart-"))
    shutil.chown(workdir, "postgres", "postgres")
    data, port = workdir / "data", free_port()
    as_postgres(pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "root", "--no-sync")
    try:
        start(data, port)
        yield f"postgresql://root@127.0.0.1:{port}/postgres", data, port
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            as_postgres(pg_bin("pg_ctl"), "-D", str(data), "stop", "-m", "immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def start(data: Path, port: int) -> None:
    options = f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1"
    log = str(data.parent / "log")
    as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start")


def stop(data: Path) -> None:
    as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")


@dataclass
class Tally:
    acked: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    after_restart: int = 0


async def publish(
    url: str, notes: list[bytes], until: float, restarted: list[float], tally: Tally
) -> None:
    """Send notes one at a time until `until`, reconnecting when the relay drops us."""
    index = 0
    while time.monotonic() < until and index < len(notes):
        try:
            async with connect(url, open_timeout=5) as ws:
                while time.monotonic() < until and index < len(notes):
                    raw = notes[index]
                    index += 1
                    await ws.send((b'["EVENT",' + raw + b"]").decode())
                    while True:
                        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
                        if reply[0] == "OK":
                            break
                    if reply[2] is True:
                        tally.acked.append(reply[1])
                        if restarted:
                            tally.after_restart += 1
                    else:
                        prefix = str(reply[3]).split(":", 1)[0] + ":"
                        tally.refused[prefix] = tally.refused.get(prefix, 0) + 1
                        await asyncio.sleep(0.05)
        except (ConnectionClosed, OSError, TimeoutError):
            tally.dropped += 1
            await asyncio.sleep(0.2)


async def follow(url: str, restarted: list[float], seen_after: list[float]) -> None:
    """B's live subscriber: record when the first live note arrives after the restart."""
    async with connect(url, open_timeout=5) as ws:
        await ws.send(
            orjson.dumps(["REQ", "live", {"kinds": [1], "#t": ["from-a"], "limit": 0}]).decode()
        )
        async for frame in ws:
            reply = orjson.loads(frame)
            if reply[0] == "EVENT" and restarted and not seen_after:
                seen_after.append(time.monotonic() - restarted[0])


async def scenario(url: str, data: Path, port: int, seconds: float, down: float) -> None:
    key = PrivateKey()
    pubkey = key.public_key_xonly.format().hex()
    now = int(time.time())

    def notes(tag: str, count: int) -> list[bytes]:
        return [
            sign(key, pubkey, now - count + n, 1, [["t", tag]], f"{tag} {n}") for n in range(count)
        ]

    count = int(seconds * 400)
    a_notes, b_notes = notes("from-a", count), notes("from-b", count)
    restarted: list[float] = []
    seen_after: list[float] = []
    tallies = {"A": Tally(), "B": Tally()}
    with relays(url, 2) as started:
        (a_port, _), (b_port, _) = started
        a_url, b_url = f"ws://127.0.0.1:{a_port}", f"ws://127.0.0.1:{b_port}"
        until = time.monotonic() + seconds
        follower = asyncio.create_task(follow(b_url, restarted, seen_after))
        writers = [
            asyncio.create_task(publish(a_url, a_notes, until, restarted, tallies["A"])),
            asyncio.create_task(publish(b_url, b_notes, until, restarted, tallies["B"])),
        ]
        await asyncio.sleep(seconds / 3)
        stopped = time.monotonic()
        await asyncio.to_thread(stop, data)
        await asyncio.sleep(down)
        await asyncio.to_thread(start, data, port)
        restarted.append(time.monotonic())
        print(f"PostgreSQL down for {restarted[0] - stopped:.1f}s")
        await asyncio.gather(*writers)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await follower
    conn = await asyncpg.connect(url)
    try:
        stored = {row[0].hex() for row in await conn.fetch("SELECT id FROM events")}
    finally:
        await conn.close()
    lost = 0
    for name, tally in tallies.items():
        missing = [i for i in tally.acked if i not in stored]
        lost += len(missing)
        print(
            f"  relay {name}: {len(tally.acked)} OK true ({tally.after_restart} after the "
            f"restart), refused {tally.refused or 'none'}, connection drops {tally.dropped}, "
            f"OK true but not stored: {len(missing)}"
        )
    if seen_after:
        print(f"  B's subscriber got A's notes live again {seen_after[0]:.2f}s after the restart")
    else:
        print("  B's subscriber got no live note from A after the restart")
    if lost or not seen_after or not all(t.after_restart for t in tallies.values()):
        raise SystemExit("FAILED")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_restart", description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--down", type=float, default=2.0)
    args = parser.parse_args()
    with private_cluster() as (url, data, port):
        asyncio.run(scenario(url, data, port, args.seconds, args.down))


if __name__ == "__main__":
    main()
