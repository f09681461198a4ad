"""Pubkey and kind allow/deny lists: who may write what."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.errors import Blocked, Restricted
from relay.core.event import Event


@dataclass(frozen=True, slots=True)
class AccessLists:
    """An empty allowlist allows everyone; a denylist always wins."""

    pubkey_allow: frozenset[str] = frozenset()
    pubkey_deny: frozenset[str] = frozenset()
    kind_allow: frozenset[int] = frozenset()
    kind_deny: frozenset[int] = frozenset()

    def check(self, event: Event) -> None:
        if event.pubkey in self.pubkey_deny:
            raise Blocked("this pubkey may not publish here")
        if self.pubkey_allow and event.pubkey not in self.pubkey_allow:
            raise Restricted("only listed pubkeys may publish here")
        if event.kind in self.kind_deny:
            raise Blocked(f"kind {event.kind} is not accepted here")
        if self.kind_allow and event.kind not in self.kind_allow:
            raise Restricted(f"kind {event.kind} is not accepted here")
