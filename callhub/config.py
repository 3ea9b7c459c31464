"""Settings: a TOML file plus CALLHUB_* environment overrides, validated once at start.

A bad value raises `ConfigError` naming the key and what is wrong; the CLI
prints it and exits. Secrets are masked in `Settings.masked()`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///callhub.db"
DEFAULT_API_LISTEN = "127.0.0.1:8080"
DEFAULT_FASTAGI_LISTEN = "127.0.0.1:4573"
ROLES = ("viewer", "supervisor", "admin")
DEFAULT_CATEGORIES = ("inquiry", "complaint", "repair", "other")
DEFAULT_INBOUND_CONTEXTS = ("from-pstn", "from-trunk", "from-external")
DEFAULT_OUTBOUND_CONTEXTS = ("to-pstn", "outbound-allroutes")
# The desk's targets for today's figures (`[desk.targets]`); rates are 0..1.
DEFAULT_DESK_TARGETS: Mapping[str, float] = {
    "within_rings_rate": 0.9, "answer_rate": 0.95, "missed": 0.0, "abandoned": 0.0,
    "pending_callbacks": 0.0, "median_time_to_callback_minutes": 30.0,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class PbxConfig:
    """One Asterisk PBX: how to reach its AMI and how to read its calls."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5038
    username: str | None = None
    secret: str | None = None
    ring_cadence_seconds: float = 5.0
    inbound_contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    outbound_contexts: tuple[str, ...] = DEFAULT_OUTBOUND_CONTEXTS
    voicemail_extensions: tuple[str, ...] = ()
    short_abandon_seconds: float = 5.0
    agents: Mapping[str, str] = field(default_factory=dict)
    lines: Mapping[str, str] = field(default_factory=dict)

    def line_for(self, did: str | None) -> str | None:
        """The configured line name of a DID, else the DID itself."""
        if did is None:
            return None
        return self.lines.get(did, did)


@dataclass(frozen=True, slots=True)
class ApiToken:
    role: str
    token: str


@dataclass(frozen=True, slots=True)
class Settings:
    pbxs: tuple[PbxConfig, ...] = ()
    database_url: str = DEFAULT_DATABASE_URL
    api_listen: tuple[str, int] = ("127.0.0.1", 8080)
    fastagi_listen: tuple[str, int] = ("127.0.0.1", 4573)
    api_tokens: tuple[ApiToken, ...] = ()
    metrics_token: str | None = None
    timezone: str = "UTC"
    stale_call_seconds: float = 4 * 3600.0
    spool_dir: str = "spool"
    worklist_include_short_abandons: bool = False
    stats_exclude_short_abandons: bool = True
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    rota_file: str | None = None
    log_level: str = "info"
    # `[followups]`: category -> follow-up delays in seconds after the call ended.
    followup_rules: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    followup_overdue_seconds: float = 3600.0
    # `[desk]`: how often the page polls, and the targets of today's figures.
    desk_poll_seconds: float = 5.0
    desk_targets: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DESK_TARGETS))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def pbx(self, name: str) -> PbxConfig:
        for pbx in self.pbxs:
            if pbx.name == name:
                return pbx
        raise ConfigError(f"pbx: no [[pbx]] named {name!r} (have: {[p.name for p in self.pbxs]})")

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret replaced by '***'."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "pbxs":
                value = [
                    {
                        g.name: ("***" if g.name == "secret" and getattr(p, g.name) else
                                 _plain(getattr(p, g.name)))
                        for g in fields(p)
                    }
                    for p in value
                ]
            elif f.name == "api_tokens":
                value = [{"role": t.role, "token": "***"} for t in value]
            elif f.name == "metrics_token":
                value = "***" if value else None
            elif f.name in ("api_listen", "fastagi_listen"):
                value = f"{value[0]}:{value[1]}"
            elif f.name == "database_url":
                value = mask_url(value)
            out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def mask_url(url: str) -> str:
    """Hide the password in a database URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def parse_listen(value: Any, key: str) -> tuple[str, int]:
    """'host:port' to a tuple; the key names the setting in errors."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected 'host:port', got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{key}: port must be a number, got {port_text!r}") from None
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"{key}: expected 'host:port' with a port 0-65535, got {value!r}")
    return host, port


