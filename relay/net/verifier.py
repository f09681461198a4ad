"""Signature checks batched per turn of the event loop, onto a child process (the default)
or a small thread pool (coincurve releases the GIL)."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from relay.child import ChildRequestError, ChildStartError
from relay.core.event import Event
from relay.core.signature import verify_many
from relay.net.verify_process import VerifyProcess


class SignatureCheckFailed(Exception):
    """The verify process died (or failed) holding this check: its outcome is unknown.
    The process logged it once; the caller answers its event without a traceback."""


class SignatureVerifier:
    def __init__(self, threads: int = 2, chunk: int = 64, process: bool = False) -> None:
        self.chunk = chunk
        self._process = VerifyProcess() if process else None
        self._executor = None if process else ThreadPoolExecutor(threads, "verify")
        self._pending: list[tuple[Event, asyncio.Future[bool]]] = []

    async def start(self) -> None:
        """Start the verify process before the first client can send an event: started in
        the background, its start-up competed with the first queries for the cores."""
        if self._process is None:
            return
        try:
            await self._process.start()
        except ChildStartError as error:
            raise OSError(f"cannot start the verify process: {error}") from error

    @property
    def process_restarts(self) -> int:
        """Times the verify process was started again after it died."""
        return 0 if self._process is None else self._process.restarts

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


def _resolve(
    chunk: list[tuple[Event, asyncio.Future[bool]]], done: asyncio.Future[list[bool]]
) -> None:
    if done.cancelled():
        for _, future in chunk:
            future.cancel()
        return
    error = done.exception()
    if isinstance(error, ChildRequestError):
        error = SignatureCheckFailed(str(error))
    for index, (_, future) in enumerate(chunk):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[index])
