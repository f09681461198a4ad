"""Every write to the SQLite store, on a plain sqlite3 connection.

The same functions run on aiosqlite's writer thread or in the write process
(relay/store/write_process.py): one transaction per batch, committed before any
outcome is returned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from importlib import resources

from relay.core import vanish
from relay.core.event import HEX64, Event, event_from_raw, newer
from relay.core.retention import Retention
from relay.store import rules
from relay.store.base import Purged, SaveOutcome

# 2: events_fts (NIP-50 search), filled from the events when its triggers are created.
# 3: moderation (NIP-86), created by schema.sql on an older database as on a new one.
SCHEMA_VERSION = 3
PAGE_SIZE = 2048


# A database whose search index was not kept (version 1, or opened with search off)
# gets it filled from the events it holds.
FILL_SEARCH_INDEX = """
BEGIN IMMEDIATE;
DELETE FROM events_fts;
INSERT INTO events_fts (rowid, content)
    SELECT seq, json_extract(CAST(raw AS TEXT), '$.content') FROM events;
COMMIT;
"""
# With search off the index is not kept: FTS5 triples the store's own cost of an insert.
DROP_SEARCH_INDEX = """
DROP TRIGGER IF EXISTS events_fts_insert;
DROP TRIGGER IF EXISTS events_fts_delete;
DELETE FROM events_fts;
"""


def load_schema() -> str:
    return resources.files("relay").joinpath("schema.sql").read_text(encoding="utf-8")


def prepare_database(db: sqlite3.Connection, synchronous: str, search: bool) -> None:
    """WAL mode, durability, the schema, and the search index kept or dropped."""
    # Only a new, empty database takes it. A commit writes every page an insert touched:
    # on a million events most are index leaves of random keys (id, author, tag values),
    # and half-size pages make that write half as large. Measured in bench/README.md.
    db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    db.execute("PRAGMA journal_mode = WAL")
    # FULL syncs the WAL at each commit: an acknowledged event survives power loss,
    # not only a killed process. Group commit keeps that affordable.
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("PRAGMA busy_timeout = 5000")
    index_was_kept = (
        db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'events_fts_insert'"
        ).fetchone()
        is not None
    )
    db.executescript(load_schema())
    if not search:
        db.executescript(DROP_SEARCH_INDEX)
    elif not index_was_kept:
        db.executescript(FILL_SEARCH_INDEX)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def save_batch(db: sqlite3.Connection, events: Sequence[Event]) -> list[SaveOutcome]:
    _begin(db)
    try:
        outcomes = [_save_one(db, event) for event in events]
        db.execute("COMMIT")
    except BaseException as exc:
        _rollback(db, exc)
        raise
    return outcomes


def _begin(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        # A rollback that failed left one open: end it, or no batch could begin again.
        db.execute("ROLLBACK")
    db.execute("BEGIN IMMEDIATE")


def _rollback(db: sqlite3.Connection, cause: BaseException) -> None:
    """Undo a failed transaction without hiding why it failed.

    SQLite rolls back by itself after some errors (a full disk, an I/O error): a ROLLBACK
    then fails with "no transaction is active", and raised here it would replace the
    error the operator needs to see.
    """
    if not db.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error as failed:
        cause.add_note(f"and the rollback failed: {failed}")


def _save_one(db: sqlite3.Connection, event: Event) -> SaveOutcome:
    event_id = bytes.fromhex(event.id)
    pubkey = bytes.fromhex(event.pubkey)
    if db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone():
        return SaveOutcome.DUPLICATE
    if _tombstoned(db, event, event_id):
        return SaveOutcome.DELETED
    if _vanished(db, event):
        return SaveOutcome.VANISHED
    if event.kind == vanish.VANISH_KIND:
        _apply_vanish(db, event, pubkey)
    address = event.address
    d_tag = None
    if address is not None:
        d_tag = address[2]
        outcome = _replace_address(db, event, pubkey, d_tag)
        if outcome is not None:
            return outcome
    cursor = db.execute(
        "INSERT INTO events (id, pubkey, created_at, kind, d_tag, expiration, raw)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event_id, pubkey, event.created_at, event.kind, d_tag, event.expiration, event.raw),
    )
    seq = cursor.lastrowid
    db.executemany(
        "INSERT INTO tags (seq, name, value, created_at) VALUES (?, ?, ?, ?)",
        [(seq, name, value, event.created_at) for name, value in set(event.indexed_tags())],
    )
    if event.kind == rules.DELETION_KIND:
        _apply_deletion(db, event, pubkey)
    return SaveOutcome.STORED


def _tombstoned(db: sqlite3.Connection, event: Event, event_id: bytes) -> bool:
    """Whether a deletion request by a key that may delete `event` named its id."""
    return any(
        db.execute(
            "SELECT 1 FROM deleted_ids WHERE id = ? AND pubkey = ?", (event_id, bytes.fromhex(key))
        ).fetchone()
        for key in rules.deleters(event)
        # A `p` value that is not a key matches no deletion (bytes.fromhex takes "AB").
        if HEX64.fullmatch(key)
    )


def _vanished(db: sqlite3.Connection, event: Event) -> bool:
    """Whether a stored request to vanish covers `event` (see vanish.erased_by)."""
    pubkeys = {event.pubkey}
    if event.kind == vanish.GIFT_WRAP_KIND:
        pubkeys.update(p for p in event.tag_values("p") if HEX64.fullmatch(p))
    vanished = {}
    for key in pubkeys:
        row = db.execute(
            "SELECT until FROM vanished WHERE pubkey = ?", (bytes.fromhex(key),)
        ).fetchone()
        if row is not None:
            vanished[key] = row[0]
    return bool(vanished) and vanish.erased_by(event, vanished)


def _apply_vanish(db: sqlite3.Connection, request: Event, pubkey: bytes) -> None:
    """Erase the author's events and the gift wraps to them, up to the request (NIP-62)."""
    until = request.created_at
    own = db.execute(
        "SELECT seq FROM events WHERE pubkey = ? AND created_at <= ?", (pubkey, until)
    ).fetchall()
    wraps = db.execute(
        "SELECT e.seq FROM tags t JOIN events e ON e.seq = t.seq"
        " WHERE t.name = 'p' AND t.value = ? AND e.kind = ? AND e.created_at <= ?",
        (request.pubkey, vanish.GIFT_WRAP_KIND, until),
    ).fetchall()
    seqs = sorted({seq for (seq,) in own + wraps})
    for start in range(0, len(seqs), 500):
        _delete_seqs(db, seqs[start : start + 500])
    db.execute(
        "INSERT INTO vanished (pubkey, until) VALUES (?, ?)"
        " ON CONFLICT (pubkey) DO UPDATE SET until = max(until, excluded.until)",
        (pubkey, until),
    )


