"""Where ingest spends the machine: one fresh-database ingest run, per process and thread.

    python -m bench.threads [--window 8] [--seconds 8] [--connections 50]

Starts pyrelay on a fresh database, runs the bench's ingest load against it, and prints the
rate, each of the relay's threads' share of a core (the relay and its write and verify
processes, from /proc) and how the machine's cores were spent meanwhile (user, system, idle,
waiting for the disk). Only the seconds in which the relay's event loop was busy count, so
the load generator's start-up is left out.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import ingest_events
from bench.load import ingest, run_elsewhere
from bench.relays import CLOCK_TICKS, PyRelay, process_tree

SAMPLE_SECONDS = 0.5
# The event loop counts as busy above this share of a core.
BUSY_SHARE = 0.15
PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")

ThreadKey = tuple[str, int]


@dataclass
class Sample:
    at: float
    threads: dict[ThreadKey, float]  # CPU seconds so far, per (process role, thread id)
    machine: list[int]  # /proc/stat's first line, in clock ticks


@dataclass
class Sampler:
    pid: int
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(Sample(time.monotonic(), self.threads(), machine_ticks()))
            time.sleep(SAMPLE_SECONDS)

    def threads(self) -> dict[ThreadKey, float]:
        found: dict[ThreadKey, float] = {}
        for pid in process_tree(self.pid):
            role = process_role(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                except FileNotFoundError:
                    continue
                found[(role, int(task.name))] = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
        return found


def process_role(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return "gone"
    for module, role in ((b"write_process", "write process"), (b"verify_process", "verify")):
        if module in command:
            return role
    return "relay"


def machine_ticks() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1 : 1 + len(PROC_STAT_FIELDS)]]


def busy_window(samples: list[Sample]) -> tuple[Sample, Sample]:
    """The first and last sample between which the relay's event loop was busy."""
    loop = min(key for key in samples[0].threads if key[0] == "relay")
    busy = [
        i
        for i in range(1, len(samples))
        if (samples[i].threads.get(loop, 0) - samples[i - 1].threads.get(loop, 0))
        / (samples[i].at - samples[i - 1].at)
        > BUSY_SHARE
    ]
    if len(busy) < 3:
        raise RuntimeError("the relay was never busy: did the load reach it?")
    return samples[busy[1]], samples[busy[-2]]


def report(first: Sample, last: Sample, rate: float, generator_cpu: float) -> None:
    seconds = last.at - first.at
    ticks = [b - a for a, b in zip(first.machine, last.machine, strict=True)]
    machine = ", ".join(
        f"{name} {tick / CLOCK_TICKS / seconds:.0%}"
        for name, tick in zip(PROC_STAT_FIELDS, ticks, strict=True)
        if name != "nice"
    )
    print(f"ingest: {rate:,.0f} events/s; load generator {generator_cpu:.2f} of a core")
    print(f"machine over {seconds:.1f} s (shares of one core; 2 cores = 200%): {machine}")
    for key in sorted(last.threads):
        share = (last.threads[key] - first.threads.get(key, 0.0)) / seconds
        if share >= 0.01:
            print(f"  {key[0]:<14} thread {key[1]:<8} {share:6.1%} of a core")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__)
    parser.add_argument("--window", type=int, default=8, help="EVENTs unanswered per connection")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    events = ingest_events(100_000, 2)
    with tempfile.TemporaryDirectory() as workdir:
        relay = PyRelay(Path(workdir))
        relay.start(Path(workdir) / "relay.sqlite")
        sampler = Sampler(relay.pid)
        thread = threading.Thread(target=sampler.run)
        try:
            thread.start()
            result = run_elsewhere(
                ingest, relay.port, events, args.connections, args.window, args.seconds
            )
        finally:
            sampler.stop.set()
            thread.join()
            relay.stop()
    first, last = busy_window(sampler.samples)
    report(first, last, result.rate, result.generator_cpu / result.seconds)


if __name__ == "__main__":
    main()
