"""The `compression` setting: permessage-deflate is offered back only when enabled."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect

from relay.config import ConfigError, load
from tests.conftest import RelayFactory, url_of


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
