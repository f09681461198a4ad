"""The relay's own failures (a commit that fails, a bug in our code) are answered `error:`,
nothing is acknowledged that was not stored, and the connection goes on."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest

from relay.core.event import Event
from relay.net.server import RelayServer
from relay.store.base import SaveOutcome
from tests.conftest import url_of
from tests.nostr import Client, Keys


async def failing_commit(events: Sequence[Event], now: int) -> list[SaveOutcome]:
    raise sqlite3.OperationalError("disk I/O error")


async def test_failed_commit_is_refused_and_nothing_is_stored(
    relay: RelayServer, client: Client, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = keys.sign(content="the disk fails under this one")
    with monkeypatch.context() as patch:
        patch.setattr(relay.store, "save_many", failing_commit)
        ok = await client.publish(event)
    assert ok[2] is False
    assert ok[3].startswith("error: ")
    assert await client.req("after-failure", {"ids": [event["id"]]}) == []
    # Not stored, so not a duplicate either: the client's retry is accepted.
    assert await client.publish(event) == ["OK", event["id"], True, ""]
    assert await client.req("after-retry", {"ids": [event["id"]]}) == [event]


async def test_failed_commit_is_not_broadcast(
    relay: RelayServer, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = await Client.connect(url_of(relay))
    publisher = await Client.connect(url_of(relay))
    assert await listener.req("live", {"kinds": [1]}) == []
    with monkeypatch.context() as patch:
        patch.setattr(relay.store, "save_many", failing_commit)
        assert (await publisher.publish(keys.sign()))[2] is False
    await listener.expect_silence()
    stored = keys.sign(content="after the failure")
    assert (await publisher.publish(stored))[2] is True
    assert await listener.recv() == ["EVENT", "live", stored]
    await listener.close()
    await publisher.close()


async def test_bug_while_verifying_answers_ok_false_error(
    relay: RelayServer, client: Client, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_verify(event: Event) -> bool:
        raise RuntimeError("a bug in the relay")

    event = keys.sign()
    with monkeypatch.context() as patch:
        patch.setattr(relay.verifier, "verify", broken_verify)
        ok = await client.publish(event)
    assert ok[2] is False
    assert ok[3].startswith("error: ")
    assert await client.publish(event) == ["OK", event["id"], True, ""]


async def test_bug_while_parsing_answers_a_notice_and_the_connection_goes_on(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_parse(frame: Any) -> Any:
        raise RuntimeError("a bug in the relay")

    with monkeypatch.context() as patch:
        patch.setattr("relay.core.session.parse_message", broken_parse)
        await client.send(["REQ", "s", {}])
        notice = await client.recv()
    assert notice[0] == "NOTICE"
    assert notice[1].startswith("error: ")
    assert await client.req("s", {"limit": 1}) == []
