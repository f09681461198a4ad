"""The index of live subscriptions: which ones want a newly accepted event (sans-I/O).

Scope: filing the filters of open subscriptions and answering, for one new event, the
(owner, sub_id) pairs with a filter that matches it, at a cost that does not grow with
filters that cannot match it:

- Identical filters are interned: one entry, one check per event, then all its subscribers
  at once (a set union in C), however many connections sent it.
- An entry is filed under the values of one field (the one with the fewest values among ids,
  authors and tags; else kinds; else catch-all), in one dict per field keyed by the value
  itself, which the filter already holds. A dict value is the entry, or a list of the
  entries sharing that value.
- Such a list is sorted by `until`, so an event skips by bisection every entry whose `until`
  lies before its `created_at`; a filter whose `until` is older than any acceptable event is
  not filed at all.
- An entry whose `since` lies beyond every `created_at` seen so far sleeps in a heap keyed by
  `since` and is filed the first time an event reaches it: `since: 2**40` never costs a check.
- The check of an entry is compiled once for its shape, in a fixed cheap-first order, and
  leaves out what its bucket already implies (the filed field) and `until` (the bisection).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Set
from dataclasses import dataclass
from itertools import count
from operator import attrgetter
from typing import Any, Generic, TypeVar

from relay.core import search
from relay.core.event import MAX_TIMESTAMP, Event
from relay.core.filters import Filter

Owner = TypeVar("Owner", bound=Hashable)

# Tag name -> the values of the event's tags of that name.
TagMap = Mapping[str, Set[str]]
Check = Callable[[Event, TagMap], bool]

# An entry's rank is (until << SEQ_BITS) | its sequence number: unique, and ordered by until.
SEQ_BITS = 40
# An event is checked against the created_at window when it arrives and broadcast after it is
# stored: a filter is dropped as too old only with this margin, so none of those can miss it.
PAST_MARGIN = 3600

# Where an entry is filed; TAG entries sit in the dict of their tag name.
ID, AUTHOR, KIND, ALL, TAG = range(5)
# The values a catch-all entry is filed under: the one key None.
_CATCH_ALL: tuple[None] = (None,)


def filed_field(f: Filter) -> tuple[int, str | None, Collection[Any]]:
    """(field, tag name, values) a filter is filed under: the fewest values among ids,
    authors and tags (in that order on a tie), else its kinds, else the catch-all."""
    field: int = ALL
    name: str | None = None
    values: Collection[Any] = _CATCH_ALL
    if f.ids is not None:
        field, values = ID, f.ids
    authors = f.authors
    if authors is not None and (field == ALL or len(authors) < len(values)):
        field, values = AUTHOR, authors
    for tag, tag_values in f.tags:
        if field == ALL or len(tag_values) < len(values):
            field, name, values = TAG, tag, tag_values
    if field == ALL and f.kinds is not None:
        return KIND, None, f.kinds
    return field, name, values


def entries(filters: Iterable[Filter]) -> int:
    """Index entries these filters file: the values of the field each is filed under, 1 for
    a catch-all; a filter that can match nothing files none. A session's live-filter budget."""
    return sum(len(filed_field(f)[2]) for f in filters if f.can_match)


# --- compiled checks ------------------------------------------------------------------

_EMPTY: frozenset[str] = frozenset()
# One line of the check per condition, cheapest first; `{v}` is the condition's value.
_TESTS = {
    "since": "event.created_at >= {v}",
    "kinds": "event.kind in {v}",
    "authors": "event.pubkey in {v}",
    "ids": "event.id in {v}",
    "tag": "not tags.get({n}, EMPTY).isdisjoint({v})",
    "search": "content_matches({v}, event.content)",
}
_FACTORIES: dict[tuple[str, ...], Callable[..., Check]] = {}


