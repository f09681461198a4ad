"""NIP-62 requests to vanish: which ones this relay honours, and what they erase.

A kind 62 event asks every relay its `relay` tags name (or all, with `ALL_RELAYS`) to
erase everything its author published up to its created_at, NIP-09 deletions included,
and the gift wraps (kind 1059) addressed to the author. The request itself is kept, so
that what it erased is refused when it is published again.
"""

from __future__ import annotations

from relay.core.auth import names_relay
from relay.core.errors import Blocked, Invalid
from relay.core.event import Event

VANISH_KIND = 62
ALL_RELAYS = "ALL_RELAYS"
GIFT_WRAP_KIND = 1059


def names_this_relay(event: Event, relay_url: str) -> bool:
    return any(
        url == ALL_RELAYS or names_relay(url, relay_url) for url in event.tag_values("relay")
    )


def check_request(event: Event, relay_url: str, enabled: bool) -> None:
    """Refuse a kind 62 this relay will not act on; other kinds pass."""
    if event.kind != VANISH_KIND:
        return
    if not enabled:
        raise Blocked("requests to vanish (NIP-62) are not accepted here")
    if not names_this_relay(event, relay_url):
        raise Invalid(f"the request to vanish names neither {relay_url} nor {ALL_RELAYS}")


def erased_by(event: Event, vanished: dict[str, int]) -> bool:
    """Whether a request to vanish covers `event`: by its author, or a gift wrap to them."""
    until = vanished.get(event.pubkey)
    if until is not None and event.created_at <= until:
        return True
    return event.kind == GIFT_WRAP_KIND and any(
        p in vanished and event.created_at <= vanished[p] for p in event.tag_values("p")
    )
