"""The relay as a running service: its parts wired together, connections, live fan-out,
start and stop. The path of an event is `net/ingest.py`; stored reads, `net/reads.py`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence, Set
from dataclasses import replace
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request

from relay.config import ConfigError, Settings
from relay.core import canonical, nip11
from relay.core.event import Event
from relay.core.filters import Filter
from relay.core.moderation import Change, ModerationState, normalize_ip
from relay.core.negentropy import NegentropyServer
from relay.core.policy import default_write_checks
from relay.core.ratelimit import RateLimiter
from relay.core.session import Session, SessionPolicy, SharedBudget
from relay.core.subscriptions import SubscriptionIndex
from relay.core.write_policy import Source
from relay.net import shutdown
from relay.net.admission import AdmissionControl, ConnectionCounter, ExemptNetworks, client_ip
from relay.net.connection import ClientConnection
from relay.net.deflate import server_extensions
from relay.net.http import HttpResponder, serve_metrics
from relay.net.ingest import IngestPipeline
from relay.net.metrics import Metrics, PrometheusMetrics
from relay.net.mirror import Mirror, ServerLocal, check_peers, parse_mirror_filter
from relay.net.nip86 import (
    BodyReadingConnection,
    Nip86,
    blocked_ip_response,
    body_too_large,
    body_too_large_response,
    is_rpc,
)
from relay.net.outbox import Flusher, OutboxMeter
from relay.net.reads import StoredReads
from relay.net.stats import EventRate, StoreFigures, live_figures
from relay.net.trim import MemoryTrimmer, map_large_blocks
from relay.net.verifier import SignatureVerifier
from relay.net.write_policy import WritePolicy
from relay.store.base import EventStore, SaveOutcome, SharedStore, StatsSource
from relay.store.moderation import ModerationStore, SharedModeration, default_moderation_store
from relay.store.writer import Writer

log = logging.getLogger("relay")

# Frames over the advertised max_message_length but under this many times it get a
# NOTICE and the connection goes on; larger ones are refused by the WebSocket layer (1009).
TRANSPORT_SIZE_FACTOR = 2
# /health: a failed commit makes the relay unhealthy until one succeeds, or for this long
# (two of the Dockerfile's health check intervals) if no other write is tried.
HEALTH_WINDOW_SECONDS = 60.0


class RelayServer:
    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        moderation_store: ModerationStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.moderation_store = moderation_store or default_moderation_store(store)
        # NIP-86: loaded at start, then changed live in place by the management API (the
        # pipeline holds this object).
        self.moderation = ModerationState()
        self._http: HttpResponder | None = None
        self.retention = settings.retention
        self.store_figures = StoreFigures(store)
        self.event_rate = EventRate()
        self.metrics: Metrics = (
            PrometheusMetrics(lambda: len(self.connections), self.store_figures, self._restarts)
            if settings.metrics_enabled
            else Metrics()
        )
        self.writer = Writer(
            store,
            purge_interval=settings.purge_interval,
            prune_batch=self.retention.batch if self.retention.enabled else 0,
            on_commit=self._committed,
            on_purge=self.metrics.purged,
        )
        self.verifier = SignatureVerifier(process=settings.verify_process)
        self.subscriptions: SubscriptionIndex[ClientConnection] = SubscriptionIndex(
            settings.limits.created_at_lower_limit
        )
        self.connections: set[ClientConnection] = set()
        # Frames put during one loop turn reach their sockets at its end, all together.
        self.flusher = Flusher(on_overflow=self.metrics.outbox_dropped)
        self.outbox_meter = OutboxMeter()
        self.live_entries = SharedBudget(settings.max_live_entries_total)
        self.neg_items = SharedBudget(settings.max_neg_items_total)
        self._ticker: asyncio.Task[None] | None = None
        self.rate_exempt = ExemptNetworks(settings.rate_limit_exempt)
        self.trimmer = MemoryTrimmer()
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
        self._build_ingest_and_reads()
        self._server: Server | None = None
        self._metrics_server: Server | None = None
        self.mirror: Mirror | None = None
        self.mirror_filter: dict[str, Any] = {}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("relay is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def _metrics_here(self) -> bool:
        """/metrics is served on the relay's own port."""
        return self.metrics.enabled and not self.settings.metrics_apart

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on."""
        if self._metrics_server is None:
            return self.port
        return int(self._metrics_server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self.mirror_filter = parse_mirror_filter(self.settings.mirror_filter)
            check_peers(self.settings.mirror_peers)
        except ValueError as error:
            raise ConfigError(str(error)) from None
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
        try:
            self.moderation = await self.moderation_store.load()
            if isinstance(self.moderation_store, SharedModeration):
                # Bans, blocks and renames made through the other instances apply here too.
                await self.moderation_store.follow(self._apply_moderation, self._reload_moderation)
            self._http = HttpResponder(
                self._info_document(),
                self.healthy,
                lambda: live_figures(self.store_figures, self.event_rate, self.connections),
                self.metrics if self._metrics_here else None,
            )
            if settings.metrics_apart:
                self._metrics_server = await serve_metrics(self.metrics, settings)
            self._server = await serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                process_request=self._process_request(),
                create_connection=BodyReadingConnection,
                ping_interval=self.settings.ping_interval or None,
                ping_timeout=self.settings.ping_timeout or None,
                close_timeout=self.settings.close_timeout,
                max_size=self.settings.max_message_length * TRANSPORT_SIZE_FACTOR,
                max_queue=16,
                compression=None,
                extensions=server_extensions(
                    self.settings.compression, self.settings.deflate_sliding_window
                ),
                server_header=None,
            )
        except BaseException:
            await self._close_metrics_server()
            await self._close_moderation()
            # The store's threads would otherwise keep the process alive.
            await self.writer.close()
            await self.verifier.close()
            await self.store.close()
            raise
        self.auth = settings.auth_policy(self.port)
        self._build_ingest_and_reads()
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
        self.pipeline.accepting = True
        if settings.mirror_peers:
            local = ServerLocal(self.store, self.ingest)
            self.mirror = Mirror(settings.mirror_peers, self.mirror_filter, local)
            self.mirror.start()
        log.info("listening on %s:%d", self.settings.host, self.port)

    @property
    def accepting(self) -> bool:
        """Whether new events are taken: from start() until stop()."""
        return self.pipeline.accepting

    def _build_ingest_and_reads(self) -> None:
        """The event pipeline and the stored reads, from the current moderation state and
        auth policy: again in start(), once it has loaded the one and rebuilt the other
        (until then the pipeline refuses every event)."""
        settings = self.settings
        self.pipeline = IngestPipeline(
            store=self.store,
            writer=self.writer,
            verifier=self.verifier,
            write_checks=self.write_checks,
            write_policy=self.write_policy,
            moderation=self.moderation,
            retention=self.retention,
            relay_url=self.auth.relay_url,
            vanish_enabled=settings.vanish_enabled,
            broadcast=self.broadcast,
            metrics=self.metrics,
        )
        self.reads = StoredReads(
            self.store,
            dm_kinds=self.auth.dm_kinds,
            page_events=settings.query_page_events,
            max_req_results=settings.max_req_results,
            max_neg_items=settings.max_neg_items,
            max_message_length=settings.max_message_length,
            metrics=self.metrics,
        )

    def healthy(self) -> bool:
        """/health: running, the database file is the one opened, and writes commit."""
        return (
            self.accepting
            and self.store.intact()
            and not self.writer.failing(HEALTH_WINDOW_SECONDS)
        )

    async def stop(self) -> None:
        """Refuse new events, commit and answer pending ones, then close every connection."""
        self.pipeline.accepting = False
        if self.mirror is not None:
            await self.mirror.close()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            # Stop listening only: websockets' close() runs once, so connections close below.
            self._server.server.close()
        # A plugin finishes the event it holds (or is killed) before the writer closes.
        await self.write_policy.close()
        await self.writer.close()
        # Answer every frame already received (refused now: accepting is False) and send
        # the answers before the close frame; a frame read after it could not be answered.
        await shutdown.stop(self._server, list(self.connections))
        await self._close_metrics_server()
        await self._close_moderation()
        await self.verifier.close()
        await self.store.close()
        self.trimmer.cancel()
        log.info("stopped")

    async def _close_moderation(self) -> None:
        if isinstance(self.moderation_store, SharedModeration):
            await self.moderation_store.close()

    async def _close_metrics_server(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()

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
        self.metrics.connection_opened()
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

    # What connections ask of the relay (RelayServices) is done by the pipeline and the
    # reads; each method hands back their coroutine or generator as it is, so a call costs
    # one more method call and no second coroutine.

    def ingest(
        self, event: Event, source: Source | None = None
    ) -> Coroutine[Any, Any, tuple[bool, str]]:
        """Take one well-formed event through policy, signature and storage: (accepted, reason)."""
        return self.pipeline.ingest(event, source)

    def query_pages(
        self, filters: tuple[Filter, ...], owner: object, page_bytes: int
    ) -> AsyncGenerator[list[bytes], None]:
        return self.reads.query_pages(filters, owner, page_bytes)

    def query_finished(self, filters: tuple[Filter, ...], found: int, reading: float) -> None:
        self.reads.query_finished(filters, found, reading)

    def count(
        self, filters: Sequence[Filter], readers: Set[str], owner: object = None
    ) -> Coroutine[Any, Any, int]:
        return self.reads.count(filters, readers, owner)

    def negentropy_items(
        self, filter: Filter, readers: frozenset[str], owner: object
    ) -> Coroutine[Any, Any, list[tuple[int, bytes]]]:
        return self.reads.negentropy_items(filter, readers, owner)

    def negentropy_server(self, items: list[tuple[int, bytes]]) -> NegentropyServer:
        return self.reads.negentropy_server(items)

    async def _tick(self) -> None:
        """Once a second: idle negentropy sessions end."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for connection in list(self.connections):
                if connection.session.negentropy:
                    connection.tick(now)

    async def verify(self, event: Event) -> bool:
        """An AUTH event's signature (NIP-42; the session checked everything else)."""
        valid = await self.verifier.verify(event)
        self.metrics.authenticated(valid)
        return valid

    def refused(self, what: str, reason: str) -> None:
        """An EVENT or AUTH the session refused before the pipeline saw it."""
        if what == "auth":
            self.metrics.authenticated(False)
        else:
            self.metrics.event_refused(reason)

    def watch(self, owner: ClientConnection, sub_id: str, filters: tuple[Filter, ...]) -> None:
        self.subscriptions.add(owner, sub_id, filters, int(time.time()))
        self.metrics.subscription_opened()

    def unwatch(self, owner: ClientConnection, sub_id: str) -> None:
        self.subscriptions.remove(owner, sub_id)
        self.metrics.subscription_closed()

    def _process_request(self) -> Callable[[ServerConnection, Request], Any]:
        """The HTTP hook: NIP-86 calls, blocked addresses, then admission and plain HTTP."""
        assert self._http is not None
        admission = AdmissionControl(
            self.connections_per_ip, self.settings.trusted_proxy_header, self._http
        )
        nip86 = Nip86(
            self.moderation,
            self.moderation_store,
            self.settings.admin_pubkeys,
            self._admin_urls,
            self._moderation_changed,
        )

        def process_request(ws: ServerConnection, request: Request) -> Any:
            headers, trusted = request.headers, self.settings.trusted_proxy_header
            ip = client_ip(headers, ws.remote_address, trusted)
            if body_too_large(ws):
                return body_too_large_response()
            # The management API stays open to a blocked address: an admin must not lock
            # themself out. It admits by NIP-98 signature, not by address.
            if is_rpc(request):
                return nip86(ws, request)
            if self.moderation.ip_blocked(ip):
                return blocked_ip_response()
            return admission(ws, request)

        return process_request

    def _info_document(self) -> dict[str, object]:
        settings = self.settings
        return nip11.information_document(
            replace(settings.info, **self.moderation.info),
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

    def _admin_urls(self) -> list[str]:
        """The URLs a NIP-98 `u` tag may name: the relay's, as ws(s):// and http(s)://."""
        url = self.settings.public_url(self.port)
        return [url, "http" + url.removeprefix("ws")]

    def _apply_moderation(self, change: Change) -> None:
        """A change another instance made (this one's own go through Nip86)."""
        self.moderation.apply(change)
        self._moderation_changed(change)

    def _reload_moderation(self, state: ModerationState) -> None:
        for change in self.moderation.changes_to(state):
            self._apply_moderation(change)

    def _moderation_changed(self, change: Change) -> None:
        if change.table == "info" and self._http is not None:
            self._http.info_body = canonical.dumps(self._info_document())
        if change.table == "blocked_ips" and change.added:
            for connection in list(self.connections):
                if normalize_ip(connection.ip) == change.key:
                    connection.ws.transport.abort()

    def broadcast(self, event: Event) -> None:
        private = event.kind in self.auth.dm_kinds
        matching = self.subscriptions.matching(event)
        for connection, sub_id in matching:
            connection.deliver(sub_id, event, private)
        self.metrics.delivered(len(matching))

    def _committed(self, outcomes: Sequence[SaveOutcome], seconds: float) -> None:
        self.metrics.batch_committed(outcomes, seconds)
        self.event_rate.committed(outcomes)

    def _restarts(self) -> dict[str, int]:
        """Child processes started again, by process (for the metrics)."""
        restarts = {"verify": self.verifier.process_restarts}
        if isinstance(self.store, StatsSource):
            restarts["write"] = self.store.process_restarts
        return restarts


def _peer_name(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
