"""Query parameters declared once: the same `Param` validates a request and documents it.

A bad value raises `BadParameter(name, why)`, which the app turns into a 400
with a JSON body naming the parameter. Unknown parameters are refused too,
so a typo (`?outcom=missed`) does not silently return everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from typing import Any, Literal

ParamType = Literal["string", "integer", "number", "datetime"]


class BadParameter(ValueError):
    """A request parameter (query, path or body field) is wrong; `why` says how."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why


@dataclass(frozen=True, slots=True)
class Param:
    """One query parameter: its type, bounds and the sentence that documents it."""

    name: str
    type: ParamType
    description: str
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None
    max_length: int = 128

    def schema(self) -> dict[str, Any]:
        """The OpenAPI 3 schema of this parameter."""
        if self.type == "datetime":
            schema: dict[str, Any] = {"type": "string", "format": "date-time"}
        elif self.type == "string":
            schema = {"type": "string", "maxLength": self.max_length}
            if self.enum is not None:
                schema = {"type": "string", "enum": list(self.enum)}
        else:
            schema = {"type": self.type}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def openapi(self, location: str = "query") -> dict[str, Any]:
        return {"name": self.name, "in": location, "required": location == "path",
                "description": self.description, "schema": self.schema()}

    def parse(self, raw: str, tz: tzinfo) -> Any:
        """The typed value of `raw`; BadParameter when it does not fit."""
        if self.type == "datetime":
            return parse_datetime(self.name, raw, tz)
        if self.type == "string":
            if not raw:
                raise BadParameter(self.name, "must not be empty")
            check_text(self.name, raw)
            if len(raw) > self.max_length:
                raise BadParameter(self.name, f"longer than {self.max_length} characters")
            if self.enum is not None and raw not in self.enum:
                raise BadParameter(self.name, f"must be one of {', '.join(self.enum)}; "
                                              f"got {raw[:40]!r}")
            return raw
        value: float
        try:
            value = int(raw) if self.type == "integer" else float(raw)
        except ValueError:
            kind = "an integer" if self.type == "integer" else "a number"
            raise BadParameter(self.name, f"must be {kind}; got {raw[:40]!r}") from None
        if not math.isfinite(value):
            raise BadParameter(self.name, "must be a finite number")
        if self.minimum is not None and value < self.minimum:
            raise BadParameter(self.name, f"must be >= {self.minimum:g}; got {raw[:40]}")
        if self.maximum is not None and value > self.maximum:
            raise BadParameter(self.name, f"must be <= {self.maximum:g}; got {raw[:40]}")
        return value


def check_text(name: str, value: str) -> None:
    """Refuse text no database stores: NUL (PostgreSQL rejects it) and lone surrogates."""
    if "\x00" in value:
        raise BadParameter(name, "must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadParameter(name, "is not valid UTF-8 text") from None


def parse_datetime(name: str, raw: str, tz: tzinfo) -> datetime:
    """ISO 8601 date or date-time; without an offset it is local time in `tz`."""
    text = raw.strip()
    try:
        if len(text) == 10:
            value = datetime.combine(date.fromisoformat(text), time())
        else:
            value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        value.astimezone(tz)  # out-of-range offsets fail here, not in a query
        if not 1900 <= value.year <= 9998:
            raise ValueError("year out of range")
    except (ValueError, OverflowError) as exc:
        raise BadParameter(name, f"expected an ISO 8601 date or date-time such as "
                                 f"2026-11-29 or 2026-11-29T08:00:00+08:00 ({exc}); "
                                 f"got {raw[:40]!r}") from None
    return value


def parse_query(query: Mapping[str, str] | Any, params: Sequence[Param],
                tz: tzinfo) -> dict[str, Any]:
    """Validate a request's query string against `params`; defaults filled in."""
    known = {p.name: p for p in params}
    out: dict[str, Any] = {p.name: p.default for p in params}
    seen: set[str] = set()
    keys = [k for k, _ in query.items()]  # a MultiDict lists a repeated key per value
    for key in keys:
        if key not in known:
            raise BadParameter(key, f"unknown parameter (known: {', '.join(sorted(known))})"
                               if known else "unknown parameter (this endpoint takes none)")
        if key in seen:
            raise BadParameter(key, "given more than once")
        seen.add(key)
    for key in seen:
        out[key] = known[key].parse(query[key], tz)
    return out
