"""One connection's protocol as a sans-I/O state machine: frames and results in, actions out.

The shape of the `websockets` library's own `Protocol`: the asyncio driver
(`net/connection.py`) feeds the session what happened (a frame, a page of stored events,
a live event, the outcome of an ingest) and carries out the actions it gets back. Every
rule about order (live events held back until EOSE, a replaced REQ ends the old one, a
cancelled query sends nothing more) and every budget lives here, tested without sockets.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from relay.core import auth, messages
from relay.core.auth import AuthPolicy, AuthState
from relay.core.errors import (
    AuthRequired,
    ClientError,
    Invalid,
    MessageError,
    NegRefused,
    RateLimited,
    ReqRefused,
    Restricted,
    Unsupported,
)
from relay.core.event import Event, event_from_raw
from relay.core.filters import Filter
from relay.core.limits import Limits
from relay.core.messages import (
    AuthMessage,
    ClientMessage,
    CloseMessage,
    CountMessage,
    EventMessage,
    NegCloseMessage,
    NegMessage,
    NegMsgMessage,
    NegOpenMessage,
    ReqMessage,
    parse_message,
)
from relay.core.negentropy import NegentropyServer
from relay.core.ratelimit import RateLimiter
from relay.core.subscriptions import entries as index_entries

# --- what the session asks its driver to do ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Queue these frames for the client, in order."""

    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Watch:
    """File these filters in the relay's live index for this subscription (replacing any)."""

    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Unwatch:
    sub_id: str


@dataclass(frozen=True, slots=True)
class StartQuery:
    """Read stored events page by page; feed each to `query_page`, then `query_done`."""

    query_id: int
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class StartCount:
    """Count stored events `readers` may read; answer with `count_done`."""

    query_id: int
    filters: tuple[Filter, ...]
    readers: frozenset[str]


@dataclass(frozen=True, slots=True)
class CancelQuery:
    """Stop a query or count now (interrupt it, drop it if queued); nothing more is sent."""

    query_id: int


@dataclass(frozen=True, slots=True)
class Ingest:
    """Take the event through policy, signature and storage; answer with `ingested`."""

    event: Event


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Verify the AUTH event's signature; answer with `authenticated`."""

    event: Event


