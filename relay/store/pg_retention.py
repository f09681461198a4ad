"""Retention on PostgreSQL: one batch of events past their kind's age or over the storage
budget, erased in one short transaction (the rules are relay/core/retention.py's).

Several instances share one database, and one pruning at a time is enough: each batch
first tries a transaction-level advisory lock and, another instance holding it, leaves
the turn to that one. Rows a concurrent batch holds are skipped (FOR UPDATE SKIP LOCKED),
so pruning never waits on ingest and cannot deadlock with it; they go next time.

The storage budget. The size is pg_total_relation_size of `events` and `tags` (rows,
TOAST and indexes). PostgreSQL keeps the space of deleted rows for new ones instead of
giving it back, so that size does not come down when events are erased and "prune while
over the budget" would erase every prunable event. Instead, when the size first passes
the budget, the average bytes per event (size / events) is measured and kept in
relay_meta, and the budget becomes a number of events: budget / that average. It is
measured again once the size is back under the budget (a VACUUM FULL) or the budget
changes. Counting the events takes a while on a large table, so it runs on a reader,
before the writer's short transaction (budget_plan), never inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.core.retention import Retention
from relay.store.base import Purged

# Advisory lock key of the pruning turn (b"pyprune!"): a pubkey's key collides with it
# only by chance, which would merely make a batch wait for one prune transaction.
PRUNE_LOCK = int.from_bytes(b"pyprune!", "big", signed=True)
BUDGET_KEY = "budget_event_bytes"
SIZE = "SELECT pg_total_relation_size('events') + pg_total_relation_size('tags')"

Conn = Any  # an asyncpg connection (or a pool's proxy of one)


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """What the budget asks of one prune: how many events over it, and the relay_meta
    value to write first (None: leave it; "": remove it)."""

    excess: int = 0
    meta: str | None = None


NO_BUDGET = BudgetPlan()


async def budget_plan(conn: Conn, budget: int) -> BudgetPlan:
    """Read-only, on a reader: the number of events past what the budget holds."""
    if not budget:
        return NO_BUDGET
    size = int(await conn.fetchval(SIZE))
    kept = await conn.fetchval("SELECT value FROM relay_meta WHERE key = $1", BUDGET_KEY)
    if size <= budget:
        return NO_BUDGET if kept is None else BudgetPlan(meta="")
    count = int(await conn.fetchval("SELECT count(*) FROM events"))
    measured_budget, _, per_event_text = (kept or "").partition(" ")
    meta = None
    if kept is None or measured_budget != str(budget):
        per_event_text = str(max(1, size // max(count, 1)))
        meta = f"{budget} {per_event_text}"
    return BudgetPlan(max(0, count - budget // int(per_event_text)), meta)


async def prune(
    conn: Conn, now: int, retention: Retention, budget: BudgetPlan = NO_BUDGET
) -> Purged:
    """At most retention.batch events, in one transaction; Purged() when another instance
    holds the turn."""
    if not retention.enabled:
        return Purged()
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
            return Purged()
        await _record(conn, budget.meta)
        aged = await _aged_out(conn, now, retention)
        oldest: list[int] = []
        room = retention.batch - len(aged)
        if room > 0 and budget.excess > 0:
            oldest = await _oldest(conn, retention, min(room, budget.excess), aged)
        gone = aged + oldest
        if gone:
            await conn.execute("SELECT relay_erase($1::bigint[])", gone)
    return Purged(aged=len(aged), over_budget=len(oldest))


async def _aged_out(conn: Conn, now: int, retention: Retention) -> list[int]:
    seqs: list[int] = []
    for kind, age in retention.kind_ages:
        left = retention.batch - len(seqs)
        if kind in retention.keep_kinds or left <= 0:
            continue
        rows = await conn.fetch(
            "SELECT seq FROM events WHERE kind = $1 AND created_at < $2"
            " LIMIT $3 FOR UPDATE SKIP LOCKED",
            kind,
            now - age,
            left,
        )
        seqs.extend(row[0] for row in rows)
    left = retention.batch - len(seqs)
    if retention.default_age and left > 0:
        rows = await conn.fetch(
            "SELECT seq FROM events WHERE created_at < $1 AND kind <> ALL($2::integer[])"
            " LIMIT $3 FOR UPDATE SKIP LOCKED",
            now - retention.default_age,
            sorted(retention.ruled_kinds()),
            left,
        )
        seqs.extend(row[0] for row in rows)
    return seqs


async def _record(conn: Conn, meta: str | None) -> None:
    """The bytes per event the budget was measured with (module docstring)."""
    if meta == "":
        await conn.execute("DELETE FROM relay_meta WHERE key = $1", BUDGET_KEY)
    elif meta is not None:
        await conn.execute(
            "INSERT INTO relay_meta (key, value) VALUES ($1, $2)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            BUDGET_KEY,
            meta,
        )


async def _oldest(conn: Conn, retention: Retention, count: int, taken: list[int]) -> list[int]:
    """The oldest prunable events, by created_at (events_by_time read backwards)."""
    rows = await conn.fetch(
        "SELECT seq FROM events WHERE kind <> ALL($1::integer[]) AND seq <> ALL($2::bigint[])"
        " ORDER BY created_at, id DESC LIMIT $3 FOR UPDATE SKIP LOCKED",
        sorted(retention.keep_kinds),
        taken,
        count,
    )
    return [row[0] for row in rows]
