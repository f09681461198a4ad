"""NIP-01 filters: parsing with exact checks, and matching one event."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.core import search
from relay.core.errors import Invalid
from relay.core.event import HEX64, MAX_KIND, MAX_TIMESTAMP, Event


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter; a field left as None places no condition. Empty sets match nothing."""

    ids: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    kinds: frozenset[int] | None = None
    # (name, values) pairs sorted by name: hashable, so a filter can sit in a set.
    tags: tuple[tuple[str, frozenset[str]], ...] = ()
    since: int | None = None
    until: int | None = None
    limit: int | None = None
    # NIP-50: the words every matching content holds (None: no search).
    search: tuple[str, ...] | None = None

    def matches(self, event: Event) -> bool:
        if self.ids is not None and event.id not in self.ids:
            return False
        if self.authors is not None and event.pubkey not in self.authors:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.since is not None and event.created_at < self.since:
            return False
        if self.until is not None and event.created_at > self.until:
            return False
        if self.search is not None and not search.content_matches(self.search, event.content):
            return False
        return all(self._tag_matches(event, name, values) for name, values in self.tags)

    @staticmethod
    def _tag_matches(event: Event, name: str, values: frozenset[str]) -> bool:
        return any(len(tag) >= 2 and tag[0] == name and tag[1] in values for tag in event.tags)

    @property
    def can_match(self) -> bool:
        """False when the filter provably matches nothing (an empty set, since > until)."""
        # Plain tests, no generator: a REQ asks this of each filter several times.
        ids, authors, kinds = self.ids, self.authors, self.kinds
        if (
            (ids is not None and not ids)
            or (authors is not None and not authors)
            or (kinds is not None and not kinds)
        ):
            return False
        for _, values in self.tags:
            if not values:
                return False
        since, until = self.since, self.until
        return since is None or until is None or since <= until

    def with_limit(self, limit: int | None) -> Filter:
        if limit == self.limit:
            return self
        # Field by field: dataclasses.replace costs several times more, once a REQ.
        return Filter(
            ids=self.ids,
            authors=self.authors,
            kinds=self.kinds,
            tags=self.tags,
            since=self.since,
            until=self.until,
            limit=limit,
            search=self.search,
        )


def most_results(filters: Iterable[Filter]) -> int | None:
    """The most stored events a query of `filters` can return (None: no bound): each
    filter at most its limit and its ids, an event several filters find once."""
    most = 0
    for f in filters:
        bound = f.limit
        if f.ids is not None and (bound is None or len(f.ids) < bound):
            bound = len(f.ids)
        if bound is None:
            return None
        most += bound
    return most


def matches_any(filters: Iterable[Filter], event: Event) -> bool:
    return any(f.matches(event) for f in filters)


def _string_set(name: str, value: Any, *, hex64: bool = False) -> frozenset[str]:
    if type(value) is not list:
        raise Invalid(f"{name} must be an array")
    for item in value:
        if type(item) is not str:
            raise Invalid(f"{name} must hold strings")
        if hex64 and not HEX64.fullmatch(item):
            raise Invalid(f"{name} must hold 64 lowercase hex characters")
    return frozenset(value)


def _int_set(name: str, value: Any, high: int) -> frozenset[int]:
    if type(value) is not list:
        raise Invalid(f"{name} must be an array")
    for item in value:
        if type(item) is not int or not 0 <= item <= high:
            raise Invalid(f"{name} must hold integers from 0 to {high}")
    return frozenset(value)


def _non_negative(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise Invalid(f"{name} must be a non-negative integer")
    return value


def parse_filter(obj: Any) -> Filter:
    if type(obj) is not dict:
        raise Invalid("a filter must be an object")
    ids = authors = None
    kinds = None
    tags: dict[str, frozenset[str]] = {}
    since = until = limit = None
    query = None
    for key, value in obj.items():
        if key == "ids":
            ids = _string_set(key, value, hex64=True)
        elif key == "authors":
            authors = _string_set(key, value, hex64=True)
        elif key == "kinds":
            kinds = _int_set(key, value, MAX_KIND)
        elif key == "since":
            since = _non_negative(key, value)
        elif key == "until":
            until = _non_negative(key, value)
        elif key == "limit":
            limit = _non_negative(key, value)
        elif key.startswith("#"):
            name = key[1:]
            if len(name) != 1 or not (name.isascii() and name.isalpha()):
                raise Invalid(f"{key}: only single-letter tags can be filtered")
            tags[name] = _string_set(key, value)
        elif key == "search":
            query = search.parse_query(value)
        # Other keys are ignored so that newer clients keep working (NIP-01 is additive).
    tag_items = tuple(sorted(tags.items()))
    return Filter(ids, authors, kinds, tag_items, since, until, limit, query)
