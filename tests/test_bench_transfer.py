"""bench.sync and bench.transfer keep working, on a dataset small enough for a test: each
exits 0 (which each only does when both sides, or the import, end up holding the whole
dataset) and prints its figures. No figure is asserted: speed is the bench's business."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "BENCH_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_sync_bench_converges_and_reports_both_ways(tmp_path: Path) -> None:
    out = bench(tmp_path, "bench.sync", "--events", "3000")
    assert "3,000-event dataset, 2,970 and 2,970 held (30 and 30 only on one side)" in out
    assert "| REQ everything (2,970 events, nothing stored) |" in out
    assert "| `relay sync` both ways |" in out
    assert "down: 30 needed, 30 fetched (30 stored)" in out
    assert "up: 30 needed (30 ok)" in out
    assert "after the sync: 3,000 and 3,000 events (dataset 3,000)" in out


def test_transfer_bench_exports_and_imports_everything(tmp_path: Path) -> None:
    out = bench(tmp_path, "bench.transfer", "--events", "3000")
    row = next(line for line in out.splitlines() if line.startswith("| 3,000 |"))
    assert row.rstrip().endswith("| 3,000 |")  # stored
    assert "3,000 lines: 3,000 accepted, 0 duplicate, 0 refused, 0 invalid" in out
