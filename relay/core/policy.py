"""Write policy: checks on a well-formed event before it is stored or broadcast.

Each check is a small callable raising a ClientError; the relay runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.core.errors import Invalid
from relay.core.event import Event
from relay.core.limits import Limits

WriteCheck = Callable[[Event, int], None]


def default_write_checks(limits: Limits) -> list[WriteCheck]:
    def content_length(event: Event, now: int) -> None:
        if len(event.content) > limits.max_content_length:
            raise Invalid(f"content is longer than {limits.max_content_length} characters")

    def tag_count(event: Event, now: int) -> None:
        if len(event.tags) > limits.max_event_tags:
            raise Invalid(f"event has more than {limits.max_event_tags} tags")

    def event_size(event: Event, now: int) -> None:
        if len(event.raw) > limits.max_event_size:
            raise Invalid(f"event is larger than {limits.max_event_size} bytes")

    def tag_value_length(event: Event, now: int) -> None:
        longest = limits.max_tag_value_length
        # No value is longer than the event's JSON: most events need no look at their tags.
        if len(event.raw) <= longest:
            return
        if any(len(value) > longest for tag in event.tags for value in tag):
            raise Invalid(f"a tag value is longer than {longest} characters")

    def created_at_window(event: Event, now: int) -> None:
        if event.created_at < now - limits.created_at_lower_limit:
            raise Invalid("created_at is too far in the past")
        if event.created_at > now + limits.created_at_upper_limit:
            raise Invalid("created_at is too far in the future")

    def not_expired(event: Event, now: int) -> None:
        expiration = event.expiration
        if expiration is not None and expiration <= now:
            raise Invalid("event has expired")

    return [
        content_length,
        tag_count,
        event_size,
        tag_value_length,
        created_at_window,
        not_expired,
    ]


def check_write(checks: Sequence[WriteCheck], event: Event, now: int) -> None:
    for check in checks:
        check(event, now)
