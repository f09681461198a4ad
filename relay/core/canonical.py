"""NIP-01 canonical serialization and event id.

orjson's compact output is byte-identical to NIP-01's rules: no whitespace, UTF-8 kept
raw, the seven short escapes, other control characters as lowercase `\\u00XX`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def serialize(
    pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str
) -> bytes:
    """The id preimage `[0,pubkey,created_at,kind,tags,content]`."""
    return orjson.dumps([0, pubkey, created_at, kind, tags, content])


def event_id(pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str) -> str:
    return hashlib.sha256(serialize(pubkey, created_at, kind, tags, content)).hexdigest()


def dumps(value: Any) -> bytes:
    """Compact JSON as the relay sends it."""
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    """Parse JSON; refuses NaN, invalid UTF-8 and lone surrogates (orjson.JSONDecodeError)."""
    return orjson.loads(data)


JSONDecodeError = orjson.JSONDecodeError
