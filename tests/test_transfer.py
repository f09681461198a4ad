"""`relay export`, `relay import` and `relay backup`, run as the operator runs them.

Each command is the real CLI in a subprocess, on the database of a relay that is running
(in-process, or as its own process with its write process for the backup). What the
relay then serves to a real WebSocket client is the reference: an export holds exactly
what a REQ for everything returns; an import of it into a new database serves the same;
a forged or broken line is refused with its line number; the store's rules (deletions,
replaceable versions, expiration) apply to imported events as to published ones; a
backup taken while events are being published is a valid database holding them.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.net.server import RelayServer
from relay.transfer import ImportReport, Progress
from tests.conftest import RelayFactory, RelayProcess, free_port, url_of
from tests.nostr import Client, Keys

COMMAND_TIMEOUT = 60.0


async def relay_cli(*args: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    """`python -m relay ARGS` without blocking the loop an in-process relay runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), COMMAND_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def everything(url: str) -> list[dict[str, Any]]:
    client = await Client.connect(url)
    try:
        return await client.req("all", {"limit": 5000})
    finally:
        await client.close()


async def publish_all(url: str, events: list[dict[str, Any]]) -> None:
    client = await Client.connect(url)
    try:
        for event in events:
            reply = await client.publish(event)
            assert reply[2] is True, reply
    finally:
        await client.close()


def sample_events(keys: Keys, now: int) -> list[dict[str, Any]]:
    """Notes, a replaced profile, an addressable event, a deletion and a tagged reply."""
    notes = [keys.sign(content=f"note {n}", created_at=now - 100 + n) for n in range(20)]
    deleted = keys.sign(content="regret", created_at=now - 50)
    return [
        *notes,
        keys.sign(kind=0, content='{"name":"old"}', created_at=now - 40),
        keys.sign(kind=0, content='{"name":"new"}', created_at=now - 30),
        keys.sign(kind=30023, content="article", tags=[["d", "a"]], created_at=now - 20),
        deleted,
        keys.sign(kind=5, tags=[["e", deleted["id"]]], created_at=now - 10),
        keys.sign(content="reply", tags=[["e", notes[0]["id"]], ["t", "x"]], created_at=now),
    ]


def lines_of(output: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines()]


def by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in events}


async def test_export_holds_what_the_relay_serves_and_import_restores_it(
    relay: RelayServer, start_relay: RelayFactory, tmp_path: Path
) -> None:
    now = int(time.time())
    await publish_all(url_of(relay), sample_events(Keys(), now))
    served = await everything(url_of(relay))
    # Not the old profile (replaced) nor the regret (deleted); the deletion itself, yes.
    assert len(served) == 20 + 4

    code, out, err = await relay_cli("export", "--db", relay.settings.db)
    assert code == 0, err
    exported = lines_of(out)
    assert by_id(exported) == by_id(served)
    assert len(exported) == len(served)
    assert "24 events" in err

    copy = tmp_path / "copy" / "copy.sqlite"
    code, _, err = await relay_cli("import", "--db", str(copy), stdin=out)
    assert code == 0, err
    assert "24 lines: 24 accepted, 0 duplicate, 0 refused, 0 invalid" in err

    restored = await start_relay(db=str(copy))
    assert await everything(url_of(restored)) == served

    # The same file again: everything is already there.
    code, _, err = await relay_cli("import", "--db", str(copy), stdin=out)
    assert code == 0, err
    assert "24 lines: 0 accepted, 24 duplicate, 0 refused, 0 invalid" in err


async def test_export_with_a_filter(relay: RelayServer) -> None:
    keys = Keys()
    now = int(time.time())
    events = sample_events(keys, now)
    await publish_all(url_of(relay), events)

    code, out, err = await relay_cli(
        "export", "--filter", '{"#t":["x"]}', "--db", relay.settings.db
    )
    assert code == 0, err
    assert [e["id"] for e in lines_of(out)] == [events[-1]["id"]]

    code, out, err = await relay_cli(
        "--db", relay.settings.db, "export", "--filter", '{"kinds":[1],"limit":2}'
    )
    assert code == 0, err
    assert [e["content"] for e in lines_of(out)] == ["reply", "note 19"]


@pytest.mark.parametrize(
    ("argument", "message"),
    [("{", "--filter is not valid JSON"), ('{"kinds":"1"}', "invalid: kinds must be an array")],
)
async def test_export_refuses_a_bad_filter(tmp_path: Path, argument: str, message: str) -> None:
    code, out, err = await relay_cli(
        "export", "--db", str(tmp_path / "x.sqlite"), "--filter", argument
    )
    assert (code, out) == (2, b"")
    assert message in err


async def test_export_of_a_missing_database_fails(tmp_path: Path) -> None:
    code, _, err = await relay_cli("export", "--db", str(tmp_path / "none.sqlite"))
    assert code == 1
    assert "no database" in err
    assert not (tmp_path / "none.sqlite").exists()


