"""NIP-50 search: query words, the FTS5 index in step with the store, and over the socket."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from relay.core import search
from relay.core.event import Event, parse_event
from relay.core.filters import Filter, parse_filter
from relay.store.base import EventStore
from relay.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.conftest import RelayFactory, url_of
from tests.http_client import fetch_info
from tests.nostr import Client, Keys

NOW = 1_700_000_000
ALICE = Keys()


def note(content: str, created_at: int = NOW - 10, kind: int = 1, **kw: Any) -> Event:
    return parse_event(ALICE.sign(kind=kind, content=content, created_at=created_at, **kw))


def query(text: str, **fields: Any) -> Filter:
    return parse_filter({"search": text, **fields})


# --- words ----------------------------------------------------------------------------


def test_words_are_letter_and_digit_runs_any_case() -> None:
    assert search.words("Hello, NOSTR-relay_2! café") == ["hello", "nostr", "relay", "2", "café"]


def test_content_matches_needs_every_word() -> None:
    assert search.content_matches(("nostr", "relay"), "A relay for Nostr.")
    assert not search.content_matches(("nostr", "relay"), "nostr only")
    assert not search.content_matches(("rel",), "relay")  # whole words, not prefixes
    assert search.content_matches((), "anything")


@pytest.mark.parametrize(
    "text", ['"a', 'a" OR "b', "NEAR(a b)", "a*", "-a", "a AND b", "^a", "x content:a", "{a}"]
)
def test_user_text_never_becomes_fts_syntax(text: str) -> None:
    expression = search.fts_match(search.parse_query(text))
    assert expression
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(content)")
    db.execute("INSERT INTO t VALUES ('a b AND OR NEAR')")
    # Every word is quoted: a plain phrase per word, never an operator or column filter.
    db.execute("SELECT count(*) FROM t WHERE t MATCH ?", (expression,)).fetchone()
    assert all(part.startswith('"') and part.endswith('"') for part in expression.split())


# --- both stores ------------------------------------------------------------------------


async def ids(store: EventStore, *filters: Filter) -> set[str]:
    return {parse_event_id(raw) for raw in await store.query(filters, NOW)}


def parse_event_id(raw: bytes) -> str:
    return str(raw[7:71].decode())


async def test_search_combines_with_other_fields(store: EventStore) -> None:
    a = note("Nostr relays are simple")
    b = note("a simple relay", kind=7)
    c = note("nothing here")
    await store.save_many([a, b, c], NOW)
    assert await ids(store, query("simple")) == {a.id, b.id}
    assert await ids(store, query("SIMPLE", kinds=[1])) == {a.id}
    assert await ids(store, query("simple relay")) == {b.id}
    assert await ids(store, query("include:spam")) == {a.id, b.id, c.id}
    assert await store.count([query("simple")], NOW) == 2


async def test_index_follows_replacement_deletion_and_expiry(store: EventStore) -> None:
    old = note("first profile words", kind=0, created_at=NOW - 20)
    new = note("second profile", kind=0, created_at=NOW - 10)
    doomed = note("delete this text")
    expiring = note("expiring words", tags=[["expiration", str(NOW - 1)]])
    await store.save_many([old, doomed, expiring], NOW - 5)
    assert await ids(store, query("words")) == {old.id}  # expired events are hidden
    deletion = parse_event(ALICE.sign(kind=5, tags=[["e", doomed.id]], created_at=NOW - 5))
    await store.save_many([new, deletion], NOW)
    await store.purge_expired(NOW)
    assert await ids(store, query("profile")) == {new.id}
    assert await ids(store, query("first")) == set()
    assert await ids(store, query("delete")) == set()
    assert await ids(store, query("expiring")) == set()


async def test_sqlite_ranks_by_relevance(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.sqlite")
    await store.open()
    try:
        weak = note("nostr " + "filler " * 40, created_at=NOW - 1)
        strong = note("nostr nostr nostr", created_at=NOW - 100)
        await store.save_many([weak, strong], NOW)
        found = await store.query([query("nostr")], NOW)
        assert [parse_event_id(raw) for raw in found] == [strong.id, weak.id]
        limited = await store.query([query("nostr", limit=1)], NOW)
        assert [parse_event_id(raw) for raw in limited] == [strong.id]
        # Without search, newest first as always.
        assert [parse_event_id(raw) for raw in await store.query([Filter()], NOW)] == [
            weak.id,
            strong.id,
        ]
        # The FTS table holds exactly the stored events.
        (rows,) = (
            sqlite3.connect(tmp_path / "r.sqlite")
            .execute("SELECT count(*) FROM events_fts")
            .fetchone()
        )
        assert rows == 2
    finally:
        await store.close()


async def test_a_version_1_database_gets_its_index_filled(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    store = SqliteStore(path)
    await store.open()
    await store.save_many([note("old searchable words")], NOW)
    await store.close()
    # Make it look like version 1: no search index at all.
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TRIGGER events_fts_insert; DROP TRIGGER events_fts_delete;"
        "DROP TABLE events_fts; PRAGMA user_version = 1;"
    )
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert len(await store.query([query("searchable")], NOW)) == 1
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


async def test_search_off_keeps_no_index_and_on_again_fills_it(tmp_path: Path) -> None:
    path = tmp_path / "toggle.sqlite"
    store = SqliteStore(path, search=False)
    await store.open()
    await store.save_many([note("written while search was off")], NOW)
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM events_fts").fetchone() == (0,)
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert len(await store.query([query("written off")], NOW)) == 1
        await store.save_many([note("written while search was on")], NOW)
        assert len(await store.query([query("written")], NOW)) == 2
    finally:
        await store.close()


# --- over the socket --------------------------------------------------------------------


async def test_search_req_and_live_subscription(start_relay: RelayFactory) -> None:
    relay = await start_relay(search_enabled=True)
    client = await Client.connect(url_of(relay))
    now = int(time.time())
    match = ALICE.sign(content="Searching NOSTR relays", created_at=now - 1)
    other = ALICE.sign(content="unrelated", created_at=now - 1)
    for event in (match, other):
        assert (await client.publish(event))[2] is True
    assert await client.req("s", {"search": "nostr"}) == [match]
    assert await client.req("q", {"search": '"Relays* (nostr)'}) == [match]
    # Only punctuation: no words, so no condition.
    assert len(await client.req("e", {"search": '" * ('})) == 2
    for sub_id in ("q", "e"):
        await client.send(["CLOSE", sub_id])
    live = ALICE.sign(content="more about nostr", created_at=now)
    publisher = await Client.connect(url_of(relay))
    await publisher.publish(ALICE.sign(content="nothing", created_at=now))
    await publisher.publish(live)
    assert await client.recv() == ["EVENT", "s", live]
    await client.expect_silence()
    await client.send(["COUNT", "c", {"search": "nostr"}])
    assert await client.recv() == ["COUNT", "c", {"count": 2}]
    assert 50 in (await fetch_info(relay))["supported_nips"]
    await client.close()
    await publisher.close()


async def test_search_is_off_by_default(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    client = await Client.connect(url_of(relay))
    await client.send(["REQ", "s", {"search": "nostr"}])
    reply = await client.recv()
    assert reply[:2] == ["CLOSED", "s"]
    assert reply[2].startswith("unsupported: ")
    assert 50 not in (await fetch_info(relay))["supported_nips"]
    await client.close()
