"""The reference store: everything in dicts. A test double and the oracle for SQL."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Hashable, Sequence

from relay.core import vanish
from relay.core.event import Event, newer
from relay.core.filters import Filter
from relay.store import rules
from relay.store.base import (
    PAGE_BYTES,
    PAGE_EVENTS,
    Purged,
    SaveOutcome,
    TooManyItems,
    check_page_bounds,
    split_pages,
)

Address = tuple[int, str, str]


def sort_key(event: Event) -> tuple[int, str]:
    """Newest first, ties by lowest id."""
    return (-event.created_at, event.id)


def is_live(event: Event, now: int) -> bool:
    expiration = event.expiration
    return expiration is None or expiration > now


class MemoryStore:
    def __init__(self) -> None:
        self.events: dict[str, Event] = {}
        self._by_address: dict[Address, str] = {}
        # (event id, pubkey of the deletion request naming it): see rules.deleters.
        self._deleted_ids: set[tuple[str, str]] = set()
        self._deleted_addresses: dict[Address, int] = {}
        # NIP-62: pubkey -> created_at of its latest request to vanish.
        self._vanished: dict[str, int] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def intact(self) -> bool:
        return True

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        return [self._save(event) for event in events]

    def _save(self, event: Event) -> SaveOutcome:
        if event.id in self.events:
            return SaveOutcome.DUPLICATE
        if any((event.id, key) in self._deleted_ids for key in rules.deleters(event)):
            return SaveOutcome.DELETED
        if vanish.erased_by(event, self._vanished):
            return SaveOutcome.VANISHED
        if event.kind == vanish.VANISH_KIND:
            self._vanish(event)
        address = event.address
        if address is not None:
            until = self._deleted_addresses.get(address)
            if until is not None and rules.address_tombstone_applies(event, until):
                return SaveOutcome.DELETED
            current_id = self._by_address.get(address)
            if current_id is not None:
                if not newer(event, self.events[current_id]):
                    return SaveOutcome.STALE
                self._remove(current_id)
            self._by_address[address] = event.id
        self.events[event.id] = event
        if event.kind == rules.DELETION_KIND:
            self._apply_deletion(event)
        return SaveOutcome.STORED

    def _apply_deletion(self, deletion: Event) -> None:
        targets = rules.deletion_targets(deletion)
        for target_id in targets.ids:
            target = self.events.get(target_id)
            if target is not None and rules.tombstone_applies(target, deletion.pubkey):
                self._remove(target_id)
            self._deleted_ids.add((target_id, deletion.pubkey))
        for kind, d in targets.addresses:
            address = (kind, deletion.pubkey, d)
            current_id = self._by_address.get(address)
            if current_id is not None and rules.address_tombstone_applies(
                self.events[current_id], targets.until
            ):
                self._remove(current_id)
            previous = self._deleted_addresses.get(address, -1)
            self._deleted_addresses[address] = max(previous, targets.until)

    def _vanish(self, request: Event) -> None:
        self._vanished[request.pubkey] = request.created_at
        # Only this request: earlier ones of other authors are kept, as they asked.
        this_one = {request.pubkey: request.created_at}
        erased = [e.id for e in self.events.values() if vanish.erased_by(e, this_one)]
        for event_id in erased:
            self._remove(event_id)

    def _remove(self, event_id: str) -> None:
        event = self.events.pop(event_id)
        address = event.address
        if address is not None and self._by_address.get(address) == event_id:
            del self._by_address[address]

    def _matching(self, f: Filter, now: int) -> list[Event]:
        if not f.can_match:
            return []
        found = sorted(
            (e for e in self.events.values() if f.matches(e) and is_live(e, now)), key=sort_key
        )
        return found if f.limit is None else found[: f.limit]

    async def query(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> list[bytes]:
        found = {e.id: e for f in filters for e in self._matching(f, now)}
        return [e.raw for e in sorted(found.values(), key=sort_key)]

    async def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        *,
        owner: Hashable | None = None,
        page_events: int = PAGE_EVENTS,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        """query() cut into pages: in memory there is nothing to share or interrupt."""
        check_page_bounds(page_events, page_bytes)
        for page in split_pages(await self.query(filters, now), page_events, page_bytes):
            yield page

    async def count(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> int:
        unlimited = [f.with_limit(None) for f in filters]
        return len({e.id for f in unlimited for e in self._matching(f, now)})

    async def negentropy_items(
        self, filters: Sequence[Filter], now: int, max_items: int | None = None
    ) -> list[tuple[int, bytes]]:
        found = {e.id: e for f in filters for e in self._matching(f, now)}
        if max_items is not None and len(found) > max_items:
            raise TooManyItems(max_items)
        return sorted((e.created_at, bytes.fromhex(e.id)) for e in found.values())

    async def purge_expired(self, now: int) -> Purged:
        expired = [e.id for e in self.events.values() if not is_live(e, now)]
        for event_id in expired:
            self._remove(event_id)
        return Purged(expired=len(expired))
