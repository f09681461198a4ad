"""The single writer: everything queued goes into one transaction, then each waiter hears.

Group commit is what makes durable ingest fast: one fsync covers the whole batch, and
no event is acknowledged before the commit that holds it has returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from relay.core.event import Event
from relay.store.base import EventStore, Purged, SaveOutcome

log = logging.getLogger("relay.writer")

Pending = tuple[Event, "asyncio.Future[SaveOutcome]"]
# Called after each commit with its outcomes and the seconds it took (metrics, figures).
CommitHook = Callable[[Sequence[SaveOutcome], float], None]
# Called after each purge that deleted anything (metrics).
PurgeHook = Callable[[Purged], None]


class WriterClosed(Exception):
    """The relay is shutting down and takes no more events."""


class StoreFailure(Exception):
    """The batch holding the event could not be committed; nothing of it was stored."""


class Writer:
    def __init__(
        self,
        store: EventStore,
        *,
        max_batch: int = 1000,
        max_in_flight: int = 2,
        purge_interval: float = 60.0,
        prune_batch: int = 0,
        clock: Callable[[], float] = time.time,
        on_commit: CommitHook | None = None,
        on_purge: PurgeHook | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        # Batches handed to the store and not yet committed: with two, the store finds the
        # next batch waiting as soon as it has committed one.
        self.max_in_flight = max_in_flight
        self.purge_interval = purge_interval
        # A purge that removed this many events may have left more: the next one runs
        # after the next batch of saves instead of a purge_interval later (0: never).
        self.prune_batch = prune_batch
        self.clock = clock
        self.on_commit = on_commit
        self.on_purge = on_purge
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_purge = 0.0
        self.batches = 0
        # When the latest commit failed (clock time), None once one has succeeded since.
        self.failed_at: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="writer")

    async def save(self, event: Event) -> SaveOutcome:
        if self._closing:
            raise WriterClosed
        future: asyncio.Future[SaveOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        return await future

    def failing(self, window: float) -> bool:
        """The latest commit failed, less than `window` seconds ago.

        An idle relay does not learn that writes work again until one is tried: after the
        window it counts as healthy again, and the next failure says otherwise.
        """
        return self.failed_at is not None and self.clock() - self.failed_at < window

    async def close(self) -> None:
        """Take no more events, commit everything already queued, then stop."""
        if self._closing:
            return
        self._closing = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    def _take_batch(self, first: Pending) -> tuple[list[Pending], bool]:
        batch = [first]
        while len(batch) < self.max_batch and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self) -> None:
        committing: set[asyncio.Task[None]] = set()
        while True:
            if len(committing) >= self.max_in_flight:
                # Events meanwhile queue up and go together in the next batch.
                await asyncio.wait(committing, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                # Queued events go first: a purge that is due (pruning a backlog batch by
                # batch keeps one due) then runs beside their commit, not instead of it.
                first = (
                    self._queue.get_nowait()
                    if not self._queue.empty()
                    else await asyncio.wait_for(self._queue.get(), self._until_purge())
                )
            except TimeoutError:
                # An idle relay purges too: expired events must not outlive their time.
                await self._maybe_purge()
                continue
            if first is None:
                break
            batch, stop = self._take_batch(first)
            # The store takes batches in the order they are started and commits them so.
            task = asyncio.create_task(self._commit(batch))
            committing.add(task)
            task.add_done_callback(committing.discard)
            await self._maybe_purge()
            if stop:
                break
        if committing:
            await asyncio.wait(committing)

    async def _commit(self, batch: list[Pending]) -> None:
        now = int(self.clock())
        started = time.perf_counter()
        try:
            outcomes = await self.store.save_many([event for event, _ in batch], now)
        except Exception as exc:
            log.error("could not commit a batch of %d events: %s", len(batch), exc)
            self.failed_at = self.clock()
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreFailure(str(exc)))
            return
        self.batches += 1
        self.failed_at = None
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        if self.on_commit is not None:
            self.on_commit(outcomes, time.perf_counter() - started)

    def _until_purge(self) -> float | None:
        if self.purge_interval <= 0:
            return None
        return max(self._next_purge - self.clock(), 0.0)

    async def _maybe_purge(self) -> None:
        now = self.clock()
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        try:
            purged = await self.store.purge_expired(int(now))
        except Exception as exc:
            log.error("could not purge expired events: %s", exc)
            return
        if purged.total:
            log.info(
                "purged %d expired events, pruned %d past their kind's age and %d over the"
                " storage budget",
                purged.expired,
                purged.aged,
                purged.over_budget,
            )
            if self.on_purge is not None:
                self.on_purge(purged)
        if self.prune_batch and purged.pruned >= self.prune_batch:
            self._next_purge = now
