"""The live-subscription index on its own: time of one matching() and bytes per filed value.

    python -m bench.matching [--before REV] [--repeat 200] [--quick]

Times `SubscriptionIndex.matching()` for one kind-1 event against the sets of issue 12
(attack 4: 20 connections x 32 subscriptions x 16 filters `{"kinds":[1],"since":2**40}`,
identical or each with its own since; the same with until in the past; attack 1: 32 x 16
filters of 1,000 distinct `#t` values) and against 1,000 ordinary subscribers, and measures
with tracemalloc what the index allocates per filed value. With `--before REV` the index of
that git revision (`git show REV:relay/core/subscriptions.py`) is measured beside this one,
in the same process. No relay, no network: the figures are the index's own. `--quick`
shrinks every set (2 attacking connections, 50 tag values, 50 subscribers): a smoke test.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from relay.core import subscriptions
from relay.core.event import Event
from relay.core.filters import Filter, parse_filter

NOW = 1_700_000_000
FAR = 2**40
SIG = "00" * 64
Subs = list[tuple[str, str, tuple[Filter, ...]]]


def hex_key(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


@dataclass(frozen=True)
class Sizes:
    connections: int = 20
    tag_values: int = 1000
    subscribers: int = 1000


QUICK = Sizes(connections=2, tag_values=50, subscribers=50)


def attack(make: Callable[[int, int, int], dict[str, Any]], connections: int) -> Subs:
    """connections x 32 subscriptions x 16 filters, `make(connection, sub, filter)`."""
    return [
        (f"c{c}", f"s{s}", tuple(parse_filter(make(c, s, n)) for n in range(16)))
        for c in range(connections)
        for s in range(32)
    ]


def ordinary(rng: random.Random, authors: list[str], subscribers: int) -> Subs:
    """Clients with a follow feed (100 of the authors, notes and reposts), their mentions,
    and for one in ten the global feed since a minute ago."""
    subs: Subs = []
    for c in range(subscribers):
        me = hex_key(rng)
        filters = [
            {"authors": rng.sample(authors, 100), "kinds": [1, 6], "limit": 0},
            {"#p": [me], "limit": 0},
        ]
        if c % 10 == 0:
            filters.append({"kinds": [1], "since": NOW - 60, "limit": 0})
        subs.append((f"c{c}", "feed", tuple(parse_filter(f) for f in filters)))
    return subs


def scenarios(rng: random.Random, sizes: Sizes) -> dict[str, tuple[Subs, Event]]:
    n = sizes.connections
    values = range(sizes.tag_values)
    authors = [hex_key(rng) for _ in range(2000)]
    note = Event(hex_key(rng), authors[7], NOW, 1, [["t", "nostr"], ["e", hex_key(rng)]], "", SIG)
    return {
        f"attack 4: {n} x 32 x 16 identical {{kinds:[1], since:2**40}}": (
            attack(lambda c, s, i: {"kinds": [1], "since": FAR, "limit": 0}, n),
            note,
        ),
        "attack 4, each filter its own since beyond 2**40": (
            attack(lambda c, s, i: {"kinds": [1], "since": FAR + c * 512 + s * 16 + i}, n),
            note,
        ),
        "attack 4, each filter its own until in the past year": (
            attack(lambda c, s, i: {"kinds": [1], "until": NOW - 1 - c * 512 - s * 16 - i}, n),
            note,
        ),
        f"attack 1: 32 x 16 filters of {sizes.tag_values:,} distinct #t values": (
            attack(lambda c, s, i: {"#t": [f"{s}.{i}.{v}" for v in values], "limit": 0}, 1),
            Event(hex_key(rng), authors[7], NOW, 1, [["t", f"5.5.{len(values) // 2}"]], "", SIG),
        ),
        f"{sizes.subscribers:,} ordinary subscribers (follows, mentions, a tenth global)": (
            ordinary(rng, authors, sizes.subscribers),
            note,
        ),
    }


def load_index_at(rev: str) -> ModuleType:
    """The subscriptions module as it was at `rev`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{rev}:relay/core/subscriptions.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="bench-matching-") as tmp:
        path = Path(tmp) / "subscriptions_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("subscriptions_before", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


@dataclass
class Figures:
    matching_us: float
    found: int
    add_bytes: float


def measure(module: ModuleType, subs: Subs, event: Event, repeat: int) -> Figures:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = module.SubscriptionIndex()
    for owner, sub_id, filters in subs:
        index.add(owner, sub_id, filters)
    added = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    found = len(index.matching(event))  # wakes what this event reaches, once
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        index.matching(event)
        times.append(time.perf_counter_ns() - start)
    return Figures(statistics.median(times) / 1e3, found, added)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.matching", description=__doc__)
    parser.add_argument("--before", help="a git revision whose index to measure beside")
    parser.add_argument("--repeat", type=int, default=200, help="matching() calls timed")
    parser.add_argument("--quick", action="store_true", help="tiny sets: a smoke test")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    indexes = {"now": subscriptions}
    if args.before:
        indexes = {f"at {args.before}": load_index_at(args.before), **indexes}
    print("| set | entries | index | matching() median (us) | found | bytes per entry |")
    print("|---|---|---|---|---|---|")
    for name, (subs, event) in scenarios(random.Random(12), sizes).items():
        filed = sum(subscriptions.entries(filters) for _, _, filters in subs)
        for label, module in indexes.items():
            f = measure(module, subs, event, args.repeat)
            print(
                f"| {name} | {filed:,} | {label} | {f.matching_us:,.1f} | {f.found:,} |"
                f" {f.add_bytes / filed:,.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
