"""Child processes on the path of an event: the write process with its pipelined batches
and WAL checkpointer, and the verify process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.core.event import Event, parse_event
from relay.core.filters import parse_filter
from relay.net.verify_process import VerifyProcess
from relay.store.base import Purged, SaveOutcome
from relay.store.checkpoint import Checkpointer
from relay.store.sqlite import SqliteStore
from relay.store.sqlite_writes import PAGE_SIZE, prepare_database, save_batch
from relay.store.write_process import WriteProcess, WriteProcessError
from relay.store.writer import Writer
from tests.conftest import RelayProcess, fetch_by_ids
from tests.http_client import metric, scrape
from tests.nostr import Client, Keys


def events(count: int, keys: Keys | None = None) -> list[Event]:
    keys = keys or Keys()
    return [parse_event(keys.sign(content=f"note {n}")) for n in range(count)]


def stored_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0].hex() for row in conn.execute("SELECT id FROM events")}


class SlowStore:
    """Commits take a while; records how many overlap and the order they finish in."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.finished: list[list[str]] = []
        self.active = 0
        self.most_active = 0

    async def save_many(self, batch: Sequence[Event], now: int) -> list[SaveOutcome]:
        ids = [e.id for e in batch]
        self.started.append(ids)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        # Earlier batches take longer: a store that reordered them would show it here.
        await asyncio.sleep(0.05 / len(self.started))
        self.active -= 1
        self.finished.append(ids)
        return [SaveOutcome.STORED] * len(batch)

    async def purge_expired(self, now: int) -> Purged:
        return Purged()


async def test_writer_keeps_two_batches_in_flight_and_answers_each_event() -> None:
    store = SlowStore()
    writer = Writer(store, max_batch=10, max_in_flight=2)  # type: ignore[arg-type]
    writer.start()
    batch = events(45)
    outcomes = await asyncio.gather(*(writer.save(e) for e in batch))
    await writer.close()
    assert outcomes == [SaveOutcome.STORED] * 45
    assert store.most_active == 2
    assert [i for b in store.started for i in b] == [e.id for e in batch]


async def test_write_process_stores_what_the_readers_then_find(tmp_path: Path) -> None:
    db = tmp_path / "w.sqlite"
    store = SqliteStore(db, write_process=True, search=False)
    await store.open()
    batch = events(50)
    try:
        assert await store.save_many(batch, 0) == [SaveOutcome.STORED] * 50
        assert await store.save_many(batch[:3], 0) == [SaveOutcome.DUPLICATE] * 3
        found = await store.query([parse_filter({"ids": [e.id for e in batch]})], 0)
        assert len(found) == 50
    finally:
        await store.close()
    assert stored_ids(db) == {e.id for e in batch}


async def test_a_batch_the_write_process_cannot_apply_is_refused_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "w.sqlite", write_process=True, search=False)
    await store.open()
    good = events(2)
    broken = replace(good[0], raw=b"{not json")
    try:
        with pytest.raises(WriteProcessError):
            await store.save_many([broken, good[1]], 0)
        # The failed batch was rolled back as a whole; the next one is stored.
        assert await store.save_many(good, 0) == [SaveOutcome.STORED] * 2
    finally:
        await store.close()


