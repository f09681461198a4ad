"""The operator's say on new events: access lists, proof of work, per-pubkey rate limits,
Python callables named in the config and a strfry-compatible plugin process."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence

from relay.config import ConfigError, Settings
from relay.core.access import AccessLists
from relay.core.errors import ClientError, RateLimited
from relay.core.event import Event
from relay.core.pow import check_pow
from relay.core.ratelimit import RateLimiter
from relay.core.write_policy import ACCEPT, Action, Decision, Source, reject
from relay.net.plugin import FAILED, WritePolicyPlugin

log = logging.getLogger("relay.policy")

# None means accept.
PolicyCallable = Callable[[Event, Source], Decision | None]


def load_callable(dotted: str) -> PolicyCallable:
    """`package.module:function` -> the function; ConfigError when there is none."""
    module_name, _, name = dotted.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"write_policies: cannot load {dotted}: {exc}") from exc
    if not callable(function):
        raise ConfigError(f"write_policies: {dotted} is not callable")
    return function  # type: ignore[no-any-return]


class WritePolicy:
    def __init__(self, settings: Settings) -> None:
        self.access = AccessLists(
            frozenset(settings.pubkey_allowlist),
            frozenset(settings.pubkey_denylist),
            frozenset(settings.kind_allowlist),
            frozenset(settings.kind_denylist),
        )
        self.min_pow = settings.min_pow_difficulty
        self.pubkey_rate = RateLimiter(
            settings.event_rate_per_pubkey, settings.event_burst_per_pubkey
        )
        self.callables: Sequence[PolicyCallable] = [
            load_callable(entry) for entry in settings.write_policies
        ]
        self.plugin: WritePolicyPlugin | None = None
        if settings.write_policy_plugin:
            fallback = ACCEPT if settings.plugin_fallback == "accept" else FAILED
            self.plugin = WritePolicyPlugin(
                settings.write_policy_plugin, settings.plugin_timeout, fallback
            )

    def check_unverified(self, event: Event) -> None:
        """Checks cheap enough to run before the signature is: raises a ClientError."""
        self.access.check(event)
        check_pow(event, self.min_pow)

    async def decide(self, event: Event, source: Source) -> Decision:
        """The verdict on an event whose signature is good."""
        if not self.pubkey_rate.allow(event.pubkey):
            return reject(RateLimited("too many events from this pubkey").reason)
        for policy in self.callables:
            decision = _run_callable(policy, event, source)
            if decision.action is not Action.ACCEPT:
                return decision
        if self.plugin is not None:
            return await self.plugin.decide(event, source)
        return ACCEPT

    async def close(self) -> None:
        if self.plugin is not None:
            await self.plugin.close()


def _run_callable(policy: PolicyCallable, event: Event, source: Source) -> Decision:
    try:
        decision = policy(event, source)
    except ClientError as error:
        return reject(error.reason)
    except Exception:
        log.exception("write policy %r failed on %s", policy, event.id)
        return FAILED
    if decision is None:
        return ACCEPT
    if not isinstance(decision, Decision):
        log.error("write policy %r returned %r, not a Decision", policy, decision)
        return FAILED
    return decision
