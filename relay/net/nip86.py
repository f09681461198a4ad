"""NIP-86 relay management over HTTP: JSON-RPC POSTed to the relay's URL with
`Content-Type: application/nostr+json+rpc`, admitted by NIP-98 for `admin_pubkeys`.

websockets reads no request body (a handshake has none) and refuses a request with one.
`BodyReadingConnection` swaps in a request parser that reads a POST body of up to
MAX_BODY bytes first, then hands the head without it to websockets' own parser. A larger
POST body is read and dropped (up to MAX_DRAIN: a client still sending would otherwise
see the connection reset instead of the answer) and the request answered 413.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Generator
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from relay.core.errors import ClientError
from relay.core.moderation import (
    Change,
    ModerationState,
    RpcError,
    check_http_auth,
    parse_request,
    plan,
)
from relay.store.moderation import ModerationStore

log = logging.getLogger("relay.nip86")

CONTENT_TYPE = "application/nostr+json+rpc"
MAX_BODY = 64 * 1024
# A body over MAX_BODY is read up to this many bytes before the 413, so that a client
# that sends it whole reads the answer; past it the connection may be reset.
MAX_DRAIN = 1024 * 1024
DRAIN_CHUNK = 64 * 1024
MAX_HEAD_LINES = 128
MAX_LINE = 8192


class BodyReadingConnection(ServerConnection):
    """A ServerConnection whose request parser keeps a POST body in `request_body`."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.request_body = b""
        # A POST whose body was over MAX_BODY: answered 413 (body_too_large_response).
        self.body_too_large = False
        # No byte has arrived yet: the parser websockets started is still at its first line.
        protocol.parser = self._parse(protocol)
        next(protocol.parser)

    def _parse(self, protocol: ServerProtocol) -> Generator[None]:
        head: list[bytes] = []
        try:
            length = yield from _read_head(protocol.reader, head)
            post = head[0].startswith(b"POST ")
            if post and 0 < length <= MAX_BODY:
                self.request_body = bytes((yield from protocol.reader.read_exact(length)))
            elif post and length > MAX_BODY:
                self.body_too_large = True
                if not _expects_continue(head):
                    # A client that waits for "100 Continue" sends nothing before the 413.
                    yield from _discard(protocol.reader, min(length, MAX_DRAIN))
            elif length:
                head.insert(1, b"Content-Length: %d\r\n" % length)
        except Exception:
            pass  # websockets' parser meets the same bytes below and answers them
        # websockets' parser reads the head again, then whatever followed it.
        reader = StreamReader()
        reader.feed_data(b"".join(head) + bytes(protocol.reader.buffer))
        if protocol.reader.eof:
            reader.feed_eof()
        protocol.reader = reader
        yield from ServerProtocol.parse(protocol)


def _read_head(reader: StreamReader, head: list[bytes]) -> Generator[None, None, int]:
    """Read the request line and headers into `head`, less Content-Length: its value."""
    length = 0
    for _ in range(MAX_HEAD_LINES):
        line = bytes((yield from reader.read_line(MAX_LINE)))
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
            continue
        head.append(line)
        if line in (b"\r\n", b"\n"):
            break
    return length


def _expects_continue(head: list[bytes]) -> bool:
    for line in head[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"expect" and value.strip().lower() == b"100-continue":
            return True
    return False


def _discard(reader: StreamReader, count: int) -> Generator[None]:
    while count > 0:
        chunk = min(count, DRAIN_CHUNK)
        yield from reader.read_exact(chunk)
        count -= chunk


def body_too_large(connection: ServerConnection) -> bool:
    return bool(getattr(connection, "body_too_large", False))


def body_too_large_response() -> Response:
    response = _json_response(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        {"result": None, "error": f"request body over {MAX_BODY} bytes"},
    )
    # The rest of a body larger than MAX_DRAIN is not read: the connection ends here.
    response.headers["Connection"] = "close"
    return response


def is_rpc(request: Request) -> bool:
    content_type = request.headers.get("Content-Type", "")
    return request.method == "POST" and content_type.split(";")[0].strip() == CONTENT_TYPE


def _json_response(status: HTTPStatus, payload: Any, content_type: str = CONTENT_TYPE) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Access-Control-Allow-Origin", "*"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class Nip86:
    """Answers NIP-86 requests; applies each change to the live state once it is stored."""

    def __init__(
        self,
        state: ModerationState,
        store: ModerationStore,
        admins: Collection[str],
        urls: Callable[[], Collection[str]],
        changed: Callable[[Change], None],
    ) -> None:
        self.state = state
        self.store = store
        self.admins = frozenset(admins)
        self.urls = urls
        self.changed = changed

    async def __call__(self, connection: ServerConnection, request: Request) -> Response:
        body = getattr(connection, "request_body", b"")
        try:
            admin = check_http_auth(
                request.headers.get("Authorization", ""),
                urls=self.urls(),
                method="POST",
                body=body,
                admins=self.admins,
                now=int(time.time()),
            )
        except ClientError as error:
            return _json_response(HTTPStatus.UNAUTHORIZED, {"result": None, "error": error.reason})
        try:
            method, params = parse_request(body)
            result, change = plan(self.state, method, params)
            if change is not None:
                deleted = await self.store.apply(change)
                self.state.apply(change)
                self.changed(change)
                log.info("%s by %s: %s (%d events deleted)", method, admin, change.key, deleted)
        except RpcError as error:
            return _json_response(HTTPStatus.OK, {"result": None, "error": str(error)})
        except Exception:
            log.exception("NIP-86 %r failed", body[:200])
            return _json_response(HTTPStatus.OK, {"result": None, "error": "error: internal error"})
        return _json_response(HTTPStatus.OK, {"result": result})


def blocked_ip_response() -> Response:
    body = b"Your address is blocked on this relay.\n"
    headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return Response(HTTPStatus.FORBIDDEN.value, HTTPStatus.FORBIDDEN.phrase, headers, body)
