"""Test helpers: keys, signed events, and a small WebSocket client for the relay."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from coincurve import PrivateKey
from websockets.asyncio.client import ClientConnection, connect

from relay.core.canonical import serialize


@dataclass
class Keys:
    secret: PrivateKey = field(default_factory=PrivateKey)

    @property
    def pubkey(self) -> str:
        return str(self.secret.public_key_xonly.format().hex())

    def sign(
        self,
        kind: int = 1,
        content: str = "hello",
        tags: list[list[str]] | None = None,
        created_at: int | None = None,
    ) -> dict[str, Any]:
        tags = tags or []
        created_at = int(time.time()) if created_at is None else created_at
        digest = hashlib.sha256(serialize(self.pubkey, created_at, kind, tags, content)).digest()
        return {
            "id": digest.hex(),
            "pubkey": self.pubkey,
            "created_at": created_at,
            "kind": kind,
            "tags": tags,
            "content": content,
            "sig": self.secret.sign_schnorr(digest).hex(),
        }


class Client:
    """A WebSocket client speaking NIP-01 frames, with a timeout on every read."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        # The last NIP-42 challenge the relay sent; AUTH frames are not returned by recv.
        self.challenge: str | None = None

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> Client:
        return cls(await connect(url, open_timeout=5, **kwargs))

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, message: Any) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = 5.0) -> Any:
        while True:
            reply = await self.recv_any(timeout)
            if not self._is_challenge(reply):
                return reply

    async def recv_any(self, timeout: float = 5.0) -> Any:
        """The next frame, AUTH challenges included (they are recorded as they pass)."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        reply = orjson.loads(frame)
        if self._is_challenge(reply):
            self.challenge = reply[1]
        return reply

    @staticmethod
    def _is_challenge(reply: Any) -> bool:
        return type(reply) is list and len(reply) == 2 and reply[0] == "AUTH"

    async def auth(self, keys: Keys, relay_url: str, challenge: str | None = None) -> list[Any]:
        """Answer the relay's challenge as `keys` (NIP-42); returns the relay's OK."""
        if self.challenge is None:
            await self.recv_any()
        event = keys.sign(
            22242,
            "",
            [["relay", relay_url], ["challenge", challenge or self.challenge or ""]],
        )
        await self.send(["AUTH", event])
        while True:
            reply = await self.recv()
            if reply[0] == "OK" and reply[1] == event["id"]:
                return list(reply)

    async def publish(self, event: dict[str, Any]) -> list[Any]:
        """Send an EVENT and return its OK."""
        await self.send(["EVENT", event])
        while True:
            reply = await self.recv()
            if reply[0] == "OK" and reply[1] == event.get("id"):
                return list(reply)

    async def req(self, sub_id: str, *filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Open a subscription and return its stored events, up to EOSE."""
        await self.send(["REQ", sub_id, *filters])
        events = []
        while True:
            reply = await self.recv()
            if reply[0] == "EVENT" and reply[1] == sub_id:
                events.append(reply[2])
            elif reply[0] == "EOSE" and reply[1] == sub_id:
                return events
            elif reply[0] == "CLOSED" and reply[1] == sub_id:
                raise SubscriptionClosed(reply[2])

    async def expect_silence(self, seconds: float = 0.3) -> None:
        """Nothing but AUTH challenges arrives for `seconds`."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                reply = await self.recv_any(left)
            except TimeoutError:
                return
            if not self._is_challenge(reply):
                raise AssertionError(f"expected nothing, got {reply!r}")


class SubscriptionClosed(Exception):
    pass
