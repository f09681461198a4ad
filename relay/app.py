"""Composition root: builds the relay from its settings and runs it until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from relay.config import Settings
from relay.net.server import RelayServer
from relay.store.sqlite import SqliteStore

log = logging.getLogger("relay")


def build_relay(settings: Settings) -> RelayServer:
    db = Path(settings.db).expanduser().absolute()
    db.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(
        db,
        readers=settings.readers,
        synchronous=settings.synchronous.upper(),
        query_timeout=settings.query_timeout,
        search=settings.search_enabled,
        write_process=settings.write_process,
    )
    return RelayServer(settings, store)


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
