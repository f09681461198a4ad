"""Composition root: builds the relay from its settings and runs it until a signal."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from pathlib import Path

from relay.config import ConfigError, Settings
from relay.net.server import RelayServer
from relay.store.base import EventStore
from relay.store.sqlite import SqliteStore

log = logging.getLogger("relay")


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def require_postgres_driver() -> None:
    """A PostgreSQL database needs asyncpg, the optional `postgres` extra."""
    try:
        importlib.import_module("asyncpg")
    except ImportError as exc:
        raise ConfigError(
            f"a PostgreSQL database needs asyncpg: pip install 'pyrelay-nostr[postgres]' ({exc})"
        ) from exc


def build_store(settings: Settings) -> EventStore:
    """PostgreSQL for a postgresql:// URL, else SQLite in the file at that path."""
    if is_postgres_url(settings.db):
        require_postgres_driver()
        # Imported only here: asyncpg is the optional `postgres` extra.
        from relay.store.postgres import PostgresStore

        return PostgresStore(
            settings.db,
            readers=settings.readers,
            query_timeout=settings.query_timeout,
            search=settings.search_enabled,
            retention=settings.retention,
        )
    db = Path(settings.db).expanduser().absolute()
    db.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(
        db,
        readers=settings.readers,
        synchronous=settings.synchronous.upper(),
        query_timeout=settings.query_timeout,
        search=settings.search_enabled,
        write_process=settings.write_process,
        retention=settings.retention,
    )


def build_relay(settings: Settings) -> RelayServer:
    return RelayServer(settings, build_store(settings))


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly."""
    relay = build_relay(settings)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signal received, shutting down")
    await relay.stop()
