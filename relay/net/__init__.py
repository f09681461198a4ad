"""asyncio I/O, kept thin: drives the sans-I/O core and awaits the store."""
