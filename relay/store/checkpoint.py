"""Checkpoints of the WAL on a thread of their own, off the writer's commits.

With SQLite's automatic checkpoints, the commit that takes the WAL past 1,000 pages also
copies those pages into the database file and syncs it, while every event in the batch
waits for its OK. Here a second connection copies them in the background (a PASSIVE
checkpoint never blocks the writer), and the writer only forces a full checkpoint when the
WAL has grown past a bound, which a steady stream of commits can otherwise cause: SQLite
rewinds the WAL only when a checkpoint has caught up with every commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

# A WAL past this size is checkpointed by the writer before its next batch.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
# Seconds between two background checkpoints when no commit wakes the thread.
IDLE_SECONDS = 1.0


class Checkpointer:
    def __init__(self, path: str, wal_limit_bytes: int = WAL_LIMIT_BYTES) -> None:
        self.wal_path = path + "-wal"
        self.wal_limit_bytes = wal_limit_bytes
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA busy_timeout = 5000")
        self._committed = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)

    def take_over(self, writer: sqlite3.Connection) -> None:
        """Stop the writer's own checkpoints and keep its WAL file from staying huge."""
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")

    def start(self) -> None:
        self._thread.start()

    def after_commit(self, writer: sqlite3.Connection) -> None:
        """Wake the thread; if the WAL outgrew its bound, catch up now, on the writer."""
        self._committed.set()
        if _size(self.wal_path) > self.wal_limit_bytes:
            # Busy (a long read holds an old snapshot): the next commit tries again.
            with contextlib.suppress(sqlite3.Error):
                writer.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def stop(self) -> None:
        self._stopping = True
        self._committed.set()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while not self._stopping:
            self._committed.wait(IDLE_SECONDS)
            self._committed.clear()
            # Busy or failed: the next round, or the writer's bound, catches up.
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
