"""The SQLite store's reads, as plain functions of a sqlite3 connection (no asyncio).

A query is read page by page (store/sqlite.py runs each page as one slice on a reader):
each filter's rows come newest first, ties by id, and a lazy k-way merge takes a page
from their heads, so a page holds at most `page_events` rows and about `page_bytes` bytes
whatever the limits ask for. Each filter counts its own rows against its own limit; an
event several filters find is sent once.

The first page reads the raw JSON with the rows, through the fast paths of sql.py (one
statement for the common REQ whose answer fits in a page). Later pages go on from the last
row sent (keyset continuation on created_at DESC, id ASC) and read each filter's next
keys ahead (without the raw JSON, so they stay small), fetching the raw JSON of the rows a
page takes by seq: a filter whose order needs a sort is then sorted once per `page_events`
rows, not once per page.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Iterator, Sequence
from heapq import heapify, heappop, heappush
from typing import Any

from relay.core.canonical import loads
from relay.core.filters import Filter
from relay.store import sql

# (created_at, id, raw or seq, size of raw): see sql.ROW_WITH_RAW and sql.ROW_WITH_SEQ.
Row = tuple[int, bytes, Any, int]
# Rows of the first read of a page's rows: 8 of the largest events (128 KiB) is 1 MiB.
FIRST_CHUNK = 8


class FilterRows:
    """One filter's side of a paged query: its limit left, and where its rows stand.

    On the first page `cursor` holds the rows of one statement (raw JSON included);
    afterwards `ahead` holds keys read ahead, read again from `read_to` when they run out.
    """

    __slots__ = (
        "_asked",
        "_cursor",
        "_exhausted",
        "_head",
        "_produced",
        "ahead",
        "complete",
        "filter",
        "read_to",
        "remaining",
    )

    def __init__(self, f: Filter) -> None:
        self.filter = f
        self.remaining: int | None = f.limit  # None: no limit
        self.ahead: deque[Row] = deque()
        self.read_to: sql.Key | None = None
        self.complete = False  # nothing matches past `ahead`
        self._cursor: Iterator[Row] | None = None
        self._head: Row | None = None
        self._asked = self._produced = 0
        self._exhausted = False

    @property
    def done(self) -> bool:
        return self.remaining == 0 or (self.complete and not self.ahead)

    def batch(self, page_events: int) -> int:
        """Rows to ask SQLite for at once: no more than a page or the limit can take."""
        return page_events if self.remaining is None else min(self.remaining, page_events)

    def open(self, db: sqlite3.Connection, now: int, page_events: int) -> None:
        """The first page's statement: the rows with their raw JSON, from the start."""
        self._asked = self.batch(page_events)
        rows = _newest_first(db, self.filter.with_limit(self._asked), now)
        if rows is None:
            query = sql.select_page(self.filter, now, None, self._asked, sql.ROW_WITH_RAW)
            self._cursor = db.execute(*query)
        else:
            self._cursor = iter(rows)

    def head(self, db: sqlite3.Connection, now: int, page_events: int) -> Row | None:
        """The next row of this filter, reading more when needed; None when it has no more."""
        if self._cursor is not None:
            if self._head is None and not self._exhausted:
                self._head = next(self._cursor, None)
                if self._head is None:
                    self._exhausted = True
                else:
                    self._produced += 1
            return self._head
        if not self.ahead and not self.complete and self.remaining != 0:
            self._read_ahead(db, now, page_events)
        return self.ahead[0] if self.ahead else None

    def take(self) -> None:
        """The head row went into the page (or was the same event as the row that did)."""
        if self._cursor is not None:
            self._head = None
        else:
            self.ahead.popleft()
        if self.remaining is not None:
            self.remaining -= 1

    def end_page(self, after: sql.Key | None) -> None:
        """Close the first page's statement; later pages go on from the last row sent."""
        cursor = self._cursor
        if cursor is None:
            return
        if isinstance(cursor, sqlite3.Cursor):
            cursor.close()  # ends the statement, and the read snapshot with it
        self._cursor = None
        # Every row up to `after` was taken; rows read past it are read again as keys.
        self.complete = self._exhausted and self._produced < self._asked
        self.read_to = after
        self._head = None

    def close(self) -> None:
        if isinstance(self._cursor, sqlite3.Cursor):
            self._cursor.close()

    def first_page_alone(
        self, db: sqlite3.Connection, now: int, page_events: int, page_bytes: int
    ) -> list[bytes]:
        """The first page when this is the query's only filter: no merge, no keys but the
        last row's, one statement (or sql.NewestFirst's two) as before pages existed."""
        asked = self.batch(page_events)
        f = self.filter.with_limit(asked)
        rows = _newest_first(db, f, now)
        if rows is not None:
            page = _cut_rows(rows, page_bytes)
        else:
            cursor = db.execute(*sql.select_page(f, now, None, asked, sql.RAW_ONLY))
            try:
                page = _cut(cursor, page_bytes)
            finally:
                cursor.close()
        if self.remaining is not None:
            self.remaining -= len(page)
        # Fewer rows than asked for (asked <= page_events), and not for want of room:
        # the filter has no more.
        self.complete = len(page) < asked and sum(map(len, page)) < page_bytes
        if page and not self.done:
            self.read_to = _key_of(page[-1])
        return page

    def _read_ahead(self, db: sqlite3.Connection, now: int, page_events: int) -> None:
        asked = self.batch(page_events)
        query = sql.select_page(self.filter, now, self.read_to, asked, sql.ROW_WITH_SEQ)
        rows = db.execute(*query).fetchall()
        self.complete = len(rows) < asked
        if rows:
            self.ahead.extend(rows)
            last = rows[-1]
            self.read_to = (last[0], last[1])


