"""The PostgreSQL store's pure parts, without a database: Filter -> SQL (store/pg_sql.py)
and events -> relay_save_batch's arguments, lock keys and search words (store/pg_batch.py).
"""

from __future__ import annotations

import pytest

from relay.core.event import parse_event
from relay.core.filters import parse_filter
from relay.store import pg_batch, pg_sql
from relay.store.plans import POSTGRES_VALUES_APART
from tests.nostr import Keys

NOW = 1_700_000_000
A, B = "a" * 64, "b" * 64


def test_a_plain_filter_reads_newest_first_ties_by_id_up_to_its_limit() -> None:
    sql, params = pg_sql.select_events([parse_filter({"kinds": [1], "limit": 5})], NOW)
    assert sql == (
        "SELECT e.raw FROM events e WHERE (e.expiration IS NULL OR e.expiration > $1)"
        " AND e.kind = $2 ORDER BY e.created_at DESC, e.id LIMIT $3"
    )
    assert params == [NOW, 1, 5]


def test_several_kinds_with_a_limit_are_read_one_kind_at_a_time() -> None:
    sql, params = pg_sql.select_events([parse_filter({"kinds": [7, 1], "limit": 5})], NOW)
    # Each kind on events_by_kind newest first up to the limit, then the rows merged.
    assert sql.count("e.kind = $") == 2
    assert "ANY(" not in sql
    assert sql.count("ORDER BY e.created_at DESC, e.id LIMIT $") == 2
    assert sql.endswith("ORDER BY k.created_at DESC, k.id LIMIT $7")
    assert params == [NOW, 1, 5, NOW, 7, 5, 5]


def test_several_tag_values_with_a_limit_are_read_one_value_at_a_time() -> None:
    f = parse_filter({"#t": ["y", "x"], "kinds": [1], "limit": 5})
    sql, params = pg_sql.select_events([f], NOW)
    # Each value on the tag index newest first up to the limit; an event holding both
    # values is found twice and merged once (UNION, not UNION ALL).
    assert sql.count("t.value = $") == 2
    assert sql.count("ORDER BY t.created_at DESC, e.id LIMIT $") == 2
    assert ") UNION (" in sql
    assert "UNION ALL" not in sql
    assert sql.endswith("ORDER BY k.created_at DESC, k.id LIMIT $11")
    assert params == ["t", b"x", NOW, 1, 5, "t", b"y", NOW, 1, 5, 5]


def test_many_tag_values_are_one_array_on_postgresql() -> None:
    """Past POSTGRES_VALUES_APART values its own plan (a seek per value) is the faster."""
    values = [f"v{n}" for n in range(POSTGRES_VALUES_APART + 1)]
    sql, _ = pg_sql.select_events([parse_filter({"#t": values, "limit": 5})], NOW)
    assert "UNION" not in sql
    assert "t.value = ANY($" in sql


def test_one_value_is_an_equality_several_are_one_array() -> None:
    one, _ = pg_sql.select_events([parse_filter({"authors": [A]})], NOW)
    several, params = pg_sql.select_events([parse_filter({"authors": [B, A]})], NOW)
    assert "e.pubkey = $2" in one
    assert "e.pubkey = ANY($2)" in several
    assert params[1] == [bytes.fromhex(A), bytes.fromhex(B)]  # sorted, as bytes


def test_the_statement_text_depends_on_the_shape_not_the_values() -> None:
    first, one = pg_sql.select_events([parse_filter({"authors": [A, B], "#t": ["x", "y"]})], NOW)
    second, two = pg_sql.select_events(
        [parse_filter({"authors": [A, "c" * 64], "#t": ["z", "w"]})], NOW
    )
    assert first == second  # one prepared statement serves both
    assert one != two


def test_a_single_valued_tag_drives_the_scan_by_the_tag_index() -> None:
    sql, params = pg_sql.select_events([parse_filter({"#e": [A], "kinds": [1], "limit": 3})], NOW)
    assert sql.startswith("SELECT e.raw FROM tags t JOIN events e ON e.seq = t.seq")
    assert sql.endswith("ORDER BY t.created_at DESC, e.id LIMIT $5")
    assert params[:2] == ["e", A.encode()]
    assert "SELECT t.seq FROM tags" not in sql  # the driving tag is not checked twice


def test_other_tags_and_several_values_are_semi_joins() -> None:
    f = parse_filter({"authors": [A], "#p": [A, B], "#t": ["x\x00y"]})
    sql, params = pg_sql.select_events([f], NOW)
    assert sql.count("e.seq IN (SELECT t.seq FROM tags t WHERE t.name = ") == 2
    # Tag values are bytes: PostgreSQL text cannot hold U+0000.
    assert b"x\x00y" in params


def test_several_filters_are_each_limited_then_merged_once() -> None:
    filters = [parse_filter({"kinds": [1], "limit": 2}), parse_filter({"authors": [A]})]
    sql, params = pg_sql.select_events(filters, NOW)
    assert sql.startswith("SELECT e.raw FROM events e WHERE e.seq IN ((SELECT e.seq FROM")
    assert " UNION ALL " in sql
    assert sql.endswith("ORDER BY e.created_at DESC, e.id")
    assert params == [NOW, 1, 2, NOW, bytes.fromhex(A)]


