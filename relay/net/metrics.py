"""Prometheus metrics: every metric of one relay, the hooks that feed them, their text format.

Each relay owns a registry of its own (not prometheus-client's global one), so relays
started in one process, as the tests do, count apart. `Metrics` is the switched-off
relay's: every hook does nothing. `PrometheusMetrics` records.

The hooks run on the event loop's thread for every event, so they only add to plain
numbers: prometheus-client's own Counter and Histogram take a lock and several calls per
update (about 1.3 us each, several per event). prometheus-client turns the numbers into
its metric families when /metrics is scraped, on the same thread, and writes the format.
What is cheaper to read than to track (connections open, child process restarts, the
database's figures) is read then too.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from relay.net.stats import StoreFigures
from relay.store.base import Purged, SaveOutcome

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
# relay_events_pruned_total's reasons, each present from the start (at 0).
PRUNE_REASONS = ("age", "budget", "expired")
# Seconds: from half a millisecond (a warm query by id) to a commit stalled by the disk.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


def reason_prefix(reason: str) -> str:
    """The machine-readable prefix of an OK or CLOSED message, or "other"."""
    prefix = reason.split(":", 1)[0]
    return prefix if prefix in REASONS else OTHER_REASON


class Histogram:
    """Observations counted into buckets by the event loop's thread alone, so without a lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # counts[i]: observations <= bounds[i] and above the bound before; the last: above all.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Prometheus' cumulative buckets, `+Inf` last."""
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((_bound_label(bound), cumulative))
        return buckets


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

    def purged(self, purged: Purged) -> None:
        """The writer's periodic pass deleted these events."""

    def delivered(self, deliveries: int) -> None:
        """A live event went to `deliveries` matching subscriptions."""

    def outbox_dropped(self) -> None:
        """A client was dropped because its unread replies passed max_outbox_bytes."""

    def authenticated(self, accepted: bool) -> None:
        pass

    async def render(self) -> bytes:
        return b""


