"""NIP-13 proof of work: leading zero bits of the event id, and the committed target."""

from __future__ import annotations

from relay.core.errors import ClientError
from relay.core.event import Event


class PowTooLow(ClientError):
    prefix = "pow"


def difficulty(event_id: str) -> int:
    """Leading zero bits of a hex id (`002f...` has 10)."""
    value = int(event_id, 16)
    return len(event_id) * 4 - value.bit_length()


def committed_target(event: Event) -> int | None:
    """The target difficulty the `nonce` tag commits to, when it states one as an integer."""
    for tag in event.tags:
        if len(tag) >= 3 and tag[0] == "nonce" and tag[2].isdigit() and len(tag[2]) <= 3:
            return int(tag[2])
    return None


def check_pow(event: Event, minimum: int) -> None:
    """Refuse an event with less work than `minimum` bits.

    NIP-13: a relay may also refuse an event whose nonce tag commits to a lower target,
    which was mined for less and only got lucky; that stops bulk low-target spam.
    """
    if minimum <= 0:
        return
    bits = difficulty(event.id)
    if bits < minimum:
        raise PowTooLow(f"difficulty {bits} is less than {minimum}")
    target = committed_target(event)
    if target is not None and target < minimum:
        raise PowTooLow(f"committed target {target} is less than {minimum}")
