"""Export, import and backup of the relay's database: the work behind `relay export`,
`relay import` and `relay backup`, each safe while a relay runs on the same file.

The format is one NIP-01 event as JSON per line, what strfry's `export`/`import` and `nak`
read and write. Export streams from one read transaction on a read-only connection (a
consistent snapshot, constant memory). Import checks each line (JSON, fields, id,
signature, not expired, not ephemeral, a kind 62 naming this relay) and commits batches
through the store's `save_many`, so deletions, replaceable versions, requests to vanish
and duplicates follow the same rules as for an event a client publishes; the limits and
write policies meant for clients are not applied to the operator's own import.
`StoreLocal` gives `relay sync` the same checks for what it downloads. Backup copies the
database with SQLite's online backup API inside one read transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from relay.core import canonical, vanish
from relay.core.auth import AUTH_KIND
from relay.core.errors import ClientError, Invalid
from relay.core.event import Event, parse_event
from relay.core.filters import Filter
from relay.core.signature import verify_many
from relay.net.sync import StoreReads
from relay.store import sql
from relay.store.base import EventStore, SaveOutcome

# Rows fetched from SQLite per call while exporting: memory stays at one chunk.
EXPORT_CHUNK = 1000
# Events per import commit: group commit makes 1,000 per commit about 7x one per commit.
IMPORT_BATCH = 1000
# Signature checks run on threads (coincurve releases the GIL) while the next batch parses.
VERIFY_THREADS = 2
# Refused lines listed on stderr before the rest are only counted.
MAX_LISTED = 10_000
PROGRESS_SECONDS = 0.5


def read_only_uri(path: str | Path) -> str:
    """A URI opening the database read-only; as_uri escapes `?` and `#` in the path."""
    return Path(path).expanduser().absolute().as_uri() + "?mode=ro"


def open_read_only(path: str | Path) -> sqlite3.Connection:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"no database at {path}")
    db = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    return db


# -- export --------------------------------------------------------------------------------


def export_events(path: str | Path, out: BinaryIO, f: Filter | None, now: int) -> int:
    """Write the live events matching `f` (all without one), one per line; returns the count.

    In insertion order, so that an import replays deletions and replacements as they
    happened; with a `limit`, its newest events as a REQ returns them.
    """
    db = open_read_only(path)
    try:
        db.execute("BEGIN")  # one snapshot for the whole export, however long it takes
        count = 0
        cursor = db.execute(*sql.export_events(f or Filter(), now))
        while rows := cursor.fetchmany(EXPORT_CHUNK):
            out.write(b"".join([raw + b"\n" for (raw,) in rows]))
            count += len(rows)
        db.execute("COMMIT")
        return count
    finally:
        db.close()


async def export_events_postgres(dsn: str, out: BinaryIO, f: Filter | None, now: int) -> int:
    """export_events on a PostgreSQL database: the same events in the same order, from one
    snapshot read page by page (relay/store/postgres.py's export_pages)."""
    # Imported here: asyncpg is the optional `postgres` extra.
    from relay.store.postgres import export_pages

    count = 0
    async with contextlib.aclosing(export_pages(dsn, f or Filter(), now)) as pages:
        async for page in pages:
            out.write(b"".join([raw + b"\n" for raw in page]))
            count += len(page)
    return count


# -- import --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRules:
    """What an imported event must satisfy beyond its id and signature."""

    relay_url: str
    vanish_enabled: bool = True


@dataclass
class ImportReport:
    lines: int = 0
    accepted: int = 0
    duplicate: int = 0
    refused: int = 0
    invalid: int = 0
    listed: int = 0
    started: float = field(default_factory=time.monotonic)
    err: TextIO = sys.stderr

    def refuse(self, line: int, reason: str) -> None:
        if reason.startswith("invalid:"):
            self.invalid += 1
        else:
            self.refused += 1
        self.listed += 1
        if self.listed <= MAX_LISTED:
            print(f"line {line}: {reason}", file=self.err)
        elif self.listed == MAX_LISTED + 1:
            print(
                f"(more than {MAX_LISTED} lines refused: the rest are only counted)", file=self.err
            )

    def record(self, line: int, outcome: SaveOutcome) -> None:
        if outcome is SaveOutcome.STORED:
            self.accepted += 1
        elif outcome.reason.startswith("duplicate:"):
            self.duplicate += 1
        else:
            self.refuse(line, outcome.reason)

    def summary(self) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.lines:,} lines: {self.accepted:,} accepted, {self.duplicate:,} duplicate, "
            f"{self.refused:,} refused, {self.invalid:,} invalid "
            f"in {seconds:.1f} s ({self.lines / seconds:,.0f} lines/s)"
        )


