"""Signature checks batched per turn of the event loop, onto a child process (the default)
or a small thread pool (coincurve releases the GIL)."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from relay.core.event import Event
from relay.core.signature import verify_many
from relay.net.verify_process import VerifyProcess

log = logging.getLogger("relay.verify")


class SignatureVerifier:
    def __init__(self, threads: int = 2, chunk: int = 64, process: bool = False) -> None:
        self.chunk = chunk
        self._process = VerifyProcess() if process else None
        self._executor = None if process else ThreadPoolExecutor(threads, "verify")
        self._pending: list[tuple[Event, asyncio.Future[bool]]] = []
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the child in the background: the first check waits for it if need be."""
        if self._process is not None:
            self._starting = asyncio.create_task(self._process.start())
            self._starting.add_done_callback(_log_start_failure)

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
            events = [e for e, _ in chunk]
            work: asyncio.Future[list[bool]] = (
                loop.create_task(self._process.verify_many(events))
                if self._process is not None
                else loop.run_in_executor(self._executor, verify_many, events)
            )
            work.add_done_callback(functools.partial(_resolve, chunk))

    async def close(self) -> None:
        if self._process is not None:
            await self._process.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _log_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The first check tries again, and refuses its events with `error:` if it fails.
        log.warning("could not start the verify process: %s", task.exception())


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
