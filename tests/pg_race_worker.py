"""One writer of the PostgreSQL race test, as a process of its own (a relay instance's store).

    python -m tests.pg_race_worker URL

Opens a PostgresStore on URL and prints `ready`. Each line on stdin is a JSON list of
batches (each a list of raw events); they are saved in order, one save_many each, and
the outcomes' names come back as one JSON line (a list per batch). Ends at end of input.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from relay.core.event import event_from_raw
from relay.store.postgres import PostgresStore

NOW = 1_700_000_000


async def serve(url: str) -> None:
    store = PostgresStore(url, readers=1)
    await store.open()
    try:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            answers = []
            for batch in orjson.loads(line):
                events = [event_from_raw(raw.encode()) for raw in batch]
                outcomes = await store.save_many(events, NOW)
                answers.append([outcome.name for outcome in outcomes])
            print(orjson.dumps(answers).decode(), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
