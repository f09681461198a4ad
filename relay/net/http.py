"""Plain HTTP on the relay's port: NIP-11, /health, CORS; refuses upgrades elsewhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.core import canonical

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
)
RELAY_PATHS = frozenset({"/", ""})
LANDING_TEXT = (
    b"This is a Nostr relay. Connect a Nostr client to this address with ws:// or wss://.\n"
)


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            *CORS_HEADERS,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


class HttpResponder:
    """The `process_request` hook: answers HTTP itself, or lets a WebSocket upgrade on."""

    def __init__(self, info_document: dict[str, object], is_healthy: Callable[[], bool]) -> None:
        self.info_body = canonical.dumps(info_document)
        self.is_healthy = is_healthy

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._answer(request)
        if response is not None and request.method == "HEAD":
            # Same headers as GET, Content-Length included, and no body (RFC 9110 9.3.2).
            return dataclasses.replace(response, body=b"")
        return response

    def _answer(self, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if _is_upgrade(request):
            if path in RELAY_PATHS:
                return None
            return _response(HTTPStatus.NOT_FOUND, b"No relay at this path.\n", "text/plain")
        # websockets >= 17 hands every method to process_request: CORS preflights get here.
        if request.method == "OPTIONS":
            return _response(HTTPStatus.NO_CONTENT, b"", "text/plain")
        if path == "/health":
            if self.is_healthy():
                return _response(HTTPStatus.OK, b'{"status":"ok"}', "application/json")
            return _response(
                HTTPStatus.SERVICE_UNAVAILABLE, b'{"status":"unavailable"}', "application/json"
            )
        if path not in RELAY_PATHS:
            return _response(HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain")
        if "application/nostr+json" in request.headers.get("Accept", ""):
            return _response(HTTPStatus.OK, self.info_body, "application/nostr+json")
        return _response(HTTPStatus.OK, LANDING_TEXT, "text/plain; charset=utf-8")
