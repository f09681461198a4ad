"""Signature checks in a child process of their own (see relay/child.py).

On threads, every call into libsecp256k1 gives up the GIL and must win it back from the
event loop: under load that hand-off costs more than the check itself. Messages after the
length prefix:

    parent -> child   b"V" (pubkey:32 id:32 sig:64)*    check these signatures
    child -> parent   b"K" valid:uint8*                 1 where the signature is good
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from relay.child import ChildProcess, ChildRequestError, Handler, serve
from relay.core.event import Event
from relay.core.signature import verify_bytes

RECORD = 128


class VerifyProcess:
    def __init__(self) -> None:
        self.child = ChildProcess(__name__)

    async def start(self) -> None:
        await self.child.start()

    @property
    def restarts(self) -> int:
        return self.child.restarts

    async def verify_many(self, events: Sequence[Event]) -> list[bool]:
        request = b"V" + b"".join(
            bytes.fromhex(e.pubkey) + bytes.fromhex(e.id) + bytes.fromhex(e.sig) for e in events
        )
        results = await self.child.call([request], expect=b"K")
        if len(results) != len(events):
            raise ChildRequestError(f"{len(results)} results for {len(events)} signatures")
        return [valid == 1 for valid in results]

    async def close(self) -> None:
        await self.child.close()


def check(record: bytes) -> bool:
    return verify_bytes(record[:32], record[32:64], record[64:128])


def handle(message: bytes) -> bytes:
    if message[:1] != b"V" or (len(message) - 1) % RECORD:
        raise ValueError("malformed check request")
    return b"K" + bytes(check(message[at : at + RECORD]) for at in range(1, len(message), RECORD))


def prepare(argv: Sequence[str]) -> tuple[Handler, Callable[[], None]]:
    return handle, lambda: None


if __name__ == "__main__":
    sys.exit(serve(prepare))