def test_search_is_ranked_by_relevance_then_time() -> None:
    sql, params = pg_sql.select_events([parse_filter({"search": "Nostr relays"})], NOW)
    assert "e.search @@ $1::tsquery" in sql
    assert "ORDER BY ts_rank(e.search, $1::tsquery) DESC, e.created_at DESC, e.id" in sql
    assert params[0] == "'nostr' & 'relays'"


def test_count_ignores_limits_and_counts_each_event_once() -> None:
    filters = [parse_filter({"kinds": [1], "limit": 1}), parse_filter({"since": 5})]
    sql, params = pg_sql.count_events(filters, NOW)
    assert sql == (
        "SELECT count(*) FROM (SELECT e.seq FROM events e WHERE"
        " (e.expiration IS NULL OR e.expiration > $1) AND e.kind = $2 UNION"
        " SELECT e.seq FROM events e WHERE (e.expiration IS NULL OR e.expiration > $3)"
        " AND e.created_at >= $4) AS matched"
    )
    assert params == [NOW, 1, NOW, 5]


def test_no_filter_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="no filter"):
        pg_sql.select_events([], NOW)
    with pytest.raises(ValueError, match="no filter"):
        pg_sql.count_events([], NOW)


def test_search_words_are_the_cores_words_with_positions() -> None:
    assert pg_batch.search_vector("Hello, hello WORLD two-one") == (
        "'hello':1,2 'world':3 'two':4 'one':5"
    )
    assert pg_batch.search_vector("") == ""
    # Longer than any query can ask for: left out, so the tsvector limits never bite.
    assert pg_batch.search_vector("x" * 300 + " ok") == "'ok':2"


def test_lexemes_are_quoted_whatever_they_hold() -> None:
    assert pg_batch.search_query(["it's", "a\\b"]) == "'it''s' & 'a\\\\b'"


def test_positions_stay_within_tsvector_limits() -> None:
    vector = pg_batch.search_vector(" ".join(["w"] * 20_000))
    positions = vector.removeprefix("'w':").split(",")
    assert len(positions) == pg_batch.MAX_POSITIONS
    assert max(map(int, positions)) <= pg_batch.MAX_POSITION


def test_a_batch_flattens_per_event_lists_with_their_ends() -> None:
    keys, other = Keys(), Keys()
    note = parse_event(keys.sign(kind=1, tags=[["t", "x"], ["t", "x"], ["p", A]]))
    deletion = parse_event(
        keys.sign(
            kind=5,
            tags=[
                ["e", note.id],
                ["e", "NOTHEX"],
                ["a", f"30000:{keys.pubkey}:d"],
                ["a", f"30000:{other.pubkey}:d"],
            ],
        )
    )
    wrap = parse_event(other.sign(kind=1059, tags=[["p", B], ["p", "junk"], ["p", A]]))
    args = pg_batch.batch_args([note, deletion, wrap], with_search=False)
    assert args.tag_ends == [2, 6, 9]  # the note's repeated tag once
    assert args.ref_ends == [0, 1, 3]
    assert args.refs == [bytes.fromhex(note.id), bytes.fromhex(A), bytes.fromhex(B)]
    assert args.addr_ends == [0, 1, 1]  # only the author's own address
    assert (args.addr_kinds, args.addr_ds) == ([30000], [b"d"])
    assert args.searches == [None, None, None]
    assert len(args.as_tuple()) == 17


def test_lock_keys_cover_authors_and_gift_wrap_recipients_sorted() -> None:
    author = Keys()
    wrap = parse_event(author.sign(kind=1059, tags=[["p", B], ["p", A]]))
    note = parse_event(author.sign(kind=1, tags=[["p", A]]))  # a mention locks nothing
    keys = pg_batch.batch_args([wrap, note], with_search=True).lock_keys
    expected = {pg_batch.lock_key(p) for p in (author.pubkey, A, B)}
    assert keys == sorted(expected)
    assert pg_batch.lock_key("80" + "0" * 62) == -(2**63)


def test_outcome_codes_map_to_save_outcomes() -> None:
    names = [o.name for o in pg_batch.outcomes_of([0, 1, 2, 3, 4])]
    assert names == ["STORED", "DUPLICATE", "STALE", "DELETED", "VANISHED"]


def test_negentropy_items_are_each_filters_matches_once_ascending() -> None:
    filters = [parse_filter({"kinds": [1], "limit": 2}), parse_filter({"authors": [A]})]
    sql, params = pg_sql.negentropy_items(filters, NOW, cap=10)
    assert sql.startswith("SELECT created_at, id FROM ((SELECT e.created_at, e.id FROM events e")
    assert ") UNION (" in sql
    assert sql.endswith("AS matched ORDER BY created_at, id LIMIT $6")
    assert params == [NOW, 1, 2, NOW, bytes.fromhex(A), 11]
    unbounded, _ = pg_sql.negentropy_items(filters[1:], NOW, cap=None)
    assert "LIMIT" not in unbounded
