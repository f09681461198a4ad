"""The [nips] settings: booleans, kind lists and relay_url from TOML and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load


def test_defaults_switch_every_optional_nip_on_but_search() -> None:
    settings = load(environ={})
    for name in ("auth_enabled", "count_enabled", "vanish_enabled"):
        assert getattr(settings, name) is True
    assert settings.search_enabled is False
    assert settings.dm_privacy is True
    assert settings.auth_required_kinds == ()
    assert settings.public_url(7447) == "ws://127.0.0.1:7447/"


def test_toml_nips_table(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        "[nips]\n"
        'relay_url = "wss://relay.example.com"\n'
        "auth_required_for_writes = true\n"
        "auth_required_kinds = [7, 4, 7]\n"
        "search_enabled = true\n",
        encoding="utf-8",
    )
    settings = load(str(config), environ={})
    assert settings.public_url(1) == "wss://relay.example.com"
    assert settings.auth_required_for_writes is True
    assert settings.auth_required_kinds == (4, 7)
    assert settings.search_enabled is True
    policy = settings.auth_policy(1)
    assert policy.required_kinds == frozenset({4, 7})
    assert policy.relay_url == "wss://relay.example.com"


def test_environment_booleans_and_kinds() -> None:
    environ = {
        "RELAY_AUTH_ENABLED": "off",
        "RELAY_COUNT_ENABLED": "0",
        "RELAY_AUTH_REQUIRED_KINDS": "1, 30023",
    }
    settings = load(environ=environ)
    assert settings.auth_enabled is False
    assert settings.count_enabled is False
    assert settings.auth_required_kinds == (1, 30023)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RELAY_AUTH_ENABLED": "maybe"}, "true or false"),
        ({"RELAY_AUTH_REQUIRED_KINDS": "1,x"}, "kind numbers"),
        ({"RELAY_AUTH_REQUIRED_KINDS": "70000"}, "kinds from 0 to 65535"),
        ({"RELAY_RELAY_URL": "http://relay.example.com"}, "ws:// or wss://"),
    ],
)
def test_bad_values_are_config_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(environ=environ)
