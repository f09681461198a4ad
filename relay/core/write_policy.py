"""What a write policy (a configured callable or a plugin) decides about a new event."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# A reason that already starts with a NIP-01 style prefix is sent as it is.
_PREFIXED = re.compile(r"^[a-z][a-z-]*: ")


class Action(Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    # OK true to the client, but the event is neither stored nor broadcast.
    SHADOW_REJECT = "shadowReject"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""

    @property
    def ok_reason(self) -> str:
        """The OK message for a rejection: `blocked: ` unless the policy gave a prefix."""
        text = self.reason or "rejected by the relay's write policy"
        return text if _PREFIXED.match(text) else f"blocked: {text}"


ACCEPT = Decision(Action.ACCEPT)
SHADOW_REJECT = Decision(Action.SHADOW_REJECT)


def reject(reason: str) -> Decision:
    return Decision(Action.REJECT, reason)


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event came from, as strfry's plugins are told: IP4 or IP6 and the address."""

    ip: str
    received_at: int

    @property
    def source_type(self) -> str:
        return "IP6" if ":" in self.ip else "IP4"
