"""Settings: defaults < TOML file < RELAY_* environment variables < command line."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from relay.core.limits import Limits
from relay.core.nip11 import RelayInfo

ENV_PREFIX = "RELAY_"
# TOML may group keys under these tables; they are read as if written at the top.
SECTIONS = ("server", "info", "limits", "storage")


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
    # storage
    db: str = "./relay.sqlite"
    readers: int = 2
    synchronous: str = "FULL"
    purge_interval: int = 60
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

    @property
    def limits(self) -> Limits:
        names = {f.name for f in fields(Limits)}
        return Limits(**{name: getattr(self, name) for name in names})

    @property
    def info(self) -> RelayInfo:
        return RelayInfo(self.name, self.description, self.pubkey, self.contact, self.icon)


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Settings)}


def _convert(name: str, value: Any) -> Any:
    expected = FIELD_TYPES[name]
    if expected is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if type(value) is not int:
            raise ConfigError(f"{name} must be an integer, not {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, not {value!r}")
    return value


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


def validate(settings: Settings) -> Settings:
    if settings.pubkey and not re.fullmatch(r"[0-9a-f]{64}", settings.pubkey):
        raise ConfigError("pubkey must be 64 lowercase hex characters")
    if settings.compression not in ("deflate", "none"):
        raise ConfigError("compression must be deflate or none")
    if settings.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError("synchronous must be FULL, EXTRA or NORMAL")
    if not 0 <= settings.port <= 65535:
        raise ConfigError("port must be from 0 to 65535")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {settings.log_level!r}"
        )
    for name in (
        "max_message_length",
        "max_subscriptions",
        "max_filters",
        "max_subid_length",
        "readers",
    ):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    return settings


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
