"""Client mistakes, each carrying the NIP-01 machine-readable prefix of its answer.

Our own bugs are ordinary exceptions: they are logged with a traceback and answered
with `error: ...`, never confused with these.
"""

from __future__ import annotations


class ClientError(Exception):
    """A refusal the client caused; `reason` is sent as `prefix: message`."""

    prefix = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.prefix}: {self.message}"


class Invalid(ClientError):
    prefix = "invalid"


class Blocked(ClientError):
    prefix = "blocked"


class Duplicate(ClientError):
    prefix = "duplicate"


class Restricted(ClientError):
    prefix = "restricted"


class RateLimited(ClientError):
    prefix = "rate-limited"


class Unsupported(ClientError):
    prefix = "unsupported"


class AuthRequired(ClientError):
    """NIP-42: the client must authenticate first; the relay sends its challenge again."""

    prefix = "auth-required"


class MessageError(ClientError):
    """A frame refused as a whole; `event_id` or `sub_id` says who can be answered.

    With an event id the answer is `OK false`, with a subscription id `CLOSED`,
    with neither a `NOTICE`.
    """

    prefix = "invalid"

    def __init__(
        self,
        message: str,
        *,
        prefix: str | None = None,
        event_id: str | None = None,
        sub_id: str | None = None,
    ) -> None:
        super().__init__(message)
        if prefix is not None:
            self.prefix = prefix
        self.event_id = event_id
        self.sub_id = sub_id

    @classmethod
    def wrap(
        cls, error: ClientError, *, event_id: str | None = None, sub_id: str | None = None
    ) -> MessageError:
        return cls(error.message, prefix=error.prefix, event_id=event_id, sub_id=sub_id)


class ReqRefused(MessageError):
    """A REQ refused with CLOSED: its subscription id ends, an open one of that id included."""


class NegRefused(MessageError):
    """A NIP-77 NEG-OPEN or NEG-MSG refused with NEG-ERR: its negentropy session ends."""
