"""The fair read scheduler (relay/store/readers.py) on its own: who gets the next reader.

FairQueue without asyncio; FairPool with plain strings for readers, its grants observed in
the order the waiting tasks wake up with a reader in hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from relay.store.readers import FairPool, FairQueue


def never_busy(owner: Hashable) -> bool:
    return False


def drain(queue: FairQueue[str], busy: set[str] | None = None) -> list[str]:
    served = []
    while (picked := queue.pop(lambda o: o in (busy or set()))) is not None:
        served.append(picked[1])
    return served


def test_round_robin_between_owners_fifo_within_each() -> None:
    queue: FairQueue[str] = FairQueue()
    for item in ("a1", "a2", "a3"):
        queue.push("a", item)
    queue.push("b", "b1")
    queue.push("b", "b2")
    queue.push("c", "c1")
    assert drain(queue) == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert not queue


def test_an_owner_holding_a_reader_goes_after_those_holding_none() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a2")
    queue.push("b", "b1")
    picked = queue.pop(lambda owner: owner == "a")
    assert picked == ("b", "b1")
    # Only busy owners wait: a free reader still serves them rather than idle.
    assert queue.pop(lambda owner: owner == "a") == ("a", "a2")
    assert queue.pop(never_busy) is None


def test_a_removed_request_is_never_served() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a1")
    queue.push("a", "a2")
    queue.push("b", "b1")
    assert queue.remove("a", "a1")
    assert queue.remove("b", "b1")
    assert not queue.remove("b", "b1")
    assert not queue.remove("c", "c1")
    assert queue.owners() == ["a"]
    assert drain(queue) == ["a2"]


async def test_another_owner_is_served_before_a_long_queue() -> None:
    pool = FairPool(["reader"])
    granted: list[str] = []

    async def read(owner: str, name: str) -> None:
        reader = await pool.acquire(owner)
        granted.append(name)
        pool.release(owner, reader)

    running = await pool.acquire("attacker")  # the attacker's first heavy query
    heavy = [asyncio.create_task(read("attacker", f"a{n}")) for n in range(1, 51)]
    await asyncio.sleep(0)
    light = asyncio.create_task(read("victim", "v"))
    await asyncio.sleep(0)
    assert pool.waiting == 51
    pool.release("attacker", running)
    await asyncio.gather(*heavy, light)
    assert granted == ["v", *(f"a{n}" for n in range(1, 51))]


async def test_one_reader_per_owner_while_others_wait() -> None:
    pool = FairPool(["r1", "r2"])
    first = await pool.acquire("a")
    # Nobody else waits: the second reader serves "a" again rather than idle.
    second = await pool.acquire("a")
    assert pool.held_by("a") == 2
    granted: list[tuple[str, str]] = []

    async def take(owner: str) -> None:
        granted.append((owner, await pool.acquire(owner)))

    tasks = [asyncio.create_task(take(owner)) for owner in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert pool.waiting == 3
    pool.release("a", first)  # "a" still holds one: "b", behind it in turn, goes first
    await asyncio.sleep(0)
    assert [owner for owner, _ in granted] == ["b"]
    pool.release("a", second)  # "a" has just been served: "c" goes before it
    await asyncio.sleep(0)
    assert [owner for owner, _ in granted] == ["b", "c"]
    pool.release("b", granted[0][1])
    await asyncio.gather(*tasks)
    assert [owner for owner, _ in granted] == ["b", "c", "a"]


async def test_a_cancelled_waiter_is_dropped_and_never_granted() -> None:
    pool = FairPool(["reader"])
    reader = await pool.acquire("a")
    cancelled = asyncio.create_task(pool.acquire("b"))
    served = asyncio.create_task(pool.acquire("c"))
    await asyncio.sleep(0)
    assert pool.waiting == 2
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert pool.waiting == 1
    pool.release("a", reader)
    assert await served == "reader"
    assert pool.held_by("b") == 0
    pool.release("c", "reader")
    assert pool.free == 1


async def test_a_grant_racing_a_cancellation_is_passed_on() -> None:
    pool = FairPool(["reader"])
    reader = await pool.acquire("a")
    unlucky = asyncio.create_task(pool.acquire("b"))
    await asyncio.sleep(0)
    pool.release("a", reader)  # grants "b" ...
    unlucky.cancel()  # ... which is cancelled before it wakes up
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    assert pool.free == 1
    assert pool.held_by("b") == 0
    assert await pool.acquire("c") == "reader"
