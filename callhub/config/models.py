"""The settings the daemon runs with: frozen pydantic dataclasses, checked whenever built.

`PbxConfig` is also the schema of a `[[pbx]]` table; `Settings` checks what the
file and the environment can both set (time zone, database URL, log level).
They stay dataclasses, so code and tests build them positionally and derive
them with `dataclasses.replace`, which validates again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, fields
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
)
from pydantic.dataclasses import dataclass

from callhub.config.problems import ConfigError, keyed, problem
from callhub.config.report import ReportSettings
from callhub.config.sms import SmsSettings
from callhub.config.targets import LineTable, LineTargets, line_targets
from callhub.config.values import database_url as valid_database_url
from callhub.config.values import listen, mask_url, time_zone
from callhub.loops import EVENT_LOOPS, uvloop_installed
from callhub.records import FIELD_LIMITS

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///callhub.db"
DEFAULT_API_LISTEN = "127.0.0.1:8080"
DEFAULT_FASTAGI_LISTEN = "127.0.0.1:4573"
ROLES = ("viewer", "supervisor", "admin")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_CATEGORIES = ("inquiry", "complaint", "repair", "other")
DEFAULT_INBOUND_CONTEXTS = ("from-pstn", "from-trunk", "from-external")
DEFAULT_OUTBOUND_CONTEXTS = ("to-pstn", "outbound-allroutes")
# The desk's targets for today's figures (`[desk.targets]`); rates are 0..1.
DEFAULT_DESK_TARGETS: Mapping[str, float] = {
    "within_rings_rate": 0.9, "answer_rate": 0.95, "missed": 0.0, "abandoned": 0.0,
    "pending_callbacks": 0.0, "median_time_to_callback_minutes": 30.0,
}
MIN_TOKEN_LENGTH = 8
# Said on stderr when no API token is configured (`config check`; `run` may say it too).
NO_TOKENS_WARNING = (
    "warning: no API tokens are configured, so every API route (and the desk's sign-in) "
    "will answer 401. Add some as 'role:token' (roles: viewer, supervisor, admin; tokens of "
    "8 characters or more): in the config file\n"
    "  [api]\n  tokens = [\"admin:<a long random string>\"]\n"
    "or in the environment: CALLHUB_API_TOKENS=admin:<token>,viewer:<token>. "
    "`python -c 'import secrets; print(secrets.token_urlsafe(24))'` makes a token."
)
# The only Python types the models accept; TOML gives exactly these (a float may be written 6).
Number = Annotated[float, Strict()]


def _names(value: Any) -> Any:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise problem("expected a list of non-empty strings")
    return tuple(value)


def _categories(value: Any) -> Any:
    value = _names(value)
    longer = [v for v in value if len(v) > MAX_CATEGORY]
    if longer:  # the calls' category column: classifying a call with one failed
        raise problem(f"a category is at most {MAX_CATEGORY} characters, got {longer[0]!r}")
    return value


def _text_map(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value  # the dict type check says so
    for k, v in value.items():
        if not isinstance(v, str) or not v:
            raise keyed(str(k), "expected a non-empty string")
    return value


def _line_map(value: Any) -> Any:
    """DID -> line name; a name longer than the calls' `line` column would be cut there, and
    the call then matched neither its `[lines]` targets nor the rota's line."""
    value = _text_map(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if len(v) > FIELD_LIMITS["line"]:
                raise keyed(str(k), f"a line name is at most {FIELD_LIMITS['line']} "
                                    f"characters, got {len(v)}")
    return value


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise problem(f"must be 1-65535, got {value}")
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
MAX_CATEGORY = 64
Categories = Annotated[tuple[str, ...], BeforeValidator(_categories)]
TextMap = Annotated[Mapping[StrictStr, StrictStr], BeforeValidator(_text_map)]
LineMap = Annotated[Mapping[StrictStr, StrictStr], BeforeValidator(_line_map)]
Listen = Annotated[tuple[str, int], BeforeValidator(listen)]
_DATACLASS = ConfigDict(extra="forbid", allow_inf_nan=False)


# The longest PBX name: the `pbx` columns of calls and the worklist are 64 long (a longer
# one made PostgreSQL refuse every call of that PBX: each quarantined).
MAX_PBX_NAME = 64


def pbx_prefix(name: str) -> str:
    """CALLHUB_PBX_<NAME>: the name upper-cased, anything but letters and digits as '_'."""
    return "CALLHUB_PBX_" + "".join(c if c.isalnum() else "_" for c in name).upper()


@dataclass(frozen=True, slots=True, config=_DATACLASS)
class PbxConfig:
    """One Asterisk PBX: how to reach its AMI and how to read its calls."""

    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PBX_NAME)]
    host: StrictStr = "127.0.0.1"
    port: Annotated[StrictInt, AfterValidator(_port)] = 5038
    username: StrictStr | None = None
    secret: StrictStr | None = None
    ring_cadence_seconds: Annotated[Number, Field(gt=0)] = 5.0
    inbound_contexts: Names = DEFAULT_INBOUND_CONTEXTS
    outbound_contexts: Names = DEFAULT_OUTBOUND_CONTEXTS
    voicemail_extensions: Names = ()
    short_abandon_seconds: Annotated[Number, Field(ge=0)] = 5.0
    agents: TextMap = field(default_factory=dict)
    lines: LineMap = field(default_factory=dict)
    # Where Asterisk's cel_pgsql writes this PBX's CEL (usegmtime=yes): the calls of a gap
    # in the AMI stream are rebuilt from it (docs/reliability.md). None: no gap recovery.
    cel_database_url: Annotated[StrictStr | None, AfterValidator(_optional_database_url)] = None
    cel_table: Annotated[StrictStr, Field(min_length=1)] = "cel"

    def line_for(self, did: str | None) -> str | None:
        """The configured line name of a DID, else the DID itself."""
        if did is None:
            return None
        return self.lines.get(did, did)

    def missing_login(self) -> str | None:
        """What this PBX lacks to log in to AMI, naming where to give it (None: nothing).

        `callhub run` refuses to start with it; `config check` warns, since the secret
        often comes from the service's environment file, not from the shell it runs in."""
        missing = [key for key in ("username", "secret") if not getattr(self, key)]
        if not missing:
            return None
        prefix = pbx_prefix(self.name)
        where = " and ".join(f"`{key}` or {prefix}_{key.upper()}" for key in missing)
        return f"pbx[{self.name}]: no {' and no '.join(missing)} to log in to AMI ({where})"


