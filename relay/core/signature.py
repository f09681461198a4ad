"""BIP-340 Schnorr signature checks with coincurve."""

from __future__ import annotations

from collections.abc import Sequence

from coincurve import PublicKeyXOnly

from relay.core.event import Event


def verify(event: Event) -> bool:
    """Whether `sig` is pubkey's BIP-340 signature of the (already checked) id."""
    return verify_bytes(
        bytes.fromhex(event.pubkey), bytes.fromhex(event.id), bytes.fromhex(event.sig)
    )


def verify_bytes(pubkey: bytes, message: bytes, sig: bytes) -> bool:
    try:
        return bool(PublicKeyXOnly(pubkey).verify(sig, message))
    except ValueError:  # pubkey is not a point on the curve, or a malformed signature
        return False


def verify_many(events: Sequence[Event]) -> list[bool]:
    """Verify a chunk in one call: run on a worker thread, coincurve releases the GIL."""
    return [verify(event) for event in events]
