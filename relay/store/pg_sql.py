"""Filter -> SQL for the PostgreSQL store: pure functions, unit-tested without a database.

Values go in as numbered parameters ($1, $2, ...), lists as one array parameter each
(`= ANY($n)`), so a filter shape is one statement text whatever its values, and
asyncpg's per-connection cache of prepared statements serves it. A list of one value is
written `= $n` instead: the planner then walks an index newest first and stops at the
limit, which it does not do for `= ANY` (PostgreSQL 15).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from relay.core.filters import Filter
from relay.store.pg_batch import search_query
from relay.store.plans import POSTGRES_VALUES_APART, ReadApart, read_apart

Query = tuple[str, list[Any]]


class Params:
    """The statement's parameter values; calling it adds one and returns its $n."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _equals(column: str, values: Iterable[Any], params: Params) -> str:
    ordered = sorted(values)
    if len(ordered) == 1:
        return f"{column} = {params(ordered[0])}"
    return f"{column} = ANY({params(ordered)})"


def _hex_bytes(values: Iterable[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def _where(
    f: Filter, now: int, params: Params, skip_tag: str | None = None, search: bool = True
) -> list[str]:
    conditions = [f"(e.expiration IS NULL OR e.expiration > {params(now)})"]
    if f.ids is not None:
        conditions.append(_equals("e.id", _hex_bytes(f.ids), params))
    if f.authors is not None:
        conditions.append(_equals("e.pubkey", _hex_bytes(f.authors), params))
    if f.kinds is not None:
        conditions.append(_equals("e.kind", f.kinds, params))
    if f.since is not None:
        conditions.append(f"e.created_at >= {params(f.since)}")
    if f.until is not None:
        conditions.append(f"e.created_at <= {params(f.until)}")
    for name, values in f.tags:
        if name == skip_tag:
            continue
        inner = _equals("t.value", (v.encode() for v in values), params)
        conditions.append(
            f"e.seq IN (SELECT t.seq FROM tags t WHERE t.name = {params(name)} AND {inner})"
        )
    if f.search and search:
        conditions.append(f"e.search @@ {_tsquery(f, params)}")
    return conditions


def _tsquery(f: Filter, params: Params) -> str:
    assert f.search
    return params(search_query(f.search), "::tsquery")


def _driving_tag(f: Filter) -> tuple[str, str] | None:
    """A single-valued tag condition to scan the tag index by, newest first.

    Only when no id or author narrows the search better, and not for a search, which is
    ordered by relevance; tags are stored once per (event, name, value), so the join
    yields no duplicate rows.
    """
    if f.ids is not None or f.authors is not None or f.search:
        return None
    for name, values in f.tags:
        if len(values) == 1:
            return name, next(iter(values))
    return None


def _select(f: Filter, now: int, params: Params, column: str) -> str:
    """`column` of the events matching `f`, in the filter's order, up to its limit."""
    apart = read_apart(f, POSTGRES_VALUES_APART)
    if apart is not None:
        return _select_apart(f, apart, now, params, column)
    driving = _driving_tag(f)
    if f.search:
        # NIP-50: most relevant first, then newest.
        query = _tsquery(f, params)
        source = "events e"
        conditions = [f"e.search @@ {query}", *_where(f, now, params, search=False)]
        order = f"ts_rank(e.search, {query}) DESC, e.created_at DESC, e.id"
    elif driving is None:
        source = "events e"
        conditions = _where(f, now, params)
        order = "e.created_at DESC, e.id"
    else:
        name, value = driving
        source = "tags t JOIN events e ON e.seq = t.seq"
        conditions = [
            f"t.name = {params(name)}",
            f"t.value = {params(value.encode())}",
            *_where(f, now, params, skip_tag=name),
        ]
        order = "t.created_at DESC, e.id"
    sql = f"SELECT {column} FROM {source} WHERE {' AND '.join(conditions)} ORDER BY {order}"
    if f.limit is not None:
        sql += f" LIMIT {params(f.limit)}"
    return sql


def _select_apart(f: Filter, apart: ReadApart, now: int, params: Params, column: str) -> str:
    """_select of `f`, one part (a kind, or a tag value) at a time, each newest first up
    to the limit, merged (plans.read_apart)."""
    keys = "e.seq, e.created_at, e.id"
    # UNION drops the second copy of an event two parts found.
    union = " UNION " if apart.overlapping else " UNION ALL "
    parts = union.join(f"({_select(part, now, params, keys)})" for part in apart.parts)
    return (
        f"SELECT {column} FROM events e JOIN ({parts}) AS k ON k.seq = e.seq"
        f" ORDER BY k.created_at DESC, k.id LIMIT {params(f.limit)}"
    )


def select_events(filters: Sequence[Filter], now: int) -> Query:
    """Raw JSON of the events matching any filter: newest first, ties by id (one filter
    with `search`: most relevant first), each filter up to its own limit.

    The filters are those that can match (Filter.can_match), at least one.
    """
    if not filters:
        raise ValueError("no filter to select by")
    params = Params()
    if len(filters) == 1:
        return _select(filters[0], now, params, "e.raw"), params.values
    # Several filters: each one's events by seq, then each event once, newest first.
    parts = " UNION ALL ".join(f"({_select(f, now, params, 'e.seq')})" for f in filters)
    sql = f"SELECT e.raw FROM events e WHERE e.seq IN ({parts}) ORDER BY e.created_at DESC, e.id"
    return sql, params.values


def negentropy_items(filters: Sequence[Filter], now: int, cap: int | None) -> Query:
    """NIP-77: (created_at, id) of the live events matching any filter, ascending, each
    once; a filter's `limit` keeps its newest events as a REQ would. One statement, so one
    snapshot. With a `cap`, at most cap + 1 rows: one more than the cap says "too many".

    The filters are those that can match (Filter.can_match), at least one.
    """
    if not filters:
        raise ValueError("no filter to select by")
    params = Params()
    parts = " UNION ".join(f"({_select(f, now, params, 'e.created_at, e.id')})" for f in filters)
    sql = f"SELECT created_at, id FROM ({parts}) AS matched ORDER BY created_at, id"
    if cap is not None:
        sql += f" LIMIT {params(cap + 1)}"
    return sql, params.values


def count_events(filters: Sequence[Filter], now: int) -> Query:
    """Distinct events matching any of the filters, limits ignored (at least one filter,
    each of which can match)."""
    if not filters:
        raise ValueError("no filter to count by")
    params = Params()
    parts = []
    for f in filters:
        conditions = _where(f, now, params)
        parts.append(f"SELECT e.seq FROM events e WHERE {' AND '.join(conditions)}")
    return f"SELECT count(*) FROM ({' UNION '.join(parts)}) AS matched", params.values


def export_events(f: Filter, now: int) -> Query:
    """Raw JSON of the live events matching `f` for `relay export`: in insertion order
    (an import replays deletions and replacements as they happened), or with a `limit`
    the newest ones, as a REQ returns them."""
    if f.limit is not None:
        return select_events([f], now)
    params = Params()
    conditions = _where(f, now, params)
    where = " AND ".join(conditions)
    return f"SELECT e.raw FROM events e WHERE {where} ORDER BY e.seq", params.values
