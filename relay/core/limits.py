"""The limits a relay enforces and advertises (NIP-11 `limitation`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_length: int = 131072
    max_subscriptions: int = 32
    max_filters: int = 16
    max_limit: int = 5000
    # Returned for a filter without `limit`: a REQ never streams a whole database.
    default_limit: int = 500
    max_subid_length: int = 64
    max_event_tags: int = 2000
    max_content_length: int = 65536
    # Seconds into the past / future a new event's created_at may be.
    created_at_lower_limit: int = 94608000
    created_at_upper_limit: int = 900

    def advertised(self) -> dict[str, int | bool]:
        """The NIP-11 `limitation` object: every value here is enforced."""
        return {
            "max_message_length": self.max_message_length,
            "max_subscriptions": self.max_subscriptions,
            "max_filters": self.max_filters,
            "max_limit": self.max_limit,
            "default_limit": self.default_limit,
            "max_subid_length": self.max_subid_length,
            "max_event_tags": self.max_event_tags,
            "max_content_length": self.max_content_length,
            "created_at_lower_limit": self.created_at_lower_limit,
            "created_at_upper_limit": self.created_at_upper_limit,
            "auth_required": False,
            "payment_required": False,
            "restricted_writes": False,
        }
