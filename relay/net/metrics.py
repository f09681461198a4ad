"""Prometheus metrics: every metric object of one relay, its hooks and its text format.

Each relay owns a registry of its own (not prometheus-client's global one), so relays
started in one process, as the tests do, count apart. `Metrics` is the switched-off
relay's: every hook does nothing. `PrometheusMetrics` records; the few figures that are
cheaper to read than to track (connections open, the database's size and event count,
child process restarts) are read when the metrics are scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.net.stats import StoreFigures
from relay.store.base import SaveOutcome

# generate_latest writes the classic text format, which every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The NIP-01 prefixes of a refusal; anything else (a plugin's own words) counts as "other",
# so a label never takes more than these values.
REASONS = (
    "duplicate",
    "pow",
    "blocked",
    "rate-limited",
    "invalid",
    "restricted",
    "mute",
    "error",
    "auth-required",
    "unsupported",
)
OTHER_REASON = "other"
# Seconds: from half a millisecond (a warm query by id) to a commit stalled by the disk.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

# A `<name>_created` series beside every counter doubles the text and says nothing here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def reason_prefix(reason: str) -> str:
    """The machine-readable prefix of an OK or CLOSED message, or "other"."""
    prefix = reason.split(":", 1)[0]
    return prefix if prefix in REASONS else OTHER_REASON


class Metrics:
    """The hooks the relay calls; this class ignores them (metrics switched off)."""

    enabled = False

    def connection_opened(self) -> None:
        pass

    def subscription_opened(self) -> None:
        pass

    def subscription_closed(self) -> None:
        pass

    def event_answered(self, accepted: bool, reason: str, seconds: float) -> None:
        """An EVENT got its OK `seconds` after the relay took it up (received, refused)."""

    def event_refused(self, reason: str) -> None:
        """An EVENT refused before it reached ingest (rate limit, NIP-42 write rules)."""

    def batch_committed(self, outcomes: Sequence[SaveOutcome], seconds: float) -> None:
        pass

    def query_done(self, seconds: float, limit_hit: bool) -> None:
        pass

    def delivered(self, deliveries: int) -> None:
        """A live event went to `deliveries` matching subscriptions."""

    def outbox_dropped(self) -> None:
        """A client was dropped because its unread replies passed max_outbox_bytes."""

    def authenticated(self, accepted: bool) -> None:
        pass

    async def render(self) -> bytes:
        return b""


class PrometheusMetrics(Metrics):
    """The relay's metrics, in its own registry."""

    enabled = True

    def __init__(
        self,
        connections_open: Callable[[], int],
        store_figures: StoreFigures,
        child_restarts: Callable[[], dict[str, int]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.store_figures = store_figures
        self._define_connections(connections_open)
        self._define_events()
        self._define_storage()
        self.fanout = Counter(
            "relay_fanout_deliveries",
            "Live events handed to the subscriptions they match.",
            registry=self.registry,
        )
        self.outbox_drops = Counter(
            "relay_outbox_drops",
            "Clients dropped because their unread replies passed max_outbox_bytes.",
            registry=self.registry,
        )
        auth = Counter(
            "relay_auth",
            "NIP-42 AUTH events checked, by result.",
            ["result"],
            registry=self.registry,
        )
        self.auth_accepted, self.auth_refused = auth.labels("accepted"), auth.labels("refused")
        self.registry.register(_ScrapedFigures(store_figures, child_restarts))

    def _define_connections(self, connections_open: Callable[[], int]) -> None:
        registry = self.registry
        open_now = Gauge("relay_connections_open", "WebSocket connections open.", registry=registry)
        open_now.set_function(lambda: float(connections_open()))
        self.connections = Counter(
            "relay_connections_opened", "WebSocket connections accepted.", registry=registry
        )
        self.subscriptions = Gauge(
            "relay_subscriptions_open", "REQ subscriptions open.", registry=registry
        )

    def _define_events(self) -> None:
        registry = self.registry
        self.received = Counter(
            "relay_events_received", "EVENT messages answered with an OK.", registry=registry
        )
        self.stored = Counter(
            "relay_events_stored", "Events committed to the database.", registry=registry
        )
        refused = Counter(
            "relay_events_refused",
            "EVENTs answered OK false, by the reason's prefix.",
            ["reason"],
            registry=registry,
        )
        # Children resolved once: labels() costs a lock and a dict lookup per call.
        self.refused = {reason: refused.labels(reason) for reason in (*REASONS, OTHER_REASON)}
        self.ok_latency = Histogram(
            "relay_ok_seconds",
            "Time from taking up an EVENT to its OK (policy, signature, commit).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        query = Histogram(
            "relay_query_seconds",
            "Time a REQ's stored-event query took, by whether it returned its full limit.",
            ["limit_hit"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.query_full, self.query_partial = query.labels("true"), query.labels("false")

    def _define_storage(self) -> None:
        registry = self.registry
        self.batch_size = Histogram(
            "relay_commit_batch_events",
            "Events in one database commit.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_latency = Histogram(
            "relay_commit_seconds",
            "Time one database commit took, from handing over the batch to its outcomes.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def connection_opened(self) -> None:
        self.connections.inc()

    def subscription_opened(self) -> None:
        self.subscriptions.inc()

    def subscription_closed(self) -> None:
        self.subscriptions.dec()

    def event_answered(self, accepted: bool, reason: str, seconds: float) -> None:
        self.received.inc()
        self.ok_latency.observe(seconds)
        if not accepted:
            self.refused[reason_prefix(reason)].inc()

    def event_refused(self, reason: str) -> None:
        self.received.inc()
        self.refused[reason_prefix(reason)].inc()

    def batch_committed(self, outcomes: Sequence[SaveOutcome], seconds: float) -> None:
        self.batch_size.observe(len(outcomes))
        self.commit_latency.observe(seconds)
        stored = sum(outcome is SaveOutcome.STORED for outcome in outcomes)
        if stored:
            self.stored.inc(stored)

    def query_done(self, seconds: float, limit_hit: bool) -> None:
        (self.query_full if limit_hit else self.query_partial).observe(seconds)

    def delivered(self, deliveries: int) -> None:
        if deliveries:
            self.fanout.inc(deliveries)

    def outbox_dropped(self) -> None:
        self.outbox_drops.inc()

    def authenticated(self, accepted: bool) -> None:
        (self.auth_accepted if accepted else self.auth_refused).inc()

    async def render(self) -> bytes:
        """The text exposition format, with the database's figures fresh enough."""
        await self.store_figures.refresh()
        return prometheus_client.generate_latest(self.registry)


class _ScrapedFigures(Collector):
    """Figures read at scrape time: the database's (cached by StoreFigures) and restarts."""

    def __init__(
        self, store_figures: StoreFigures, child_restarts: Callable[[], dict[str, int]]
    ) -> None:
        self.store_figures = store_figures
        self.child_restarts = child_restarts

    def collect(self) -> list[Metric]:
        figures = self.store_figures.latest
        events = GaugeMetricFamily(
            "relay_database_events", "Events in the database (read every few seconds)."
        )
        size = GaugeMetricFamily(
            "relay_database_bytes", "Bytes of the database's files on disk, its WAL included."
        )
        if figures is not None:
            events.add_metric([], figures.events)
            size.add_metric([], figures.bytes)
        restarts = CounterMetricFamily(
            "relay_child_restarts",
            "Child processes started again after one died.",
            labels=["process"],
        )
        for process, count in sorted(self.child_restarts().items()):
            restarts.add_metric([process], count)
        return [events, size, restarts]