Numbered = tuple[int, Event]


def check_line(raw: bytes, rules: ImportRules, now: int) -> Event:
    """The event on one line if it may be imported; raises ClientError with the reason."""
    try:
        obj = canonical.loads(raw)
    except canonical.JSONDecodeError:
        raise Invalid("not valid JSON") from None
    return check_event(obj, rules, now)


def check_event(obj: object, rules: ImportRules, now: int) -> Event:
    """The event of one JSON object (a line, or one a peer relay sent) if it may be stored."""
    event = parse_event(obj)
    if event.is_ephemeral:
        raise Invalid("ephemeral events are not stored")
    if event.kind == AUTH_KIND:
        raise Invalid("AUTH events are not stored")
    expiration = event.expiration
    if expiration is not None and expiration <= now:
        raise Invalid("event has expired")
    vanish.check_request(event, rules.relay_url, rules.vanish_enabled)
    return event


def numbered_lines(
    stream: Iterable[bytes], progress: Progress | None
) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers."""
    for number, line in enumerate(stream, start=1):
        if progress is not None:
            progress.advance(len(line))
        stripped = line.strip()
        if stripped:
            yield number, stripped


def _batches(lines: Iterator[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    batch: list[tuple[int, bytes]] = []
    for item in lines:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _verify_halves(
    pool: ThreadPoolExecutor, events: Sequence[Event]
) -> list[asyncio.Future[list[bool]]]:
    middle = len(events) // 2
    return [
        asyncio.wrap_future(pool.submit(verify_many, part))
        for part in (events[:middle], events[middle:])
    ]


class _Pipeline:
    """Parse batch n+1 while batch n's signatures are checked and batch n-1 commits."""

    def __init__(self, store: EventStore, report: ImportReport, pool: ThreadPoolExecutor) -> None:
        self.store = store
        self.report = report
        self.pool = pool
        self.verifying: tuple[list[Numbered], list[asyncio.Future[list[bool]]]] | None = None
        self.saving: tuple[list[Numbered], asyncio.Task[list[SaveOutcome]]] | None = None

    async def push(self, checked: list[Numbered]) -> None:
        futures = _verify_halves(self.pool, [event for _, event in checked])
        await self._advance()
        self.verifying = (checked, futures)

    async def finish(self) -> None:
        await self._advance()
        await self._advance()

    async def _advance(self) -> None:
        """The verified batch goes to the store once the previous commit has returned."""
        if self.verifying is None:
            await self._record_save()
            return
        checked, futures = self.verifying
        self.verifying = None
        valid = [ok for part in await asyncio.gather(*futures) for ok in part]
        good: list[Numbered] = []
        for (number, event), ok in zip(checked, valid, strict=True):
            if ok:
                good.append((number, event))
            else:
                self.report.refuse(number, "invalid: bad signature")
        await self._record_save()
        if good:
            now = int(time.time())
            self.saving = (
                good,
                asyncio.create_task(self.store.save_many([e for _, e in good], now)),
            )

    async def _record_save(self) -> None:
        if self.saving is None:
            return
        good, task = self.saving
        self.saving = None
        for (number, _), outcome in zip(good, await task, strict=True):
            self.report.record(number, outcome)


