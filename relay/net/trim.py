"""Give freed memory back to the operating system after a heavy client leaves.

CPython frees the objects of a closed connection (its filters, the live index entries,
pages of results), but glibc's malloc keeps the freed pages of its heap for reuse, so the
relay's resident memory stays at its high-water mark. `malloc_trim(0)` returns every free
page of the heap; it costs a few milliseconds on a large heap, so it runs at most once per
interval, after connections end. Elsewhere than glibc it does nothing.
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


# mallopt's M_MMAP_THRESHOLD, and the size from which blocks are mapped on their own: above
# a page of results (query_page_bytes, 256 KiB, and the event crossing it), which every REQ
# allocates and frees; a mapping each time costs a fault per 4 KiB touched (about 50 us for
# a page of 100 events), and the heap reuses its memory instead.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024
# mallopt's M_TRIM_THRESHOLD: free memory at the top of the heap kept for reuse. Setting the
# mmap threshold fixes this one at glibc's 128 KiB, and a page freed at the top would give
# its memory back and fault it in again on the next REQ; the trimmer returns it all once
# connections end.
M_TRIM_THRESHOLD = -1
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _load_malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


def map_large_blocks() -> bool:
    """Blocks of 1 MiB and more (negentropy sets, large results) get a mapping of their own,
    returned to the OS when freed. glibc's default threshold grows after such a block is
    freed, and later ones then come from the heap, where they stay after the client goes."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mapped = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and mapped


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
