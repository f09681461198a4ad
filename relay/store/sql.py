"""Filter -> SQL for the SQLite store: pure functions, unit-tested without a database."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relay.core.filters import Filter
from relay.core.search import fts_match

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
    f: Filter, now: int, params: list[Any], skip_tag: str | None, skip_search: bool = False
) -> list[str]:
    conditions = ["(e.expiration IS NULL OR e.expiration > ?)"]
    params.append(now)
    if f.ids is not None:
        conditions.append(_in("e.id", _hex_blobs(f.ids), params))
    if f.authors is not None:
        conditions.append(_in("e.pubkey", _hex_blobs(f.authors), params))
    if f.kinds is not None:
        conditions.append(_in("e.kind", f.kinds, params))
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
    return conditions


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


def select_events(f: Filter, now: int) -> Query:
    """Raw JSON of the events matching `f`, newest first, ties by id, up to f.limit."""
    params: list[Any] = []
    driving = _driving_tag(f)
    if f.search:
        # NIP-50: most relevant first (bm25), then newest.
        source = "events_fts JOIN events e ON e.seq = events_fts.rowid"
        order = "events_fts.rank, e.created_at DESC, e.id"
        params.append(fts_match(f.search))
        conditions = ["events_fts MATCH ?", *_where(f, now, params, None, skip_search=True)]
    elif driving is None:
        source, order = "events e", "e.created_at DESC, e.id"
        conditions = _where(f, now, params, skip_tag=None)
    else:
        name, value = driving
        source, order = "tags t JOIN events e ON e.seq = t.seq", "t.created_at DESC, e.id"
        params.extend([name, value])
        conditions = ["t.name = ?", "t.value = ?", *_where(f, now, params, skip_tag=name)]
    sql = f"SELECT e.raw FROM {source} WHERE {' AND '.join(conditions)} ORDER BY {order}"
    if f.limit is not None:
        sql += " LIMIT ?"
        params.append(f.limit)
    return sql, params


def count_events(filters: Iterable[Filter], now: int) -> Query:
    """Distinct events matching any of the filters, limits ignored."""
    params: list[Any] = []
    parts = []
    for f in filters:
        conditions = _where(f, now, params, skip_tag=None)
        parts.append(f"SELECT e.seq FROM events e WHERE {' AND '.join(conditions)}")
    return f"SELECT count(*) FROM ({' UNION '.join(parts)})", params
