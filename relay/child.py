"""A helper process the relay speaks to over the child's stdin and stdout.

The relay's event loop holds the GIL much of the time under load; work handed to threads
then waits for it at every step back from C (SQLite, libsecp256k1). A child process has an
interpreter, a GIL and a core of its own. Nothing else uses those pipes. Every message, both
ways, is a 4-byte big-endian length and the message itself: its first byte says what it is
(the child's module lists them), and a reply starting with b"E" is a failure whose message
follows: what a child's handler raises becomes one. Requests are written as they come and
answered in order, so the next request is already waiting in the pipe when the child
finishes one.

The child lives as long as its stdin stays open: a parent killed with -9 leaves it to finish
what it holds and exit. A child that dies fails the requests it held and is started again
for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("relay.child")

LENGTH = struct.Struct(">I")
READY = b"R"
FAILED = b"E"
# Seconds the child may take to finish what it holds and exit before it is killed.
CLOSE_SECONDS = 30.0


class ChildRequestError(Exception):
    """The child failed a request or died: its outcome is unknown or nothing was done."""


class ChildStartError(Exception):
    """The child could not get ready (its message says why)."""


class ChildProcess:
    """The parent's end of `python -m module *args`."""

    def __init__(self, module: str, *args: str) -> None:
        self.command = [sys.executable, "-m", module, *args]
        self.module = module
        self._child: asyncio.subprocess.Process | None = None
        self._replies: asyncio.Task[None] | None = None
        # One future per request written and not yet answered, oldest first.
        self._waiting: deque[asyncio.Future[bytes]] = deque()
        self._sending = asyncio.Lock()
        self._closed = False
        # Children started after the first one died (shown in the metrics).
        self.restarts = 0

    async def start(self) -> None:
        async with self._sending:
            await self._ensure_child()

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    async def call(self, parts: list[bytes], expect: bytes) -> bytes:
        """Send one request (the concatenation of `parts`) and return the child's reply
        after its first byte, which must be `expect`."""
        async with self._sending:
            if self._closed:
                raise ChildRequestError("closed")
            child = await self._ensure_child()
            assert child.stdin is not None
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            # Written in the order the futures are queued: replies come back in that order.
            self._waiting.append(reply)
            child.stdin.writelines([LENGTH.pack(sum(map(len, parts))), *parts])
        with contextlib.suppress(ConnectionError):
            # A child gone is seen by the reply reader, which fails `reply`.
            await child.stdin.drain()
        answer = await reply
        if answer[:1] == FAILED:
            raise ChildRequestError(answer[1:].decode(errors="replace"))
        if answer[:1] != expect:
            raise ChildRequestError(f"expected a {expect!r} reply, got {answer[:1]!r}")
        return answer[1:]

    async def close(self) -> None:
        """Let the child answer everything written, then wait for it to exit."""
        self._closed = True
        async with self._sending:
            child, self._child = self._child, None
        if child is None:
            return
        await end_process(child, CLOSE_SECONDS)
        if self._replies is not None:
            await self._replies

    async def _ensure_child(self) -> asyncio.subprocess.Process:
        """The running child, or a new one if there is none or it died."""
        replies_ended = self._replies is not None and self._replies.done()
        if self._child is None or self._child.returncode is not None or replies_ended:
            died = self._replies is not None
            if self._replies is not None:
                await self._replies
            self._child = await self._spawn()
            if died:
                self.restarts += 1
            self._replies = asyncio.create_task(self._read_replies(self._child))
        return self._child

    async def _spawn(self) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_environment(),
        )
        try:
            reply = await _receive(child)
        except asyncio.IncompleteReadError:
            reply = FAILED + b"the process exited at start"
        if reply[:1] != READY:
            await _reap(child)
            raise ChildStartError(reply[1:].decode(errors="replace"))
        return child

    async def _read_replies(self, child: asyncio.subprocess.Process) -> None:
        try:
            while self._waiting or not self._closed:
                reply = await _receive(child)
                waiter = self._waiting.popleft()
                if not waiter.done():  # a caller that was cancelled still had its answer
                    waiter.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await _reap(child)
            failed = 0
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(ChildRequestError("the process stopped"))
                    failed += 1
            if not self._closed:
                # Once per death: each caller answers its own request without a traceback.
                log.warning(
                    "%s (pid %d) exited with code %s; %d requests it held failed;"
                    " a new one starts with the next request",
                    self.module,
                    child.pid,
                    child.returncode,
                    failed,
                )


async def end_process(process: asyncio.subprocess.Process, seconds: float) -> None:
    """Close its stdin, its cue to finish; kill it if it has not exited within `seconds`."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _receive(child: asyncio.subprocess.Process) -> bytes:
    assert child.stdout is not None
    (size,) = LENGTH.unpack(await child.stdout.readexactly(LENGTH.size))
    return await child.stdout.readexactly(size)


async def _reap(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()
    await child.wait()


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this copy of the package importable."""
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


# The child's end.

Handler = Callable[[bytes], bytes]


def serve(prepare: Callable[[Sequence[str]], tuple[Handler, Callable[[], None]]]) -> int:
    """Run a child: `prepare(argv)` returns its request handler and its cleanup, or raises
    to refuse the start. Answers requests until stdin closes."""
    # Ctrl-C reaches the whole process group: the parent decides when this one ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    try:
        handle, cleanup = prepare(sys.argv[1:])
    except Exception as exc:
        _write_message(replies, FAILED + str(exc).encode(errors="replace"))
        return 1
    _write_message(replies, READY)
    while (message := _read_message(requests)) is not None:
        try:
            reply = handle(message)
        except Exception as exc:
            reply = FAILED + str(exc).encode(errors="replace")
        _write_message(replies, reply)
    cleanup()
    return 0


def _read_message(stream: BinaryIO) -> bytes | None:
    header = stream.read(LENGTH.size)
    if len(header) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(header)
    message = stream.read(size)
    return message if len(message) == size else None


def _write_message(stream: BinaryIO, message: bytes) -> None:
    stream.write(LENGTH.pack(len(message)) + message)
    stream.flush()
