"""NIP-42 authentication, NIP-70 protected events, and who may read direct messages.

Pure decisions: the connection supplies the challenge it sent, the clock and the
relay's public URL; the signature is checked by the caller (it runs on a thread pool).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from relay.core.canonical import loads
from relay.core.errors import AuthRequired, Blocked, Invalid, Restricted
from relay.core.event import Event
from relay.core.filters import Filter

AUTH_KIND = 22242
# How far an AUTH event's created_at may be from the relay's clock, in seconds.
AUTH_WINDOW = 600
# Kinds whose content is private to the parties named by pubkey and `p` tags:
# 4 (NIP-04 DM), 13 (NIP-59 seal: its tags are empty, so only its author reads it),
# 14 and 15 (NIP-17 chat and file messages, normally unsigned rumors inside a seal, but
# if one is published openly it is still a private message), 1059 (NIP-59 gift wrap,
# addressed to its `p` tag). Public DM metadata such as kind 10050 is not private.
DM_KINDS = frozenset({4, 13, 14, 15, 1059})
PROTECTED_TAG = "-"
# NIP-18 repost and generic repost: their content may carry the reposted event's JSON.
REPOST_KINDS = frozenset({6, 16})
DEFAULT_PORTS = {"ws": 80, "wss": 443, "http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """What this relay asks of clients before it serves them (settings, not state)."""

    enabled: bool = True
    relay_url: str = "ws://127.0.0.1:7447/"
    required_for_writes: bool = False
    required_for_reads: bool = False
    # Kinds that need an authenticated client to be published or requested.
    required_kinds: frozenset[int] = frozenset()
    # Direct messages are served only to their author or a tagged recipient.
    protect_dms: bool = True

    @property
    def dm_kinds(self) -> frozenset[int]:
        return DM_KINDS if self.enabled and self.protect_dms else frozenset()

    def advertised(self) -> dict[str, bool]:
        """NIP-11 `limitation` fields about authentication."""
        return {
            "auth_required": self.enabled and self.required_for_reads,
            "restricted_writes": self.enabled
            and (self.required_for_writes or bool(self.required_kinds)),
        }


@dataclass(slots=True)
class AuthState:
    """One connection's challenge and the pubkeys it has proved it holds."""

    challenge: str = field(default_factory=lambda: secrets.token_hex(16))
    pubkeys: set[str] = field(default_factory=set)

    @property
    def authenticated(self) -> bool:
        return bool(self.pubkeys)


