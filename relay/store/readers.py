"""Fair sharing of the store's read connections between owners (the relay's connections).

`FairQueue` decides, without asyncio, which waiting request a free reader goes to: round
robin between the owners that have requests waiting, first come first served within an
owner, and an owner that holds a reader (or is handing one back) goes after every owner
that holds none.
`FairPool` is the asyncio side: `acquire(owner)` waits for a reader, `release` hands it on.

A request cancelled while it waits leaves the queue and never runs. What a reader does
while it is held (and how it is interrupted) is the store's business, not this module's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class FairQueue(Generic[T]):
    """Requests waiting for a reader, one FIFO per owner, owners in round-robin order."""

    def __init__(self) -> None:
        # Insertion order is the rotation: an owner served goes to the back.
        self._waiting: dict[Hashable, deque[T]] = {}

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def owners(self) -> list[Hashable]:
        """Owners with requests waiting, in the order they would next be served."""
        return list(self._waiting)

    def push(self, owner: Hashable, item: T) -> None:
        queue = self._waiting.get(owner)
        if queue is None:
            self._waiting[owner] = deque((item,))
        else:
            queue.append(item)

    def remove(self, owner: Hashable, item: T) -> bool:
        """Drop a waiting request; False when it is no longer waiting."""
        queue = self._waiting.get(owner)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        if not queue:
            del self._waiting[owner]
        return True

    def pop(self, busy: Callable[[Hashable], bool]) -> tuple[Hashable, T] | None:
        """The next request to serve, or None when nothing waits.

        An owner for which `busy` is true (it holds a reader already) is passed over while
        another owner waits; when every waiting owner is busy the first of them is served,
        so a free reader never idles while work waits.
        """
        if not self._waiting:
            return None
        # Busy owners number at most the readers, so this scan is short.
        owner = next((o for o in self._waiting if not busy(o)), None)
        if owner is None:
            owner = next(iter(self._waiting))
        queue = self._waiting.pop(owner)
        item = queue.popleft()
        if queue:
            self._waiting[owner] = queue
        return owner, item


class FairPool(Generic[R]):
    """Readers handed out fairly between owners; see FairQueue for the order."""

    def __init__(self, resources: Iterable[R] = ()) -> None:
        self._free: list[R] = list(resources)
        self._queue: FairQueue[asyncio.Future[R]] = FairQueue()
        self._held: dict[Hashable, int] = {}

    def add(self, resource: R) -> None:
        """One more reader (while the store opens)."""
        self._free.append(resource)
        self._dispatch()

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def held_by(self, owner: Hashable) -> int:
        return self._held.get(owner, 0)

    async def acquire(self, owner: Hashable) -> R:
        if self._free and not self._queue:
            return self._grant(owner)
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.push(owner, waiter)
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            if not self._queue.remove(owner, waiter) and _granted(waiter):
                # Granted in the same tick as the cancellation: pass the reader on.
                self.release(owner, waiter.result())
            raise

    def release(self, owner: Hashable, resource: R) -> None:
        self._free.append(resource)
        # Still counted as holding it: whoever else waits goes first (the owner's turn
        # has just been served, even when that turn was granted without waiting).
        self._dispatch()
        held = self._held[owner] - 1
        if held:
            self._held[owner] = held
        else:
            del self._held[owner]

    def _grant(self, owner: Hashable) -> R:
        self._held[owner] = self._held.get(owner, 0) + 1
        return self._free.pop()

    def _dispatch(self) -> None:
        while self._free:
            picked = self._queue.pop(self._held.__contains__)
            if picked is None:
                return
            owner, waiter = picked
            if not waiter.done():  # a cancelled waiter is skipped, not served
                waiter.set_result(self._grant(owner))


def _granted(waiter: asyncio.Future[R]) -> bool:
    return waiter.done() and not waiter.cancelled()
