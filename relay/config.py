"""Settings: defaults < TOML file < RELAY_* environment variables < command line."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from relay.core.auth import AuthPolicy
from relay.core.event import HEX64, MAX_KIND
from relay.core.limits import Limits
from relay.core.nip11 import RelayInfo
from relay.core.retention import Retention, parse_max_ages

ENV_PREFIX = "RELAY_"
# TOML may group keys under these tables; they are read as if written at the top.
SECTIONS = ("server", "info", "limits", "storage", "rate_limits", "policy", "nips", "mirror")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# List-valued settings holding kinds; the other lists hold strings.
KIND_LISTS = frozenset(
    {"auth_required_kinds", "kind_allowlist", "kind_denylist", "retention_keep_kinds"}
)


DEFAULT_LIMITS = Limits()


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    # server
    host: str = "127.0.0.1"
    port: int = 7447
    log_level: str = "INFO"
    max_outbox_bytes: int = 8 * 1024 * 1024
    compression: str = "deflate"
    # Keep each client's deflate window between writes, as strfry's slidingWindow: live
    # events compress about 30% smaller, for about 34 KiB more per connected client.
    deflate_sliding_window: bool = False
    # Seconds between WebSocket pings and to wait for the pong (0: no pings).
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    # Seconds to wait for a peer's close frame before dropping the TCP connection.
    close_timeout: float = 10.0
    # Seconds a REQ's stored-event query may run before it is interrupted.
    query_timeout: float = 10.0
    # Signature checks in a child process instead of on threads that wait for the GIL.
    verify_process: bool = True
    # Prometheus metrics at /metrics: on the relay's own port, or on metrics_host and
    # metrics_port when either is set (0 with a host: a free port), to keep them private.
    metrics_enabled: bool = True
    metrics_host: str = ""
    metrics_port: int = 0
    # storage
    # A SQLite file, or a postgresql:// URL (relay/store/postgres.py).
    db: str = "./relay.sqlite"
    readers: int = 2
    synchronous: str = "FULL"
    # SQLite writes in a child process, so commits do not wait on the event loop's GIL.
    write_process: bool = True
    purge_interval: int = 60
    # Retention: "kind:seconds" entries, "*:seconds" for every other kind; an
    # event older than its kind's age is pruned, and refused when published.
    retention_max_age: tuple[str, ...] = ()
    # Kinds never pruned, by age or by budget.
    retention_keep_kinds: tuple[int, ...] = (0, 3, 10002)
    # Bytes of database pages in use (PostgreSQL: the tables' size) past which the oldest
    # prunable events go (0: none).
    storage_budget_bytes: int = 0
    # Events pruned per writer turn: ingest waits at most one batch.
    retention_batch: int = 100
    # info (NIP-11)
    name: str = "pyrelay"
    description: str = "A Nostr relay"
    pubkey: str = ""
    contact: str = ""
    icon: str = ""
    # limits (NIP-11 limitation)
    max_message_length: int = DEFAULT_LIMITS.max_message_length
    max_subscriptions: int = DEFAULT_LIMITS.max_subscriptions
    max_filters: int = DEFAULT_LIMITS.max_filters
    max_limit: int = DEFAULT_LIMITS.max_limit
    default_limit: int = DEFAULT_LIMITS.default_limit
    max_subid_length: int = DEFAULT_LIMITS.max_subid_length
    max_event_tags: int = DEFAULT_LIMITS.max_event_tags
    max_content_length: int = DEFAULT_LIMITS.max_content_length
    created_at_lower_limit: int = DEFAULT_LIMITS.created_at_lower_limit
    created_at_upper_limit: int = DEFAULT_LIMITS.created_at_upper_limit
    max_event_size: int = DEFAULT_LIMITS.max_event_size
    max_tag_value_length: int = DEFAULT_LIMITS.max_tag_value_length
    max_filter_values: int = DEFAULT_LIMITS.max_filter_values
    max_req_results: int = DEFAULT_LIMITS.max_req_results
    min_pow_difficulty: int = DEFAULT_LIMITS.min_pow_difficulty
    max_live_entries: int = DEFAULT_LIMITS.max_live_entries
    max_queries_in_flight: int = DEFAULT_LIMITS.max_queries_in_flight
    max_held_bytes: int = DEFAULT_LIMITS.max_held_bytes
    max_neg_sessions: int = DEFAULT_LIMITS.max_neg_sessions
    max_neg_items: int = DEFAULT_LIMITS.max_neg_items
    # Events in all negentropy sets held at once (72 bytes each).
    max_neg_items_total: int = 4_000_000
    # Relay-wide budgets. Live filter entries of all connections together (a REQ past it
    # is CLOSED "restricted: ..."), and bytes of stored results read but not yet written
    # to sockets (a query past it waits for others' results to drain).
    max_live_entries_total: int = 2_000_000
    max_result_bytes_in_flight: int = 64 * 1024 * 1024
    # A stored-event query is read in pages of at most this many events or bytes; between
    # pages other connections' queries get the readers, and the query waits while the
    # client's outbox holds more than a page.
    query_page_events: int = 500
    query_page_bytes: int = 256 * 1024
    # rate limits: token buckets, refill per second and burst size (rate 0: no limit)
    # Defaults fit a public relay: a person's client stays far below them, a flood does not.
    event_rate_per_ip: float = 10.0
    event_burst_per_ip: int = 100
    event_rate_per_pubkey: float = 0.0
    event_burst_per_pubkey: int = 20
    req_rate_per_connection: float = 10.0
    req_burst_per_connection: int = 50
    max_connections_per_ip: int = 64
    # Client addresses (CIDR) the rates and the per-IP connection cap do not apply to:
    # the single user on their own machine. Behind a reverse proxy on the same host, set
    # trusted_proxy_header, or every client would come from here.
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # The header a trusted reverse proxy puts the client address in; "" trusts none.
    trusted_proxy_header: str = ""
    # policy
    pubkey_allowlist: tuple[str, ...] = ()
    pubkey_denylist: tuple[str, ...] = ()
    kind_allowlist: tuple[int, ...] = ()
    kind_denylist: tuple[int, ...] = ()
    # Python write-policy callables as "module:function", run in order.
    write_policies: tuple[str, ...] = ()
    # A strfry-compatible write-policy plugin command; "" runs none.
    write_policy_plugin: str = ""
    plugin_timeout: float = 2.0
    # What an event gets when the plugin fails: "reject" (error:) or "accept".
    plugin_fallback: str = "reject"
    # NIP-86 management API: the pubkeys whose NIP-98 signed requests may moderate.
    admin_pubkeys: tuple[str, ...] = ()
    # nips: optional protocol features, each advertised in NIP-11 exactly when on.
    # The URL clients use for this relay (NIP-42, NIP-62); "" means ws://host:port/.
    relay_url: str = ""
    auth_enabled: bool = True
    auth_required_for_writes: bool = False
    auth_required_for_reads: bool = False
    auth_required_kinds: tuple[int, ...] = ()
    # Kinds 4, 13, 14, 15, 1059 go only to their authenticated author or `p` recipient.
    dm_privacy: bool = True
    count_enabled: bool = True
    # Off by default: the FTS5 index makes every insert cost the writer about twice as much
    # (bench/README.md); operators who want NIP-50 switch it on.
    search_enabled: bool = False
    vanish_enabled: bool = True
    # NIP-77 negentropy sync; a session idle this many seconds is closed.
    negentropy_enabled: bool = True
    neg_idle_seconds: float = 60.0
    # mirror: relays (ws:// or wss:// URLs) whose events matching mirror_filter (one JSON
    # filter) are followed live and caught up by NIP-77 on every (re)connect.
    mirror_peers: tuple[str, ...] = ()
    mirror_filter: str = "{}"

    def public_url(self, port: int) -> str:
        """relay_url, or the URL a client on this host reaches the listening port by."""
        return self.relay_url or f"ws://{self.host}:{port}/"

    @property
    def metrics_apart(self) -> bool:
        """Metrics on a listener of their own rather than on the relay's port."""
        return self.metrics_enabled and bool(self.metrics_host or self.metrics_port)

    def auth_policy(self, port: int) -> AuthPolicy:
        return AuthPolicy(
            enabled=self.auth_enabled,
            relay_url=self.public_url(port),
            required_for_writes=self.auth_required_for_writes,
            required_for_reads=self.auth_required_for_reads,
            required_kinds=frozenset(self.auth_required_kinds),
            protect_dms=self.dm_privacy,
        )

    @property
    def limits(self) -> Limits:
        names = {f.name for f in fields(Limits)} - {"restricted_writes"}
        restricted = bool(self.pubkey_allowlist or self.kind_allowlist)
        return Limits(**{name: getattr(self, name) for name in names}, restricted_writes=restricted)

    @property
    def retention(self) -> Retention:
        ages, default = parse_max_ages(self.retention_max_age)
        return Retention(
            ages,
            default,
            frozenset(self.retention_keep_kinds),
            self.storage_budget_bytes,
            self.retention_batch,
        )

    @property
    def info(self) -> RelayInfo:
        return RelayInfo(self.name, self.description, self.pubkey, self.contact, self.icon)


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Settings)}


