"""The results table: one row per measure, one column per relay, ratios to the baselines."""

from __future__ import annotations

import math
from typing import Any

OURS = "pyrelay"
# Issue 3's targets, by the start of a row's name: (text, holds(value)).
TARGETS: list[tuple[str, str, Any]] = [
    ("ingest, fresh DB", ">= 8,000", lambda v: v >= 8000),
    ("ingest, DB holding", ">= 3,000", lambda v: v >= 3000),
    ("query", "", None),  # filled per row below
    ("fan-out to", "", None),
    ("memory per idle connection", "< 25", lambda v: v < 25),
]
# Rows where a bigger number is better, for the ratio's direction.
HIGHER_IS_BETTER = ("ingest,", "fan-out stream")


def target_for(row: str) -> tuple[str, Any]:
    if row.startswith("query"):
        if row.endswith("p50 (ms)"):
            return "< 2", lambda v: v < 2
        return "< 20", lambda v: v < 20
    if row.startswith("fan-out to") and row.endswith("p50 (ms)"):
        return "< 50", lambda v: v < 50
    for prefix, text, holds in TARGETS:
        if row.startswith(prefix) and holds is not None:
            return text, holds
    return "", None


def _format(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class Table:
    def __init__(self, relays: list[str]) -> None:
        self.relays = relays
        self.rows: dict[str, dict[str, float]] = {}
        self.notes: dict[tuple[str, str], str] = {}
        self.remarks: list[str] = []

    def put(self, row: str, relay: str, value: float) -> None:
        self.rows.setdefault(row, {})[relay] = value

    def note(self, row: str, relay: str, text: str) -> None:
        self.notes[(row, relay)] = text

    def remark(self, text: str) -> None:
        self.remarks.append(text)

    def ratio(self, row: str, baseline: str) -> float | None:
        values = self.rows[row]
        ours, theirs = values.get(OURS), values.get(baseline)
        if ours is None or theirs is None or not ours or not theirs:
            return None
        if math.isnan(ours) or math.isnan(theirs):
            return None
        # "x times better": throughput ours/theirs, latency and cost theirs/ours.
        if row.startswith(HIGHER_IS_BETTER):
            return ours / theirs
        return theirs / ours

    def markdown(self) -> str:
        baselines = [r for r in self.relays if r != OURS]
        header = ["measure", *self.relays, "target", "met", *(f"pyrelay vs {b}" for b in baselines)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, values in self.rows.items():
            cells = [row]
            for relay in self.relays:
                text = _format(values[relay]) if relay in values else "n/a"
                if (row, relay) in self.notes:
                    text += f" ({self.notes[(row, relay)]})"
                cells.append(text)
            target, holds = target_for(row)
            met = ""
            if holds is not None and OURS in values and not math.isnan(values[OURS]):
                met = "yes" if holds(values[OURS]) else "NO"
            cells += [target, met]
            for baseline in baselines:
                ratio = self.ratio(row, baseline)
                cells.append("" if ratio is None else f"{ratio:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "pyrelay vs X: how many times better pyrelay is than X (>1: faster or smaller)."
        )
        lines.extend(self.remarks)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "remarks": self.remarks}
