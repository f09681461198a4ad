"""NIP-77 negentropy: range-based set reconciliation over (created_at, id), sans-I/O.

Scope: the binary protocol of negentropy version 1 (byte 0x61) as the reference
implementation speaks it (hoytech/negentropy, docs/negentropy-protocol-v1.md): varints,
bounds (timestamp delta + shortest id prefix), ranges in the modes Skip / Fingerprint /
IdList, the fingerprint (first 16 bytes of SHA-256 of the ids' sum mod 2**256, 32 bytes
little-endian, then the count as a varint), 16 buckets per split, and the frame size limit.
`Storage` is the sorted set with precomputed prefix sums (a range's fingerprint costs two
lookups, not a sum over the range); `NegentropyServer` answers messages against it and
`NegentropyClient` initiates and reconciles. No I/O: the caller hex-encodes and sends.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

PROTOCOL_VERSION = 0x61
# The reference answers any byte of 0x60..0x6f it does not speak with its own version.
VERSION_RANGE = range(0x60, 0x70)
ID_SIZE = 32
FINGERPRINT_SIZE = 16
# Splitting a mismatched range: this many buckets, or the ids themselves below twice that.
BUCKETS = 16
# The initiator's split of a small range (under ECHO_FROM items): leaves of about this many
# items. A fingerprint costs about 20 bytes and only leaves that differ are answered, with
# the other side's ids (32 bytes each); an id list sent would cost 32 bytes an id and the
# answer as much again (bench/negentropy.py measures the bytes: 3 beats 2 and 4 at 1%).
INITIATOR_LEAF = 3
# From this many items the initiator sends a mismatched range back whole, for the other
# side to split into 16 (see NegentropyClient._buckets).
ECHO_FROM = 64
# The initiator keeps the other side's expected answer to one message within the frame
# limit too: a reply cut by the other side means sending the ranges it left out again.
LEAF_MISMATCH_SHARE = 4
# The initiator's split of a range of this many items or more: buckets of this many
# (times a power of 16), at most MAX_SPLIT of them (see NegentropyClient._buckets).
REFINE_BELOW = BUCKETS * BUCKETS
MAX_SPLIT = 255
MAX_U64 = 2**64 - 1
# The "infinity" timestamp that closes the last range; items may not use it.
INFINITY = MAX_U64
# The reference refuses smaller limits: below this a split might not fit one message
# and the exchange would stop making progress.
MIN_FRAME_SIZE_LIMIT = 4096
# Room kept free under the limit for the closing fingerprint of what was left out.
FRAME_SLACK = 200
_MASK = (1 << 256) - 1
# Bounds on an initiator's exchange (NegentropyClient._check_bounds). Rounds: a few per level
# of 16-way splitting of our set, plus the frames that the ids reported so far may take
# (an honest exchange moves about 400 bytes both ways per id found; this allows more) and
# the fingerprints of our whole set in small buckets may take, the frames counted at
# FRAME_WHEN_UNLIMITED bytes when there is no limit.
BASE_ROUNDS = 16
ROUNDS_PER_LEVEL = 4
BYTES_PER_REPORTED_ID = 1024
BYTES_PER_ITEM = 8
FRAME_WHEN_UNLIMITED = 1 << 20
# Ids the peer may say it holds and we lack when the caller gives no bound of its own.
DEFAULT_MAX_PEER_ITEMS = 10_000_000
# The modes encoded as varints (each one byte), written for every range.
_SKIP = b"\x00"
_FINGERPRINT = b"\x01"
_ID_LIST = b"\x02"


class NegentropyError(ValueError):
    """A malformed or unusable negentropy message (the answer is NEG-ERR)."""


class ReconciliationBoundError(NegentropyError):
    """The peer keeps the exchange going past what any honest peer would need."""


class Mode(IntEnum):
    SKIP = 0
    FINGERPRINT = 1
    ID_LIST = 2


# -- varints and bounds ------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """Base-128 digits, most significant first, high bit set on all but the last."""
    if n < 0:
        raise ValueError("varints are unsigned")
    if n < 0x80:
        return bytes((n,))
    digits = bytearray()
    while n:
        digits.append((n & 0x7F) | 0x80)
        n >>= 7
    digits[0] &= 0x7F  # the least significant digit, written last
    digits.reverse()
    return bytes(digits)


@dataclass(frozen=True, slots=True, order=True)
class Bound:
    """A point in (timestamp, id) order: ids shorter than 32 bytes are padded with zeros."""

    timestamp: int
    id_prefix: bytes = b""

    @property
    def key(self) -> tuple[int, bytes]:
        return self.timestamp, self.id_prefix.ljust(ID_SIZE, b"\0")


INFINITE_BOUND = Bound(INFINITY)


def minimal_bound(prev: tuple[int, bytes], curr: tuple[int, bytes]) -> Bound:
    """The shortest bound above `prev` and at or below `curr` (two adjacent items)."""
    if curr[0] != prev[0]:
        return Bound(curr[0])
    shared = 0
    for a, b in zip(prev[1], curr[1], strict=True):
        if a != b:
            break
        shared += 1
    return Bound(curr[0], curr[1][: shared + 1])


class _Reader:
    """Reads one message; bound timestamps are deltas from the previous one read."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.last_timestamp = 0

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise NegentropyError("message ends in the middle of a field")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def varint(self) -> int:
        data = self.data
        pos = self.pos
        if pos < len(data) and data[pos] < 0x80:  # most varints are one byte
            self.pos = pos + 1
            return data[pos]
        value = 0
        while True:
            if pos >= len(data):
                raise NegentropyError("message ends in the middle of a varint")
            byte = data[pos]
            pos += 1
            value = (value << 7) | (byte & 0x7F)
            if value > MAX_U64:
                raise NegentropyError("varint larger than 64 bits")
            if not byte & 0x80:
                self.pos = pos
                return value

    def bound(self) -> Bound:
        encoded = self.varint()
        if encoded == 0 or self.last_timestamp == INFINITY:
            timestamp = INFINITY
        else:
            timestamp = min(self.last_timestamp + encoded - 1, INFINITY)
        self.last_timestamp = timestamp
        length = self.varint()
        if length > ID_SIZE:
            raise NegentropyError("bound id prefix longer than 32 bytes")
        return Bound(timestamp, self.take(length))

    def ranges(self) -> Iterator[Range]:
        """The ranges one by one: a reply cut by the frame limit leaves the rest unread."""
        while not self.at_end:
            upper = self.bound()
            mode = self.varint()
            if mode == Mode.SKIP:
                yield Range(upper, Mode.SKIP)
            elif mode == Mode.FINGERPRINT:
                yield Range(upper, Mode.FINGERPRINT, self.take(FINGERPRINT_SIZE))
            elif mode == Mode.ID_LIST:
                count = self.varint()
                if count * ID_SIZE > len(self.data) - self.pos:
                    raise NegentropyError("id list longer than the message")
                blob = self.take(count * ID_SIZE)
                ids = tuple(blob[i : i + ID_SIZE] for i in range(0, len(blob), ID_SIZE))
                yield Range(upper, Mode.ID_LIST, ids=ids)
            else:
                raise NegentropyError(f"unknown range mode {mode}")


