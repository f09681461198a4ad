"""The outbox hands queued frames to the socket in batches; each still arrives on its own."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from relay.net.outbox import MAX_BATCH_BYTES, Outbox


def frames_to_send() -> list[bytes]:
    # Small frames and a few large ones, more than several batches' worth in all.
    small = [b'["NOTICE","%d"]' % n for n in range(3000)]
    large = [b'["NOTICE","%s"]' % (b"x" * (MAX_BATCH_BYTES // 2))] * 6
    return small[:1000] + large[:3] + small[1000:] + large[3:]


async def test_queued_frames_arrive_as_separate_messages_in_order() -> None:
    expected = frames_to_send()

    async def handler(ws: ServerConnection) -> None:
        outbox = Outbox(ws, max_bytes=64 * MAX_BATCH_BYTES, on_overflow=lambda: None)
        for frame in expected:
            outbox.put(frame)
        sender = asyncio.create_task(outbox.run())
        await ws.wait_closed()
        sender.cancel()

    async with (
        serve(handler, "127.0.0.1", 0, max_size=None) as server,
        connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", max_size=None) as ws,
    ):
        received = [await asyncio.wait_for(ws.recv(), 10) for _ in expected]
    assert received == [frame.decode() for frame in expected]
