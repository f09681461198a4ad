"""Plain HTTP on the relay's port: NIP-11, the web page and its /stats, /health, /metrics,
CORS; refuses upgrades elsewhere. Also the metrics' own listener when they are kept apart."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from importlib import resources

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.config import Settings
from relay.core import canonical
from relay.net.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.net.metrics import Metrics

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
)
RELAY_PATHS = frozenset({"/", ""})
LANDING_TEXT = (
    b"This is a Nostr relay. Connect a Nostr client to this address with ws:// or wss://.\n"
)
# The page's files (relay/web), by the path they are served at, with their media type.
WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/schnorr.js": ("schnorr.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page loads its own files and speaks to this relay only; the relay's icon may be
# anywhere. No inline script can run.
PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' https: data:",
    ),
    ("X-Content-Type-Options", "nosniff"),
)
# `/` answers by the Accept header: caches must keep the answers apart.
VARY_ACCEPT = (("Vary", "Accept"),)

log = logging.getLogger("relay")

Stats = Callable[[], Awaitable[dict[str, object]]]


def _response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            *CORS_HEADERS,
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def _path(request: Request) -> str:
    return request.path.split("?", 1)[0]


def _head_aware(request: Request, response: Response | None) -> Response | None:
    if response is not None and request.method == "HEAD":
        # Same headers as GET, Content-Length included, and no body (RFC 9110 9.3.2).
        return dataclasses.replace(response, body=b"")
    return response


def load_web_files() -> dict[str, Response]:
    """The page's files as ready responses, read once from the installed package."""
    folder = resources.files("relay") / "web"
    return {
        path: _response(
            HTTPStatus.OK,
            (folder / name).read_bytes(),
            content_type,
            PAGE_HEADERS + (VARY_ACCEPT if path == "/" else ()),
        )
        for path, (name, content_type) in WEB_FILES.items()
    }


class HttpResponder:
    """The `process_request` hook: answers HTTP itself, or lets a WebSocket upgrade on.

    `metrics` is None when they are switched off or served on a listener of their own.
    """

    def __init__(
        self,
        info_document: dict[str, object],
        is_healthy: Callable[[], bool],
        stats: Stats,
        metrics: Metrics | None = None,
    ) -> None:
        self.info_body = canonical.dumps(info_document)
        self.is_healthy = is_healthy
        self.stats = stats
        self.metrics = metrics
        self.web_files = load_web_files()

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        return _head_aware(request, await self._answer(request))

    async def _answer(self, request: Request) -> Response | None:
        path = _path(request)
        if _is_upgrade(request):
            if path in RELAY_PATHS:
                return None
            return _response(HTTPStatus.NOT_FOUND, b"No relay at this path.\n", "text/plain")
        # websockets >= 17 hands every method to process_request: CORS preflights get here.
        if request.method == "OPTIONS":
            return _response(HTTPStatus.NO_CONTENT, b"", "text/plain")
        if path == "/health":
            return self._health()
        if path == "/stats":
            body = canonical.dumps(await self.stats())
            return _response(HTTPStatus.OK, body, "application/json")
        if path == "/metrics" and self.metrics is not None:
            return await metrics_response(self.metrics)
        if path in RELAY_PATHS:
            return self._relay_root(request.headers.get("Accept", ""))
        page_file = self.web_files.get(path)
        if page_file is not None:
            return page_file
        return _response(HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain")

    def _health(self) -> Response:
        if self.is_healthy():
            return _response(HTTPStatus.OK, b'{"status":"ok"}', "application/json")
        return _response(
            HTTPStatus.SERVICE_UNAVAILABLE, b'{"status":"unavailable"}', "application/json"
        )

    def _relay_root(self, accept: str) -> Response:
        if "application/nostr+json" in accept:
            return _response(HTTPStatus.OK, self.info_body, "application/nostr+json", VARY_ACCEPT)
        if "text/html" in accept:
            return self.web_files["/"]
        return _response(HTTPStatus.OK, LANDING_TEXT, "text/plain; charset=utf-8", VARY_ACCEPT)


async def metrics_response(metrics: Metrics) -> Response:
    return _response(HTTPStatus.OK, await metrics.render(), METRICS_CONTENT_TYPE)


class MetricsResponder:
    """The `process_request` hook of the metrics' own listener: /metrics, nothing else."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, connection: ServerConnection, request: Request) -> Response:
        if _path(request) == "/metrics" and not _is_upgrade(request):
            response = await metrics_response(self.metrics)
        else:
            response = _response(HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain")
        return _head_aware(request, response) or response


async def serve_metrics(metrics: Metrics, settings: Settings) -> Server:
    """The metrics' own listener, on metrics_host (or host) and metrics_port."""
    server = await serve(
        _no_websocket,
        settings.metrics_host or settings.host,
        settings.metrics_port,
        process_request=MetricsResponder(metrics),
        server_header=None,
    )
    host, port = server.sockets[0].getsockname()[:2]
    log.info("metrics on %s:%d", host, port)
    return server


async def _no_websocket(ws: ServerConnection) -> None:
    """Never reached: the metrics' listener answers every request itself."""
    await ws.close()
