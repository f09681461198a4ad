"""deploy/nginx.conf in front of two relay instances on one PostgreSQL database, with a
real nginx (Debian's package; .ci/run installs it), as docker-compose.yml runs them.

The configuration is the file the compose stack mounts, with only the upstreams' host
names and the listening port replaced (there is no Docker engine to give them names here):
the WebSocket upgrade passes, each new connection goes to the less busy instance, a note
published through one reaches a subscriber on the other, NIP-11 answers through it, and
the client's address reaches the relays in X-Real-IP while an address a client writes
there itself does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from coincurve import PrivateKey

from relay.net.server import RelayServer
from tests.conftest import RelayFactory, free_port, url_of, wait_listening
from tests.http_client import http_request
from tests.nostr import Client, Keys
from tests.test_nip86 import pubkey_of, rpc

NGINX_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
NOSTR_JSON = "application/nostr+json"
# An address from a documentation range (RFC 5737), blocked on the relays.
SPOOFED = "203.0.113.9"


@pytest.fixture
def relay_backend() -> str:
    return "postgres"


def nginx_binary() -> str:
    """Skips where nginx is missing, but fails in CI, which installs it (.ci/run)."""
    # /usr/sbin is not on every user's PATH.
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is needed, and CI must run these tests")
        pytest.skip("nginx is needed")
    return found


def site_config(first: int, second: int, front: int) -> str:
    """deploy/nginx.conf with the compose service names and port 80 replaced."""
    text = NGINX_CONF.read_text()
    for old, new in (
        ("server relay1:7447 ", f"server 127.0.0.1:{first} "),
        ("server relay2:7447 ", f"server 127.0.0.1:{second} "),
        ("listen 80;", f"listen 127.0.0.1:{front};"),
    ):
        # A change to the file's shape must fail here, not test something else.
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


def main_config(root: Path, site: Path) -> str:
    """What the nginx image's own nginx.conf provides around the site, kept in `root`."""
    temp = "".join(
        f"    {name}_temp_path {root / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} warn;\n"
        "events { worker_connections 128; }\n"
        f"http {{\n    access_log off;\n{temp}    include {site};\n}}\n"
    )


@pytest.fixture
async def instances(start_relay: RelayFactory) -> list[RelayServer]:
    """Two instances as the compose file configures them (trusting X-Real-IP)."""
    admin = PrivateKey()
    settings = {"trusted_proxy_header": "X-Real-IP", "admin_pubkeys": (pubkey_of(admin),)}
    relays = [await start_relay(**settings) for _ in range(2)]
    for relay in relays:
        assert await rpc(relay, admin, "blockip", SPOOFED, "a client's own X-Real-IP") is True
    return relays


@pytest.fixture
def nginx(instances: list[RelayServer], tmp_path: Path) -> Iterator[int]:
    """nginx on an ephemeral port in front of both instances; stopped afterwards."""
    binary = nginx_binary()
    first, second = instances
    root = tmp_path / "nginx"
    root.mkdir()
    port = free_port()
    site = root / "default.conf"
    site.write_text(site_config(first.port, second.port, port))
    conf = root / "nginx.conf"
    conf.write_text(main_config(root, site))
    proc = subprocess.Popen(
        [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(proc, "127.0.0.1", port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_one_url_reaches_both_instances_and_their_live_events(
    instances: list[RelayServer], nginx: int
) -> None:
    url = f"ws://127.0.0.1:{nginx}/"
    keys = Keys()
    subscriber = await Client.connect(url)
    try:
        assert await subscriber.req("live", {"authors": [keys.pubkey]}) == []
        publisher = await Client.connect(url)
        try:
            # The second connection went to the other instance (least_conn, or round robin).
            assert sorted(len(r.connections) for r in instances) == [1, 1]
            note = keys.sign(content="through the proxy")
            assert (await publisher.publish(note))[2] is True
            assert await subscriber.recv(10) == ["EVENT", "live", note]
        finally:
            await publisher.close()
    finally:
        await subscriber.close()


async def test_nip11_answers_through_the_proxy(instances: list[RelayServer], nginx: int) -> None:
    response = await http_request(nginx, headers={"Accept": NOSTR_JSON})
    assert response.status == 200
    assert response.headers["content-type"].startswith(NOSTR_JSON)
    assert 1 in response.json()["supported_nips"]


async def test_the_proxy_overwrites_a_client_written_address(
    instances: list[RelayServer], nginx: int
) -> None:
    spoofing = {"additional_headers": {"X-Real-IP": SPOOFED}}
    # The relays trust the header: straight to an instance, that address is blocked ...
    for relay in instances:
        with pytest.raises(Exception, match="403"):
            await Client.connect(url_of(relay), **spoofing)
    # ... through nginx, the relays see the address nginx saw instead, and serve it.
    client = await Client.connect(f"ws://127.0.0.1:{nginx}/", **spoofing)
    try:
        assert await client.req("q", {"limit": 1}) == []
    finally:
        await client.close()
