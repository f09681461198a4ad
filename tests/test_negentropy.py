"""The NIP-77 negentropy core (relay/core/negentropy.py), without I/O.

Reconciliation is property-tested against the naive set difference: random client and
server sets (empty, equal, sharing timestamps, one event apart, large enough that a small
frame limit forces many rounds) must end with `have` = client - server and `need` =
server - client, each id once. Around it: varints, bounds and messages round-trip, the
fingerprint matches the reference implementation's vectors and the definition, the
version byte, malformed messages are refused, and the frame limit holds.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import negentropy as neg
from relay.core.negentropy import (
    INFINITY,
    MIN_FRAME_SIZE_LIMIT,
    PROTOCOL_VERSION,
    Bound,
    Message,
    Mode,
    NegentropyClient,
    NegentropyError,
    NegentropyServer,
    Range,
    Storage,
    decode_message,
    encode_message,
    encode_varint,
    fingerprint,
)

Item = tuple[int, bytes]


def reconcile(
    client_items: list[Item], server_items: list[Item], frame_limit: int = 0
) -> tuple[list[bytes], list[bytes], int]:
    """Run a whole exchange in process: (have, need, rounds)."""
    client = NegentropyClient(Storage(client_items), frame_limit)
    server = NegentropyServer(Storage(server_items), frame_limit)
    have: list[bytes] = []
    need: list[bytes] = []
    message: bytes | None = client.initiate()
    rounds = 0
    while message is not None:
        rounds += 1
        assert rounds < 10_000, "reconciliation does not converge"
        if frame_limit:
            assert len(message) <= frame_limit
        reply = server.answer(message)
        if frame_limit:
            assert len(reply) <= frame_limit
        message, h, n = client.reconcile(reply)
        have += h
        need += n
    return have, need, rounds


def assert_finds_difference(client_items: list[Item], server_items: list[Item], limit: int) -> int:
    have, need, rounds = reconcile(client_items, server_items, limit)
    client_ids = {i for _, i in client_items}
    server_ids = {i for _, i in server_items}
    assert sorted(have) == sorted(client_ids - server_ids)
    assert sorted(need) == sorted(server_ids - client_ids)
    return rounds


# -- reconciliation: properties ------------------------------------------------------------

# Few timestamps so that many items share one and bounds need id prefixes; ids that share
# leading bytes so that prefixes grow past one byte.
timestamps = st.integers(0, 6) | st.integers(0, 2**40)
ids = st.binary(min_size=32, max_size=32) | st.builds(
    lambda tail: b"\xab\xcd" + tail, st.binary(min_size=30, max_size=30)
)
item_sets = st.lists(st.tuples(timestamps, ids), max_size=300, unique_by=lambda item: item[1])


@st.composite
def two_sets(draw: st.DrawFn) -> tuple[list[Item], list[Item]]:
    """A shared part and a part only each side holds (any of them may be empty)."""
    items = draw(item_sets)
    owner = draw(st.lists(st.sampled_from("cbs"), min_size=len(items), max_size=len(items)))
    client = [item for item, who in zip(items, owner, strict=True) if who in "cb"]
    server = [item for item, who in zip(items, owner, strict=True) if who in "sb"]
    return client, server


@settings(max_examples=300, deadline=None)
@given(two_sets(), st.sampled_from([0, MIN_FRAME_SIZE_LIMIT]))
def test_reconciliation_finds_exactly_the_difference(
    sets: tuple[list[Item], list[Item]], limit: int
) -> None:
    assert_finds_difference(*sets, limit)


@settings(max_examples=150, deadline=None)
@given(two_sets(), st.sampled_from([0, MIN_FRAME_SIZE_LIMIT]))
def test_opening_with_the_whole_set_fingerprint_finds_exactly_the_difference(
    sets: tuple[list[Item], list[Item]], limit: int
) -> None:
    """whole_set_message() instead of initiate(): what relay sync sends for a large set
    while its Storage is being built."""
    client_items, server_items = sets
    client = NegentropyClient(Storage(client_items), limit)
    server = NegentropyServer(Storage(server_items), limit)
    have: list[bytes] = []
    need: list[bytes] = []
    message: bytes | None = neg.whole_set_message(client_items)
    rounds = 0
    while message is not None:
        rounds += 1
        assert rounds < 10_000
        message, h, n = client.reconcile(server.answer(message))
        have += h
        need += n
    client_ids = {i for _, i in client_items}
    server_ids = {i for _, i in server_items}
    assert sorted(have) == sorted(client_ids - server_ids)
    assert sorted(need) == sorted(server_ids - client_ids)
    if client_ids == server_ids:
        assert rounds == 1


@settings(max_examples=60, deadline=None)
@given(item_sets)
def test_equal_sets_agree_in_one_round_with_nothing_to_move(items: list[Item]) -> None:
    have, need, rounds = reconcile(items, items)
    assert (have, need, rounds) == ([], [], 1)


@settings(max_examples=60, deadline=None)
@given(item_sets.filter(bool), st.data())
def test_sets_one_event_apart(items: list[Item], data: st.DataObject) -> None:
    extra = data.draw(st.sampled_from(items))
    rest = [item for item in items if item != extra]
    client_side = data.draw(st.booleans())
    if client_side:
        have, need, _ = reconcile(items, rest)
        assert (have, need) == ([extra[1]], [])
    else:
        have, need, _ = reconcile(rest, items)
        assert (have, need) == ([], [extra[1]])


@pytest.mark.parametrize(("client_size", "server_size"), [(0, 0), (0, 1), (1, 0), (0, 5000)])
def test_empty_sides(client_size: int, server_size: int) -> None:
    rng = random.Random(client_size * 7 + server_size)
    client = [(rng.randrange(100), rng.randbytes(32)) for _ in range(client_size)]
    server = [(rng.randrange(100), rng.randbytes(32)) for _ in range(server_size)]
    assert_finds_difference(client, server, MIN_FRAME_SIZE_LIMIT)


def test_all_items_share_one_timestamp() -> None:
    rng = random.Random(3)
    shared = [(1_700_000_000, rng.randbytes(32)) for _ in range(3000)]
    client = shared + [(1_700_000_000, rng.randbytes(32)) for _ in range(40)]
    server = shared[5:] + [(1_700_000_000, rng.randbytes(32)) for _ in range(40)]
    assert_finds_difference(client, server, 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_large_sets_with_a_small_frame_limit_take_several_rounds(seed: int) -> None:
    rng = random.Random(seed)
    shared = [(rng.randrange(10_000), rng.randbytes(32)) for _ in range(20_000)]
    client = shared[:19_000] + [(rng.randrange(10_000), rng.randbytes(32)) for _ in range(600)]
    server = shared[1_000:] + [(rng.randrange(10_000), rng.randbytes(32)) for _ in range(600)]
    rounds = assert_finds_difference(client, server, MIN_FRAME_SIZE_LIMIT)
    assert rounds > 5
    # Without a limit the same difference is found in fewer, larger messages.
    assert assert_finds_difference(client, server, 0) < rounds


def test_the_initiator_sends_ids_only_for_its_smallest_ranges() -> None:
    """Where the server would answer buckets with id lists, the client splits finer instead
    of sending its ids (which the server answers with all of its own): a sparse difference
    costs fewer bytes than under the reference's rule, and no id list of the client's holds
    more than INITIATOR_LEAF ids (bench/negentropy.py: 100,000 and 1,000,000 items)."""
    rng = random.Random(3)
    shared = [(rng.randrange(100_000), rng.randbytes(32)) for _ in range(6_000)]
    client_items = shared + [(rng.randrange(100_000), rng.randbytes(32)) for _ in range(60)]
    server_items = shared + [(rng.randrange(100_000), rng.randbytes(32)) for _ in range(60)]
    client = NegentropyClient(Storage(client_items))
    server = NegentropyServer(Storage(server_items))
    have: list[bytes] = []
    need: list[bytes] = []
    sent = 0
    message: bytes | None = client.initiate()
    while message is not None:
        sent += len(message)
        for r in decode_message(message).ranges:
            if r.mode is Mode.ID_LIST:
                assert len(r.ids) <= neg.INITIATOR_LEAF
        reply = server.answer(message)
        sent += len(reply)
        message, h, n = client.reconcile(reply)
        have += h
        need += n
    assert sorted(have) == sorted({i for _, i in client_items} - {i for _, i in server_items})
    assert sorted(need) == sorted({i for _, i in server_items} - {i for _, i in client_items})
    # The reference's rule (16 buckets, ids below 32) as the client: here, where the client
    # would send id lists of about 23 ids, the same exchange needs several times the bytes.
    reference = NegentropyClient(Storage(client_items))
    reference._buckets = NegentropyServer(Storage([]))._buckets  # type: ignore[method-assign]
    reference_bytes = 0
    message = reference.initiate()
    while message is not None:
        reply = server.answer(message)
        reference_bytes += len(message) + len(reply)
        message, _, _ = reference.reconcile(reply)
    assert reference_bytes > 3 * sent


def test_duplicate_items_count_once() -> None:
    item = (5, b"\x01" * 32)
    assert len(Storage([item, item, (6, b"\x02" * 32)])) == 2


# -- the frame size limit ------------------------------------------------------------------


def test_a_server_reply_stays_under_the_frame_limit() -> None:
    rng = random.Random(9)
    server = NegentropyServer(
        Storage((rng.randrange(50), rng.randbytes(32)) for _ in range(10_000)),
        MIN_FRAME_SIZE_LIMIT,
    )
    # An empty client asks for every id: the answer is cut and closed with a fingerprint.
    reply = server.answer(NegentropyClient(Storage([])).initiate())
    assert len(reply) <= MIN_FRAME_SIZE_LIMIT
    ranges = decode_message(reply).ranges
    assert ranges[0].mode is Mode.ID_LIST
    assert 0 < len(ranges[0].ids) < 10_000
    assert ranges[-1].upper == Bound(INFINITY)
    assert ranges[-1].mode is Mode.FINGERPRINT


@pytest.mark.parametrize("limit", [1, 4095])
def test_a_frame_limit_too_small_to_progress_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="frame_size_limit"):
        NegentropyServer(Storage([]), limit)


# -- version byte --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0x60, 0x62, 0x6F])
def test_server_answers_another_version_with_its_own(version: int) -> None:
    server = NegentropyServer(Storage([(1, b"\x01" * 32)]))
    assert server.answer(bytes([version]) + b"\x00\x00\x01" + bytes(16)) == b"\x61"


@pytest.mark.parametrize("version", [0x00, 0x5F, 0x70, 0xFF])
def test_a_byte_outside_the_version_range_is_not_negentropy(version: int) -> None:
    with pytest.raises(NegentropyError, match="version"):
        NegentropyServer(Storage([])).answer(bytes([version]))


def test_client_refuses_a_server_of_another_version() -> None:
    client = NegentropyClient(Storage([]))
    client.initiate()
    with pytest.raises(NegentropyError, match="0x62"):
        client.reconcile(b"\x62")


def test_a_server_in_sync_answers_the_version_byte_alone_and_the_client_stops() -> None:
    items = [(1, b"\x01" * 32), (2, b"\x02" * 32)]
    client = NegentropyClient(Storage(items))
    reply = NegentropyServer(Storage(items)).answer(client.initiate())
    assert reply[0] == PROTOCOL_VERSION
    assert client.reconcile(reply) == (None, [], [])


# -- malformed messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"", "empty"),
        (b"\x61\x80", "varint"),  # a continuation byte, then nothing
        (b"\x61\x00", "varint"),  # a bound without its id length
        (b"\x61\x00\x21" + bytes(33), "32 bytes"),  # an id prefix of 33 bytes
        (b"\x61\x00\x00\x01" + bytes(15), "middle of a field"),  # a 15-byte fingerprint
        (b"\x61\x00\x00\x02\x02" + bytes(63), "longer than the message"),
        (b"\x61\x00\x00\x03", "mode"),
        (b"\x61" + b"\xff" * 10 + b"\x01\x00\x00", "64 bits"),
    ],
)
def test_malformed_messages_are_refused(message: bytes, why: str) -> None:
    with pytest.raises(NegentropyError, match=why):
        NegentropyServer(Storage([])).answer(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_answered_or_refused_never_a_crash(data: bytes) -> None:
    server = NegentropyServer(Storage([(t, bytes([t]) * 32) for t in range(40)]))
    try:
        reply = server.answer(b"\x61" + data)
    except NegentropyError:
        return
    assert decode_message(reply).version == PROTOCOL_VERSION


# -- encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8100"), (255, "817f"), (16383, "ff7f"),
     (16384, "818000"), (2**64 - 1, "81ffffffffffffffff7f")],
)  # fmt: skip
def test_varint_encoding(n: int, encoded: str) -> None:
    assert encode_varint(n).hex() == encoded
    assert neg._Reader(bytes.fromhex(encoded)).varint() == n


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(n: int) -> None:
    reader = neg._Reader(encode_varint(n))
    assert reader.varint() == n
    assert reader.at_end


bounds = st.builds(Bound, st.integers(0, 2**64 - 2), st.binary(max_size=32)) | st.just(
    Bound(INFINITY)
)


@st.composite
def ranges_in_order(draw: st.DrawFn) -> list[Range]:
    uppers = sorted(draw(st.lists(bounds, max_size=12)), key=lambda b: b.key)
    made = []
    for upper in uppers:
        mode = draw(st.sampled_from(Mode))
        if mode is Mode.FINGERPRINT:
            made.append(Range(upper, mode, fingerprint=draw(st.binary(min_size=16, max_size=16))))
        elif mode is Mode.ID_LIST:
            made.append(Range(upper, mode, ids=tuple(draw(st.lists(ids, max_size=4)))))
        else:
            made.append(Range(upper, mode))
    return made


@given(ranges_in_order())
def test_messages_round_trip(ranges: list[Range]) -> None:
    assert decode_message(encode_message(ranges)) == Message(PROTOCOL_VERSION, tuple(ranges))


def test_bound_timestamps_are_deltas_and_infinity_is_zero() -> None:
    encoded = encode_message(
        [Range(Bound(1000), Mode.SKIP), Range(Bound(1005, b"\x07"), Mode.SKIP),
         Range(Bound(INFINITY), Mode.SKIP)]
    )  # fmt: skip
    # 1000 + 1 = 0x87 0x69; 5 + 1; infinity is 0. Each: length, prefix, mode 0.
    assert encoded.hex() == "61" + "8769" + "00" + "00" + "06" + "0107" + "00" + "00" + "00" + "00"


def test_minimal_bound_is_the_shortest_separating_prefix() -> None:
    assert neg.minimal_bound((5, b"\x01" * 32), (6, b"\x00" * 32)) == Bound(6)
    prev, curr = (5, b"\xab\xcd\x01" + bytes(29)), (5, b"\xab\xcd\x02" + bytes(29))
    assert neg.minimal_bound(prev, curr) == Bound(5, b"\xab\xcd\x02")


# -- storage and fingerprints --------------------------------------------------------------

# From the reference implementation's tests (hoytech/negentropy, kotlin FingerprintTest).
VECTOR_ITEMS = [
    (1678011277, "eb6b05c2e3b008592ac666594d78ed83e7b9ab30f825b9b08878128f7500008c"),
    (1678011278, "39b916432333e069a4386917609215cc688eb99f06fed01aadc29b1b4b92d6f0"),
    (1678011279, "abc81d58ebe3b9a87100d47f58bf15e9b1cbf62d38623f11d0f0d17179f5f3ba"),
]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, "6d74e1212fcafc8a81d090f0ffbde8b0"),
        (2, "96b26d110825d4b1805fc56988a3e65d"),
        (3, "c15ce60f185fd24ae341076caa93daa5"),
    ],
)
def test_fingerprint_vectors(count: int, expected: str) -> None:
    storage = Storage((t, bytes.fromhex(i)) for t, i in VECTOR_ITEMS)
    assert storage.fingerprint(0, count).hex() == expected
    assert fingerprint(bytes.fromhex(i) for _, i in VECTOR_ITEMS[:count]).hex() == expected


def test_fingerprint_definition_wraps_the_sum_at_2_to_256() -> None:
    ids = [b"\xff" * 32, b"\x02" + bytes(31)]  # (2**256 - 1) + 2 = 1 mod 2**256
    expected = hashlib.sha256((1).to_bytes(32, "little") + b"\x02").digest()[:16]
    assert fingerprint(ids) == expected
    assert Storage([(0, ids[0]), (1, ids[1])]).fingerprint(0, 2) == expected


@settings(max_examples=100, deadline=None)
@given(item_sets, st.data())
def test_prefix_sum_fingerprint_equals_the_sum_over_the_range(
    items: list[Item], data: st.DataObject
) -> None:
    storage = Storage(items)
    lower = data.draw(st.integers(0, len(storage)))
    upper = data.draw(st.integers(lower, len(storage)))
    assert storage.fingerprint(lower, upper) == fingerprint(storage.ids(lower, upper))


@settings(max_examples=100, deadline=None)
@given(item_sets, bounds)
def test_find_lower_bound_agrees_with_a_scan(items: list[Item], bound: Bound) -> None:
    storage = Storage(items)
    ordered = sorted(set(items))
    expected = next((n for n, item in enumerate(ordered) if item >= bound.key), len(ordered))
    assert storage.find_lower_bound(bound, 0, len(storage)) == expected


def test_storage_refuses_bad_items() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Storage([(1, b"short")])
    with pytest.raises(ValueError, match="timestamp"):
        Storage([(INFINITY, bytes(32))])
    with pytest.raises(ValueError, match="timestamp"):
        Storage([(-1, bytes(32))])


def test_storage_holds_72_bytes_per_item() -> None:
    storage = Storage((n, n.to_bytes(32, "big")) for n in range(1000))
    assert storage.nbytes == 1000 * (8 + 32) + 1001 * 32


def exchange_bytes(client_items: list[Item], server_items: list[Item], limit: int) -> int:
    client = NegentropyClient(Storage(client_items), limit)
    server = NegentropyServer(Storage(server_items), limit)
    total = 0
    message: bytes | None = client.initiate()
    while message is not None:
        reply = server.answer(message)
        total += len(message) + len(reply)
        message, _, _ = client.reconcile(reply)
    return total


@pytest.mark.parametrize(
    ("diff", "limit", "bound"),
    [(60, 4096, 1.15), (600, 8192, 1.15), (600, 30_000, 1.15), (3000, 30_000, 1.4)],
)
def test_cuts_by_the_frame_limit_cost_few_bytes(diff: int, limit: int, bound: float) -> None:
    """Cut messages are resumed where they were cut, both ways (the initiator answers the
    rest of a reply in its next message; ranges the server left out are sent again as they
    were), rather than closed with a fingerprint that the other side splits from the top:
    the exchange finds exactly the difference in about the bytes it takes without a limit.
    (Closing fingerprints cost 1.2, 1.7, 1.45 and 1.9 times those bytes here.)"""
    rng = random.Random(diff + limit)
    shared = [(rng.randrange(100_000), rng.randbytes(32)) for _ in range(30_000)]
    client = shared + [(rng.randrange(100_000), rng.randbytes(32)) for _ in range(diff)]
    server = shared + [(rng.randrange(100_000), rng.randbytes(32)) for _ in range(diff)]
    assert assert_finds_difference(client, server, limit) > 3
    assert exchange_bytes(client, server, limit) < bound * exchange_bytes(client, server, 0)
