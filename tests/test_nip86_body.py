"""A NIP-86 POST whose body is over MAX_BODY gets HTTP 413 from a real HTTP client's view
(the standard library's http.client), not a dropped connection."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

from coincurve import PrivateKey

from relay.admin import auth_header
from relay.net.nip86 import MAX_BODY
from relay.net.server import RelayServer
from tests.conftest import RelayFactory
from tests.test_nip86 import RPC, http_url, pubkey_of, rpc


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with http.client, as any HTTP library sends it: head and body, then read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def signed_headers(relay: RelayServer, admin: PrivateKey, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": RPC,
        "Authorization": auth_header(admin, http_url(relay), "POST", body, int(time.time())),
    }


async def test_a_body_over_the_limit_gets_413(start_relay: RelayFactory) -> None:
    admin = PrivateKey()
    relay = await start_relay(admin_pubkeys=(pubkey_of(admin),))
    reason = "x" * (MAX_BODY + 1000)
    body = json.dumps({"method": "banpubkey", "params": ["a" * 64, reason]}).encode()
    assert len(body) > MAX_BODY
    status, answer = await asyncio.to_thread(
        post, relay.port, body, signed_headers(relay, admin, body)
    )
    assert status == 413
    assert "error" in json.loads(answer)
    # Nothing was applied, and the relay answers the next call as usual.
    assert await rpc(relay, admin, "listbannedpubkeys") == []


async def test_a_body_at_the_limit_is_read_whole(start_relay: RelayFactory) -> None:
    admin = PrivateKey()
    relay = await start_relay(admin_pubkeys=(pubkey_of(admin),))
    call = {"method": "supportedmethods", "params": []}
    text = json.dumps(call)
    body = (text[:-1] + " " * (MAX_BODY - len(text)) + "}").encode()
    assert len(body) == MAX_BODY
    status, answer = await asyncio.to_thread(
        post, relay.port, body, signed_headers(relay, admin, body)
    )
    assert status == 200
    assert "banpubkey" in json.loads(answer)["result"]


async def test_a_client_awaiting_100_continue_gets_413_before_sending_the_body(
    start_relay: RelayFactory,
) -> None:
    """curl sends `Expect: 100-continue` before a large body: the 413 comes at once."""
    relay = await start_relay()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        head = (
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {RPC}\r\nContent-Length: {10 * MAX_BODY}\r\n"
            "Expect: 100-continue\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413 ")
