"""NIP-86 relay management, sans-I/O: the live moderation state, the JSON-RPC methods that
change it, and the NIP-98 check of the `Authorization` header that admits an admin."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from relay.core.errors import Blocked, ClientError, Restricted
from relay.core.event import HEX64, MAX_KIND, Event, parse_event
from relay.core.signature import verify

HTTP_AUTH_KIND = 27235
# NIP-98: "a reasonable time window (suggestion 60 seconds)".
AUTH_WINDOW_SECONDS = 60
MAX_TEXT = 1000
# Refusals of check(); the PostgreSQL store gives the same ones when its own check in the
# database catches what this instance had not heard of yet (store/base.py SaveOutcome).
EVENT_BANNED = "this event is banned here"
PUBKEY_BANNED = "this pubkey is banned here"
PUBKEY_NOT_ALLOWED = "only allowed pubkeys may publish here"


class RpcError(Exception):
    """A JSON-RPC error: the message goes back as {"error": ...}."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a method changed, for the store to persist: (table, key, reason, added)."""

    table: str
    key: str
    reason: str = ""
    added: bool = True
    # A ban also deletes what is stored: the pubkey's or the event's id.
    purge_pubkey: str = ""
    purge_event: str = ""


@dataclass(slots=True)
class ModerationState:
    """Read by the write policy, the admission hook and NIP-11 on every use: no restart."""

    banned_pubkeys: dict[str, str] = field(default_factory=dict)
    allowed_pubkeys: dict[str, str] = field(default_factory=dict)
    banned_events: dict[str, str] = field(default_factory=dict)
    allowed_kinds: dict[int, str] = field(default_factory=dict)
    blocked_ips: dict[str, str] = field(default_factory=dict)
    # changerelayname / description / icon; an empty dict keeps the configured values.
    info: dict[str, str] = field(default_factory=dict)

    def check(self, event: Event) -> None:
        """Refuse an event a moderator ruled out: raises Blocked or Restricted."""
        if event.id in self.banned_events:
            raise Blocked(EVENT_BANNED)
        if event.pubkey in self.banned_pubkeys:
            raise Blocked(PUBKEY_BANNED)
        if self.allowed_pubkeys and event.pubkey not in self.allowed_pubkeys:
            raise Restricted(PUBKEY_NOT_ALLOWED)
        if self.allowed_kinds and event.kind not in self.allowed_kinds:
            raise Restricted(f"kind {event.kind} is not accepted here")

    def ip_blocked(self, ip: str) -> bool:
        return bool(self.blocked_ips) and normalize_ip(ip) in self.blocked_ips

    def restore(self, table: str, key: str, reason: str) -> None:
        """Load one persisted row (the store calls it at start)."""
        self.apply(Change(table, key, reason))

    def apply(self, change: Change) -> None:
        if change.table == "info":
            if change.added:
                self.info[change.key] = change.reason
            else:
                self.info.pop(change.key, None)
            return
        target: dict[Any, str] = getattr(self, change.table)
        key: Any = int(change.key) if change.table == "allowed_kinds" else change.key
        if change.added:
            target[key] = change.reason
        else:
            target.pop(key, None)

    def changes_to(self, other: ModerationState) -> list[Change]:
        """The changes that turn this state into `other`: what a reload from the shared
        database brings that this instance has not heard of."""
        changes: list[Change] = []
        for table in (*TABLES, "info"):
            mine: dict[Any, str] = getattr(self, table)
            theirs: dict[Any, str] = getattr(other, table)
            changes.extend(Change(table, str(key), added=False) for key in mine.keys() - theirs)
            changes.extend(
                Change(table, str(key), reason)
                for key, reason in theirs.items()
                if key not in mine or mine[key] != reason
            )
        return changes


TABLES = ("banned_pubkeys", "allowed_pubkeys", "banned_events", "allowed_kinds", "blocked_ips")


def encode_change(change: Change) -> str:
    """A change as JSON, for the other instances on a shared database (what they need to
    apply it: the events a ban deleted are already gone for them too)."""
    return json.dumps([change.table, change.key, change.reason, change.added], ensure_ascii=False)


def decode_change(text: str) -> Change | None:
    """The change encode_change wrote, or None for anything else."""
    try:
        table, key, reason, added = json.loads(text)
    except (ValueError, TypeError):
        return None
    if table not in (*TABLES, "info") or not isinstance(key, str):
        return None
    if not isinstance(reason, str) or not isinstance(added, bool):
        return None
    if table == "allowed_kinds" and not key.isdigit():
        return None
    return Change(table, key, reason, added)


