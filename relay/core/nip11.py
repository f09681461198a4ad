"""The NIP-11 relay information document, built from the running configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay import __version__
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


def information_document(info: RelayInfo, limits: Limits) -> dict[str, Any]:
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
    doc["supported_nips"] = list(SUPPORTED_NIPS)
    doc["software"] = SOFTWARE_URL
    doc["version"] = __version__
    doc["limitation"] = limits.advertised()
    return doc