@dataclass(frozen=True, slots=True)
class OpenNegentropy:
    """NIP-77: load the filter's (created_at, id) set that `readers` may see, build the
    reconciliation over it and answer the first message; then `neg_opened`."""

    query_id: int
    filter: Filter
    readers: frozenset[str]
    message: bytes


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Answer one NEG-MSG with `server` (CPU work, off the event loop); then `neg_answered`."""

    query_id: int
    server: NegentropyServer
    message: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """For the operator's figures: an EVENT or AUTH refused here, before the relay's
    pipeline saw it (`what` is "event" or "auth"; `reason` is `prefix: text`)."""

    what: str
    reason: str


Action = (
    Send
    | Refused
    | Watch
    | Unwatch
    | StartQuery
    | StartCount
    | CancelQuery
    | Ingest
    | Authenticate
    | OpenNegentropy
    | Reconcile
)


class QueryFailure(Enum):
    TIMEOUT = "timeout"
    ERROR = "error"


# Every reply the relay types out for a connection, with its NIP-01 prefix.
BINARY_FRAME = "invalid: binary frames are not supported, send JSON as text"
INTERNAL_ERROR = "error: the relay failed on this message"
AUTH_UNSUPPORTED = "unsupported: this relay does not use NIP-42 AUTH"
AUTH_FAILED = "error: the relay failed on this AUTH, try again"
INGEST_FAILED = "error: the relay failed on this event, try again later"
EVENT_RATE = "rate-limited: too many events, slow down"
REQ_RATE = "too many subscriptions opened, slow down"
QUERY_TIMEOUT = "error: the query took too long, narrow the filter"
QUERY_FAILED = "error: the query failed"
COUNT_TIMEOUT = "error: the count took too long, narrow the filter"
COUNT_FAILED = "error: the count failed"
COUNT_DISABLED = "unsupported: COUNT is not enabled here"
HELD_OVERFLOW = "error: too many live events arrived while the query ran, subscribe again"
NEG_IDLE = "closed: the negentropy session was idle too long"
NEG_BUSY = "rate-limited: the relay holds too many negentropy sets, try later"
NEG_PENDING = "invalid: NEG-MSG before the last one was answered"
NEG_UNKNOWN = "closed: no such negentropy session"
OVERFLOW = "error: too many unread messages, disconnecting"


# --- budgets ---------------------------------------------------------------------------


class SharedBudget:
    """A relay-wide allowance (e.g. live filter entries) that every session draws from."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, amount: int) -> bool:
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        return True

    def give(self, amount: int) -> None:
        self.used = max(0, self.used - amount)


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What every session of a relay shares: its limits, auth rules and switches."""

    limits: Limits = field(default_factory=Limits)
    auth: AuthPolicy = field(default_factory=lambda: AuthPolicy(enabled=False))
    count_enabled: bool = True
    search_enabled: bool = False
    req_rate: float = 0.0
    req_burst: int = 20
    # NIP-77 negentropy: served when on; sessions idle this long are closed.
    negentropy_enabled: bool = True
    neg_idle_seconds: float = 60.0


# --- the connection's state ------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Subscription:
    """Everything about one open subscription; closing it is one call."""

    sub_id: str
    sub_id_json: bytes
    filters: tuple[Filter, ...]
    entries: int
    # The stored-event query while it runs; None once EOSE is sent.
    query_id: int | None = None
    # Live events held back until EOSE (only while querying).
    held: list[Event] = field(default_factory=list)
    held_overflow: bool = False
    # Keys (_id_key) of the stored events sent, so a held event is not sent twice. The
    # last page (query_done follows in the same turn) waits in `unkeyed` and is keyed only
    # if an event is held back, so a REQ answered in one page keys none; earlier pages are
    # keyed at once, so no page's raw JSON outlives its turn.
    sent_ids: set[bytes] = field(default_factory=set)
    unkeyed: list[bytes] = field(default_factory=list)
    sent: int = 0


class QueryKind(Enum):
    REQ = "req"
    COUNT = "count"
    NEGENTROPY = "negentropy"


@dataclass(frozen=True, slots=True)
class Query:
    """A read in flight (stored events, a count, a negentropy set): what it answers."""

    sub_id: str
    kind: QueryKind

    @property
    def is_count(self) -> bool:
        return self.kind is QueryKind.COUNT


@dataclass(slots=True, eq=False)
class NegSession:
    """NIP-77: one negentropy reconciliation. Its set loads first (`query_id`), then each
    NEG-MSG is answered by `server`, one at a time."""

    sub_id: str
    query_id: int | None
    server: NegentropyServer | None = None
    items: int = 0
    last_active: float = 0.0


class Session:
    """One connection's protocol state. Methods return the actions to carry out, in order."""

    def __init__(
        self,
        policy: SessionPolicy,
        *,
        shared_entries: SharedBudget | None = None,
        shared_neg_items: SharedBudget | None = None,
        event_rate: RateLimiter | None = None,
        ip: str = "",
        rate_exempt: bool = False,
    ) -> None:
        self.policy = policy
        self.limits = policy.limits
        self.auth = AuthState()
        self.subscriptions: dict[str, Subscription] = {}
        self.queries: dict[int, Query] = {}
        # Live filter entries and held-back bytes of all open subscriptions.
        self.entries = 0
        self.held_bytes = 0
        self._shared_entries = shared_entries or SharedBudget(1 << 62)
        self._shared_neg_items = shared_neg_items or SharedBudget(1 << 62)
        self.negentropy: dict[str, NegSession] = {}
        self._event_rate = event_rate
        self._ip = ip
        self._rate_exempt = rate_exempt
        self._now = 0.0
        self._req_rate = RateLimiter(policy.req_rate, policy.req_burst, clock=self._clock)
        self._next_query_id = 0

    def _clock(self) -> float:
        return self._now

    # --- frames in ---------------------------------------------------------------------

    def start(self) -> list[Action]:
        """What the client gets first: NIP-42's challenge, before it needs it."""
        if self.policy.auth.enabled:
            return [_send(messages.auth_challenge(self.auth.challenge))]
        return []

    def receive(self, frame: bytes | str, now: float) -> list[Action]:
        """A frame from the client; `now` is the wall clock in seconds (rate limits, AUTH)."""
        self._now = now
        if isinstance(frame, bytes):
            return [_send(messages.notice(BINARY_FRAME))]
        try:
            message = read_frame(frame, self.limits, negentropy=self.policy.negentropy_enabled)
            return self._dispatch(message)
        except NegRefused as error:
            ended = self._end_negentropy(error.sub_id, None) if error.sub_id else []
            return ended + self._refuse(error)
        except MessageError as error:
            return self._refuse(error)

    def _dispatch(self, message: ClientMessage | NegMessage) -> list[Action]:
        # By type in one dict lookup: REQ and CLOSE come most, and a chain of
        # isinstance checks cost them a few each.
        return _HANDLERS[type(message)](self, message)

    def _on_event(self, message: EventMessage) -> list[Action]:
        return self._event(message.event)

    def _on_close(self, message: CloseMessage) -> list[Action]:
        return self._end_subscription(message.sub_id)

    def _on_auth(self, message: AuthMessage) -> list[Action]:
        return self._authenticate(message.event)

    def _refuse(self, error: MessageError) -> list[Action]:
        actions: list[Action] = []
        if isinstance(error, ReqRefused) and error.sub_id is not None:
            # The client reads CLOSED as the end of that id: a subscription it replaced ends.
            actions += self._end_subscription(error.sub_id)
        if error.prefix == AuthRequired.prefix:
            # NIP-42: a fresh reminder of the challenge comes before every auth-required.
            actions.append(_send(messages.auth_challenge(self.auth.challenge)))
        actions.append(_send(messages.refusal(error)))
        return actions

    # --- EVENT and AUTH ----------------------------------------------------------------

    def _event(self, event: Event) -> list[Action]:
        rate = self._event_rate
        if rate is not None and not self._rate_exempt and not rate.allow(self._ip):
            return [Refused("event", EVENT_RATE), _send(messages.ok(event.id, False, EVENT_RATE))]
        try:
            auth.check_write(event, self.auth, self.policy.auth)
        except ClientError as error:
            refused = Refused("event", error.reason)
            return [refused, *self._refuse(MessageError.wrap(error, event_id=event.id))]
        return [Ingest(event)]

    def ingested(self, event_id: str, accepted: bool, reason: str) -> list[Action]:
        return [_send(messages.ok(event_id, accepted, reason))]

    def ingest_failed(self, event_id: str) -> list[Action]:
        """Our own code failed on the event: it still gets its OK."""
        return [_send(messages.ok(event_id, False, INGEST_FAILED))]

    def _authenticate(self, event: Event) -> list[Action]:
        """NIP-42: every check but the signature here; the driver verifies that."""
        if not self.policy.auth.enabled:
            return [_send(messages.ok(event.id, False, AUTH_UNSUPPORTED))]
        policy = self.policy.auth
        try:
            auth.check_auth_event(event, self.auth.challenge, policy.relay_url, int(self._now))
        except ClientError as error:
            return [
                Refused("auth", error.reason),
                _send(messages.ok(event.id, False, error.reason)),
            ]
        return [Authenticate(event)]

    def authenticated(self, event: Event, verified: bool | None) -> list[Action]:
        """The AUTH event's signature: True/False, or None when our own code failed on it."""
        if verified is None:
            return [_send(messages.ok(event.id, False, AUTH_FAILED))]
        if not verified:
            return [_send(messages.ok(event.id, False, Invalid("bad signature").reason))]
        self.auth.pubkeys.add(event.pubkey)
        return [_send(messages.ok(event.id, True, ""))]

    # --- REQ, CLOSE, COUNT -------------------------------------------------------------

    def _open(self, req: ReqMessage) -> list[Action]:
        # A REQ reusing an open id replaces it, even when the new one is refused.
        ended = self._end_subscription(req.sub_id)
        try:
            return ended + self._subscribe(req)
        except MessageError as error:
            return ended + self._refuse(error)

    def _subscribe(self, req: ReqMessage) -> list[Action]:
        sub_id = req.sub_id
        self._check_request(req)
        limits = self.limits
        if len(self.subscriptions) >= limits.max_subscriptions:
            raise _refused(
                sub_id, Restricted(f"at most {limits.max_subscriptions} open subscriptions")
            )
        filters = tuple([self._clamp(f) for f in req.filters])
        entries = index_entries(filters)
        self._check_entries(sub_id, entries)
        needs_query = False
        for f in filters:
            if f.limit != 0 and f.can_match:
                needs_query = True
                break
        if needs_query:
            self._check_queries(sub_id)
        if not self._shared_entries.take(entries):
            raise _refused(sub_id, Restricted("the relay holds too many live filters, try later"))
        sub = Subscription(sub_id, messages.encode_sub_id(sub_id), filters, entries)
        self.subscriptions[sub_id] = sub
        self.entries += entries
        # Live first, held back until EOSE: nothing committed meanwhile falls in a gap.
        if not needs_query:
            return [Watch(sub_id, filters), _send(messages.eose(sub_id))]
        sub.query_id = self._new_query(sub_id, QueryKind.REQ)
        return [Watch(sub_id, filters), StartQuery(sub.query_id, filters)]

    def _check_request(self, req: ReqMessage | CountMessage) -> None:
        """Rate, read permission and shape of a REQ or COUNT; raises ReqRefused."""
        sub_id = req.sub_id
        if not self._rate_exempt and not self._req_rate.allow(None):
            raise _refused(sub_id, RateLimited(REQ_RATE))
        limits = self.limits
        if len(sub_id) > limits.max_subid_length:
            raise _refused(
                sub_id, Invalid(f"subscription id is longer than {limits.max_subid_length}")
            )
        if len(req.filters) > limits.max_filters:
            raise _refused(sub_id, Invalid(f"a REQ may hold at most {limits.max_filters} filters"))
        too_many = _filter_with_too_many_values(req.filters, limits.max_filter_values)
        if too_many is not None:
            raise _refused(
                sub_id, Invalid(f"{too_many} holds more than {limits.max_filter_values} values")
            )
        searching = any(f.search is not None for f in req.filters)
        try:
            if searching and not self.policy.search_enabled:
                raise Unsupported("search is not enabled on this relay")
            auth.check_read(req.filters, self.auth, self.policy.auth)
        except ClientError as error:
            raise _refused(sub_id, error) from None

    def _check_entries(self, sub_id: str, entries: int) -> None:
        most = self.limits.max_live_entries
        if self.entries + entries > most:
            raise _refused(
                sub_id,
                Restricted(f"open filters may hold at most {most} values in all, close some first"),
            )

    def _check_queries(self, sub_id: str) -> None:
        most = self.limits.max_queries_in_flight
        if len(self.queries) >= most:
            raise _refused(sub_id, RateLimited(f"at most {most} queries at once, wait for EOSE"))

    def _count(self, request: CountMessage) -> list[Action]:
        if not self.policy.count_enabled:
            return [_send(messages.closed(request.sub_id, COUNT_DISABLED))]
        self._check_request(request)
        self._check_queries(request.sub_id)
        query_id = self._new_query(request.sub_id, QueryKind.COUNT)
        return [StartCount(query_id, request.filters, frozenset(self.auth.pubkeys))]

    def _new_query(self, sub_id: str, kind: QueryKind) -> int:
        self._next_query_id += 1
        self.queries[self._next_query_id] = Query(sub_id, kind)
        return self._next_query_id

    def _end_subscription(self, sub_id: str) -> list[Action]:
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            return []
        self.entries -= sub.entries
        self._shared_entries.give(sub.entries)
        self._drop_held(sub)
        actions: list[Action] = [Unwatch(sub_id)]
        if sub.query_id is not None:
            self.queries.pop(sub.query_id, None)
            actions.append(CancelQuery(sub.query_id))
        return actions

    def _clamp(self, f: Filter) -> Filter:
        limit = self.limits.default_limit if f.limit is None else f.limit
        return f.with_limit(min(limit, self.limits.max_limit))

    # --- results in --------------------------------------------------------------------

    def _live_query(self, query_id: int) -> Subscription | None:
        """The subscription a REQ query still answers (None: cancelled, replaced, closed)."""
        query = self.queries.get(query_id)
        if query is None or query.kind is not QueryKind.REQ:
            return None
        sub = self.subscriptions.get(query.sub_id)
        return sub if sub is not None and sub.query_id == query_id else None

    def query_page(self, query_id: int, raws: list[bytes], last: bool = False) -> list[Action]:
        """A page of stored events, newest first; a query past its cap is cancelled.
        `last`: the caller calls query_done next, with no await between."""
        sub = self._live_query(query_id)
        if sub is None:
            return []
        # max_req_results caps the REQ as a whole; each filter's limit is the store's.
        taken = raws[: self.limits.max_req_results - sub.sent]
        sub.sent += len(taken)
        full = sub.sent >= self.limits.max_req_results
        raws = self._readable(sub.filters, taken)
        if last or full:
            sub.unkeyed = raws  # keyed by query_done, and only if an event is held back
        else:
            sub.sent_ids.update(map(_id_key, raws))
        actions: list[Action] = []
        if raws:
            head = b'["EVENT",' + sub.sub_id_json + b","
            actions.append(Send(tuple([head + raw + b"]" for raw in raws])))
        if full:
            actions.append(CancelQuery(query_id))
            actions += self.query_done(query_id)
        return actions

    def query_done(self, query_id: int) -> list[Action]:
        """Every stored event is sent: EOSE, then the live events held back meanwhile."""
        sub = self._live_query(query_id)
        self.queries.pop(query_id, None)
        if sub is None:
            return []
        sub.query_id = None
        held, sent_ids, unkeyed = self._drop_held(sub), sub.sent_ids, sub.unkeyed
        if sent_ids:
            sub.sent_ids = set()
        sub.unkeyed = []
        if sub.held_overflow:
            return [
                *self._end_subscription(sub.sub_id),
                _send(messages.closed(sub.sub_id, HELD_OVERFLOW)),
            ]
        eose = b'["EOSE",' + sub.sub_id_json + b"]"
        if not held:
            return [Send((eose,))]
        sent_ids.update(map(_id_key, unkeyed))
        head = b'["EVENT",' + sub.sub_id_json + b","
        frames = [eose]
        frames += [head + e.raw + b"]" for e in held if _id_key(e.raw) not in sent_ids]
        return [Send(tuple(frames))]

    def query_failed(self, query_id: int, failure: QueryFailure) -> list[Action]:
        query = self.queries.pop(query_id, None)
        if query is None:
            return []
        if query.kind is QueryKind.NEGENTROPY:
            return self._end_negentropy(query.sub_id, QUERY_FAILED)
        if query.is_count:
            reason = COUNT_TIMEOUT if failure is QueryFailure.TIMEOUT else COUNT_FAILED
            return [_send(messages.closed(query.sub_id, reason))]
        sub = self.subscriptions.get(query.sub_id)
        if sub is None or sub.query_id != query_id:
            return []
        sub.query_id = None
        reason = QUERY_TIMEOUT if failure is QueryFailure.TIMEOUT else QUERY_FAILED
        return [*self._end_subscription(sub.sub_id), _send(messages.closed(sub.sub_id, reason))]

    def count_done(self, query_id: int, n: int) -> list[Action]:
        query = self.queries.pop(query_id, None)
        if query is None:
            return []
        return [_send(messages.count(query.sub_id, n))]

    def live(self, sub_id: str, event: Event, private: bool) -> bytes | None:
        """A live event for a subscription: the frame to send now, or None (held back until
        EOSE, not readable by this connection, or the subscription is gone).
        `private`: its kind is a direct message only its parties may read."""
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return None
        if private and not auth.may_read(event, self.auth.pubkeys, self.policy.auth.dm_kinds):
            return None
        if sub.query_id is not None:
            self._hold(sub, event)
            return None
        return b'["EVENT",' + sub.sub_id_json + b"," + event.raw + b"]"

    def _hold(self, sub: Subscription, event: Event) -> None:
        """Keep a live event until EOSE, within the connection's held-back byte budget;
        past it the subscription is closed at EOSE (the client subscribes again)."""
        if sub.held_overflow:
            return
        if self.held_bytes + len(event.raw) > self.limits.max_held_bytes:
            sub.held_overflow = True
            self._drop_held(sub)
            return
        sub.held.append(event)
        self.held_bytes += len(event.raw)

    def _drop_held(self, sub: Subscription) -> list[Event]:
        held = sub.held
        if held:  # mostly nothing is held: no new list, no sum
            sub.held = []
            self.held_bytes -= sum(len(e.raw) for e in held)
        return held

    # --- NIP-77 negentropy ------------------------------------------------------------

    def _negentropy(
        self, message: NegOpenMessage | NegMsgMessage | NegCloseMessage
    ) -> list[Action]:
        sub_id = message.sub_id
        if isinstance(message, NegCloseMessage):
            self._end_negentropy(sub_id, None)
            return []
        if isinstance(message, NegMsgMessage):
            return self._neg_message(message)
        # A NEG-OPEN on an open id replaces that session.
        ended = self._end_negentropy(sub_id, None)
        try:
            return ended + self._neg_open(message)
        except NegRefused as error:
            return ended + self._refuse(error)

    def _neg_open(self, message: NegOpenMessage) -> list[Action]:
        sub_id = message.sub_id
        limits = self.limits
        if len(sub_id) > limits.max_subid_length:
            raise NegRefused(
                f"subscription id is longer than {limits.max_subid_length}", sub_id=sub_id
            )
        if len(self.negentropy) >= limits.max_neg_sessions:
            raise NegRefused(
                f"at most {limits.max_neg_sessions} negentropy sessions at once",
                prefix=RateLimited.prefix,
                sub_id=sub_id,
            )
        too_many = _filter_with_too_many_values((message.filter,), limits.max_filter_values)
        if too_many is not None:
            raise NegRefused(
                f"{too_many} holds more than {limits.max_filter_values} values", sub_id=sub_id
            )
        try:
            if message.filter.search is not None:
                raise Unsupported("search filters cannot be reconciled")
            auth.check_read((message.filter,), self.auth, self.policy.auth)
        except ClientError as error:
            raise NegRefused.wrap(error, sub_id=sub_id) from None
        if len(self.queries) >= limits.max_queries_in_flight:
            raise NegRefused(
                f"at most {limits.max_queries_in_flight} queries at once",
                prefix=RateLimited.prefix,
                sub_id=sub_id,
            )
        query_id = self._new_query(sub_id, QueryKind.NEGENTROPY)
        self.negentropy[sub_id] = NegSession(sub_id, query_id, last_active=self._now)
        readers = frozenset(self.auth.pubkeys)
        return [OpenNegentropy(query_id, message.filter, readers, message.message)]

    def _neg_message(self, message: NegMsgMessage) -> list[Action]:
        neg = self.negentropy.get(message.sub_id)
        if neg is None:
            return [_send(messages.neg_err(message.sub_id, NEG_UNKNOWN))]
        if neg.server is None or neg.query_id is not None:
            return self._end_negentropy(message.sub_id, NEG_PENDING)
        neg.last_active = self._now
        neg.query_id = self._new_query(neg.sub_id, QueryKind.NEGENTROPY)
        return [Reconcile(neg.query_id, neg.server, message.message)]

    def _neg_for(self, query_id: int) -> NegSession | None:
        query = self.queries.pop(query_id, None)
        if query is None or query.kind is not QueryKind.NEGENTROPY:
            return None
        neg = self.negentropy.get(query.sub_id)
        if neg is None or neg.query_id != query_id:
            return None
        neg.query_id = None
        return neg

    def neg_opened(
        self, query_id: int, server: NegentropyServer, items: int, reply: bytes
    ) -> list[Action]:
        """The set is loaded and the first message answered; `items` is the set's size."""
        neg = self._neg_for(query_id)
        if neg is None:
            return []
        if not self._shared_neg_items.take(items):
            return self._end_negentropy(neg.sub_id, NEG_BUSY)
        neg.server, neg.items = server, items
        return [_send(messages.neg_msg(neg.sub_id, reply))]

    def neg_answered(self, query_id: int, reply: bytes) -> list[Action]:
        neg = self._neg_for(query_id)
        if neg is None:
            return []
        return [_send(messages.neg_msg(neg.sub_id, reply))]

    def neg_refused(self, query_id: int, reason: str) -> list[Action]:
        """The set could not be loaded or a message not answered (`prefix: text`)."""
        neg = self._neg_for(query_id)
        if neg is None:
            return []
        return self._end_negentropy(neg.sub_id, reason)

    def tick(self, now: float) -> list[Action]:
        """Close negentropy sessions idle longer than the policy allows."""
        idle = [
            neg.sub_id
            for neg in self.negentropy.values()
            if neg.query_id is None and now - neg.last_active > self.policy.neg_idle_seconds
        ]
        actions: list[Action] = []
        for sub_id in idle:
            actions += self._end_negentropy(sub_id, NEG_IDLE)
        return actions

    def _end_negentropy(self, sub_id: str, reason: str | None) -> list[Action]:
        """End a negentropy session; with a reason the client is told with NEG-ERR."""
        neg = self.negentropy.pop(sub_id, None)
        actions: list[Action] = []
        if neg is not None:
            self._shared_neg_items.give(neg.items)
            if neg.query_id is not None:
                self.queries.pop(neg.query_id, None)
                actions.append(CancelQuery(neg.query_id))
        if reason is not None:
            actions.append(_send(messages.neg_err(sub_id, reason)))
        return actions

    def end(self) -> list[Action]:
        """The connection is gone: every subscription and query ends."""
        actions: list[Action] = []
        for sub_id in list(self.negentropy):
            actions += self._end_negentropy(sub_id, None)
        for sub_id in list(self.subscriptions):
            actions += self._end_subscription(sub_id)
        for query_id in list(self.queries):
            actions.append(CancelQuery(query_id))
        self.queries.clear()
        return actions

    def _readable(self, filters: tuple[Filter, ...], stored: list[bytes]) -> list[bytes]:
        """Stored results without the private events this connection may not read."""
        dm_kinds = self.policy.auth.dm_kinds
        if not auth.could_return_private(filters, dm_kinds):
            return stored
        if _surely_public(stored, _kind_numbers(dm_kinds)):
            return stored
        readers = self.auth.pubkeys
        return [
            raw
            for raw in stored
            if _kind_of(raw) not in dm_kinds
            or auth.may_read(event_from_raw(raw), readers, dm_kinds)
        ]


