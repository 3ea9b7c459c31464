"""The settings file's shape (TOML tables as pydantic models) and how it becomes `Settings`.

Unknown keys are refused with the key named; a `[[pbx]]` table is named by its
`name` in errors (`pbx[main].port`), or by its position while it has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from callhub.config.models import (
    DEFAULT_API_LISTEN,
    DEFAULT_CATEGORIES,
    DEFAULT_DATABASE_URL,
    DEFAULT_DESK_TARGETS,
    DEFAULT_FASTAGI_LISTEN,
    ApiToken,
    Categories,
    Number,
    PbxConfig,
    Settings,
    api_tokens,
    pbx_prefix,
)
from callhub.config.problems import ConfigError, config_error, keyed, problem
from callhub.config.report import ReportSettings
from callhub.config.sms import SmsSettings, sms_settings_from_table
from callhub.config.targets import ANY_LINE, LineTable
from callhub.config.values import duration, listen

# A table field named `listen` would hide the parser inside its class body.
_LISTEN = BeforeValidator(listen)


def _pbx_spelling(table: Any) -> Any:
    """`pbx` is the name's spelling in the traces' expected.config."""
    if not isinstance(table, Mapping):
        raise problem("expected a table")
    table = dict(table)
    spelled = table.pop("pbx", None)
    if spelled is not None and not isinstance(spelled, str):
        raise keyed("pbx", f"expected str, got {spelled!r}")
    if not table.get("name") and spelled:
        table["name"] = spelled
    return table


def _file_tokens(value: Any) -> Any:
    if not isinstance(value, list):
        raise problem("expected a list of 'role:token' strings")
    return api_tokens(value)


def _text_duration(value: Any) -> float:
    if not isinstance(value, str):
        raise problem(f"expected str, got {value!r}")
    return duration(value)


def _delays(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise problem('expected a list of durations such as ["24h", "48h"]')
    return value


def _rate(value: float) -> float:
    if value > 1:
        raise problem(f"a rate between 0 and 1, got {value:g}")
    return value


Duration = Annotated[float, BeforeValidator(duration)]
Delays = Annotated[list[Duration], BeforeValidator(_delays),
                   AfterValidator(lambda v: tuple(sorted(v)))]
Rate = Annotated[Number, Field(ge=0), AfterValidator(_rate)]
Target = Annotated[Number, Field(ge=0)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ApiTable(_Table):
    listen: Annotated[tuple[str, int], _LISTEN] = listen(DEFAULT_API_LISTEN)
    tokens: Annotated[tuple[ApiToken, ...], BeforeValidator(_file_tokens)] = ()
    metrics_token: StrictStr | None = None
    workers: Annotated[StrictInt, Field(ge=1, le=64)] = 1


class FastagiTable(_Table):
    listen: Annotated[tuple[str, int], _LISTEN] = listen(DEFAULT_FASTAGI_LISTEN)


class WorklistTable(_Table):
    include_short_abandons: StrictBool = False


class StatsTable(_Table):
    exclude_short_abandons: StrictBool = True


class FollowupsTable(_Table):
    """`overdue_after`, and per category a list of delays after the call: `repair = ["24h"]`."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    __pydantic_extra__: dict[str, Delays] = Field(init=False)

    overdue_after: Annotated[float, BeforeValidator(_text_duration)] = 3600.0


class DeskTargets(_Table):
    within_rings_rate: Rate = DEFAULT_DESK_TARGETS["within_rings_rate"]
    answer_rate: Rate = DEFAULT_DESK_TARGETS["answer_rate"]
    missed: Target = DEFAULT_DESK_TARGETS["missed"]
    abandoned: Target = DEFAULT_DESK_TARGETS["abandoned"]
    pending_callbacks: Target = DEFAULT_DESK_TARGETS["pending_callbacks"]
    median_time_to_callback_minutes: Target = \
        DEFAULT_DESK_TARGETS["median_time_to_callback_minutes"]


class DeskTable(_Table):
    poll_seconds: Annotated[Number, Field(ge=0.2)] = 5.0
    targets: DeskTargets = DeskTargets()


def _sms_table(value: Any) -> Any:
    """`[sms]` validated by callhub.sms (its own errors name `sms.<key>`)."""
    if value is None or isinstance(value, SmsSettings):
        return value
    if not isinstance(value, Mapping):
        raise problem("expected a table")
    try:
        return sms_settings_from_table(value)
    except ConfigError as exc:
        key, _, text = str(exc).partition(": ")
        raise keyed(key.removeprefix("sms").lstrip("."), text) from None