class _Writer:
    """Builds one message; encodes bound timestamps as deltas from the previous one."""

    def __init__(self) -> None:
        self.out = bytearray((PROTOCOL_VERSION,))
        self.last_timestamp = 0

    def bound(self, bound: Bound, into: bytearray) -> None:
        if len(bound.id_prefix) > ID_SIZE:
            raise ValueError("a bound's id prefix is at most 32 bytes")
        if bound.timestamp == INFINITY:
            into += b"\0"
            self.last_timestamp = INFINITY
        else:
            into += encode_varint(bound.timestamp - self.last_timestamp + 1)
            self.last_timestamp = bound.timestamp
        into.append(len(bound.id_prefix))  # at most 32: a one-byte varint
        into += bound.id_prefix


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Range:
    """One range of a message: everything from the previous range's bound up to `upper`."""

    upper: Bound
    mode: Mode
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    version: int
    ranges: tuple[Range, ...]


def open_message(data: bytes) -> tuple[int, Iterator[Range]]:
    """The version byte and the ranges, read lazily; another version carries none."""
    if not data:
        raise NegentropyError("empty negentropy message")
    version = data[0]
    if version not in VERSION_RANGE:
        raise NegentropyError(f"invalid negentropy protocol version byte 0x{version:02x}")
    if version != PROTOCOL_VERSION:
        return version, iter(())
    return version, _Reader(data, 1).ranges()


