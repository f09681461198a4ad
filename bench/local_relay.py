"""rust-nostr's LocalRelay (PyPI nostr-sdk) on 127.0.0.1:PORT until SIGTERM: the reference."""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys

import nostr_sdk


async def serve(port: int) -> None:
    builder = (
        nostr_sdk.LocalRelayBuilder()
        .addr("127.0.0.1")
        .port(port)
        .max_connections(20_000)
        # Its default rate limit would refuse a benchmark's load.
        .rate_limit(nostr_sdk.RateLimit(max_reqs=1_000, notes_per_minute=1_000_000_000))
    )
    relay = builder.build()
    started = relay.run()
    if inspect.isawaitable(started):
        await started
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    relay.shutdown()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