async def test_import_refuses_forged_and_broken_lines_by_number(
    start_relay: RelayFactory, tmp_path: Path
) -> None:
    keys = Keys()
    now = int(time.time())
    good = [keys.sign(content=f"ok {n}", created_at=now - n) for n in range(3)]
    forged_content = {**keys.sign(content="original", created_at=now), "content": "forged"}
    other = Keys().sign(content="signed by another key", created_at=now)
    forged_sig = {**keys.sign(content="stolen", created_at=now), "sig": other["sig"]}
    lines = [
        orjson.dumps(good[0]),
        b"",  # blank lines are skipped, still counted in the numbering
        orjson.dumps(forged_content),
        b"{not json",
        orjson.dumps(good[1]),
        orjson.dumps(forged_sig),
        orjson.dumps(keys.sign(kind=20001, content="ephemeral", created_at=now)),
        orjson.dumps(keys.sign(tags=[["expiration", str(now - 1)]], created_at=now - 5)),
        orjson.dumps(["EVENT", good[2]]),
        b"  " + orjson.dumps(good[2]) + b"  ",
    ]
    db = tmp_path / "imported.sqlite"
    code, _, err = await relay_cli("import", "--db", str(db), stdin=b"\n".join(lines) + b"\n")
    assert code == 1, err
    assert "line 3: invalid: event id does not match its content" in err
    assert "line 4: invalid: not valid JSON" in err
    assert "line 6: invalid: bad signature" in err
    assert "line 7: invalid: ephemeral events are not stored" in err
    assert "line 8: invalid: event has expired" in err
    assert "line 9: invalid: event must be an object" in err
    assert "9 lines: 3 accepted, 0 duplicate, 0 refused, 6 invalid" in err
    for number in (1, 2, 5, 10):
        assert f"line {number}:" not in err

    relay = await start_relay(db=str(db))
    assert by_id(await everything(url_of(relay))) == by_id(good)


async def test_import_applies_the_store_rules(start_relay: RelayFactory, tmp_path: Path) -> None:
    keys = Keys()
    now = int(time.time())
    target = keys.sign(content="to delete", created_at=now - 10)
    deletion = keys.sign(kind=5, tags=[["e", target["id"]]], created_at=now - 5)
    newer = keys.sign(kind=0, content="new", created_at=now - 1)
    older = keys.sign(kind=0, content="old", created_at=now - 2)
    stream = [deletion, target, newer, older]  # each arrives after what overrules it
    db = tmp_path / "rules.sqlite"
    source = tmp_path / "rules.jsonl"  # from a file named on the command line this time
    await asyncio.to_thread(source.write_bytes, b"".join(orjson.dumps(e) + b"\n" for e in stream))
    code, _, err = await relay_cli("import", str(source), "--db", str(db))
    assert code == 0, err
    assert "line 2: blocked: this event was deleted by its author" in err
    assert "4 lines: 2 accepted, 1 duplicate, 1 refused, 0 invalid" in err

    relay = await start_relay(db=str(db))
    assert {e["id"] for e in await everything(url_of(relay))} == {deletion["id"], newer["id"]}


async def test_import_into_a_running_relay_is_served_by_it(relay: RelayServer) -> None:
    keys = Keys()
    events = [keys.sign(content=f"imported {n}") for n in range(5)]
    code, _, err = await relay_cli(
        "import", "--db", relay.settings.db, stdin=b"".join(orjson.dumps(e) + b"\n" for e in events)
    )
    assert code == 0, err
    assert by_id(await everything(url_of(relay))) == by_id(events)


def test_backup_while_the_relay_writes_is_a_valid_database(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path / "live.sqlite", free_port())
    relay.start()
    try:
        asyncio.run(_backup_under_load(relay, tmp_path))
    finally:
        relay.kill()


async def _backup_under_load(relay: RelayProcess, tmp_path: Path) -> None:
    keys = Keys()
    before = [keys.sign(content=f"before {n}") for n in range(200)]
    await publish_all(relay.url, before)
    # Keep publishing while the backup runs: it must neither block nor tear.
    during = [keys.sign(content=f"during {n}") for n in range(200)]
    publishing = asyncio.create_task(publish_all(relay.url, during))
    target = tmp_path / "backup.sqlite"
    code, _, err = await relay_cli("backup", str(target), "--db", str(relay.db))
    await publishing
    assert code == 0, err
    assert "quick_check ok" in err
    assert not await asyncio.to_thread(Path(str(target) + ".partial").exists)

    copy = sqlite3.connect(target)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        ids = {row[0].hex() for row in copy.execute("SELECT id FROM events")}
    finally:
        copy.close()
    assert {e["id"] for e in before} <= ids
    # A snapshot: some prefix of the events published meanwhile, never a torn one.
    assert ids <= {e["id"] for e in before + during}
    assert f"{len(ids):,} events" in err

    # A second backup to the same path is refused: it never overwrites.
    code, _, err = await relay_cli("backup", str(target), "--db", str(relay.db))
    assert code == 1
    assert "exists" in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_shows_share_rate_and_eta(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"x" * 1000)
    err = Terminal()
    with source.open("rb") as stream:
        progress = Progress.for_terminal(stream, err)
    assert progress is not None
    assert progress.total == 1000
    progress.started -= 10  # ten seconds in, a quarter read
    progress.advance(250)
    progress.show(ImportReport(lines=500))
    line = err.getvalue()
    assert line.startswith("\rimport: 500 lines, 50/s, 25%, ETA 0:00:30")
    assert Progress.for_terminal(io.BytesIO(), io.StringIO()) is None  # not a terminal