class PagedQuery:
    """A query read page by page; `next_page` runs on a reader's thread, one slice each."""

    def __init__(
        self, filters: Sequence[Filter], now: int, page_events: int, page_bytes: int
    ) -> None:
        self.sources = [FilterRows(f) for f in filters if f.can_match and f.limit != 0]
        self.now = now
        self.page_events = page_events
        self.page_bytes = page_bytes
        self.pages = 0

    @property
    def finished(self) -> bool:
        return not self.sources

    def next_page(self, db: sqlite3.Connection) -> list[bytes]:
        sources = self.sources
        if self.pages == 0 and len(sources) == 1:
            page = sources[0].first_page_alone(db, self.now, self.page_events, self.page_bytes)
            self.pages += 1
            self.sources = [source for source in sources if not source.done]
            return page
        try:
            if self.pages == 0:
                for source in sources:
                    source.open(db, self.now, self.page_events)
            rows = self._take_page(db)
            after = (rows[-1][0], rows[-1][1]) if rows else None
            for source in sources:
                source.end_page(after)
        finally:
            for source in sources:
                source.close()
        self.pages += 1
        self.sources = [source for source in sources if not source.done]
        return _raw_of(db, rows)

    def _take_page(self, db: sqlite3.Connection) -> list[Row]:
        """The page's rows, merged from every filter's head, each event once."""
        now, page_events, page_bytes = self.now, self.page_events, self.page_bytes
        sources = self.sources
        heads = [(index, source.head(db, now, page_events)) for index, source in enumerate(sources)]
        heap = [(-row[0], row[1], index) for index, row in heads if row is not None]
        heapify(heap)
        rows: list[Row] = []
        size = 0
        while heap and len(rows) < page_events and size < page_bytes:
            negative_time, event_id, index = heap[0]
            row = sources[index].head(db, now, page_events)
            assert row is not None
            rows.append(row)
            size += row[3]
            # Every filter whose head is this same event moves past it (counting it).
            while heap and heap[0][0] == negative_time and heap[0][1] == event_id:
                index = heappop(heap)[2]
                source = sources[index]
                source.take()
                following = source.head(db, now, page_events)
                if following is not None:
                    heappush(heap, (-following[0], following[1], index))
        return rows


