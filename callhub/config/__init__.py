"""Settings: a TOML file plus CALLHUB_* environment overrides, validated once at start.

A bad value raises `ConfigError` naming the key and what is wrong
(`pbx[main].ring_cadence_seconds: must be > 0, got 0`); the CLI prints it and
exits. Secrets are masked in `Settings.masked()`. The modules: `models` (what
the daemon runs with), `file` (the TOML's shape), `env` (the overrides),
`values` (durations, addresses, URLs written as text), `problems` (errors).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from callhub.config.env import ENV_OVERRIDES, apply_env
from callhub.config.file import settings_from_mapping
from callhub.config.models import (
    DEFAULT_API_LISTEN,
    DEFAULT_CATEGORIES,
    DEFAULT_DATABASE_URL,
    DEFAULT_DESK_TARGETS,
    DEFAULT_FASTAGI_LISTEN,
    DEFAULT_INBOUND_CONTEXTS,
    DEFAULT_OUTBOUND_CONTEXTS,
    NO_TOKENS_WARNING,
    ROLES,
    ApiToken,
    PbxConfig,
    Settings,
    pbx_prefix,
)
from callhub.config.problems import ConfigError
from callhub.config.sms import apply_sms_env
from callhub.config.values import mask_url, parse_duration, parse_listen


def load_settings(path: str | Path | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (argument, else CALLHUB_CONFIG, else none) and apply the env."""
    env = os.environ if env is None else env
    path = path or env.get("CALLHUB_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config: no such file {str(path)!r}") from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"config: cannot read {str(path)!r}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config: {path} is not UTF-8 text (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"config: {path} is not valid TOML: nested too deeply") from None
    if isinstance(data.get("sms"), Mapping):  # CALLHUB_SMS_* secrets over the file's
        data["sms"] = apply_sms_env(data["sms"], env)
    return apply_env(settings_from_mapping(data), env)


__all__ = [
    "DEFAULT_API_LISTEN", "DEFAULT_CATEGORIES", "DEFAULT_DATABASE_URL", "DEFAULT_DESK_TARGETS",
    "DEFAULT_FASTAGI_LISTEN", "DEFAULT_INBOUND_CONTEXTS", "DEFAULT_OUTBOUND_CONTEXTS",
    "ENV_OVERRIDES", "NO_TOKENS_WARNING", "ROLES", "ApiToken", "ConfigError", "PbxConfig",
    "Settings", "apply_env", "load_settings", "mask_url", "parse_duration", "parse_listen",
    "pbx_prefix", "settings_from_mapping",
]
