"""The `compression` setting: permessage-deflate is offered back only when enabled, and
(unless `deflate_sliding_window`) its compressor lives for one write (relay/net/deflate.py)."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

from relay.config import ConfigError, load
from relay.net.deflate import WriteDeflate
from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.nostr import Client, Keys


async def negotiated_extensions(url: str) -> str | None:
    # websockets' client offers permessage-deflate by default, as browsers do.
    async with connect(url, open_timeout=5) as ws:
        assert ws.response is not None
        return ws.response.headers.get("Sec-WebSocket-Extensions")


async def test_deflate_is_negotiated_by_default(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    extensions = await negotiated_extensions(url_of(relay))
    assert extensions is not None
    assert "permessage-deflate" in extensions


async def test_compression_none_declines_deflate(start_relay: RelayFactory) -> None:
    relay = await start_relay(compression="none")
    assert await negotiated_extensions(url_of(relay)) is None


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ConfigError, match="compression must be deflate or none"):
        load(overrides={"compression": "gzip"}, environ={})


def test_compression_from_the_environment() -> None:
    assert load(environ={"RELAY_COMPRESSION": "none"}).compression == "none"


def server_extension(relay: RelayServer) -> Extension:
    """The one extension of the relay's one connection."""
    (connection,) = relay.connections
    (extension,) = connection.ws.protocol.extensions
    return extension


async def test_the_client_is_asked_not_to_keep_its_window(start_relay: RelayFactory) -> None:
    relay = await start_relay()
    extensions = await negotiated_extensions(url_of(relay))
    assert extensions is not None
    assert "client_no_context_takeover" in extensions
    # Announced, it would let the client reset between the frames of one write.
    assert "server_no_context_takeover" not in extensions


async def test_a_sliding_window_is_websockets_own_deflate(start_relay: RelayFactory) -> None:
    relay = await start_relay(deflate_sliding_window=True)
    assert await negotiated_extensions(url_of(relay)) == (
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    )
    client = await Client.connect(url_of(relay))
    try:
        await client.req("q", {"limit": 1})
        assert type(server_extension(relay)) is PerMessageDeflate
        assert "encoder" in vars(server_extension(relay))
    finally:
        await client.close()


async def test_compressed_writes_decode_and_leave_no_compressor(
    start_relay: RelayFactory,
) -> None:
    # Pages of a few events each: many writes, each from a compressor of its own, read by
    # one decompressor that keeps its window throughout (websockets' client, as a browser).
    relay = await start_relay(query_page_bytes=8 * 1024)
    keys = Keys()
    client = await Client.connect(url_of(relay))
    try:
        assert client.ws.protocol.extensions, "the client offers deflate"
        notes = [keys.sign(content=f"note {n} " + "words " * 300) for n in range(60)]
        for note in notes:
            assert (await client.publish(note))[2] is True
        extension = server_extension(relay)
        assert isinstance(extension, WriteDeflate)
        assert "encoder" not in vars(extension)
        assert "decoder" not in vars(extension)
        stored = await client.req("all", {"authors": [keys.pubkey], "limit": 100})
        assert {e["id"] for e in stored} == {e["id"] for e in notes}
        assert "encoder" not in vars(extension)
        # Live events after the pages: written alone, each by a new compressor.
        more = [keys.sign(content=f"live {n}") for n in range(3)]
        publisher = await Client.connect(url_of(relay))
        try:
            for note in more:
                assert (await publisher.publish(note))[2] is True
                assert await client.recv() == ["EVENT", "all", note]
        finally:
            await publisher.close()
        assert "encoder" not in vars(extension)
    finally:
        await client.close()


def test_sliding_window_from_the_environment() -> None:
    assert load(environ={}).deflate_sliding_window is False
    assert load(environ={"RELAY_DEFLATE_SLIDING_WINDOW": "true"}).deflate_sliding_window is True


async def test_a_client_asking_for_server_no_context_takeover_gets_it(
    start_relay: RelayFactory,
) -> None:
    # Then the base class makes a compressor per message itself; pages still decode.
    relay = await start_relay(query_page_bytes=4 * 1024)
    offer = ClientPerMessageDeflateFactory(server_no_context_takeover=True)
    client = await Client.connect(url_of(relay), extensions=[offer], compression=None)
    try:
        keys = Keys()
        notes = [keys.sign(content=f"note {n} " + "words " * 100) for n in range(20)]
        for note in notes:
            assert (await client.publish(note))[2] is True
        extension = server_extension(relay)
        assert isinstance(extension, WriteDeflate)
        assert extension.local_no_context_takeover
        stored = await client.req("all", {"authors": [keys.pubkey], "limit": 50})
        assert {e["id"] for e in stored} == {e["id"] for e in notes}
        assert "encoder" not in vars(extension)
    finally:
        await client.close()