class PrometheusMetrics(Metrics, Collector):
    """The relay's metrics, in a registry of its own."""

    enabled = True

    def __init__(
        self,
        connections_open: Callable[[], int],
        store_figures: StoreFigures,
        child_restarts: Callable[[], dict[str, int]],
    ) -> None:
        self.connections_open = connections_open
        self.store_figures = store_figures
        self.child_restarts = child_restarts
        self.connections = 0
        self.subscriptions = 0
        self.received = 0
        self.stored = 0
        self.refused = dict.fromkeys((*REASONS, OTHER_REASON), 0)
        self.ok_latency = Histogram(LATENCY_BUCKETS)
        self.query_full = Histogram(LATENCY_BUCKETS)
        self.query_partial = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.commit_latency = Histogram(LATENCY_BUCKETS)
        self.deliveries = 0
        self.pruned = dict.fromkeys(PRUNE_REASONS, 0)
        self.outbox_drops = 0
        self.auth = {"accepted": 0, "refused": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def connection_opened(self) -> None:
        self.connections += 1

    def subscription_opened(self) -> None:
        self.subscriptions += 1

    def subscription_closed(self) -> None:
        self.subscriptions -= 1

    def event_answered(self, accepted: bool, reason: str, seconds: float) -> None:
        self.received += 1
        self.ok_latency.observe(seconds)
        if not accepted:
            self.refused[reason_prefix(reason)] += 1

    def event_refused(self, reason: str) -> None:
        self.received += 1
        self.refused[reason_prefix(reason)] += 1

    def batch_committed(self, outcomes: Sequence[SaveOutcome], seconds: float) -> None:
        self.batch_size.observe(len(outcomes))
        self.commit_latency.observe(seconds)
        self.stored += sum(outcome is SaveOutcome.STORED for outcome in outcomes)

    def query_done(self, seconds: float, limit_hit: bool) -> None:
        (self.query_full if limit_hit else self.query_partial).observe(seconds)

    def purged(self, purged: Purged) -> None:
        self.pruned["expired"] += purged.expired
        self.pruned["age"] += purged.aged
        self.pruned["budget"] += purged.over_budget

    def delivered(self, deliveries: int) -> None:
        self.deliveries += deliveries

    def outbox_dropped(self) -> None:
        self.outbox_drops += 1

    def authenticated(self, accepted: bool) -> None:
        self.auth["accepted" if accepted else "refused"] += 1

    async def render(self) -> bytes:
        """The text exposition format, with the database's figures fresh enough."""
        await self.store_figures.refresh()
        return prometheus_client.generate_latest(self.registry)

    def collect(self) -> Iterable[Metric]:
        """The registry's view of the numbers above, built at scrape time."""
        yield from self._connections()
        yield from self._events()
        yield from self._storage()
        yield _counter("relay_fanout_deliveries", FANOUT_HELP, self.deliveries)
        yield _counter("relay_outbox_drops", DROPS_HELP, self.outbox_drops)
        yield _labelled_counter("relay_auth", AUTH_HELP, "result", self.auth)

    def _connections(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "relay_connections_open", "WebSocket connections open.", self.connections_open()
        )
        yield _counter("relay_connections_opened", CONNECTIONS_HELP, self.connections)
        yield GaugeMetricFamily("relay_subscriptions_open", SUBSCRIPTIONS_HELP, self.subscriptions)

    def _events(self) -> Iterable[Metric]:
        yield _counter("relay_events_received", RECEIVED_HELP, self.received)
        yield _counter("relay_events_stored", "Events committed to the database.", self.stored)
        yield _labelled_counter("relay_events_refused", REFUSED_HELP, "reason", self.refused)
        ok = HistogramMetricFamily("relay_ok_seconds", OK_HELP)
        ok.add_metric([], self.ok_latency.buckets(), self.ok_latency.total)
        yield ok
        query = HistogramMetricFamily("relay_query_seconds", QUERY_HELP, labels=["limit_hit"])
        for label, histogram in (("true", self.query_full), ("false", self.query_partial)):
            query.add_metric([label], histogram.buckets(), histogram.total)
        yield query

    def _storage(self) -> Iterable[Metric]:
        batch = HistogramMetricFamily("relay_commit_batch_events", "Events in one commit.")
        batch.add_metric([], self.batch_size.buckets(), self.batch_size.total)
        commit = HistogramMetricFamily("relay_commit_seconds", COMMIT_HELP)
        commit.add_metric([], self.commit_latency.buckets(), self.commit_latency.total)
        yield from (batch, commit)
        yield _labelled_counter("relay_events_pruned", PRUNED_HELP, "reason", self.pruned)
        figures = self.store_figures.latest
        if figures is not None:
            yield GaugeMetricFamily("relay_database_events", DB_EVENTS_HELP, figures.events)
            yield GaugeMetricFamily("relay_database_bytes", DB_BYTES_HELP, figures.bytes)
        yield _labelled_counter(
            "relay_child_restarts", RESTARTS_HELP, "process", self.child_restarts()
        )


CONNECTIONS_HELP = "WebSocket connections accepted."
SUBSCRIPTIONS_HELP = "REQ subscriptions open."
RECEIVED_HELP = "EVENT messages answered with an OK."
FANOUT_HELP = "Live events handed to the subscriptions they match."
DROPS_HELP = "Clients dropped because their unread replies passed max_outbox_bytes."
AUTH_HELP = "NIP-42 AUTH events checked, by result."
REFUSED_HELP = "EVENTs answered OK false, by the reason's prefix."
OK_HELP = "Time from taking up an EVENT to its OK (policy, signature, commit)."
QUERY_HELP = "Time a REQ's stored-event query took, by whether it returned its full limit."
COMMIT_HELP = "Time one commit took, from handing over the batch to its outcomes."
DB_EVENTS_HELP = "Events in the database (read at most every few seconds)."
DB_BYTES_HELP = "Bytes of the database's files on disk, its WAL included."
RESTARTS_HELP = "Child processes started again after one died."
PRUNED_HELP = (
    "Events the writer's periodic pass deleted: past their kind's retention_max_age (age),"
    " the oldest while over storage_budget_bytes (budget), expired by NIP-40 (expired)."
)


def _bound_label(bound: float) -> str:
    """A bucket's `le` label as prometheus-client writes it: "0.005", "1.0", "+Inf"."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value)


def _labelled_counter(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for label_value, value in sorted(values.items()):
        family.add_metric([label_value], value)
    return family
