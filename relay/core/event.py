"""The event model: parsing with exact field checks, kind classes, d-tag, expiration."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from relay.core import canonical
from relay.core.errors import Invalid

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX128 = re.compile(r"[0-9a-f]{128}")
MAX_KIND = 65535
# SQLite integers are signed 64-bit; anything past that cannot be a real timestamp.
MAX_TIMESTAMP = 2**63 - 1

EVENT_FIELDS = ("id", "pubkey", "created_at", "kind", "tags", "content", "sig")


class KindClass(Enum):
    REGULAR = "regular"
    REPLACEABLE = "replaceable"
    EPHEMERAL = "ephemeral"
    ADDRESSABLE = "addressable"


def kind_class(kind: int) -> KindClass:
    if kind in (0, 3) or 10000 <= kind < 20000:
        return KindClass.REPLACEABLE
    if 20000 <= kind < 30000:
        return KindClass.EPHEMERAL
    if 30000 <= kind < 40000:
        return KindClass.ADDRESSABLE
    return KindClass.REGULAR


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: list[list[str]]
    content: str
    sig: str
    # Compact JSON of the whole event, stored once and spliced into outgoing frames.
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def kind_class(self) -> KindClass:
        return kind_class(self.kind)

    @property
    def is_ephemeral(self) -> bool:
        return self.kind_class is KindClass.EPHEMERAL

    def tag_value(self, name: str) -> str | None:
        """The value of the first `name` tag, None when there is none."""
        for tag in self.tags:
            if len(tag) >= 2 and tag[0] == name:
                return tag[1]
        return None

    def tag_values(self, name: str) -> list[str]:
        """The values of every `name` tag, in order."""
        return [tag[1] for tag in self.tags if len(tag) >= 2 and tag[0] == name]

    @property
    def d_tag(self) -> str:
        """The `d` tag's value, "" when absent (NIP-01)."""
        return self.tag_value("d") or ""

    @property
    def address(self) -> tuple[int, str, str] | None:
        """(kind, pubkey, d) for replaceable and addressable events, else None."""
        cls = self.kind_class
        if cls is KindClass.REPLACEABLE:
            return (self.kind, self.pubkey, "")
        if cls is KindClass.ADDRESSABLE:
            return (self.kind, self.pubkey, self.d_tag)
        return None

    @property
    def expiration(self) -> int | None:
        """NIP-40 expiration timestamp; a malformed value counts as none."""
        value = self.tag_value("expiration")
        if value is not None and value.isascii() and value.isdigit() and len(value) <= 18:
            return int(value)
        return None

    def indexed_tags(self) -> list[tuple[str, str]]:
        """(name, value) of each single-letter tag, the ones `#x` filters can match."""
        return [
            (tag[0], tag[1])
            for tag in self.tags
            if len(tag) >= 2 and len(tag[0]) == 1 and tag[0].isascii() and tag[0].isalpha()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVENT_FIELDS}


def newer(a: Event, b: Event) -> bool:
    """Whether `a` wins over `b` as the version to keep: later, or same second and lower id."""
    return (a.created_at, b.id) > (b.created_at, a.id)


def _require_str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if type(value) is not str:
        raise Invalid(f"{name} must be a string")
    return value


def _require_int(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj.get(name)
    # bool is an int subclass and orjson turns 1e3 into a float: accept only real ints.
    if type(value) is not int:
        raise Invalid(f"{name} must be an integer")
    if not low <= value <= high:
        raise Invalid(f"{name} out of range")
    return value


def _require_tags(obj: dict[str, Any]) -> list[list[str]]:
    tags = obj.get("tags")
    if type(tags) is not list:
        raise Invalid("tags must be an array")
    for tag in tags:
        if type(tag) is not list or any(type(item) is not str for item in tag):
            raise Invalid("each tag must be an array of strings")
    return tags


def parse_event(obj: Any) -> Event:
    """Check every field's presence, JSON type and form, then the id; not the signature."""
    if type(obj) is not dict:
        raise Invalid("event must be an object")
    event_id = _require_str(obj, "id")
    pubkey = _require_str(obj, "pubkey")
    sig = _require_str(obj, "sig")
    if not HEX64.fullmatch(event_id):
        raise Invalid("id must be 64 lowercase hex characters")
    if not HEX64.fullmatch(pubkey):
        raise Invalid("pubkey must be 64 lowercase hex characters")
    if not HEX128.fullmatch(sig):
        raise Invalid("sig must be 128 lowercase hex characters")
    created_at = _require_int(obj, "created_at", 0, MAX_TIMESTAMP)
    kind = _require_int(obj, "kind", 0, MAX_KIND)
    tags = _require_tags(obj)
    content = _require_str(obj, "content")
    try:
        expected = canonical.event_id(pubkey, created_at, kind, tags, content)
    except TypeError as exc:  # lone surrogates cannot be encoded as UTF-8
        raise Invalid("event contains text that is not valid UTF-8") from exc
    if expected != event_id:
        raise Invalid("event id does not match its content")
    raw = canonical.dumps(
        {
            "id": event_id,
            "pubkey": pubkey,
            "created_at": created_at,
            "kind": kind,
            "tags": tags,
            "content": content,
            "sig": sig,
        }
    )
    return Event(event_id, pubkey, created_at, kind, tags, content, sig, raw)


def event_from_raw(raw: bytes) -> Event:
    """Rebuild an Event from JSON this relay stored; trusted, so not re-checked."""
    obj = canonical.loads(raw)
    return Event(
        obj["id"],
        obj["pubkey"],
        obj["created_at"],
        obj["kind"],
        obj["tags"],
        obj["content"],
        obj["sig"],
        raw,
    )
