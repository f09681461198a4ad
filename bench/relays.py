"""The relays under test, each started as its own process on 127.0.0.1 and a free port."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.load import raise_file_limit

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_WITHIN = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system time of the process and its children (the write process), all threads."""
    return sum(_own_cpu_seconds(each) for each in process_tree(pid))


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def resident_bytes(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE_SIZE


def _is_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RelayUnderTest:
    """A relay process; subclasses say how to start it."""

    name = "relay"
    durable = True

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    @staticmethod
    def available() -> bool:
        return True

    def command(self, db: Path | str) -> list[str]:
        raise NotImplementedError

    def start(self, db: Path | str) -> None:
        """Start on `db`: a file, or for PgRelay a postgresql:// URL."""
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(db),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={
                    **os.environ,
                    **self.env,
                    "PYTHONPATH": _with_repository(os.environ.get("PYTHONPATH")),
                },
                preexec_fn=raise_file_limit,
            )
        deadline = time.monotonic() + START_WITHIN
        while not _is_listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not listen; see {self.log}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class PyRelay(RelayUnderTest):
    """This repository's relay, as `python -m relay` with its default settings."""

    name = "pyrelay"

    def command(self, db: Path | str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "relay",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(db),
            "--log-level",
            "WARNING",
        ]


class PgRelay(PyRelay):
    """The same relay on PostgreSQL: started with a postgresql:// URL as its database."""

    name = "pyrelay (PostgreSQL)"


NOSTR_RELAY_CONFIG = """\
DEBUG: false
relay_name: bench
storage:
  sqlalchemy.url: sqlite+aiosqlite:///{db}
  num_concurrent_reqs: 10
  num_concurrent_adds: 2
  validators:
    - nostr_relay.validators.is_not_too_large
    - nostr_relay.validators.is_signed
    - nostr_relay.validators.is_recent
    - nostr_relay.validators.is_not_hellthread
verification:
  nip05_verification: disabled
gunicorn:
  bind: 127.0.0.1:{port}
  workers: 1
  loglevel: warning
logging:
  version: 1
  root: {{level: WARNING}}
message_timeout: 1800
subscription_limit: 64
max_limit: 6000
oldest_event: 315360000
max_event_size: 65536
"""


class NostrRelay(RelayUnderTest):
    """PyPI `nostr-relay` with the defaults of its own config.yaml, on uvicorn."""

    name = "nostr-relay"

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("nostr_relay") is not None

    def command(self, db: Path | str) -> list[str]:
        config = self.workdir / "nostr-relay.yaml"
        config.write_text(NOSTR_RELAY_CONFIG.format(db=db, port=self.port))
        launcher = "import sys; from nostr_relay.cli import main; sys.exit(main())"
        return [sys.executable, "-c", launcher, "-c", str(config), "serve", "--use-uvicorn"]


class LocalRelay(RelayUnderTest):
    """rust-nostr's in-memory LocalRelay (nostr-sdk), not durable: a reference."""

    name = "LocalRelay"
    durable = False

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("nostr_sdk") is not None

    def command(self, db: Path | str) -> list[str]:
        return [sys.executable, "-m", "bench.local_relay", str(self.port)]


def _with_repository(pythonpath: str | None) -> str:
    """The bench package importable from the relay processes' working directory."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, pythonpath) if p)
