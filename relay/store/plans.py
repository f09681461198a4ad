"""Query-shape decisions shared by the SQL backends (sql.py for SQLite, pg_sql.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace

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


# A limited filter on up to this many values of one tag is read one value at a time. The
# stores differ, measured on 1,000,000 events (`{"kinds":[7],"#e":[N ids],"limit":500}`, a
# page of notes' reactions): SQLite otherwise walks the kind's index, 24 ms whatever N is,
# and 100 walks take 1.3 ms; PostgreSQL's own plan seeks each value (0.8-1.1 ms for 100),
# while 100 walks in one statement cost it 21-34 ms, mostly planning.
SQLITE_VALUES_APART = 100
POSTGRES_VALUES_APART = 20


def tag_read_apart(f: Filter, max_values: int) -> tuple[str, list[str]] | None:
    """The tag and its values to read one value at a time, each newest first up to the
    limit on the tag index, and merge; None to read the filter in one go.

    With several values of a tag and nothing narrower (`{"#t":["nostr","bitcoin"],
    "limit":100}`, a feed's reactions by `#e`), both planners fetch every event holding
    any of the values and sort them: 19-20 ms for two hashtags at a million events on
    SQLite, 25 ms on PostgreSQL (1.7-2.3 and 2.8-3.2 ms read apart). A tag with one
    value already drives the scan alone; of several tags, the one with the fewest values
    is split.
    """
    if (
        f.limit is None
        or f.ids is not None
        or f.authors is not None
        or f.search
        or not f.tags
        or any(len(values) == 1 for _, values in f.tags)
    ):
        return None
    name, values = min(f.tags, key=lambda tag: len(tag[1]))
    if not 1 < len(values) <= max_values:
        return None
    return name, sorted(values)


@dataclass(frozen=True)
class ReadApart:
    """A limited filter as narrower ones, each read newest first up to the limit on one
    index walk, whose rows are merged (the first `limit` of them, newest first)."""

    parts: list[Filter]
    # An event may match several parts (it holds two of the tag values): merge each once.
    overlapping: bool


def read_apart(f: Filter, max_values: int) -> ReadApart | None:
    """How to read `f` apart, or None; `max_values` is the store's cap on tag values."""
    kinds = kinds_read_apart(f)
    if kinds is not None:
        return ReadApart([replace(f, kinds=frozenset({kind})) for kind in kinds], False)
    tag = tag_read_apart(f, max_values)
    if tag is None:
        return None
    name, values = tag
    parts = [
        replace(f, tags=tuple((n, frozenset({value}) if n == name else v) for n, v in f.tags))
        for value in values
    ]
    return ReadApart(parts, True)
