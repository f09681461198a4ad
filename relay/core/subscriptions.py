"""The index of live subscriptions: which ones want a newly accepted event.

Each filter is filed under its most selective field, so the cost of a new event
depends on the subscriptions that could match it, not on all of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import Generic, TypeVar

from relay.core.event import Event
from relay.core.filters import Filter

Owner = TypeVar("Owner", bound=Hashable)
Key = tuple[str, object]

CATCH_ALL: Key = ("*", None)


def index_keys(f: Filter) -> list[Key]:
    """The buckets a filter is filed under: all values of its most selective field."""
    if f.ids is not None:
        return [("id", v) for v in f.ids]
    if f.authors is not None:
        return [("author", v) for v in f.authors]
    if f.tags:
        name, values = f.tags[0]
        return [("tag", (name, v)) for v in values]
    if f.kinds is not None:
        return [("kind", v) for v in f.kinds]
    return [CATCH_ALL]


def event_keys(event: Event) -> list[Key]:
    keys: list[Key] = [("id", event.id), ("author", event.pubkey), ("kind", event.kind)]
    keys.extend(("tag", pair) for pair in event.indexed_tags())
    keys.append(CATCH_ALL)
    return keys


class SubscriptionIndex(Generic[Owner]):
    def __init__(self) -> None:
        self._buckets: dict[Key, set[tuple[Owner, str, Filter]]] = defaultdict(set)
        self._filed: dict[tuple[Owner, str], list[tuple[Key, tuple[Owner, str, Filter]]]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def add(self, owner: Owner, sub_id: str, filters: tuple[Filter, ...]) -> None:
        self.remove(owner, sub_id)
        filed = []
        for f in filters:
            if not f.can_match:
                continue
            entry = (owner, sub_id, f)
            for key in index_keys(f):
                self._buckets[key].add(entry)
                filed.append((key, entry))
        self._filed[(owner, sub_id)] = filed

    def remove(self, owner: Owner, sub_id: str) -> None:
        for key, entry in self._filed.pop((owner, sub_id), ()):
            bucket = self._buckets[key]
            bucket.discard(entry)
            if not bucket:
                del self._buckets[key]

    def remove_owner(self, owner: Owner, sub_ids: list[str]) -> None:
        for sub_id in sub_ids:
            self.remove(owner, sub_id)

    def matching(self, event: Event) -> set[tuple[Owner, str]]:
        """(owner, sub_id) of every live subscription with a filter matching `event`."""
        found: set[tuple[Owner, str]] = set()
        for key in event_keys(event):
            bucket = self._buckets.get(key)
            if not bucket:
                continue
            for owner, sub_id, f in bucket:
                if (owner, sub_id) not in found and f.matches(event):
                    found.add((owner, sub_id))
        return found
