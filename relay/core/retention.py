"""Retention rules, sans-I/O: how long each kind is kept, which kinds are never pruned, and
the storage budget past which the oldest prunable events go first."""

from __future__ import annotations

import json
from dataclasses import dataclass

from relay.core.event import MAX_KIND, Event

# "*" in retention_max_age: every kind without a rule of its own.
ANY_KIND = "*"


@dataclass(frozen=True, slots=True)
class Retention:
    # kind -> seconds an event of it is kept after its created_at.
    kind_ages: tuple[tuple[int, int], ...] = ()
    # Seconds for the kinds without a rule of their own (0: kept until the budget says).
    default_age: int = 0
    # Never pruned, by age or by budget: profiles, follow lists, relay lists.
    keep_kinds: frozenset[int] = frozenset({0, 3, 10002})
    # Bytes of database pages in use past which the oldest prunable events go (0: none).
    budget_bytes: int = 0
    # Events deleted in one transaction of the writer: ingest waits at most one batch.
    batch: int = 100

    @property
    def enabled(self) -> bool:
        return bool(self.kind_ages or self.default_age or self.budget_bytes)

    def max_age(self, kind: int) -> int:
        """Seconds an event of this kind is kept; 0 for ever (as far as age goes)."""
        if kind in self.keep_kinds:
            return 0
        for rule_kind, age in self.kind_ages:
            if rule_kind == kind:
                return age
        return self.default_age

    def too_old(self, event: Event, now: int) -> bool:
        """Whether the event is already past its kind's age: storing it would be undone."""
        age = self.max_age(event.kind)
        return age > 0 and event.created_at < now - age

    def ruled_kinds(self) -> frozenset[int]:
        """Kinds the default age does not apply to."""
        return self.keep_kinds | {kind for kind, _ in self.kind_ages}

    def encode(self) -> str:
        """JSON for the write process's command line."""
        return json.dumps(
            {
                "kind_ages": self.kind_ages,
                "default_age": self.default_age,
                "keep_kinds": sorted(self.keep_kinds),
                "budget_bytes": self.budget_bytes,
                "batch": self.batch,
            }
        )

    @classmethod
    def decode(cls, text: str) -> Retention:
        data = json.loads(text)
        return cls(
            tuple((int(kind), int(age)) for kind, age in data["kind_ages"]),
            int(data["default_age"]),
            frozenset(int(kind) for kind in data["keep_kinds"]),
            int(data["budget_bytes"]),
            int(data["batch"]),
        )


def parse_max_ages(entries: tuple[str, ...]) -> tuple[tuple[tuple[int, int], ...], int]:
    """ "kind:seconds" entries ("*:seconds" for the rest) -> (per-kind ages, default age).

    Raises ValueError naming the bad entry.
    """
    ages: dict[int, int] = {}
    default = 0
    for entry in entries:
        kind_text, sep, seconds_text = entry.strip().partition(":")
        kind_text, seconds_text = kind_text.strip(), seconds_text.strip()
        if not sep or not seconds_text.isascii() or not seconds_text.isdigit():
            raise ValueError(f"{entry!r} is not kind:seconds")
        seconds = int(seconds_text)
        if seconds < 1:
            raise ValueError(f"{entry!r}: seconds must be at least 1")
        if kind_text == ANY_KIND:
            default = seconds
        elif kind_text.isascii() and kind_text.isdigit() and int(kind_text) <= MAX_KIND:
            ages[int(kind_text)] = seconds
        else:
            raise ValueError(f"{entry!r}: {kind_text!r} is not a kind or *")
    return tuple(sorted(ages.items())), default