def parse_tokens(value: Any, key: str) -> tuple[ApiToken, ...]:
    """'role:token' pairs (a list, or one comma-separated string) to tokens."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{key}: expected a list of 'role:token' strings")
    tokens = []
    for item in items:
        if not isinstance(item, str) or ":" not in item:
            raise ConfigError(f"{key}: expected 'role:token', got {item!r}")
        role, _, token = item.strip().partition(":")
        if role not in ROLES:
            raise ConfigError(f"{key}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if len(token) < 8:
            raise ConfigError(f"{key}: the {role} token is shorter than 8 characters")
        tokens.append(ApiToken(role, token))
    return tuple(tokens)


class _Reader:
    """Typed access to one TOML table; errors name the dotted key."""

    def __init__(self, table: Mapping[str, Any], prefix: str) -> None:
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            raise ConfigError(f"{self.key(name)}: expected {expected}, got {value!r}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0,
               strictly: bool = False) -> float:
        value = float(self.get(name, float, default))
        if value < minimum or (strictly and value == minimum):
            op = ">" if strictly else ">="
            raise ConfigError(f"{self.key(name)}: must be {op} {minimum:g}, got {value:g}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list, None)
        if value is None:
            return default
        if not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of non-empty strings")
        return tuple(value)

    def mapping(self, name: str) -> dict[str, str]:
        value = self.get(name, dict, {})
        for k, v in value.items():
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{self.key(name)}.{k}: expected a non-empty string")
        return dict(value)

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown setting")


def parse_duration(value: Any, key: str) -> float:
    """'24h', '2d', '90m', '1d12h' to seconds; the key names the setting in errors."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or _DURATION.sub("", text) or not _DURATION.search(text):
        raise ConfigError(f"{key}: expected a duration such as '24h', '2d' or '30m', "
                          f"got {value!r}")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(text))
    if seconds <= 0:
        raise ConfigError(f"{key}: must be longer than 0, got {value!r}")
    return seconds


