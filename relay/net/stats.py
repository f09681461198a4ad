"""Live figures of a running relay: the database's size and event count, events per minute.

The web page polls them (`/stats`) and the metrics read them at scrape time. Counting the
events of a large database walks an index, so the figures are read at most every
`max_age` seconds however often they are asked for, and only when someone asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence, Sized

from relay.core.filters import Filter
from relay.store.base import EventStore, SaveOutcome, StatsSource, StoreStats

log = logging.getLogger("relay.stats")

STATS_MAX_AGE = 5.0
RATE_WINDOW_SECONDS = 60


class StoreFigures:
    """The store's figures, read again when the last reading is older than `max_age`."""

    def __init__(self, store: EventStore, max_age: float = STATS_MAX_AGE) -> None:
        self.store = store
        self.max_age = max_age
        self.latest: StoreStats | None = None
        self._read_at = -float("inf")
        self._reading = asyncio.Lock()

    async def refresh(self) -> StoreStats | None:
        """Fresh enough figures; None when the store could not give any yet."""
        async with self._reading:
            # Callers that waited for the lock find the reading just made.
            if time.monotonic() - self._read_at >= self.max_age:
                await self._read()
        return self.latest

    async def _read(self) -> None:
        try:
            self.latest = await read_store_stats(self.store)
        except Exception as exc:
            # Figures are for watching: a failed reading keeps the last one.
            log.warning("could not read the database's figures: %s", exc)
        self._read_at = time.monotonic()


async def read_store_stats(store: EventStore) -> StoreStats:
    if isinstance(store, StatsSource):
        return await store.stats()
    # A store without a cheaper way (the MemoryStore): count through the interface.
    events = await store.count([Filter()], int(time.time()))
    return StoreStats(events=events, bytes=0)


class EventRate:
    """Events stored in the last minute, kept as one count per second."""

    def __init__(self) -> None:
        self._seconds: deque[list[int]] = deque()

    def add(self, count: int, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += count
        else:
            self._seconds.append([second, count])
        self._forget(second)

    def last_minute(self, now: float | None = None) -> int:
        second = int(time.monotonic() if now is None else now)
        self._forget(second)
        return sum(count for _, count in self._seconds)

    def _forget(self, second: int) -> None:
        while self._seconds and self._seconds[0][0] <= second - RATE_WINDOW_SECONDS:
            self._seconds.popleft()

    def committed(self, outcomes: Sequence[SaveOutcome]) -> None:
        stored = sum(outcome is SaveOutcome.STORED for outcome in outcomes)
        if stored:
            self.add(stored)


async def live_figures(
    figures: StoreFigures, rate: EventRate, connections: Sized
) -> dict[str, object]:
    """The web page's figures (`/stats`); events is None until the store gave a count."""
    latest = await figures.refresh()
    return {
        "events": None if latest is None else latest.events,
        "connections": len(connections),
        "events_per_minute": rate.last_minute(),
    }
