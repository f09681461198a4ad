"""docker-compose.yml and deploy/nginx.conf: the shape the README promises.

There is no Docker engine here, so this checks what can be checked without one: the YAML
parses (with PyYAML, skipped where it is not installed), PostgreSQL 15 with a health
check, two relay instances on the project's Dockerfile and the one database, trusting the
header nginx sets, and nginx passing the WebSocket upgrade to both. tests/test_nginx_front.py
runs a real nginx with deploy/nginx.conf in front of two instances.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from relay.app import is_postgres_url
from relay.config import FIELD_TYPES

ROOT = Path(__file__).resolve().parent.parent
RELAYS = ("relay1", "relay2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_postgres_15_with_a_health_check(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "healthcheck" in postgres
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])


@pytest.mark.parametrize("name", RELAYS)
def test_relay_instances_share_one_database(compose: dict[str, Any], name: str) -> None:
    relay = compose["services"][name]
    assert relay["build"] == "."
    env = relay["environment"]
    assert is_postgres_url(env["RELAY_DB"])
    assert env["RELAY_DB"].split("@", 1)[1].startswith("postgres:")
    assert relay["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Every RELAY_* variable names a real setting (a typo would be silently ignored).
    for key in env:
        assert key.startswith("RELAY_")
        assert key[len("RELAY_") :].lower() in FIELD_TYPES
    assert compose["services"]["relay1"]["environment"] == env


def test_proxy_is_the_one_url(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = [s for s, v in services.items() if v.get("ports")]
    assert published == ["proxy"]
    proxy = services["proxy"]
    assert any("deploy/nginx.conf" in v for v in proxy["volumes"])
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for name in RELAYS:
        assert re.search(rf"server {name}:7447\b", conf)
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "proxy_http_version 1.1;" in conf
    header = services["relay1"]["environment"]["RELAY_TRUSTED_PROXY_HEADER"]
    assert f"proxy_set_header {header} $remote_addr;" in conf


def test_image_can_speak_postgresql() -> None:
    """The Dockerfile installs the postgres extra, or RELAY_DB=postgresql:// would fail."""
    assert '"/src[postgres]"' in (ROOT / "Dockerfile").read_text()
