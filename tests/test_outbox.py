"""The outbox hands queued frames to the socket in batches; each still arrives on its own."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from relay.net.outbox import MAX_BATCH_BYTES, Outbox, text_frames
from tests.conftest import wait_for
from tests.raw_ws import RawClient


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


async def test_frames_wait_in_the_outbox_while_the_transport_is_paused() -> None:
    """Flow control: what the socket does not take stays queued (and counted), in order."""
    expected = [b'["NOTICE","%d %s"]' % (n, b"x" * 1000) for n in range(10_000)]
    seen: dict[str, object] = {}

    async def handler(ws: ServerConnection) -> None:
        outbox = Outbox(ws, max_bytes=64 * MAX_BATCH_BYTES, on_overflow=lambda: None)
        sender = asyncio.create_task(outbox.run())
        for frame in expected:
            outbox.put(frame)
            await asyncio.sleep(0)  # a loop turn each: every frame is flushed on its own
        seen.update(paused=ws.paused, queued=outbox.queued_bytes)
        await wait_for(lambda: outbox.idle, timeout=60)
        await ws.close()
        sender.cancel()

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        raw = await RawClient.connect(server.sockets[0].getsockname()[1])  # not reading yet
        await wait_for(lambda: "queued" in seen, timeout=30)
        assert seen["paused"] is True
        assert isinstance(seen["queued"], int)
        assert seen["queued"] > 0
        frames = await raw.read_frames(timeout=60)
        raw.close()
    assert [payload for opcode, payload in frames if opcode == 0x1] == expected


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_are_serialized_as_websockets_does_for_a_server(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"a" * (size % 256)
    websockets_frame = Frame(Opcode.TEXT, payload).serialize(mask=False)
    assert text_frames([payload]) == websockets_frame
    assert text_frames([payload, b"[]"]) == websockets_frame + b"\x81\x02[]"
