"""One client connection: the asyncio driver of its sans-I/O `Session`.

It reads frames, feeds them to the session, and carries out the actions that come back
against a narrow interface (`RelayServices`): ingest an event, verify an AUTH, read stored
events page by page, count, watch and unwatch live filters. Every protocol decision and
every reply string is the session's; this module only does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.core import messages
from relay.core.event import Event
from relay.core.filters import Filter, most_results
from relay.core.negentropy import NegentropyError, NegentropyServer
from relay.core.session import (
    INTERNAL_ERROR,
    OVERFLOW,
    Action,
    Authenticate,
    CancelQuery,
    Ingest,
    OpenNegentropy,
    QueryFailure,
    Reconcile,
    Refused,
    Send,
    Session,
    StartCount,
    StartQuery,
    Unwatch,
    Watch,
)
from relay.core.write_policy import Source
from relay.net.outbox import Flusher, Outbox, OutboxMeter
from relay.net.verifier import SignatureCheckFailed
from relay.store.base import QueryTimeout, TooManyItems

log = logging.getLogger("relay.connection")

# EVENTs one connection may have waiting for their OK before the relay stops reading it.
MAX_EVENTS_IN_FLIGHT = 256
INTERNAL_ERROR_NOTICE = messages.notice(INTERNAL_ERROR)
OVERFLOW_NOTICE = messages.notice(OVERFLOW)
# Seconds the overflow NOTICE may take to reach the socket's buffer before the close.
OVERFLOW_NOTICE_SECONDS = 1.0


class RelayServices(Protocol):
    """What a connection needs of the relay, and nothing more."""

    flusher: Flusher
    outbox_meter: OutboxMeter

    async def ingest(self, event: Event, source: Source) -> tuple[bool, str]: ...

    async def verify(self, event: Event) -> bool: ...

    def query_pages(
        self, filters: tuple[Filter, ...], owner: object, page_bytes: int
    ) -> AsyncGenerator[list[bytes], None]: ...

    def query_finished(self, filters: tuple[Filter, ...], found: int, reading: float) -> None: ...

    async def count(
        self, filters: tuple[Filter, ...], readers: frozenset[str], owner: object
    ) -> int: ...

    async def negentropy_items(
        self, filter: Filter, readers: frozenset[str], owner: object
    ) -> list[tuple[int, bytes]]: ...

    def negentropy_server(self, items: list[tuple[int, bytes]]) -> NegentropyServer: ...

    def refused(self, what: str, reason: str) -> None: ...

    def watch(self, owner: ClientConnection, sub_id: str, filters: tuple[Filter, ...]) -> None: ...

    def unwatch(self, owner: ClientConnection, sub_id: str) -> None: ...


class ClientConnection:
    def __init__(
        self,
        ws: ServerConnection,
        services: RelayServices,
        session: Session,
        *,
        peer: str,
        ip: str,
        max_outbox_bytes: int,
        page_bytes: int,
        max_event_size: int,
        max_result_bytes: int,
    ) -> None:
        self.ws = ws
        self.services = services
        self.session = session
        self.peer = peer
        self.ip = ip
        self.outbox = Outbox(
            ws, max_outbox_bytes, self._on_overflow, services.flusher, services.outbox_meter
        )
        # A page fits a quarter of the outbox; the room it may need is its bytes plus
        # the event that crosses them.
        self.page_bytes = min(page_bytes, max_outbox_bytes // 4)
        self.page_reserve = self.page_bytes + max_event_size
        self.max_result_bytes = max_result_bytes
        self._in_flight: set[asyncio.Task[None]] = set()
        self._queries: dict[int, asyncio.Task[None]] = {}
        self.events_received = 0
        self.last_frame_at = time.monotonic()

    async def run(self) -> None:
        sender = asyncio.create_task(self.outbox.run())
        self._do(self.session.start())
        try:
            async for frame in self.ws:
                await self.handle(frame)
        except ConnectionClosed:
            pass
        finally:
            self._do(self.session.end())
            if self._in_flight:
                # Their events are queued for the writer and will be stored all the same.
                await asyncio.wait(self._in_flight)
            sender.cancel()

    def settled(self, quiet: float) -> bool:
        """Every frame read is answered and sent, and none came in the last `quiet` s.
        Stored results still streaming are not waited for: they acknowledge nothing."""
        return (
            not self._in_flight
            and self.outbox.idle
            and time.monotonic() - self.last_frame_at >= quiet
        )

    async def handle(self, frame: str | bytes) -> None:
        self.last_frame_at = time.monotonic()
        try:
            actions = self.session.receive(frame, time.time())
        except Exception:
            # Our own bug: the client hears about it and the connection goes on.
            log.exception("could not handle a frame from %s", self.peer)
            self.outbox.put(INTERNAL_ERROR_NOTICE)
            return
        self._do(actions)
        if len(self._in_flight) >= MAX_EVENTS_IN_FLIGHT:
            # Stop reading until one is answered: TCP pushes back on the client.
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)

    def deliver(self, sub_id: str, event: Event, private: bool) -> None:
        """A live event for one of this connection's subscriptions (from the live index)."""
        frame = self.session.live(sub_id, event, private)
        if frame is not None:
            self.outbox.put(frame)

    # --- carrying out the session's actions ----------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        # By type in one dict lookup rather than a chain of isinstance checks.
        for action in actions:
            _ACTIONS[type(action)](self, action)

    def _send(self, action: Send) -> None:
        self.outbox.put_many(action.frames)

    def _refused(self, action: Refused) -> None:
        self.services.refused(action.what, action.reason)

    def _watch(self, action: Watch) -> None:
        self.services.watch(self, action.sub_id, action.filters)

    def _unwatch(self, action: Unwatch) -> None:
        self.services.unwatch(self, action.sub_id)

    def _start_query(self, action: StartQuery) -> None:
        task = asyncio.create_task(self._query(action.query_id, action.filters))
        self._queries[action.query_id] = task

    def _start_count(self, action: StartCount) -> None:
        self._queries[action.query_id] = asyncio.create_task(self._count(action))

    def _cancel_query(self, action: CancelQuery) -> None:
        self._cancel(action.query_id)

    def _start_ingest(self, action: Ingest) -> None:
        self.events_received += 1
        self._start(self._ingest(action.event))

    def _start_authenticate(self, action: Authenticate) -> None:
        self._start(self._authenticate(action.event))

    def _open_negentropy(self, action: OpenNegentropy) -> None:
        self._queries[action.query_id] = asyncio.create_task(self._neg_open(action))

    def _start_reconcile(self, action: Reconcile) -> None:
        self._queries[action.query_id] = asyncio.create_task(self._reconcile(action))

    def _start(self, work: Coroutine[None, None, None]) -> None:
        """Run `work` as a task the connection waits for before it ends (and at shutdown)."""
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _cancel(self, query_id: int) -> None:
        task = self._queries.pop(query_id, None)
        # A query that ends itself (its cap reached) is not cancelled from inside.
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _ingest(self, event: Event) -> None:
        try:
            accepted, reason = await self.services.ingest(event, Source(self.ip, int(time.time())))
        except Exception:
            # Every EVENT gets its OK, even when our own code fails on it.
            log.exception("could not ingest %s from %s", event.id, self.peer)
            self._do(self.session.ingest_failed(event.id))
            return
        self._do(self.session.ingested(event.id, accepted, reason))

    async def _authenticate(self, event: Event) -> None:
        verified: bool | None
        try:
            verified = await self.services.verify(event)
        except SignatureCheckFailed:
            verified = None  # the verify process died; it logged that once
        except Exception:
            log.exception("could not check AUTH %s from %s", event.id, self.peer)
            verified = None
        self._do(self.session.authenticated(event, verified))

    async def _query(self, query_id: int, filters: tuple[Filter, ...]) -> None:
        """Stored events page by page, each only once the client has read the last."""
        session = self.session
        pages = self.services.query_pages(filters, self, self.page_bytes)
        most = most_results(filters)
        found = 0
        # Seconds spent waiting for the store, not for the client; None until it is asked.
        reading: float | None = None
        try:
            while True:
                promised = await self._room_for_page()
                started = time.perf_counter()
                try:
                    page = await anext(pages, None)
                finally:
                    reading = (reading or 0.0) + time.perf_counter() - started
                    # No await between this and the page being queued.
                    self.outbox.release(promised)
                if page is None:
                    break
                found += len(page)
                # Every filter has sent all it may: no need to ask the store for more.
                last = most is not None and found >= most
                self._do(session.query_page(query_id, page, last))
                if query_id not in session.queries:
                    return  # its cap was reached: EOSE is sent
                if last:
                    break
            self._do(session.query_done(query_id))
        except QueryTimeout:
            self._do(session.query_failed(query_id, QueryFailure.TIMEOUT))
        except Exception:
            log.exception("query failed for %s", self.peer)
            self._do(session.query_failed(query_id, QueryFailure.ERROR))
        finally:
            self._queries.pop(query_id, None)
            if reading is not None:  # a query ended before its first read is no query
                self.services.query_finished(filters, found, reading)
            await pages.aclose()

    async def _room_for_page(self) -> int:
        """Backpressure: a page is read only once the client's outbox has room for it and
        the results queued on the whole relay are below their budget, so a client that
        reads is never dropped for the size of its results, one that does not holds at
        most a page per query, and other connections' queries go first meanwhile.
        Returns the room promised, to release once the page is queued."""
        await self.services.outbox_meter.wait_below(self.max_result_bytes)
        return await self.outbox.reserve(self.page_reserve)

    async def _count(self, action: StartCount) -> None:
        session = self.session
        try:
            n = await self.services.count(action.filters, action.readers, self)
        except QueryTimeout:
            self._do(session.query_failed(action.query_id, QueryFailure.TIMEOUT))
        except Exception:
            log.exception("count failed for %s", self.peer)
            self._do(session.query_failed(action.query_id, QueryFailure.ERROR))
        else:
            self._do(session.count_done(action.query_id, n))
        finally:
            self._queries.pop(action.query_id, None)

    async def _neg_open(self, action: OpenNegentropy) -> None:
        session = self.session
        try:
            items = await self.services.negentropy_items(action.filter, action.readers, self)
            # Building the set's prefix sums and the first answer are CPU work: a thread
            # lets the event loop go on between the GIL's switches.
            server, reply = await asyncio.to_thread(
                _open_and_answer, self.services, items, action.message
            )
        except TooManyItems as error:
            self._do(session.neg_refused(action.query_id, f"blocked: {error}"))
        except NegentropyError as error:
            self._do(session.neg_refused(action.query_id, f"invalid: {error}"))
        except QueryTimeout:
            self._do(session.neg_refused(action.query_id, "blocked: the set took too long to read"))
        except Exception:
            log.exception("negentropy failed for %s", self.peer)
            self._do(
                session.neg_refused(action.query_id, "error: the relay failed on this NEG-OPEN")
            )
        else:
            self._do(session.neg_opened(action.query_id, server, len(items), reply))
        finally:
            self._queries.pop(action.query_id, None)

    async def _reconcile(self, action: Reconcile) -> None:
        session = self.session
        try:
            reply = await asyncio.to_thread(action.server.answer, action.message)
        except NegentropyError as error:
            self._do(session.neg_refused(action.query_id, f"invalid: {error}"))
        except Exception:
            log.exception("negentropy failed for %s", self.peer)
            self._do(
                session.neg_refused(action.query_id, "error: the relay failed on this NEG-MSG")
            )
        else:
            self._do(session.neg_answered(action.query_id, reply))
        finally:
            self._queries.pop(action.query_id, None)

    def tick(self, now: float) -> None:
        """Time passes: idle negentropy sessions end."""
        self._do(self.session.tick(now))

    # --- a client that does not read ---------------------------------------------------

    def _on_overflow(self) -> None:
        log.warning("%s is not reading its replies; disconnecting", self.peer)
        asyncio.get_running_loop().create_task(self._close_slow())

    async def _close_slow(self) -> None:
        # Past the queue: the transport buffers it even when the client reads nothing.
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await asyncio.wait_for(
                self.ws.send(OVERFLOW_NOTICE, text=True), OVERFLOW_NOTICE_SECONDS
            )
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code=1008, reason="too many unread messages")


def _open_and_answer(
    services: RelayServices, items: list[tuple[int, bytes]], message: bytes
) -> tuple[NegentropyServer, bytes]:
    server = services.negentropy_server(items)
    return server, server.answer(message)


# ClientConnection._do: how each kind of the session's actions is carried out.
_ACTIONS: dict[type, Callable[[ClientConnection, Any], None]] = {
    Send: ClientConnection._send,
    Refused: ClientConnection._refused,
    Watch: ClientConnection._watch,
    Unwatch: ClientConnection._unwatch,
    StartQuery: ClientConnection._start_query,
    StartCount: ClientConnection._start_count,
    CancelQuery: ClientConnection._cancel_query,
    Ingest: ClientConnection._start_ingest,
    Authenticate: ClientConnection._start_authenticate,
    OpenNegentropy: ClientConnection._open_negentropy,
    Reconcile: ClientConnection._start_reconcile,
}