def normalize_ip(text: str) -> str:
    """One spelling per address: an IPv4-mapped IPv6 address as its IPv4 form."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _param(params: list[Any], index: int, check: Callable[[Any], bool], what: str) -> Any:
    if len(params) <= index or not check(params[index]):
        raise RpcError(f"invalid params: expected {what} at position {index}")
    return params[index]


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and HEX64.fullmatch(value) is not None


def _text(value: Any) -> bool:
    """A string either store can keep: PostgreSQL text holds no U+0000, and neither
    store takes a lone surrogate (JSON's "\\ud800" parses to one)."""
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_KIND


def _ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except (ValueError, TypeError):
        return False
    return True


def _reason(params: list[Any]) -> str:
    if len(params) < 2:
        return ""
    return str(_param(params, 1, _text, "a reason string"))


def _listing(entries: dict[str, str], name: str) -> list[dict[str, str]]:
    return [{name: key, "reason": reason} for key, reason in sorted(entries.items())]


# method -> (the table it writes, the key check, what the key is, added?)
_CHANGES: dict[str, tuple[str, Callable[[Any], bool], str, bool]] = {
    "banpubkey": ("banned_pubkeys", _hex64, "a hex pubkey", True),
    "allowpubkey": ("allowed_pubkeys", _hex64, "a hex pubkey", True),
    "banevent": ("banned_events", _hex64, "a hex event id", True),
    "allowevent": ("banned_events", _hex64, "a hex event id", False),
    "allowkind": ("allowed_kinds", _kind, "a kind number", True),
    "disallowkind": ("allowed_kinds", _kind, "a kind number", False),
    "blockip": ("blocked_ips", _ip, "an IP address", True),
    "unblockip": ("blocked_ips", _ip, "an IP address", False),
}
_INFO = {
    "changerelayname": "name",
    "changerelaydescription": "description",
    "changerelayicon": "icon",
}
_LISTS = ("listbannedpubkeys", "listallowedpubkeys", "listbannedevents", "listblockedips")
SUPPORTED_METHODS = sorted(
    [
        "supportedmethods",
        *_CHANGES,
        *_INFO,
        *_LISTS,
        "listeventsneedingmoderation",
        "listallowedkinds",
    ]
)


def plan(state: ModerationState, method: Any, params: Any) -> tuple[Any, Change | None]:
    """The result of a call and the change to persist (None for a read). Raises RpcError."""
    if not isinstance(method, str):
        raise RpcError("method must be a string")
    if not isinstance(params, list):
        raise RpcError("params must be an array")
    if method in _CHANGES:
        table, check, what, added = _CHANGES[method]
        key = _param(params, 0, check, what)
        if table == "blocked_ips":
            key = normalize_ip(key)
        reason = _reason(params) if added else ""
        change = Change(table, str(key), reason, added)
        if method == "banpubkey":
            change = Change(table, key, reason, True, purge_pubkey=key)
        elif method == "banevent":
            change = Change(table, key, reason, True, purge_event=key)
        return True, change
    if method in _INFO:
        text = _param(params, 0, _text, "a string")
        return True, Change("info", _INFO[method], text)
    return _read(state, method), None


def _read(state: ModerationState, method: str) -> Any:
    if method == "supportedmethods":
        return SUPPORTED_METHODS
    if method == "listbannedpubkeys":
        return _listing(state.banned_pubkeys, "pubkey")
    if method == "listallowedpubkeys":
        return _listing(state.allowed_pubkeys, "pubkey")
    if method == "listbannedevents":
        return _listing(state.banned_events, "id")
    if method == "listblockedips":
        return _listing(state.blocked_ips, "ip")
    if method == "listallowedkinds":
        return sorted(state.allowed_kinds)
    if method == "listeventsneedingmoderation":
        # Nothing is held for review here: events are accepted or refused at once.
        return []
    raise RpcError(f"unsupported method: {method}")


def parse_request(body: bytes) -> tuple[Any, Any]:
    """The method and params of a JSON-RPC body. Raises RpcError."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RpcError("request body is not JSON") from None
    if not isinstance(request, dict):
        raise RpcError("request must be a JSON object")
    return request.get("method"), request.get("params", [])


def urls_equal(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def check_http_auth(
    header: str,
    *,
    urls: Collection[str],
    method: str,
    body: bytes,
    admins: Collection[str],
    now: int,
) -> str:
    """NIP-98: the admin pubkey a valid `Authorization: Nostr <base64>` header proves.

    Raises ClientError (its text says why) when the header is missing or wrong.
    """
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "nostr" or not token:
        raise Restricted("missing NIP-98 Authorization: Nostr <base64 event>")
    try:
        event = parse_event(json.loads(base64.b64decode(token.strip(), validate=True)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise Restricted("Authorization is not a base64 Nostr event") from None
    except ClientError as error:
        raise Restricted(f"Authorization event: {error.reason}") from None
    if event.kind != HTTP_AUTH_KIND:
        raise Restricted(f"Authorization event must be kind {HTTP_AUTH_KIND}")
    if abs(now - event.created_at) > AUTH_WINDOW_SECONDS:
        raise Restricted("Authorization event is too old or in the future")
    url = event.tag_value("u") or ""
    if not any(urls_equal(url, allowed) for allowed in urls):
        raise Restricted("Authorization event u tag is not this relay's URL")
    if (event.tag_value("method") or "").upper() != method.upper():
        raise Restricted("Authorization event method tag does not match")
    payload = event.tag_value("payload")
    if body and payload != hashlib.sha256(body).hexdigest():
        raise Restricted("Authorization event payload tag does not match the body")
    if not verify(event):
        raise Restricted("Authorization event signature is invalid")
    if event.pubkey not in admins:
        raise Restricted("this pubkey is not an admin of this relay")
    return event.pubkey