def normalize_relay_url(url: str) -> str:
    """Compare URLs by scheme, host (any case), port (default dropped) and path (no `/` end)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url.strip()
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def names_relay(url: str, relay_url: str) -> bool:
    """Whether `url` names the relay at `relay_url` (NIP-42 `relay` tag, NIP-62 request).

    A URL with user info, a query or a fragment is refused even when its host, port and
    path match: `ws://evil@host/?x#y` is not how anyone writes a relay's address, and
    taking it would let a signed event be read as naming relays it does not name.
    """
    url = url.strip()
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    # `?` and `#` cannot appear unescaped in a path: either one starts a query or fragment.
    if "@" in netloc or "?" in url or "#" in url:
        return False
    return normalize_relay_url(url) == normalize_relay_url(relay_url)


def check_auth_event(event: Event, challenge: str, relay_url: str, now: int) -> None:
    """Everything NIP-42 asks of an AUTH event except its signature; raises Invalid."""
    if event.kind != AUTH_KIND:
        raise Invalid(f"an AUTH event must be of kind {AUTH_KIND}")
    if abs(event.created_at - now) > AUTH_WINDOW:
        raise Invalid("the AUTH event's created_at is too far from the current time")
    if event.tag_value("challenge") != challenge:
        raise Invalid("the AUTH event does not answer this connection's challenge")
    relay = event.tag_value("relay")
    if relay is None or not names_relay(relay, relay_url):
        raise Invalid(f"the AUTH event is for another relay, this one is {relay_url}")


def is_protected(event: Event) -> bool:
    """NIP-70: a `"-"` tag asks that only its author may publish the event.

    The NIP writes the tag `["-"]`, but names it by its first element ("when the `-` tag
    is present"): `["-", ""]` is the same tag with an extra value, and reading it as
    unprotected would let anyone republish what its author meant to keep here.
    """
    return any(tag[:1] == [PROTECTED_TAG] for tag in event.tags)


def embeds_protected(event: Event) -> bool:
    """NIP-70: a repost (kind 6 or 16) whose content is the JSON of a protected event.

    NIP-18 reposts carry the reposted event's JSON; of a protected event they must
    not (their content is then empty, the `e` tag still points to it). Only content that
    opens a JSON object is parsed, so a plain repost costs a string test.
    """
    if event.kind not in REPOST_KINDS or not event.content.lstrip().startswith("{"):
        return False
    try:
        embedded = loads(event.content)
    except ValueError:
        return False
    tags = embedded.get("tags") if isinstance(embedded, dict) else None
    return isinstance(tags, list) and any(
        isinstance(tag, list) and tag[:1] == [PROTECTED_TAG] for tag in tags
    )


def check_write(event: Event, state: AuthState, policy: AuthPolicy) -> None:
    """Refuse an EVENT this connection may not publish (AuthRequired, Restricted, ...)."""
    if event.kind == AUTH_KIND:
        raise Invalid("AUTH events are sent with an AUTH message, not published")
    if is_protected(event):
        if not policy.enabled:
            raise Blocked("protected events are not accepted here (no NIP-42 auth)")
        if event.pubkey not in state.pubkeys:
            _require_auth(state, "a protected event is accepted only from its author")
            raise Restricted("a protected event is accepted only from its authenticated author")
    if embeds_protected(event):
        # NIP-70: relays SHOULD summarily reject these, whoever sends them.
        raise Blocked("a repost may not embed a protected event (NIP-70)")
    if not policy.enabled:
        return
    if policy.required_for_writes:
        _require_auth(state, "this relay accepts events only from authenticated users")
    if event.kind in policy.required_kinds:
        _require_auth(state, f"kind {event.kind} is accepted only from authenticated users")


def check_read(filters: Iterable[Filter], state: AuthState, policy: AuthPolicy) -> None:
    """Refuse a REQ or COUNT this connection may not make until it authenticates."""
    if not policy.enabled or state.authenticated:
        return
    if policy.required_for_reads:
        raise AuthRequired("this relay serves only authenticated users")
    guarded = policy.required_kinds | policy.dm_kinds
    for f in filters:
        if f.kinds is not None and f.kinds & guarded:
            if f.kinds & policy.dm_kinds:
                raise AuthRequired("direct messages are served only to their parties")
            raise AuthRequired("these kinds are served only to authenticated users")


def _require_auth(state: AuthState, why: str) -> None:
    if not state.authenticated:
        raise AuthRequired(why)


def may_read(event: Event, pubkeys: set[str], dm_kinds: frozenset[int]) -> bool:
    """Whether a reader holding `pubkeys` may receive `event` (private kinds: its parties)."""
    if event.kind not in dm_kinds:
        return True
    if event.pubkey in pubkeys:
        return True
    return any(p in pubkeys for p in event.tag_values("p"))


def could_return_private(filters: Iterable[Filter], dm_kinds: frozenset[int]) -> bool:
    """Whether any filter could match an event of a private kind."""
    return bool(dm_kinds) and any(f.kinds is None or f.kinds & dm_kinds for f in filters)


def private_parts(filters: Iterable[Filter], dm_kinds: frozenset[int]) -> list[Filter]:
    """Each filter narrowed to the private kinds: together they match every private event
    the filters match."""
    narrowed = []
    for f in filters:
        kinds = dm_kinds if f.kinds is None else f.kinds & dm_kinds
        if kinds:
            narrowed.append(replace(f, kinds=frozenset(kinds), limit=None))
    return narrowed


def readable_parts(
    filters: Iterable[Filter], pubkeys: AbstractSet[str], dm_kinds: frozenset[int]
) -> list[Filter]:
    """Filters matching exactly the private events the filters match that `pubkeys` may
    read: by author, or by a `p` tag naming one of them."""
    keys = frozenset(pubkeys)
    readable = []
    for f in private_parts(filters, dm_kinds):
        authors = keys if f.authors is None else f.authors & keys
        readable.append(replace(f, authors=authors))
        tags = dict(f.tags)
        tags["p"] = keys if "p" not in tags else tags["p"] & keys
        readable.append(replace(f, tags=tuple(sorted(tags.items()))))
    return [f for f in readable if f.can_match]
