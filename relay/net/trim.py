"""Give freed memory back to the operating system after a heavy client leaves.

CPython frees the objects of a closed connection (its filters, the live index entries,
pages of results), but glibc's malloc keeps the freed pages of its heap for reuse, so the
relay's resident memory stays at its high-water mark. `malloc_trim(0)` returns every free
page of the heap; it costs a few milliseconds on a large heap, so it runs at most once per
interval, after a connection that held much has ended. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("relay.trim")
# Seconds between two trims at most once; a burst of disconnects costs one trim.
TRIM_INTERVAL = 2.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class MemoryTrimmer:
    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self._trim = _load_malloc_trim()
        self._scheduled: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def request(self) -> None:
        """Trim within `interval` seconds (once, however many ask meanwhile)."""
        if self._trim is None or self._scheduled is not None:
            return
        loop = asyncio.get_running_loop()
        self._scheduled = loop.call_later(self.interval, self._run)

    def _run(self) -> None:
        self._scheduled = None
        if self._trim is not None:
            self._trim(0)

    def cancel(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
