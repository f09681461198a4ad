"""The web page at `/`: served for browsers beside NIP-11, its BIP-340 code checked against
BIP-340's test vectors (node) and by the relay, and the page driven end to end in Debian's
chromium through Playwright, with a screenshot.

Set UPDATE_SCREENSHOT=1 to write the screenshot to docs/screenshot.png (the README's);
otherwise it goes to the test's temporary folder, so a test run leaves the tree as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.core.event import parse_event
from relay.core.signature import verify
from relay.net.server import RelayServer
from tests.conftest import RelayFactory, url_of
from tests.http_client import NOSTR_JSON, http_request
from tests.nostr import Client, Keys

REPOSITORY = Path(__file__).resolve().parent.parent
JS_DIR = REPOSITORY / "tests" / "interop" / "js"
SCHNORR = REPOSITORY / "relay" / "web" / "schnorr.js"
SCREENSHOT = REPOSITORY / "docs" / "screenshot.png"
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
NODE_TIMEOUT = 60.0
# Milliseconds the page has for each thing awaited (it signs with BigInt arithmetic).
PAGE_TIMEOUT_MS = 30_000
INFO = {"name": "Demo relay", "description": "A relay for the browser test", "contact": "ops@x.y"}


def _needed(tool: str | None, what: str) -> str:
    """The tool's path; skips without it, but fails in CI, which installs it (.ci/run)."""
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is needed, and CI must run these tests")
        pytest.skip(f"{what} is needed")
    return tool


async def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    node = _needed(shutil.which("node"), "node")
    proc = await asyncio.create_subprocess_exec(
        node,
        *args,
        cwd=JS_DIR,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


# --- HTTP ---


async def test_a_browser_gets_the_page_and_a_client_still_gets_nip11(relay: RelayServer) -> None:
    page = await http_request(relay.port, headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="app.js">' in page.body
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["vary"] == "Accept"
    info = await http_request(relay.port, headers={"Accept": NOSTR_JSON})
    assert info.headers["content-type"] == NOSTR_JSON
    assert info.headers["vary"] == "Accept"
    assert 1 in info.json()["supported_nips"]


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/app.js", "text/javascript; charset=utf-8", b"runDemo"),
        ("/schnorr.js", "text/javascript; charset=utf-8", b"BIP0340/challenge"),
        ("/style.css", "text/css; charset=utf-8", b".figures"),
    ],
)
async def test_the_page_files_are_served(
    relay: RelayServer, path: str, content_type: str, marker: bytes
) -> None:
    response = await http_request(relay.port, path=path)
    assert response.status == 200
    assert response.headers["content-type"] == content_type
    assert marker in response.body
    head = await http_request(relay.port, method="HEAD", path=path)
    assert head.body == b""
    assert head.headers["content-length"] == str(len(response.body))


# --- The page's signing code ---


async def test_the_page_signs_as_bip340s_test_vectors_say() -> None:
    done = await run_node("--test", "schnorr.test.mjs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^# pass 21$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^# fail 0$", done.stdout, re.MULTILINE), done.stdout


SIGN_A_NOTE = """
import { hexToBytes, signEvent } from %s;
const content = 'quote " backslash \\\\ line\\nbreak \\u0001 \\u2028 é 🎉';
console.log(JSON.stringify(await signEvent(hexToBytes(process.argv[1]), {
  kind: 1, created_at: 1700000000, tags: [["t", "x"], ["e", "", "wss://r/"]], content,
})));
"""


async def test_a_note_the_page_signs_passes_the_relays_own_checks() -> None:
    """Content with escapes and non-ASCII: the id must be NIP-01's hash as Python has it."""
    keys = Keys()
    script = SIGN_A_NOTE % json.dumps(SCHNORR.as_uri())
    done = await run_node("--input-type=module", "-e", script, keys.secret.to_hex())
    assert done.returncode == 0, done.stderr
    event = parse_event(json.loads(done.stdout))  # raises when the id is not the hash
    assert event.pubkey == keys.pubkey
    assert event.content == 'quote " backslash \\ line\nbreak \u0001 \u2028 é 🎉'
    assert verify(event)


# --- The page in a browser ---


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _needed(CHROMIUM if HAVE_CHROMIUM else None, "Debian's chromium")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            headless=True,
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_the_page_shows_the_relay_and_runs_the_demo_end_to_end(
    start_relay: RelayFactory, browser: Any, tmp_path: Path
) -> None:
    relay = await start_relay(**INFO)
    relay.store_figures.max_age = 0  # every poll reads the database: figures are exact
    keys = Keys()
    watcher = await Client.connect(url_of(relay))
    for n in range(3):
        assert (await watcher.publish(keys.sign(content=f"earlier note {n}")))[2] is True
    assert await watcher.req("notes", {"kinds": [1], "limit": 0}) == []

    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"http://127.0.0.1:{relay.port}/")
    expect = pytest.importorskip("playwright.async_api").expect
    await expect(page.locator("#name")).to_have_text(INFO["name"], timeout=PAGE_TIMEOUT_MS)
    await expect(page.locator("#description")).to_have_text(INFO["description"])
    await expect(page.locator("#about")).to_contain_text(INFO["contact"])
    nips = await page.locator("#nips a").all_text_contents()
    assert {"01", "11", "42"} <= set(nips)
    await expect(page.locator("#limits")).to_contain_text("max message length")
    await expect(page.locator("#relay-url")).to_have_text(f"ws://127.0.0.1:{relay.port}/")
    # The watcher's connection, and the three notes it published this minute.
    await expect(page.locator("#events")).to_have_text("3", timeout=PAGE_TIMEOUT_MS)
    await expect(page.locator("#connections")).to_have_text("1")
    await expect(page.locator("#rate")).to_have_text("3")

    content = "Hello from the browser test!"
    await page.fill("#content", content)
    await page.click("#run")
    await expect(page.locator("body")).to_have_attribute(
        "data-demo", "done", timeout=PAGE_TIMEOUT_MS
    )
    outputs = {
        name: await page.locator(f'[data-step="{name}"] .output').text_content() or ""
        for name in ("keys", "subscribe", "sign", "publish", "live", "tamper")
    }
    pubkey = re.search(r"public key\s+([0-9a-f]{64})", outputs["keys"])
    assert pubkey is not None, outputs["keys"]
    published = outputs["publish"].splitlines()[-1]
    assert re.fullmatch(r'← \["OK","[0-9a-f]{64}",true,""\]', published), published
    assert json.dumps(content) in outputs["live"]
    refused = outputs["tamper"].splitlines()[-1]
    assert '"invalid: event id does not match its content"]' in refused, refused
    assert json.dumps("hello from the browser test!") in outputs["tamper"]

    # The relay stored the browser's note, signed as it should be, and only that one.
    arrived = await watcher.recv()
    assert arrived[:2] == ["EVENT", "notes"]
    note = arrived[2]
    assert (note["pubkey"], note["content"]) == (pubkey.group(1), content)
    assert verify(parse_event(note))
    assert await watcher.req("mine", {"authors": [pubkey.group(1)]}) == [note]
    await watcher.close()

    await expect(page.locator("#events")).to_have_text("4", timeout=PAGE_TIMEOUT_MS)
    assert errors == []
    shot = tmp_path / "screenshot.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)
