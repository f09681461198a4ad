"""The benchmark keeps working: `python -m bench --quick` against our relay prints its table.

No figure is asserted (speed is measured by the bench, never by tests): only that every
measurement ran and produced a number.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.pg import SERVER, require_postgres

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = [
    "ingest, fresh DB (events/s)",
    "server CPU per event, fresh (us)",
    "ingest, fresh DB, search_enabled = true (events/s)",
    "load generator CPU (share of one core)",
    "ingest, DB holding 5,000 (events/s)",
    "query by id: p50 (ms)",
    "query author latest 100: p99 (ms)",
    "query 10 authors kind-1 latest 500: p50 (ms)",
    "query #e thread, 100: p50 (ms)",
    "query #p mentions, 100: p50 (ms)",
    "query kind 1 in 1-hour window: p99 (ms)",
    "fan-out to 50 subscribers: p50 (ms)",
    "fan-out to 50 subscribers, +2 non-matching subs each: p50 (ms)",
    "fan-out stream to 50 (deliveries/s)",
    "memory per idle connection, 200 open, no compression offered (KiB)",
    "memory per idle connection, 200 open, clients offering deflate (KiB)",
    "memory per idle connection, 200 open, clients offering deflate, compression = none (KiB)",
]


# --store postgres: the rows the relay on PostgreSQL fills in (its column), and those only
# it has (several instances on one database, live events between them).
POSTGRES_ROWS = [
    "ingest, fresh DB (events/s)",
    "PostgreSQL backends CPU per event, fresh (us)",
    "ingest, DB holding 5,000 (events/s)",
    "PostgreSQL backends CPU per event, 5,000 (us)",
    "query by id: p50 (ms)",
    "query 10 authors kind-1 latest 500: p50 (ms)",
    "query #t + kind 1, 100: p99 (ms)",
    "ingest through 1 instance on one database (events/s)",
    "relay CPU per event, 2 instances (us)",
    "PostgreSQL backends CPU per event, 2 instances (us)",
    "live event A -> B (across instances), 10 one at a time: p50 (ms)",
    "live event B -> B (same instance), 10 one at a time: p99 (ms)",
]


def run_quick_bench(tmp_path: Path, *options: str) -> dict[str, list[str]]:
    """`python -m bench --quick --only-pyrelay [options]`: the table's cells by row name."""
    env = {**os.environ, "BENCH_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only-pyrelay", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "baselines skipped" in result.stdout
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2:
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_bench_prints_a_number_for_every_measure(tmp_path: Path) -> None:
    rows = run_quick_bench(tmp_path)
    for row in EXPECTED_ROWS:
        assert row in rows, f"missing row {row!r} in:\n{rows}"
        assert re.match(r"[\d,.]+", rows[row][0]), f"{row}: {rows[row]!r}"
    assert rows["measure"][:2] == ["pyrelay", "target"]  # no PostgreSQL column by default
    assert not any("instance" in row for row in rows)


async def test_quick_bench_on_postgres_fills_a_column_beside_sqlite(tmp_path: Path) -> None:
    await require_postgres()
    rows = run_quick_bench(tmp_path, "--store", "postgres", "--pg-url", SERVER)
    assert rows["measure"][:2] == ["pyrelay", "pyrelay (PostgreSQL)"]
    for row in EXPECTED_ROWS:
        assert re.match(r"[\d,.]+", rows[row][0]), f"{row}: {rows[row]!r}"
    for row in POSTGRES_ROWS:
        assert row in rows, f"missing row {row!r} in:\n{rows}"
        assert re.match(r"[\d,.]+", rows[row][1]), f"{row}: {rows[row]!r}"
    # The queries found the same events in both stores' copies of the dataset.
    for row in ("query author latest 100: p50 (ms)", "query #e thread, 100: p50 (ms)"):
        sqlite, postgres = (re.findall(r"\((\d+) ev\)", cell) for cell in rows[row][:2])
        assert sqlite == postgres, rows[row]
        assert sqlite not in ([], ["0"]), rows[row]


def test_quick_matching_bench_prints_a_row_for_every_set() -> None:
    """`python -m bench.matching --quick`: each set measured, with a number in every cell."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.matching", "--quick", "--repeat", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| attack")]
    rows += [line for line in result.stdout.splitlines() if "ordinary subscribers" in line]
    assert len(rows) == 5, result.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == "now", row
        assert all(re.fullmatch(r"[\d,.]+", cell) for cell in (cells[1], *cells[3:])), row


def test_deflate_bench_prints_both_compressors_for_both_writes() -> None:
    """`python -m bench.deflate`: every row compresses (under 100%) with a CPU figure."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.deflate", "--events", "300", "--page", "100", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| alone", "| 100"))]
    assert len(rows) == 4, result.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        share = re.fullmatch(r"[\d,]+ \(([\d.]+)%\)", cells[2])
        assert share is not None, row
        assert 0 < float(share.group(1)) < 100, row
        assert re.fullmatch(r"[\d.]+", cells[3]), row
