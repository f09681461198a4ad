"""Per-connection protocol state: its subscriptions and the limits applied to its frames."""

from __future__ import annotations

from relay.core.errors import Invalid, MessageError, Restricted
from relay.core.filters import Filter
from relay.core.limits import Limits
from relay.core.messages import ClientMessage, ReqMessage, parse_message


class Session:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.subscriptions: dict[str, tuple[Filter, ...]] = {}

    def receive(self, frame: bytes | str) -> ClientMessage:
        """Parse a frame within the size limit; raises MessageError with whom to answer."""
        if len(frame) > self.limits.max_message_length:
            # Length in characters of a str is at most its UTF-8 length: check bytes then.
            size = len(frame.encode()) if isinstance(frame, str) else len(frame)
            if size > self.limits.max_message_length:
                raise MessageError(f"message is longer than {self.limits.max_message_length} bytes")
        return parse_message(frame)

    def open(self, req: ReqMessage) -> tuple[Filter, ...]:
        """Register (or replace) a subscription; returns its filters with limits applied."""
        limits = self.limits
        if len(req.sub_id) > limits.max_subid_length:
            raise MessageError.wrap(
                Invalid(f"subscription id is longer than {limits.max_subid_length}"),
                sub_id=req.sub_id,
            )
        if len(req.filters) > limits.max_filters:
            raise MessageError.wrap(
                Invalid(f"a REQ may hold at most {limits.max_filters} filters"),
                sub_id=req.sub_id,
            )
        if req.sub_id not in self.subscriptions and (
            len(self.subscriptions) >= limits.max_subscriptions
        ):
            raise MessageError.wrap(
                Restricted(f"at most {limits.max_subscriptions} open subscriptions"),
                sub_id=req.sub_id,
            )
        filters = tuple(self._clamp(f) for f in req.filters)
        self.subscriptions[req.sub_id] = filters
        return filters

    def close(self, sub_id: str) -> bool:
        return self.subscriptions.pop(sub_id, None) is not None

    def _clamp(self, f: Filter) -> Filter:
        limit = self.limits.default_limit if f.limit is None else f.limit
        return f.with_limit(min(limit, self.limits.max_limit))
