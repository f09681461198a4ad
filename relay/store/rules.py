"""Pure decisions on replacement and deletion, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.event import Event

DELETION_KIND = 5
GIFT_WRAP_KIND = 1059


@dataclass(frozen=True, slots=True)
class DeletionTargets:
    """What a NIP-09 deletion request names: ids (removed where `tombstone_applies`) and
    the author's own addresses."""

    ids: list[str]
    # (kind, d) of the author's replaceable/addressable events, up to `until`.
    addresses: list[tuple[int, str]]
    until: int


def deletion_targets(deletion: Event) -> DeletionTargets:
    ids: list[str] = []
    addresses: list[tuple[int, str]] = []
    for tag in deletion.tags:
        if len(tag) < 2:
            continue
        if tag[0] == "e":
            ids.append(tag[1])
        elif tag[0] == "a":
            address = parse_address(tag[1])
            # Only the author may delete: an address naming someone else is ignored.
            if address is not None and address[1] == deletion.pubkey:
                addresses.append((address[0], address[2]))
    return DeletionTargets(ids, addresses, deletion.created_at)


def parse_address(value: str) -> tuple[int, str, str] | None:
    """`kind:pubkey:d` -> (kind, pubkey, d), or None when malformed."""
    parts = value.split(":", 2)
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit():
        return None
    if len(parts[0]) > 5:
        return None
    return (int(parts[0]), parts[1], parts[2])


def can_be_deleted(event: Event) -> bool:
    """Deleting a deletion request has no effect (NIP-09)."""
    return event.kind != DELETION_KIND


def deleters(event: Event) -> set[str]:
    """The keys whose deletion request (by `e` tag) removes `event`: its author, and for a
    gift wrap its recipients (NIP-59: a wrap is signed by a throwaway key, so only the
    `p` tag names someone who can ask for it to go)."""
    if not can_be_deleted(event):
        return set()
    keys = {event.pubkey}
    if event.kind == GIFT_WRAP_KIND:
        keys.update(event.tag_values("p"))
    return keys


def tombstone_applies(event: Event, requested_by: str) -> bool:
    return requested_by in deleters(event)


def address_tombstone_applies(event: Event, until: int) -> bool:
    return can_be_deleted(event) and event.created_at <= until
