"""permessage-deflate (RFC 7692) whose compressor lives for one write, not for the connection.

websockets keeps a zlib compressor (about 34 KiB with its settings) for as long as a client
that offered deflate stays connected, and most are idle most of the time. Here the frames
written together (a page of stored events, a commit's OKs) share one compressor, which is
let go when the write is done and made again for the next one.

Starting afresh at a message boundary needs nothing from the client: its decompressor
keeps its window, and a new compressor only refers back into its own output. So the
handshake does not announce server_no_context_takeover (with it, a client may reset its
decompressor between the frames of one write). It does ask the client not to carry its
own window between messages (client_no_context_takeover), so that no decompressor is kept
between the client's messages either.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension, ServerExtensionFactory
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame
from websockets.typing import ExtensionParameter

# websockets' own defaults for a server (enable_server_permessage_deflate).
WINDOW_BITS = 12
COMPRESS_SETTINGS = {"memLevel": 5}


class WriteDeflate(PerMessageDeflate):
    """PerMessageDeflate with a compressor made on demand and dropped by `release`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release()

    def encode(self, frame: Frame) -> Frame:
        # (With local_no_context_takeover, which a client may ask for, the base class
        # makes one per message itself.)
        if not self.local_no_context_takeover and "encoder" not in self.__dict__:
            self.encoder = zlib.compressobj(
                wbits=-self.local_max_window_bits, **self.compress_settings
            )
        return super().encode(frame)

    def release(self) -> None:
        """Let the compressor go; call only between messages (after a final frame)."""
        self.__dict__.pop("encoder", None)


class WriteDeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates as websockets does by default, and hands out WriteDeflate."""

    def __init__(self) -> None:
        super().__init__(
            client_no_context_takeover=True,
            server_max_window_bits=WINDOW_BITS,
            client_max_window_bits=WINDOW_BITS,
            compress_settings=COMPRESS_SETTINGS,
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        extension = WriteDeflate(
            negotiated.remote_no_context_takeover,
            negotiated.local_no_context_takeover,
            negotiated.remote_max_window_bits,
            negotiated.local_max_window_bits,
            negotiated.compress_settings,
        )
        return response, extension


def server_extensions(compression: str, sliding_window: bool) -> list[ServerExtensionFactory]:
    """The extensions offered back to clients: none, WriteDeflate, or websockets' own
    deflate keeping each connection's window (`deflate_sliding_window`)."""
    if compression == "none":
        return []
    if sliding_window:
        return [
            ServerPerMessageDeflateFactory(
                server_max_window_bits=WINDOW_BITS,
                client_max_window_bits=WINDOW_BITS,
                compress_settings=COMPRESS_SETTINGS,
            )
        ]
    return [WriteDeflateFactory()]


def release_compressors(extensions: Sequence[Extension]) -> None:
    """After a write: let a WriteDeflate's compressor go until the next one."""
    for extension in extensions:
        if type(extension) is WriteDeflate:
            extension.release()