def decode_message(data: bytes) -> Message:
    """Parse a whole message; raises NegentropyError."""
    version, ranges = open_message(data)
    return Message(version, tuple(ranges))


def encode_message(ranges: Iterable[Range]) -> bytes:
    """A version-1 message holding these ranges, in order."""
    writer = _Writer()
    for r in ranges:
        writer.bound(r.upper, writer.out)
        writer.out += encode_varint(r.mode)
        if r.mode == Mode.FINGERPRINT:
            if len(r.fingerprint) != FINGERPRINT_SIZE:
                raise ValueError("a fingerprint is 16 bytes")
            writer.out += r.fingerprint
        elif r.mode == Mode.ID_LIST:
            writer.out += encode_varint(len(r.ids))
            for item_id in r.ids:
                if len(item_id) != ID_SIZE:
                    raise ValueError("an id is 32 bytes")
                writer.out += item_id
    return bytes(writer.out)


def fingerprint(ids: Iterable[bytes]) -> bytes:
    """The fingerprint of a set of ids, summed one by one: the definition, for tests."""
    total = 0
    count = 0
    for item_id in ids:
        total += int.from_bytes(item_id, "little")
        count += 1
    return _fingerprint_of(total, count)


def whole_set_message(items: Sequence[tuple[int, bytes]]) -> bytes:
    """A first message of one range, the whole set's fingerprint, from the items themselves
    (each once, in any order): no Storage needed, so the initiator can send it while its
    Storage is still being built. The answer splits the set as initiate() would have."""
    total = sum(int.from_bytes(item_id, "little") for _, item_id in items)
    writer = _Writer()
    writer.bound(INFINITE_BOUND, writer.out)
    writer.out += _FINGERPRINT
    writer.out += _fingerprint_of(total, len(items))
    return bytes(writer.out)


def _fingerprint_of(total: int, count: int) -> bytes:
    digest = hashlib.sha256((total & _MASK).to_bytes(ID_SIZE, "little") + encode_varint(count))
    return digest.digest()[:FINGERPRINT_SIZE]


# -- storage -------------------------------------------------------------------------------


