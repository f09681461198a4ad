"""Fixtures: the real relay on an ephemeral port, in-process or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.app import build_store
from relay.config import Settings
from relay.net.server import RelayServer
from relay.store.base import EventStore
from relay.store.memory import MemoryStore
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore
from tests.nostr import Client, Keys
from tests.pg import schema_url

RelayFactory = Callable[..., Awaitable[RelayServer]]
START_WITHIN = 15.0  # seconds a relay process may take to listen


# Test modules whose relay-level tests run on PostgreSQL too (see relay_backend).
POSTGRES_RELAY_MODULES = {
    "test_protocol",
    "test_deletion",
    "test_count",
    "test_vanish",
    "test_search",
    "test_nip86",
    "test_retention",
}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Each storage backend in turn: the reference MemoryStore, SqliteStore and
    PostgresStore (in a throwaway schema)."""
    if request.param == "postgres":
        async with schema_url() as url:
            backend: EventStore = PostgresStore(url, readers=1)
            await backend.open()
            yield backend
            await backend.close()
        return
    backend = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.sqlite")
    await backend.open()
    yield backend
    await backend.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "relay_backend" in metafunc.fixturenames and module in POSTGRES_RELAY_MODULES:
        metafunc.parametrize("relay_backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def relay_backend(request: pytest.FixtureRequest) -> str:
    """The store under the relays of start_relay: SQLite, or in the modules of
    POSTGRES_RELAY_MODULES each test once more on PostgreSQL."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def start_relay(tmp_path: Path, relay_backend: str) -> AsyncIterator[RelayFactory]:
    """Start relays with given settings on 127.0.0.1:0; all are stopped afterwards."""
    started: list[RelayServer] = []
    async with AsyncExitStack() as stack:
        db = str(tmp_path / "relay.sqlite")
        if relay_backend == "postgres":
            db = await stack.enter_async_context(schema_url())

        async def factory(**overrides: Any) -> RelayServer:
            # In-process relays write and check signatures on threads: a child process
            # each would add about 0.2 s per test. RelayProcess and
            # test_child_processes.py run the default child processes.
            base = Settings(host="127.0.0.1", port=0, db=db, verify_process=False)
            settings = replace(base, **overrides)
            store = (
                build_store(settings)
                if relay_backend == "postgres"
                else SqliteStore(
                    settings.db,
                    synchronous="NORMAL",
                    search=settings.search_enabled,
                    retention=settings.retention,
                )
            )
            relay = RelayServer(settings, store)
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


async def fetch_by_ids(url: str, *ids: str) -> list[dict[str, Any]]:
    """The events with these ids that the relay serves to a fresh connection of our client."""
    client = await Client.connect(url)
    try:
        return await client.req("check", {"ids": list(ids), "limit": len(ids)})
    finally:
        await client.close()


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

    @property
    def db_arg(self) -> str:
        """The relay's --db."""
        return str(self.db)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            relay_command("--host", "127.0.0.1", "--port", str(self.port), "--db", self.db_arg),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_listening(self.proc, "127.0.0.1", self.port)

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


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int) -> None:
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"relay exited with {proc.returncode}: {stderr}")
        if is_listening(host, port):
            return
        time.sleep(0.05)
    raise AssertionError(f"relay did not listen on {host}:{port}")


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


class PgRelayProcess(RelayProcess):
    """`python -m relay --db postgresql://...`: instances of one relay on one database."""

    def __init__(self, url: str, port: int) -> None:
        super().__init__(Path("unused"), port)
        self.pg_url = url

    @property
    def db_arg(self) -> str:
        return self.pg_url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with schema_url() as url:
        yield url


@pytest.fixture
def pg_instances(pg_url: str) -> Iterator[Callable[[], PgRelayProcess]]:
    """Start relay processes on one fresh schema; all are killed afterwards."""
    made: list[PgRelayProcess] = []

    def start() -> PgRelayProcess:
        process = PgRelayProcess(pg_url, free_port())
        made.append(process)
        process.start()
        return process

    yield start
    for process in made:
        process.kill()
