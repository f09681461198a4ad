"""Token buckets: each key may spend `burst` tokens at once, refilled at `rate` per second.

Sans-I/O: the clock is injected, so tests step time by hand.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        """Spend one token if there is one; refill first for the time passed."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full_at(self) -> float:
        """When the bucket will be full again if nobody takes from it."""
        return self.updated + (self.burst - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key (an IP, a pubkey). A rate of 0 allows everything.

    At most `max_keys` buckets are kept: a full bucket carries no state worth keeping,
    so the least recently used ones are dropped first, full or not, and memory stays
    bounded however many keys an attacker invents.
    """

    def __init__(
        self, rate: float, burst: int, clock: Clock = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: Hashable) -> bool:
        if not self.enabled:
            return True
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, float(self.burst), now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        allowed = bucket.take(now)
        # After the take: the new bucket is no longer full, so it is kept.
        self._forget_oldest(now)
        return allowed

    def _forget_oldest(self, now: float) -> None:
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        # Drop buckets that have refilled: a new one would start full all the same.
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.full_at() > now:
                break
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