class _Ids(Sequence[bytes]):
    """The 32-byte ids in one blob, indexable so that bisect can search them."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // ID_SIZE

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        start = index * ID_SIZE
        return self.blob[start : start + ID_SIZE]


class Storage:
    """A sorted, sealed set of (timestamp, id) items with prefix sums of the ids.

    Memory: 8 bytes of timestamp, 32 of id and 32 of prefix sum per item (`nbytes`), in
    three flat buffers rather than a million Python objects. A range's fingerprint is the
    difference of two prefix sums: O(1) however large the range; finding a bound is a
    bisection over the timestamps (then over the ids sharing one timestamp).
    """

    __slots__ = ("_ids", "_prefix", "ids_blob", "timestamps")

    def __init__(self, items: Iterable[tuple[int, bytes]]) -> None:
        # The stores hand over sorted, distinct items: one pass checks that, where sorting
        # and then looking for duplicates would take two.
        ordered = items if isinstance(items, list) else list(items)
        if not all(map(operator.lt, ordered, itertools.islice(ordered, 1, None))):
            ordered = sorted(ordered)
            if any(map(operator.eq, ordered, itertools.islice(ordered, 1, None))):
                ordered = [item for item, _ in itertools.groupby(ordered)]
        ids = list(map(operator.itemgetter(1), ordered))
        if ids and set(map(len, ids)) != {ID_SIZE}:
            raise ValueError("an id is 32 bytes")
        try:
            self.timestamps = array("Q", map(operator.itemgetter(0), ordered))
        except OverflowError:
            raise ValueError("a timestamp is from 0 to 2**64 - 2") from None
        if self.timestamps and self.timestamps[-1] == INFINITY:
            raise ValueError("a timestamp is from 0 to 2**64 - 2")
        self.ids_blob = b"".join(ids)
        self._ids = _Ids(self.ids_blob)
        self._prefix = _prefix_sums(self.ids_blob)

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def nbytes(self) -> int:
        """Bytes held by the three buffers (the Python object headers aside)."""
        return (
            len(self.timestamps) * self.timestamps.itemsize + len(self.ids_blob) + len(self._prefix)
        )

    def item(self, index: int) -> tuple[int, bytes]:
        return self.timestamps[index], self._ids[index]

    def ids(self, lower: int, upper: int) -> list[bytes]:
        blob = self.ids_blob
        return [blob[i : i + ID_SIZE] for i in range(lower * ID_SIZE, upper * ID_SIZE, ID_SIZE)]

    def find_lower_bound(self, bound: Bound, lower: int, upper: int) -> int:
        """The first index in [lower, upper) whose item is at or above `bound`, else upper."""
        if bound.timestamp >= INFINITY:
            return upper
        first = bisect_left(self.timestamps, bound.timestamp, lower, upper)
        if not bound.id_prefix.strip(b"\0"):
            return first  # (timestamp, 0...0) is at or below every item of that timestamp
        end = bisect_right(self.timestamps, bound.timestamp, first, upper)
        return bisect_left(self._ids, bound.key[1], first, end)

    def fingerprint(self, lower: int, upper: int) -> bytes:
        prefix = self._prefix
        high = int.from_bytes(prefix[upper * ID_SIZE : (upper + 1) * ID_SIZE], "little")
        low = int.from_bytes(prefix[lower * ID_SIZE : (lower + 1) * ID_SIZE], "little")
        return _fingerprint_of(high - low, upper - lower)


def _prefix_sums(blob: bytes) -> bytes:
    """Sums of the first 0, 1, ..., n ids mod 2**256, 32 bytes little-endian each.

    Each id is read as four 64-bit words and every word column is summed by
    itertools.accumulate in C; a plain loop of int.from_bytes takes about twice as long
    for a million ids.
    """
    if sys.byteorder != "little":
        return _prefix_sums_slow(blob)
    words = memoryview(blob).cast("Q")
    columns = [itertools.accumulate(words[c::4], initial=0) for c in range(4)]
    to_bytes = int.to_bytes

    def combine(a: int, b: int, c: int, d: int) -> bytes:
        return to_bytes((a + (b << 64) + (c << 128) + (d << 192)) & _MASK, ID_SIZE, "little")

    return b"".join(map(combine, *columns))


def _prefix_sums_slow(blob: bytes) -> bytes:
    total = 0
    sums = [bytes(ID_SIZE)]
    for start in range(0, len(blob), ID_SIZE):
        total = (total + int.from_bytes(blob[start : start + ID_SIZE], "little")) & _MASK
        sums.append(total.to_bytes(ID_SIZE, "little"))
    return b"".join(sums)


# -- reconciliation ------------------------------------------------------------------------


class _Reconciler:
    """What the client and the server share: answering each range of a message in turn."""

    def __init__(self, storage: Storage, frame_size_limit: int = 0) -> None:
        if frame_size_limit and frame_size_limit < MIN_FRAME_SIZE_LIMIT:
            raise ValueError(f"frame_size_limit is 0 (none) or at least {MIN_FRAME_SIZE_LIMIT}")
        self.storage = storage
        self.frame_size_limit = frame_size_limit
        self._held_from = INFINITE_BOUND
        # What the other side's answer to the last _split is expected to weigh.
        self.split_reply_bytes = 0

    def _over_limit(self, size: int) -> bool:
        return bool(self.frame_size_limit) and size > self.frame_size_limit - FRAME_SLACK

    def _reconcile(
        self, ranges: Iterable[Range], initiator: bool, held: Sequence[Range] = ()
    ) -> _Round:
        state = _Round(self, initiator, held)
        state.run(ranges)
        return state

    def _unanswered_after(self, lower: Bound, upper: Bound) -> Sequence[Range]:
        """Our last message's ranges from `lower` on, when the other side's range from
        `lower` to `upper` is its closing fingerprint over what it cut; else none."""
        return ()

    def _buckets(self, count: int) -> int:
        """Fingerprinted buckets for a mismatched range of `count` items; 0: send its ids.

        The reference's rule, which the relay keeps as the answering side."""
        return BUCKETS if count >= BUCKETS * 2 else 0

    def _split(self, writer: _Writer, lower: int, upper: int, upper_bound: Bound) -> bytearray:
        """A mismatched range in fingerprinted buckets, or its ids when it is small."""
        out = bytearray()
        storage = self.storage
        count = upper - lower
        buckets = self._buckets(count)
        self.split_reply_bytes = expected_reply_bytes(count, buckets)
        if not buckets:
            writer.bound(upper_bound, out)
            out += _ID_LIST
            out += encode_varint(count)
            out += storage.ids_blob[lower * ID_SIZE : upper * ID_SIZE]
            return out
        per_bucket, extra = divmod(count, buckets)
        start = lower
        for bucket in range(buckets):
            end = start + per_bucket + (1 if bucket < extra else 0)
            if end == upper:
                bound = upper_bound
            else:
                bound = minimal_bound(storage.item(end - 1), storage.item(end))
            writer.bound(bound, out)
            out += _FINGERPRINT
            out += storage.fingerprint(start, end)
            start = end
        return out


