"""A minimal HTTP/1.1 client on a raw socket, for the relay's plain-HTTP side (NIP-11, /health)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from relay.net.server import RelayServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

NOSTR_JSON = "application/nostr+json"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    # Header names lower-cased; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResponse:
    """Send one request with `Connection: close` and read the response up to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete HTTP response head in {raw!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    # A HEAD response announces the length of a body it does not send.
    if "content-length" in parsed and method != "HEAD":
        assert len(body) == int(parsed["content-length"]), "body length != Content-Length"
    return HttpResponse(int(status), parsed, body)


async def fetch_info(relay: RelayServer) -> dict[str, Any]:
    """The relay's NIP-11 document, as a client asks for it."""
    response = await http_request(relay.port, headers={"Accept": NOSTR_JSON})
    assert response.status == 200
    document = response.json()
    assert isinstance(document, dict)
    return document


async def fetch_limitation(relay: RelayServer) -> dict[str, Any]:
    limitation = (await fetch_info(relay))["limitation"]
    assert isinstance(limitation, dict)
    return limitation


async def scrape(port: int) -> Samples:
    """Every sample of /metrics on `port`, by name and labels."""
    response = await http_request(port, path="/metrics")
    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