def child_running(pid: int, module: str) -> int:
    """The pid of `pid`'s child process running `python -m module`."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if module.encode() in command:
            return int(child)
    raise AssertionError(f"no child of {pid} runs {module}")


async def test_a_killed_write_process_is_replaced(tmp_path: Path) -> None:
    db = tmp_path / "w.sqlite"
    store = SqliteStore(db, write_process=True, search=False)
    await store.open()
    first, second = events(20), events(20)
    try:
        await store.save_many(first, 0)
        assert isinstance(store.writes, WriteProcess)
        assert store.writes.pid is not None
        os.kill(store.writes.pid, signal.SIGKILL)
        # The batch written to the dead child is refused (never acknowledged), or goes to
        # a new child if the death was seen first.
        with contextlib.suppress(WriteProcessError):
            await store.save_many(second[:10], 0)
        assert await store.save_many(second[10:], 0) == [SaveOutcome.STORED] * 10
    finally:
        await store.close()
    assert {e.id for e in first + second[10:]} <= stored_ids(db)


def write_rounds(
    path: str, checkpointer: Checkpointer, rounds: int = 40, *, bound: bool = True
) -> int:
    """Commit `rounds` batches of 25 notes as the write process does; the largest WAL seen."""
    db = sqlite3.connect(path, isolation_level=None)
    prepare_database(db, "NORMAL", search=False)
    checkpointer.take_over(db)
    keys = Keys()
    largest = 0
    for round_no in range(rounds):
        save_batch(db, [parse_event(keys.sign(content=f"{round_no} {n}")) for n in range(25)])
        if bound:
            checkpointer.after_commit(db)
        largest = max(largest, os.path.getsize(path + "-wal"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == rounds * 25
    db.close()
    return largest


def test_the_writer_bounds_the_wal_when_checkpoints_fall_behind(tmp_path: Path) -> None:
    limit = 128 * 1024
    # No background thread: only the writer's bound checkpoints.
    bounded = write_rounds(
        str(tmp_path / "a.sqlite"), Checkpointer(str(tmp_path / "a.sqlite"), limit)
    )
    unbounded = write_rounds(
        str(tmp_path / "b.sqlite"), Checkpointer(str(tmp_path / "b.sqlite"), limit), bound=False
    )
    assert bounded < 3 * limit
    assert unbounded > 10 * limit  # what the WAL holds with nobody checkpointing


def test_the_checkpoint_thread_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    checkpointer = Checkpointer(path, wal_limit_bytes=1 << 40)  # the writer's bound never acts
    checkpointer.start()
    try:
        write_rounds(path, checkpointer)
        # The writer's own checkpoints are off: only the thread can have filled the file
        # (nobody checkpointing leaves it at its empty schema's size, about 100 KB).
        deadline = time.monotonic() + 5
        while os.path.getsize(path) < 500_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.getsize(path) >= 500_000
    finally:
        checkpointer.stop()


async def kill_child_then_publish(
    process: RelayProcess, client: Client, keys: Keys, module: str, count: int
) -> list[list[Any]]:
    """Kill the relay's child running `module`, then publish `count` notes: each is
    acknowledged or refused with `error:`, and the last is stored by a new child."""
    assert process.proc is not None
    os.kill(child_running(process.proc.pid, module), signal.SIGKILL)
    replies = [await client.publish(keys.sign(content=f"after {n}")) for n in range(count)]
    for reply in replies:
        assert reply[2] is True or reply[3].startswith("error:"), reply
    assert replies[-1][2] is True, f"the relay did not start a new {module}"
    return replies


@pytest.fixture
async def relay_and_client(relay_process: Any) -> AsyncIterator[tuple[RelayProcess, Client]]:
    """`python -m relay` with its default child processes, and a client connected to it."""
    process: RelayProcess = relay_process()  # killed by relay_process at the end
    await asyncio.to_thread(process.start)
    client = await Client.connect(process.url)
    yield process, client
    await client.close()


async def test_relay_answers_and_recovers_when_its_write_process_dies(
    relay_and_client: tuple[RelayProcess, Client],
) -> None:
    process, client = relay_and_client
    keys = Keys()
    before = [keys.sign(content=f"before {n}") for n in range(20)]
    for event in before:
        assert (await client.publish(event))[2] is True
    replies = await kill_child_then_publish(process, client, keys, "relay.store.write_process", 20)
    acknowledged = [e["id"] for e in before] + [r[1] for r in replies if r[2]]
    found = await fetch_by_ids(process.url, *acknowledged)
    assert {e["id"] for e in found} == set(acknowledged)
    samples = await scrape(process.port)
    assert metric(samples, "relay_child_restarts_total", process="write") == 1
    assert metric(samples, "relay_child_restarts_total", process="verify") == 0


async def test_verify_process_checks_each_signature_in_order() -> None:
    keys = Keys()
    good = events(5, keys)
    forged = replace(good[1], sig=good[2].sig)
    off_curve = replace(good[3], pubkey="f" * 64)
    verifier = VerifyProcess()
    await verifier.start()
    try:
        batch = [good[0], forged, good[2], off_curve, good[4]]
        assert await verifier.verify_many(batch) == [True, False, True, False, True]
    finally:
        await verifier.close()


async def test_relay_refuses_then_recovers_when_its_verify_process_dies(
    relay_and_client: tuple[RelayProcess, Client],
) -> None:
    process, client = relay_and_client
    keys = Keys()
    assert (await client.publish(keys.sign(content="before")))[2] is True
    await kill_child_then_publish(process, client, keys, "relay.net.verify_process", 5)
    forged = keys.sign(content="forged")
    forged["sig"] = keys.sign(content="other")["sig"]
    assert (await client.publish(forged))[2:] == [False, "invalid: bad signature"]
    samples = await scrape(process.port)
    assert metric(samples, "relay_child_restarts_total", process="verify") == 1


IN_FLIGHT = 20


async def test_a_verify_process_killed_holding_events_is_logged_once(
    relay_and_client: tuple[RelayProcess, Client],
) -> None:
    """Each event it held is answered `error:`, with one warning in the log, no traceback."""
    process, client = relay_and_client
    keys = Keys()
    assert (await client.publish(keys.sign(content="before")))[2] is True
    assert process.proc is not None
    child = child_running(process.proc.pid, "relay.net.verify_process")
    os.kill(child, signal.SIGSTOP)  # it holds every check sent from now on
    held = [keys.sign(content=f"held {n}") for n in range(IN_FLIGHT)]
    for event in held:
        await client.send(["EVENT", event])
    # Frames are read in order: once this EOSE is back, every check was sent to the child.
    assert await client.req("sentinel", {"ids": ["0" * 64]}) == []
    os.kill(child, signal.SIGKILL)
    replies: dict[str, list[Any]] = {}
    while len(replies) < IN_FLIGHT:
        reply = await client.recv()
        replies[reply[1]] = reply
    assert set(replies) == {e["id"] for e in held}
    for reply in replies.values():
        assert reply[2:] == [False, "error: the signature could not be checked, try again"]
    after = keys.sign(content="after")
    assert await client.publish(after) == ["OK", after["id"], True, ""]
    await client.close()
    assert process.terminate() == 0
    log = process.stderr()
    assert "Traceback" not in log, log
    warnings = [line for line in log.splitlines() if "relay.net.verify_process" in line]
    assert len(warnings) == 1, log
    assert "WARNING" in warnings[0], warnings
    assert "exited with code -9" in warnings[0], warnings


def test_new_databases_get_small_pages_and_old_ones_keep_theirs(tmp_path: Path) -> None:
    new = sqlite3.connect(tmp_path / "new.sqlite", isolation_level=None)
    prepare_database(new, "NORMAL", search=False)
    assert new.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 2048
    new.close()
    old = sqlite3.connect(tmp_path / "old.sqlite", isolation_level=None)
    old.execute("CREATE TABLE earlier (x)")  # a file made before: 4096-byte pages
    prepare_database(old, "NORMAL", search=False)
    assert old.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert save_batch(old, events(3)) == [SaveOutcome.STORED] * 3
    old.close()


async def test_a_cancelled_request_leaves_the_child_answering_the_next() -> None:
    verifier = VerifyProcess()
    await verifier.start()
    good = events(3)
    try:
        abandoned = asyncio.create_task(verifier.verify_many(good))
        await asyncio.sleep(0)  # written to the child, then given up on
        abandoned.cancel()
        assert await verifier.verify_many(good) == [True, True, True]
        assert await verifier.verify_many(good[:1]) == [True]
    finally:
        await verifier.close()