def _followup_rules(r: _Reader, categories: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    """`[followups]` category keys: a list of delays after the call, e.g. ["24h", "48h"]."""
    rules: dict[str, tuple[float, ...]] = {}
    for name in r.table:
        if name == "overdue_after":
            continue
        r.used.add(name)
        if name not in categories:
            raise ConfigError(f"{r.key(name)}: unknown category (categories: "
                              f"{', '.join(categories)})")
        delays = r.table[name]
        if not isinstance(delays, list) or not delays:
            raise ConfigError(f"{r.key(name)}: expected a list of durations such as "
                              f"[\"24h\", \"48h\"]")
        rules[name] = tuple(sorted(parse_duration(d, f"{r.key(name)}[{i}]")
                                   for i, d in enumerate(delays)))
    return rules


def _desk_targets(r: _Reader) -> dict[str, float]:
    targets = dict(DEFAULT_DESK_TARGETS)
    for name in DEFAULT_DESK_TARGETS:
        limit = 1.0 if name.endswith("_rate") else None
        value = r.number(name, DEFAULT_DESK_TARGETS[name])
        if limit is not None and value > limit:
            raise ConfigError(f"{r.key(name)}: a rate between 0 and 1, got {value:g}")
        targets[name] = value
    return targets


def _pbx_from_table(table: Any, index: int) -> PbxConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"pbx[{index}]: expected a table")
    r = _Reader(table, f"pbx[{index}].")
    # `pbx` is the name's spelling in the traces' expected.config.
    name = r.get("name", str, None) or r.get("pbx", str, None)
    if not name:
        raise ConfigError(f"pbx[{index}].name: required")
    r.prefix = f"pbx[{name}]."
    port = int(r.get("port", int, 5038))
    if not 0 < port < 65536:
        raise ConfigError(f"{r.key('port')}: must be 1-65535, got {port}")
    pbx = PbxConfig(
        name=name,
        host=r.get("host", str, "127.0.0.1"),
        port=port,
        username=r.get("username", str, None),
        secret=r.get("secret", str, None),
        ring_cadence_seconds=r.number("ring_cadence_seconds", 5.0, strictly=True),
        inbound_contexts=r.strings("inbound_contexts", DEFAULT_INBOUND_CONTEXTS),
        outbound_contexts=r.strings("outbound_contexts", DEFAULT_OUTBOUND_CONTEXTS),
        voicemail_extensions=r.strings("voicemail_extensions", ()),
        short_abandon_seconds=r.number("short_abandon_seconds", 5.0),
        agents=r.mapping("agents"),
        lines=r.mapping("lines"),
    )
    r.reject_unknown()
    return pbx


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Build validated settings from parsed TOML (environment not applied)."""
    r = _Reader(data, "")
    pbx_tables = r.get("pbx", list, [])
    pbxs = tuple(_pbx_from_table(t, i) for i, t in enumerate(pbx_tables))
    names = [p.name for p in pbxs]
    if len(set(names)) != len(names):
        raise ConfigError(f"pbx: names must be unique, got {names}")
    api = _Reader(r.get("api", dict, {}), "api.")
    fastagi = _Reader(r.get("fastagi", dict, {}), "fastagi.")
    worklist = _Reader(r.get("worklist", dict, {}), "worklist.")
    stats = _Reader(r.get("stats", dict, {}), "stats.")
    followups = _Reader(r.get("followups", dict, {}), "followups.")
    desk = _Reader(r.get("desk", dict, {}), "desk.")
    targets = _Reader(desk.get("targets", dict, {}), "desk.targets.")
    categories = r.strings("categories", DEFAULT_CATEGORIES)
    settings = Settings(
        pbxs=pbxs,
        database_url=r.get("database_url", str, DEFAULT_DATABASE_URL),
        api_listen=parse_listen(api.get("listen", str, DEFAULT_API_LISTEN), "api.listen"),
        api_tokens=parse_tokens(api.get("tokens", list, []), "api.tokens"),
        metrics_token=api.get("metrics_token", str, None),
        fastagi_listen=parse_listen(
            fastagi.get("listen", str, DEFAULT_FASTAGI_LISTEN), "fastagi.listen"),
        timezone=r.get("timezone", str, "UTC"),
        stale_call_seconds=r.number("stale_call_seconds", 4 * 3600.0, minimum=1.0),
        spool_dir=r.get("spool_dir", str, "spool"),
        worklist_include_short_abandons=worklist.get("include_short_abandons", bool, False),
        stats_exclude_short_abandons=stats.get("exclude_short_abandons", bool, True),
        categories=categories,
        rota_file=r.get("rota_file", str, None),
        log_level=r.get("log_level", str, "info"),
        followup_rules=_followup_rules(followups, categories),
        followup_overdue_seconds=parse_duration(
            followups.get("overdue_after", str, "1h"), "followups.overdue_after"),
        desk_poll_seconds=desk.number("poll_seconds", 5.0, minimum=0.2),
        desk_targets=_desk_targets(targets),
    )
    for reader in (r, api, fastagi, worklist, stats, followups, desk, targets):
        reader.reject_unknown()
    return validate(settings)


ENV_OVERRIDES: dict[str, str] = {
    "CALLHUB_DATABASE_URL": "database_url",
    "CALLHUB_API_LISTEN": "api_listen",
    "CALLHUB_FASTAGI_LISTEN": "fastagi_listen",
    "CALLHUB_API_TOKENS": "api_tokens",
    "CALLHUB_METRICS_TOKEN": "metrics_token",
    "CALLHUB_TIMEZONE": "timezone",
    "CALLHUB_STALE_CALL_SECONDS": "stale_call_seconds",
    "CALLHUB_SPOOL_DIR": "spool_dir",
    "CALLHUB_ROTA_FILE": "rota_file",
    "CALLHUB_LOG_LEVEL": "log_level",
}


def apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Apply CALLHUB_* overrides; CALLHUB_PBX_<NAME>_SECRET etc. reach one PBX."""
    changes: dict[str, Any] = {}
    for var, name in ENV_OVERRIDES.items():
        if var not in env:
            continue
        raw = env[var]
        if name in ("api_listen", "fastagi_listen"):
            changes[name] = parse_listen(raw, var)
        elif name == "api_tokens":
            changes[name] = parse_tokens(raw, var) if raw.strip() else ()
        elif name == "stale_call_seconds":
            try:
                changes[name] = float(raw)
            except ValueError:
                raise ConfigError(f"{var}: expected a number, got {raw!r}") from None
        else:
            changes[name] = raw
    pbxs = []
    for pbx in settings.pbxs:
        prefix = "CALLHUB_PBX_" + "".join(c if c.isalnum() else "_" for c in pbx.name).upper()
        pbx_changes: dict[str, Any] = {}
        for key in ("host", "username", "secret"):
            if f"{prefix}_{key.upper()}" in env:
                pbx_changes[key] = env[f"{prefix}_{key.upper()}"]
        if f"{prefix}_PORT" in env:
            try:
                pbx_changes["port"] = int(env[f"{prefix}_PORT"])
            except ValueError:
                raise ConfigError(f"{prefix}_PORT: expected a number") from None
        pbxs.append(replace(pbx, **pbx_changes))
    changes["pbxs"] = tuple(pbxs)
    return validate(replace(settings, **changes))


def validate(settings: Settings) -> Settings:
    """Checks that span keys or need lookups."""
    try:
        ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown time zone {settings.timezone!r}") from None
    if "://" not in settings.database_url:
        raise ConfigError(
            f"database_url: expected a SQLAlchemy URL such as {DEFAULT_DATABASE_URL!r}")
    if settings.stale_call_seconds < 1:
        raise ConfigError("stale_call_seconds: must be >= 1")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: expected debug, info, warning or error, got "
                          f"{settings.log_level!r}")
    return settings


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
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    return apply_env(settings_from_mapping(data), env)
