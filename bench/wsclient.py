"""A minimal WebSocket client on asyncio's Protocol, cheap enough not to be the bottleneck.

The load generator must spend far less CPU per message than the relay, so it does not use a
full client library: frames are built once in advance with an all-zero mask key (legal in
RFC 6455, and a no-op to apply), no extension is offered (so nothing is compressed), and
incoming frames are only split, never copied twice. Pings are answered.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import Any

ZERO_MASK = b"\x00\x00\x00\x00"


def text_frame(payload: bytes) -> bytes:
    """A masked (with the zero key), final text frame holding `payload`."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, 0x80 | size))
    elif size < 65536:
        header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + ZERO_MASK + payload


def _control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, 0x80 | len(payload))) + ZERO_MASK + payload


class WsClient(asyncio.Protocol):
    """One connection; `on_message(payload)` is called for every text message."""

    def __init__(self, on_message: Callable[[bytes], None], offer_deflate: bool = False) -> None:
        self.on_message = on_message
        # Browsers and most client libraries offer permessage-deflate; only the idle-memory
        # measure does, since nothing here can decompress.
        self.offer_deflate = offer_deflate
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []

    @classmethod
    async def connect(
        cls, host: str, port: int, on_message: Callable[[bytes], None], offer_deflate: bool = False
    ) -> WsClient:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(on_message, offer_deflate), host, port
        )
        await protocol.opened
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        writer: Any = transport
        self.transport = writer
        host, port = transport.get_extra_info("peername")[:2]
        key = base64.b64encode(os.urandom(16)).decode()
        extensions = (
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            if self.offer_deflate
            else ""
        )
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extensions}\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_frame(self, frame: bytes) -> None:
        """Send a frame built by `text_frame`."""
        assert self.transport is not None
        self.transport.write(frame)

    def send(self, payload: bytes) -> None:
        self.send_frame(text_frame(payload))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_control_frame(0x8, b"\x03\xe8"))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self._upgraded = True
            self.opened.set_result(None)
        self._read_frames()

    def _read_frames(self) -> None:
        buffer = self._buffer
        position = 0
        end = len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            size = second & 0x7F
            header = 2
            if size == 126:
                if end - position < 4:
                    break
                size = int.from_bytes(buffer[position + 2 : position + 4], "big")
                header = 4
            elif size == 127:
                if end - position < 10:
                    break
                size = int.from_bytes(buffer[position + 2 : position + 10], "big")
                header = 10
            if end - position < header + size:
                break
            payload = bytes(buffer[position + header : position + header + size])
            position += header + size
            self._frame(first, payload)
        del buffer[:position]

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        final = first & 0x80
        if opcode == 0x9:
            self.send_frame(_control_frame(0xA, payload))
        elif opcode == 0x8:
            self.close()
        elif opcode in (0x1, 0x2, 0x0):
            if not final:
                self._fragments.append(payload)
            elif self._fragments:
                self._fragments.append(payload)
                message = b"".join(self._fragments)
                self._fragments = []
                self.on_message(message)
            else:
                self.on_message(payload)
