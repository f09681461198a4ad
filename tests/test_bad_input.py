"""Garbage from a client: every bad frame is answered, and the connection goes on.

A frame that names an event id is answered with `OK false`, one that names a subscription
with `CLOSED`, anything else with a `NOTICE`; all with NIP-01's `invalid:` or
`unsupported:` prefix (see relay/core/messages.py). The only frames that end a connection
are those RFC 6455 says must: text that is not UTF-8 (1007) and oversized frames (1009,
see test_limits.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of, wait_for
from tests.nostr import Client, Keys, SubscriptionClosed

AUTHOR = Keys()
BASE = AUTHOR.sign(content="base", created_at=int(time.time()))
MISSING = object()


async def assert_alive(client: Client) -> None:
    """The connection still publishes and queries after whatever came before."""
    keys = Keys()
    event = keys.sign(content=f"alive {secrets.token_hex(8)}")
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    assert await client.req("alive", {"authors": [keys.pubkey]}) == [event]
    await client.send(["CLOSE", "alive"])


async def send(client: Client, frame: Any) -> None:
    """A str is sent as it is, anything else as its JSON."""
    if isinstance(frame, str):
        await client.send_raw(frame)
    else:
        await client.send(frame)


def notice(text: str) -> list[Any]:
    return ["NOTICE", text]


NOT_JSON = notice("invalid: message is not valid JSON")
NOT_ARRAY = notice("invalid: message must be a non-empty JSON array")

UNATTRIBUTABLE = [
    pytest.param("hello", NOT_JSON, id="not-json"),
    pytest.param("", NOT_JSON, id="empty-frame"),
    pytest.param("   ", NOT_JSON, id="whitespace"),
    pytest.param('["EVENT",', NOT_JSON, id="truncated"),
    pytest.param('["CLOSE","a"] ["CLOSE","b"]', NOT_JSON, id="trailing-data"),
    pytest.param('["REQ","s",{"limit":NaN}]', NOT_JSON, id="nan"),
    pytest.param('["REQ","s",{"limit":1e400}]', NOT_JSON, id="number-overflows-double"),
    pytest.param('["CLOSE","\\ud800"]', NOT_JSON, id="lone-surrogate-escape"),
    pytest.param('{"0":"REQ"}', NOT_ARRAY, id="object"),
    pytest.param('"EVENT"', NOT_ARRAY, id="string"),
    pytest.param("42", NOT_ARRAY, id="number"),
    pytest.param("null", NOT_ARRAY, id="tag-null"),
    pytest.param("[]", NOT_ARRAY, id="empty-array"),
    pytest.param(["HELLO", 1], notice("invalid: unknown message type 'HELLO'"), id="unknown-verb"),
    pytest.param(["event", {}], notice("invalid: unknown message type 'event'"), id="lower-case"),
    pytest.param([123, "x"], notice("invalid: unknown message type '123'"), id="verb-number"),
    pytest.param([None], notice("invalid: unknown message type 'None'"), id="verb-null"),
    pytest.param(
        [["EVENT"], BASE], notice("invalid: unknown message type \"['EVENT']\""), id="verb-list"
    ),
    pytest.param(["EVENT"], notice("invalid: EVENT takes one event"), id="event-missing"),
    pytest.param(["EVENT", "x"], notice("invalid: event must be an object"), id="event-string"),
    pytest.param(["EVENT", [BASE]], notice("invalid: event must be an object"), id="event-list"),
    pytest.param(["EVENT", None], notice("invalid: event must be an object"), id="event-null"),
    pytest.param(["REQ"], notice("invalid: REQ needs a non-empty subscription id"), id="req-no-id"),
    pytest.param(
        ["REQ", 1, {}], notice("invalid: REQ needs a non-empty subscription id"), id="req-id-int"
    ),
    pytest.param(
        ["REQ", None, {}],
        notice("invalid: REQ needs a non-empty subscription id"),
        id="req-id-null",
    ),
    pytest.param(
        ["REQ", "", {}], notice("invalid: REQ needs a non-empty subscription id"), id="req-id-empty"
    ),
    pytest.param(["CLOSE"], notice("invalid: CLOSE takes one subscription id"), id="close-bare"),
    pytest.param(
        ["CLOSE", "a", "b"], notice("invalid: CLOSE takes one subscription id"), id="close-two"
    ),
    pytest.param(["CLOSE", 1], notice("invalid: CLOSE takes one subscription id"), id="close-int"),
    pytest.param(
        ["COUNT"], notice("invalid: COUNT needs a non-empty subscription id"), id="count-bare"
    ),
]


@pytest.mark.parametrize(("frame", "reply"), UNATTRIBUTABLE)
async def test_unattributable_garbage_gets_a_notice(
    client: Client, frame: Any, reply: list[Any]
) -> None:
    await send(client, frame)
    assert await client.recv() == reply
    await client.expect_silence(0.05)
    await assert_alive(client)


def mutated(changes: dict[str, Any]) -> dict[str, Any]:
    event = {**BASE, **changes}
    return {name: value for name, value in event.items() if value is not MISSING}


# (changes to a valid event, reason); the OK carries the id the event claims.
ATTRIBUTABLE_EVENTS = [
    pytest.param({"id": "z" * 64}, "invalid: id must be 64 lowercase hex characters", id="id-z"),
    pytest.param(
        {"id": BASE["id"].upper()},
        "invalid: id must be 64 lowercase hex characters",
        id="id-upper",
    ),
    pytest.param(
        {"id": BASE["id"][:63]}, "invalid: id must be 64 lowercase hex characters", id="id-short"
    ),
    pytest.param(
        {"pubkey": BASE["pubkey"][:62]},
        "invalid: pubkey must be 64 lowercase hex characters",
        id="pubkey-short",
    ),
    pytest.param({"pubkey": 7}, "invalid: pubkey must be a string", id="pubkey-int"),
    pytest.param(
        {"sig": BASE["sig"].upper()},
        "invalid: sig must be 128 lowercase hex characters",
        id="sig-upper",
    ),
    pytest.param(
        {"sig": BASE["sig"] + "00"},
        "invalid: sig must be 128 lowercase hex characters",
        id="sig-long",
    ),
    pytest.param({"sig": None}, "invalid: sig must be a string", id="sig-null"),
    pytest.param({"kind": -1}, "invalid: kind out of range", id="kind-negative"),
    pytest.param({"kind": 65536}, "invalid: kind out of range", id="kind-65536"),
    pytest.param({"kind": 2**64 - 1}, "invalid: kind out of range", id="kind-u64"),
    pytest.param({"kind": 1.0}, "invalid: kind must be an integer", id="kind-float"),
    pytest.param({"kind": "1"}, "invalid: kind must be an integer", id="kind-string"),
    pytest.param({"kind": MISSING}, "invalid: kind must be an integer", id="kind-missing"),
    pytest.param(
        {"created_at": "1700000000"}, "invalid: created_at must be an integer", id="ts-str"
    ),
    pytest.param({"created_at": True}, "invalid: created_at must be an integer", id="ts-bool"),
    pytest.param({"created_at": None}, "invalid: created_at must be an integer", id="ts-null"),
    pytest.param({"created_at": -1}, "invalid: created_at out of range", id="ts-negative"),
    pytest.param({"created_at": 2**64 - 1}, "invalid: created_at out of range", id="ts-u64"),
    pytest.param({"tags": "e"}, "invalid: tags must be an array", id="tags-string"),
    pytest.param({"tags": {"e": "x"}}, "invalid: tags must be an array", id="tags-object"),
    pytest.param({"tags": MISSING}, "invalid: tags must be an array", id="tags-missing"),
    pytest.param(
        {"tags": ["e", "x"]}, "invalid: each tag must be an array of strings", id="tags-flat"
    ),
    pytest.param(
        {"tags": [[["e"]]]}, "invalid: each tag must be an array of strings", id="tags-nested"
    ),
    pytest.param(
        {"tags": [[None]]}, "invalid: each tag must be an array of strings", id="tag-null"
    ),
    pytest.param(
        {"tags": [["e", 1.5]]}, "invalid: each tag must be an array of strings", id="tag-float"
    ),
    pytest.param({"content": 1}, "invalid: content must be a string", id="content-int"),
    pytest.param({"content": ["x"]}, "invalid: content must be a string", id="content-list"),
    pytest.param({"content": MISSING}, "invalid: content must be a string", id="content-missing"),
    pytest.param(
        {"extra": "field", "id": "0" * 64},
        "invalid: event id does not match its content",
        id="zero-id",
    ),
]


@pytest.mark.parametrize(("changes", "reason"), ATTRIBUTABLE_EVENTS)
async def test_bad_event_gets_ok_false_with_its_claimed_id(
    client: Client, changes: dict[str, Any], reason: str
) -> None:
    event = mutated(changes)
    await client.send(["EVENT", event])
    assert await client.recv() == ["OK", event["id"], False, reason]
    await client.expect_silence(0.05)
    await assert_alive(client)
    assert await client.req("check", {"authors": [AUTHOR.pubkey]}) == []


@pytest.mark.parametrize(
    ("claimed", "reason"),
    [
        pytest.param(MISSING, "invalid: id must be a string", id="missing"),
        pytest.param(1, "invalid: id must be a string", id="int"),
        pytest.param(None, "invalid: id must be a string", id="null"),
        pytest.param("", "invalid: id must be 64 lowercase hex characters", id="empty"),
        pytest.param(
            BASE["id"] + "0", "invalid: id must be 64 lowercase hex characters", id="65-chars"
        ),
    ],
)
async def test_bad_event_without_a_usable_id_gets_a_notice(
    client: Client, claimed: Any, reason: str
) -> None:
    await client.send(["EVENT", mutated({"id": claimed})])
    assert await client.recv() == notice(reason)
    await client.expect_silence(0.05)
    await assert_alive(client)


async def test_event_with_extra_elements_is_refused(client: Client) -> None:
    await client.send(["EVENT", BASE, "extra"])
    assert await client.recv() == ["OK", BASE["id"], False, "invalid: EVENT takes one event"]
    await assert_alive(client)
    assert await client.req("check", {"ids": [BASE["id"]]}) == []


def closed(sub_id: str, reason: str) -> list[Any]:
    return ["CLOSED", sub_id, reason]


BAD_REQS = [
    pytest.param(["REQ", "s"], "invalid: REQ needs at least one filter", id="no-filter"),
    pytest.param(["REQ", "s", 1], "invalid: a filter must be an object", id="filter-int"),
    pytest.param(["REQ", "s", []], "invalid: a filter must be an object", id="filter-list"),
    pytest.param(["REQ", "s", None], "invalid: a filter must be an object", id="filter-null"),
    pytest.param(["REQ", "s", {}, "x"], "invalid: a filter must be an object", id="second-bad"),
    pytest.param(["REQ", "s", {"kinds": "1"}], "invalid: kinds must be an array", id="kinds-str"),
    pytest.param(
        ["REQ", "s", {"kinds": [-1]}],
        "invalid: kinds must hold integers from 0 to 65535",
        id="kinds-negative",
    ),
    pytest.param(
        ["REQ", "s", {"kinds": [True]}],
        "invalid: kinds must hold integers from 0 to 65535",
        id="kinds-bool",
    ),
    pytest.param(
        ["REQ", "s", {"kinds": [1.5]}],
        "invalid: kinds must hold integers from 0 to 65535",
        id="kinds-float",
    ),
    pytest.param(
        ["REQ", "s", {"limit": -1}], "invalid: limit must be a non-negative integer", id="limit-neg"
    ),
    pytest.param(
        ["REQ", "s", {"limit": "10"}],
        "invalid: limit must be a non-negative integer",
        id="limit-str",
    ),
    pytest.param(
        '["REQ","s",{"limit":99999999999999999999999}]',
        "invalid: limit must be a non-negative integer",
        id="limit-huge",
    ),
    pytest.param(
        ["REQ", "s", {"since": 1.5}],
        "invalid: since must be a non-negative integer",
        id="since-float",
    ),
    pytest.param(
        ["REQ", "s", {"until": "now"}],
        "invalid: until must be a non-negative integer",
        id="until-str",
    ),
    pytest.param(["REQ", "s", {"ids": "ab"}], "invalid: ids must be an array", id="ids-str"),
    pytest.param(["REQ", "s", {"ids": [123]}], "invalid: ids must hold strings", id="ids-int"),
    pytest.param(
        ["REQ", "s", {"ids": ["abc"]}],
        "invalid: ids must hold 64 lowercase hex characters",
        id="ids-prefix",
    ),
    pytest.param(
        ["REQ", "s", {"authors": [AUTHOR.pubkey.upper()]}],
        "invalid: authors must hold 64 lowercase hex characters",
        id="authors-upper",
    ),
    pytest.param(["REQ", "s", {"#e": "x"}], "invalid: #e must be an array", id="tag-str"),
    pytest.param(["REQ", "s", {"#e": [1]}], "invalid: #e must hold strings", id="tag-int"),
    pytest.param(
        ["REQ", "s", {"#ee": ["x"]}],
        "invalid: #ee: only single-letter tags can be filtered",
        id="tag-long-name",
    ),
    pytest.param(
        ["REQ", "s", {"#": ["x"]}],
        "invalid: #: only single-letter tags can be filtered",
        id="tag-no-name",
    ),
    pytest.param(
        ["REQ", "s", {"search": ["nostr"]}],
        "invalid: search must be a string",
        id="search",
    ),
    pytest.param(
        ["REQ", "s", {"kinds": [[[[[[[[1]]]]]]]]}],
        "invalid: kinds must hold integers from 0 to 65535",
        id="nested",
    ),
    pytest.param(["COUNT", "s", {"kinds": "x"}], "invalid: kinds must be an array", id="count"),
]


@pytest.mark.parametrize(("frame", "reason"), BAD_REQS)
async def test_bad_req_gets_closed(client: Client, frame: Any, reason: str) -> None:
    await send(client, frame)
    assert await client.recv() == closed("s", reason)
    await client.expect_silence(0.05)
    await assert_alive(client)
    # The refused subscription id is free to use.
    assert await client.req("s", {"ids": [BASE["id"]]}) == []


async def test_unknown_filter_fields_are_ignored(client: Client, keys: Keys) -> None:
    event = keys.sign()
    await client.publish(event)
    assert await client.req(
        "s", {"authors": [keys.pubkey], "foo": {"bar": [1, None]}, "ids_": 3, "Kinds": "x"}
    ) == [event]


async def test_close_of_unknown_subscription_is_harmless(client: Client) -> None:
    await client.send(["CLOSE", "never-opened"])
    await client.send(["CLOSE", "x" * 1000])
    await client.expect_silence(0.2)
    await assert_alive(client)


async def test_bad_replacement_req_closes_the_subscription(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    assert await client.req("s", {"kinds": [1]}) == []
    with pytest.raises(SubscriptionClosed, match=r"^invalid: "):
        await client.req("s", {"kinds": "1"})
    publisher = await Client.connect(url_of(relay))
    await publisher.publish(keys.sign(kind=1))
    await publisher.close()
    await client.expect_silence()


async def test_binary_frames_get_a_notice(client: Client) -> None:
    for frame in (b'["REQ","s",{}]', b"\x00\xff\xfe", b""):
        await client.send_raw(frame)
        assert await client.recv() == notice(
            "invalid: binary frames are not supported, send JSON as text"
        )
    await assert_alive(client)


async def test_deeply_nested_json_within_the_size_limit(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_message_length=256 * 1024)
    client = await Client.connect(url_of(relay))
    depth = 100_000
    frame = "[" * depth + "]" * depth
    assert len(frame) <= relay.settings.max_message_length
    await client.send_raw(frame)
    assert await client.recv() == NOT_JSON
    # Nested inside an otherwise well-formed REQ, too.
    await client.send_raw('["REQ","s",{"kinds":' + "[" * depth + "]" * depth + "}]")
    assert await client.recv() == NOT_JSON
    await assert_alive(client)
    await client.close()


async def test_invalid_utf8_closes_only_that_connection(relay: RelayServer, keys: Keys) -> None:
    bystander = await Client.connect(url_of(relay))
    assert await bystander.req("live", {"authors": [keys.pubkey]}) == []
    client = await Client.connect(url_of(relay))
    assert await client.req("mine", {"kinds": [1]}) == []
    assert len(relay.subscriptions) == 2
    # Not UTF-8, sent as a text frame: RFC 6455 8.1 makes the relay fail the connection.
    await client.ws.send(b'["REQ","s",{"#t":["\xff\xfe"]}]', text=True)
    with pytest.raises(ConnectionClosed) as failed:
        await client.recv()
    assert failed.value.rcvd is not None
    assert failed.value.rcvd.code == 1007
    # Its subscription goes with it.
    await wait_for(lambda: len(relay.subscriptions) == 1 and len(relay.connections) == 1)
    # The relay and its other connections go on.
    publisher = await Client.connect(url_of(relay))
    event = keys.sign(content="after bad utf-8")
    assert (await publisher.publish(event))[2] is True
    assert await bystander.recv() == ["EVENT", "live", event]
    await assert_alive(publisher)
    await publisher.close()
    await bystander.close()


async def test_garbage_on_one_connection_does_not_disturb_another(
    relay: RelayServer, keys: Keys
) -> None:
    bystander = await Client.connect(url_of(relay))
    assert await bystander.req("live", {"authors": [keys.pubkey]}) == []
    noisy = await Client.connect(url_of(relay))
    frames: list[Any] = []
    for n in range(100):
        frames += [
            f"garbage {n}",
            ["EVENT", mutated({"kind": -n - 1})],
            ["REQ", f"bad{n}", {"kinds": "x"}],
            ["CLOSE"],
            ["REQ", "", {}],
        ]
    for frame in frames:
        await send(noisy, frame)
    replies = [await noisy.recv() for _ in frames]
    assert sorted({reply[0] for reply in replies}) == ["CLOSED", "NOTICE", "OK"]
    assert all(reply[0] != "OK" or reply[2] is False for reply in replies)
    await bystander.expect_silence(0.1)

    # The noisy connection itself still works, and the bystander's subscription too.
    event = keys.sign(content="through the noise")
    assert await noisy.publish(event) == ["OK", event["id"], True, ""]
    assert await bystander.recv() == ["EVENT", "live", event]
    await bystander.expect_silence(0.1)
    await noisy.close()
    await bystander.close()


async def test_reply_frames_are_valid_json(client: Client) -> None:
    """The refusal echoes what the client sent: it must still be well-formed JSON."""
    odd_id = '\u2028"\\\n\x00\U0001f600'
    await client.send(["REQ", odd_id, {"kinds": "x"}])
    frame = await client.ws.recv()
    if orjson.loads(frame)[0] == "AUTH":  # the NIP-42 challenge sent on connect
        frame = await client.ws.recv()
    assert orjson.loads(frame) == ["CLOSED", odd_id, "invalid: kinds must be an array"]
    await assert_alive(client)
