"""SQLite writes in a child process of their own (see relay/child.py).

In the relay's process the writer thread needs the GIL between SQLite statements, and the
event loop holds it about half the time under load: commits then wait on the WebSocket
layer. Messages after the length prefix:

    parent -> child   b"S" (length:uint32 raw)*    save these events in order, in one commit
                      b"P" now:int64               purge expired events, prune a batch
    child -> parent   b"O" outcome:uint8*          committed; SaveOutcome by index
                      b"N" (expired aged over_budget):int64*3  purge done
                      b"E" message                 failed; nothing was committed
"""

from __future__ import annotations

import sqlite3
import struct
import sys
from collections.abc import Callable, Sequence

from relay.child import LENGTH, ChildProcess, ChildRequestError, Handler, serve
from relay.core.event import Event, event_from_raw
from relay.core.retention import Retention
from relay.store import sqlite_writes
from relay.store.base import Purged, SaveOutcome
from relay.store.checkpoint import Checkpointer

OUTCOMES = list(SaveOutcome)
OUTCOME_CODES = {outcome: code for code, outcome in enumerate(OUTCOMES)}
NOW = struct.Struct(">q")
PURGED = struct.Struct(">qqq")

WriteProcessError = ChildRequestError


class WriteProcess:
    """The store's writes, sent to the child as the Writer hands over its batches."""

    def __init__(
        self, path: str, synchronous: str, search: bool, retention: Retention | None = None
    ) -> None:
        rules = (retention or Retention()).encode()
        self.child = ChildProcess(__name__, path, synchronous, "1" if search else "0", rules)

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def restarts(self) -> int:
        return self.child.restarts

    async def start(self) -> None:
        await self.child.start()

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        parts = [b"S"]
        for event in events:
            parts.append(LENGTH.pack(len(event.raw)))
            parts.append(event.raw)
        codes = await self.child.call(parts, expect=b"O")
        if len(codes) != len(events):
            raise WriteProcessError(f"{len(codes)} outcomes for a batch of {len(events)}")
        return [OUTCOMES[code] for code in codes]

    async def purge_expired(self, now: int) -> Purged:
        purged = await self.child.call([b"P", NOW.pack(now)], expect=b"N")
        return Purged(*PURGED.unpack(purged))

    async def close(self) -> None:
        await self.child.close()


# The child.


def open_writer(
    path: str, synchronous: str, search: bool
) -> tuple[sqlite3.Connection, Checkpointer]:
    """The writer connection, its schema ready and its checkpoints on a running thread."""
    db = sqlite3.connect(path, isolation_level=None)
    sqlite_writes.prepare_database(db, synchronous, search)
    checkpointer = Checkpointer(path)
    checkpointer.take_over(db)
    checkpointer.start()
    return db, checkpointer


def prepare(argv: Sequence[str]) -> tuple[Handler, Callable[[], None]]:
    db, checkpointer = open_writer(argv[0], argv[1], search=argv[2] == "1")
    retention = Retention.decode(argv[3])

    def handle(message: bytes) -> bytes:
        reply = _apply(db, message, retention)
        checkpointer.after_commit(db)
        return reply

    def cleanup() -> None:
        checkpointer.stop()
        db.close()

    return handle, cleanup


def _apply(db: sqlite3.Connection, message: bytes, retention: Retention) -> bytes:
    if message[:1] == b"S":
        outcomes = sqlite_writes.save_batch(db, _events(message, 1))
        return b"O" + bytes(OUTCOME_CODES[outcome] for outcome in outcomes)
    if message[:1] == b"P":
        (now,) = NOW.unpack_from(message, 1)
        purged = sqlite_writes.purge(db, now, retention)
        return b"N" + PURGED.pack(purged.expired, purged.aged, purged.over_budget)
    raise ValueError(f"unknown request {message[:1]!r}")


def _events(message: bytes, offset: int) -> list[Event]:
    events = []
    while offset < len(message):
        (size,) = LENGTH.unpack_from(message, offset)
        offset += LENGTH.size
        events.append(event_from_raw(message[offset : offset + size]))
        offset += size
    return events


if __name__ == "__main__":
    sys.exit(serve(prepare))
