"""Access lists, write-policy callables and the strfry-compatible plugin process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from relay.config import ConfigError
from relay.core.access import AccessLists
from relay.core.errors import Blocked, Restricted
from relay.core.event import parse_event
from relay.core.write_policy import Action, Decision, Source, reject
from tests.conftest import RelayFactory, url_of
from tests.nostr import Client, Keys

PLUGIN = Path(__file__).parent / "plugins" / "strfry_plugin.py"
PLUGIN_COMMAND = f"{sys.executable} {PLUGIN}"


# --- sans-I/O ------------------------------------------------------------------------------


def test_access_lists() -> None:
    alice, bob = Keys(), Keys()
    lists = AccessLists(
        pubkey_allow=frozenset({alice.pubkey}), kind_deny=frozenset({4}), kind_allow=frozenset()
    )
    lists.check(parse_event(alice.sign(kind=1)))
    with pytest.raises(Restricted):
        lists.check(parse_event(bob.sign(kind=1)))
    with pytest.raises(Blocked):
        lists.check(parse_event(alice.sign(kind=4)))
    deny = AccessLists(pubkey_deny=frozenset({alice.pubkey}), kind_allow=frozenset({1}))
    with pytest.raises(Blocked):
        deny.check(parse_event(alice.sign(kind=1)))
    deny.check(parse_event(bob.sign(kind=1)))
    with pytest.raises(Restricted):
        deny.check(parse_event(bob.sign(kind=7)))


def test_reject_reasons_get_a_prefix_unless_they_have_one() -> None:
    assert reject("no thanks").ok_reason == "blocked: no thanks"
    assert reject("pow: more work").ok_reason == "pow: more work"
    assert reject("").ok_reason == "blocked: rejected by the relay's write policy"
    assert Decision(Action.REJECT, "http://x: y").ok_reason == "blocked: http://x: y"


def test_source_type() -> None:
    assert Source("127.0.0.1", 0).source_type == "IP4"
    assert Source("::1", 0).source_type == "IP6"


# --- access lists on the running relay ----------------------------------------------------


async def test_pubkey_and_kind_lists(start_relay: RelayFactory) -> None:
    allowed, denied, stranger = Keys(), Keys(), Keys()
    relay = await start_relay(
        pubkey_allowlist=(allowed.pubkey, denied.pubkey),
        pubkey_denylist=(denied.pubkey,),
        kind_denylist=(4,),
    )
    client = await Client.connect(url_of(relay))
    ok = allowed.sign(kind=1)
    assert await client.publish(ok) == ["OK", ok["id"], True, ""]
    for event, reason in (
        (denied.sign(), "blocked: this pubkey may not publish here"),
        (stranger.sign(), "restricted: only listed pubkeys may publish here"),
        (allowed.sign(kind=4), "blocked: kind 4 is not accepted here"),
    ):
        assert await client.publish(event) == ["OK", event["id"], False, reason]
    await client.close()


async def test_kind_allowlist(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(kind_allowlist=(1, 7))
    client = await Client.connect(url_of(relay))
    assert (await client.publish(keys.sign(kind=7)))[2] is True
    event = keys.sign(kind=30023, tags=[["d", "x"]])
    assert (await client.publish(event))[3] == "restricted: kind 30023 is not accepted here"
    await client.close()


# --- Python callables ----------------------------------------------------------------------


async def test_policy_callables(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(write_policies=("tests.policies:broken", "tests.policies:no_spam"))
    client = await Client.connect(url_of(relay))
    watcher = await Client.connect(url_of(relay))
    assert await watcher.req("live", {"authors": [keys.pubkey]}) == []

    fine = keys.sign(content="fine")
    assert await client.publish(fine) == ["OK", fine["id"], True, ""]
    assert await watcher.recv() == ["EVENT", "live", fine]
    for content, reason in (
        ("spam", "blocked: no spam here"),
        ("rate", "rate-limited: a prefix of the policy's own"),
        ("where from", "blocked: IP4 127.0.0.1"),
        ("break", "error: the relay's write policy failed on this event"),
    ):
        event = keys.sign(content=content)
        assert await client.publish(event) == ["OK", event["id"], False, reason]

    shadowed = keys.sign(content="shadow")
    assert await client.publish(shadowed) == ["OK", shadowed["id"], True, ""]
    # Neither broadcast nor stored.
    await watcher.expect_silence()
    assert await client.req("check", {"ids": [shadowed["id"]]}) == []
    await client.close()
    await watcher.close()


async def test_a_policy_that_cannot_be_imported_stops_the_start(start_relay: RelayFactory) -> None:
    with pytest.raises(ConfigError, match="no_such_module"):
        await start_relay(write_policies=("tests.no_such_module:policy",))
    with pytest.raises(ConfigError, match="no_such_function"):
        await start_relay(write_policies=("tests.policies:no_such_function",))
    with pytest.raises(ConfigError, match="not callable"):
        await start_relay(write_policies=("tests.policies:__doc__",))


# --- the plugin process --------------------------------------------------------------------


async def test_plugin_decisions(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(write_policy_plugin=PLUGIN_COMMAND)
    client = await Client.connect(url_of(relay))
    watcher = await Client.connect(url_of(relay))
    assert await watcher.req("live", {"authors": [keys.pubkey]}) == []
    accepted = keys.sign(content="anything")
    assert await client.publish(accepted) == ["OK", accepted["id"], True, ""]
    assert await watcher.recv() == ["EVENT", "live", accepted]

    rejected = keys.sign(content="reject")
    assert await client.publish(rejected) == [
        "OK",
        rejected["id"],
        False,
        "blocked: not on the list",
    ]
    echo = keys.sign(content="echo")
    assert (await client.publish(echo))[3] == "blocked: new IP4 127.0.0.1 int"

    shadowed = keys.sign(content="shadow")
    assert await client.publish(shadowed) == ["OK", shadowed["id"], True, ""]
    await watcher.expect_silence()
    assert await client.req("check", {"ids": [shadowed["id"], rejected["id"]]}) == []
    await client.close()
    await watcher.close()


@pytest.mark.parametrize("failure", ["crash", "hang", "garbage", "wrong id", "unknown action"])
async def test_a_failing_plugin_does_not_wedge_the_relay(
    start_relay: RelayFactory, keys: Keys, failure: str
) -> None:
    relay = await start_relay(write_policy_plugin=PLUGIN_COMMAND, plugin_timeout=0.5)
    client = await Client.connect(url_of(relay))
    assert (await client.publish(keys.sign(content="before")))[2] is True
    bad = keys.sign(content=failure)
    assert await client.publish(bad) == [
        "OK",
        bad["id"],
        False,
        "error: the relay's write policy failed on this event",
    ]
    assert await client.req("check", {"ids": [bad["id"]]}) == []
    # A fresh plugin answers the next event.
    after = keys.sign(content="after")
    assert await client.publish(after) == ["OK", after["id"], True, ""]
    assert relay.write_policy.plugin is not None
    assert relay.write_policy.plugin.restarts == 1
    await client.close()


async def test_plugin_fallback_accept(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(
        write_policy_plugin=PLUGIN_COMMAND, plugin_timeout=0.5, plugin_fallback="accept"
    )
    client = await Client.connect(url_of(relay))
    crash = keys.sign(content="crash")
    assert await client.publish(crash) == ["OK", crash["id"], True, ""]
    assert await client.req("check", {"ids": [crash["id"]]}) != []
    await client.close()


async def test_hung_plugin_holds_up_neither_reads_nor_shutdown(
    start_relay: RelayFactory, keys: Keys
) -> None:
    relay = await start_relay(write_policy_plugin=PLUGIN_COMMAND, plugin_timeout=600)
    publisher = await Client.connect(url_of(relay))
    hang = keys.sign(content="hang")
    await publisher.send(["EVENT", hang])
    reader = await Client.connect(url_of(relay))
    assert await reader.req("s", {"kinds": [1]}) == []
    await publisher.expect_silence()  # still waiting on the plugin
    # Stopping kills the plugin; the event it held gets its answer.
    await relay.stop()
    assert await publisher.recv() == [
        "OK",
        hang["id"],
        False,
        "error: the relay's write policy failed on this event",
    ]


async def test_plugin_stopped_with_the_relay(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(write_policy_plugin=PLUGIN_COMMAND)
    client = await Client.connect(url_of(relay))
    assert (await client.publish(keys.sign()))[2] is True
    plugin = relay.write_policy.plugin
    assert plugin is not None
    proc = plugin._proc
    assert proc is not None
    await client.close()
    await relay.stop()
    assert proc.returncode is not None
