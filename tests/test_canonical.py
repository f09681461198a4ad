"""NIP-01 canonical serialization and event ids, against bytes written out by hand."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from relay.core import canonical
from relay.core.event import parse_event

PK = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
SIG = "00" * 64

# Real events published by other clients, ids and signatures made elsewhere.
REAL_EVENTS: list[bytes] = [
    # kind 1, no tags.
    rb'{"id":"dc90c95f09947507c1044e8f48bcf6350aa6bff1507dd4acfc755b9239b5c962",'
    rb'"pubkey":"3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d",'
    rb'"created_at":1644271588,"kind":1,"tags":[],"content":"now that '
    rb"https://blueskyweb.org/blog/2-7-2022-overview was announced we can stop working on "
    rb'nostr?","sig":"230e9d8f0ddaf7eb70b5f7741ccfa37e87a455c9a469282e3464e2052d3192cd63a167e'
    rb'196e381ef9d7e69e9ea43af2443b839974dc85d8aaab9efe1d9296524"}',
    # kind 3, content is JSON: quotes must be escaped exactly.
    rb'{"id":"9e662bdd7d8abc40b5b15ee1ff5e9320efc87e9274d8d440c58e6eed2dddfbe2",'
    rb'"pubkey":"373ebe3d45ec91977296a178d9f19f326c70631d2a1b0bbba5c5ecc2eb53b9e7",'
    rb'"created_at":1644844224,"kind":3,"tags":['
    rb'["p","3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"],'
    rb'["p","75fc5ac2487363293bd27fb0d14fb966477d0f1dbc6361d37806a6a740eda91e"],'
    rb'["p","46d0dfd3a724a302ca9175163bdf788f3606b3fd1bb12d5fe055d1e418cb60ea"]],'
    rb'"content":"{\"wss://nostr-pub.wellorder.net\":{\"read\":true,\"write\":true},'
    rb"\"wss://nostr.bitcoiner.social\":{\"read\":false,\"write\":true},"
    rb"\"wss://expensive-relay.fiatjaf.com\":{\"read\":true,\"write\":true},"
    rb"\"wss://relayer.fiatjaf.com\":{\"read\":true,\"write\":true},"
    rb"\"wss://relay.bitid.nz\":{\"read\":true,\"write\":true},"
    rb'\"wss://nostr.rocks\":{\"read\":true,\"write\":true}}",'
    rb'"sig":"811355d3484d375df47581cb5d66bed05002c2978894098304f20b595e571b7e01b2efd906c565'
    rb'0080ffe49cf1c62b36715698e9d88b9e8be43029a2f3fa66be"}',
    # kind 1, tags with more than two elements, newlines in the content.
    rb'{"id":"f603166e0fdb6a0329e3998280ecad0e54d89f5f8bc20d1f259a41983aca9dfb",'
    rb'"pubkey":"3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d",'
    rb'"created_at":1711372078,"kind":1,"tags":[["client","gossip"],'
    rb'["p","fd5989ddfadd9e2af6ceb8b63942a9e31b37367e89917931ede3b2ea76823f10"],'
    rb'["e","7eb018629bcea71512ac83a8b5dab73fa0484c395eafeff797ace4ec463fee7f",'
    rb'"wss://nostr.wine/","root"],'
    rb'["e","ab1f4ebf1f75c7bdff65e95bbd068775b5623fedf9be1b0903cbc0b47e1d1c4d",'
    rb'"wss://nostr.mom/","reply"]],'
    rb'"content":"Damn, this is frightening.\n\nWhy are early 2000s articles flagged as AI?",'
    rb'"sig":"09c197c5159eeac3213fdadec5245501df617a23a5f9b581db22ee822a10f98509302a50335166b'
    rb'd24f672ec19c945e0048bedf25497e53161b80b9e67a1d941"}',
    # kind 1, non-ASCII and emoji sent as \u escapes (surrogate pairs) on the wire.
    rb'{"id": "cd720b23163210ebddec88bc4e74d83c9667cdf11b95d376865315c686ed34eb", '
    rb'"pubkey": "11d0b66747887ba9a6d34b23eb31287374b45b1a1b161eac54cb183c53e00ef7", '
    rb'"created_at": 1684947090, "kind": 1, "tags": [["e", '
    rb'"f9f30e37adffe3afe12fda2f8db4502ece334f261273a9a0be7e8adb29b35145"], ["p", '
    rb'"9eefd04d32ab5da8de12d7b83201578ea095a676acf3a692ec1b0b202ae4e16f"]], '
    rb'"content": "I' + b"'" + rb"ll take a large lill\u00f6rdag please.\n\n"
    rb"\ud83d\ude0e\ud83e\udd19\ud83d\udc47\ud83c\udf7b\n\nnostr:nevent1qqs0nucwx7kllca0uyha5tu"
    rb"dk3gzan3nfunpyuaf5zl8azkm9xe4z3gpzamhxue69uhhyetvv9ujumn0wd68ytnzv9hxgtczyz0wl5zdx244m2x"
    rb'7zttmsvsp2782p9dxw6k08f5jasdskgp2unsk7qcyqqqqqqgncdx20", '
    rb'"sig": "6c66e42dd481a0769148be33932a643672710f0ed83eeaaf4af5fe0f53e52b810a924ba2498354b8'
    rb'b00a54f065f4de0d92c42c70fdb39a2da67ac97baf4f9ae0"}',
]

# The id preimage of the last real event, written out: raw UTF-8, only \n escaped.
REAL_PREIMAGE = (
    '[0,"11d0b66747887ba9a6d34b23eb31287374b45b1a1b161eac54cb183c53e00ef7",1684947090,1,'
    '[["e","f9f30e37adffe3afe12fda2f8db4502ece334f261273a9a0be7e8adb29b35145"],'
    '["p","9eefd04d32ab5da8de12d7b83201578ea095a676acf3a692ec1b0b202ae4e16f"]],'
    "\"I'll take a large lill\u00f6rdag please.\\n\\n\U0001f60e\U0001f919\U0001f447\U0001f37b"
    "\\n\\nnostr:nevent1qqs0nucwx7kllca0uyha5tudk3gzan3nfunpyuaf5zl8azkm9xe4z3gpzamhxue69uhh"
    'yetvv9ujumn0wd68ytnzv9hxgtczyz0wl5zdx244m2x7zttmsvsp2782p9dxw6k08f5jasdskgp2unsk7qcyqqqqqqgncdx20"]'
).encode()
REAL_PREIMAGE_ID = "cd720b23163210ebddec88bc4e74d83c9667cdf11b95d376865315c686ed34eb"


def preimage(content_json: bytes, tags_json: bytes = b"[]") -> bytes:
    """The expected preimage for PK, created_at 1, kind 1, from hand-written JSON pieces."""
    return b'[0,"' + PK.encode() + b'",1,1,' + tags_json + b',"' + content_json + b'"]'


SHORT_ESCAPES = [
    ("\n", b"\\n"),
    ('"', b'\\"'),
    ("\\", b"\\\\"),
    ("\r", b"\\r"),
    ("\t", b"\\t"),
    ("\b", b"\\b"),
    ("\f", b"\\f"),
]

OTHER_CONTROLS = [
    ("\x00", b"\\u0000"),
    ("\x01", b"\\u0001"),
    ("\x02", b"\\u0002"),
    ("\x03", b"\\u0003"),
    ("\x04", b"\\u0004"),
    ("\x05", b"\\u0005"),
    ("\x06", b"\\u0006"),
    ("\x07", b"\\u0007"),
    ("\x0b", b"\\u000b"),
    ("\x0e", b"\\u000e"),
    ("\x0f", b"\\u000f"),
    ("\x10", b"\\u0010"),
    ("\x11", b"\\u0011"),
    ("\x12", b"\\u0012"),
    ("\x13", b"\\u0013"),
    ("\x14", b"\\u0014"),
    ("\x15", b"\\u0015"),
    ("\x16", b"\\u0016"),
    ("\x17", b"\\u0017"),
    ("\x18", b"\\u0018"),
    ("\x19", b"\\u0019"),
    ("\x1a", b"\\u001a"),
    ("\x1b", b"\\u001b"),
    ("\x1c", b"\\u001c"),
    ("\x1d", b"\\u001d"),
    ("\x1e", b"\\u001e"),
    ("\x1f", b"\\u001f"),
]

RAW_KEPT = [
    ("\x7f", b"\x7f"),
    ("\u00e9", b"\xc3\xa9"),
    ("\u4e2d", b"\xe4\xb8\xad"),
    ("\U0001f600", b"\xf0\x9f\x98\x80"),
    ("\u2028", b"\xe2\x80\xa8"),
    ("\u2029", b"\xe2\x80\xa9"),
    ("/", b"/"),
    ("<>&'", b"<>&'"),
    (" ", b" "),
]


def test_escape_tables_cover_every_control_character() -> None:
    covered = {char for char, _ in SHORT_ESCAPES + OTHER_CONTROLS}
    assert covered >= {chr(c) for c in range(0x20)}


@pytest.mark.parametrize(("char", "expected"), SHORT_ESCAPES + OTHER_CONTROLS + RAW_KEPT)
def test_content_character_serialization(char: str, expected: bytes) -> None:
    content = f"a{char}b"
    assert canonical.serialize(PK, 1, 1, [], content) == preimage(b"a" + expected + b"b")


@pytest.mark.parametrize(("char", "expected"), SHORT_ESCAPES + OTHER_CONTROLS + RAW_KEPT)
def test_tag_character_serialization(char: str, expected: bytes) -> None:
    tags = [["t", char]]
    expected_tags = b'[["t","' + expected + b'"]]'
    assert canonical.serialize(PK, 1, 1, tags, "") == preimage(b"", expected_tags)


@pytest.mark.parametrize(("char", "expected"), SHORT_ESCAPES + OTHER_CONTROLS + RAW_KEPT)
def test_event_id_is_sha256_of_literal_preimage(char: str, expected: bytes) -> None:
    digest = hashlib.sha256(preimage(b"x" + expected)).hexdigest()
    assert canonical.event_id(PK, 1, 1, [], "x" + char) == digest


def test_full_preimage_layout() -> None:
    tags = [["e", "abc", "wss://r.example/"], ["p", "def"], ["t"], []]
    got = canonical.serialize(PK, 1700000000, 30023, tags, 'he said "hi"\n')
    assert got == (
        b'[0,"' + PK.encode() + b'",1700000000,30023,'
        b'[["e","abc","wss://r.example/"],["p","def"],["t"],[]],'
        b'"he said \\"hi\\"\\n"]'
    )


def test_large_integers_serialize_exactly() -> None:
    got = canonical.serialize(PK, 2**63 - 1, 65535, [], "")
    assert got == b'[0,"' + PK.encode() + b'",9223372036854775807,65535,[],""]'


def test_known_real_preimage() -> None:
    assert hashlib.sha256(REAL_PREIMAGE).hexdigest() == REAL_PREIMAGE_ID
    obj = orjson.loads(REAL_EVENTS[3])
    got = canonical.serialize(
        obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"]
    )
    assert got == REAL_PREIMAGE
    assert canonical.event_id(
        obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"]
    ) == (REAL_PREIMAGE_ID)


@pytest.mark.parametrize("frame", REAL_EVENTS)
def test_real_events_ids(frame: bytes) -> None:
    obj = orjson.loads(frame)
    claimed = obj["id"]
    assert (
        canonical.event_id(
            obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"]
        )
        == claimed
    )
    assert parse_event(obj).id == claimed


@pytest.mark.parametrize("frame", REAL_EVENTS[:3])
def test_real_compact_events_reencode_byte_identical(frame: bytes) -> None:
    assert parse_event(orjson.loads(frame)).raw == frame


def wire_event(content_on_wire: bytes, canonical_content: bytes) -> bytes:
    """An event frame whose content is written `content_on_wire` in the JSON text, with the
    id computed by hashlib over the preimage holding `canonical_content`."""
    event_id = hashlib.sha256(preimage(canonical_content)).hexdigest()
    return (
        b'{"id":"' + event_id.encode() + b'","pubkey":"' + PK.encode() + b'",'
        b'"created_at":1,"kind":1,"tags":[],"content":"' + content_on_wire + b'",'
        b'"sig":"' + SIG.encode() + b'"}'
    )


WIRE_ESCAPES = [
    (b"\\u0041", b"A"),
    (b"\\/", b"/"),
    (b"\\u002F", b"/"),
    (b"\\u00e9", b"\xc3\xa9"),
    (b"\\u00E9", b"\xc3\xa9"),
    (b"\\ud83d\\ude00", b"\xf0\x9f\x98\x80"),
    (b"\\u2028", b"\xe2\x80\xa8"),
    (b"\\u007f", b"\x7f"),
    (b"\\u000A", b"\\n"),
    (b"\\u0022", b'\\"'),
    (b"\\u005c", b"\\\\"),
    (b"\\u001F", b"\\u001f"),
    (b"\\u0000", b"\\u0000"),
    (b"\x7f", b"\x7f"),
    (b"\xe2\x80\xa9", b"\xe2\x80\xa9"),
]


@pytest.mark.parametrize(("on_wire", "canonical_form"), WIRE_ESCAPES)
def test_escapes_on_the_wire_do_not_change_the_id(on_wire: bytes, canonical_form: bytes) -> None:
    frame = wire_event(b"<" + on_wire + b">", b"<" + canonical_form + b">")
    event = parse_event(canonical.loads(frame))
    expected_id = hashlib.sha256(preimage(b"<" + canonical_form + b">")).hexdigest()
    assert event.id == expected_id
    # What the relay stores and sends holds the canonical form, not the wire form.
    assert b'"content":"<' + canonical_form + b'>"' in event.raw


def test_dumps_is_compact_and_raw_utf8() -> None:
    assert canonical.dumps(["NOTICE", "caf\u00e9 \u2028", {"a": [1, True, None]}]) == (
        b'["NOTICE","caf\xc3\xa9 \xe2\x80\xa8",{"a":[1,true,null]}]'
    )


@pytest.mark.parametrize(
    "text",
    [b"[NaN]", b"[Infinity]", b'"\\ud800"', b'"\\udc00x"', b'"\xff"', b'"\xed\xa0\x80"', b"[1,]"],
)
def test_loads_refuses_invalid_json(text: bytes) -> None:
    with pytest.raises(canonical.JSONDecodeError):
        canonical.loads(text)


def test_lone_surrogate_cannot_be_serialized() -> None:
    with pytest.raises(TypeError):
        canonical.serialize(PK, 1, 1, [], "\ud800")
