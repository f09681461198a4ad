"""`python -m bench [--quick]`: run every measurement and print the table (bench/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson

from bench.data import ingest_events
from bench.load import (
    Elsewhere,
    FanoutResult,
    fanout,
    idle_connections,
    ingest,
    queries,
    run_elsewhere,
)
from bench.pg import PgServer
from bench.pg_multi import (
    DEFAULT_URL,
    IngestFigures,
    backend_pids,
    measure_ingest,
    measure_latency,
)
from bench.relays import (
    LocalRelay,
    NostrRelay,
    PgRelay,
    PyRelay,
    RelayUnderTest,
    process_cpu_seconds,
    resident_bytes,
)
from bench.report import Table
from bench.stores import Dataset, query_shapes
from relay.store.postgres import describe


@dataclass(frozen=True)
class Sizes:
    runs: int
    dataset: int
    ingest_events: int
    ingest_seconds: float
    connections: int
    window: int
    queries: int
    subscribers: int
    nonmatching: int
    fanout_rounds: int
    stream_seconds: float
    idle_connections: int
    # --store postgres: instance counts on one database, seconds of ingest through each,
    # live events timed from one instance to another.
    pg_instances: tuple[int, ...]
    pg_instance_seconds: float
    pg_latency_rounds: int


FULL = Sizes(
    runs=3,
    dataset=1_000_000,
    ingest_events=100_000,
    ingest_seconds=8.0,
    connections=50,
    window=8,
    queries=100,
    subscribers=1000,
    nonmatching=10,
    fanout_rounds=100,
    stream_seconds=5.0,
    idle_connections=5000,
    pg_instances=(1, 2, 4),
    pg_instance_seconds=10.0,
    pg_latency_rounds=300,
)
QUICK = Sizes(
    runs=1,
    dataset=5_000,
    ingest_events=2_000,
    ingest_seconds=3.0,
    connections=10,
    window=4,
    queries=10,
    subscribers=50,
    nonmatching=2,
    fanout_rounds=10,
    stream_seconds=1.0,
    idle_connections=200,
    pg_instances=(1, 2),
    pg_instance_seconds=2.0,
    pg_latency_rounds=10,
)


T = TypeVar("T")
SECTIONS = ("fresh", "stored", "fanout", "memory", "instances")
Database = Path | str  # an SQLite file, or a PostgreSQL database's URL


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(
        self,
        sizes: Sizes,
        relays: list[type[RelayUnderTest]],
        workdir: Path,
        sections: set[str],
        pg: PgServer | None = None,
    ) -> None:
        self.sizes = sizes
        # The PostgreSQL server of PgRelay's databases and the instance rows (--store postgres).
        self.pg = pg
        self.sections = sections
        self.relays = relays
        self.workdir = workdir
        self.table = Table([r.name for r in relays])
        self.workers = os.cpu_count() or 2

    def run(self) -> Table:
        sizes = self.sizes
        log(f"signing {sizes.ingest_events:,} ingest events and the fan-out events")
        events = ingest_events(sizes.ingest_events, self.workers)
        fan_events = ingest_events(sizes.fanout_rounds * 40, self.workers, namespace="fanout")
        dataset = Dataset(sizes.dataset)
        log(
            f"preparing the {sizes.dataset:,}-event dataset (cached in {dataset.pyrelay_db.parent})"
        )
        dataset.build(self.workers, log)
        shapes = query_shapes(dataset.samples(), sizes.queries + 2)
        for relay_class in self.relays:
            if "fresh" in self.sections:
                self.ingest_fresh(relay_class, events)
            if "stored" in self.sections:
                self.ingest_and_query_at_size(relay_class, dataset, events, shapes)
        if "fanout" in self.sections:
            self.fanout(fan_events)
        if "memory" in self.sections:
            self.idle_memory()
        if self.pg is not None and "instances" in self.sections:
            self.pg_instances()
        return self.table

    def _run_relay(
        self,
        relay_class: type[RelayUnderTest],
        db: Database,
        work: Callable[[RelayUnderTest], T],
        env: dict[str, str] | None = None,
    ) -> T:
        relay = relay_class(self.workdir, env)
        relay.start(db)
        try:
            return work(relay)
        finally:
            relay.stop()

    def _ingest(self, relay: RelayUnderTest, events: list[bytes]) -> dict[str, float]:
        backends = self._backends(relay)
        cpu_before = process_cpu_seconds(relay.pid)
        pg_before = sum(process_cpu_seconds(pid) for pid in backends)
        s = self.sizes
        result = run_elsewhere(
            ingest, relay.port, events, s.connections, s.window, s.ingest_seconds
        )
        server_cpu = process_cpu_seconds(relay.pid) - cpu_before
        pg_cpu = sum(process_cpu_seconds(pid) for pid in backends) - pg_before
        if result.refusals:
            log(f"  {relay.name} refused {result.refused}: {result.refusals[:2]}")
        answered = max(1, result.accepted + result.refused)
        return {
            "rate": result.rate,
            "server_cpu_us": server_cpu / answered * 1e6,
            "postgres_cpu_us": pg_cpu / answered * 1e6 if backends else float("nan"),
            "generator_cpu": result.generator_cpu / result.seconds,
        }

    def _backends(self, relay: RelayUnderTest) -> list[int]:
        """The PostgreSQL backends serving a PgRelay (none for the others)."""
        if self.pg is None or not isinstance(relay, PgRelay):
            return []
        return asyncio.run(backend_pids(self.pg.url, [relay.pid]))

    def _put_postgres_cpu(self, label: str, name: str, runs: list[dict[str, float]]) -> None:
        # Put for every relay (n/a but PgRelay's), so the row sits under the relay's CPU.
        if self.pg is not None:
            self.table.put(
                f"  PostgreSQL backends CPU per event, {label} (us)",
                name,
                median([r["postgres_cpu_us"] for r in runs]),
            )

    def _fresh_db(self, relay_class: type[RelayUnderTest], label: str) -> Database:
        if relay_class is PgRelay:
            return self._pg().fresh()
        return self.workdir / f"{label}.sqlite"

    def _dataset_db(
        self, relay_class: type[RelayUnderTest], dataset: Dataset, template: str, label: str
    ) -> Database:
        """A fresh copy of the dataset in the relay's own database (template: PgRelay's)."""
        if relay_class is PgRelay:
            return self._pg().copy_of(template)
        db = self.workdir / f"{label}.sqlite"
        if relay_class is NostrRelay:
            return dataset.copy_nostr_relay_db(db)
        return dataset.copy_pyrelay_db(db)

    def _remove(self, db: Database) -> None:
        if isinstance(db, Path):
            _remove_db(db)
        else:
            self._pg().drop(db)

    def _pg(self) -> PgServer:
        if self.pg is None:
            raise RuntimeError("PgRelay runs only with --store postgres")
        return self.pg

    def ingest_fresh(self, relay_class: type[RelayUnderTest], events: list[bytes]) -> None:
        name = relay_class.name
        runs = self._ingest_runs(relay_class, events, {})
        self.table.put("ingest, fresh DB (events/s)", name, median([r["rate"] for r in runs]))
        self.table.put(
            "  server CPU per event, fresh (us)", name, median([r["server_cpu_us"] for r in runs])
        )
        self.table.put(
            "  load generator CPU (share of one core)",
            name,
            median([r["generator_cpu"] for r in runs]),
        )
        self._put_postgres_cpu("fresh", name, runs)
        if relay_class is PyRelay:
            # NIP-50's FTS5 index is off by default: what switching it on costs.
            runs = self._ingest_runs(relay_class, events, {"RELAY_SEARCH_ENABLED": "true"})
            self.table.put(
                "ingest, fresh DB, search_enabled = true (events/s)",
                name,
                median([r["rate"] for r in runs]),
            )

    def _ingest_runs(
        self, relay_class: type[RelayUnderTest], events: list[bytes], env: dict[str, str]
    ) -> list[dict[str, float]]:
        runs = []
        for run in range(self.sizes.runs):
            db = self._fresh_db(relay_class, f"fresh-{relay_class.name}-{run}")
            work = functools.partial(self._ingest, events=events)
            try:
                runs.append(self._run_relay(relay_class, db, work, env))
            finally:
                self._remove(db)
            settings = " ".join(f"{k}={v}" for k, v in env.items())
            log(
                f"{relay_class.name} {settings} ingest fresh run {run + 1}:"
                f" {runs[-1]['rate']:,.0f} ev/s"
            )
        return runs

    def ingest_and_query_at_size(
        self,
        relay_class: type[RelayUnderTest],
        dataset: Dataset,
        events: list[bytes],
        shapes: dict[str, list[dict[str, Any]]],
    ) -> None:
        name = relay_class.name
        size = f"{dataset.size:,}"
        if relay_class is LocalRelay:
            return  # in memory only: it cannot open the stored dataset
        template = ""
        if relay_class is NostrRelay:
            log("preparing nostr-relay's copy of the dataset")
            dataset.build_nostr_relay_db(self.workdir)
        if relay_class is PgRelay:
            template = self._pg().dataset(dataset, log)
        runs: list[dict[str, float]] = []
        latencies: dict[str, list[float]] = {shape: [] for shape in shapes}
        p50s: dict[str, list[float]] = {shape: [] for shape in shapes}
        p99s: dict[str, list[float]] = {shape: [] for shape in shapes}
        found: dict[str, int] = {}
        for run in range(self.sizes.runs):
            db = self._dataset_db(relay_class, dataset, template, f"dataset-{name}-{run}")

            def work(relay: RelayUnderTest) -> None:
                result = run_elsewhere(queries, relay.port, shapes, 2)
                if result.errors:
                    log(f"  {name} query errors: {result.errors[:3]}")
                for shape, values in result.latencies.items():
                    latencies[shape].extend(values)
                    p50s[shape].append(percentile(values, 0.5))
                    p99s[shape].append(percentile(values, 0.99))
                    found[shape] = result.events[shape] // max(1, len(values))
                runs.append(self._ingest(relay, events))

            try:
                self._run_relay(relay_class, db, work)
            finally:
                self._remove(db)
            log(f"{name} at {size}: ingest run {run + 1}: {runs[-1]['rate']:,.0f} ev/s")
        self.table.put(
            f"ingest, DB holding {size} (events/s)", name, median([r["rate"] for r in runs])
        )
        self.table.put(
            f"  server CPU per event, {size} (us)", name, median([r["server_cpu_us"] for r in runs])
        )
        self._put_postgres_cpu(size, name, runs)
        for shape in shapes:
            self.table.put(f"query {shape}: p50 (ms)", name, median(p50s[shape]) * 1e3)
            self.table.put(f"query {shape}: p99 (ms)", name, median(p99s[shape]) * 1e3)
            self.table.note(f"query {shape}: p50 (ms)", name, f"{found.get(shape, 0)} ev")

    def fanout(self, events: list[bytes]) -> None:
        s = self.sizes
        nonmatching = [{"authors": [f"{n:064x}"]} for n in range(s.nonmatching)]
        for label, extra in (("", []), (f", +{s.nonmatching} non-matching subs each", nonmatching)):
            p50s, p99s, rates = [], [], []
            for run in range(s.runs):
                db = self.workdir / f"fanout-{run}.sqlite"
                half = len(events) // 2
                batch = events[:half] if not extra else events[half:]

                result = self._run_relay(
                    PyRelay, db, functools.partial(self._fanout_once, extra=extra, events=batch)
                )
                _remove_db(db)
                p50s.append(percentile(result.latencies, 0.5))
                p99s.append(percentile(result.latencies, 0.99))
                rates.append(result.delivered_per_second)
                if result.missing:
                    log(f"  fan-out: {result.missing} rounds timed out")
            subs = f"{s.subscribers:,} subscribers{label}"
            self.table.put(f"fan-out to {subs}: p50 (ms)", PyRelay.name, median(p50s) * 1e3)
            self.table.put(f"fan-out to {subs}: p99 (ms)", PyRelay.name, median(p99s) * 1e3)
            log(f"fan-out{label}: p50 {median(p50s) * 1e3:.1f} ms")
            if not extra:
                self.table.put(
                    f"fan-out stream to {s.subscribers:,} (deliveries/s)",
                    PyRelay.name,
                    median(rates),
                )

    def pg_instances(self) -> None:
        """bench/pg_multi.py's measures: ingest through several relay instances on one
        PostgreSQL database at once, and a live event's way from one instance to another."""
        s, pg, name = self.sizes, self._pg(), PgRelay.name
        # Twice the single relay's: 2 instances here take 13,000 events/s, so 100,000
        # would run out before the 10 s do.
        log(f"signing {2 * s.ingest_events:,} events for the instances on PostgreSQL")
        events = ingest_events(2 * s.ingest_events, self.workers)
        figures: dict[int, list[IngestFigures]] = {count: [] for count in s.pg_instances}
        for run in range(s.runs):
            for count in s.pg_instances:
                found = asyncio.run(measure_ingest(pg.url, count, events, s.pg_instance_seconds))
                figures[count].append(found)
                log(f"{count} instance(s) on PostgreSQL, run {run + 1}: {found.rate:,.0f} ev/s")
        for count, runs in figures.items():
            instances = f"{count} instance{'s' if count > 1 else ''}"
            self.table.put(
                f"ingest through {instances} on one database (events/s)",
                name,
                median([f.rate for f in runs]),
            )
            self.table.put(
                f"  relay CPU per event, {instances} (us)", name, median([f.relay_us for f in runs])
            )
            self.table.put(
                f"  PostgreSQL backends CPU per event, {instances} (us)",
                name,
                median([f.postgres_us for f in runs]),
            )
        notes = ingest_events(s.pg_latency_rounds * 2, 1, namespace="pg-latency")
        p50s: dict[str, list[float]] = {}
        p99s: dict[str, list[float]] = {}
        for _ in range(s.runs):
            for path, found_in in asyncio.run(measure_latency(pg.url, notes)).items():
                p50s.setdefault(path, []).append(percentile(found_in, 0.5))
                p99s.setdefault(path, []).append(percentile(found_in, 0.99))
        for path in p50s:
            label = f"live event {path}, {s.pg_latency_rounds} one at a time"
            self.table.put(f"{label}: p50 (ms)", name, median(p50s[path]) * 1e3)
            self.table.put(f"{label}: p99 (ms)", name, median(p99s[path]) * 1e3)

    def idle_memory(self) -> None:
        s = self.sizes
        variants = [
            (False, {}, "no compression offered"),
            (True, {}, "clients offering deflate"),
            (True, {"RELAY_COMPRESSION": "none"}, "clients offering deflate, compression = none"),
        ]
        for offer_deflate, env, client in variants:
            per_connection = []
            for run in range(s.runs):
                db = self.workdir / f"idle-{run}.sqlite"

                work = functools.partial(self._idle_once, offer_deflate=offer_deflate)
                per_connection.append(self._run_relay(PyRelay, db, work, env))
                _remove_db(db)
            self.table.put(
                f"memory per idle connection, {s.idle_connections:,} open, {client} (KiB)",
                PyRelay.name,
                median(per_connection) / 1024,
            )

    def _fanout_once(
        self, relay: RelayUnderTest, extra: list[dict[str, Any]], events: list[bytes]
    ) -> FanoutResult:
        s = self.sizes
        result: FanoutResult = run_elsewhere(
            fanout,
            relay.port,
            s.subscribers,
            {"kinds": [1]},
            extra,
            events,
            s.fanout_rounds,
            s.stream_seconds,
        )
        return result

    def _idle_once(self, relay: RelayUnderTest, offer_deflate: bool) -> float:
        """Resident bytes the relay gains per idle connection."""
        time.sleep(0.5)
        before = resident_bytes(relay.pid)
        holder = Elsewhere(idle_connections, relay.port, self.sizes.idle_connections, offer_deflate)
        opened: int = holder.message()
        time.sleep(1.0)
        during = resident_bytes(relay.pid)
        holder.send("close")
        holder.result()
        return (during - before) / opened


