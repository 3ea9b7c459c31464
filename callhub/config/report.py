"""`[report]` and `[report.smtp]`: the summary the daemon mails to the leaders, and how.

`schedule` is off by default; when it is daily, weekly or monthly, the daemon
sends the report of the period that just ended at `send_at` (local time in
the configured time zone) to `recipients` through the SMTP server. The SMTP
password is a secret: masked in `config check`, never in an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.dataclasses import dataclass

from callhub.config.problems import keyed, problem

SCHEDULES = ("off", "daily", "weekly", "monthly")
# The period each schedule mails: the one that just ended.
SCHEDULE_PERIOD = {"daily": "day", "weekly": "week", "monthly": "month"}
REPORT_FORMATS = ("html", "text")
LANGS = ("zh", "en")
_DATACLASS = ConfigDict(extra="forbid", allow_inf_nan=False)
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise problem(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    return AfterValidator(check)


def _send_at(value: str) -> str:
    hour, sep, minute = value.partition(":")
    if not (sep and hour.isdigit() and minute.isdigit() and len(minute) == 2
            and int(hour) < 24 and int(minute) < 60):
        raise problem(f"expected a local time HH:MM such as \"08:00\", got {value!r}")
    return f"{int(hour):02d}:{minute}"


def _address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise problem(f"expected a mail address such as leader@example.com, got {value!r}")
    return value


def _addresses(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise problem("expected a list of mail addresses")
    for number, item in enumerate(value, 1):
        if not isinstance(item, str) or not _ADDRESS.match(item):
            raise problem(f"entry {number}: expected a mail address such as "
                          f"leader@example.com, got {item!r}")
    return tuple(value)


def _from_spelling(table: Any) -> Any:
    """`from` is the file's spelling of `from_address` (a Python keyword)."""
    if isinstance(table, Mapping) and "from" in table:
        table = dict(table)
        table["from_address"] = table.pop("from")
    return table


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise problem(f"must be 1-65535, got {value}")
    return value


@dataclass(frozen=True, slots=True, config=_DATACLASS)
class SmtpSettings:
    """The mail server the report goes out through."""

    host: StrictStr | None = None
    port: Annotated[StrictInt, AfterValidator(_port)] = 25
    username: StrictStr | None = None
    password: StrictStr | None = None
    starttls: StrictBool = False
    ssl: StrictBool = False  # SMTP over TLS from the first byte (port 465)
    from_address: Annotated[StrictStr, AfterValidator(_address)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _one_tls(self) -> SmtpSettings:
        if self.starttls and self.ssl:
            raise keyed("ssl", "starttls and ssl exclude each other (ssl: TLS from the "
                               "start, port 465; starttls: upgrade a plain connection, 587)")
        if self.password is not None and self.username is None:
            raise keyed("username", "required when a password is set")
        return self

    def masked(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "username": self.username,
                "password": "***" if self.password else None, "starttls": self.starttls,
                "ssl": self.ssl, "from": self.from_address,
                "timeout_seconds": self.timeout_seconds}


Smtp = Annotated[SmtpSettings, BeforeValidator(_from_spelling)]


@dataclass(frozen=True, slots=True, config=_DATACLASS)
class ReportSettings:
    """When and to whom the daemon mails the report, in which format and language."""

    schedule: Annotated[StrictStr, _one_of(SCHEDULES)] = "off"
    send_at: Annotated[StrictStr, AfterValidator(_send_at)] = "08:00"
    recipients: Annotated[tuple[str, ...], BeforeValidator(_addresses)] = ()
    format: Annotated[StrictStr, _one_of(REPORT_FORMATS)] = "html"
    lang: Annotated[StrictStr, _one_of(LANGS)] = "zh"
    smtp: Smtp = field(default_factory=SmtpSettings)

    @model_validator(mode="after")
    def _complete(self) -> ReportSettings:
        if self.schedule == "off":
            return self
        if not self.recipients:
            raise keyed("recipients", f"required when schedule is {self.schedule!r}")
        if not self.smtp.host:
            raise keyed("smtp.host", f"required when schedule is {self.schedule!r}")
        if not self.smtp.from_address:
            raise keyed("smtp.from", f"required when schedule is {self.schedule!r}")
        return self

    @property
    def period(self) -> str | None:
        """The period kind mailed (None when off)."""
        return SCHEDULE_PERIOD.get(self.schedule)

    @property
    def send_time(self) -> tuple[int, int]:
        hour, minute = self.send_at.split(":")
        return int(hour), int(minute)

    def masked(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "send_at": self.send_at,
                "recipients": list(self.recipients), "format": self.format, "lang": self.lang,
                "smtp": self.smtp.masked()}
