"""SQLite writes in a process of their own.

In the relay's process the writer thread needs the GIL between SQLite statements, and the
event loop holds it about half the time under load: commits then wait on the WebSocket
layer. A child process has its own interpreter and a core of its own.

The parent sends each batch on the child's stdin and reads its outcomes on the child's
stdout once the batch is committed; nothing else uses those pipes. Every message, both
ways, is a 4-byte big-endian length and then:

    parent -> child   b"S" (length:uint32 raw)*             save these events in order
                      b"P" now:int64                        purge expired events
    child -> parent   b"R"                                  database ready
                      b"O" outcome:uint8*                   committed; SaveOutcome by index
                      b"N" purged:int64                     purge done
                      b"E" message                          failed; nothing was committed

The child lives as long as its stdin stays open: a parent killed with -9 leaves it to
finish the batch it holds and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import struct
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from relay.core.event import Event, event_from_raw
from relay.store import sqlite_writes
from relay.store.base import SaveOutcome
from relay.store.checkpoint import Checkpointer

OUTCOMES = list(SaveOutcome)
OUTCOME_CODES = {outcome: code for code, outcome in enumerate(OUTCOMES)}
LENGTH = struct.Struct(">I")
NOW = struct.Struct(">q")
# Seconds the child may take to commit what it holds and exit before it is killed.
CLOSE_SECONDS = 30.0


class WriteProcessError(Exception):
    """The write process failed a request or died; nothing of the request is known stored."""


class WriteProcess:
    """The parent's end. Requests are written as they come and answered in order, so the
    next batch is already waiting in the pipe when the child finishes one."""

    def __init__(self, path: str, synchronous: str, search: bool) -> None:
        self.path = path
        self.synchronous = synchronous
        self.search = search
        self._child: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Task[None] | None = None
        # One future per request written and not yet answered, oldest first.
        self._waiting: deque[asyncio.Future[bytes]] = deque()
        self._sending = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        await self._ensure_child()

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        parts = [b"S"]
        for event in events:
            parts.append(LENGTH.pack(len(event.raw)))
            parts.append(event.raw)
        reply = await self._call(parts)
        if reply[:1] != b"O" or len(reply) != len(events) + 1:
            raise WriteProcessError(f"unexpected reply to a batch: {reply[:1]!r}")
        return [OUTCOMES[index] for index in reply[1:]]

    async def purge_expired(self, now: int) -> int:
        reply = await self._call([b"P", NOW.pack(now)])
        if reply[:1] != b"N":
            raise WriteProcessError(f"unexpected reply to a purge: {reply[:1]!r}")
        return int(NOW.unpack(reply[1:])[0])

    async def close(self) -> None:
        """Let the child answer everything written, then wait for it to exit."""
        self._closed = True
        async with self._sending:
            child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), CLOSE_SECONDS)
        except TimeoutError:
            child.kill()
            await child.wait()
        if self._replies is not None:
            await self._replies

    async def _call(self, parts: list[bytes]) -> bytes:
        async with self._sending:
            if self._closed:
                raise WriteProcessError("the store is closed")
            child = await self._ensure_child()
            assert child.stdin is not None
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            # Written in the order the futures are queued: replies come back in that order.
            self._waiting.append(reply)
            child.stdin.writelines([LENGTH.pack(sum(map(len, parts))), *parts])
        with contextlib.suppress(ConnectionError):
            # A child gone is seen by the reply reader, which fails `reply`.
            await child.stdin.drain()
        answer = await reply
        if answer[:1] == b"E":
            raise WriteProcessError(answer[1:].decode(errors="replace"))
        return answer

    async def _ensure_child(self) -> asyncio.subprocess.Process:
        """The running child, or a new one if there is none or it died (with the requests
        it held, which were failed)."""
        if self._child is None or self._child.returncode is not None or self._replies_ended:
            if self._replies is not None:
                await self._replies
            self._child = await self._spawn()
            self._replies = asyncio.create_task(self._read_replies(self._child))
        return self._child

    @property
    def _replies_ended(self) -> bool:
        return self._replies is not None and self._replies.done()

    async def _spawn(self) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            self.path,
            self.synchronous,
            "1" if self.search else "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_environment(),
        )
        try:
            reply = await _receive(child)
        except asyncio.IncompleteReadError:
            reply = b"Ethe write process exited at start"
        if reply[:1] != b"R":
            await _reap(child)
            raise sqlite3.OperationalError(reply[1:].decode(errors="replace"))
        return child

    async def _read_replies(self, child: asyncio.subprocess.Process) -> None:
        try:
            while self._waiting or not self._closed:
                reply = await _receive(child)
                self._waiting.popleft().set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await _reap(child)
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(WriteProcessError("the write process stopped"))


async def _receive(child: asyncio.subprocess.Process) -> bytes:
    assert child.stdout is not None
    (size,) = LENGTH.unpack(await child.stdout.readexactly(LENGTH.size))
    return await child.stdout.readexactly(size)


async def _reap(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()
    await child.wait()


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this copy of the package importable."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


# The child.


def handle(db: sqlite3.Connection, message: bytes) -> bytes:
    try:
        if message[:1] == b"S":
            outcomes = sqlite_writes.save_batch(db, _events(message, 1))
            return b"O" + bytes(OUTCOME_CODES[outcome] for outcome in outcomes)
        if message[:1] == b"P":
            (now,) = NOW.unpack_from(message, 1)
            return b"N" + NOW.pack(sqlite_writes.purge_expired(db, now))
        return b"E" + f"unknown request {message[:1]!r}".encode()
    except Exception as exc:
        return b"E" + str(exc).encode(errors="replace")


def _events(message: bytes, offset: int) -> list[Event]:
    events = []
    view = memoryview(message)
    while offset < len(message):
        (size,) = LENGTH.unpack_from(message, offset)
        offset += LENGTH.size
        events.append(event_from_raw(bytes(view[offset : offset + size])))
        offset += size
    return events


def _read_message(stream: BinaryIO) -> bytes | None:
    header = stream.read(LENGTH.size)
    if len(header) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(header)
    message = stream.read(size)
    return message if len(message) == size else None


def _write_message(stream: BinaryIO, message: bytes) -> None:
    stream.write(LENGTH.pack(len(message)) + message)
    stream.flush()


def main(argv: Sequence[str]) -> int:
    path, synchronous, search = argv[0], argv[1], argv[2] == "1"
    # Ctrl-C reaches the whole process group: the parent decides when this one ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    try:
        db = sqlite3.connect(path, isolation_level=None)
        sqlite_writes.prepare_database(db, synchronous, search)
        checkpointer = Checkpointer(path)
        checkpointer.take_over(db)
    except sqlite3.Error as exc:
        _write_message(replies, b"E" + str(exc).encode(errors="replace"))
        return 1
    checkpointer.start()
    _write_message(replies, b"R")
    while (message := _read_message(requests)) is not None:
        _write_message(replies, handle(db, message))
        checkpointer.after_commit(db)
    checkpointer.stop()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