def expected_reply_bytes(count: int, buckets: int) -> int:
    """Roughly what the other side answers to `count` items sent in `buckets` fingerprints
    (0: as ids): 16 fingerprints for each large bucket, ids for the few small ones that
    do not match (about one in LEAF_MISMATCH_SHARE), its own ids to an id list."""
    if not buckets:
        return ID_SIZE * count + 8
    size = count // buckets
    if size >= BUCKETS * 2:
        return buckets * BUCKETS * 21
    return buckets * (ID_SIZE * size + 8) // LEAF_MISMATCH_SHARE


class _Round:
    """One message being answered: the ranges written so far and the ids found."""

    def __init__(self, owner: _Reconciler, initiator: bool, held: Sequence[Range] = ()) -> None:
        self.owner = owner
        self.storage = owner.storage
        self.initiator = initiator
        self.writer = _Writer()
        self.have: list[bytes] = []
        self.need: list[bytes] = []
        self.prev_index = 0
        self.prev_bound = Bound(0)
        # Skipped ranges are merged and written only if something follows them.
        self.skipping = False
        # The initiator's cut: the other side's ranges left out of this message (answered
        # in the next one), and those left out of the last one, answered after the reply.
        self.cut: list[Range] = []
        self.held = held
        self.held_answered = not held
        self.stashing = False
        self.expected = 0

    def run(self, ranges: Iterable[Range]) -> None:
        if self._answer_all(ranges):
            self._answer_held()
        elif self.stashing and not self.held_answered and self.cut[-1].upper != INFINITE_BOUND:
            # Cut before the held ranges: they follow the rest of the reply, past the gap
            # it skipped up to where our last message ended (unless the rest ends in the
            # other side's closing fingerprint, which covers them).
            self.cut += [Range(self.held_start, Mode.SKIP), *self.held]

    def _answer_all(self, ranges: Iterable[Range]) -> bool:
        remaining = iter(ranges)
        for r in remaining:
            if not self.answer(r):
                if self.stashing:
                    self.cut = [r, *remaining]
                return False
        return True

    def _answer_held(self) -> bool:
        """The other side's ranges cut from our last message, from where it ended: the
        reply covers up to there (a reply cut itself ends in a fingerprint to infinity)."""
        if self.held_answered:
            return True
        self.held_answered = True
        start = self.held_start
        if self.prev_bound.key >= INFINITE_BOUND.key:
            return True  # its closing fingerprint matched ours, held ranges and all
        if self.prev_bound.key > start.key:
            raise NegentropyError("the reply goes past the end of our message")
        if self.prev_bound.key < start.key:
            self.skipping = True
            self.prev_bound = start
            self.prev_index = self.storage.find_lower_bound(
                start, self.prev_index, len(self.storage)
            )
        return self._answer_all(self.held)

    @property
    def held_start(self) -> Bound:
        return self.owner._held_from

    def answer(self, r: Range) -> bool:
        """Answer one range; False once the frame is full (the rest is left for later)."""
        lower = self.prev_index
        upper = self.storage.find_lower_bound(r.upper, lower, len(self.storage))
        # Where the message stands, should this range not fit: the bounds written into
        # `out` move the writer's timestamp, and a skip pending before it must be kept.
        before = (self.writer.last_timestamp, self.skipping)
        out = bytearray()
        expected = 0
        if r.mode == Mode.SKIP:
            self.skipping = True
        elif r.mode == Mode.FINGERPRINT:
            if r.fingerprint == self.storage.fingerprint(lower, upper):
                self.skipping = True
            else:
                self._flush_skip(out)
                unanswered = self.owner._unanswered_after(self.prev_bound, r.upper)
                if unanswered:
                    return self._replay(out, unanswered, lower)
                out += self.owner._split(self.writer, lower, upper, r.upper)
                expected = self.owner.split_reply_bytes
        elif self.initiator:
            self.skipping = True
        else:
            self._flush_skip(out)
            sent = self._send_ids(out, lower, upper, r.upper)
            if sent < upper:
                return self._close_with_fingerprint(out, sent)
        if self.owner._over_limit(len(self.writer.out) + len(out)) or (
            self.initiator and self.expected and self.owner._over_limit(self.expected + expected)
        ):
            # The closing fingerprint covers this range and all after it, from the last
            # bound written: the skip pending before this range is written first, or the
            # closing range would start before `lower` and never match.
            self.writer.last_timestamp, self.skipping = before
            closing = bytearray()
            self._flush_skip(closing)
            if (
                self.initiator
                and len(self.writer.out) > 1
                and not self.owner._over_limit(len(out) + len(closing) + 1)
            ):
                # We steer the exchange: the message ends here, and the rest of the reply
                # is answered in the next one, where a closing fingerprint would make the
                # other side split it anew from the top.
                self.writer.out += closing
                self.stashing = True
                return False
            return self._close_with_fingerprint(closing, lower)
        if r.mode == Mode.ID_LIST and self.initiator:
            # Only once the range is settled in this message: a range left to the closing
            # fingerprint comes back, and its ids would be counted twice.
            self._compare_ids(r.ids, lower, upper)
        self.writer.out += out
        self.expected += expected
        self.prev_index = upper
        self.prev_bound = r.upper
        return True

    def _flush_skip(self, out: bytearray) -> None:
        if self.skipping:
            self.skipping = False
            self.writer.bound(self.prev_bound, out)
            out += _SKIP

    def _compare_ids(self, theirs: Sequence[bytes], lower: int, upper: int) -> None:
        their_ids = set(theirs)
        for item_id in self.storage.ids(lower, upper):
            if item_id in their_ids:
                their_ids.discard(item_id)
            else:
                self.have.append(item_id)
        # Their order, not a set's: deterministic results.
        self.need.extend(i for i in dict.fromkeys(theirs) if i in their_ids)

    def _send_ids(self, out: bytearray, lower: int, upper: int, upper_bound: Bound) -> int:
        """Our ids of the range, as many as fit; returns the index after the last one sent."""
        end = upper
        limit = self.owner.frame_size_limit
        if limit:
            room = limit - FRAME_SLACK - len(self.writer.out) - len(out) - 2 * 10 - ID_SIZE - 3
            end = min(upper, lower + max(room, 0) // ID_SIZE)
        if end == lower and lower < upper:
            return lower  # nothing fits: the closing fingerprint covers the whole range
        bound = (
            upper_bound
            if end == upper
            else minimal_bound(self.storage.item(end - 1), self.storage.item(end))
        )
        self.writer.bound(bound, out)
        out += _ID_LIST
        out += encode_varint(end - lower)
        out += self.storage.ids_blob[lower * ID_SIZE : end * ID_SIZE]
        return end

    def _replay(self, out: bytearray, ranges: Sequence[Range], lower: int) -> bool:
        """Our ranges the other side cut from its answer, sent again as they were, as many
        as fit: splitting the closing fingerprint anew would redo the levels above them."""
        for r in ranges:
            before = self.writer.last_timestamp
            piece = bytearray()
            self.writer.bound(r.upper, piece)
            piece += encode_varint(r.mode)
            if r.mode == Mode.FINGERPRINT:
                piece += r.fingerprint
            elif r.mode == Mode.ID_LIST:
                piece += encode_varint(len(r.ids))
                piece += b"".join(r.ids)
            if self.owner._over_limit(len(self.writer.out) + len(out) + len(piece)):
                self.writer.last_timestamp = before
                return self._close_with_fingerprint(out, lower)
            out += piece
            lower = self.storage.find_lower_bound(r.upper, lower, len(self.storage))
            self.prev_bound = r.upper
        self.writer.out += out
        self.prev_index = lower
        return self._answer_held()

    def _close_with_fingerprint(self, out: bytearray, start: int) -> bool:
        """End the message: `out` so far, then one fingerprint for everything from `start`."""
        self.writer.out += out
        self.writer.bound(INFINITE_BOUND, self.writer.out)
        self.writer.out += _FINGERPRINT
        self.writer.out += self.storage.fingerprint(start, len(self.storage))
        return False


class NegentropyServer(_Reconciler):
    """The relay's side: answers each client message against one sealed storage."""

    def answer(self, query: bytes) -> bytes:
        """The reply to one message; raises NegentropyError for a malformed one."""
        version, ranges = open_message(query)
        if version != PROTOCOL_VERSION:
            return bytes((PROTOCOL_VERSION,))
        return bytes(self._reconcile(ranges, initiator=False).writer.out)


class NegentropyClient(_Reconciler):
    """The initiator's side: `initiate()`, then `reconcile()` each reply until it is done.
    Each id is reported once, in have or in need, over the whole exchange."""

    def __init__(
        self,
        storage: Storage,
        frame_size_limit: int = 0,
        max_peer_items: int = DEFAULT_MAX_PEER_ITEMS,
    ) -> None:
        super().__init__(storage, frame_size_limit)
        self._reported: set[bytes] = set()
        self.max_peer_items = max_peer_items
        self.rounds = 0
        self.needed = 0
        # The ranges of our last message, and where each upper bound stands among them.
        self._sent: tuple[Range, ...] = ()
        self._sent_at: dict[Bound, int] = {}
        # The other side's ranges our last message left out, from `_held_from` on.
        self._held: list[Range] = []

    def _remember(self, message: bytes) -> bytes:
        self._sent = decode_message(message).ranges
        self._sent_at = {r.upper: n for n, r in enumerate(self._sent)}
        return message

    def _unanswered_after(self, lower: Bound, upper: Bound) -> Sequence[Range]:
        # A cut is closed with a fingerprint up to infinity from the bound of one of our
        # ranges (the start: Bound(0)); an answer to our own last range ends there too, but
        # the other side splits a mismatched range or sends its ids, it never echoes it.
        if upper != INFINITE_BOUND:
            return ()
        start = 0 if lower == Bound(0) else self._sent_at.get(lower, -2) + 1
        return self._sent[start:] if start > 0 or lower == Bound(0) else ()

    def max_rounds(self) -> int:
        """The replies an honest peer needs, at most, given the ids reported so far."""
        levels = 1
        span = BUCKETS
        while span <= len(self.storage):
            span *= BUCKETS
            levels += 1
        frame = self.frame_size_limit or FRAME_WHEN_UNLIMITED
        work = len(self._reported) * BYTES_PER_REPORTED_ID + len(self.storage) * BYTES_PER_ITEM
        extra = work // frame
        return BASE_ROUNDS + ROUNDS_PER_LEVEL * levels + extra

    def _check_bounds(self, new_need: int) -> None:
        """A peer may not keep us reconciling forever, nor make up ids without end: need
        holds at most the items the peer may hold (have is bounded by our own set)."""
        if self.needed + new_need > self.max_peer_items:
            raise ReconciliationBoundError(
                f"the peer reports more than {self.max_peer_items:,} ids we lack"
            )
        if self.rounds > self.max_rounds():
            raise ReconciliationBoundError(
                f"no agreement after {self.rounds} rounds, more than an honest peer needs"
                f" for {len(self.storage):,} items and {len(self._reported):,} ids found"
            )

    def _buckets(self, count: int) -> int:
        """Buckets for a range the other side says differs: the fewest bytes both ways.

        The other side splits a mismatched range of 32 or more items into 16 fingerprints
        and answers a smaller one with its ids. So: a large range in buckets of 256 *
        16**j (at most 255 of them); one of ECHO_FROM to 511 items as one fingerprint,
        for the other side to split (20 bytes, where splitting it here would cost 20 a
        bucket); a smaller one in leaves of INITIATOR_LEAF items, of which only those
        that differ come back, as ids; an empty one as its (empty) id list."""
        if count == 0:
            return 0
        if count < ECHO_FROM:
            return -(-count // INITIATOR_LEAF)
        if count < REFINE_BELOW:
            return 1
        size = REFINE_BELOW
        while count // size > MAX_SPLIT:
            size *= BUCKETS
        return count // size

    def initiate(self) -> bytes:
        writer = _Writer()
        writer.out += self._split(writer, 0, len(self.storage), INFINITE_BOUND)
        return self._remember(bytes(writer.out))

    def reconcile(self, reply: bytes) -> tuple[bytes | None, list[bytes], list[bytes]]:
        """(next message or None when in sync, ids we have and they lack, ids we need)."""
        version, ranges = open_message(reply)
        if version != PROTOCOL_VERSION:
            raise NegentropyError(f"the server speaks negentropy version 0x{version:02x}, not 0x61")
        self.rounds += 1
        state = self._reconcile(ranges, initiator=True, held=self._held)
        self._held = state.cut
        self._held_from = state.prev_bound
        out = self._remember(bytes(state.writer.out))
        # A reply cut by the frame limit ends in one fingerprint over everything after
        # the cut, ranges we had settled included: their ids can come round again.
        have = [i for i in state.have if i not in self._reported]
        need = [i for i in state.need if i not in self._reported]
        self._check_bounds(len(need))
        self.needed += len(need)
        self._reported.update(have)
        self._reported.update(need)
        return (out if len(out) > 1 else None), have, need
