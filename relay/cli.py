"""The `relay` command: `relay --port 7447 --db ./relay.sqlite --config relay.toml`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from relay import __version__
from relay.app import run
from relay.config import ConfigError, load


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="A Nostr relay. Every setting can also come from a RELAY_* variable.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 7447)")
    parser.add_argument(
        "--db",
        help="SQLite database file (default ./relay.sqlite), or a PostgreSQL URL "
        "(postgresql://user@host/dbname)",
    )
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    overrides = {"host": args.host, "port": args.port, "db": args.db, "log_level": args.log_level}
    try:
        settings = load(args.config, overrides)
    except ConfigError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
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
