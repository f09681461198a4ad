"""NIP-11 and the rest of the plain-HTTP side of the relay's port, over a raw HTTP client."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from relay import __version__
from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.http_client import NOSTR_JSON, HttpResponse, fetch_info, http_request
from tests.nostr import Client, Keys


def assert_cors(response: HttpResponse) -> None:
    """NIP-11: relays MUST send these three CORS headers."""
    assert response.headers.get("access-control-allow-origin") == "*"
    assert response.headers.get("access-control-allow-headers")
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "OPTIONS"} <= methods


async def test_information_document_with_nostr_accept_header(relay: RelayServer) -> None:
    response = await http_request(relay.port, headers={"Accept": NOSTR_JSON})
    assert response.status == 200
    assert response.headers["content-type"].split(";")[0].strip() == NOSTR_JSON
    assert_cors(response)
    document = response.json()
    assert document["supported_nips"] == [1, 9, 11, 40, 42, 45, 62, 70, 77]
    assert all(type(nip) is int for nip in document["supported_nips"])
    assert document["software"].startswith("https://")
    assert document["version"] == __version__
    assert isinstance(document["limitation"], dict)


async def test_fields_come_from_configuration(start_relay: RelayFactory, keys: Keys) -> None:
    relay = await start_relay(
        name="test relay",
        description="for the tests\n\nsecond paragraph",
        pubkey=keys.pubkey,
        contact="mailto:admin@example.org",
        icon="https://example.org/icon.png",
    )
    document = await fetch_info(relay)
    assert document["name"] == "test relay"
    assert document["description"] == "for the tests\n\nsecond paragraph"
    assert document["pubkey"] == keys.pubkey
    assert document["contact"] == "mailto:admin@example.org"
    assert document["icon"] == "https://example.org/icon.png"


async def test_empty_fields_are_omitted(start_relay: RelayFactory) -> None:
    relay = await start_relay(name="bare", description="", pubkey="", contact="", icon="")
    document = await fetch_info(relay)
    assert document["name"] == "bare"
    assert not {"description", "pubkey", "contact", "icon"} & document.keys()


async def test_limitation_reflects_configured_values(start_relay: RelayFactory) -> None:
    configured = {
        "max_message_length": 50000,
        "max_subscriptions": 7,
        "max_filters": 3,
        "max_limit": 123,
        "default_limit": 45,
        "max_subid_length": 20,
        "max_event_tags": 99,
        "max_content_length": 1000,
        "created_at_lower_limit": 86400,
        "created_at_upper_limit": 30,
    }
    relay = await start_relay(**configured)
    limitation = (await fetch_info(relay))["limitation"]
    assert {name: limitation[name] for name in configured} == configured
    # Open relay: no NIP-42 auth, no payment, anyone may write.
    assert limitation["auth_required"] is False
    assert limitation["payment_required"] is False
    assert limitation["restricted_writes"] is False


@pytest.mark.parametrize(
    "accept",
    [
        "application/nostr+json, text/html;q=0.9",
        "text/html, application/nostr+json;q=0.8",
    ],
)
async def test_nostr_json_among_several_accepted_types(relay: RelayServer, accept: str) -> None:
    response = await http_request(relay.port, headers={"Accept": accept})
    assert response.status == 200
    assert response.headers["content-type"] == NOSTR_JSON
    assert "supported_nips" in response.json()


async def test_query_string_does_not_hide_the_document(relay: RelayServer) -> None:
    response = await http_request(relay.port, path="/?x=1", headers={"Accept": NOSTR_JSON})
    assert response.status == 200
    assert "limitation" in response.json()


async def test_cors_preflight_is_answered(relay: RelayServer) -> None:
    response = await http_request(
        relay.port,
        method="OPTIONS",
        headers={
            "Origin": "https://client.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
    )
    assert 200 <= response.status < 300
    assert_cors(response)
    assert response.body == b""


async def test_plain_get_without_nostr_accept_gets_a_landing_text(relay: RelayServer) -> None:
    # A browser's Accept (text/html) gets the web page: tests/test_web.py.
    response = await http_request(relay.port, headers={"Accept": "*/*"})
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert b"Nostr relay" in response.body
    assert_cors(response)
    # Not the NIP-11 document.
    assert b"supported_nips" not in response.body


async def test_health(relay: RelayServer) -> None:
    response = await http_request(relay.port, path="/health")
    assert response.status == 200
    assert response.json() == {"status": "ok"}


async def test_unknown_http_path_is_404(relay: RelayServer) -> None:
    response = await http_request(relay.port, path="/nope", headers={"Accept": NOSTR_JSON})
    assert response.status == 404
    assert b"supported_nips" not in response.body


async def test_head_has_no_body(relay: RelayServer) -> None:
    response = await http_request(relay.port, method="HEAD", headers={"Accept": NOSTR_JSON})
    assert response.status == 200
    assert response.body == b""


@pytest.mark.parametrize("path", ["/other", "/health", "/relay/"])
async def test_websocket_upgrade_elsewhere_is_refused(relay: RelayServer, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await Client.connect(url_of(relay) + path)
    assert refused.value.response.status_code == 404
    # The relay itself still takes connections on /.
    client = await Client.connect(url_of(relay) + "/")
    assert await client.req("s", {"limit": 1}) == []
    await client.close()


async def test_websocket_upgrade_with_query_string_is_accepted(relay: RelayServer) -> None:
    client = await Client.connect(url_of(relay) + "/?client=test")
    assert await client.req("s", {"limit": 1}) == []
    await client.close()
