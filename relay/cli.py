"""The `relay` command: `relay --port 7447 --db ./relay.sqlite --config relay.toml` serves;
`relay export`, `relay import`, `relay backup PATH` and `relay sync URL` work on the same
database (the same --db / --config / RELAY_* settings), whether or not a relay runs on it.
All but backup (SQLite's online backup; pg_dump's job on PostgreSQL) take either store."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay import __version__
from relay.admin import KEY_ENV, AdminError, call, parse_param, read_secret
from relay.app import is_postgres_url, require_postgres_driver, run
from relay.config import ConfigError, Settings, load
from relay.core import canonical
from relay.core.errors import ClientError
from relay.core.filters import Filter, parse_filter
from relay.core.negentropy import DEFAULT_MAX_PEER_ITEMS
from relay.net.sync import DIRECTIONS, SyncError, SyncStats, sync
from relay.store.base import EventStore
from relay.store.sqlite import SqliteStore
from relay.transfer import (
    ImportReport,
    ImportRules,
    Progress,
    StoreLocal,
    backup,
    export_events,
    export_events_postgres,
    import_events,
    open_read_only,
)


def _add_database_options(parser: argparse.ArgumentParser, default: Any) -> None:
    # A subcommand repeats these with SUPPRESS as default, so that `relay --db x export`
    # and `relay export --db x` both work and one does not reset the other.
    parser.add_argument(
        "--db",
        default=default,
        help="SQLite database file (./relay.sqlite), or a PostgreSQL URL "
        "(postgresql://user@host/dbname)",
    )
    parser.add_argument("--config", default=default, help="TOML configuration file")
    parser.add_argument(
        "--log-level", default=default, help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="A Nostr relay. Every setting can also come from a RELAY_* variable.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 7447)")
    _add_database_options(parser, None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{export,import,backup,sync,admin}")
    export = commands.add_parser(
        "export", help="write the stored events to stdout, one JSON event per line"
    )
    export.add_argument("--filter", help="one NIP-01 filter as JSON, e.g. '{\"kinds\":[1]}'")
    imports = commands.add_parser(
        "import",
        help="store the events read from stdin (or FILE), one JSON event per line",
        description="Exit code 0 when no line was invalid (malformed, forged or expired).",
    )
    imports.add_argument("file", nargs="?", help="read this file instead of stdin")
    imports.add_argument("--no-progress", action="store_true", help="no progress line")
    copy = commands.add_parser("backup", help="copy the database, consistent while it is in use")
    copy.add_argument("path", help="the copy to write (must not exist)")
    peer = commands.add_parser(
        "sync",
        help="reconcile with another relay (NIP-77) and copy what either side lacks",
        description="Exit code 0 when every difference was settled: transferred, or refused"
        " by a deletion or request to vanish (blocked:).",
    )
    peer.add_argument("url", help="the other relay, ws://... or wss://...")
    peer.add_argument("--filter", help="one NIP-01 filter as JSON (default: every event)")
    peer.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default="both",
        help="down: fetch what is missing here; up: send what is missing there; both",
    )
    peer.add_argument(
        "--max-peer-items",
        type=int,
        default=DEFAULT_MAX_PEER_ITEMS,
        help="give up when the peer reports more ids than this that we lack"
        f" (default {DEFAULT_MAX_PEER_ITEMS:,})",
    )
    for sub in (export, imports, copy, peer):
        _add_database_options(sub, argparse.SUPPRESS)
    admin = commands.add_parser(
        "admin",
        help="call the NIP-86 management API, e.g. `relay admin banpubkey HEX spam`",
        description=f"The key signing the request comes from --key-file or {KEY_ENV}.",
    )
    admin.add_argument("method", help="a NIP-86 method, e.g. supportedmethods, banpubkey")
    admin.add_argument("params", nargs="*", help="its parameters; digits are sent as numbers")
    admin.add_argument("--url", help="the relay's URL (default: relay_url, or host:port)")
    admin.add_argument("--key-file", help="a file holding the admin's secret key in hex")
    return parser.parse_args(argv)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Handshake failures from port scanners are not worth a line each.
    logging.getLogger("websockets").setLevel(logging.ERROR)


def install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "db": args.db,
        "log_level": args.log_level,
    }
    try:
        settings = load(args.config, overrides)
    except ConfigError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "admin":
        return admin_command(args, settings)
    if args.command is not None:
        return run_command(args, settings)
    install_fast_loop()
    try:
        asyncio.run(run(settings))
    except ConfigError as error:
        # A setting only the running relay can check, such as a write policy to import.
        print(f"relay: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        logging.getLogger("relay").error("cannot start: %s", error)
        return 1
    return 0


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """export / import / backup / sync: exit 2 for a bad argument, 1 when the work failed."""
    if args.command == "backup" and is_postgres_url(settings.db):
        print(
            "relay backup: copies a SQLite database; back a PostgreSQL database up with"
            " pg_dump (e.g. pg_dump --format=custom --file relay.dump DBNAME)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.command == "export":
            return export_command(settings, args.filter)
        if args.command == "import":
            return import_command(settings, args.file, progress=not args.no_progress)
        if args.command == "sync":
            return sync_command(
                settings, args.url, args.filter, args.direction, args.max_peer_items
            )
        return backup_command(settings, args.path)
    except ConfigError as error:  # asyncpg missing for a PostgreSQL URL
        print(f"relay {args.command}: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # a bad --filter
        print(f"relay {args.command}: {error}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as error:
        print(f"relay {args.command}: {error}", file=sys.stderr)
        return 1


def admin_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the result as JSON; exit 2 for a missing key, 1 for a refused call."""
    try:
        secret = read_secret(args.key_file, os.environ)
    except (AdminError, OSError) as error:
        print(f"relay admin: {error}", file=sys.stderr)
        return 2
    url = args.url or settings.public_url(settings.port)
    params = [parse_param(text) for text in args.params]
    try:
        result = call(url, secret, args.method, params)
    except AdminError as error:
        print(f"relay admin: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def sync_command(
    settings: Settings,
    url: str,
    filter_text: str | None,
    direction: str,
    max_peer_items: int = DEFAULT_MAX_PEER_ITEMS,
) -> int:
    """`relay sync URL`: 0 when complete, 1 when something needed did not get across."""
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    filter_obj: dict[str, Any] = {}
    if filter_text is not None:
        parse_filter_argument(filter_text)
        filter_obj = canonical.loads(filter_text)
    rules = ImportRules(settings.public_url(settings.port), settings.vanish_enabled)
    try:
        stats = asyncio.run(_sync(settings, rules, url, filter_obj, direction, max_peer_items))
    except SyncError as error:
        print(f"relay sync: {error}", file=sys.stderr)
        return 1
    print(f"relay sync: {stats.summary()}", file=sys.stderr)
    return 0 if stats.complete else 1


