"""Settings of the abuse controls: lists, numbers, TOML tables and the environment."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from relay.config import FIELD_TYPES, ConfigError, load

ALICE = "a" * 64
BOB = "b" * 64


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_tables_lists_and_numbers_from_toml(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""
        [limits]
        max_event_size = 5000
        min_pow_difficulty = 12

        [rate_limits]
        event_rate_per_ip = 2.5
        event_burst_per_ip = 7
        req_rate_per_connection = 3
        max_connections_per_ip = 4
        trusted_proxy_header = "X-Real-IP"

        [policy]
        pubkey_allowlist = ["{ALICE}", "{BOB}"]
        kind_denylist = [4, 1059]
        write_policies = ["tests.policies:no_spam"]
        write_policy_plugin = "./whitelist.js"
        plugin_timeout = 0.5

        [server]
        ping_interval = 0
        """,
    )
    settings = load(config, {}, {})
    assert settings.max_event_size == 5000
    assert settings.limits.min_pow_difficulty == 12
    assert settings.event_rate_per_ip == 2.5
    assert settings.event_burst_per_ip == 7
    assert settings.req_rate_per_connection == 3.0
    assert settings.max_connections_per_ip == 4
    assert settings.trusted_proxy_header == "X-Real-IP"
    assert settings.pubkey_allowlist == (ALICE, BOB)
    assert settings.kind_denylist == (4, 1059)
    assert settings.write_policies == ("tests.policies:no_spam",)
    assert settings.write_policy_plugin == "./whitelist.js"
    assert settings.plugin_timeout == 0.5
    assert settings.ping_interval == 0.0


def test_lists_and_numbers_from_the_environment() -> None:
    settings = load(
        None,
        {},
        {
            "RELAY_PUBKEY_DENYLIST": f" {ALICE} ,{BOB},",
            "RELAY_KIND_ALLOWLIST": "1, 7,30023",
            "RELAY_EVENT_RATE_PER_PUBKEY": "0.25",
            "RELAY_WRITE_POLICIES": "",
        },
    )
    assert settings.pubkey_denylist == (ALICE, BOB)
    assert settings.kind_allowlist == (1, 7, 30023)
    assert settings.event_rate_per_pubkey == 0.25
    assert settings.write_policies == ()


def test_defaults_fit_a_public_relay_and_leave_lists_off() -> None:
    settings = load(None, {}, {})
    assert (settings.event_rate_per_ip, settings.event_burst_per_ip) == (10.0, 100)
    assert (settings.req_rate_per_connection, settings.req_burst_per_connection) == (10.0, 50)
    assert settings.max_connections_per_ip == 64
    assert settings.rate_limit_exempt == ("127.0.0.0/8", "::1/128")
    assert settings.event_rate_per_pubkey == 0.0
    assert settings.pubkey_allowlist == ()
    assert settings.kind_denylist == ()
    assert settings.trusted_proxy_header == ""
    assert settings.min_pow_difficulty == 0


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("[policy]\npubkey_allowlist = 'abc'\n", {}, "pubkey_allowlist"),
        ("[policy]\npubkey_denylist = ['ABC']\n", {}, "pubkey_denylist"),
        ("[policy]\npubkey_denylist = [1]\n", {}, "pubkey_denylist"),
        ("[policy]\nkind_allowlist = ['one']\n", {}, "kind_allowlist"),
        ("[policy]\nkind_denylist = [70000]\n", {}, "kind_denylist"),
        ("[policy]\nkind_denylist = [true]\n", {}, "kind_denylist"),
        ("[policy]\nkind_denylist = 4\n", {}, "kind_denylist"),
        ("[policy]\nwrite_policies = ['no colon']\n", {}, "write_policies"),
        ("[policy]\nplugin_fallback = 'maybe'\n", {}, "plugin_fallback"),
        ("[policy]\nplugin_timeout = 0\n", {}, "plugin_timeout"),
        ("[rate_limits]\nevent_rate_per_ip = -1\n", {}, "event_rate_per_ip"),
        ("[rate_limits]\nevent_rate_per_ip = 'fast'\n", {}, "event_rate_per_ip"),
        ("[rate_limits]\nevent_rate_per_ip = true\n", {}, "event_rate_per_ip"),
        ("[rate_limits]\nevent_rate_per_ip = nan\n", {}, "event_rate_per_ip"),
        ("[rate_limits]\nevent_burst_per_ip = 0\n", {}, "event_burst_per_ip"),
        ("[limits]\nmin_pow_difficulty = 257\n", {}, "min_pow_difficulty"),
        ("[limits]\nmax_req_results = 0\n", {}, "max_req_results"),
        ("", {"RELAY_KIND_DENYLIST": "1,x"}, "kind_denylist"),
        ("", {"RELAY_QUERY_TIMEOUT": "soon"}, "query_timeout"),
        ("", {"RELAY_PING_TIMEOUT": "inf"}, "ping_timeout"),
    ],
)
def test_bad_abuse_settings_are_refused(
    tmp_path: Path, toml: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, toml), {}, environ)


def test_readme_config_example_loads_and_names_every_setting(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "example.toml"
    config.write_text(example, encoding="utf-8")
    load(str(config), {}, {})
    names = {line.split("=", 1)[0].strip() for line in example.splitlines() if "=" in line}
    missing = set(FIELD_TYPES) - names
    assert not missing, f"settings missing from README's config example: {sorted(missing)}"
