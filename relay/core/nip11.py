"""The NIP-11 relay information document, built from the running configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay import __version__
from relay.core.auth import AuthPolicy
from relay.core.limits import Limits

SUPPORTED_NIPS = (1, 9, 11, 40)
SOFTWARE_URL = "https://pypi.org/project/pyrelay-nostr/"


@dataclass(frozen=True, slots=True)
class RelayInfo:
    name: str = ""
    description: str = ""
    pubkey: str = ""
    contact: str = ""
    icon: str = ""


def optional_nips(
    auth: AuthPolicy,
    *,
    count: bool,
    search: bool = False,
    vanish: bool = False,
    negentropy: bool = False,
) -> tuple[int, ...]:
    """The optional NIPs that are switched on: 42 and 70 go with auth."""
    nips = []
    if auth.enabled:
        nips += [42, 70]
    if count:
        nips.append(45)
    if search:
        nips.append(50)
    if vanish:
        nips.append(62)
    if negentropy:
        nips.append(77)
    return tuple(nips)


def information_document(
    info: RelayInfo,
    limits: Limits,
    auth: AuthPolicy | None = None,
    extra_nips: tuple[int, ...] = (),
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        field: value
        for field, value in (
            ("name", info.name),
            ("description", info.description),
            ("pubkey", info.pubkey),
            ("contact", info.contact),
            ("icon", info.icon),
        )
        if value
    }
    # NIP-13 is enforced exactly when a difficulty is required, so listed only then.
    pow_nips = (13,) if limits.min_pow_difficulty > 0 else ()
    doc["supported_nips"] = sorted({*SUPPORTED_NIPS, *extra_nips, *pow_nips})
    doc["software"] = SOFTWARE_URL
    doc["version"] = __version__
    doc["limitation"] = limitation = limits.advertised()
    if auth is not None:
        advertised = auth.advertised()
        limitation["auth_required"] = advertised["auth_required"]
        # Other write conditions (issue 4's policies) may already restrict writes.
        limitation["restricted_writes"] = (
            bool(limitation.get("restricted_writes")) or advertised["restricted_writes"]
        )
    return doc
