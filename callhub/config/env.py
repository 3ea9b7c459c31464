"""CALLHUB_* environment overrides (pydantic-settings), and CALLHUB_PBX_<NAME>_* for one PBX.

An error names the variable (`CALLHUB_API_LISTEN: expected 'host:port', got '8080'`);
a secret's value is never echoed. The environment is a mapping passed in (the
process's own by default), so tests and `load_settings(env=...)` see only theirs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import EnvSettingsSource

from callhub.config.models import ApiToken, Settings, api_tokens, pbx_prefix
from callhub.config.problems import ConfigError, config_error
from callhub.config.values import listen


def _env_tokens(value: Any) -> Any:
    if value is None:
        return None
    return () if isinstance(value, str) and not value.strip() else api_tokens(value)


def _env_listen(value: Any) -> Any:
    return None if value is None else listen(value)


# NoDecode: the raw text goes to our parsers (pydantic-settings would read "8080" as JSON).
EnvListen = Annotated[tuple[str, int] | None, NoDecode, BeforeValidator(_env_listen)]


class EnvOverrides(BaseSettings):
    """The variables that override one setting each; unset ones change nothing."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True,
                                      allow_inf_nan=False)

    database_url: str | None = Field(None, validation_alias="CALLHUB_DATABASE_URL")
    read_database_url: str | None = Field(None, validation_alias="CALLHUB_READ_DATABASE_URL")
    api_listen: EnvListen = Field(
        None, validation_alias="CALLHUB_API_LISTEN")
    fastagi_listen: EnvListen = Field(
        None, validation_alias="CALLHUB_FASTAGI_LISTEN")
    api_tokens: Annotated[tuple[ApiToken, ...] | None, NoDecode,
                          BeforeValidator(_env_tokens)] = Field(
        None, validation_alias="CALLHUB_API_TOKENS")
    metrics_token: str | None = Field(None, validation_alias="CALLHUB_METRICS_TOKEN")
    timezone: str | None = Field(None, validation_alias="CALLHUB_TIMEZONE")
    stale_call_seconds: float | None = Field(None, validation_alias="CALLHUB_STALE_CALL_SECONDS")
    spool_dir: str | None = Field(None, validation_alias="CALLHUB_SPOOL_DIR")
    rota_file: str | None = Field(None, validation_alias="CALLHUB_ROTA_FILE")
    log_level: str | None = Field(None, validation_alias="CALLHUB_LOG_LEVEL")
    event_loop: str | None = Field(None, validation_alias="CALLHUB_EVENT_LOOP")

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `from_env` reads from the given mapping: never os.environ behind its back."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EnvOverrides:
        return cls(**_GivenEnvironment(cls, env)())


class _GivenEnvironment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._given)


def _variable(info: FieldInfo) -> str:
    alias = info.validation_alias
    assert isinstance(alias, str)
    return alias


# Variable -> the Settings field it overrides (the deploy files are checked against this).
ENV_OVERRIDES: dict[str, str] = {
    _variable(info): name for name, info in EnvOverrides.model_fields.items()}
PBX_KEYS = ("host", "port", "username", "secret", "cel_database_url", "cel_table")
_PORT = TypeAdapter(int)
# The report mail's SMTP password, kept out of the file (a secret; never echoed).
REPORT_SMTP_PASSWORD = "CALLHUB_REPORT_SMTP_PASSWORD"


def _under(prefix: str) -> Callable[[str], str]:
    """A PbxConfig key to its variable: port -> CALLHUB_PBX_MAIN_PORT."""
    return lambda key: f"{prefix}_{key.upper()}"


def apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Apply CALLHUB_* overrides; CALLHUB_PBX_<NAME>_SECRET etc. reach one PBX."""
    try:
        overrides = EnvOverrides.from_env(env)
    except ValidationError as exc:
        raise config_error(exc) from None
    changes = overrides.model_dump(exclude_none=True)
    if overrides.api_tokens is not None:
        changes["api_tokens"] = overrides.api_tokens
    pbxs = []
    for pbx in settings.pbxs:
        prefix = pbx_prefix(pbx.name)
        given: dict[str, Any] = {key: env[f"{prefix}_{key.upper()}"] for key in PBX_KEYS
                 if f"{prefix}_{key.upper()}" in env}
        if "port" in given:
            try:
                given["port"] = _PORT.validate_python(given["port"])
            except ValidationError:
                raise ConfigError(f"{prefix}_PORT: expected a number") from None
        try:
            pbxs.append(dataclasses.replace(pbx, **given))
        except ValidationError as exc:
            raise config_error(exc, rename=_under(prefix)) from None
    changes["pbxs"] = tuple(pbxs)
    if REPORT_SMTP_PASSWORD in env:
        report = settings.report
        try:
            changes["report"] = dataclasses.replace(
                report, smtp=dataclasses.replace(report.smtp, password=env[REPORT_SMTP_PASSWORD]))
        except ValidationError as exc:
            raise config_error(exc, rename=lambda key: REPORT_SMTP_PASSWORD
                               if key == "password" else key) from None
    try:
        return dataclasses.replace(settings, **changes)
    except ValidationError as exc:
        variables = {field: var for var, field in ENV_OVERRIDES.items() if field in changes}
        raise config_error(exc, rename=lambda key: variables.get(key, key)) from None


