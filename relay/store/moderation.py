"""Where the NIP-86 moderation state persists: the `moderation` table of the SQLite file
(here), or of the PostgreSQL database (store/pg_moderation.py).

Moderation changes are rare, so each runs on a short-lived sqlite3 connection of its own
on a worker thread; SQLite's busy timeout lets it wait for the writer's turn. A ban
deletes what is stored in the same transaction (the FTS triggers follow the delete).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from relay.core.moderation import Change, ModerationState
from relay.store.base import EventStore
from relay.store.sqlite import SqliteStore

BUSY_TIMEOUT_MS = 10_000


class ModerationStore(Protocol):
    async def load(self) -> ModerationState: ...

    async def apply(self, change: Change) -> int:
        """Persist one change; returns how many stored events a ban deleted."""
        ...


@runtime_checkable
class SharedModeration(Protocol):
    """A moderation store other relay instances change too (PostgreSQL)."""

    async def follow(
        self, apply: Callable[[Change], None], reload: Callable[[ModerationState], None]
    ) -> None:
        """Until close(), hand each change another instance makes to `apply`, and the whole
        state to `reload` whenever changes may have been missed; returns once in place."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ModeratedStore(Protocol):
    """An event store that keeps the moderation state itself, beside the events."""

    def moderation_store(self) -> ModerationStore: ...


class MemoryModeration:
    """No persistence: the state lives as long as the process (the memory store)."""

    async def load(self) -> ModerationState:
        return ModerationState()

    async def apply(self, change: Change) -> int:
        return 0


class SqliteModeration:
    def __init__(self, path: str) -> None:
        self.path = path

    async def load(self) -> ModerationState:
        return await asyncio.to_thread(self._load)

    async def apply(self, change: Change) -> int:
        return await asyncio.to_thread(self._apply, change)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return db

    def _load(self) -> ModerationState:
        state = ModerationState()
        db = self._connect()
        try:
            for table, key, reason in db.execute("SELECT list, key, reason FROM moderation"):
                state.restore(table, key, reason)
        finally:
            db.close()
        return state

    def _apply(self, change: Change) -> int:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = _write(db, change)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()
        return deleted


def _write(db: sqlite3.Connection, change: Change) -> int:
    if change.added:
        db.execute(
            "INSERT INTO moderation (list, key, reason) VALUES (?, ?, ?)"
            " ON CONFLICT (list, key) DO UPDATE SET reason = excluded.reason",
            (change.table, change.key, change.reason),
        )
    else:
        db.execute("DELETE FROM moderation WHERE list = ? AND key = ?", (change.table, change.key))
    if change.purge_pubkey:
        where, arg = "pubkey = ?", bytes.fromhex(change.purge_pubkey)
    elif change.purge_event:
        where, arg = "id = ?", bytes.fromhex(change.purge_event)
    else:
        return 0
    db.execute(f"DELETE FROM tags WHERE seq IN (SELECT seq FROM events WHERE {where})", (arg,))
    return db.execute(f"DELETE FROM events WHERE {where}", (arg,)).rowcount


def default_moderation_store(store: EventStore) -> ModerationStore:
    """The SQLite file's own table, the PostgreSQL database's; elsewhere (the memory
    store) the process's memory."""
    if isinstance(store, SqliteStore):
        return SqliteModeration(store.path)
    if isinstance(store, ModeratedStore):
        return store.moderation_store()
    return MemoryModeration()
