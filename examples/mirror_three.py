"""Three relays on one machine mirroring each other: the walkthrough of docs/mirroring.md.

    python examples/mirror_three.py [--dir DIR]

Starts three relays (`python -m relay`, each with its own database and `mirror_peers` naming
the other two), then: a note published to the first is served by all three; the third is
killed with SIGKILL and the note is still served by the other two; a second note is
published while it is down; the third comes back and catches up by negentropy (NIP-77),
serving the second note it never saw live. Every wait is bounded; the relays are stopped
at the end. Exit code 0 when every step held.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from websockets.asyncio.client import connect

from relay.core.canonical import serialize

STEP_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sign(secret: PrivateKey, content: str) -> dict[str, Any]:
    pubkey = secret.public_key_xonly.format().hex()
    created_at = int(time.time())
    digest = hashlib.sha256(serialize(pubkey, created_at, 1, [], content)).digest()
    return {
        "id": digest.hex(),
        "pubkey": pubkey,
        "created_at": created_at,
        "kind": 1,
        "tags": [],
        "content": content,
        "sig": secret.sign_schnorr(digest).hex(),
    }


class Relay:
    """One `python -m relay` process mirroring its peers."""

    def __init__(self, name: str, port: int, db: Path, peers: list[int]) -> None:
        self.name, self.port, self.db = name, port, db
        self.env = {
            **os.environ,
            "RELAY_MIRROR_PEERS": ",".join(f"ws://127.0.0.1:{p}" for p in peers),
            "RELAY_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "relay", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--db", str(self.db)]
        self.proc = subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + STEP_SECONDS
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def publish(url: str, event: dict[str, Any]) -> None:
    async with connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps(["EVENT", event]))
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), STEP_SECONDS))
            if reply[0] == "OK" and reply[1] == event["id"]:
                if reply[2] is not True:
                    raise SystemExit(f"refused: {reply}")
                return


async def serves(url: str, event_id: str) -> bool:
    async with connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps(["REQ", "q", {"ids": [event_id]}]))
        found = False
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), STEP_SECONDS))
            if reply[0] == "EVENT" and reply[1] == "q":
                found = True
            elif reply[0] in ("EOSE", "CLOSED") and reply[1] == "q":
                return found


async def wait_served(relay: Relay, event_id: str) -> float:
    """Seconds until `relay` serves the event; exits when it does not in time."""
    started = time.monotonic()
    while not await serves(relay.url, event_id):
        if time.monotonic() - started > STEP_SECONDS:
            raise SystemExit(f"{relay.name} does not serve {event_id[:12]}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def walkthrough(relays: list[Relay]) -> None:
    one, two, three = relays
    secret = PrivateKey()
    note = sign(secret, "hello, three relays")
    await publish(one.url, note)
    print(f"published note {note['id'][:12]} to {one.name}")
    for relay in relays:
        seconds = await wait_served(relay, note["id"])
        print(f"  {relay.name} serves it (after {seconds:.2f} s)")

    three.kill()
    print(f"killed {three.name} with SIGKILL")
    for relay in (one, two):
        await wait_served(relay, note["id"])
        print(f"  {relay.name} still serves the note")

    missed = sign(secret, "published while the third was down")
    await publish(two.url, missed)
    print(f"published note {missed['id'][:12]} to {two.name} while {three.name} is down")
    await wait_served(one, missed["id"])
    print(f"  {one.name} has it too")

    three.start()
    print(f"restarted {three.name}")
    seconds = await wait_served(three, missed["id"])
    print(f"  {three.name} caught up by negentropy: serves {missed['id'][:12]} ({seconds:.2f} s)")
    await wait_served(three, note["id"])
    print("every step held")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where the three databases go (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.dir or scratch)
        base.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(3)]
        relays = [
            Relay(
                f"relay{n + 1} (:{port})",
                port,
                base / f"relay{n + 1}.sqlite",
                [p for p in ports if p != port],
            )
            for n, port in enumerate(ports)
        ]
        try:
            for relay in relays:
                relay.start()
            print("three relays mirroring each other: " + ", ".join(r.url for r in relays))
            asyncio.run(walkthrough(relays))
        finally:
            for relay in relays:
                relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
