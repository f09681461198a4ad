"""A connection's reads of stored events: REQ pages, NIP-45 counts and NIP-77 item sets.

Pages are filtered for NIP-42 privacy by the session, event by event; a count or an item
set has no events to filter, so here private kinds count only where a reader is a party.
A finished query's latency goes to the metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence, Set

from relay.core import auth
from relay.core.filters import Filter
from relay.core.negentropy import MIN_FRAME_SIZE_LIMIT, NegentropyServer, Storage
from relay.net.metrics import Metrics
from relay.store.base import EventStore


class StoredReads:
    def __init__(
        self,
        store: EventStore,
        *,
        dm_kinds: frozenset[int],
        page_events: int,
        max_req_results: int,
        max_neg_items: int,
        max_message_length: int,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.dm_kinds = dm_kinds
        self.page_events = page_events
        self.max_req_results = max_req_results
        self.max_neg_items = max_neg_items
        # A NEG-MSG reply in hex inside its frame stays under max_message_length.
        self.neg_frame_limit = max(MIN_FRAME_SIZE_LIMIT, (max_message_length - 256) // 2)
        self.metrics = metrics

    def query_pages(
        self, filters: tuple[Filter, ...], owner: object, page_bytes: int
    ) -> AsyncGenerator[list[bytes], None]:
        """Stored matches page by page, each page read in `owner`'s fair turn for a reader
        and only when asked for (the session caps the REQ as a whole). The store's own
        generator: the caller times its waits for pages and reports them to query_finished
        (one generator layer a page, not two)."""
        return self.store.query_pages(
            filters,
            int(time.time()),
            owner=owner,
            page_events=self.page_events,
            page_bytes=page_bytes,
        )

    def query_finished(self, filters: tuple[Filter, ...], found: int, reading: float) -> None:
        """A REQ's stored part ended (done, capped, failed or cancelled): `found` events
        read in `reading` seconds spent waiting for the store, not for the client."""
        self.metrics.query_done(reading, limit_hit(filters, found, self.max_req_results))

    async def count(
        self, filters: Sequence[Filter], readers: Set[str], owner: object = None
    ) -> int:
        """NIP-45: distinct stored events matching any filter that `readers` may read.

        Private kinds count only where a reader is their author or tagged recipient:
        all matches, minus the private ones, plus the private ones readers may see.
        """
        now = int(time.time())
        total = await self.store.count(filters, now, owner=owner)
        dm_kinds = self.dm_kinds
        if not auth.could_return_private(filters, dm_kinds):
            return total
        private = await self.store.count(auth.private_parts(filters, dm_kinds), now, owner=owner)
        if not private:
            return total
        readable = auth.readable_parts(filters, readers, dm_kinds)
        allowed = await self.store.count(readable, now, owner=owner) if readable else 0
        # Three reads: a commit between them may move the figures by what it added.
        return max(total - private + allowed, 0)

    async def negentropy_items(
        self, filter: Filter, readers: frozenset[str], owner: object
    ) -> list[tuple[int, bytes]]:
        """NIP-77: the (created_at, id) set of `filter` that `readers` may see. Private
        kinds count only where a reader is a party: all, minus the private, plus the readable."""
        now, cap = int(time.time()), self.max_neg_items
        items = await self.store.negentropy_items([filter], now, cap)
        dm_kinds = self.dm_kinds
        if not auth.could_return_private([filter], dm_kinds):
            return items
        private = auth.private_parts([filter], dm_kinds)
        hidden = set(await self.store.negentropy_items(private, now, cap))
        if not hidden:
            return items
        readable = auth.readable_parts([filter], readers, dm_kinds)
        shown = set(await self.store.negentropy_items(readable, now, cap)) if readable else set()
        return [item for item in items if item not in hidden or item in shown]

    def negentropy_server(self, items: list[tuple[int, bytes]]) -> NegentropyServer:
        return NegentropyServer(Storage(items), self.neg_frame_limit)


def limit_hit(filters: Sequence[Filter], found: int, cap: int) -> bool:
    """Whether a REQ's query returned all it could: the REQ's cap, or every filter's
    limit (filters overlap rarely enough for their sum to tell)."""
    if found >= cap:
        return True
    limits = [f.limit for f in filters]
    return None not in limits and found >= sum(limit or 0 for limit in limits)
