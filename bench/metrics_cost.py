"""What the metrics add to each ingested event: the hooks' CPU, on against off, in one process.

    python -m bench.metrics_cost [--events 200000] [--rounds 3]

Calls, per event, what the relay calls with metrics on (`PrometheusMetrics`) and off
(`Metrics`): the two clock reads around ingest, `event_answered`, `delivered`, and one
`batch_committed` per 50 events. The difference is the metrics' cost; compare it with the
server CPU per event of `python -m bench --only fresh` (about 200-350 us here). On a shared
machine a whole-relay comparison cannot see a difference this small: two runs of the same
code differ by more (bench/README.md).
"""

from __future__ import annotations

import argparse
import time

from relay.net.metrics import Metrics, PrometheusMetrics
from relay.net.stats import StoreFigures
from relay.store.base import SaveOutcome
from relay.store.memory import MemoryStore

BATCH = 50


def per_event(metrics: Metrics, events: int) -> float:
    """Microseconds per event spent in the hooks (and the loop around them)."""
    outcomes = [SaveOutcome.STORED] * BATCH
    began = time.process_time()
    for n in range(events):
        started = time.perf_counter()
        metrics.event_answered(True, "", time.perf_counter() - started)
        metrics.delivered(0)
        if n % BATCH == 0:
            metrics.batch_committed(outcomes, 0.004)
    return (time.process_time() - began) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    on = PrometheusMetrics(lambda: 0, StoreFigures(MemoryStore()), dict)
    off = Metrics()
    for _ in range(options.rounds):
        with_metrics, without = per_event(on, options.events), per_event(off, options.events)
        print(
            f"metrics on {with_metrics:.2f} us/event, off {without:.2f} us/event: "
            f"the metrics cost {with_metrics - without:.2f} us/event"
        )


if __name__ == "__main__":
    main()
