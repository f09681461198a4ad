"""Filter -> SQL for the SQLite store: pure functions, unit-tested without a database."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.core.filters import Filter
from relay.core.search import fts_match
from relay.store.plans import SQLITE_VALUES_APART, ReadApart, read_apart

Query = tuple[str, list[Any]]


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


def _in(column: str, values: Iterable[Any], params: list[Any]) -> str:
    values = sorted(values)
    params.extend(values)
    return f"{column} IN ({_placeholders(len(values))})"


def _hex_blobs(values: Iterable[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def _where(
    f: Filter,
    now: int,
    params: list[Any],
    skip_tag: str | None,
    skip_search: bool = False,
    live_only: bool = True,
) -> list[str]:
    conditions = []
    if live_only:
        conditions.append("(e.expiration IS NULL OR e.expiration > ?)")
        params.append(now)
    if f.ids is not None:
        conditions.append(_in("e.id", _hex_blobs(f.ids), params))
    if f.authors is not None:
        conditions.append(_in("e.pubkey", _hex_blobs(f.authors), params))
    if f.kinds is not None:
        # With ids or authors, their indexes find few rows. A bare kind term would tempt the
        # planner into events_by_kind, whose time order spares a sort but scans the kind's
        # whole history (a second for 10 authors' kind-1 notes among 1,000,000 events);
        # unary + keeps that index out of the plan.
        narrowed = f.ids is not None or f.authors is not None
        conditions.append(_in("+e.kind" if narrowed else "e.kind", f.kinds, params))
    if f.since is not None:
        conditions.append("e.created_at >= ?")
        params.append(f.since)
    if f.until is not None:
        conditions.append("e.created_at <= ?")
        params.append(f.until)
    for name, values in f.tags:
        if name == skip_tag:
            continue
        params.append(name)
        inner = _in("value", values, params)
        conditions.append(f"e.seq IN (SELECT seq FROM tags WHERE name = ? AND {inner})")
    if f.search and not skip_search:
        conditions.append("e.seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
        params.append(fts_match(f.search))
    return conditions or ["1"]


def _driving_tag(f: Filter) -> tuple[str, str] | None:
    """A single-valued tag condition to scan the tag index by, newest first.

    Only when no id or author narrows the search better; tags are stored once per
    (event, name, value), so the join yields no duplicate rows.
    """
    if f.ids is not None or f.authors is not None:
        return None
    for name, values in f.tags:
        if len(values) == 1:
            return name, next(iter(values))
    return None


def _source(f: Filter, now: int, params: list[Any]) -> tuple[str, list[str], str]:
    """FROM clause, WHERE conditions and the created_at column to order by, for a filter
    without search: the tag index when one tag value drives the scan, else the events."""
    driving = _driving_tag(f)
    if driving is None:
        return "events e", _where(f, now, params, skip_tag=None), "e.created_at"
    name, value = driving
    params.extend([name, value])
    conditions = ["t.name = ?", "t.value = ?", *_where(f, now, params, skip_tag=name)]
    return "tags t JOIN events e ON e.seq = t.seq", conditions, "t.created_at"


def select_events(f: Filter, now: int) -> Query:
    """Raw JSON of the events matching `f`, newest first, ties by id, up to f.limit."""
    params: list[Any] = []
    if f.search:
        # NIP-50: most relevant first (bm25), then newest.
        source = "events_fts JOIN events e ON e.seq = events_fts.rowid"
        order = "events_fts.rank, e.created_at DESC, e.id"
        params.append(fts_match(f.search))
        conditions = ["events_fts MATCH ?", *_where(f, now, params, None, skip_search=True)]
    else:
        source, conditions, time = _source(f, now, params)
        order = f"{time} DESC, e.id"
    sql = f"SELECT e.raw FROM {source} WHERE {' AND '.join(conditions)} ORDER BY {order}"
    if f.limit is not None:
        sql += " LIMIT ?"
        params.append(f.limit)
    return sql, params


# A page row: (created_at, id, raw or seq, size of raw). With the raw JSON a row is ready to
# send; with the seq it is a key read ahead, whose raw JSON is fetched when its page is sent.
ROW_WITH_RAW = "e.created_at, e.id, e.raw, length(e.raw)"
ROW_WITH_SEQ = "e.created_at, e.id, e.seq, length(e.raw)"
# Only the raw JSON: one filter alone needs no key but the last row's.
RAW_ONLY = "e.raw"
# A position in a filter's results: the (created_at, id) of the last row passed.
Key = tuple[int, bytes]


def select_page(f: Filter, now: int, after: Key | None, limit: int, columns: str) -> Query:
    """The next `limit` rows of a filter without search after `after` (keyset continuation
    on created_at DESC, id ASC): ROW_WITH_RAW, ROW_WITH_SEQ or RAW_ONLY columns."""
    apart = read_apart(f, SQLITE_VALUES_APART)
    if apart is not None:
        return _select_page_apart(apart, now, after, limit, columns)
    params: list[Any] = []
    source, conditions, time = _source(f, now, params)
    if after is not None:
        created_at, event_id = after
        # The first term bounds the index range like `until`; the second drops the ties
        # already passed.
        conditions += [f"{time} <= ?", f"({time} < ? OR e.id > ?)"]
        params += [created_at, created_at, event_id]
    sql = (
        f"SELECT {columns} FROM {source} WHERE {' AND '.join(conditions)}"
        f" ORDER BY {time} DESC, e.id LIMIT ?"
    )
    params.append(limit)
    return sql, params


def _select_page_apart(
    apart: ReadApart, now: int, after: Key | None, limit: int, columns: str
) -> Query:
    """select_page of each part (one kind, or one tag value), each on its index newest
    first up to `limit`, merged in one compound statement (plans.read_apart)."""
    exprs = [expr.strip() for expr in columns.split(",")]
    named = ", ".join(f"{expr} AS c{n}" for n, expr in enumerate(exprs))
    inner = f"{named}, e.created_at AS key_at, e.id AS key_id"
    parts: list[str] = []
    params: list[Any] = []
    for part_filter in apart.parts:
        part, part_params = select_page(part_filter, now, after, limit, inner)
        parts.append(f"SELECT * FROM ({part})")
        params += part_params
    # UNION drops the second copy of an event two parts found (its rows are equal).
    union = " UNION " if apart.overlapping else " UNION ALL "
    outer = ", ".join(f"c{n}" for n in range(len(exprs)))
    sql = f"SELECT {outer} FROM ({union.join(parts)}) ORDER BY key_at DESC, key_id LIMIT ?"
    params.append(limit)
    return sql, params


def select_by_seq(seqs: Sequence[int]) -> Query:
    """The raw JSON of rows read ahead as keys, by seq (with the id, to check it)."""
    return f"SELECT seq, id, raw FROM events WHERE seq IN ({_placeholders(len(seqs))})", list(seqs)


@dataclass(frozen=True)
class NewestFirst:
    """Several authors' latest `limit` events, read in two steps that stay on one index.

    The plain query fetches every candidate row (all of ten authors' kind-1 notes, say)
    to sort them; here `cutoff` finds the created_at of the limit-th newest candidate from
    the index alone, and `bounded(cutoff)` fetches only the rows at or after it, as
    ROW_WITH_RAW rows in no particular order: SQLite's sorter copies each raw event
    and doubles the time of the read, sorting them in Python does not. That is exact when
    at least `limit` rows come back; fewer means expired events were among the newest
    candidates (expiration is not in the index), and the plain query has to run instead.
    """

    cutoff: Query
    statement: str
    params: list[Any]
    limit: int

    def bounded(self, cutoff: int) -> Query:
        return self.statement, [cutoff, *self.params]


@dataclass(frozen=True)
class Read:
    """How to read one filter's events: `plain`, or `newest` first when it is given."""

    plain: Query
    newest: NewestFirst | None = None


def read_events(f: Filter, now: int) -> Read:
    return Read(select_events(f, now), newest_first(f, now))


def _author_index(f: Filter) -> str | None:
    """The index holding all a filter asks for with created_at, when its limit cuts across
    several of the index's ranges (author, or author and kind); None otherwise."""
    if f.authors is None or f.ids is not None or f.tags or f.search or not f.limit:
        return None
    if len(f.authors) * (len(f.kinds) if f.kinds is not None else 1) < 2:
        return None  # one range is already walked newest first and stops at the limit
    return "events_by_author_kind" if f.kinds is not None else "events_by_author"


def _index_conditions(f: Filter, params: list[Any], prefix: str) -> str:
    assert f.authors is not None
    conditions = [_in(f"{prefix}pubkey", _hex_blobs(f.authors), params)]
    if f.kinds is not None:
        conditions.append(_in(f"{prefix}kind", f.kinds, params))
    if f.since is not None:
        conditions.append(f"{prefix}created_at >= ?")
        params.append(f.since)
    if f.until is not None:
        conditions.append(f"{prefix}created_at <= ?")
        params.append(f.until)
    return " AND ".join(conditions)


def newest_first(f: Filter, now: int) -> NewestFirst | None:
    # INDEXED BY: without statistics the planner would take events_by_kind for a bare kind
    # term (see _where), and the cutoff must be read from the index alone.
    index = _author_index(f)
    if index is None or f.limit is None:
        return None
    cutoff_params: list[Any] = []
    where = _index_conditions(f, cutoff_params, "")
    cutoff = (
        f"SELECT created_at FROM events INDEXED BY {index} WHERE {where}"
        " ORDER BY created_at DESC LIMIT 1 OFFSET ?",
        [*cutoff_params, f.limit - 1],
    )
    params: list[Any] = [now]
    where = _index_conditions(f, params, "e.")
    statement = (
        f"SELECT {ROW_WITH_RAW} FROM events e INDEXED BY {index}"
        f" WHERE e.created_at >= ? AND (e.expiration IS NULL OR e.expiration > ?) AND {where}"
    )
    return NewestFirst(cutoff, statement, params, f.limit)


def count_events(filters: Iterable[Filter], now: int) -> Query:
    """Distinct events matching any of the filters, limits ignored."""
    params: list[Any] = []
    parts = []
    for f in filters:
        conditions = _where(f, now, params, skip_tag=None)
        parts.append(f"SELECT e.seq FROM events e WHERE {' AND '.join(conditions)}")
    return f"SELECT count(*) FROM ({' UNION '.join(parts)})", params


# Ids of stored events already expired (not yet purged), from the partial index.
EXPIRED_IDS = "SELECT id FROM events WHERE expiration IS NOT NULL AND expiration <= ?"


def negentropy_items(f: Filter, now: int, cap: int | None) -> Query:
    """(created_at, id) of the events matching `f`, for NIP-77, ascending by created_at
    (and by id only with a `limit`: the caller sorts).

    With a `limit`: the newest `limit` live events (ties by id), as a REQ would return.
    Without one, every match, expired events included: the expiration column would take
    the read off the covering index (created_at, id) onto the table's rows, so the caller
    removes the EXPIRED_IDS instead. `cap` bounds the rows read.
    """
    params: list[Any] = []
    if f.limit is not None:
        conditions = _where(f, now, params, skip_tag=None, live_only=True)
        inner = (
            f"SELECT e.created_at, e.id FROM events e WHERE {' AND '.join(conditions)}"
            " ORDER BY e.created_at DESC, e.id LIMIT ?"
        )
        params.append(f.limit if cap is None else min(f.limit, cap))
        return f"SELECT created_at, id FROM ({inner}) ORDER BY created_at, id", params
    conditions = _where(f, now, params, skip_tag=None, live_only=False)
    # Ids descending within a second: events_by_time (created_at DESC, id) read backwards,
    # with no sort in SQLite (0.4 s of the 1 s a million rows take). The caller sorts: a
    # list of descending runs is one pass for Python's sort.
    sql = (
        f"SELECT e.created_at, e.id FROM events e WHERE {' AND '.join(conditions)}"
        " ORDER BY e.created_at, e.id DESC"
    )
    if cap is not None:
        sql += " LIMIT ?"
        params.append(cap)
    return sql, params


def export_events(f: Filter, now: int) -> Query:
    """Raw JSON of the live events matching `f` for `relay export`: in insertion order
    (an import replays deletions and replacements as they happened), or with a `limit`
    the newest ones, as a REQ returns them."""
    if f.limit is not None:
        return select_events(f, now)
    params: list[Any] = []
    conditions = _where(f, now, params, skip_tag=None)
    return f"SELECT e.raw FROM events e WHERE {' AND '.join(conditions)} ORDER BY e.seq", params
