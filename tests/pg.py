"""PostgreSQL for the tests: a throwaway schema per test on the server CI runs.

The server is RELAY_TEST_POSTGRES (default postgresql://root@127.0.0.1:5432/test). Each
test gets a schema of its own, named in the URL's search_path (asyncpg passes URL
parameters on as server settings), and dropped afterwards. Where the server cannot be
reached the PostgreSQL tests are skipped with the reason, except under CI, where they fail:
.ci/run starts the server first, so an unreachable one is a fault, not a choice.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

SERVER = os.environ.get("RELAY_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
_reachable: str | None = None  # "" once the server answered, else why not


async def _why_unreachable() -> str:
    global _reachable
    if _reachable is None:
        try:
            conn = await asyncpg.connect(SERVER, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _reachable = f"PostgreSQL at {SERVER} is unreachable: {exc}"
        else:
            await conn.close()
            _reachable = ""
    return _reachable


async def require_postgres() -> None:
    reason = await _why_unreachable()
    if not reason:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def url_with_schema(schema: str) -> str:
    separator = "&" if "?" in SERVER else "?"
    return f"{SERVER}{separator}search_path={schema}"


@asynccontextmanager
async def schema_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty schema, dropped with everything in it afterwards."""
    await require_postgres()
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(SERVER, timeout=5)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield url_with_schema(schema)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def empty_tables(conn: asyncpg.Connection) -> None:
    """Forget every event and tombstone of the schema `conn` is on, keeping its tables."""
    # DELETE, not TRUNCATE: on a few rows it is many times cheaper (no new files).
    for table in ("events", "tags", "deleted_ids", "deleted_addresses", "vanished"):
        await conn.execute(f"DELETE FROM {table}")