def _factory(shape: tuple[str, ...]) -> Callable[..., Check]:
    """A function building the check for filters of this shape from their values.

    The source holds only the fixed names of _TESTS and parameter names, never a value of a
    filter; values come in as arguments and are read as closure cells (the fastest lookup).
    One factory per shape, so compiling costs nothing per filter.
    """
    factory = _FACTORIES.get(shape)
    if factory is None:
        params = [f"n{i}, v{i}" if c == "tag" else f"v{i}" for i, c in enumerate(shape)]
        tests = [_TESTS[c].format(n=f"n{i}", v=f"v{i}") for i, c in enumerate(shape)]
        source = (
            f"def make({', '.join(params)}):\n"
            f"    def check(event, tags):\n"
            f"        return {' and '.join(tests)}\n"
            f"    return check\n"
        )
        namespace: dict[str, Any] = {}
        scope = {"EMPTY": _EMPTY, "content_matches": search.content_matches}
        exec(compile(source, f"<check {'+'.join(shape)}>", "exec"), scope, namespace)
        factory = _FACTORIES[shape] = namespace["make"]
    return factory


def compile_check(f: Filter, field: int, filed_tag: str | None) -> Check | None:
    """The conditions of `f` its bucket does not imply, as one function; None when there are
    none (every event in the bucket matches, until aside)."""
    shape: list[str] = []
    args: list[Any] = []
    if f.since:
        shape.append("since")
        args.append(f.since)
    for name, values, filed in (
        ("kinds", f.kinds, KIND),
        ("authors", f.authors, AUTHOR),
        ("ids", f.ids, ID),
    ):
        if values is not None and field != filed:
            shape.append(name)
            args.append(values)
    for name, tag_values in f.tags:
        if name != filed_tag:
            shape.append("tag")
            args.extend((name, tag_values))
    if f.search is not None:
        shape.append("search")
        args.append(f.search)
    return _factory(tuple(shape))(*args) if shape else None


# --- entries --------------------------------------------------------------------------


class _Entry:
    """One distinct filter: where it is filed, its check, and who subscribed with it."""

    __slots__ = (
        "awake",
        "check",
        "field",
        "filter",
        "rank",
        "since",
        "subscribers",
        "tag",
        "values",
    )

    def __init__(self, f: Filter, seq: int) -> None:
        self.filter = f
        self.field, self.tag, self.values = filed_field(f)
        self.check = compile_check(f, self.field, self.tag)
        until = MAX_TIMESTAMP if f.until is None else f.until
        self.rank = (until << SEQ_BITS) | seq
        self.since = f.since or 0
        self.awake = False
        # (owner, sub_id) pairs: a 1-tuple for the usual single subscriber (a quarter of a
        # set's size), a set once the filter is shared.
        self.subscribers: tuple[tuple[Any, str], ...] | set[tuple[Any, str]] = ()

    def subscribe(self, key: tuple[Any, str]) -> None:
        subscribers = self.subscribers
        if not subscribers:
            self.subscribers = (key,)
        elif isinstance(subscribers, set):
            subscribers.add(key)
        elif key not in subscribers:
            self.subscribers = {*subscribers, key}

    def unsubscribe(self, key: tuple[Any, str]) -> None:
        """Removes a subscriber; a set of one goes back to a 1-tuple, none to ()."""
        subscribers = self.subscribers
        if isinstance(subscribers, set):
            subscribers.discard(key)
            if len(subscribers) <= 1:
                self.subscribers = tuple(subscribers)
        elif key in subscribers:
            self.subscribers = ()


# A bucket value: one entry, or two or more sorted by rank.
Slot = _Entry | list[_Entry]
_RANK = attrgetter("rank")


def _put(bucket: dict[Any, Slot], key: Any, entry: _Entry) -> None:
    slot = bucket.get(key)
    if slot is None:
        bucket[key] = entry
    elif isinstance(slot, list):
        insort(slot, entry, key=_RANK)
    elif isinstance(slot, _Entry):
        bucket[key] = [slot, entry] if slot.rank < entry.rank else [entry, slot]


