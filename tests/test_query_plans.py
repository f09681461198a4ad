"""The SQLite planner uses the index meant for each common filter shape (EXPLAIN QUERY PLAN).

Without statistics SQLite guesses, and a wrong guess costs seconds on a large store (bench/
measured 1 s for 10 authors' latest kind-1 notes among 1,000,000 events).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from relay.core.filters import parse_filter
from relay.store import sql
from relay.store.plans import (
    MAX_KINDS_APART,
    POSTGRES_VALUES_APART,
    SQLITE_VALUES_APART,
    kinds_read_apart,
    tag_read_apart,
)
from relay.store.sqlite import load_schema

AUTHOR = "a" * 64
EVENT = "b" * 64


def explain(query: sql.Query) -> str:
    db = sqlite3.connect(":memory:")
    db.executescript(load_schema())
    statement, params = query
    return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement, params))


def plan(filter_json: dict[str, Any]) -> str:
    return explain(sql.select_events(parse_filter(filter_json), int(time.time())))


@pytest.mark.parametrize(
    ("filter_json", "index"),
    [
        # events_by_author or events_by_author_kind: either finds only these authors' rows.
        ({"authors": [AUTHOR, "c" * 64], "kinds": [1], "limit": 500}, "events_by_author"),
        ({"authors": [AUTHOR], "kinds": [1, 6], "limit": 100}, "events_by_author"),
        ({"authors": [AUTHOR], "limit": 100}, "events_by_author"),
        ({"ids": [EVENT], "kinds": [1]}, "sqlite_autoindex_events_1"),
        ({"kinds": [1], "since": 1, "until": 2}, "events_by_kind"),
        ({"#e": [EVENT], "limit": 100}, "tags_by_value"),
    ],
)
def test_each_shape_searches_its_index(filter_json: dict[str, Any], index: str) -> None:
    assert f"USING INDEX {index}" in plan(filter_json)
    # The pages after the first go on from a position by the same index.
    f = parse_filter(filter_json)
    for columns in (sql.ROW_WITH_SEQ, sql.ROW_WITH_RAW, sql.RAW_ONLY):
        page = sql.select_page(f, int(time.time()), (1_700_000_000, b"\x01" * 32), 500, columns)
        assert f"USING INDEX {index}" in explain(page)


def test_authors_with_kinds_do_not_walk_the_kind_index() -> None:
    authors = [f"{n:064x}" for n in range(10)]
    assert "events_by_kind" not in plan({"authors": authors, "kinds": [1], "limit": 500})


@pytest.mark.parametrize("columns", [sql.ROW_WITH_SEQ, sql.ROW_WITH_RAW, sql.RAW_ONLY])
@pytest.mark.parametrize("after", [None, (1_700_000_000, b"\x01" * 32)])
def test_several_kinds_with_a_limit_walk_the_kind_index_once_per_kind(
    columns: str, after: sql.Key | None
) -> None:
    """Not every event of those kinds sorted: each kind newest first up to the limit (the
    sort left is the id tie-break within a second), then the few rows merged."""
    f = parse_filter({"kinds": [1, 6, 7], "limit": 100})
    found = explain(sql.select_page(f, int(time.time()), after, 100, columns))
    assert found.count("USING INDEX events_by_kind") == 3
    assert found.count("USE TEMP B-TREE FOR RIGHT PART OF ORDER BY") == 3


def test_which_filters_are_read_one_kind_at_a_time() -> None:
    def apart(filter_json: dict[str, Any]) -> list[int] | None:
        return kinds_read_apart(parse_filter(filter_json))

    assert apart({"kinds": [7, 1], "limit": 100}) == [1, 7]
    assert apart({"kinds": [7, 1], "limit": 100, "since": 5, "until": 9}) == [1, 7]
    assert apart({"kinds": [1], "limit": 100}) is None  # one walk already
    assert apart({"kinds": [1, 7]}) is None  # no limit: everything is read anyway
    assert apart({"kinds": [1, 7], "authors": [AUTHOR], "limit": 9}) is None
    assert apart({"kinds": [1, 7], "#e": [EVENT], "limit": 9}) is None
    assert apart({"kinds": list(range(MAX_KINDS_APART + 1)), "limit": 9}) is None


@pytest.mark.parametrize("columns", [sql.ROW_WITH_SEQ, sql.ROW_WITH_RAW, sql.RAW_ONLY])
@pytest.mark.parametrize("after", [None, (1_700_000_000, b"\x01" * 32)])
def test_several_tag_values_with_a_limit_walk_the_tag_index_once_per_value(
    columns: str, after: sql.Key | None
) -> None:
    """Not every event holding any of the values sorted: each value newest first on
    tags_by_value up to the limit, then the rows merged, each event once (UNION)."""
    f = parse_filter({"#t": ["nostr", "bitcoin", "zap"], "kinds": [1], "limit": 100})
    query = sql.select_page(f, int(time.time()), after, 100, columns)
    assert explain(query).count("USING INDEX tags_by_value") == 3
    assert " UNION SELECT" in query[0]
    assert "UNION ALL" not in query[0]


def test_which_filters_are_read_one_tag_value_at_a_time() -> None:
    def apart(filter_json: dict[str, Any]) -> tuple[str, list[str]] | None:
        return tag_read_apart(parse_filter(filter_json), SQLITE_VALUES_APART)

    assert apart({"#t": ["b", "a"], "limit": 100}) == ("t", ["a", "b"])
    assert apart({"#t": ["b", "a"], "kinds": [1, 7], "limit": 100}) == ("t", ["a", "b"])
    # Of two tags, the one with fewer values.
    assert apart({"#e": [EVENT, "c" * 64, "d" * 64], "#t": ["a", "b"], "limit": 9}) == (
        "t",
        ["a", "b"],
    )
    assert apart({"#t": ["a"], "limit": 100}) is None  # one walk already
    assert apart({"#t": ["a"], "#e": [EVENT, "c" * 64], "limit": 9}) is None  # "a" drives
    assert apart({"#t": ["a", "b"]}) is None  # no limit: everything is read anyway
    assert apart({"#t": ["a", "b"], "authors": [AUTHOR], "limit": 9}) is None
    assert apart({"#t": ["a", "b"], "ids": [EVENT], "limit": 9}) is None
    assert apart({"#t": [str(n) for n in range(SQLITE_VALUES_APART + 1)], "limit": 9}) is None
    # PostgreSQL plans many values well by itself, and many walks slowly: a lower cap.
    many = parse_filter({"#t": [str(n) for n in range(POSTGRES_VALUES_APART + 1)], "limit": 9})
    assert tag_read_apart(many, SQLITE_VALUES_APART) is not None
    assert tag_read_apart(many, POSTGRES_VALUES_APART) is None


def test_a_page_of_notes_reactions_does_not_walk_the_kind_index() -> None:
    """`{"kinds":[7],"#e":[50 ids],"limit":500}`: one walk of the tag index per id, not
    every kind-7 event newest first checked against the ids (24 ms at a million events)."""
    ids = [f"{n:064x}" for n in range(50)]
    f = parse_filter({"kinds": [7], "#e": ids, "limit": 500})
    found = explain(sql.select_page(f, int(time.time()), None, 500, sql.RAW_ONLY))
    assert found.count("USING INDEX tags_by_value") == 50
    assert "events_by_kind" not in found
