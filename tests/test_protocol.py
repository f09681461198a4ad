"""NIP-01 against the running relay, through a real WebSocket client."""

from __future__ import annotations

import time

import pytest

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.nostr import Client, Keys, SubscriptionClosed


async def test_every_event_gets_one_ok_with_its_id(client: Client, keys: Keys) -> None:
    events = [keys.sign(content=str(n)) for n in range(20)]
    for event in events:
        await client.send(["EVENT", event])
    oks = [await client.recv() for _ in events]
    assert sorted(ok[1] for ok in oks) == sorted(e["id"] for e in events)
    assert all(ok[0] == "OK" and ok[2] is True for ok in oks)
    await client.expect_silence()


async def test_duplicate_is_acknowledged_and_not_broadcast_again(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    listener = await Client.connect(url_of(relay))
    assert await listener.req("live", {"authors": [keys.pubkey]}) == []
    event = keys.sign()
    assert (await client.publish(event))[2] is True
    assert await listener.recv() == ["EVENT", "live", event]
    ok = await client.publish(event)
    assert ok[2] is True
    assert ok[3].startswith("duplicate: ")
    await listener.expect_silence()
    await listener.close()


@pytest.mark.parametrize(
    ("mutate", "reason_start"),
    [
        (lambda e: e.update(content="changed"), "invalid: "),
        (
            lambda e: e.update(sig=e["sig"][:-2] + ("00" if e["sig"][-2:] != "00" else "11")),
            "invalid: bad signature",
        ),
        (lambda e: e.update(kind=True), "invalid: "),
        (lambda e: e.update(created_at=1.5), "invalid: "),
        (lambda e: e.update(tags=[["p", 1]]), "invalid: "),
        (lambda e: e.pop("sig"), "invalid: "),
        (lambda e: e.update(pubkey=e["pubkey"].upper()), "invalid: "),
    ],
)
async def test_invalid_events_are_refused_with_their_id(
    client: Client, keys: Keys, mutate: object, reason_start: str
) -> None:
    event = keys.sign()
    mutate(event)  # type: ignore[operator]
    ok = await client.publish(event)
    assert ok[2] is False
    assert ok[3].startswith(reason_start)
    assert await client.req("check", {"ids": [event["id"]]}) == []


async def test_signature_from_another_key_is_refused(client: Client, keys: Keys) -> None:
    event = keys.sign()
    forged = Keys().sign(content=event["content"], created_at=event["created_at"])
    event["sig"] = forged["sig"]
    ok = await client.publish(event)
    assert ok == ["OK", event["id"], False, "invalid: bad signature"]


async def test_created_at_window(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(created_at_lower_limit=3600, created_at_upper_limit=60)
    client = await Client.connect(url_of(relay))
    now = int(time.time())
    too_new = keys.sign(created_at=now + 120)
    too_old = keys.sign(created_at=now - 7200)
    fine = keys.sign(created_at=now - 1800)
    assert (await client.publish(too_new))[2:] == [
        False,
        "invalid: created_at is too far in the future",
    ]
    assert (await client.publish(too_old))[2:] == [
        False,
        "invalid: created_at is too far in the past",
    ]
    assert (await client.publish(fine))[2] is True
    await client.close()


async def test_results_newest_first_ties_by_id(client: Client, keys: Keys) -> None:
    base = int(time.time()) - 100
    events = [keys.sign(content=f"n{i}", created_at=base + i % 3) for i in range(9)]
    for event in events:
        await client.publish(event)
    got = await client.req("s", {"authors": [keys.pubkey]})
    expected = sorted(events, key=lambda e: (-e["created_at"], e["id"]))
    assert [e["id"] for e in got] == [e["id"] for e in expected]


async def test_filter_fields(client: Client, keys: Keys) -> None:
    other = Keys()
    now = int(time.time())
    note = keys.sign(kind=1, tags=[["e", "a" * 64], ["t", "nostr"]], created_at=now - 50)
    reaction = keys.sign(kind=7, tags=[["p", other.pubkey]], created_at=now - 40)
    others = other.sign(kind=1, tags=[["t", "python"]], created_at=now - 30)
    for event in (note, reaction, others):
        await client.publish(event)

    async def ids(*filters: dict[str, object]) -> set[str]:
        return {e["id"] for e in await client.req("q", *filters)}

    assert await ids({"ids": [note["id"]]}) == {note["id"]}
    assert await ids({"authors": [other.pubkey]}) == {others["id"]}
    assert await ids({"kinds": [7]}) == {reaction["id"]}
    assert await ids({"#e": ["a" * 64]}) == {note["id"]}
    assert await ids({"#p": [other.pubkey], "kinds": [7]}) == {reaction["id"]}
    assert await ids({"#t": ["nostr", "python"]}) == {note["id"], others["id"]}
    assert await ids({"since": now - 40, "until": now - 30}) == {reaction["id"], others["id"]}
    assert await ids({"kinds": [1], "authors": [keys.pubkey]}, {"kinds": [7]}) == {
        note["id"],
        reaction["id"],
    }
    assert await ids({"#t": ["nostr"], "kinds": [7]}) == set()
    assert await ids({"ids": []}) == set()


async def test_limit_is_per_filter_and_zero_means_live_only(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    base = int(time.time()) - 100
    events = [keys.sign(content=str(i), created_at=base + i) for i in range(5)]
    for event in events:
        await client.publish(event)
    newest_two = await client.req("a", {"authors": [keys.pubkey], "limit": 2})
    assert [e["id"] for e in newest_two] == [events[4]["id"], events[3]["id"]]
    await client.send(["CLOSE", "a"])
    assert await client.req("b", {"authors": [keys.pubkey], "limit": 0}) == []
    publisher = await Client.connect(url_of(relay))
    live = keys.sign(content="live")
    await publisher.publish(live)
    assert await client.recv() == ["EVENT", "b", live]
    await publisher.close()


async def test_limit_is_clamped_to_max_limit(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(max_limit=3, default_limit=2)
    client = await Client.connect(url_of(relay))
    base = int(time.time()) - 100
    for i in range(6):
        await client.publish(keys.sign(content=str(i), created_at=base + i))
    assert len(await client.req("a", {"limit": 100})) == 3
    assert len(await client.req("b", {})) == 2
    await client.close()


async def test_limits_and_ids_are_met_over_several_pages(
    start_relay: RelayFactory, keys: Keys
) -> None:
    """A query stops once every filter has sent all it may (its limit, its ids): pages of
    2 events never end one early, overlapping filters included."""
    relay = await start_relay(query_page_events=2)
    client = await Client.connect(url_of(relay))
    base = int(time.time()) - 100
    events = [keys.sign(content=str(i), created_at=base + i) for i in range(7)]
    for event in events:
        await client.publish(event)
    newest_first = events[::-1]
    assert await client.req("a", {"limit": 5}) == newest_first[:5]
    ids = [e["id"] for e in events[:3]]
    assert await client.req("b", {"ids": ids, "limit": 10}) == newest_first[4:]
    assert await client.req("c", {"limit": 5}, {"ids": ids}) == newest_first
    await client.close()


async def test_live_events_until_close(relay: RelayServer, client: Client, keys: Keys) -> None:
    publisher = await Client.connect(url_of(relay))
    assert await client.req("sub", {"kinds": [1]}) == []
    first = keys.sign(content="one")
    await publisher.publish(first)
    assert await client.recv() == ["EVENT", "sub", first]
    unrelated = keys.sign(kind=7)
    await publisher.publish(unrelated)
    await client.send(["CLOSE", "sub"])
    await client.expect_silence()
    await publisher.publish(keys.sign(content="two"))
    await client.expect_silence()
    await publisher.close()


async def test_req_with_same_id_replaces_subscription(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    publisher = await Client.connect(url_of(relay))
    await client.req("sub", {"kinds": [1]})
    await client.req("sub", {"kinds": [7]})
    await publisher.publish(keys.sign(kind=1))
    reaction = keys.sign(kind=7)
    await publisher.publish(reaction)
    assert await client.recv() == ["EVENT", "sub", reaction]
    await client.expect_silence()
    await publisher.close()


async def test_subscriptions_are_per_connection(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    other = await Client.connect(url_of(relay))
    await client.req("same", {"kinds": [1]})
    await other.req("same", {"kinds": [7]})
    await other.send(["CLOSE", "same"])
    event = keys.sign(kind=1)
    await other.publish(event)
    assert await client.recv() == ["EVENT", "same", event]
    await other.expect_silence()
    await other.close()


async def test_ephemeral_events_are_broadcast_not_stored(
    relay: RelayServer, client: Client, keys: Keys
) -> None:
    listener = await Client.connect(url_of(relay))
    await listener.req("eph", {"kinds": [20001]})
    event = keys.sign(kind=20001)
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    assert await listener.recv() == ["EVENT", "eph", event]
    assert await client.req("again", {"kinds": [20001]}) == []
    await listener.close()


@pytest.mark.parametrize(("kind", "d"), [(0, None), (3, None), (10002, None), (30023, "post")])
async def test_replaceable_keeps_newest(
    client: Client, keys: Keys, kind: int, d: str | None
) -> None:
    tags = [["d", d]] if d is not None else []
    now = int(time.time())
    old = keys.sign(kind=kind, content="old", tags=tags, created_at=now - 10)
    new = keys.sign(kind=kind, content="new", tags=tags, created_at=now - 5)
    assert (await client.publish(old))[2] is True
    assert (await client.publish(new))[2] is True
    assert await client.req("r", {"kinds": [kind], "authors": [keys.pubkey]}) == [new]
    late = await client.publish(old)
    assert late[2] is False
    assert late[3].startswith("duplicate: ")
    assert await client.req("r2", {"kinds": [kind], "authors": [keys.pubkey]}) == [new]


async def test_replaceable_tie_keeps_lowest_id(client: Client, keys: Keys) -> None:
    now = int(time.time())
    a = keys.sign(kind=0, content="a", created_at=now)
    b = keys.sign(kind=0, content="b", created_at=now)
    low, high = sorted((a, b), key=lambda e: e["id"])
    await client.publish(high)
    await client.publish(low)
    assert await client.req("r", {"kinds": [0], "authors": [keys.pubkey]}) == [low]
    assert (await client.publish(high))[2] is False
    assert await client.req("r2", {"kinds": [0], "authors": [keys.pubkey]}) == [low]


async def test_addressable_versions_are_keyed_by_d_tag(client: Client, keys: Keys) -> None:
    first = keys.sign(kind=30000, tags=[["d", "one"]])
    second = keys.sign(kind=30000, tags=[["d", "two"]])
    no_d = keys.sign(kind=30000)
    for event in (first, second, no_d):
        assert (await client.publish(event))[2] is True
    stored = await client.req("a", {"kinds": [30000]})
    assert {e["id"] for e in stored} == {first["id"], second["id"], no_d["id"]}
    replacement = keys.sign(kind=30000, tags=[["d", "one"]], created_at=first["created_at"] + 1)
    await client.publish(replacement)
    stored = await client.req("b", {"kinds": [30000], "#d": ["one"]})
    assert stored == [replacement]


async def test_refused_req_gets_closed(start_relay: RelayFactory) -> None:
    relay = await start_relay(max_subscriptions=2)
    client = await Client.connect(url_of(relay))
    await client.req("a", {})
    await client.req("b", {})
    with pytest.raises(SubscriptionClosed, match=r"^restricted: "):
        await client.req("c", {})
    await client.send(["CLOSE", "a"])
    assert await client.req("c", {}) == []
    with pytest.raises(SubscriptionClosed, match=r"^invalid: "):
        await client.req("bad", {"ids": ["xyz"]})
    await client.close()
