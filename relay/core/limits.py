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
    # Not in NIP-11, so enforced without being advertised.
    # Bytes of the whole event JSON as the relay stores it (compact, UTF-8).
    max_event_size: int = 131072
    # Characters in any one element of any tag.
    max_tag_value_length: int = 4096
    # Values in each of a filter's ids, authors, kinds and #x lists.
    max_filter_values: int = 1000
    # Stored events one REQ may return across all its filters.
    max_req_results: int = 10000
    # Budgets of one connection (enforced, not in NIP-11: it has no field for them).
    # Values across all open filters (ids, authors, tag values or kinds each filter is
    # filed under in the live index); a REQ past it is CLOSED "restricted: ...".
    max_live_entries: int = 20000
    # Stored-event queries and COUNTs running at once; more are CLOSED "rate-limited: ...".
    max_queries_in_flight: int = 32
    # Bytes of live events held back until their subscription's EOSE.
    max_held_bytes: int = 2 * 1024 * 1024
    # NIP-77: negentropy sessions open at once, and events in one session's set (a larger
    # set is NEG-ERR "blocked: ..."; strfry's default is the same million).
    max_neg_sessions: int = 4
    max_neg_items: int = 1_000_000
    # NIP-13 leading zero bits a new event's id must have; 0 turns the check off.
    min_pow_difficulty: int = 0
    # NIP-11: writers must meet a condition they should know of beforehand (a pubkey or
    # kind allowlist, proof of work); denylists are anti-spam and do not count.
    restricted_writes: bool = False
    # Seconds into the past / future a new event's created_at may be.
    created_at_lower_limit: int = 94608000
    created_at_upper_limit: int = 900

    def advertised(self) -> dict[str, int | bool]:
        """The NIP-11 `limitation` object: every value here is enforced."""
        pow_difficulty = {"min_pow_difficulty": self.min_pow_difficulty}
        return {
            **(pow_difficulty if self.min_pow_difficulty > 0 else {}),
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
            "restricted_writes": self.restricted_writes or self.min_pow_difficulty > 0,
        }
