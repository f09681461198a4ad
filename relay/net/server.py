"""The relay as a running service: the path of an event, live fan-out, start and stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence, Set

from websockets.asyncio.server import Server, ServerConnection, serve

from relay.config import Settings
from relay.core import auth, nip11, vanish
from relay.core.errors import ClientError
from relay.core.event import Event
from relay.core.filters import Filter
from relay.core.negentropy import MIN_FRAME_SIZE_LIMIT, NegentropyServer, Storage
from relay.core.policy import check_write, default_write_checks
from relay.core.ratelimit import RateLimiter
from relay.core.session import Session, SessionPolicy, SharedBudget
from relay.core.subscriptions import SubscriptionIndex
from relay.core.write_policy import Action, Source
from relay.net.admission import AdmissionControl, ConnectionCounter, ExemptNetworks, client_ip
from relay.net.connection import ClientConnection
from relay.net.http import HttpResponder
from relay.net.outbox import Flusher, OutboxMeter
from relay.net.trim import MemoryTrimmer, map_large_blocks
from relay.net.verifier import SignatureVerifier
from relay.net.write_policy import WritePolicy
from relay.store.base import EventStore, SharedStore
from relay.store.writer import StoreFailure, Writer, WriterClosed

log = logging.getLogger("relay")

# Frames over the advertised max_message_length but under this many times it get a
# NOTICE and the connection goes on; larger ones are refused by the WebSocket layer (1009).
TRANSPORT_SIZE_FACTOR = 2
SHUTDOWN_FLUSH_SECONDS = 5.0
# A connection that sent nothing for this long has had every frame it sent read.
SHUTDOWN_QUIET_SECONDS = 0.1


class RelayServer:
    def __init__(self, settings: Settings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self.writer = Writer(store, purge_interval=settings.purge_interval)
        self.verifier = SignatureVerifier(process=settings.verify_process)
        self.subscriptions: SubscriptionIndex[ClientConnection] = SubscriptionIndex(
            settings.limits.created_at_lower_limit
        )
        self.connections: set[ClientConnection] = set()
        # Frames put during one loop turn reach their sockets at its end, all together.
        self.flusher = Flusher()
        self.outbox_meter = OutboxMeter()
        self.live_entries = SharedBudget(settings.max_live_entries_total)
        self.neg_items = SharedBudget(settings.max_neg_items_total)
        self._ticker: asyncio.Task[None] | None = None
        self.rate_exempt = ExemptNetworks(settings.rate_limit_exempt)
        self.trimmer = MemoryTrimmer()
        # A NEG-MSG reply in hex inside its frame stays under max_message_length.
        self.neg_frame_limit = max(MIN_FRAME_SIZE_LIMIT, (settings.max_message_length - 256) // 2)
        self.write_checks = default_write_checks(settings.limits)
        self.write_policy = WritePolicy(settings)
        self.event_rate_per_ip = RateLimiter(
            settings.event_rate_per_ip, settings.event_burst_per_ip
        )
        self.connections_per_ip = ConnectionCounter(
            settings.max_connections_per_ip, self.rate_exempt
        )
        # Rebuilt with the listening port once known: relay_url may derive from it.
        self.auth = settings.auth_policy(settings.port)
        self.accepting = False
        self._server: Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("relay is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        map_large_blocks()
        await self.store.open()
        if isinstance(self.store, SharedStore):
            # Events other instances store reach this instance's subscribers too; before
            # the first REQ, so none of them can fall in a gap.
            await self.store.follow(self.broadcast)
        try:
            await self.verifier.start()
        except BaseException:
            await self.store.close()
            raise
        self.writer.start()
        settings = self.settings
        info = nip11.information_document(
            settings.info,
            settings.limits,
            self.auth,
            nip11.optional_nips(
                self.auth,
                count=settings.count_enabled,
                search=settings.search_enabled,
                vanish=settings.vanish_enabled,
                negentropy=settings.negentropy_enabled,
            ),
        )
        try:
            self._server = await serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                process_request=AdmissionControl(
                    self.connections_per_ip,
                    self.settings.trusted_proxy_header,
                    HttpResponder(info, lambda: self.accepting),
                ),
                ping_interval=self.settings.ping_interval or None,
                ping_timeout=self.settings.ping_timeout or None,
                close_timeout=self.settings.close_timeout,
                max_size=self.settings.max_message_length * TRANSPORT_SIZE_FACTOR,
                max_queue=16,
                # permessage-deflate keeps a compressor per connection: about 33 KiB more
                # per idle client that offers it (measured by bench/), so it can be turned off.
                compression=None if self.settings.compression == "none" else "deflate",
                server_header=None,
            )
        except BaseException:
            # The store's threads would otherwise keep the process alive.
            await self.writer.close()
            await self.verifier.close()
            await self.store.close()
            raise
        self.auth = settings.auth_policy(self.port)
        self.session_policy = SessionPolicy(
            limits=settings.limits,
            auth=self.auth,
            count_enabled=settings.count_enabled,
            search_enabled=settings.search_enabled,
            req_rate=settings.req_rate_per_connection,
            req_burst=settings.req_burst_per_connection,
            negentropy_enabled=settings.negentropy_enabled,
            neg_idle_seconds=settings.neg_idle_seconds,
        )
        self._ticker = asyncio.create_task(self._tick())
        self.accepting = True
        log.info("listening on %s:%d", self.settings.host, self.port)

    async def stop(self) -> None:
        """Refuse new events, commit and answer pending ones, then close every connection."""
        self.accepting = False
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            # Stop listening only: websockets' close() runs once, so connections close below.
            self._server.server.close()
        # A plugin finishes the event it holds (or is killed) before the writer closes.
        await self.write_policy.close()
        await self.writer.close()
        await self._settle_connections()
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        await self.verifier.close()
        await self.store.close()
        self.trimmer.cancel()
        log.info("stopped")

    async def _settle_connections(self) -> None:
        """Answer every frame already received (refused now: accepting is False) and send
        the answers before the close frame; a frame read after it could not be answered."""
        deadline = time.monotonic() + SHUTDOWN_FLUSH_SECONDS
        while time.monotonic() < deadline:
            if all(c.settled(SHUTDOWN_QUIET_SECONDS) for c in self.connections):
                return
            await asyncio.sleep(0.01)

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer_name(ws)
        ip = client_ip(
            ws.request.headers if ws.request else None,
            ws.remote_address,
            self.settings.trusted_proxy_header,
        )
        if self.connections_per_ip.full(ip):
            # Upgrades that raced past the check in AdmissionControl.
            await ws.close(code=1008, reason="rate-limited: too many connections")
            return
        self.connections_per_ip.add(ip)
        session = Session(
            self.session_policy,
            shared_entries=self.live_entries,
            shared_neg_items=self.neg_items,
            event_rate=self.event_rate_per_ip,
            ip=ip,
            rate_exempt=ip in self.rate_exempt,
        )
        settings = self.settings
        connection = ClientConnection(
            ws,
            self,
            session,
            peer=peer,
            ip=ip,
            max_outbox_bytes=settings.max_outbox_bytes,
            page_bytes=settings.query_page_bytes,
            max_event_size=settings.max_event_size,
            max_result_bytes=settings.max_result_bytes_in_flight,
        )
        self.connections.add(connection)
        started = time.monotonic()
        log.info("%s connected", peer)
        try:
            await connection.run()
        finally:
            self.connections_per_ip.remove(ip)
            self.connections.discard(connection)
            self.trimmer.request()
            log.info(
                "%s disconnected after %.1fs (code %s, %d events)",
                peer,
                time.monotonic() - started,
                ws.close_code,
                connection.events_received,
            )

    async def ingest(self, event: Event, source: Source | None = None) -> tuple[bool, str]:
        """Take one well-formed event through policy, signature and storage: (accepted, reason)."""
        if not self.accepting:
            return False, "error: the relay is shutting down"
        now = int(time.time())
        try:
            check_write(self.write_checks, event, now)
            vanish.check_request(event, self.auth.relay_url, self.settings.vanish_enabled)
            self.write_policy.check_unverified(event)
        except ClientError as error:
            return False, error.reason
        if not await self.verifier.verify(event):
            return False, "invalid: bad signature"
        decision = await self.write_policy.decide(event, source or Source("", now))
        if decision.action is Action.REJECT:
            return False, decision.ok_reason
        if decision.action is Action.SHADOW_REJECT:
            return True, ""
        if event.is_ephemeral:
            self.broadcast(event)
            if isinstance(self.store, SharedStore):
                await self.store.announce(event)
            return True, ""
        try:
            outcome = await self.writer.save(event)
        except WriterClosed:
            return False, "error: the relay is shutting down"
        except StoreFailure:
            return False, "error: the event could not be stored, try again later"
        if outcome.broadcast:
            self.broadcast(event)
        return outcome.accepted, outcome.reason

    async def query_pages(
        self, filters: tuple[Filter, ...], owner: object, page_bytes: int
    ) -> AsyncGenerator[list[bytes], None]:
        """Stored matches page by page (the session caps the REQ as a whole)."""
        found = await self.store.query(filters, int(time.time()))
        page: list[bytes] = []
        size = 0
        for raw in found:
            page.append(raw)
            size += len(raw)
            if len(page) >= self.settings.query_page_events or size >= page_bytes:
                yield page
                page, size = [], 0
        if page:
            yield page

    async def negentropy_items(
        self, filter: Filter, readers: frozenset[str], owner: object
    ) -> list[tuple[int, bytes]]:
        """NIP-77: the (created_at, id) set of `filter` that `readers` may see. Private
        kinds count only where a reader is a party: all, minus the private, plus the readable."""
        now, cap = int(time.time()), self.settings.max_neg_items
        items = await self.store.negentropy_items([filter], now, cap)
        dm_kinds = self.auth.dm_kinds
        if not auth.could_return_private([filter], dm_kinds):
            return items
        private = auth.private_parts([filter], dm_kinds)
        hidden = set(await self.store.negentropy_items(private, now, cap))
        if not hidden:
            return items
        readable = auth.readable_parts([filter], readers, dm_kinds)
        shown = set(await self.store.negentropy_items(readable, now, cap)) if readable else set()
        return [item for item in items if item not in hidden or item in shown]

    def negentropy_server(self, items: list[tuple[int, bytes]]) -> NegentropyServer:
        return NegentropyServer(Storage(items), self.neg_frame_limit)

    async def _tick(self) -> None:
        """Once a second: idle negentropy sessions end."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for connection in list(self.connections):
                if connection.session.negentropy:
                    connection.tick(now)

    async def verify(self, event: Event) -> bool:
        return await self.verifier.verify(event)

    def watch(self, owner: ClientConnection, sub_id: str, filters: tuple[Filter, ...]) -> None:
        self.subscriptions.add(owner, sub_id, filters, int(time.time()))

    def unwatch(self, owner: ClientConnection, sub_id: str) -> None:
        self.subscriptions.remove(owner, sub_id)

    async def count(
        self, filters: Sequence[Filter], readers: Set[str], owner: object = None
    ) -> int:
        """NIP-45: distinct stored events matching any filter that `readers` may read.

        Private kinds count only where a reader is their author or tagged recipient:
        all matches, minus the private ones, plus the private ones readers may see.
        """
        now = int(time.time())
        total = await self.store.count(filters, now)
        dm_kinds = self.auth.dm_kinds
        if not auth.could_return_private(filters, dm_kinds):
            return total
        private = await self.store.count(auth.private_parts(filters, dm_kinds), now)
        if not private:
            return total
        readable = auth.readable_parts(filters, readers, dm_kinds)
        allowed = await self.store.count(readable, now) if readable else 0
        # Three reads: a commit between them may move the figures by what it added.
        return max(total - private + allowed, 0)

    def broadcast(self, event: Event) -> None:
        private = event.kind in self.auth.dm_kinds
        for connection, sub_id in self.subscriptions.matching(event):
            connection.deliver(sub_id, event, private)


def _peer_name(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