async def _sync(
    settings: Settings,
    rules: ImportRules,
    url: str,
    filter_obj: dict[str, Any],
    direction: str,
    max_peer_items: int,
) -> SyncStats:
    store = await open_store(settings)
    try:
        local = StoreLocal(store, rules)
        return await sync(local, url, filter_obj, direction, max_peer_items=max_peer_items)
    finally:
        await store.close()


async def open_store(settings: Settings) -> EventStore:
    """The database as import and sync write it, opened. SQLite: the write process's
    transaction code on a thread of this process. Both keep the search index as it is:
    opening with the other setting would build or drop it under a running relay."""
    if is_postgres_url(settings.db):
        require_postgres_driver()
        from relay.store.postgres import PostgresStore, search_words_state

        state = await search_words_state(settings.db)
        search = settings.search_enabled if state is None else state == "complete"
        store: EventStore = PostgresStore(settings.db, readers=1, search=search)
    else:
        store = await asyncio.to_thread(sqlite_store, settings)
    await store.open()
    return store


def sqlite_store(settings: Settings) -> SqliteStore:
    Path(settings.db).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(
        settings.db,
        readers=1,
        synchronous=settings.synchronous.upper(),
        search=keeps_search_index(settings),
        write_process=False,
    )


def parse_filter_argument(text: str | None) -> Filter | None:
    if text is None:
        return None
    try:
        return parse_filter(canonical.loads(text))
    except canonical.JSONDecodeError:
        raise ValueError("--filter is not valid JSON") from None
    except ClientError as error:
        raise ValueError(f"--filter: {error.reason}") from None


def export_command(settings: Settings, filter_text: str | None) -> int:
    export_filter = parse_filter_argument(filter_text)
    now = int(time.time())
    try:
        if is_postgres_url(settings.db):
            require_postgres_driver()
            count = asyncio.run(
                export_events_postgres(settings.db, sys.stdout.buffer, export_filter, now)
            )
        else:
            count = export_events(settings.db, sys.stdout.buffer, export_filter, now)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # `relay export | head`: the reader left; that is not an error of ours.
        sys.stderr.close()
        return 0
    print(f"relay export: {count:,} events", file=sys.stderr)
    return 0


def import_command(settings: Settings, file: str | None, progress: bool) -> int:
    rules = ImportRules(settings.public_url(settings.port), settings.vanish_enabled)
    stream = sys.stdin.buffer if file in (None, "-") else open(file, "rb")  # noqa: SIM115
    try:
        shown = Progress.for_terminal(stream, sys.stderr) if progress else None
        report = asyncio.run(_import(settings, stream, rules, shown))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    print(f"relay import: {report.summary()}", file=sys.stderr)
    return 1 if report.invalid else 0


def keeps_search_index(settings: Settings) -> bool:
    """Whether the SQLite database keeps its NIP-50 index (settings' choice for a new one)."""
    if not Path(settings.db).expanduser().is_file():
        return settings.search_enabled
    db = open_read_only(settings.db)
    try:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'events_fts_insert'"
        ).fetchone()
    finally:
        db.close()
    return found is not None


async def _import(
    settings: Settings, stream: Any, rules: ImportRules, progress: Progress | None
) -> ImportReport:
    store = await open_store(settings)
    try:
        return await import_events(store, stream, rules, ImportReport(), progress)
    finally:
        await store.close()


def backup_command(settings: Settings, path: str) -> int:
    result = backup(settings.db, path)
    print(
        f"relay backup: {result.events:,} events, {result.size / 1e6:,.1f} MB -> {path}"
        f" (quick_check {result.check})",
        file=sys.stderr,
    )
    return 0
