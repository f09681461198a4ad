"""`relay export`, `relay import`, `relay sync` and `relay backup` on a PostgreSQL database
(`--db postgresql://...`), each test in a schema of its own (tests/pg.py).

The commands run as the operator runs them, in a subprocess, beside relays serving the same
database; what those relays serve to a real WebSocket client is the reference. The export's
snapshot is checked directly: rows committed or deleted while it is halfway through do not
change what it writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from relay.core.event import parse_event
from relay.core.filters import Filter
from relay.store.postgres import PostgresStore, export_pages
from tests.conftest import RelayFactory, url_of
from tests.nostr import Keys
from tests.pg import schema_url
from tests.test_sync import ids, publish, run_sync, served
from tests.test_transfer import by_id, everything, lines_of, publish_all, relay_cli, sample_events


@pytest.fixture
def relay_backend() -> str:
    """start_relay's relays store in PostgreSQL here, unless given a SQLite `db`."""
    return "postgres"


async def test_export_round_trip(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    now = int(time.time())
    events = sample_events(Keys(), now)
    await publish_all(url_of(relay), events)
    served_events = await everything(url_of(relay))
    assert len(served_events) == 20 + 4  # the old profile replaced, the regret deleted

    code, out, err = await relay_cli("export", "--db", relay.settings.db)
    assert code == 0, err
    assert "24 events" in err
    exported = lines_of(out)
    assert by_id(exported) == by_id(served_events)
    # In the order they were stored, so that an import replays them as they happened.
    assert [e["id"] for e in exported] == [e["id"] for e in events if e["id"] in by_id(exported)]

    code, out_limited, err = await relay_cli(
        "export", "--db", relay.settings.db, "--filter", '{"kinds":[1],"limit":2}'
    )
    assert code == 0, err
    assert [e["content"] for e in lines_of(out_limited)] == ["reply", "note 19"]

    async with schema_url() as copy_url:
        code, _, err = await relay_cli("import", "--db", copy_url, stdin=out)
        assert code == 0, err
        assert "24 lines: 24 accepted, 0 duplicate, 0 refused, 0 invalid" in err
        restored = await start_relay(db=copy_url)
        assert await everything(url_of(restored)) == served_events
        code, _, err = await relay_cli("import", "--db", copy_url, stdin=out)
        assert code == 0, err
        assert "24 lines: 0 accepted, 24 duplicate, 0 refused, 0 invalid" in err
        await restored.stop()


async def test_import_counts_accepted_duplicate_refused_and_invalid(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay()
    keys = Keys()
    now = int(time.time())
    held = keys.sign(content="already there", created_at=now - 30)
    await publish_all(url_of(relay), [held])
    good = [keys.sign(content=f"ok {n}", created_at=now - n) for n in range(3)]
    target = keys.sign(content="to delete", created_at=now - 20)
    deletion = keys.sign(kind=5, tags=[["e", target["id"]]], created_at=now - 10)
    other = Keys().sign(content="signed by another key", created_at=now)
    forged = {**keys.sign(content="stolen", created_at=now), "sig": other["sig"]}
    lines = [
        orjson.dumps(good[0]),
        orjson.dumps(held),  # duplicate
        orjson.dumps(forged),  # invalid: bad signature
        b"{not json",  # invalid
        orjson.dumps(deletion),
        orjson.dumps(target),  # refused: deleted by its author (line 6)
        orjson.dumps(good[1]),
        orjson.dumps(good[1]),  # duplicate within the import
        orjson.dumps(good[2]),
    ]
    code, _, err = await relay_cli(
        "import", "--db", relay.settings.db, stdin=b"\n".join(lines) + b"\n"
    )
    assert code == 1, err  # invalid lines
    assert "line 3: invalid: bad signature" in err
    assert "line 4: invalid: not valid JSON" in err
    assert "line 6: blocked: this event was deleted by its author" in err
    assert "9 lines: 4 accepted, 2 duplicate, 1 refused, 2 invalid" in err
    # Served at once by the relay on that database.
    expected = [held, *good, deletion]
    assert by_id(await everything(url_of(relay))) == by_id(expected)


async def test_export_is_one_snapshot() -> None:
    keys = Keys()
    now = int(time.time())
    first = [keys.sign(content=f"first {n}", created_at=now - 100 + n) for n in range(6)]
    async with schema_url() as url:
        store = PostgresStore(url, readers=1)
        await store.open()
        try:
            await store.save_many([parse_event(e) for e in first], now)
            pages = export_pages(url, Filter(), now, page=2)
            seen = [orjson.loads(raw)["id"] for raw in await anext(pages)]
            # Halfway through: one event deleted, another stored, both committed.
            later = keys.sign(content="later", created_at=now)
            deletion = keys.sign(kind=5, tags=[["e", first[-1]["id"]]], created_at=now)
            await store.save_many([parse_event(later), parse_event(deletion)], now)
            async for page in pages:
                seen.extend(orjson.loads(raw)["id"] for raw in page)
        finally:
            await store.close()
    assert seen == [e["id"] for e in first]


async def test_sync_between_a_sqlite_relay_and_a_postgres_database(
    start_relay: RelayFactory, tmp_path: Path
) -> None:
    here = await start_relay()  # PostgreSQL: the database `relay sync` works on
    peer = await start_relay(db=str(tmp_path / "peer.sqlite"), write_process=False)
    keys = Keys()
    now = int(time.time())
    shared = [keys.sign(content=f"shared {n}", created_at=now - 900 + n) for n in range(30)]
    only_here = [keys.sign(content=f"here {n}", created_at=now - 700 + n) for n in range(15)]
    only_peer = [keys.sign(content=f"peer {n}", created_at=now - 600 + n) for n in range(20)]
    await publish(here, shared + only_here)
    await publish(peer, shared + only_peer)

    code, err = await run_sync(str(here.settings.db), url_of(peer))

    assert code == 0, err
    assert "45 compared" in err, err
    assert "down: 20 needed, 20 fetched (20 stored)" in err, err
    assert "up: 15 needed (15 ok)" in err, err
    union = shared + only_here + only_peer
    assert await served(here, union) == ids(union)
    assert await served(peer, union) == ids(union)

    code, err = await run_sync(str(here.settings.db), url_of(peer))
    assert code == 0, err
    assert "down: 0 needed" in err, err
    assert "up: 0 needed" in err, err


async def test_backup_is_refused_with_pg_dump_named() -> None:
    async with schema_url() as url:
        code, _, err = await relay_cli("backup", "/nonexistent/backup.sqlite", "--db", url)
    assert code == 2
    assert "pg_dump" in err


async def test_export_of_an_empty_database_fails_cleanly() -> None:
    async with schema_url() as url:  # no relay ever created the tables
        code, out, err = await relay_cli("export", "--db", url)
    assert (code, out) == (1, b"")
    assert 'relation "events" does not exist' in err, err
