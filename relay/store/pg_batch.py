"""Events -> the arguments of the PostgreSQL store's relay_save_batch, and NIP-50 words ->
tsvector / tsquery text: pure functions, unit-tested without a database.

The search words are cut here, in Python, by relay/core/search.py's own rule, and handed
to PostgreSQL as ready lexemes: its text parser splits `two-one`, URLs and numbers its own
way, and its lower() follows the server's locale, so a search would not match exactly
what the other stores match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.core import search, vanish
from relay.core.event import HEX64, Event
from relay.store import rules
from relay.store.base import SaveOutcome

# relay_save_batch's outcome codes, in the order of its comment.
OUTCOMES = (
    SaveOutcome.STORED,
    SaveOutcome.DUPLICATE,
    SaveOutcome.STALE,
    SaveOutcome.DELETED,
    SaveOutcome.VANISHED,
    SaveOutcome.BANNED_EVENT,
    SaveOutcome.BANNED_PUBKEY,
    SaveOutcome.NOT_ALLOWED,
)
# A search word longer than a query may be (core/search.py) can never be asked for.
MAX_WORD_CHARS = search.MAX_QUERY_LENGTH
# tsvector's own limits: positions 1..16383, 256 positions per lexeme, 1 MiB in all.
MAX_POSITION = 16383
MAX_POSITIONS = 256
# Well under tsvector's 1 MiB: past it a content keeps its first distinct words only.
MAX_VECTOR_BYTES = 768 * 1024


def lock_key(pubkey: str) -> int:
    """The advisory lock key of a pubkey: its first 8 bytes as a signed 64-bit integer.

    Two pubkeys sharing a key only make their batches wait for each other.
    """
    return int.from_bytes(bytes.fromhex(pubkey[:16]), "big", signed=True)


def locked_pubkeys(event: Event) -> list[str]:
    """Whose rules saving `event` reads or writes: its author's, and for a gift wrap its
    recipients' (a request to vanish by a recipient erases it)."""
    if event.kind == vanish.GIFT_WRAP_KIND:
        return [event.pubkey, *gift_wrap_recipients(event)]
    return [event.pubkey]


def gift_wrap_recipients(event: Event) -> list[str]:
    return sorted({p for p in event.tag_values("p") if HEX64.fullmatch(p)})


def _quote(word: str) -> str:
    """A lexeme in tsvector / tsquery text: quoted, with ' and \\ escaped."""
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def search_vector(content: str) -> str:
    """The content's words as tsvector text, with positions for ts_rank."""
    positions: dict[str, list[int]] = {}
    for number, word in enumerate(search.words(content), start=1):
        if len(word) > MAX_WORD_CHARS:
            continue
        seen = positions.setdefault(word, [])
        if len(seen) < MAX_POSITIONS:
            seen.append(min(number, MAX_POSITION))
    parts: list[str] = []
    size = 0
    for word, at in positions.items():
        size += len(word.encode()) + 8 + 2 * len(at)
        if size > MAX_VECTOR_BYTES:
            break
        # Positions past the cap repeat MAX_POSITION; tsvector keeps one of them.
        parts.append(_quote(word) + ":" + ",".join(map(str, dict.fromkeys(at))))
    return " ".join(parts)


def search_query(words: Sequence[str]) -> str:
    """tsquery text that every one of the words must match."""
    return " & ".join(_quote(word) for word in words)


@dataclass
class BatchArgs:
    """relay_save_batch's arguments, one list each, in its order."""

    lock_keys: list[int] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    pubkeys: list[bytes] = field(default_factory=list)
    created: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    d_tags: list[bytes | None] = field(default_factory=list)
    expirations: list[int | None] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    searches: list[str | None] = field(default_factory=list)
    tag_ends: list[int] = field(default_factory=list)
    tag_names: list[str] = field(default_factory=list)
    tag_values: list[bytes] = field(default_factory=list)
    ref_ends: list[int] = field(default_factory=list)
    refs: list[bytes] = field(default_factory=list)
    addr_ends: list[int] = field(default_factory=list)
    addr_kinds: list[int] = field(default_factory=list)
    addr_ds: list[bytes] = field(default_factory=list)

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)

    def add(self, event: Event, with_search: bool) -> None:
        address = event.address
        self.ids.append(bytes.fromhex(event.id))
        self.pubkeys.append(bytes.fromhex(event.pubkey))
        self.created.append(event.created_at)
        self.kinds.append(event.kind)
        self.d_tags.append(None if address is None else address[2].encode())
        self.expirations.append(event.expiration)
        self.raws.append(event.raw)
        self.searches.append(search_vector(event.content) if with_search else None)
        for name, value in dict.fromkeys(event.indexed_tags()):
            self.tag_names.append(name)
            self.tag_values.append(value.encode())
        self.tag_ends.append(len(self.tag_names))
        self.refs.extend(bytes.fromhex(ref) for ref in _refs(event))
        self.ref_ends.append(len(self.refs))
        if event.kind == rules.DELETION_KIND:
            for kind, d in dict.fromkeys(rules.deletion_targets(event).addresses):
                self.addr_kinds.append(kind)
                self.addr_ds.append(d.encode())
        self.addr_ends.append(len(self.addr_kinds))


def _refs(event: Event) -> list[str]:
    """A deletion's `e` ids; a gift wrap's recipients; nothing for other kinds."""
    if event.kind == rules.DELETION_KIND:
        targets = rules.deletion_targets(event).ids
        # Anything but an event id can name no stored event.
        return list(dict.fromkeys(t for t in targets if HEX64.fullmatch(t)))
    if event.kind == vanish.GIFT_WRAP_KIND:
        return gift_wrap_recipients(event)
    return []


def batch_args(events: Sequence[Event], with_search: bool) -> BatchArgs:
    args = BatchArgs()
    keys: set[int] = set()
    for event in events:
        args.add(event, with_search)
        keys.update(lock_key(pubkey) for pubkey in locked_pubkeys(event))
    args.lock_keys = sorted(keys)
    return args


def outcomes_of(codes: Sequence[int]) -> list[SaveOutcome]:
    return [OUTCOMES[code] for code in codes]
