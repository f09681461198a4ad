"""The NIP-86 moderation state on PostgreSQL: the `moderation` table (postgres_v2.sql),
shared by every relay instance on the database.

A change is one transaction on a short-lived connection of its own (changes are rare): the
row written or removed, a ban's stored events erased (their tags with them; the search
words live in the event's row and go with it), and a NOTIFY carrying the change, which
PostgreSQL delivers to the other instances only once the transaction has committed.

Every batch reads the moderation table itself, in the database, after taking its
pubkeys' advisory locks and ROW SHARE on the table (relay_save_batch, postgres_v3.sql),
so an instance that has not heard of a ban yet (its NOTIFY arrives a few milliseconds
later) still refuses what it bans. A pubkey ban first takes that pubkey's advisory lock;
an event ban or an allowlist entry takes EXCLUSIVE on the table (plain reads go on). So a
batch either commits before the change, whose erasure then removes what it stored, or
reads the table after the change committed and refuses the events it rules out.

Each instance LISTENs on the moderation channel of its schema and applies what the others
changed. On every (re)connection it loads the whole table again, so changes made while
its connection was down are not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import asyncpg

from relay.core.moderation import Change, ModerationState, decode_change, encode_change
from relay.store import pg_batch, pg_live

log = logging.getLogger("relay.postgres")

CONNECT_TIMEOUT = 10.0
RETRY_FIRST = 0.1
RETRY_MOST = 5.0
CHANNEL_PREFIX = "pyrelaymod_"

ERASE_BY_PUBKEY = "SELECT seq FROM events WHERE pubkey = $1 FOR UPDATE"
ERASE_BY_ID = "SELECT seq FROM events WHERE id = $1 FOR UPDATE"
# Additions that refuse events of any pubkey: they wait for the batches in flight (which
# hold ROW SHARE on the table) and hold back new ones until they commit.
WAITS_FOR_EVERY_BATCH = ("banned_events", "allowed_pubkeys")

Apply = Callable[[Change], None]
Reload = Callable[[ModerationState], None]


class PostgresModeration:
    """Load, change and follow the moderation state of the database at `dsn`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        # Tags this instance's notifications: it applied its own changes already.
        self.instance = uuid.uuid4().hex[:16]
        self._follower: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def _connect(self, name: str = "pyrelay-moderation") -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": name}
        )

    async def load(self) -> ModerationState:
        conn = await self._connect()
        try:
            return await _load(conn)
        finally:
            await conn.close()

    async def apply(self, change: Change) -> int:
        """Persist one change and tell the other instances; returns the events erased."""
        conn = await self._connect()
        try:
            async with conn.transaction():
                deleted = await _write(conn, change)
                channel = await _channel(conn)
                await conn.execute(
                    "SELECT pg_notify($1, $2)", channel, f"{self.instance} {encode_change(change)}"
                )
        finally:
            await conn.close()
        return deleted

    async def follow(self, apply: Apply, reload: Reload) -> None:
        """From now until close(), hand each change another instance makes to `apply`, and
        the whole state to `reload` on each (re)connection. Returns once listening, or
        after CONNECT_TIMEOUT (the follower retrying on its own)."""
        self._follower = asyncio.create_task(self._follow(apply, reload))
        try:
            await asyncio.wait_for(self.listening.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("moderation changes from other instances: not listening yet")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def _follow(self, apply: Apply, reload: Reload) -> None:
        pause = RETRY_FIRST
        while True:
            try:
                await self._follow_once(apply, reload)
                pause = RETRY_FIRST
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("moderation changes: %s; retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MOST)

    async def _follow_once(self, apply: Apply, reload: Reload) -> None:
        """Listen until the connection is lost; the state is reloaded once listening, so
        nothing committed meanwhile is missed (changes heard twice apply the same)."""
        # Notifications in commit order, then None once the connection is lost.
        heard: asyncio.Queue[str | None] = asyncio.Queue()
        conn = await self._connect(f"pyrelay-listen-moderation-{self.instance}")
        try:
            conn.add_termination_listener(lambda _conn: heard.put_nowait(None))
            await conn.add_listener(
                await _channel(conn), lambda _c, _p, _ch, text: heard.put_nowait(str(text))
            )
            reload(await _load(conn))
            self.listening.set()
            while (text := await heard.get()) is not None:
                self._heard(text, apply)
            log.warning("moderation changes: connection lost, reconnecting")
        finally:
            self.listening.clear()
            conn.terminate()

    def _heard(self, text: str, apply: Apply) -> None:
        instance, _, body = text.partition(" ")
        if instance == self.instance:
            return
        change = decode_change(body)
        if change is None:
            log.warning("moderation changes: ignored a malformed notification %r", text[:200])
            return
        apply(change)


def moderation_channel(schema: str) -> str:
    return pg_live.channel_name(schema, prefix=CHANNEL_PREFIX)


async def _channel(conn: asyncpg.Connection) -> str:
    return moderation_channel(str(await conn.fetchval("SELECT current_schema()")))


async def _load(conn: asyncpg.Connection) -> ModerationState:
    state = ModerationState()
    for row in await conn.fetch("SELECT list, key, reason FROM moderation"):
        state.restore(row["list"], row["key"], row["reason"])
    return state


async def _write(conn: asyncpg.Connection, change: Change) -> int:
    """The row, and for a ban the events it erases; inside the caller's transaction."""
    if change.purge_pubkey:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", pg_batch.lock_key(change.purge_pubkey)
        )
    elif change.added and change.table in WAITS_FOR_EVERY_BATCH:
        await conn.execute("LOCK TABLE moderation IN EXCLUSIVE MODE")
    if change.added:
        await conn.execute(
            "INSERT INTO moderation (list, key, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT (list, key) DO UPDATE SET reason = excluded.reason",
            change.table,
            change.key,
            change.reason,
        )
    else:
        await conn.execute(
            "DELETE FROM moderation WHERE list = $1 AND key = $2", change.table, change.key
        )
    if change.purge_pubkey:
        select, key = ERASE_BY_PUBKEY, change.purge_pubkey
    elif change.purge_event:
        select, key = ERASE_BY_ID, change.purge_event
    else:
        return 0
    seqs = [row[0] for row in await conn.fetch(select, bytes.fromhex(key))]
    if seqs:
        await conn.execute("SELECT relay_erase($1::bigint[])", seqs)
    return len(seqs)