@dataclass(frozen=True, slots=True, config=_DATACLASS)
class ApiToken:
    role: StrictStr
    token: StrictStr


def api_tokens(value: Any) -> Any:
    """'role:token' strings (a list, or one comma-separated string) to tokens.

    An error names the entry by its position only: the entry may be a secret."""
    if isinstance(value, tuple):
        return value
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise problem("expected a list of 'role:token' strings")
    tokens = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, str) or ":" not in item:
            raise problem(f"entry {number}: expected 'role:token' (the entry is not shown: it "
                          "may be a secret)")
        role, _, token = item.strip().partition(":")
        if role not in ROLES:
            raise problem(f"entry {number}: unknown role before the ':' (roles: "
                          f"{', '.join(ROLES)})")
        if len(token) < MIN_TOKEN_LENGTH:
            raise problem(f"entry {number}: the {role} token is shorter than "
                          f"{MIN_TOKEN_LENGTH} characters")
        tokens.append(ApiToken(role, token))
    return tuple(tokens)


def _optional_database_url(value: str | None) -> str | None:
    return None if value is None else valid_database_url(value)


def _event_loop(value: str) -> str:
    if value not in EVENT_LOOPS:
        raise problem(f"expected auto, uvloop or asyncio, got {value!r}")
    if value == "uvloop" and not uvloop_installed():
        raise problem("uvloop is not installed (pip install uvloop), or use auto")
    return value


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise problem(f"expected debug, info, warning or error, got {value!r}")
    return value


