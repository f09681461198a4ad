"""The storage interface every backend implements, and the outcome of a save."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from relay.core.event import Event
from relay.core.filters import Filter


class QueryTimeout(Exception):
    """A query ran past the store's time limit and was interrupted."""


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

    async def query(self, filters: Sequence[Filter], now: int) -> list[bytes]:
        """Raw JSON of stored, unexpired matches: newest first, ties by id, per-filter limit."""
        ...

    async def count(self, filters: Sequence[Filter], now: int) -> int: ...

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

    async def purge_expired(self, now: int) -> int: ...

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
