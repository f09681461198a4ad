"""Per-connection protocol state: its subscriptions and the limits applied to its frames."""

from __future__ import annotations

from relay.core.auth import AuthState
from relay.core.errors import Invalid, MessageError, ReqRefused, Restricted
from relay.core.filters import Filter
from relay.core.limits import Limits
from relay.core.messages import ClientMessage, CountMessage, ReqMessage, parse_message


class Session:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.subscriptions: dict[str, tuple[Filter, ...]] = {}
        self.auth = AuthState()

    def receive(self, frame: bytes | str) -> ClientMessage:
        """Parse a frame within the size limit; raises MessageError with whom to answer."""
        if _size_in_bytes(frame, self.limits.max_message_length) > self.limits.max_message_length:
            raise MessageError(f"message is longer than {self.limits.max_message_length} bytes")
        return parse_message(frame)

    def open(self, req: ReqMessage) -> tuple[Filter, ...]:
        """Register (or replace) a subscription; returns its filters with limits applied."""
        limits = self.limits
        # A REQ reusing an open id replaces it, even when the new one is refused below.
        self.subscriptions.pop(req.sub_id, None)
        self._check_shape(req)
        if len(self.subscriptions) >= limits.max_subscriptions:
            raise ReqRefused.wrap(
                Restricted(f"at most {limits.max_subscriptions} open subscriptions"),
                sub_id=req.sub_id,
            )
        filters = tuple(self._clamp(f) for f in req.filters)
        self.subscriptions[req.sub_id] = filters
        return filters

    def count(self, request: CountMessage) -> tuple[Filter, ...]:
        """A COUNT's filters, under the same limits as a REQ (its `limit`s do not apply)."""
        self._check_shape(request)
        return request.filters

    def _check_shape(self, req: ReqMessage | CountMessage) -> None:
        limits = self.limits
        if len(req.sub_id) > limits.max_subid_length:
            raise ReqRefused.wrap(
                Invalid(f"subscription id is longer than {limits.max_subid_length}"),
                sub_id=req.sub_id,
            )
        if len(req.filters) > limits.max_filters:
            raise ReqRefused.wrap(
                Invalid(f"a REQ may hold at most {limits.max_filters} filters"),
                sub_id=req.sub_id,
            )
        too_many = _filter_with_too_many_values(req.filters, limits.max_filter_values)
        if too_many is not None:
            raise ReqRefused.wrap(
                Invalid(f"{too_many} holds more than {limits.max_filter_values} values"),
                sub_id=req.sub_id,
            )

    def close(self, sub_id: str) -> bool:
        return self.subscriptions.pop(sub_id, None) is not None

    def _clamp(self, f: Filter) -> Filter:
        limit = self.limits.default_limit if f.limit is None else f.limit
        return f.with_limit(min(limit, self.limits.max_limit))


def _filter_with_too_many_values(filters: tuple[Filter, ...], most: int) -> str | None:
    """The name of the first filter field with more than `most` values, if any."""
    for f in filters:
        for name, values in (("ids", f.ids), ("authors", f.authors), ("kinds", f.kinds)):
            if values is not None and len(values) > most:
                return name
        for tag, tag_values in f.tags:
            if len(tag_values) > most:
                return f"#{tag}"
    return None


def _size_in_bytes(frame: bytes | str, limit: int) -> int:
    """The frame's UTF-8 length, encoding only when the character count cannot settle it."""
    if isinstance(frame, bytes) or len(frame) > limit or 4 * len(frame) <= limit:
        return len(frame)
    # surrogatepass: a lone surrogate is bad JSON for the parser to report, not a crash here.
    return len(frame.encode(errors="surrogatepass"))
