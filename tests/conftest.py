"""Fixtures: the real relay on an ephemeral port, in-process or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.config import Settings
from relay.net.server import RelayServer
from relay.store.sqlite import SqliteStore
from tests.nostr import Client, Keys

RelayFactory = Callable[..., Awaitable[RelayServer]]


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    """Start relays with given settings on 127.0.0.1:0; all are stopped afterwards."""
    started: list[RelayServer] = []

    async def factory(**overrides: Any) -> RelayServer:
        settings = replace(
            Settings(host="127.0.0.1", port=0, db=str(tmp_path / "relay.sqlite")), **overrides
        )
        relay = RelayServer(settings, SqliteStore(settings.db, synchronous="NORMAL"))
        await relay.start()
        started.append(relay)
        return relay

    yield factory
    for relay in started:
        if relay.accepting:
            await relay.stop()


@pytest.fixture
async def relay(start_relay: RelayFactory) -> RelayServer:
    return await start_relay()


def url_of(relay: RelayServer) -> str:
    return f"ws://127.0.0.1:{relay.port}"


@pytest.fixture
async def client(relay: RelayServer) -> AsyncIterator[Client]:
    c = await Client.connect(url_of(relay))
    yield c
    await c.close()


@pytest.fixture
def keys() -> Keys:
    return Keys()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelayProcess:
    """`python -m relay` as a separate process, for kills, signals and restarts."""

    def __init__(self, db: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("relay did not start listening")

    def stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    made: list[RelayProcess] = []

    def factory(env: dict[str, str] | None = None) -> RelayProcess:
        process = RelayProcess(tmp_path / "relay.sqlite", free_port(), env)
        made.append(process)
        return process

    yield factory
    for process in made:
        process.kill()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