Tokens = Annotated[tuple[ApiToken, ...], BeforeValidator(api_tokens)]


@dataclass(frozen=True, slots=True, config=_DATACLASS)
class Settings:
    pbxs: tuple[PbxConfig, ...] = ()
    database_url: Annotated[StrictStr, AfterValidator(valid_database_url)] = DEFAULT_DATABASE_URL
    # A read replica of database_url (PostgreSQL) for the API's list and stats reads.
    read_database_url: Annotated[StrictStr | None, AfterValidator(_optional_database_url)] = None
    api_listen: Listen = ("127.0.0.1", 8080)
    fastagi_listen: Listen = ("127.0.0.1", 4573)
    api_tokens: Tokens = ()
    metrics_token: StrictStr | None = None
    # `[api] workers`: API processes on api_listen (callhub/api/workers.py); 1: the daemon's.
    api_workers: Annotated[int, Field(ge=1, le=64)] = 1
    timezone: Annotated[StrictStr, AfterValidator(time_zone)] = "UTC"
    stale_call_seconds: Annotated[Number, Field(ge=1)] = 4 * 3600.0
    spool_dir: StrictStr = "spool"
    worklist_include_short_abandons: StrictBool = False
    stats_exclude_short_abandons: StrictBool = True
    categories: Categories = DEFAULT_CATEGORIES
    rota_file: StrictStr | None = None
    log_level: Annotated[StrictStr, AfterValidator(_log_level)] = "info"
    # uvloop where installed (callhub/loops.py says why), or asyncio's own loop.
    event_loop: Annotated[StrictStr, AfterValidator(_event_loop)] = "auto"
    # `[followups]`: category -> follow-up delays in seconds after the call ended.
    followup_rules: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    followup_overdue_seconds: float = 3600.0
    # `[desk]`: how often the page polls, and the targets of today's figures.
    desk_poll_seconds: float = 5.0
    desk_targets: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DESK_TARGETS))
    # `[report]`: the summary mailed to the leaders (callhub/config/report.py).
    report: ReportSettings = field(default_factory=ReportSettings)
    # `[sms]`: the SMS after the call (callhub.sms); None: no SMS is planned or sent.
    sms: SmsSettings | None = None
    # `[lines."<line>"]`: each line's ring and answer-rate targets (callhub/config/targets.py).
    line_tables: Mapping[str, LineTable] = field(default_factory=dict)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def line_targets(self, pbx: str | None = None) -> LineTargets:
        """Every line's targets; `known` lists the lines of `[pbx.lines]` (of `pbx` only
        when given) and those with a `[lines]` table."""
        known = [line for p in self.pbxs if pbx is None or p.name == pbx
                 for line in p.lines.values()]
        return line_targets(self.line_tables, known, self.desk_targets["within_rings_rate"])

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
                    {g.name: _masked_pbx_value(g.name, getattr(p, g.name)) for g in fields(p)}
                    for p in value
                ]
            elif f.name == "api_tokens":
                value = [{"role": t.role, "token": "***"} for t in value]
            elif f.name == "metrics_token":
                value = "***" if value else None
            elif f.name in ("api_listen", "fastagi_listen"):
                value = f"{value[0]}:{value[1]}"
            elif f.name in ("database_url", "read_database_url"):
                value = mask_url(value) if value else value
            elif f.name == "report":
                value = value.masked()
            elif f.name == "sms":
                value = value.masked() if value is not None else None
            elif f.name == "line_tables":
                value = {k: v.model_dump(exclude_none=True) for k, v in value.items()}
            out[f.name] = _plain(value)
        return out


def _masked_pbx_value(name: str, value: Any) -> Any:
    if name == "secret" and value:
        return "***"
    if name == "cel_database_url" and value:
        return mask_url(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value