def _cut(cursor: sqlite3.Cursor, page_bytes: int) -> list[bytes]:
    """The raw JSON of the cursor's rows up to the row that crosses page_bytes (the
    statement's limit already keeps them within page_events).

    Rows come in chunks (a list built in C) rather than one by one, which costs about a
    tenth of a small query; a chunk is sized from the rows so far so that what is read
    past the page stays near FIRST_CHUNK rows of the largest events.
    """
    page: list[bytes] = []
    size = 0
    chunk = FIRST_CHUNK
    while True:
        raws = [raw for (raw,) in cursor.fetchmany(chunk)]
        grown = size + sum(map(len, raws))
        if grown >= page_bytes:
            for raw in raws:
                page.append(raw)
                size += len(raw)
                if size >= page_bytes:
                    return page
        page += raws
        if len(raws) < chunk:
            return page
        size = grown
        average = size // len(page) + 1
        chunk = max(1, min(chunk * 2, (page_bytes - size) // average))


def _cut_rows(rows: list[Row], page_bytes: int) -> list[bytes]:
    """The raw JSON of rows already read (with their sizes), up to the one crossing page_bytes."""
    page: list[bytes] = []
    size = 0
    for row in rows:
        page.append(row[2])
        size += row[3]
        if size >= page_bytes:
            break
    return page


def _key_of(raw: bytes) -> sql.Key:
    """The position of an event read without its key columns (once a page, at most)."""
    obj = loads(raw)
    return obj["created_at"], bytes.fromhex(obj["id"])


def _raw_of(db: sqlite3.Connection, rows: list[Row]) -> list[bytes]:
    """The page's raw JSON in order; keys read ahead are fetched by seq in one statement."""
    seqs = [row[2] for row in rows if type(row[2]) is int]
    if not seqs:
        return [row[2] for row in rows]
    found = {seq: (event_id, raw) for seq, event_id, raw in db.execute(*sql.select_by_seq(seqs))}
    raws = []
    for row in rows:
        payload = row[2]
        if type(payload) is bytes:
            raws.append(payload)
            continue
        stored = found.get(payload)
        # Gone since its key was read (deleted, replaced, purged): not sent.
        if stored is not None and stored[0] == row[1]:
            raws.append(stored[1])
    return raws


def _newest_first(db: sqlite3.Connection, f: Filter, now: int) -> list[Row] | None:
    """The first `f.limit` rows through sql.NewestFirst, newest first; None when it does
    not apply or cannot tell (then the plain statement runs)."""
    newest = sql.newest_first(f, now)
    if newest is None:
        return None
    row = db.execute(*newest.cutoff).fetchone()
    if row is None:
        return None
    rows: list[Row] = db.execute(*newest.bounded(row[0])).fetchall()
    if len(rows) < newest.limit:
        return None
    # Newest first, ties by id: two stable sorts, the tie-break first.
    rows.sort(key=lambda r: r[1])
    rows.sort(key=lambda r: r[0], reverse=True)
    del rows[newest.limit :]
    return rows


def read_all(db: sqlite3.Connection, filters: Sequence[Filter], now: int) -> list[bytes]:
    """A whole query in one statement per filter: for NIP-50 search, ranked by relevance.

    One search filter keeps its ranking; with several filters the results are merged
    newest first, ties by id, as without search.
    """
    found = [_read_filter(db, f, now) for f in filters]
    if len(found) == 1:
        return found[0]
    merged: dict[bytes, tuple[int, bytes, bytes]] = {}
    for raws in found:
        for raw in raws:
            if raw not in merged:
                merged[raw] = _sort_fields(raw)
    return [raw for _, _, raw in sorted(merged.values())]


def _read_filter(db: sqlite3.Connection, f: Filter, now: int) -> list[bytes]:
    if not f.search and f.limit is not None:
        rows = _newest_first(db, f, now)
        if rows is not None:
            return [row[2] for row in rows]
    statement, params = sql.select_events(f, now)
    return [raw for (raw,) in db.execute(statement, params)]


def _sort_fields(raw: bytes) -> tuple[int, bytes, bytes]:
    obj = loads(raw)
    return (-obj["created_at"], obj["id"].encode(), raw)


def count(db: sqlite3.Connection, filters: Sequence[Filter], now: int) -> int:
    statement, params = sql.count_events(filters, now)
    return int(db.execute(statement, params).fetchone()[0])