def _take(bucket: dict[Any, Slot], key: Any, entry: _Entry) -> None:
    slot = bucket[key]
    if slot is entry:
        del bucket[key]
    elif isinstance(slot, list):
        i = bisect_left(slot, entry.rank, key=_RANK)
        assert slot[i] is entry, "an entry is filed where its rank says"
        del slot[i]
        if len(slot) == 1:
            bucket[key] = slot[0]


def _collect(slot: Slot, event: Event, tags: TagMap, floor: int, found: set[Any]) -> None:
    """Adds the subscribers of the entries in `slot` that match; `floor` is the lowest rank
    whose until reaches the event's created_at."""
    if isinstance(slot, list):
        for entry in slot[bisect_left(slot, floor, key=_RANK) :]:
            check = entry.check
            if check is None or check(event, tags):
                found.update(entry.subscribers)
    elif slot.rank >= floor and (slot.check is None or slot.check(event, tags)):
        found.update(slot.subscribers)


def _tag_map(tags: list[list[str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for tag in tags:
        if len(tag) >= 2:
            values = found.get(tag[0])
            if values is None:
                found[tag[0]] = {tag[1]}
            else:
                values.add(tag[1])
    return found


@dataclass(frozen=True)
class IndexStats:
    """What the index holds, for tests and operators."""

    subscriptions: int
    distinct_filters: int
    filed_values: int
    dormant_filters: int
    wake_times: int


class SubscriptionIndex(Generic[Owner]):
    def __init__(self, created_at_lower_limit: int | None = None) -> None:
        # With `now` given to add(): a filter whose until is older than this many seconds
        # (and a margin) can match no acceptable event and is not filed.
        self._oldest_age = created_at_lower_limit
        self._fields: tuple[dict[Any, Slot], ...] = ({}, {}, {}, {})  # ID, AUTHOR, KIND, ALL
        self._tags: dict[str, dict[str, Slot]] = {}
        # Entries whose since no event has reached yet, by since; a heap of those since
        # values (it may hold a few stale ones, dropped when popped or on a rebuild).
        self._dormant: dict[int, _Entry | set[_Entry]] = {}
        self._wake_at: list[int] = []
        self._newest = 0  # the newest created_at matched so far
        self._interned: dict[Filter, _Entry] = {}
        self._subs: dict[tuple[Owner, str], tuple[_Entry, ...]] = {}
        self._seq = count()

    def __len__(self) -> int:
        return len(self._subs)

    def add(
        self, owner: Owner, sub_id: str, filters: tuple[Filter, ...], now: int | None = None
    ) -> None:
        """Opens (or replaces) a subscription; `now` lets filters ending too long ago go."""
        self.remove(owner, sub_id)
        key = (owner, sub_id)
        held: dict[_Entry, None] = {}
        for f in filters:
            if f.can_match and not self._too_old(f, now):
                entry = self._intern(f)
                entry.subscribe(key)
                held[entry] = None
        self._subs[key] = tuple(held)

    def remove(self, owner: Owner, sub_id: str) -> None:
        key = (owner, sub_id)
        for entry in self._subs.pop(key, ()):
            entry.unsubscribe(key)
            if not entry.subscribers:
                self._drop(entry)

    def remove_owner(self, owner: Owner, sub_ids: Iterable[str]) -> None:
        for sub_id in sub_ids:
            self.remove(owner, sub_id)

    def matching(self, event: Event) -> set[tuple[Owner, str]]:
        """(owner, sub_id) of every live subscription with a filter matching `event`."""
        created_at = event.created_at
        if created_at > self._newest:
            self._newest = created_at
            if self._wake_at and self._wake_at[0] <= created_at:
                self._wake(created_at)
        found: set[tuple[Owner, str]] = set()
        floor = created_at << SEQ_BITS
        tags: TagMap = _tag_map(event.tags) if event.tags else {}
        ids, authors, kinds, catch_all = self._fields
        for slot in (
            ids.get(event.id),
            authors.get(event.pubkey),
            kinds.get(event.kind),
            catch_all.get(None),
        ):
            if slot is not None:
                _collect(slot, event, tags, floor, found)
        if self._tags and tags:
            self._collect_tags(event, tags, floor, found)
        return found

    def stats(self) -> IndexStats:
        filed = sum(len(bucket) for bucket in self._fields)
        filed += sum(len(bucket) for bucket in self._tags.values())
        dormant = sum(1 if isinstance(s, _Entry) else len(s) for s in self._dormant.values())
        return IndexStats(len(self._subs), len(self._interned), filed, dormant, len(self._wake_at))

    # --- internals ---

    def _too_old(self, f: Filter, now: int | None) -> bool:
        if now is None or self._oldest_age is None or f.until is None:
            return False
        return f.until < now - self._oldest_age - PAST_MARGIN

    def _intern(self, f: Filter) -> _Entry:
        # limit only shapes the stored part of a REQ: it does not make filters differ here.
        canonical = f.with_limit(None)
        entry = self._interned.get(canonical)
        if entry is None:
            entry = self._interned[canonical] = _Entry(canonical, next(self._seq))
            if entry.since > self._newest:
                self._sleep(entry)
            else:
                self._file(entry)
        return entry

    def _drop(self, entry: _Entry) -> None:
        del self._interned[entry.filter]
        if entry.awake:
            self._unfile(entry)
        else:
            self._unsleep(entry)

    def _bucket(self, entry: _Entry) -> dict[Any, Slot]:
        if entry.field != TAG:
            return self._fields[entry.field]
        assert entry.tag is not None
        bucket = self._tags.get(entry.tag)
        if bucket is None:
            bucket = self._tags[entry.tag] = {}
        return bucket

    def _file(self, entry: _Entry) -> None:
        entry.awake = True
        bucket = self._bucket(entry)
        for value in entry.values:
            _put(bucket, value, entry)

    def _unfile(self, entry: _Entry) -> None:
        bucket = self._bucket(entry)
        for value in entry.values:
            _take(bucket, value, entry)
        if entry.field == TAG and not bucket:
            assert entry.tag is not None
            del self._tags[entry.tag]

    def _sleep(self, entry: _Entry) -> None:
        since = entry.since
        slot = self._dormant.get(since)
        if slot is None:
            self._dormant[since] = entry
            heapq.heappush(self._wake_at, since)
        elif isinstance(slot, _Entry):
            self._dormant[since] = {slot, entry}
        else:
            slot.add(entry)

    def _unsleep(self, entry: _Entry) -> None:
        since = entry.since
        slot = self._dormant[since]
        if slot is entry:
            del self._dormant[since]
            self._trim_wake_times()
        elif isinstance(slot, set):
            slot.discard(entry)
            if len(slot) == 1:
                self._dormant[since] = next(iter(slot))

    def _trim_wake_times(self) -> None:
        """Drops the stale since values once they outnumber the live ones."""
        if not self._dormant:
            self._wake_at.clear()
        elif len(self._wake_at) > 2 * len(self._dormant):
            self._wake_at = list(self._dormant)
            heapq.heapify(self._wake_at)

    def _wake(self, created_at: int) -> None:
        wake_at = self._wake_at
        while wake_at and wake_at[0] <= created_at:
            slot = self._dormant.pop(heapq.heappop(wake_at), None)
            for entry in (slot,) if isinstance(slot, _Entry) else slot or ():
                self._file(entry)
        self._trim_wake_times()

    def _collect_tags(self, event: Event, tags: TagMap, floor: int, found: set[Any]) -> None:
        for name, values in tags.items():
            bucket = self._tags.get(name)
            if bucket is None:
                continue
            slots = [slot for value in values if (slot := bucket.get(value)) is not None]
            if len(slots) == 1:
                _collect(slots[0], event, tags, floor, found)
            elif slots:
                # One entry may sit under several of the event's values: check it once.
                unique: dict[_Entry, None] = {}
                for slot in slots:
                    unique.update(dict.fromkeys(slot if isinstance(slot, list) else (slot,)))
                for entry in unique:
                    if entry.rank >= floor and (entry.check is None or entry.check(event, tags)):
                        found.update(entry.subscribers)
