"""BIP-340 Schnorr signature checks with coincurve."""

from __future__ import annotations

from collections.abc import Sequence

from coincurve import PublicKeyXOnly

from relay.core.event import Event


def verify(event: Event) -> bool:
    """Whether `sig` is pubkey's BIP-340 signature of the (already checked) id."""
    try:
        key = PublicKeyXOnly(bytes.fromhex(event.pubkey))
        return bool(key.verify(bytes.fromhex(event.sig), bytes.fromhex(event.id)))
    except ValueError:  # pubkey is not a point on the curve, or a malformed signature
        return False


def verify_many(events: Sequence[Event]) -> list[bool]:
    """Verify a chunk in one call: run on a worker thread, coincurve releases the GIL."""
    return [verify(event) for event in events]
