"""The path of one well-formed event, from a client or a mirror peer, to its `OK` answer.

Checks that need no signature come first (limits, a request to vanish, access lists and
proof of work, moderation, retention age, a blocked address), then the signature, the
write policy's decision, and the writer; what is stored, or ephemeral, is broadcast.
Every answer is counted in the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from relay.core import vanish
from relay.core.errors import Blocked, ClientError, Invalid
from relay.core.event import Event
from relay.core.moderation import ModerationState
from relay.core.policy import WriteCheck, check_write
from relay.core.retention import Retention
from relay.core.write_policy import Action, Source
from relay.net.metrics import Metrics
from relay.net.verifier import SignatureCheckFailed, SignatureVerifier
from relay.net.write_policy import WritePolicy
from relay.store.base import EventStore, SharedStore
from relay.store.writer import StoreFailure, Writer, WriterClosed

CHECK_FAILED = "error: the signature could not be checked, try again"


class IngestPipeline:
    """One relay's event pipeline. Its moderation state and relay URL are the settled
    ones: the relay builds it again once start() has loaded and derived them."""

    def __init__(
        self,
        *,
        store: EventStore,
        writer: Writer,
        verifier: SignatureVerifier,
        write_checks: Sequence[WriteCheck],
        write_policy: WritePolicy,
        moderation: ModerationState,
        retention: Retention,
        relay_url: str,
        vanish_enabled: bool,
        broadcast: Callable[[Event], None],
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.writer = writer
        self.verifier = verifier
        self.write_checks = write_checks
        self.write_policy = write_policy
        self.moderation = moderation
        self.retention = retention
        self.relay_url = relay_url
        self.vanish_enabled = vanish_enabled
        self.broadcast = broadcast
        self.metrics = metrics
        # False until the relay starts listening, and again once it begins to stop.
        self.accepting = False

    async def ingest(self, event: Event, source: Source | None = None) -> tuple[bool, str]:
        """Take one well-formed event through policy, signature and storage: (accepted, reason)."""
        started = time.perf_counter()
        accepted, reason = await self._ingest(event, source)
        self.metrics.event_answered(accepted, reason, time.perf_counter() - started)
        return accepted, reason

    async def _ingest(self, event: Event, source: Source | None) -> tuple[bool, str]:
        if not self.accepting:
            return False, "error: the relay is shutting down"
        now = int(time.time())
        try:
            check_write(self.write_checks, event, now)
            vanish.check_request(event, self.relay_url, self.vanish_enabled)
            self.write_policy.check_unverified(event)
            self.moderation.check(event)
            if self.retention.too_old(event, now):
                raise Blocked(f"kind {event.kind} is kept here for less time than this event's age")
            if source is not None and self.moderation.ip_blocked(source.ip):
                raise Blocked("your address is blocked on this relay")
        except ClientError as error:
            return False, error.reason
        refusal = await self._signature_refusal(event)
        if refusal is not None:
            return False, refusal
        decision = await self.write_policy.decide(event, source or Source("", now))
        if decision.action is Action.REJECT:
            return False, decision.ok_reason
        if decision.action is Action.SHADOW_REJECT:
            return True, ""
        if event.is_ephemeral:
            self.broadcast(event)
            if isinstance(self.store, SharedStore):
                await self.store.announce(event)
            return True, ""
        try:
            outcome = await self.writer.save(event)
        except WriterClosed:
            return False, "error: the relay is shutting down"
        except StoreFailure:
            return False, "error: the event could not be stored, try again later"
        if outcome.broadcast:
            self.broadcast(event)
        return outcome.accepted, outcome.reason

    async def _signature_refusal(self, event: Event) -> str | None:
        """Why the event's signature does not pass, or None when it does."""
        try:
            valid = await self.verifier.verify(event)
        except SignatureCheckFailed:
            # The verify process died holding it; it logged that once, and is restarted.
            return CHECK_FAILED
        return None if valid else Invalid("bad signature").reason