async def import_events(
    store: EventStore,
    stream: Iterable[bytes],
    rules: ImportRules,
    report: ImportReport,
    progress: Progress | None = None,
) -> ImportReport:
    """Check and store every line of `stream`; refusals are listed on report.err."""
    with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="import-verify") as pool:
        pipeline = _Pipeline(store, report, pool)
        for batch in _batches(numbered_lines(stream, progress), IMPORT_BATCH):
            now = int(time.time())
            checked: list[Numbered] = []
            for number, raw in batch:
                report.lines += 1
                try:
                    checked.append((number, check_line(raw, rules, now)))
                except ClientError as error:
                    report.refuse(number, error.reason)
            await pipeline.push(checked)
            if progress is not None:
                progress.show(report)
        await pipeline.finish()
    if progress is not None:
        progress.done()
    return report


class Progress:
    """One self-rewriting stderr line: lines read, rate, and (from a file) share and ETA."""

    def __init__(self, err: TextIO, total_bytes: int | None) -> None:
        self.err = err
        self.total = total_bytes
        self.read = 0
        self.started = time.monotonic()
        self.shown = 0.0

    @classmethod
    def for_terminal(cls, stream: BinaryIO, err: TextIO) -> Progress | None:
        """A progress line only on a terminal; the size is known when stdin is a file."""
        if not err.isatty():
            return None
        try:
            info = os.fstat(stream.fileno())
        except (OSError, ValueError):
            return cls(err, None)
        return cls(err, info.st_size if stat.S_ISREG(info.st_mode) else None)

    def advance(self, size: int) -> None:
        self.read += size

    def show(self, report: ImportReport) -> None:
        now = time.monotonic()
        if now - self.shown < PROGRESS_SECONDS:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-9)
        text = f"import: {report.lines:,} lines, {report.lines / elapsed:,.0f}/s"
        if self.total:
            share = min(self.read / self.total, 1.0)
            left = elapsed * (1 - share) / share if share else 0.0
            text += f", {share:.0%}, ETA {_clock(left)}"
        self.err.write(f"\r{text}\x1b[K")
        self.err.flush()

    def done(self) -> None:
        self.err.write("\r\x1b[K")
        self.err.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# -- backup --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    events: int
    size: int
    check: str


def backup(path: str | Path, target: str | Path) -> BackupResult:
    """Copy the database to `target` (which must not exist) as one consistent snapshot.

    SQLite's online backup runs in one step, inside one read transaction: a relay writing
    meanwhile (WAL) is neither blocked nor seen halfway. The copy is written beside the
    target and renamed only once it passed `PRAGMA quick_check`, in rollback-journal mode
    so that it is one self-contained file.
    """
    target = Path(target).expanduser()
    if target.exists():
        raise FileExistsError(f"{target} exists; backup writes a new file only")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source = open_read_only(path)
    try:
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
            check = str(copy.execute("PRAGMA quick_check").fetchone()[0])
            events = int(copy.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            copy.close()
    finally:
        source.close()
    if check != "ok":
        raise sqlite3.DatabaseError(f"the copy failed its integrity check: {check}")
    os.replace(partial, target)
    return BackupResult(events, target.stat().st_size, check)


# -- sync: this database as the local side of relay/net/sync.py ----------------------


class StoreLocal(StoreReads):
    """The command line's side: the store itself, with import's checks before save_many."""

    def __init__(self, store: EventStore, rules: ImportRules) -> None:
        super().__init__(store)
        self.rules = rules

    async def store(self, objs: Sequence[Any]) -> list[str]:
        now = int(time.time())
        reasons: list[str] = [""] * len(objs)
        checked: list[tuple[int, Event]] = []
        for index, obj in enumerate(objs):
            try:
                checked.append((index, check_event(obj, self.rules, now)))
            except ClientError as error:
                reasons[index] = error.reason
        valid = await asyncio.to_thread(verify_many, [event for _, event in checked])
        good: list[tuple[int, Event]] = []
        for (index, event), ok in zip(checked, valid, strict=True):
            if ok:
                good.append((index, event))
            else:
                reasons[index] = "invalid: bad signature"
        if good:
            outcomes = await self.events.save_many([e for _, e in good], now)
            for (index, _), outcome in zip(good, outcomes, strict=True):
                reasons[index] = "" if outcome is SaveOutcome.STORED else outcome.reason
        return reasons
