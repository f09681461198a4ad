"""The storage interface every backend implements, the outcome of a save, and paging."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from relay.core.errors import Blocked, Restricted
from relay.core.event import Event
from relay.core.filters import Filter
from relay.core.moderation import EVENT_BANNED, PUBKEY_BANNED, PUBKEY_NOT_ALLOWED

# Default bounds of one page of query_pages: events, and bytes of raw JSON (a page ends
# after the event that crosses it). A page is one slice on a reader: large enough that
# the usual REQ (limit 500 or less) is one slice, small enough that a query of big events
# hands its reader back after about a mebibyte.
PAGE_EVENTS = 500
PAGE_BYTES = 1 << 20


class QueryTimeout(Exception):
    """A query (one slice of it, for query_pages) ran past the store's time limit."""


@dataclass(frozen=True, slots=True)
class Purged:
    """What one purge deleted, by reason: expired (NIP-40), past its kind's age
    (retention_max_age), or the oldest prunable events while over storage_budget_bytes."""

    expired: int = 0
    aged: int = 0
    over_budget: int = 0

    @property
    def pruned(self) -> int:
        """Deleted by the retention rules (age or budget)."""
        return self.aged + self.over_budget

    @property
    def total(self) -> int:
        return self.expired + self.aged + self.over_budget

    def __add__(self, other: Purged) -> Purged:
        return Purged(
            self.expired + other.expired,
            self.aged + other.aged,
            self.over_budget + other.over_budget,
        )


class TooManyItems(Exception):
    """More events match than the caller's cap (NIP-77: `blocked:`, the filter is too big)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"more than {cap} events match")
        self.cap = cap


class SaveOutcome(Enum):
    """What became of one event handed to `save_many`, and the OK it earns."""

    STORED = (True, "")
    DUPLICATE = (True, "duplicate: already have this event")
    # An older (or same-second, higher-id) version of a replaceable/addressable event.
    STALE = (False, "duplicate: have a newer version of this event")
    DELETED = (False, "blocked: this event was deleted by its author")
    # NIP-62: covered by a request to vanish (its author's, or a gift wrap to that author).
    VANISHED = (False, "blocked: erased by a request to vanish")
    # NIP-86, caught by the store itself (PostgreSQL: a ban another instance made that
    # this one had not heard of yet); the same answers as ModerationState.check's.
    BANNED_EVENT = (False, Blocked(EVENT_BANNED).reason)
    BANNED_PUBKEY = (False, Blocked(PUBKEY_BANNED).reason)
    NOT_ALLOWED = (False, Restricted(PUBKEY_NOT_ALLOWED).reason)

    @property
    def accepted(self) -> bool:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    @property
    def broadcast(self) -> bool:
        return self is SaveOutcome.STORED


class EventStore(Protocol):
    async def open(self) -> None: ...

    async def save_many(self, events: Sequence[Event], now: int) -> list[SaveOutcome]:
        """Apply events in order in one durable transaction; returns once committed."""
        ...

    async def query(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> list[bytes]:
        """Raw JSON of stored, unexpired matches: newest first, ties by id, each filter's
        limit, an event several filters match once. The pages of query_pages, joined."""
        ...

    def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        *,
        owner: Hashable | None = None,
        page_events: int = PAGE_EVENTS,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        """query()'s events in the same order, page by page: at most `page_events` events
        and about `page_bytes` bytes a page (it ends after the event that crosses it); never
        an empty page. Reads of different owners (the relay passes its connection; None is
        an owner of its own) share the readers fairly, page by page. Closing the iterator
        or cancelling its reader stops the read at once."""
        ...

    async def count(
        self, filters: Sequence[Filter], now: int, *, owner: Hashable | None = None
    ) -> int:
        """Distinct stored, unexpired events matching any filter; limits ignored."""
        ...

    async def negentropy_items(
        self, filters: Sequence[Filter], now: int, max_items: int | None = None
    ) -> list[tuple[int, bytes]]:
        """NIP-77: (created_at, 32-byte id) of the live events matching any filter.

        Ascending by (created_at, id), each event once, read from one snapshot. A filter's
        `limit` is honoured as REQ honours it (its newest `limit` events, ties by id), since
        NIP-77 leaves it open and strfry does the same; without one, every match. Raises
        TooManyItems when more than `max_items` match.
        """
        ...

    async def purge_expired(self, now: int) -> Purged:
        """Delete expired events, and one batch of what the retention rules prune."""
        ...

    async def close(self) -> None: ...

    def intact(self) -> bool:
        """Whether the storage is still the one opened (a file deleted or replaced under a
        running relay is not). Cheap and synchronous: every /health request asks."""
        ...


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What an operator watches: events held (expired ones not yet purged included) and
    bytes on disk (0 for a store without files)."""

    events: int
    bytes: int


@runtime_checkable
class StatsSource(Protocol):
    """A store that reads its own figures more cheaply than a COUNT over every event."""

    async def stats(self) -> StoreStats: ...

    @property
    def process_restarts(self) -> int:
        """Times the store's own child process was started again after it died."""
        ...


def check_page_bounds(page_events: int, page_bytes: int) -> None:
    if page_events < 1 or page_bytes < 1:
        raise ValueError("a page holds at least one event and one byte")


def split_pages(raws: Iterable[bytes], page_events: int, page_bytes: int) -> Iterator[list[bytes]]:
    """Cut a result into pages under the bounds of query_pages (a store that has it whole)."""
    page: list[bytes] = []
    size = 0
    for raw in raws:
        page.append(raw)
        size += len(raw)
        if len(page) >= page_events or size >= page_bytes:
            yield page
            page, size = [], 0
    if page:
        yield page


@runtime_checkable
class SharedStore(Protocol):
    """A store other relay instances write to as well (PostgreSQL): the events they store
    or announce come back to this instance, to be sent to its live subscribers."""

    async def follow(self, deliver: Callable[[Event], None]) -> None:
        """From now until close(), hand each event another instance stored to `deliver`,
        once, after its commit; returns once that is in place."""
        ...

    async def announce(self, event: Event) -> None:
        """Pass an ephemeral event (never stored) on to the other instances."""
        ...
