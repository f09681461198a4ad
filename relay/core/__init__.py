"""Sans-I/O protocol core: no asyncio, no sockets, no database."""