# --- helpers ---------------------------------------------------------------------------


def read_frame(
    frame: bytes | str, limits: Limits, *, negentropy: bool = False
) -> ClientMessage | NegMessage:
    """Parse a frame within the size limit; raises MessageError with whom to answer."""
    if _size_in_bytes(frame, limits.max_message_length) > limits.max_message_length:
        raise MessageError(f"message is longer than {limits.max_message_length} bytes")
    return parse_message(frame, negentropy=negentropy)


def _send(frame: bytes) -> Send:
    return Send((frame,))


def _refused(sub_id: str, error: ClientError) -> ReqRefused:
    return ReqRefused(error.message, prefix=error.prefix, sub_id=sub_id)


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


# The key of a stored event in `sent_ids`: 64 bits of its id in hex. The JSON this relay
# stores and broadcasts starts with the id (core/event.py writes `raw` so), and the same
# event has the same raw bytes either way; a C-level slice keeps the per-event cost small.
_id_key = operator.itemgetter(slice(7, 23))
_KIND_FIELD = re.compile(rb'"kind":(\d+)')


# Where the kind of stored event JSON lies: core/event.py writes the id, the pubkey and
# created_at first, so `"kind":` starts 170 to 180 bytes in (created_at of 8 to 18 digits).
_KIND_WINDOW = operator.itemgetter(slice(160, 200))
# A whole kind number (no leading zero, then the comma or brace that ends it).
_WHOLE_KIND = re.compile(rb'"kind":(0|[1-9]\d*)[,}]')


