"""`relay export` and `relay import` on the bench's dataset: events per second, and the
export's memory at each size.

    python -m bench.transfer [--events 100000 1000000] [--workers 2]

For each size, on a copy of the cached dataset database (bench/stores.py): `relay export`
writes every event to a JSON-lines file, then `relay import FILE` stores them into a new
database (default settings: synchronous = FULL, every signature checked). Each command
runs as its own process; its peak resident memory (the kernel's VmHWM, polled every 10 ms
until it exits) at 100,000 and at 1,000,000 events can be compared: the export reads one
snapshot in chunks, and its memory should not grow with the database.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stores import Dataset
from bench.sync import count

POLL_SECONDS = 0.01


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    stderr: str


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's peak resident memory since its exec (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(args: list[str], stdout: int | None = None) -> Run:
    """Run `python -m relay ARGS`: its wall time and its own peak RSS.

    Not wait4's ru_maxrss: a child forked from this process starts with this process's
    resident memory counted, and keeps that high-water mark across exec. VmHWM belongs to
    the exec'd program alone; it is polled until the process exits.
    """
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", *args], stdout=stdout, stderr=err.fileno()
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, peak_rss_kib(proc.pid))
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"relay {args[0]} failed ({proc.returncode}): {text}")
    return Run(seconds, peak / 1024, text.strip())


def measure(size: int, workers: int, scratch: Path) -> tuple[Run, Run, int, int]:
    dataset = Dataset(size)
    dataset.build(workers)
    source = dataset.copy_pyrelay_db(scratch / f"source-{size}.sqlite")
    events = count(source)
    exported = scratch / f"export-{size}.jsonl"
    with open(exported, "wb") as out:
        export = run(["export", "--db", str(source)], stdout=out.fileno())
        os.fsync(out.fileno())
    with open(exported, "rb") as lines_of:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: lines_of.read(1 << 20), b""))
    if lines != events:
        raise SystemExit(f"exported {lines:,} lines of {events:,} events")
    source.unlink()
    target = scratch / f"import-{size}.sqlite"
    imported = run(["import", "--db", str(target), "--no-progress", str(exported)])
    stored = count(target)
    exported.unlink()
    for path in scratch.glob(f"import-{size}.sqlite*"):
        path.unlink()
    return export, imported, events, stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(
        "| events | export (s) | export (events/s) | export peak RSS (MB) "
        "| import (s) | import (events/s) | import peak RSS (MB) | stored |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.events:
            export, imported, events, stored = measure(size, args.workers, Path(scratch))
            print(
                f"| {events:,} | {export.seconds:.1f} | {events / export.seconds:,.0f} "
                f"| {export.peak_rss_mb:.1f} | {imported.seconds:.1f} "
                f"| {events / imported.seconds:,.0f} | {imported.peak_rss_mb:.1f} "
                f"| {stored:,} |",
                flush=True,
            )
            print(f"  import: {imported.stderr.splitlines()[-1]}", flush=True)
            ok = ok and stored == events
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
