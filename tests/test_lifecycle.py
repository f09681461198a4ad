"""The relay as a process: durability across kill -9, clean shutdown on signals, the CLI,
its configuration sources and their precedence, and the database it leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from relay import __version__
from relay.config import ConfigError, Settings, load
from relay.store.sqlite import SCHEMA_VERSION
from tests.conftest import (
    RelayProcess,
    fetch_by_ids,
    free_port,
    is_listening,
    relay_command,
    wait_for,
    wait_listening,
)
from tests.nostr import Client, Keys

ProcessFactory = Callable[..., RelayProcess]
EXIT_WITHIN = 15.0  # seconds a stopping relay may take to exit


@pytest.fixture(autouse=True)
def no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test decides every RELAY_* variable the relay sees (the defaults otherwise)."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)


# Processes started with arbitrary arguments (the relay_process fixture fixes them).


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    proc.send_signal(signum)
    return proc.wait(EXIT_WITHIN)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def factory(
        *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            relay_command(*args),
            cwd=cwd,
            env=child_env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def run_relay(
    *args: str, cwd: Path, env: dict[str, str] | None = None, within: float = EXIT_WITHIN
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end, which it must reach by itself within `within` seconds."""
    try:
        return subprocess.run(
            relay_command(*args),
            cwd=cwd,
            env=child_env(env),
            capture_output=True,
            text=True,
            timeout=within,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"relay {' '.join(args)} still running after {within}s") from exc


def nip11(host: str, port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{host}:{port}/", headers={"Accept": "application/nostr+json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"] == "application/nostr+json"
        document: dict[str, Any] = json.loads(response.read())
    return document


def stored_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0].hex() for row in conn.execute("SELECT id FROM events")}


def distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


# Clients talking to a process.


async def started(process: RelayProcess) -> RelayProcess:
    await asyncio.to_thread(process.start)
    return process


async def send_all(client: Client, events: list[dict[str, Any]]) -> None:
    for event in events:
        await client.send(["EVENT", event])


async def oks_for(client: Client, ids: set[str]) -> dict[str, list[Any]]:
    """Read until every id in `ids` has its OK; any frame other than OK fails the test."""
    oks: dict[str, list[Any]] = {}
    while not ids <= oks.keys():
        frame = await client.recv(timeout=10)
        assert frame[0] == "OK", frame
        assert frame[1] not in oks, f"second OK for {frame[1]}"
        oks[frame[1]] = frame
    return oks


async def frames_until_closed(client: Client) -> list[Any]:
    frames = []
    try:
        while True:
            frames.append(await client.recv(timeout=EXIT_WITHIN))
    except ConnectionClosed:
        return frames


async def query_ids(url: str, ids: list[str]) -> set[str]:
    return {e["id"] for e in await fetch_by_ids(url, *ids)}


def winner(versions: list[dict[str, Any]]) -> dict[str, Any]:
    """The version a relay keeps: newest created_at, then lowest id."""
    return min(versions, key=lambda e: (-e["created_at"], e["id"]))


# Durability.