def _convert(name: str, value: Any) -> Any:
    expected = FIELD_TYPES[name]
    if expected is bool:
        return _convert_bool(name, value)
    if expected is tuple:
        if name in KIND_LISTS:
            return _convert_kinds(name, value)
        return _convert_strings(name, value)
    if expected is float:
        return _convert_float(name, value)
    if expected is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if type(value) is not int:
            raise ConfigError(f"{name} must be an integer, not {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, not {value!r}")
    return value


def _convert_float(name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if type(value) not in (int, float) or value != value or value in (float("inf"), -float("inf")):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    return float(value)


def _convert_strings(name: str, value: Any) -> tuple[str, ...]:
    """A list of strings: a TOML array, or comma-separated text (environment, CLI)."""
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name} must be a list of strings, not {value!r}")
    return tuple(value)


def _convert_bool(name: str, value: Any) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _convert_kinds(name: str, value: Any) -> tuple[int, ...]:
    """A list of kinds: a TOML array, or comma-separated numbers (environment, CLI)."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        if not all(v.isascii() and v.isdigit() for v in items):
            raise ConfigError(f"{name} must be comma-separated kind numbers, not {value!r}")
        items = [int(v) for v in items]
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{name} must be a list of kinds, not {value!r}")
    if not all(type(v) is int and 0 <= v <= MAX_KIND for v in items):
        raise ConfigError(f"{name} must hold kinds from 0 to {MAX_KIND}")
    return tuple(sorted(set(items)))


def from_mapping(base: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    changes = {}
    for name, value in values.items():
        if name not in FIELD_TYPES:
            raise ConfigError(f"{origin}: unknown setting {name!r}")
        changes[name] = _convert(name, value)
    return replace(base, **changes)


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in FIELD_TYPES
    }


# Counts and sizes where 0 would refuse everything or divide by nothing.
AT_LEAST_ONE = (
    "max_message_length",
    "max_subscriptions",
    "max_filters",
    "max_subid_length",
    "readers",
    "max_event_size",
    "max_tag_value_length",
    "max_filter_values",
    "max_req_results",
    "event_burst_per_ip",
    "event_burst_per_pubkey",
    "req_burst_per_connection",
    "max_live_entries",
    "max_queries_in_flight",
    "max_held_bytes",
    "max_neg_sessions",
    "max_neg_items",
    "max_neg_items_total",
    "max_live_entries_total",
    "max_result_bytes_in_flight",
    "query_page_events",
    "query_page_bytes",
    "retention_batch",
)


def validate(settings: Settings) -> Settings:
    if settings.pubkey and not HEX64.fullmatch(settings.pubkey):
        raise ConfigError("pubkey must be 64 lowercase hex characters")
    if settings.compression not in ("deflate", "none"):
        raise ConfigError("compression must be deflate or none")
    if settings.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError("synchronous must be FULL, EXTRA or NORMAL")
    if not 0 <= settings.port <= 65535:
        raise ConfigError("port must be from 0 to 65535")
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigError("metrics_port must be from 0 to 65535")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {settings.log_level!r}"
        )
    _validate_abuse_settings(settings)
    if settings.relay_url and not re.fullmatch(r"wss?://[^/\s]+(/\S*)?", settings.relay_url):
        raise ConfigError("relay_url must be a ws:// or wss:// URL")
    for name in AT_LEAST_ONE:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    return settings


def _validate_abuse_settings(settings: Settings) -> None:
    for name in ("pubkey_allowlist", "pubkey_denylist", "admin_pubkeys"):
        for pubkey in getattr(settings, name):
            if not HEX64.fullmatch(pubkey):
                raise ConfigError(f"{name}: {pubkey!r} is not 64 lowercase hex characters")
    for entry in settings.write_policies:
        if not re.fullmatch(r"[\w.]+:\w+", entry):
            raise ConfigError(f"write_policies: {entry!r} is not module:function")
    if settings.plugin_fallback not in ("reject", "accept"):
        raise ConfigError("plugin_fallback must be reject or accept")
    for cidr in settings.rate_limit_exempt:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"rate_limit_exempt: {cidr!r} is not an address or network") from None
    if not 0 <= settings.min_pow_difficulty <= 256:
        raise ConfigError("min_pow_difficulty must be from 0 to 256")
    for name in FIELD_TYPES:
        if FIELD_TYPES[name] is float and getattr(settings, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    try:
        parse_max_ages(settings.retention_max_age)
    except ValueError as error:
        raise ConfigError(f"retention_max_age: {error}") from None
    if settings.storage_budget_bytes < 0:
        raise ConfigError("storage_budget_bytes must not be negative")
    if settings.plugin_timeout <= 0 or settings.query_timeout <= 0:
        raise ConfigError("plugin_timeout and query_timeout must be more than 0")


def load(
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    settings = Settings()
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        settings = from_mapping(settings, read_toml(config_file), str(config_file))
    settings = from_mapping(settings, read_environment(environ), "environment")
    settings = from_mapping(
        settings, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line"
    )
    return validate(settings)
