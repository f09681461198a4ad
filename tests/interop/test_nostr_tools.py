"""Interop with nostr-tools (JavaScript), driven by tests/interop/js/interop.mjs.

The script connects to the relay with nostr-tools' `Relay`, prints one JSON line per
check with what it observed, and exits non-zero if any check failed. These tests run it
against an in-process relay and assert on the observations, cross-checking the store with
our own client. Node and npm are needed: the pinned packages are installed with `npm ci`
when tests/interop/js/node_modules is missing or out of date with package-lock.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from relay.net.server import RelayServer
from tests.conftest import fetch_by_ids, url_of
from tests.nostr import Client, Keys

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "interop.mjs"
SCRIPT_TIMEOUT = 60.0
NPM_CI_TIMEOUT = 300.0

CHECKS = (
    "publish",
    "stored_then_eose",
    "live_after_eose",
    "reject_future",
    "reject_bad_signature",
    "reject_bad_id",
    "rejected_not_stored",
    "count",
    "auth_dm",
)


def _installed_matches_lock() -> bool:
    """Whether node_modules holds every package of package-lock.json at its version."""
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    for path, meta in lock["packages"].items():
        if not path.startswith("node_modules/") or meta.get("optional"):
            continue
        manifest = JS_DIR / path / "package.json"
        if not manifest.is_file():
            return False
        if json.loads(manifest.read_text()).get("version") != meta["version"]:
            return False
    return True


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the pinned nostr-tools installed next to the script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node and npm are needed for the nostr-tools interop tests"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run them")
        pytest.skip(reason)
    if not _installed_matches_lock():
        # A sync module fixture: no relay or event loop is running yet.
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        assert _installed_matches_lock(), "npm ci did not install package-lock.json"
    return node


class Run:
    """One run of interop.mjs: its exit code, results by check name, and stderr."""

    def __init__(self, returncode: int, results: dict[str, dict[str, Any]], stderr: str) -> None:
        self.returncode = returncode
        self.results = results
        self.stderr = stderr

    def __getitem__(self, check: str) -> dict[str, Any]:
        assert check in self.results, (
            f"no result for {check!r}; got {json.dumps(self.results, indent=1)}\n"
            f"stderr:\n{self.stderr}"
        )
        return self.results[check]

    def explain(self, check: str) -> str:
        """The check's whole line (with the frames of a failed one) and stderr."""
        return f"{json.dumps(self.results.get(check), indent=1)}\nstderr:\n{self.stderr}"


async def run_script(node: str, url: str) -> Run:
    """Run interop.mjs against url without blocking the loop the relay runs on."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        url,
        cwd=JS_DIR,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"interop.mjs did not finish within {SCRIPT_TIMEOUT} s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode(errors="replace")
    results: dict[str, dict[str, Any]] = {}
    for line in out.decode().splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"interop.mjs printed a line that is not JSON: {line!r}\n{stderr}")
        results[result["check"]] = result
    assert proc.returncode is not None
    return Run(proc.returncode, results, stderr)


@pytest.fixture
async def run(node: str, relay: RelayServer) -> Run:
    return await run_script(node, url_of(relay))


async def test_every_check_passes(run: Run) -> None:
    assert sorted(run.results) == sorted(CHECKS), run.stderr
    failed = {name: r for name, r in run.results.items() if not r["ok"]}
    assert not failed, json.dumps(failed, indent=1) + "\nstderr:\n" + run.stderr
    assert run.returncode == 0, run.stderr


async def test_published_event_is_accepted_and_stored(run: Run, relay: RelayServer) -> None:
    result = run["publish"]
    assert (result["accepted"], result["reason"]) == (True, ""), run.explain("publish")
    event = result["event"]
    assert await fetch_by_ids(url_of(relay), event["id"]) == [event]


async def test_subscription_gets_stored_event_then_eose(run: Run) -> None:
    result = run["stored_then_eose"]
    assert result["eose"] is True, run.explain("stored_then_eose")
    assert result["closed"] is None, run.explain("stored_then_eose")
    assert result["before_eose"] == [run["publish"]["event"]], run.explain("stored_then_eose")


async def test_live_event_from_another_connection_arrives_after_eose(
    run: Run, relay: RelayServer
) -> None:
    result = run["live_after_eose"]
    assert result["accepted"] is True, run.explain("live_after_eose")
    assert result["error"] is None, run.explain("live_after_eose")
    live = result["event"]
    assert live["pubkey"] != run["publish"]["event"]["pubkey"]
    assert result["after_eose"] == [live], run.explain("live_after_eose")
    assert await fetch_by_ids(url_of(relay), live["id"]) == [live]


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        ("reject_future", "invalid: created_at is too far in the future"),
        ("reject_bad_signature", "invalid: bad signature"),
        ("reject_bad_id", "invalid: event id does not match its content"),
    ],
)
async def test_rejection_carries_the_relays_reason(run: Run, check: str, reason: str) -> None:
    result = run[check]
    assert result["accepted"] is False, run.explain(check)
    assert result["reason"] == reason, run.explain(check)


async def test_rejected_events_are_neither_stored_nor_broadcast(
    run: Run, relay: RelayServer
) -> None:
    result = run["rejected_not_stored"]
    assert result["error"] is None, run.explain("rejected_not_stored")
    assert result["found"] == [], run.explain("rejected_not_stored")
    assert result["live_subscription_event_ids"] == [
        run["publish"]["event"]["id"],
        run["live_after_eose"]["event"]["id"],
    ], run.explain("rejected_not_stored")
    assert await fetch_by_ids(url_of(relay), *result["queried_ids"]) == []


async def test_count_answers_with_the_number_of_matches(run: Run) -> None:
    result = run["count"]
    assert result["error"] is None, run.explain("count")
    assert result["count"] == 2, run.explain("count")


async def test_recipient_authenticates_and_reads_its_dm(run: Run) -> None:
    """nostr-tools answers the challenge (NIP-42); only then is the DM served."""
    result = run["auth_dm"]
    assert result["error"] is None, run.explain("auth_dm")
    assert result["before"]["closed"].startswith("auth-required: "), run.explain("auth_dm")
    assert result["before"]["events"] == [], run.explain("auth_dm")
    assert result["auth"]["ok"] is True, run.explain("auth_dm")
    assert result["after"]["events"] == [result["event"]], run.explain("auth_dm")


async def test_negentropy_sync_finds_the_difference(node: str, relay: RelayServer) -> None:
    """nostr-tools' NIP-77 `NegentropySync` over a socket: have and need exactly as they are."""
    keys = Keys()
    now = int(time.time())
    shared = [keys.sign(content=f"shared {n}", created_at=now - 3000 + n) for n in range(400)]
    only_relay = [keys.sign(content=f"relay {n}", created_at=now - 2000 + n) for n in range(30)]
    only_client = [keys.sign(content=f"client {n}", created_at=now - 1000 + n) for n in range(20)]
    client = await Client.connect(url_of(relay))
    for event in shared + only_relay + [keys.sign(kind=7, content="+")]:
        assert (await client.publish(event))[2] is True
    await client.close()
    request = {
        "filter": {"kinds": [1]},
        "items": [[e["created_at"], e["id"]] for e in shared + only_client],
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "negentropy_sync.mjs"),
        url_of(relay),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(request).encode()), SCRIPT_TIMEOUT
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    assert result["closed"] is None
    assert set(result["have"]) == {e["id"] for e in only_client}
    assert set(result["need"]) == {e["id"] for e in only_relay}
