"""NIP-86 management API with NIP-98 auth, against the real relay over HTTP and WebSocket:
each method, its live effect, persistence across a restart, and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from websockets.exceptions import ConnectionClosed

from relay.admin import auth_header
from relay.net.server import RelayServer
from tests.conftest import RelayFactory, RelayProcess, relay_command, url_of
from tests.http_client import HttpResponse, fetch_info, http_request
from tests.nostr import Client, Keys

RPC = "application/nostr+json+rpc"


def http_url(relay: RelayServer) -> str:
    return f"http://127.0.0.1:{relay.port}/"


async def rpc_raw(
    relay: RelayServer, body: bytes, secret: PrivateKey | None, **auth: Any
) -> HttpResponse:
    headers = {"Content-Type": RPC}
    if secret is not None:
        url = auth.get("url", http_url(relay))
        signed = auth.get("signed_body", body)
        now = auth.get("now", int(time.time()))
        headers["Authorization"] = auth_header(secret, url, auth.get("method", "POST"), signed, now)
    return await http_request(relay.port, "POST", "/", headers, body=body)


async def rpc(relay: RelayServer, secret: PrivateKey, method: str, *params: Any) -> Any:
    body = json.dumps({"method": method, "params": list(params)}).encode()
    response = await rpc_raw(relay, body, secret)
    assert response.status == 200, response.body
    assert response.headers["content-type"] == RPC
    answer = response.json()
    assert "error" not in answer or answer["error"] is None, answer
    return answer["result"]


@pytest.fixture
def admin() -> PrivateKey:
    return PrivateKey()


def pubkey_of(secret: PrivateKey) -> str:
    return str(secret.public_key_xonly.format().hex())


@pytest.fixture
async def managed(start_relay: RelayFactory, admin: PrivateKey) -> RelayServer:
    return await start_relay(admin_pubkeys=(pubkey_of(admin),))


async def publish(relay: RelayServer, event: dict[str, Any]) -> list[Any]:
    client = await Client.connect(url_of(relay))
    try:
        return await client.publish(event)
    finally:
        await client.close()


async def stored_ids(relay: RelayServer, **filter: Any) -> list[str]:
    client = await Client.connect(url_of(relay))
    try:
        return [event["id"] for event in await client.req("q", filter)]
    finally:
        await client.close()


async def test_supportedmethods_lists_every_method(managed: RelayServer, admin: PrivateKey) -> None:
    methods = await rpc(managed, admin, "supportedmethods")
    assert set(methods) == {
        "supportedmethods",
        "banpubkey",
        "listbannedpubkeys",
        "allowpubkey",
        "listallowedpubkeys",
        "banevent",
        "allowevent",
        "listbannedevents",
        "listeventsneedingmoderation",
        "changerelayname",
        "changerelaydescription",
        "changerelayicon",
        "allowkind",
        "disallowkind",
        "listallowedkinds",
        "blockip",
        "unblockip",
        "listblockedips",
    }
    assert await rpc(managed, admin, "listeventsneedingmoderation") == []


async def test_banpubkey_deletes_stored_events_and_refuses_new(
    managed: RelayServer, admin: PrivateKey
) -> None:
    spammer, other = Keys(), Keys()
    spam = spammer.sign(content="spam")
    kept = other.sign(content="fine")
    assert (await publish(managed, spam))[2] is True
    assert (await publish(managed, kept))[2] is True
    assert await rpc(managed, admin, "banpubkey", spammer.pubkey, "spam") is True
    assert await stored_ids(managed, kinds=[1]) == [kept["id"]]
    reply = await publish(managed, spammer.sign(content="more spam"))
    assert reply[2] is False
    assert reply[3].startswith("blocked:")
    listed = await rpc(managed, admin, "listbannedpubkeys")
    assert listed == [{"pubkey": spammer.pubkey, "reason": "spam"}]


async def test_allowpubkey_restricts_writes_to_the_allowed(
    managed: RelayServer, admin: PrivateKey
) -> None:
    friend, stranger = Keys(), Keys()
    assert await rpc(managed, admin, "allowpubkey", friend.pubkey) is True
    assert (await publish(managed, friend.sign()))[2] is True
    reply = await publish(managed, stranger.sign())
    assert reply[2] is False
    assert reply[3].startswith("restricted:")
    listed = await rpc(managed, admin, "listallowedpubkeys")
    assert listed == [{"pubkey": friend.pubkey, "reason": ""}]


async def test_banevent_removes_it_and_allowevent_lets_it_back(
    managed: RelayServer, admin: PrivateKey
) -> None:
    author = Keys()
    event = author.sign(content="offending")
    assert (await publish(managed, event))[2] is True
    assert await rpc(managed, admin, "banevent", event["id"], "illegal") is True
    assert await stored_ids(managed, ids=[event["id"]]) == []
    reply = await publish(managed, event)
    assert reply[2] is False
    assert reply[3].startswith("blocked:")
    assert await rpc(managed, admin, "listbannedevents") == [
        {"id": event["id"], "reason": "illegal"}
    ]
    assert await rpc(managed, admin, "allowevent", event["id"]) is True
    assert await rpc(managed, admin, "listbannedevents") == []
    assert (await publish(managed, event))[2] is True


async def test_allowkind_and_disallowkind(managed: RelayServer, admin: PrivateKey) -> None:
    author = Keys()
    assert await rpc(managed, admin, "allowkind", 1) is True
    assert await rpc(managed, admin, "allowkind", 7) is True
    assert await rpc(managed, admin, "listallowedkinds") == [1, 7]
    reply = await publish(managed, author.sign(kind=30023, tags=[["d", "x"]]))
    assert reply[2] is False
    assert reply[3].startswith("restricted:")
    assert (await publish(managed, author.sign(kind=1)))[2] is True
    assert await rpc(managed, admin, "disallowkind", 7) is True
    assert await rpc(managed, admin, "listallowedkinds") == [1]


async def test_change_relay_info_shows_in_nip11_at_once(
    managed: RelayServer, admin: PrivateKey
) -> None:
    assert await rpc(managed, admin, "changerelayname", "Moderated") is True
    assert await rpc(managed, admin, "changerelaydescription", "a calm place") is True
    assert await rpc(managed, admin, "changerelayicon", "https://example.com/i.png") is True
    info = await fetch_info(managed)
    assert info["name"] == "Moderated"
    assert info["description"] == "a calm place"
    assert info["icon"] == "https://example.com/i.png"


async def test_blockip_refuses_connections_and_unblockip_lets_them_in(
    managed: RelayServer, admin: PrivateKey
) -> None:
    open_before = await Client.connect(url_of(managed))
    assert await rpc(managed, admin, "blockip", "127.0.0.1", "abuse") is True
    # A connection open from the address is dropped at once.
    with pytest.raises(ConnectionClosed):
        await open_before.recv(timeout=5)
    assert await rpc(managed, admin, "listblockedips") == [{"ip": "127.0.0.1", "reason": "abuse"}]
    refused = await http_request(managed.port, "GET", "/", {"Accept": "application/nostr+json"})
    assert refused.status == 403
    with pytest.raises(Exception, match="403"):
        await Client.connect(url_of(managed))
    assert await rpc(managed, admin, "unblockip", "127.0.0.1") is True
    assert await rpc(managed, admin, "listblockedips") == []
    client = await Client.connect(url_of(managed))
    await client.close()


async def test_state_persists_across_a_restart(
    start_relay: RelayFactory, admin: PrivateKey
) -> None:
    settings = {"admin_pubkeys": (pubkey_of(admin),)}
    first = await start_relay(**settings)
    banned = Keys()
    await rpc(first, admin, "banpubkey", banned.pubkey, "spam")
    await rpc(first, admin, "allowkind", 1)
    await rpc(first, admin, "blockip", "10.1.2.3")
    await rpc(first, admin, "changerelayname", "Renamed")
    await first.stop()
    second = await start_relay(**settings)
    assert await rpc(second, admin, "listbannedpubkeys") == [
        {"pubkey": banned.pubkey, "reason": "spam"}
    ]
    assert await rpc(second, admin, "listallowedkinds") == [1]
    assert await rpc(second, admin, "listblockedips") == [{"ip": "10.1.2.3", "reason": ""}]
    assert (await fetch_info(second))["name"] == "Renamed"
    reply = await publish(second, banned.sign())
    assert reply[2] is False
    assert reply[3].startswith("blocked:")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"method": "nosuchmethod", "params": []}', "unsupported method"),
        (b'{"method": "banpubkey", "params": ["xyz"]}', "invalid params"),
        (b'{"method": "banpubkey", "params": "x"}', "params must be an array"),
        (b'{"method": "allowkind", "params": ["one"]}', "invalid params"),
        (b'{"method": "blockip", "params": ["300.1.1.1"]}', "invalid params"),
        (b'{"method": 5}', "method must be a string"),
        # Text no store can keep: PostgreSQL's holds no U+0000, neither a lone surrogate.
        (b'{"method": "banpubkey", "params": ["' + b"a" * 64 + b'", "x\\u0000"]}', "invalid"),
        (b'{"method": "changerelayname", "params": ["\\ud800"]}', "invalid params"),
    ],
)
async def test_bad_requests_get_json_rpc_errors(
    managed: RelayServer, admin: PrivateKey, body: bytes, error: str
) -> None:
    response = await rpc_raw(managed, body, admin)
    assert response.status == 200
    answer = response.json()
    assert error in answer["error"]
    assert answer.get("result") is None


async def test_requests_without_valid_nip98_auth_get_401(
    managed: RelayServer, admin: PrivateKey
) -> None:
    body = b'{"method": "banpubkey", "params": ["' + b"a" * 64 + b'"]}'
    cases: list[dict[str, Any]] = [
        {"url": "http://other.example/"},
        {"method": "GET"},
        {"now": int(time.time()) - 3600},
        {"signed_body": b'{"method": "supportedmethods", "params": []}'},
    ]
    for auth in cases:
        response = await rpc_raw(managed, body, admin, **auth)
        assert response.status == 401, auth
        assert "error" in response.json()
    assert (await rpc_raw(managed, body, None)).status == 401
    stranger = await rpc_raw(managed, body, PrivateKey())
    assert stranger.status == 401
    assert "not an admin" in stranger.json()["error"]
    assert await rpc(managed, admin, "listbannedpubkeys") == []


async def test_no_admins_configured_refuses_everyone(relay: RelayServer, admin: PrivateKey) -> None:
    response = await rpc_raw(relay, b'{"method": "supportedmethods", "params": []}', admin)
    assert response.status == 401


async def test_plain_http_and_websocket_still_work_beside_it(managed: RelayServer) -> None:
    info = await fetch_info(managed)
    assert "supported_nips" in info
    # A POST that is not JSON-RPC reaches the ordinary HTTP answers, body and all.
    response = await http_request(
        managed.port, "POST", "/", {"Content-Type": "text/plain"}, body=b"hello"
    )
    assert response.status == 200
    client = await Client.connect(url_of(managed))
    assert (await client.publish(Keys().sign()))[2] is True
    await client.close()


def test_admin_cli_end_to_end(
    relay_process: Callable[..., RelayProcess], tmp_path: Path, admin: PrivateKey
) -> None:
    """`relay admin` signs with a key file or RELAY_ADMIN_KEY, against a relay process."""
    process = relay_process({"RELAY_ADMIN_PUBKEYS": pubkey_of(admin)})
    process.start()
    key_file = tmp_path / "admin.key"
    key_file.write_text(admin.secret.hex() + "\n")
    target = Keys().pubkey
    base = ["admin", "--url", process.url]
    done = run_cli(*base, "--key-file", str(key_file), "banpubkey", target, "spam")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) is True
    env = {**os.environ, "RELAY_ADMIN_KEY": admin.secret.hex()}
    listed = run_cli(*base, "listbannedpubkeys", env=env)
    assert json.loads(listed.stdout) == [{"pubkey": target, "reason": "spam"}]
    kinds = run_cli(*base, "allowkind", "1", env=env)
    assert kinds.returncode == 0, kinds.stderr
    assert json.loads(run_cli(*base, "listallowedkinds", env=env).stdout) == [1]
    bad = run_cli(*base, "banpubkey", "nothex", env=env)
    assert bad.returncode == 1
    assert "invalid params" in bad.stderr
    stranger = {**os.environ, "RELAY_ADMIN_KEY": PrivateKey().secret.hex()}
    refused = run_cli(*base, "supportedmethods", env=stranger)
    assert refused.returncode == 1
    assert "401" in refused.stderr
    no_key = {k: v for k, v in os.environ.items() if k != "RELAY_ADMIN_KEY"}
    assert run_cli(*base, "supportedmethods", env=no_key).returncode == 2


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        relay_command(*args), capture_output=True, text=True, timeout=60, env=env, check=False
    )