def _replace_address(
    db: sqlite3.Connection, event: Event, pubkey: bytes, d_tag: str
) -> SaveOutcome | None:
    """Make way for a new version at the event's address, or say why it cannot be stored."""
    row = db.execute(
        "SELECT until FROM deleted_addresses WHERE pubkey = ? AND kind = ? AND d_tag = ?",
        (pubkey, event.kind, d_tag),
    ).fetchone()
    if row is not None and rules.address_tombstone_applies(event, row[0]):
        return SaveOutcome.DELETED
    row = db.execute(
        "SELECT seq, raw FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?",
        (pubkey, event.kind, d_tag),
    ).fetchone()
    if row is None:
        return None
    if not newer(event, event_from_raw(row[1])):
        return SaveOutcome.STALE
    _delete_seqs(db, [row[0]])
    return None


def _apply_deletion(db: sqlite3.Connection, deletion: Event, pubkey: bytes) -> None:
    targets = rules.deletion_targets(deletion)
    for target in targets.ids:
        if not HEX64.fullmatch(target):
            continue  # not an event id; bytes.fromhex would also take "AB" or "a b"
        target_id = bytes.fromhex(target)
        # Only the author's own events and gift wraps can be deletable by this key.
        row = db.execute(
            "SELECT seq, raw FROM events WHERE id = ? AND (pubkey = ? OR kind = ?)",
            (target_id, pubkey, rules.GIFT_WRAP_KIND),
        ).fetchone()
        if row is not None and rules.tombstone_applies(event_from_raw(row[1]), deletion.pubkey):
            _delete_seqs(db, [row[0]])
        db.execute(
            "INSERT OR IGNORE INTO deleted_ids (id, pubkey) VALUES (?, ?)", (target_id, pubkey)
        )
    for kind, d_tag in targets.addresses:
        rows = db.execute(
            "SELECT seq FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?"
            " AND created_at <= ? AND kind != ?",
            (pubkey, kind, d_tag, targets.until, rules.DELETION_KIND),
        ).fetchall()
        _delete_seqs(db, [seq for (seq,) in rows])
        db.execute(
            "INSERT INTO deleted_addresses (pubkey, kind, d_tag, until) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pubkey, kind, d_tag) DO UPDATE SET until = max(until, excluded.until)",
            (pubkey, kind, d_tag, targets.until),
        )