async def test_acknowledged_events_survive_kill_9(relay_process: ProcessFactory) -> None:
    process = await started(relay_process())
    author, profile_owner = Keys(), Keys()
    now = int(time.time())
    notes = [author.sign(content=f"note {n}", created_at=now - 500 + n) for n in range(180)]
    # One address written from both connections at once, two versions per second: the
    # connections race for it, and same-second versions tie.
    profiles = [
        profile_owner.sign(kind=0, content=f"profile {n}", created_at=now - 100 + n // 2)
        for n in range(20)
    ]
    batches: list[list[dict[str, Any]]] = [[], []]
    for n, note in enumerate(notes):
        batches[n % 2].append(note)
        if n % 9 == 8:
            batches[n % 2].append(profiles[n // 9])
    clients = [await Client.connect(process.url) for _ in batches]

    async def publish(client: Client, events: list[dict[str, Any]]) -> dict[str, list[Any]]:
        sender = asyncio.create_task(send_all(client, events))
        oks = await oks_for(client, {e["id"] for e in events})
        await sender
        return oks

    results = await asyncio.gather(*(publish(c, b) for c, b in zip(clients, batches, strict=True)))
    process.kill()  # SIGKILL right after the last OK: no chance to flush anything more

    oks = {k: v for result in results for k, v in result.items()}
    assert len(oks) == 200
    assert all(oks[e["id"]][2] is True for e in notes), "a plain note was refused"
    accepted_profiles = [p for p in profiles if oks[p["id"]][2] is True]
    for profile in profiles:
        if oks[profile["id"]][2] is False:
            assert oks[profile["id"]][3].startswith("duplicate: "), oks[profile["id"]]

    restarted = await started(relay_process())
    assert restarted.db == process.db
    found = await query_ids(restarted.url, [e["id"] for e in notes])
    assert found == {e["id"] for e in notes}
    client = await Client.connect(restarted.url)
    kept = await client.req("profile", {"kinds": [0], "authors": [profile_owner.pubkey]})
    await client.close()
    assert kept == [winner(accepted_profiles)]


# Signals.


def peer_events_received(stderr: str, client: Client) -> int | None:
    """How many EVENTs the relay says it read from `client` (its disconnect log line)."""
    peer = "{}:{}".format(*client.ws.local_address[:2])
    for line in stderr.splitlines():
        if f"{peer} disconnected" in line:
            return int(line.rsplit("(", 1)[1].split(",")[1].split()[0])
    return None


async def test_sigterm_under_load_exits_cleanly_keeping_what_it_acknowledged(
    relay_process: ProcessFactory,
) -> None:
    """SIGTERM while events pour in: exit 0, clients closed with 1001, every OK is true or
    an `error:` refusal, and what was acknowledged is there after a restart."""
    process = await started(relay_process())
    assert process.proc is not None
    listener = await Client.connect(process.url)
    assert await listener.req("live", {"kinds": [1]}) == []
    publishers = [await Client.connect(process.url) for _ in range(2)]
    keys = Keys()
    sent = [[keys.sign(content=f"{p}-{n}") for n in range(150)] for p in range(2)]
    for publisher, events in zip(publishers, sent, strict=True):
        await send_all(publisher, events)
    process.proc.send_signal(signal.SIGTERM)

    received = await asyncio.gather(*(frames_until_closed(c) for c in [listener, *publishers]))
    code = await asyncio.to_thread(process.proc.wait, EXIT_WITHIN)
    stderr = process.stderr()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    for client in (listener, *publishers):
        assert client.ws.close_code == 1001

    accepted: set[str] = set()
    refused: set[str] = set()
    for events, frames in zip(sent, received[1:], strict=True):
        oks = {frame[1]: frame for frame in frames if frame[0] == "OK"}
        assert len(oks) == len(frames), "only OKs are expected on a publishing connection"
        # Whether each event got an OK at all is test_sigterm_answers_events_already_sent.
        assert oks.keys() <= {e["id"] for e in events}
        for ok in oks.values():
            assert ok[2] is True or ok[3].startswith("error: "), ok
        accepted |= {i for i, ok in oks.items() if ok[2] is True}
        refused |= {i for i, ok in oks.items() if ok[2] is False}

    live = {frame[2]["id"] for frame in received[0] if frame[0] == "EVENT"}
    assert live <= accepted, "an event was broadcast but not acknowledged as stored"

    restarted = await started(relay_process())
    all_ids = [e["id"] for events in sent for e in events]
    found = await query_ids(restarted.url, all_ids)
    assert accepted <= found
    assert not found & refused


async def test_sigterm_answers_events_already_sent(relay_process: ProcessFactory) -> None:
    """Events that reached a busy relay before SIGTERM all get an OK before it closes."""
    process = await started(relay_process())
    assert process.proc is not None
    keys = Keys()
    publishers = [await Client.connect(process.url) for _ in range(4)]
    for publisher in publishers:
        assert (await publisher.publish(keys.sign(content="warm-up")))[2] is True
    sent = [[keys.sign(content=f"{p}-{n}") for n in range(400)] for p in range(len(publishers))]
    pid = process.proc.pid
    os.kill(pid, signal.SIGSTOP)  # busy: the events wait in the relay's socket buffers
    try:
        sending = (send_all(p, events) for p, events in zip(publishers, sent, strict=True))
        await asyncio.wait_for(asyncio.gather(*sending), 10)
        os.kill(pid, signal.SIGTERM)
    finally:
        os.kill(pid, signal.SIGCONT)
    received = await asyncio.gather(*(frames_until_closed(p) for p in publishers))
    code = await asyncio.to_thread(process.proc.wait, EXIT_WITHIN)
    stderr = process.stderr()
    assert code == 0, stderr
    for publisher, events, frames in zip(publishers, sent, received, strict=True):
        assert publisher.ws.close_code == 1001
        oks = {frame[1]: frame for frame in frames if frame[0] == "OK"}
        for ok in oks.values():
            assert ok[2] is True or ok[3].startswith("error: "), ok
        read = (peer_events_received(stderr, publisher) or 0) - 1  # less the warm-up
        unanswered = sum(1 for e in events if e["id"] not in oks)
        assert unanswered == 0, f"{unanswered} of {len(events)} unanswered, relay read {read}"


# Seconds a relay under load may take to exit after SIGTERM: a correctness bound (it took
# 15 s when its clients kept sending or did not read), not a measure of speed.
PROMPT_EXIT = 5.0


class Blaster:
    """Publishes without pause, reading its replies as they come (its library answers
    pings); `sent` counts the EVENTs handed to the socket."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.keys = Keys()
        self.sent: list[str] = []
        self.oks: dict[str, list[Any]] = {}
        self.tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._read())]

    async def _send(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                event = self.keys.sign(content=f"blast {len(self.sent)}")
                await self.client.send(["EVENT", event])
                self.sent.append(event["id"])
                await asyncio.sleep(0)  # the loop also runs the reader

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.client.recv(timeout=EXIT_WITHIN)
                assert frame[0] == "OK", frame
                self.oks[frame[1]] = frame


async def test_sigterm_under_load_exits_promptly_answering_what_was_sent_before(
    relay_process: ProcessFactory,
) -> None:
    """Clients that never stop sending, and one that does not read a large result: the
    relay answers every EVENT sent before the signal and exits within seconds."""
    process = await started(relay_process())
    assert process.proc is not None
    author = Keys()
    big = [author.sign(content=f"{n} " + "x" * 60_000) for n in range(64)]
    loader = await Client.connect(process.url)
    await send_all(loader, big)
    assert all(ok[2] for ok in (await oks_for(loader, {e["id"] for e in big})).values())
    await loader.close()
    # 3.8 MB it never reads: the close frame cannot reach it behind them.
    stuck = await Client.connect(process.url, max_queue=1)
    await stuck.send(["REQ", "all", {"authors": [author.pubkey]}])
    blasters = [Blaster(await Client.connect(process.url)) for _ in range(2)]
    await wait_for(lambda: all(len(b.oks) >= 20 for b in blasters), timeout=30)

    sent_before = [list(b.sent) for b in blasters]
    started_at = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.proc.wait, EXIT_WITHIN)
    elapsed = time.monotonic() - started_at
    await asyncio.gather(*(task for b in blasters for task in b.tasks))
    stderr = process.stderr()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert elapsed < PROMPT_EXIT, f"exit took {elapsed:.1f}s"
    for blaster, before in zip(blasters, sent_before, strict=True):
        assert blaster.client.ws.close_code == 1001
        unanswered = [i for i in before if i not in blaster.oks]
        assert not unanswered, f"{len(unanswered)} of {len(before)} sent before unanswered"
        for ok in blaster.oks.values():
            assert ok[2] is True or ok[3].startswith("error: "), ok
    stuck.ws.transport.abort()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_exits_zero_and_closes_subscribers(
    relay_process: ProcessFactory, signum: int
) -> None:
    process = await started(relay_process())
    assert process.proc is not None
    client = await Client.connect(process.url)
    assert await client.req("open", {}) == []
    started_at = time.monotonic()
    code = await asyncio.to_thread(stop, process.proc, signum)
    assert code == 0, process.stderr()
    assert time.monotonic() - started_at < EXIT_WITHIN
    assert await frames_until_closed(client) == []
    assert client.ws.close_code == 1001
    assert not is_listening("127.0.0.1", process.port)


# Command line and configuration.


def can_bind(host: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


async def test_host_port_and_db_flags(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    host = "127.0.0.2"  # any loopback address but the default 127.0.0.1
    if not can_bind(host):
        pytest.skip(f"cannot bind {host} here")
    port = free_port()
    db = tmp_path / "not" / "yet" / "there.sqlite"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = spawn("--host", host, "--port", str(port), "--db", str(db), cwd=workdir)
    await asyncio.to_thread(wait_listening, proc, host, port)
    assert not is_listening("127.0.0.1", port)
    client = await Client.connect(f"ws://{host}:{port}")
    event = Keys().sign()
    assert (await client.publish(event))[2] is True
    await client.close()
    assert await asyncio.to_thread(stop, proc) == 0
    assert stored_ids(db) == {event["id"]}
    assert list(workdir.iterdir()) == []


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_sections(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    write(
        tmp_path / "relay.toml",
        textwrap.dedent(f"""
            [server]
            host = "127.0.0.1"
            port = {port}

            [storage]
            db = "data/from-config.sqlite"

            [info]
            name = "Config Relay"
            description = "set in a TOML file"

            [limits]
            max_limit = 42
            max_subscriptions = 7
        """),
    )
    proc = spawn("--config", "relay.toml", cwd=tmp_path)
    wait_listening(proc, "127.0.0.1", port)
    document = nip11("127.0.0.1", port)
    assert document["name"] == "Config Relay"
    assert document["description"] == "set in a TOML file"
    assert document["limitation"]["max_limit"] == 42
    assert document["limitation"]["max_subscriptions"] == 7
    assert (tmp_path / "data" / "from-config.sqlite").is_file()
    assert stop(proc) == 0


def test_precedence_file_then_environment_then_command_line(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    file_port, env_port, cli_port = distinct_free_ports(3)
    write(
        tmp_path / "relay.toml",
        f'port = {file_port}\nname = "from file"\ndescription = "from file"\n'
        f"[limits]\nmax_limit = 10\ndefault_limit = 5\nmax_filters = 3\n",
    )
    env = {"RELAY_PORT": str(env_port), "RELAY_NAME": "from env", "RELAY_MAX_LIMIT": "20"}
    env["RELAY_MAX_FILTERS"] = "4"
    proc = spawn(
        "--config", "relay.toml", "--port", str(cli_port), "--db", "cli.sqlite",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    wait_listening(proc, "127.0.0.1", cli_port)
    document = nip11("127.0.0.1", cli_port)
    assert document["name"] == "from env"  # env over file
    assert document["description"] == "from file"  # file over default
    limitation = document["limitation"]
    assert (limitation["max_limit"], limitation["default_limit"]) == (20, 5)
    assert limitation["max_filters"] == 4
    assert not is_listening("127.0.0.1", file_port)
    assert not is_listening("127.0.0.1", env_port)
    assert (tmp_path / "cli.sqlite").is_file()
    assert stop(proc) == 0


def test_relay_config_variable_names_the_file(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    config = write(tmp_path / "env.toml", f'[server]\nport = {port}\n[info]\nname = "via env"\n')
    proc = spawn("--db", "x.sqlite", cwd=tmp_path, env={"RELAY_CONFIG": str(config)})
    wait_listening(proc, "127.0.0.1", port)
    assert nip11("127.0.0.1", port)["name"] == "via env"
    assert stop(proc) == 0


def test_defaults() -> None:
    settings = load(None, {}, environ={})
    assert settings == Settings()
    assert settings.port == 7447
    assert settings.db == "./relay.sqlite"
    assert settings.host == "127.0.0.1"
    assert settings.synchronous == "FULL"


@pytest.mark.parametrize(
    ("in_file", "in_env", "on_command_line", "expected"),
    [
        (None, None, None, 7447),
        (1001, None, None, 1001),
        (1001, "1002", None, 1002),
        (None, "1002", None, 1002),
        (1001, "1002", 1003, 1003),
        (1001, None, 1003, 1003),
    ],
)
def test_precedence_of_each_source(
    tmp_path: Path,
    in_file: int | None,
    in_env: str | None,
    on_command_line: int | None,
    expected: int,
) -> None:
    config = write(tmp_path / "c.toml", "" if in_file is None else f"[server]\nport = {in_file}\n")
    environ = {} if in_env is None else {"RELAY_PORT": in_env}
    assert load(str(config), {"port": on_command_line}, environ).port == expected


def test_command_line_config_beats_relay_config_variable(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.toml", 'name = "chosen"\n')
    other = write(tmp_path / "other.toml", 'name = "other"\n')
    assert load(str(chosen), {}, {"RELAY_CONFIG": str(other)}).name == "chosen"
    assert load(None, {}, {"RELAY_CONFIG": str(other)}).name == "other"


def test_environment_values_are_converted_and_unrelated_variables_ignored() -> None:
    settings = load(None, {}, {"RELAY_MAX_LIMIT": " 77 ", "RELAY_SOMETHING_ELSE": "x"})
    assert settings.max_limit == 77


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("bogus = 1\n", {}, "bogus"),
        ("[limits]\nmax_limt = 5\n", {}, "max_limt"),
        ("[server]\nport = 'eighty'\n", {}, "port"),
        ("[server]\nport = true\n", {}, "port"),
        ("[info]\nname = 5\n", {}, "name"),
        ("[server]\nport = 65536\n", {}, "port"),
        ("[server]\nmetrics_port = 65536\n", {}, "metrics_port"),
        ("port = -1\n", {}, "port"),
        ("[storage]\nsynchronous = 'OFF'\n", {}, "synchronous"),
        ("", {"RELAY_PORT": "eighty"}, "port"),
        ("[server\n", {}, "cannot read config"),
    ],
)
def test_load_refuses_bad_settings(
    tmp_path: Path, toml: str, environ: dict[str, str], message: str
) -> None:
    config = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError, match=message):
        load(str(config), {}, environ)


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(str(tmp_path / "missing.toml"), {}, {})


BAD_COMMAND_LINES: list[tuple[list[str], dict[str, str], str, str]] = [
    # (arguments, environment, config file text, expected in stderr)
    (["--config", "relay.toml"], {}, "unknown_key = 1\n", "unknown_key"),
    (["--config", "relay.toml"], {}, "[limits]\nmax_limit = 'many'\n", "max_limit"),
    (["--config", "relay.toml"], {}, "[server\nport = 1\n", "relay.toml"),
    (["--config", "missing.toml"], {}, "", "missing.toml"),
    (["--config", "."], {}, "", "cannot read config"),  # a directory
    (["--port", "70000"], {}, "", "port"),
    (["--port", "eighty"], {}, "", "--port"),
    ([], {"RELAY_PORT": "eighty"}, "", "port"),
    ([], {"RELAY_SYNCHRONOUS": "sometimes"}, "", "synchronous"),
    ([], {"RELAY_PUBKEY": "not-a-key"}, "", "pubkey"),
    ([], {"RELAY_CONFIG": "missing.toml"}, "", "missing.toml"),
]


@pytest.mark.parametrize(("args", "env", "toml", "expected"), BAD_COMMAND_LINES)
def test_bad_configuration_exits_with_a_readable_error(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str, expected: str
) -> None:
    write(tmp_path / "relay.toml", toml)
    result = run_relay(*args, "--db", "relay.sqlite", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "relay.sqlite").exists(), "nothing is created before settings hold"


@pytest.mark.parametrize(
    ("args", "env"), [(["--log-level", "LOUD"], {}), ([], {"RELAY_LOG_LEVEL": "verbose"})]
)
def test_unknown_log_level_exits_with_a_readable_error(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = run_relay(*args, "--port", "0", "--db", "relay.sqlite", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "LOUD" in result.stderr or "verbose" in result.stderr


def test_write_policy_that_cannot_be_loaded_exits_with_a_readable_error(tmp_path: Path) -> None:
    env = {"RELAY_WRITE_POLICIES": "no_such_module:policy"}
    result = run_relay("--port", "0", "--db", "relay.sqlite", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no_such_module" in result.stderr


def test_unopenable_database_exits_with_a_readable_error(tmp_path: Path) -> None:
    result = run_relay("--port", "0", "--db", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0
    assert str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_file_that_is_not_a_database_exits_with_a_readable_error(tmp_path: Path) -> None:
    # SQLite opens any file lazily; this one fails at the first statement, on its thread.
    db = write(tmp_path / "notes.txt", "not a database\n" * 500)
    result = run_relay("--port", "0", "--db", str(db), cwd=tmp_path)
    assert result.returncode != 0
    assert str(db) in result.stderr
    assert "not a database" in result.stderr
    assert "Traceback" not in result.stderr
    assert db.read_text(encoding="utf-8") == "not a database\n" * 500


@pytest.mark.parametrize("taken_by", ["relay", "metrics"])
def test_port_in_use_exits_with_a_readable_error(tmp_path: Path, taken_by: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        if taken_by == "relay":
            args, env = ["--port", port], {}
        else:
            args, env = ["--port", "0"], {"RELAY_METRICS_PORT": port}
        result = run_relay(*args, "--db", "relay.sqlite", cwd=tmp_path, env=env, within=8)
    assert result.returncode != 0
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


async def test_db_path_with_home_directory(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {"HOME": str(tmp_path / "home")}
    proc = spawn("--port", str(port), "--db", "~/data/relay.sqlite", cwd=workdir, env=env)
    await asyncio.to_thread(wait_listening, proc, "127.0.0.1", port)
    assert await asyncio.to_thread(stop, proc) == 0
    assert (tmp_path / "home" / "data" / "relay.sqlite").is_file()


async def test_no_reader_connections_is_refused_or_still_answers(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    proc = spawn("--port", str(port), "--db", "r.sqlite", cwd=tmp_path, env={"RELAY_READERS": "0"})
    try:
        await asyncio.to_thread(wait_listening, proc, "127.0.0.1", port)
    except AssertionError as exited:
        refusal = str(exited)
    else:
        refusal = ""
    if refusal:  # refusing the setting is fine, with a readable error
        assert proc.returncode not in (None, 0)
        assert "readers" in refusal
        assert "Traceback" not in refusal
        return
    client = await Client.connect(f"ws://127.0.0.1:{port}")
    try:
        assert await asyncio.wait_for(client.req("s", {}), 3) == []
    finally:
        await client.close()


def test_version(tmp_path: Path) -> None:
    result = run_relay("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"relay {__version__}"


def test_help(tmp_path: Path) -> None:
    result = run_relay("--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--host", "--port", "--db", "--config", "--log-level", "--version"):
        assert option in result.stdout
    assert "RELAY_" in result.stdout
    assert not (tmp_path / "relay.sqlite").exists()


# The database file.


async def test_fresh_database_schema_and_restart_keeps_data(
    relay_process: ProcessFactory,
) -> None:
    process = await started(relay_process())
    assert process.proc is not None
    client = await Client.connect(process.url)
    event = Keys().sign(kind=30000, tags=[["d", "x"]])
    assert (await client.publish(event))[2] is True
    await client.close()
    assert await asyncio.to_thread(stop, process.proc) == 0

    with closing(sqlite3.connect(process.db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"events", "tags", "deleted_ids", "deleted_addresses"} <= tables
    assert stored_ids(process.db) == {event["id"]}

    again = await started(relay_process())
    assert again.proc is not None
    client = await Client.connect(again.url)
    assert await client.req("s", {"#d": ["x"]}) == [event]
    await client.close()
    assert await asyncio.to_thread(stop, again.proc) == 0
    with closing(sqlite3.connect(again.db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert stored_ids(again.db) == {event["id"]}
