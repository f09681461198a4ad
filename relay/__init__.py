"""A Nostr relay: sans-I/O protocol core, pluggable storage, asyncio WebSocket server."""

__version__ = "0.1.0"
