"""Who is connecting: the client address (behind a trusted proxy too) and the per-IP cap.

A client over the cap is refused at the upgrade with HTTP 429 and `Retry-After`: clients
(nostr-tools, rust-nostr) treat a failed upgrade as a failed connection and back off,
while an accepted-then-closed connection costs a handshake and is often retried at once.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

HttpAnswer = Awaitable[Response | None] | Response | None
ProcessRequest = Callable[[ServerConnection, Request], HttpAnswer]
RETRY_AFTER_SECONDS = 10


def client_ip(headers: Headers | None, remote_address: object, trusted_header: str) -> str:
    """The client's IP: from `trusted_header` when configured and valid, else the peer's."""
    if trusted_header and headers is not None:
        value = headers.get(trusted_header, "")
        # A proxy appends the address it saw: the last entry is the one it vouches for.
        candidate = value.rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    if isinstance(remote_address, tuple) and remote_address:
        return str(remote_address[0])
    return str(remote_address)


class ExemptNetworks:
    """Client addresses no rate or per-IP cap applies to (the operator's own machine)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]

    def __contains__(self, ip: object) -> bool:
        try:
            address = ipaddress.ip_address(str(ip))
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class ConnectionCounter:
    """Open connections per IP, capped at `max_per_ip` (0: no cap)."""

    def __init__(self, max_per_ip: int, exempt: ExemptNetworks | None = None) -> None:
        self.max_per_ip = max_per_ip
        self.exempt = exempt or ExemptNetworks(())
        self._open: Counter[str] = Counter()

    def full(self, ip: str) -> bool:
        if self.max_per_ip <= 0 or self._open[ip] < self.max_per_ip:
            return False
        return ip not in self.exempt

    def add(self, ip: str) -> None:
        self._open[ip] += 1

    def remove(self, ip: str) -> None:
        self._open[ip] -= 1
        if self._open[ip] <= 0:
            del self._open[ip]


class AdmissionControl:
    """The `process_request` hook: refuses an upgrade over the per-IP cap, else delegates."""

    def __init__(
        self, counter: ConnectionCounter, trusted_header: str, http: ProcessRequest
    ) -> None:
        self.counter = counter
        self.trusted_header = trusted_header
        self.http = http

    def __call__(self, connection: ServerConnection, request: Request) -> HttpAnswer:
        is_upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        ip = client_ip(request.headers, connection.remote_address, self.trusted_header)
        if is_upgrade and self.counter.full(ip):
            return too_many_connections()
        return self.http(connection, request)


def too_many_connections() -> Response:
    body = b"Too many connections from your address.\n"
    status = HTTPStatus.TOO_MANY_REQUESTS
    headers = Headers(
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Retry-After", str(RETRY_AFTER_SECONDS)),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