def _pbx_tables(value: Any) -> Any:
    """A single `[pbx]` table (one PBX, e.g. only `[pbx.lines]`) is a list of one."""
    if isinstance(value, Mapping):
        table = dict(value)
        if not table.get("name") and not table.get("pbx"):
            table["name"] = "pbx"
        return [table]
    return value


class SettingsFile(_Table):
    """The whole file; the top-level keys that are also `Settings` fields are checked there."""

    pbx: Annotated[list[Annotated[PbxConfig, BeforeValidator(_pbx_spelling)]],
                   BeforeValidator(_pbx_tables)] = []
    database_url: StrictStr = DEFAULT_DATABASE_URL
    read_database_url: StrictStr | None = None
    timezone: StrictStr = "UTC"
    stale_call_seconds: Annotated[Number, Field(ge=1)] = 4 * 3600.0
    spool_dir: StrictStr = "spool"
    categories: Categories = DEFAULT_CATEGORIES
    rota_file: StrictStr | None = None
    log_level: StrictStr = "info"
    event_loop: StrictStr = "auto"
    api: ApiTable = ApiTable()
    fastagi: FastagiTable = FastagiTable()
    worklist: WorklistTable = WorklistTable()
    stats: StatsTable = StatsTable()
    followups: FollowupsTable = FollowupsTable()
    desk: DeskTable = DeskTable()
    report: ReportSettings = ReportSettings()
    sms: Annotated[SmsSettings | None, BeforeValidator(_sms_table)] = None
    lines: dict[StrictStr, LineTable] = {}

    @model_validator(mode="after")
    def _across_tables(self) -> SettingsFile:
        names = [p.name for p in self.pbx]
        if len(set(names)) != len(names):
            raise keyed("pbx", f"names must be unique, got {names}")
        prefixes: dict[str, str] = {}
        for name in names:  # one's secret override would reach both, their AMI state one file
            other = prefixes.setdefault(pbx_prefix(name), name)
            if other != name:
                raise keyed("pbx", f"{other!r} and {name!r} are too alike: both are "
                                   f"{pbx_prefix(name)}_* in the environment; rename one")
        for category in self.followups.model_extra or {}:
            if category not in self.categories:
                raise keyed(f"followups.{category}", "unknown category (categories: "
                                                     f"{', '.join(self.categories)})")
        # A line is a name [pbx.lines] maps DIDs to; a table naming any other (a typo)
        # would never match a call, its line keeping the default target. (An SMS rule may
        # name an unmapped DID, a call's line then: `config check` warns of it.)
        known = {line for p in self.pbx for line in p.lines.values()}
        lines = f"the lines [pbx.lines] maps DIDs to: {', '.join(sorted(known)) or 'none'}"
        for line in self.lines:
            if line != ANY_LINE and line not in known:
                raise keyed(f"lines.{line}", f"unknown line ({lines}; \"*\" sets every other "
                                             "line's target)")
        return self

    def settings(self) -> Settings:
        return Settings(
            pbxs=tuple(self.pbx),
            database_url=self.database_url,
            read_database_url=self.read_database_url,
            api_listen=self.api.listen,
            api_tokens=self.api.tokens,
            metrics_token=self.api.metrics_token,
            api_workers=self.api.workers,
            fastagi_listen=self.fastagi.listen,
            timezone=self.timezone,
            stale_call_seconds=self.stale_call_seconds,
            spool_dir=self.spool_dir,
            worklist_include_short_abandons=self.worklist.include_short_abandons,
            stats_exclude_short_abandons=self.stats.exclude_short_abandons,
            categories=self.categories,
            rota_file=self.rota_file,
            log_level=self.log_level,
            event_loop=self.event_loop,
            followup_rules=dict(self.followups.model_extra or {}),
            followup_overdue_seconds=self.followups.overdue_after,
            desk_poll_seconds=self.desk.poll_seconds,
            desk_targets=self.desk.targets.model_dump(),
            report=self.report,
            sms=self.sms,
            line_tables=self.lines,
        )


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Build validated settings from parsed TOML (environment not applied)."""

    def pbx_name(path: Sequence[int | str], index: int) -> str:
        if list(path) != ["pbx"]:
            return str(index)
        tables = data.get("pbx")
        table = tables[index] if isinstance(tables, list) and index < len(tables) else None
        if isinstance(table, Mapping):
            name = table.get("name") or table.get("pbx")
            if isinstance(name, str) and name:
                return name
        return str(index)

    try:
        return SettingsFile.model_validate(data).settings()
    except ValidationError as exc:
        raise config_error(exc, pbx_name) from None

