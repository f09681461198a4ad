"""A WebSocket client on a bare asyncio stream: it reads only when told to, so a test can
play a client that stops reading (a library client keeps draining the socket)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import orjson


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, receive_buffer: int = 4096) -> RawClient:
        sock = socket.socket()
        # A small kernel buffer: the relay's writes back up soon after we stop reading.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=receive_buffer)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 101"), status
        return cls(reader, writer)

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        """Queue one masked frame (the stream buffers it if the socket is full)."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    def send_json(self, message: Any) -> None:
        self.send_frame(orjson.dumps(message))

    async def read_frames(self, timeout: float = 10.0) -> list[tuple[int, bytes]]:
        """Every frame until the relay closes the connection: (opcode, payload)."""
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    frame = await self._read_frame()
                except asyncio.IncompleteReadError:
                    return frames
                frames.append(frame)
                if frame[0] == 0x8:
                    return frames

    async def read_json(self, timeout: float = 10.0) -> Any:
        """The next text frame, decoded."""
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self._read_frame()
                if opcode == 0x1:
                    return orjson.loads(payload)

    async def _read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()