@functools.cache
def _kind_numbers(kinds: frozenset[int]) -> frozenset[bytes]:
    return frozenset(str(kind).encode() for kind in kinds)


def _surely_public(stored: list[bytes], private: frozenset[bytes]) -> bool:
    """Whether no event of a page has a private kind, told from a short window of each in
    one regex pass (most pages hold none; reading each event's kind costs 0.3 us an event).
    False when unsure: a window without its event's whole kind (another layout of JSON).
    A `"kind":` is always the event's own key: inside a string a quote is escaped."""
    found = _WHOLE_KIND.findall(b"\n".join(map(_KIND_WINDOW, stored)))
    return len(found) == len(stored) and private.isdisjoint(found)


def _kind_of(raw: bytes) -> int:
    """The kind of stored event JSON, without parsing the whole event."""
    found = _KIND_FIELD.search(raw)
    return int(found.group(1)) if found else -1


# Session._dispatch: the handler of each kind of client message.
_HANDLERS: dict[type, Callable[[Session, Any], list[Action]]] = {
    EventMessage: Session._on_event,
    ReqMessage: Session._open,
    CloseMessage: Session._on_close,
    AuthMessage: Session._on_auth,
    CountMessage: Session._count,
    NegOpenMessage: Session._negentropy,
    NegMsgMessage: Session._negentropy,
    NegCloseMessage: Session._negentropy,
}
