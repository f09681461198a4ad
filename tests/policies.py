"""Write-policy callables for the tests, named in the config as `tests.policies:<name>`."""

from __future__ import annotations

from relay.core.event import Event
from relay.core.write_policy import SHADOW_REJECT, Decision, Source, reject


def no_spam(event: Event, source: Source) -> Decision | None:
    if "spam" in event.content:
        return reject("no spam here")
    if "rate" in event.content:
        return reject("rate-limited: a prefix of the policy's own")
    if "shadow" in event.content:
        return SHADOW_REJECT
    if "where from" in event.content:
        return reject(f"{source.source_type} {source.ip}")
    return None


def broken(event: Event, source: Source) -> Decision | None:
    if "break" in event.content:
        raise RuntimeError("a bug in the operator's policy")
    return None
