"""Signature checks batched onto a small thread pool (coincurve releases the GIL)."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from relay.core.event import Event
from relay.core.signature import verify_many


class SignatureVerifier:
    def __init__(self, threads: int = 2, chunk: int = 64) -> None:
        self.chunk = chunk
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="verify")
        self._pending: list[tuple[Event, asyncio.Future[bool]]] = []

    async def verify(self, event: Event) -> bool:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._pending:
            # Everything that arrives in this turn of the loop is checked together.
            loop.call_soon(self._flush, loop)
        self._pending.append((event, future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.chunk):
            chunk = pending[start : start + self.chunk]
            work = loop.run_in_executor(self._executor, verify_many, [e for e, _ in chunk])
            work.add_done_callback(functools.partial(_resolve, chunk))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _resolve(
    chunk: list[tuple[Event, asyncio.Future[bool]]], done: asyncio.Future[list[bool]]
) -> None:
    if done.cancelled():
        for _, future in chunk:
            future.cancel()
        return
    error = done.exception()
    for index, (_, future) in enumerate(chunk):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[index])
