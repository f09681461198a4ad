"""NIP-86 on PostgreSQL: the moderation state lives in the database, a ban erases the
stored rows (tags and search words with them), and every instance on the database
follows the changes made through any of them, also after its connection was lost."""

from __future__ import annotations

import asyncpg
import pytest
from coincurve import PrivateKey
from websockets.exceptions import ConnectionClosed

from relay.core.moderation import Change
from relay.net.server import RelayServer
from relay.store.pg_moderation import PostgresModeration
from tests.conftest import RelayFactory, url_of, wait_for
from tests.http_client import fetch_info
from tests.nostr import Client, Keys
from tests.test_nip86 import pubkey_of, publish, rpc, stored_ids


@pytest.fixture
def relay_backend() -> str:
    return "postgres"


async def count(url: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def pair(start_relay: RelayFactory, admin: PrivateKey) -> tuple[RelayServer, RelayServer]:
    """Two instances on one database, as behind one URL."""
    settings = {"admin_pubkeys": (pubkey_of(admin),), "search_enabled": True}
    return await start_relay(**settings), await start_relay(**settings)


async def test_a_ban_erases_the_rows_and_every_instance_applies_it(
    start_relay: RelayFactory,
) -> None:
    admin = PrivateKey()
    first, second = await pair(start_relay, admin)
    spammer, other = Keys(), Keys()
    spam = [spammer.sign(content=f"cheap pills {n}", tags=[["t", "pills"]]) for n in range(3)]
    kept = other.sign(content="cheap talk")
    for event in [*spam, kept]:
        assert (await publish(second, event))[2] is True
    url = first.settings.db
    by_spammer = "SELECT count(*) FROM events WHERE pubkey = $1"
    assert await count(url, by_spammer, bytes.fromhex(spammer.pubkey)) == 3

    assert await rpc(first, admin, "banpubkey", spammer.pubkey, "spam") is True

    # Erased in the database, tags and search words with the rows: no instance serves them.
    assert await count(url, by_spammer, bytes.fromhex(spammer.pubkey)) == 0
    assert await count(url, "SELECT count(*) FROM tags WHERE name = 't'") == 0
    for relay in (first, second):
        assert await stored_ids(relay, kinds=[1]) == [kept["id"]]
        assert await stored_ids(relay, search="cheap") == [kept["id"]]
    # The other instance hears of the ban and refuses the pubkey too.
    await wait_for(lambda: spammer.pubkey in second.moderation.banned_pubkeys)
    reply = await publish(second, spammer.sign(content="more"))
    assert reply[2] is False
    assert reply[3].startswith("blocked:")
    assert await rpc(second, admin, "listbannedpubkeys") == [
        {"pubkey": spammer.pubkey, "reason": "spam"}
    ]


async def test_banevent_and_allowevent_through_different_instances(
    start_relay: RelayFactory,
) -> None:
    admin = PrivateKey()
    first, second = await pair(start_relay, admin)
    event = Keys().sign(content="offending")
    assert (await publish(first, event))[2] is True
    assert await rpc(second, admin, "banevent", event["id"], "illegal") is True
    assert await stored_ids(first, ids=[event["id"]]) == []
    await wait_for(lambda: event["id"] in first.moderation.banned_events)
    assert (await publish(first, event))[3].startswith("blocked:")
    assert await rpc(first, admin, "allowevent", event["id"]) is True
    await wait_for(lambda: event["id"] not in second.moderation.banned_events)
    assert (await publish(second, event))[2] is True


async def test_renames_and_ip_blocks_reach_the_other_instance(start_relay: RelayFactory) -> None:
    admin = PrivateKey()
    first, second = await pair(start_relay, admin)
    watcher = await Client.connect(url_of(second))
    try:
        assert await rpc(first, admin, "changerelayname", "Shared name") is True
        await wait_for(lambda: second.moderation.info.get("name") == "Shared name")
        assert (await fetch_info(second))["name"] == "Shared name"
        assert await rpc(first, admin, "blockip", "127.0.0.1", "abuse") is True
        # The other instance drops the address's open connections as well.
        with pytest.raises(ConnectionClosed):
            await watcher.recv(timeout=5)
    finally:
        await watcher.close()


async def test_state_survives_a_restart_of_every_instance(start_relay: RelayFactory) -> None:
    admin = PrivateKey()
    first, second = await pair(start_relay, admin)
    banned = Keys()
    await rpc(first, admin, "banpubkey", banned.pubkey, "spam")
    await rpc(second, admin, "allowkind", 1)
    await first.stop()
    await second.stop()
    third = await start_relay(admin_pubkeys=(pubkey_of(admin),))
    assert await rpc(third, admin, "listbannedpubkeys") == [
        {"pubkey": banned.pubkey, "reason": "spam"}
    ]
    assert await rpc(third, admin, "listallowedkinds") == [1]
    assert (await publish(third, banned.sign()))[3].startswith("blocked:")


async def test_a_follower_reloads_what_changed_while_its_connection_was_down(
    start_relay: RelayFactory,
) -> None:
    relay = await start_relay()
    url = relay.settings.db
    follower = relay.moderation_store
    assert isinstance(follower, PostgresModeration)
    banned, heard = Keys().pubkey, Keys().pubkey
    # A change whose notification this instance missed: in the table, never announced.
    await count(
        url,
        "WITH r AS (INSERT INTO moderation VALUES ('banned_pubkeys', $1, 'while away')"
        " RETURNING 1) SELECT count(*) FROM r",
        banned,
    )
    # Cut the follower's connection: it reconnects and loads the table again.
    killed = await count(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        f"pyrelay-listen-moderation-{follower.instance}",
    )
    assert killed == 1
    await wait_for(lambda: banned in relay.moderation.banned_pubkeys, timeout=10)
    assert relay.moderation.banned_pubkeys[banned] == "while away"
    # And it listens again: a change made elsewhere afterwards arrives too.
    await PostgresModeration(url).apply(Change("banned_pubkeys", heard, "later"))
    await wait_for(lambda: heard in relay.moderation.banned_pubkeys, timeout=10)


async def test_an_instance_that_has_not_heard_of_a_ban_still_refuses_the_pubkey(
    start_relay: RelayFactory,
) -> None:
    """The database checks every save (postgres_v3.sql): the ban holds on an instance
    whose own state does not know it yet, here one that stopped listening."""
    admin = PrivateKey()
    first, second = await pair(start_relay, admin)
    follower = second.moderation_store
    assert isinstance(follower, PostgresModeration)
    await follower.close()
    spammer, other = Keys(), Keys()
    watcher = await Client.connect(url_of(first))
    try:
        await watcher.req("live", {"authors": [spammer.pubkey, other.pubkey]})
        assert await rpc(first, admin, "banpubkey", spammer.pubkey, "spam") is True
        assert spammer.pubkey not in second.moderation.banned_pubkeys
        reply = await publish(second, spammer.sign(content="more spam"))
        assert reply[2:] == [False, "blocked: this pubkey is banned here"]
        assert await stored_ids(second, authors=[spammer.pubkey]) == []
        # Live events arrive in commit order: the spam, had it been stored, came first.
        marker = other.sign(content="after the spam")
        assert (await publish(second, marker))[2] is True
        assert await watcher.recv() == ["EVENT", "live", marker]
    finally:
        await watcher.close()
