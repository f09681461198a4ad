"""Query-shape decisions shared by the SQL backends (sql.py for SQLite, pg_sql.py)."""

from __future__ import annotations

from relay.core.filters import Filter

# A limited filter on up to this many kinds is read one kind at a time.
MAX_KINDS_APART = 20


def kinds_read_apart(f: Filter) -> list[int] | None:
    """The kinds to read one at a time, each newest first up to the limit, and merge; None
    to read the filter in one go.

    For a limited filter on several kinds and nothing narrower, both planners fetch every
    event of those kinds and sort them (SQLite: `{"kinds":[1,7],"limit":100}` took 391 ms
    at a million events), or walk the time index and filter, through most of the table
    when the kinds are rare lately (PostgreSQL: kinds 0 and 3, 250 ms). One walk of the
    kind index per kind stops at the limit: under a millisecond either way.
    """
    if (
        f.limit is None
        or f.kinds is None
        or not 1 < len(f.kinds) <= MAX_KINDS_APART
        or f.ids is not None
        or f.authors is not None
        or f.tags
        or f.search
    ):
        return None
    return sorted(f.kinds)