def _delete_seqs(db: sqlite3.Connection, seqs: list[int]) -> None:
    if not seqs:
        return
    marks = ",".join("?" * len(seqs))
    db.execute(f"DELETE FROM tags WHERE seq IN ({marks})", seqs)
    db.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)


def purge_expired(db: sqlite3.Connection, now: int) -> int:
    _begin(db)
    try:
        seqs = [
            seq
            for (seq,) in db.execute(
                "SELECT seq FROM events WHERE expiration IS NOT NULL AND expiration <= ?", (now,)
            )
        ]
        for start in range(0, len(seqs), 500):
            _delete_seqs(db, seqs[start : start + 500])
        db.execute("COMMIT")
    except BaseException as exc:
        _rollback(db, exc)
        raise
    return len(seqs)


def purge(db: sqlite3.Connection, now: int, retention: Retention) -> Purged:
    """The writer's periodic turn: expired events (NIP-40), then one retention batch."""
    return Purged(expired=purge_expired(db, now)) + prune(db, now, retention)


def prune(db: sqlite3.Connection, now: int, retention: Retention) -> Purged:
    """Delete at most one batch of events past their kind's age or over the budget.

    One short transaction, so the writer commits the events queued meanwhile before the
    next batch; the caller calls again while a whole batch went. FTS rows follow the
    delete through their trigger; NIP-09 and NIP-62 tombstones live in their own tables
    and are kept, so a pruned deletion request still keeps its targets out.
    """
    if not retention.enabled:
        return Purged()
    db.execute("BEGIN IMMEDIATE")
    try:
        aged = _aged_out(db, now, retention)
        seqs = set(aged)
        room = retention.batch - len(seqs)
        if room > 0 and retention.budget_bytes and _used_bytes(db) > retention.budget_bytes:
            seqs |= _oldest(db, retention, room + len(seqs))
        ordered = sorted(seqs)[: retention.batch]
        for start in range(0, len(ordered), 500):
            _delete_seqs(db, ordered[start : start + 500])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    # An event both past its age and among the oldest counts as aged: the age alone
    # would have removed it.
    aged_count = sum(seq in aged for seq in ordered)
    return Purged(aged=aged_count, over_budget=len(ordered) - aged_count)


def _aged_out(db: sqlite3.Connection, now: int, retention: Retention) -> set[int]:
    seqs: set[int] = set()
    for kind, age in retention.kind_ages:
        if kind in retention.keep_kinds:
            continue
        left = retention.batch - len(seqs)
        rows = db.execute(
            "SELECT seq FROM events WHERE kind = ? AND created_at < ? LIMIT ?",
            (kind, now - age, left),
        )
        seqs.update(seq for (seq,) in rows)
    left = retention.batch - len(seqs)
    if retention.default_age and left > 0:
        excluded = sorted(retention.ruled_kinds())
        marks = ",".join("?" * len(excluded)) or "NULL"
        rows = db.execute(
            f"SELECT seq FROM events WHERE created_at < ? AND kind NOT IN ({marks}) LIMIT ?",
            (now - retention.default_age, *excluded, left),
        )
        seqs.update(seq for (seq,) in rows)
    return seqs


def _oldest(db: sqlite3.Connection, retention: Retention, count: int) -> set[int]:
    kept = sorted(retention.keep_kinds)
    marks = ",".join("?" * len(kept)) or "NULL"
    rows = db.execute(
        f"SELECT seq FROM events WHERE kind NOT IN ({marks}) ORDER BY created_at, id LIMIT ?",
        (*kept, count),
    )
    return {seq for (seq,) in rows}


def _used_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the main database's pages in use: freed pages are reused, not counted."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)