def _remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one run: a smoke test of the bench itself"
    )
    parser.add_argument("--only-pyrelay", action="store_true", help="skip the baselines")
    parser.add_argument("--runs", type=int, help="repetitions of each measurement")
    parser.add_argument("--dataset", type=int, help="events in the stored dataset")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="postgres: also the relay on PostgreSQL, in a column beside SQLite's, and"
        " ingest through several instances on one database",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_URL,
        help="the PostgreSQL server for --store postgres (a superuser: the bench creates"
        " databases); default RELAY_TEST_POSTGRES or the tests' server",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this part (repeatable): fresh = ingest on an empty DB, stored ="
        " ingest and queries on the dataset, fanout, memory, instances (--store postgres:"
        " several relays on one database)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**vars(sizes), "runs": args.runs})
    if args.dataset:
        sizes = Sizes(**{**vars(sizes), "dataset": args.dataset})
    ours: list[type[RelayUnderTest]] = [PyRelay]
    pg = None
    if args.store == "postgres":
        ours.append(PgRelay)
        pg = PgServer(args.pg_url)
        try:
            pg.check()
        except (OSError, asyncpg.PostgresError) as exc:
            log(f"--store postgres: cannot use {describe(args.pg_url)}: {exc}")
            return 2
    wanted: list[type[RelayUnderTest]] = (
        ours if args.only_pyrelay else [*ours, NostrRelay, LocalRelay]
    )
    relays = [r for r in wanted if r.available()]
    missing = [r.name for r in wanted if not r.available()]
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pyrelay-bench-"))
    try:
        table = Bench(sizes, relays, workdir, set(args.only or SECTIONS), pg).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.only_pyrelay:
        table.remark("baselines skipped (--only-pyrelay)")
    for name in missing:
        table.remark(f"{name}: not installed, baselines skipped for it (pip install '.[bench]')")
    if pg is not None:
        table.remark(
            f"{PgRelay.name}: the same relay on the PostgreSQL server at {describe(pg.url)},"
            f" a fresh database per run; pyrelay vs {PgRelay.name}: SQLite against it"
        )
    options = (" --quick" if args.quick else "") + (
        " --store postgres" if args.store == "postgres" else ""
    )
    table.remark(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {sizes.runs} run(s), medians;"
        f" `python -m bench{options}` took {time.monotonic() - started:.0f} s"
    )
    print(table.markdown())
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(table.as_dict(), option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
